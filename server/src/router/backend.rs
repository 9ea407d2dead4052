//! A routable target: a supervised local worker or a remote one, with the router's view of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::prefix_index::PrefixIndex;
use super::stats::SliceStats;
use crate::supervisor::{SlotState, WorkerSlot};

/// Where requests for a backend go.
#[derive(Debug)]
pub enum Target {
    /// A worker this process supervises.
    Local(Arc<WorkerSlot>),
    /// A worker elsewhere; `healthy` is kept by the health probe.
    Remote { url: String, healthy: AtomicBool },
}

/// One slice as the router sees it.
#[derive(Debug)]
pub struct Backend {
    /// Slice id (`cpu0`, `mig0-3`) or remote name: the `x-slice` value.
    pub id: String,
    pub model: String,
    pub profile: String,
    pub target: Target,
    pub stats: Arc<SliceStats>,
    /// The prompt prefixes recently sent here (what its prefix cache is thought to hold).
    pub prefixes: PrefixIndex,
    /// Taken out of rotation after a failure: until this instant, or (local) until the
    /// supervisor has started a new generation of the worker.
    suspended: Mutex<Option<(Instant, u64)>>,
    /// Removed from the router (a discovered worker that left DNS): its probe stops.
    retired: AtomicBool,
    /// Draining (evicted, unloaded, replaced): no new request goes to it; those in flight
    /// finish.
    draining: AtomicBool,
    /// `Authorization` value requests to it carry: the supervised workers' own key, or the
    /// key configured for a remote or discovered group. Marked sensitive (never printed).
    pub key: Option<axum::http::HeaderValue>,
}

impl Backend {
    pub fn local(slot: Arc<WorkerSlot>) -> Self {
        Self {
            id: slot.id().to_string(),
            model: slot.model().to_string(),
            profile: slot.profile().to_string(),
            target: Target::Local(slot),
            stats: Arc::default(),
            prefixes: PrefixIndex::default(),
            suspended: Mutex::new(None),
            retired: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            key: None,
        }
    }

    /// The backend, calling its worker with API key `key` when set.
    pub fn with_key(mut self, key: Option<&str>) -> Self {
        self.key = key.and_then(|k| {
            let mut v = axum::http::HeaderValue::from_str(&format!("Bearer {k}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        self
    }

    pub fn remote(id: String, model: String, profile: String, url: String) -> Self {
        Self {
            id,
            model,
            profile,
            target: Target::Remote {
                url: url.trim_end_matches('/').to_string(),
                healthy: AtomicBool::new(false),
            },
            stats: Arc::default(),
            prefixes: PrefixIndex::default(),
            suspended: Mutex::new(None),
            retired: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            key: None,
        }
    }

    /// `request` with the key this backend's worker requires, if any.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => request.header(axum::http::header::AUTHORIZATION, key.clone()),
            None => request,
        }
    }

    /// Marks the backend removed: its health probe stops.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Takes it out of rotation for good: no new request goes to it. Sequentially
    /// consistent with the router's pick ([`super::Front::pick_within`] counts a request in
    /// flight, then checks this), so once the drainer has set it and then sees no request in
    /// flight, none can slip in.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether it is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The base URL to send a request to, when the backend is in rotation.
    pub fn url(&self) -> Option<String> {
        self.route().map(|(url, _)| url)
    }

    /// Whether the backend is in rotation (what [`Backend::route`] answers, without copying).
    pub fn routable(&self) -> bool {
        if self.is_draining() || self.is_suspended() {
            return false;
        }
        match &self.target {
            Target::Local(slot) => {
                slot.with_status(|s| s.state == SlotState::Ready && s.url.is_some())
            }
            Target::Remote { healthy, .. } => healthy.load(Ordering::Acquire),
        }
    }

    /// The base URL and the worker generation it belongs to (pass that generation to
    /// [`Backend::suspend`] if the request fails), when the backend is in rotation.
    pub fn route(&self) -> Option<(String, u64)> {
        if self.is_draining() || self.is_suspended() {
            return None;
        }
        match &self.target {
            Target::Local(slot) => slot.with_status(|s| {
                let url = s.url.as_ref().filter(|_| s.state == SlotState::Ready)?;
                Some((url.clone(), s.generation))
            }),
            Target::Remote { url, healthy } => {
                healthy.load(Ordering::Acquire).then(|| (url.clone(), 0))
            }
        }
    }

    fn generation(&self) -> u64 {
        match &self.target {
            Target::Local(slot) => slot.with_status(|s| s.generation),
            Target::Remote { .. } => 0,
        }
    }

    fn is_suspended(&self) -> bool {
        let Ok(mut suspended) = self.suspended.lock() else {
            return false;
        };
        match *suspended {
            Some((until, generation))
                if Instant::now() < until && generation == self.generation() =>
            {
                true
            }
            Some(_) => {
                *suspended = None;
                false
            }
            None => false,
        }
    }

    /// Takes the backend out of rotation at once after a request to worker `generation`
    /// failed: a local worker comes back when the supervisor reports a new one ready (or after
    /// `grace`, if it never died); a remote one when its health probe succeeds again. A
    /// failure of an older generation (already replaced) changes nothing.
    pub fn suspend(&self, grace: Duration, generation: u64) {
        match &self.target {
            Target::Remote { healthy, .. } => healthy.store(false, Ordering::Release),
            Target::Local(_) => {
                if generation != self.generation() {
                    return;
                }
                if let Ok(mut suspended) = self.suspended.lock() {
                    *suspended = Some((Instant::now() + grace, generation));
                }
            }
        }
    }

    /// State name for `/slices` and metrics.
    pub fn state(&self) -> &'static str {
        let base = match &self.target {
            Target::Local(slot) => slot.with_status(|s| s.state.as_str()),
            Target::Remote { healthy, .. } => {
                if healthy.load(Ordering::Acquire) {
                    "ready"
                } else {
                    "unhealthy"
                }
            }
        };
        if self.is_draining() && matches!(base, "ready" | "starting" | "restarting") {
            "draining"
        } else if base == "ready" && self.is_suspended() {
            "suspended"
        } else {
            base
        }
    }

    /// Worker restarts (local backends).
    pub fn restarts(&self) -> u32 {
        match &self.target {
            Target::Local(slot) => slot.with_status(|s| s.restarts),
            Target::Remote { .. } => 0,
        }
    }
}

/// Keeps a remote backend's `healthy` flag up to date by polling its `/health` until it is
/// retired. Local backends need no probe (the supervisor checks them).
pub fn spawn_probe(backend: Arc<Backend>, client: reqwest::Client, interval: Duration) {
    let Target::Remote { url, .. } = &backend.target else {
        return;
    };
    let health_url = format!("{url}/health");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if backend.retired.load(Ordering::Acquire) {
                break;
            }
            let ok = matches!(
                client.get(&health_url).send().await,
                Ok(r) if r.status().is_success()
            );
            if let Target::Remote { healthy, .. } = &backend.target {
                let was = healthy.swap(ok, Ordering::AcqRel);
                if was != ok {
                    tracing::info!(slice = %backend.id, healthy = ok, "remote worker health changed");
                }
            }
        }
    });
}
