//! The fleet at work: loads asked for by requests, where they go (`choose.rs`), workers
//! started and watched, drains, idle models leaving.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::error::ApiError;
use crate::config::placement::{device_for, gb, Assignment};
use crate::router::backend::Backend;
use crate::router::lifecycle::Demand;
use crate::supervisor::{RestartPolicy, SlotState, SlotStatus, WorkerSlot};

use super::choose::{choose, Choice};
use super::drain::DrainReason;
use super::state::{lock, record_failure, PendingLoad, Phase, State, Worker};
use super::Fleet;

impl Fleet {
    /// The router found no slice of `model` that can take a request (none ready, or all full
    /// when `more`): whether to wait for a worker, starting a load where one is due.
    pub(super) fn demand_worker(&self, model: &str, more: bool) -> Demand {
        let changed = self.changed.subscribe();
        let mut st = lock(&self.state);
        if st.closing {
            return Demand::Refused(
                ApiError::Unhealthy("the server is shutting down".into()),
                Some(Duration::from_secs(1)),
            );
        }
        let Some(entry) = st.model(model) else {
            return Demand::Unmanaged;
        };
        let limit = entry.section.replica_limit();
        if let Some(f) = &entry.failure {
            let now = Instant::now();
            if f.gave_up {
                return Demand::Refused(
                    ApiError::Unhealthy(format!(
                        "model {model:?} failed to load too often; last: {} (an admin can retry with POST /models/load)",
                        f.reason
                    )),
                    None,
                );
            }
            if now < f.retry_at {
                return Demand::Refused(
                    ApiError::Unhealthy(format!("model {model:?} failed to load: {}", f.reason)),
                    Some(f.retry_at - now),
                );
            }
        }
        let live = st.workers_of(model).filter(|w| w.live()).count();
        let loading = st.workers_of(model).any(|w| w.phase == Phase::Loading);
        let waiting = st.pending.iter().any(|p| p.model == model);
        if waiting || loading || (!more && live > 0) {
            // A replica loading (or room being made for one), or one restarting after a
            // crash.
            return Demand::Wait(changed);
        }
        let full = |st: &State| {
            ApiError::Overloaded(format!(
                "every slice serving {model:?} is at its queue limit ({})",
                st.config.router.max_queue_per_slice
            ))
        };
        if st.replicas(model) >= limit {
            if more {
                return Demand::Refused(full(&st), Some(Duration::from_secs(1)));
            }
            let why = st
                .workers_of(model)
                .find_map(|w| w.slot.status().last_error)
                .unwrap_or_else(|| "its slices failed".into());
            return Demand::Refused(
                ApiError::Unhealthy(format!("no healthy slice serves {model:?}: {why}")),
                Some(Duration::from_secs(1)),
            );
        }
        if !st.config.lifecycle.autoload {
            if more {
                return Demand::Refused(full(&st), Some(Duration::from_secs(1)));
            }
            return Demand::Refused(
                ApiError::Unhealthy(format!(
                    "model {model:?} is not loaded and [lifecycle] autoload is off: an admin loads it with POST /models/load"
                )),
                None,
            );
        }
        match self.queue_load(&mut st, model, None, false) {
            Ok(()) => {
                drop(st);
                self.bump();
                Demand::Wait(changed)
            }
            Err(refusal) => Demand::Refused(refusal, None),
        }
    }

    /// Queues a load of `model` (on `slice` when given) and places what can be placed now.
    /// Refused when the model can go on no slice (or its files cannot be read).
    pub(super) fn queue_load(
        &self,
        st: &mut State,
        model: &str,
        slice: Option<usize>,
        explicit: bool,
    ) -> Result<(), ApiError> {
        let id = st.next_pending;
        st.next_pending += 1;
        let pending = PendingLoad {
            id,
            model: model.to_string(),
            target: slice,
            fixed: slice.is_some(),
            explicit,
            pinned: false,
        };
        // A model whose headers cannot be read fails now, as its load would. After a failed
        // load they are read again (the file may have been fixed); else the footprint read
        // once is kept.
        if let Some(entry) = st.model(model) {
            let section = entry.section.clone();
            if entry.failure.is_some() {
                st.footprints.forget(model);
            }
            let device = st
                .slices
                .first()
                .map(|s| device_for(&section, s))
                .unwrap_or(crate::contract::DeviceKind::Cpu);
            if let Err(reason) = st.footprints.of(&section, device) {
                self.load_failed(st, model, reason.clone());
                return Err(ApiError::Unhealthy(format!(
                    "model {model:?} failed to load: {reason}"
                )));
            }
        }
        st.pending.push(pending.clone());
        if let Err(why) = self.place_pending(st, &pending) {
            st.pending.retain(|p| p.id != id);
            tracing::warn!(model, %why, "model cannot be loaded on any slice");
            return Err(ApiError::Unplaceable(why));
        }
        Ok(())
    }

    /// Starts what can start of the loads waiting; drops those nobody waits for any more.
    pub(super) fn reconcile(&self, st: &mut State) {
        if st.closing {
            return;
        }
        let ids: Vec<u64> = st.pending.iter().map(|p| p.id).collect();
        for id in ids {
            let Some(p) = st.pending.iter().find(|p| p.id == id).cloned() else {
                continue;
            };
            let abandoned = p.target.is_none()
                && !p.explicit
                && !p.pinned
                && st.model(&p.model).is_none_or(|m| m.usage.held() == 0);
            if abandoned {
                st.pending.retain(|x| x.id != id);
                continue;
            }
            if let Err(why) = self.place_pending(st, &p) {
                st.pending.retain(|x| x.id != id);
                tracing::warn!(model = %p.model, %why, "load given up: no slice can hold it");
                self.load_failed(st, &p.model, why);
            }
        }
    }

    /// Places one waiting load: starts it, points it at a slice whose drains will make
    /// room, or drains the least recently used workers of a slice for it. `Err` when it can
    /// go nowhere.
    fn place_pending(&self, st: &mut State, p: &PendingLoad) -> Result<(), String> {
        let all = st.needs(p);
        let views = st.views(p);
        let choice = match p.target {
            Some(t) => {
                let only: Vec<Result<u64, String>> = all
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match i == t {
                        true => n.clone(),
                        false => Err(String::new()),
                    })
                    .collect();
                match choose(st.sharing, &st.slices, &views, &only) {
                    Choice::Wait | Choice::Never(_) if !p.fixed => {
                        choose(st.sharing, &st.slices, &views, &all)
                    }
                    other => other,
                }
            }
            None => choose(st.sharing, &st.slices, &views, &all),
        };
        let set_target = |st: &mut State, target: Option<usize>| {
            if let Some(x) = st.pending.iter_mut().find(|x| x.id == p.id) {
                x.target = target;
            }
        };
        match choice {
            Choice::Start(i) => {
                st.pending.retain(|x| x.id != p.id);
                self.start_on(st, &p.model, i, p.pinned)
            }
            Choice::AfterDrains(i) => {
                set_target(st, Some(i));
                Ok(())
            }
            Choice::Evict { slice, victims } => {
                for key in victims {
                    self.begin_drain(st, key, DrainReason::Evicted);
                }
                set_target(st, Some(slice));
                Ok(())
            }
            Choice::Wait => {
                if !p.fixed {
                    set_target(st, None);
                }
                Ok(())
            }
            Choice::Never(why) => Err(why),
        }
    }

    /// Starts a worker of `model` on slice `i` with its share there.
    fn start_on(&self, st: &mut State, model: &str, i: usize, pinned: bool) -> Result<(), String> {
        let section = st
            .model(model)
            .map(|m| m.section.clone())
            .ok_or_else(|| format!("model {model:?} is not catalogued"))?;
        let slice = st.slices[i].clone();
        let device = device_for(&section, &slice);
        let footprint = st.footprints.of(&section, device)?;
        let share = st.sharing.share(&slice, model, footprint)?;
        let assignment = Assignment {
            slice,
            model: section,
            device,
            footprint_bytes: footprint,
            share_bytes: share,
        };
        self.launch(st, assignment, i, pinned);
        Ok(())
    }

    /// Starts the worker of `assignment` on slice `i` and routes to it once ready.
    pub(super) fn launch(&self, st: &mut State, assignment: Assignment, i: usize, pinned: bool) {
        let policy = match pinned {
            true => RestartPolicy::Always,
            false => RestartPolicy::AfterFirstReady,
        };
        let share = assignment.share_bytes;
        let slot = self.supervisor.start(assignment, policy);
        let backend = Arc::new(Backend::local(slot.clone()).with_key(self.worker_key.as_deref()));
        if let Some(front) = self.front() {
            front.add_backend(backend.clone());
        }
        let share = share.map(gb).unwrap_or_else(|| "whole slice".into());
        let detail = format!("pinned={pinned} memory_share={share}");
        crate::access_log::model_event("load", slot.model(), slot.id(), &detail);
        st.workers.push(Worker {
            slot: slot.clone(),
            backend,
            slice: i,
            pinned,
            phase: Phase::Loading,
            started: Instant::now(),
        });
        let fleet = self.myself();
        tokio::spawn(async move {
            let mut status = slot.subscribe();
            loop {
                let now = status.borrow_and_update().clone();
                let Some(fleet) = fleet.upgrade() else { break };
                if !fleet.on_status(&slot, &now) {
                    break;
                }
                drop(fleet);
                if status.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// A worker's status changed; false once the fleet need not watch it any more.
    fn on_status(&self, slot: &Arc<WorkerSlot>, status: &SlotStatus) -> bool {
        let mut watch_on = true;
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let Some(at) = st.workers.iter().position(|w| w.key() == slot.key) else {
                return false;
            };
            match status.state {
                SlotState::Ready if st.workers[at].phase == Phase::Loading => {
                    st.workers[at].phase = Phase::Serving;
                    let secs = st.workers[at].started.elapsed().as_secs_f64();
                    if let Some(entry) = st.model_mut(slot.model()) {
                        entry.load_secs = Some(secs);
                        entry.failure = None;
                        entry.usage.counters.record_load(secs);
                    }
                    let detail = format!("load_secs={secs:.3}");
                    crate::access_log::model_event("loaded", slot.model(), slot.id(), &detail);
                }
                SlotState::Failed => {
                    watch_on = false;
                    let reason = status
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "its worker failed".into());
                    let w = &mut st.workers[at];
                    if matches!(w.phase, Phase::Draining(_)) {
                        // Its drain removes it.
                    } else if w.pinned {
                        w.phase = Phase::Failed;
                    } else {
                        let backend = w.backend.clone();
                        st.workers.remove(at);
                        if let Some(front) = self.front() {
                            front.remove_backend(&backend);
                        }
                        let fleet = self.myself();
                        let slot = slot.clone();
                        tokio::spawn(async move {
                            if let Some(fleet) = fleet.upgrade() {
                                fleet.supervisor.stop(&slot, Duration::ZERO).await;
                            }
                        });
                    }
                    self.load_failed(st, slot.model(), reason);
                    self.reconcile(st);
                }
                SlotState::Stopped => watch_on = false,
                _ => {}
            }
        }
        self.bump();
        watch_on
    }

    /// Records a failed load of `model`: its requests get 503 with the reason until the
    /// backoff has passed.
    pub(super) fn load_failed(&self, st: &mut State, model: &str, reason: String) {
        let t = self.supervisor.timings().clone();
        if let Some(entry) = st.model_mut(model) {
            entry
                .usage
                .counters
                .load_failures
                .fetch_add(1, Ordering::Relaxed);
            record_failure(
                entry,
                reason.clone(),
                t.restart_backoff,
                t.restart_backoff_max,
                t.max_crashes,
                t.crash_window,
            );
        }
        crate::access_log::model_event("load_failed", model, "-", &reason);
    }

    /// Takes worker `key` out of rotation and stops it once its requests in flight are
    /// done (at most `drain_timeout_secs`); the fleet forgets it when it has exited.
    pub(super) fn begin_drain(&self, st: &mut State, key: u64, reason: DrainReason) {
        let Some(w) = st.worker_mut(key) else {
            return;
        };
        if matches!(w.phase, Phase::Draining(_)) {
            return;
        }
        w.phase = Phase::Draining(reason);
        w.backend.drain();
        let (slot, backend) = (w.slot.clone(), w.backend.clone());
        if let Some(entry) = st.model(slot.model()) {
            entry.usage.counters.record_drain(reason);
        }
        let event = match reason {
            DrainReason::Evicted | DrainReason::Idle => "evict",
            DrainReason::Unload | DrainReason::Reload => "unload",
        };
        let detail = format!(
            "reason={} in_flight={}",
            reason.as_str(),
            backend.stats.in_flight()
        );
        crate::access_log::model_event(event, slot.model(), slot.id(), &detail);
        let fleet = self.myself();
        let drain = self.supervisor.timings().drain;
        let stop = self.supervisor.timings().stop;
        tokio::spawn(async move {
            let deadline = Instant::now() + drain;
            while backend.stats.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let Some(fleet) = fleet.upgrade() else { return };
            fleet.supervisor.stop(&slot, stop).await;
            if let Some(front) = fleet.front() {
                front.remove_backend(&backend);
            }
            {
                let mut st = lock(&fleet.state);
                st.workers.retain(|w| w.key() != slot.key);
                crate::access_log::model_event("unloaded", slot.model(), slot.id(), "");
                fleet.reconcile(&mut st);
            }
            fleet.bump();
        });
    }

    /// Runs every 250 ms: idle models leave; waiting loads are looked at again (a safety
    /// net: every change looks at them already). False once shut down.
    pub(super) fn tick(&self) -> bool {
        let mut st = lock(&self.state);
        if st.closing {
            return false;
        }
        if let Some(idle) = st.config.lifecycle.idle_unload_secs {
            let now = self.now_ms();
            let idle_ms = (idle * 1000.0) as u64;
            let leaving: Vec<u64> = st
                .workers
                .iter()
                .filter(|w| !w.pinned && w.phase == Phase::Serving)
                .filter(|w| w.backend.stats.in_flight() == 0)
                .filter(|w| {
                    let Some(entry) = st.model(w.model()) else {
                        return false;
                    };
                    let started = self.ms_at(w.started);
                    let last = entry.usage.last_use_ms.load(Ordering::Relaxed).max(started);
                    entry.usage.held() == 0 && now.saturating_sub(last) >= idle_ms
                })
                .map(Worker::key)
                .collect();
            for key in leaving {
                self.begin_drain(&mut st, key, DrainReason::Idle);
            }
        }
        let before = st.pending.len();
        self.reconcile(&mut st);
        let changed = st.pending.len() != before;
        drop(st);
        if changed {
            self.bump();
        }
        true
    }

    /// `at` in the fleet's milliseconds.
    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}
