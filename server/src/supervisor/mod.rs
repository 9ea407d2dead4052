//! The supervisor: one `migserve worker` process per slot (a model on a slice), started,
//! watched, restarted and stopped; slots come and go while serving.

pub mod backoff;
pub mod lifecycle;
pub mod process;
pub mod slot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// What a slot does when its worker fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart with backoff until too many crashes in the window (pinned replicas).
    Always,
    /// A worker that fails before it was ever ready marks the slot failed at once (a model
    /// loaded on demand: its fleet decides about retries); once it has been ready, as
    /// `Always`.
    AfterFirstReady,
}

/// One slot's task and the sender that stops it.
struct Running {
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

/// The workers this process supervises, one task per slot; slots are started and stopped
/// while serving.
pub struct Supervisor {
    timings: Timings,
    exe: PathBuf,
    next_key: AtomicU64,
    running: Mutex<HashMap<u64, (Arc<WorkerSlot>, Running)>>,
}

impl Supervisor {
    /// A supervisor starting `exe worker …` (`exe` is the migserve binary).
    pub fn new(timings: Timings, exe: PathBuf) -> Self {
        Self {
            timings,
            exe,
            next_key: AtomicU64::new(1),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The timings its slots run with.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Starts a slot for `assignment` and returns it. Must be called inside a tokio runtime.
    pub fn start(&self, assignment: Assignment, policy: RestartPolicy) -> Arc<WorkerSlot> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(WorkerSlot::new(key, assignment));
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(lifecycle::run_slot(
            slot.clone(),
            self.exe.clone(),
            self.timings.clone(),
            policy,
            stop_rx,
        ));
        if let Ok(mut running) = self.running.lock() {
            running.insert(key, (slot.clone(), Running { stop, task }));
        }
        slot
    }

    /// The slots running now, oldest first.
    pub fn slots(&self) -> Vec<Arc<WorkerSlot>> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut slots: Vec<Arc<WorkerSlot>> = running.values().map(|(s, _)| s.clone()).collect();
        slots.sort_by_key(|s| s.key);
        slots
    }

    /// Stops one slot's worker (SIGTERM: it finishes what it still has; SIGKILL after
    /// `grace`) and waits until its task has ended.
    pub async fn stop(&self, slot: &WorkerSlot, grace: Duration) {
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&slot.key));
        if let Some((_, running)) = running {
            let _ = running.stop.send(Some(grace));
            let _ = running.task.await;
        }
    }

    /// Stops every worker (as [`Supervisor::stop`], all at once) and waits until all have
    /// exited.
    pub async fn shutdown(&self, grace: Duration) {
        let all: Vec<Running> = match self.running.lock() {
            Ok(mut running) => running.drain().map(|(_, (_, r))| r).collect(),
            Err(_) => Vec::new(),
        };
        for running in &all {
            let _ = running.stop.send(Some(grace));
        }
        for running in all {
            let _ = running.task.await;
        }
    }
}
