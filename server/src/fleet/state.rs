//! The fleet's state: the catalogue with each model's use and failures, the workers on the
//! slices, and the loads waiting for room. Changed only under the fleet's lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::placement::{device_for, Footprints, Sharing};
use crate::config::{DeployConfig, ModelSection};
use crate::router::backend::Backend;
use crate::slices::Slice;
use crate::supervisor::backoff::{Backoff, CrashWindow};
use crate::supervisor::{SlotState, WorkerSlot};

use super::choose::{Needs, SliceView, Tenant};
use super::drain::DrainReason;
use super::metrics::ModelCounters;

/// Where a worker is in its life, as the fleet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet ready.
    Loading,
    /// Ready once (it may be restarting after a crash).
    Serving,
    /// Leaving: no new requests; stopped once its requests in flight are done.
    Draining(DrainReason),
    /// A pinned worker that crashed too often; it keeps its slice.
    Failed,
}

/// What a model's requests share outside the lock: its last use and its held requests.
#[derive(Debug, Default)]
pub struct Usage {
    /// Milliseconds since the fleet started at its last request (0: never).
    pub last_use_ms: AtomicU64,
    /// Requests held now, waiting for a worker.
    pub held: Arc<AtomicUsize>,
    /// Wall-clock time of the last use, seconds since the Unix epoch (for `GET /models`).
    pub last_use_unix_ms: AtomicU64,
    pub counters: ModelCounters,
}

impl Usage {
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// A load that failed: the reason, and when the next may be tried.
#[derive(Debug)]
pub struct LoadFailure {
    pub reason: String,
    pub retry_at: Instant,
    pub backoff: Backoff,
    pub crashes: CrashWindow,
    /// Too many failures within the crash window: no more loads until an admin asks.
    pub gave_up: bool,
}

/// A model of the catalogue.
#[derive(Debug)]
pub struct ModelEntry {
    pub section: ModelSection,
    pub usage: Arc<Usage>,
    pub failure: Option<LoadFailure>,
    /// Seconds its last load took.
    pub load_secs: Option<f64>,
}

/// A worker the fleet started.
#[derive(Debug)]
pub struct Worker {
    pub slot: Arc<WorkerSlot>,
    pub backend: Arc<Backend>,
    /// Index of its slice.
    pub slice: usize,
    pub pinned: bool,
    pub phase: Phase,
    pub started: Instant,
}

impl Worker {
    pub fn key(&self) -> u64 {
        self.slot.key
    }

    pub fn model(&self) -> &str {
        self.slot.model()
    }

    /// Bytes of its slice it holds.
    pub fn bytes(&self) -> u64 {
        self.slot.assignment.held_bytes()
    }

    /// Serving or about to: neither leaving nor failed.
    pub fn live(&self) -> bool {
        matches!(self.phase, Phase::Loading | Phase::Serving)
    }
}

/// A load waiting to start: for room on a slice, or for drains to end.
#[derive(Debug, Clone)]
pub struct PendingLoad {
    pub id: u64,
    pub model: String,
    /// The slice it will start on once there is room (`None`: not chosen yet).
    pub target: Option<usize>,
    /// The target was asked for (an admin load with a slice, a pinned replica).
    pub fixed: bool,
    /// An admin asked for it: kept even when no request waits for it.
    pub explicit: bool,
    pub pinned: bool,
}

/// Everything the fleet knows.
#[derive(Debug)]
pub struct State {
    pub config: DeployConfig,
    pub sharing: Sharing,
    pub slices: Vec<Slice>,
    pub models: Vec<ModelEntry>,
    pub workers: Vec<Worker>,
    pub pending: Vec<PendingLoad>,
    pub footprints: Footprints,
    pub next_pending: u64,
    /// Shutting down: no more loads.
    pub closing: bool,
}

impl State {
    pub fn model(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.section.name == name)
    }

    pub fn model_mut(&mut self, name: &str) -> Option<&mut ModelEntry> {
        self.models.iter_mut().find(|m| m.section.name == name)
    }

    pub fn worker(&self, key: u64) -> Option<&Worker> {
        self.workers.iter().find(|w| w.key() == key)
    }

    pub fn worker_mut(&mut self, key: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.key() == key)
    }

    /// The workers of `model`.
    pub fn workers_of<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Worker> + 'a {
        self.workers.iter().filter(move |w| w.model() == model)
    }

    /// The state `GET /models` reports for `model`.
    pub fn model_state(&self, name: &str) -> &'static str {
        let phases: Vec<Phase> = self.workers_of(name).map(|w| w.phase).collect();
        let ready = self.workers_of(name).any(|w| {
            w.phase == Phase::Serving && w.slot.with_status(|s| s.state == SlotState::Ready)
        });
        if ready {
            "loaded"
        } else if phases
            .iter()
            .any(|p| matches!(p, Phase::Loading | Phase::Serving))
            || self.pending.iter().any(|p| p.model == name)
        {
            "loading"
        } else if phases.iter().any(|p| matches!(p, Phase::Draining(_))) {
            "draining"
        } else if phases.contains(&Phase::Failed)
            || self.model(name).is_some_and(|m| m.failure.is_some())
        {
            "failed"
        } else {
            "unloaded"
        }
    }

    /// Bytes `section` would hold on slice `i`, or why it cannot go there.
    pub fn need_on(&mut self, section: &ModelSection, i: usize) -> Result<u64, String> {
        let slice = &self.slices[i];
        let device = device_for(section, slice);
        if device == crate::contract::DeviceKind::Cuda
            && slice.kind == crate::slices::SliceKind::Cpu
        {
            return Err(format!(
                "model {:?} asks for device cuda but slice {} is a CPU slice",
                section.name, slice.id
            ));
        }
        let footprint = self.footprints.of(section, device)?;
        let share = self.sharing.share(slice, &section.name, footprint)?;
        Ok(share.or(slice.memory_bytes).unwrap_or(footprint))
    }

    /// What a load of `pending` needs of each slice.
    pub fn needs(&mut self, pending: &PendingLoad) -> Needs {
        let Some(section) = self.model(&pending.model).map(|m| m.section.clone()) else {
            return vec![Err(format!("model {:?} is not catalogued", pending.model))];
        };
        (0..self.slices.len())
            .map(|i| {
                if pending.fixed && pending.target != Some(i) {
                    return Err(format!(
                        "model {:?} was asked for on another slice",
                        section.name
                    ));
                }
                let here = self
                    .workers
                    .iter()
                    .any(|w| w.slice == i && w.model() == section.name && w.live());
                if here {
                    return Err(format!(
                        "slice {} holds a replica of {:?} already",
                        self.slices[i].id, section.name
                    ));
                }
                self.need_on(&section, i)
            })
            .collect()
    }

    /// The slices' tenants and promised room, as a load of `pending` sees them.
    pub fn views(&mut self, pending: &PendingLoad) -> Vec<SliceView> {
        let mut views = vec![SliceView::default(); self.slices.len()];
        for w in &self.workers {
            let usage = self.model(w.model()).map(|m| m.usage.clone());
            let waited_for = usage.as_ref().is_some_and(|u| u.held() > 0);
            views[w.slice].tenants.push(Tenant {
                key: w.key(),
                model: w.model().to_string(),
                bytes: w.bytes(),
                draining: matches!(w.phase, Phase::Draining(_)),
                evictable: !w.pinned
                    && w.phase == Phase::Serving
                    && !waited_for
                    && w.model() != pending.model,
                last_use: usage
                    .map(|u| u.last_use_ms.load(Ordering::Relaxed))
                    .unwrap_or(0),
            });
        }
        let others: Vec<PendingLoad> = self
            .pending
            .iter()
            .filter(|p| p.id != pending.id && p.target.is_some())
            .cloned()
            .collect();
        for other in others {
            let Some(target) = other.target else {
                continue;
            };
            let Some(section) = self.model(&other.model).map(|m| m.section.clone()) else {
                continue;
            };
            if let Ok(bytes) = self.need_on(&section, target) {
                views[target].promised.push(bytes);
            }
        }
        views
    }

    /// Workers of `model` that count against its replica limit.
    pub fn replicas(&self, model: &str) -> usize {
        self.workers_of(model)
            .filter(|w| w.live() || w.phase == Phase::Failed)
            .count()
            + self.pending.iter().filter(|p| p.model == model).count()
    }
}

/// Records a failed load of `entry`: the next may be tried after the backoff; too many in
/// the crash window and no more are tried until an admin asks.
pub fn record_failure(
    entry: &mut ModelEntry,
    reason: String,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_crashes: u32,
    window: Duration,
) {
    let now = Instant::now();
    let failure = entry.failure.get_or_insert_with(|| LoadFailure {
        reason: String::new(),
        retry_at: now,
        backoff: Backoff::new(backoff_initial, backoff_max),
        crashes: CrashWindow::new(max_crashes, window),
        gave_up: false,
    });
    failure.reason = reason;
    failure.retry_at = now + failure.backoff.next_delay();
    failure.gave_up = failure.crashes.record(now);
}

/// A share of `Mutex<State>` that survives a panicking holder (the state stays usable).
pub fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
