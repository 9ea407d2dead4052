//! One supervised worker slot: an assignment (model on slice) and its live status.

use serde::Serialize;
use tokio::sync::watch;

use crate::config::placement::Assignment;

/// Where a slot's worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Spawned, loading its model.
    Starting,
    /// Reported ready and passing health checks.
    Ready,
    /// Crashed or hung; waiting out the backoff before the next start.
    Restarting,
    /// Crashed too often within the window; left stopped.
    Failed,
    /// Draining on shutdown.
    Stopping,
    /// Stopped on shutdown.
    Stopped,
}

impl SlotState {
    /// All states, for metrics that export one series per state.
    pub const ALL: [SlotState; 6] = [
        SlotState::Starting,
        SlotState::Ready,
        SlotState::Restarting,
        SlotState::Failed,
        SlotState::Stopping,
        SlotState::Stopped,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Restarting => "restarting",
            SlotState::Failed => "failed",
            SlotState::Stopping => "stopping",
            SlotState::Stopped => "stopped",
        }
    }
}

/// A slot's status as the router and `/slices` see it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub state: SlotState,
    /// Base URL of the running worker (`http://127.0.0.1:PORT`), while it runs.
    pub url: Option<String>,
    /// Process id of the running worker.
    pub pid: Option<u32>,
    /// Restarts after crashes or hangs.
    pub restarts: u32,
    /// Why it last stopped or failed.
    pub last_error: Option<String>,
    /// Increases with every start; lets watchers tell a restarted worker from the old one.
    pub generation: u64,
}

/// A model on a slice, with its worker's status.
#[derive(Debug)]
pub struct WorkerSlot {
    /// Unique among the slots of one supervisor (a slice may hold several).
    pub key: u64,
    pub assignment: Assignment,
    status: watch::Sender<SlotStatus>,
}

impl WorkerSlot {
    pub fn new(key: u64, assignment: Assignment) -> Self {
        let (status, _) = watch::channel(SlotStatus {
            state: SlotState::Starting,
            url: None,
            pid: None,
            restarts: 0,
            last_error: None,
            generation: 0,
        });
        Self {
            key,
            assignment,
            status,
        }
    }

    /// The slice id (`cpu0`, `mig0-3`).
    pub fn id(&self) -> &str {
        &self.assignment.slice.id
    }

    /// The model name clients ask for.
    pub fn model(&self) -> &str {
        &self.assignment.model.name
    }

    /// The slice's profile.
    pub fn profile(&self) -> &str {
        &self.assignment.slice.profile
    }

    /// A snapshot of the status.
    pub fn status(&self) -> SlotStatus {
        self.status.borrow().clone()
    }

    /// Reads the status in place (no copy): for checks on the router's per-request path.
    pub fn with_status<T>(&self, read: impl FnOnce(&SlotStatus) -> T) -> T {
        read(&self.status.borrow())
    }

    /// Notified on every status change.
    pub fn subscribe(&self) -> watch::Receiver<SlotStatus> {
        self.status.subscribe()
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut SlotStatus)) {
        self.status.send_modify(change);
    }
}
