//! What the router asks of whoever manages the models (the fleet, `crate::fleet`): whether a
//! model is catalogued, and, when no slice can take a request for it, whether to hold the
//! request while a worker loads. Defined here so the router depends on no manager.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::error::ApiError;

/// What to do with a request that no slice can take now.
#[derive(Debug)]
pub enum Demand {
    /// The model is not managed here (a remote or discovered one): answer as without one.
    Unmanaged,
    /// A worker for it is loading, or will once room is made: wait for the next change
    /// (the receiver changes with every change of the fleet), then pick again.
    Wait(watch::Receiver<u64>),
    /// No worker will come in time: answer this, with `Retry-After` seconds when a retry
    /// may succeed.
    Refused(ApiError, Option<Duration>),
}

/// A catalogued model as `GET /v1/models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    /// `unloaded`, `loading`, `loaded`, `draining` or `failed`.
    pub state: &'static str,
}

/// Counts a request held for a model while it waits for a worker; dropped when it stops
/// waiting.
#[derive(Debug)]
pub struct Held(Arc<AtomicUsize>);

impl Held {
    /// Counts one more held request on `count`.
    pub fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The model manager as the router sees it.
pub trait Lifecycle: Send + Sync {
    /// Whether `model` is catalogued here.
    fn catalogued(&self, model: &str) -> bool;
    /// Every catalogued model, in catalogue order, with its state.
    fn listed(&self) -> Vec<Listed>;
    /// Notes a request for `model` (its last use).
    fn touch(&self, model: &str);
    /// Counts a request for `model` held while it waits for a worker; `None` when the model
    /// is not managed here.
    fn hold(&self, model: &str) -> Option<Held>;
    /// No slice of `model` can take a request now: none is ready (`more` false) or every
    /// ready one is at its queue limit (`more` true). Starts a load where one is due.
    fn demand(&self, model: &str, more: bool) -> Demand;
    /// How long a request may be held for a load.
    fn load_timeout(&self) -> Duration;
    /// The model the router sends TGI requests that name none to.
    fn default_model(&self) -> Option<String>;
    /// Appends the manager's series to a Prometheus text exposition.
    fn write_metrics(&self, out: &mut String);
}

/// No manager: every model is unmanaged (a router of remote workers only, and tests).
#[derive(Debug, Default)]
pub struct Unmanaged;

impl Lifecycle for Unmanaged {
    fn catalogued(&self, _: &str) -> bool {
        false
    }
    fn listed(&self) -> Vec<Listed> {
        Vec::new()
    }
    fn touch(&self, _: &str) {}
    fn hold(&self, _: &str) -> Option<Held> {
        None
    }
    fn demand(&self, _: &str, _: bool) -> Demand {
        Demand::Unmanaged
    }
    fn load_timeout(&self) -> Duration {
        Duration::ZERO
    }
    fn default_model(&self) -> Option<String> {
        None
    }
    fn write_metrics(&self, _: &mut String) {}
}
