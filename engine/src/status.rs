//! What the submitting side and the engine thread share: requests in flight, health, and the
//! prefix cache's counters; and how a panic on the engine thread becomes a dead engine
//! rather than a zombie (every request in flight gets [`crate::EngineError::Crashed`], and
//! whoever watches [`EngineStatus::watch`] exits so that the supervisor restarts it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::block_manager::PrefixStats;
use crate::engine::{Health, PrefixCacheStatus};

/// What the submitting side and the engine thread share: requests in flight and health.
#[derive(Debug)]
pub struct EngineStatus {
    in_flight: AtomicUsize,
    health: watch::Sender<Health>,
    /// Held while a request is checked against the health and sent, and while the engine is
    /// marked dead: once it is dead, nothing more can reach the channel, so the thread's last
    /// drain fails every request that did.
    gate: Mutex<()>,
    /// The prefix cache's counters as of the last step.
    prefix: Mutex<PrefixCacheStatus>,
}

impl Default for EngineStatus {
    fn default() -> Self {
        Self {
            prefix: Mutex::new(PrefixCacheStatus::default()),
            in_flight: AtomicUsize::new(0),
            health: watch::Sender::new(Health::Healthy),
            gate: Mutex::new(()),
        }
    }
}

impl EngineStatus {
    /// Counts a new request in flight unless `limit` are already; the count before it.
    pub fn try_admit(&self, limit: usize) -> Result<usize, usize> {
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if previous >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(previous);
        }
        Ok(previous)
    }

    /// A request in flight is done (finished, failed, cancelled, or never reached the thread).
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests waiting or running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The engine's health now.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Health changes.
    pub fn watch(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Holds off [`EngineStatus::mark_dead`] while a submitter checks the health and sends.
    pub fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The prefix cache's counters as of the last step.
    pub fn prefix_cache(&self) -> PrefixCacheStatus {
        *self.prefix.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_prefix_stats(&self, stats: PrefixStats, cached_blocks: usize) {
        let mut p = self.prefix.lock().unwrap_or_else(|p| p.into_inner());
        p.queried_tokens = stats.queried_tokens;
        p.hit_tokens = stats.hit_tokens;
        p.evicted_blocks = stats.evicted_blocks;
        p.cached_blocks = cached_blocks;
    }

    /// Marks the engine dead for good (the first reason stays).
    pub fn mark_dead(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let _gate = self.gate();
        self.health.send_if_modified(|h| {
            if h.is_healthy() {
                *h = Health::Dead(reason);
                true
            } else {
                false
            }
        });
    }
}

/// Marks the engine dead when the thread ends by any path: all senders gone, or a panic
/// (marked with its own reason first), even one while cleaning up after a panic.
pub(crate) struct DeadOnExit(pub(crate) Arc<EngineStatus>);

impl Drop for DeadOnExit {
    fn drop(&mut self) {
        self.0.mark_dead("the engine has stopped");
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
