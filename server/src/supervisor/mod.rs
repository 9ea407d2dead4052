//! The supervisor: one `migserve worker` process per assigned slice, started, watched,
//! restarted and stopped.

pub mod backoff;
pub mod lifecycle;
pub mod process;
pub mod slot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::placement::Assignment;
use crate::config::SupervisorSection;
pub use slot::{SlotState, SlotStatus, WorkerSlot};

/// Supervisor timings, as durations.
#[derive(Debug, Clone)]
pub struct Timings {
    pub ready_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub unhealthy_after: u32,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub max_crashes: u32,
    pub crash_window: Duration,
    pub drain: Duration,
    pub stop: Duration,
}

impl From<&SupervisorSection> for Timings {
    fn from(s: &SupervisorSection) -> Self {
        let secs = Duration::from_secs_f64;
        Self {
            ready_timeout: secs(s.ready_timeout_secs),
            health_interval: secs(s.health_interval_secs),
            health_timeout: secs(s.health_timeout_secs),
            unhealthy_after: s.unhealthy_after,
            restart_backoff: secs(s.restart_backoff_secs),
            restart_backoff_max: secs(s.restart_backoff_max_secs),
            max_crashes: s.max_crashes,
            crash_window: secs(s.crash_window_secs),
            drain: secs(s.drain_timeout_secs),
            stop: secs(s.stop_timeout_secs),
        }
    }
}

/// Running workers, one per slot.
pub struct Supervisor {
    slots: Arc<[Arc<WorkerSlot>]>,
    /// `Some(grace)` once shutdown is asked for: workers get SIGTERM, then SIGKILL after grace.
    shutdown: watch::Sender<Option<Duration>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts one worker per assignment (`exe` is the migserve binary). Must be called inside
    /// a tokio runtime.
    pub fn start(assignments: Vec<Assignment>, timings: Timings, exe: PathBuf) -> Self {
        let slots: Arc<[Arc<WorkerSlot>]> = assignments
            .into_iter()
            .map(|a| Arc::new(WorkerSlot::new(a)))
            .collect();
        let (shutdown, _) = watch::channel(None);
        let tasks = slots
            .iter()
            .map(|slot| {
                tokio::spawn(lifecycle::run_slot(
                    slot.clone(),
                    exe.clone(),
                    timings.clone(),
                    shutdown.subscribe(),
                ))
            })
            .collect();
        Self {
            slots,
            shutdown,
            tasks,
        }
    }

    /// The slots, shared with the router.
    pub fn slots(&self) -> Arc<[Arc<WorkerSlot>]> {
        self.slots.clone()
    }

    /// Stops every worker (SIGTERM: each finishes what it still has in flight; SIGKILL after
    /// `grace`) and waits until all have exited.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(Some(grace));
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
