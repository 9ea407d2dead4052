//! The front endpoint of `migserve serve`: slice status, health and metrics over the
//! supervised workers.

pub mod status;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::config::DeployConfig;
use crate::supervisor::WorkerSlot;

/// State shared by the front's handlers.
pub struct Front {
    pub slots: Arc<[Arc<WorkerSlot>]>,
}

impl Front {
    pub fn new(slots: Arc<[Arc<WorkerSlot>]>, _config: &DeployConfig) -> Arc<Self> {
        Arc::new(Self { slots })
    }
}

/// Shared handle on the front.
pub type SharedFront = Arc<Front>;

impl Front {
    /// All routes of the front.
    pub fn app(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/slices", get(status::slices))
            .route("/health", get(status::health))
            .route("/metrics", get(status::metrics))
            .with_state(self.clone())
    }
}
