//! What the admin API says and does about one model: its card (`GET /models`), an admin's
//! load and unload.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::drain::DrainReason;
use super::state::{lock, Phase, State};
use super::Fleet;
use crate::api::error::ApiError;
use crate::config::placement::device_for;
use crate::supervisor::SlotState;

/// One model in `GET /models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub owned_by: &'static str,
    /// `{"value": state}`, as llama.cpp's router mode has it; with `reason` (and
    /// `retry_in_secs`) when its last load failed.
    pub status: CardStatus,
    /// `config` (a `[[models]]` entry) or `models_dir`.
    pub source: &'static str,
    pub path: String,
    /// Replicas pinned by the config (never evicted).
    pub pinned_replicas: usize,
    pub max_replicas: usize,
    /// Its workers: slice, state, memory share.
    pub replicas: Vec<ReplicaCard>,
    /// Unix time of the last request for it, seconds.
    pub last_used: Option<f64>,
    /// Seconds since then.
    pub idle_secs: Option<f64>,
    /// Seconds its last load took.
    pub load_seconds: Option<f64>,
    /// Estimated memory of one worker (weights + KV cache + 10 %), bytes.
    pub memory_bytes: Option<u64>,
    pub loads: u64,
    pub load_failures: u64,
    pub evictions: u64,
    pub held_requests: usize,
}

/// `status` of a [`ModelCard`].
#[derive(Debug, Clone, Serialize)]
pub struct CardStatus {
    /// `unloaded`, `loading`, `loaded`, `draining` or `failed`.
    pub value: &'static str,
    /// Why its last load failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds until a request may load it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<f64>,
}

/// One worker of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaCard {
    pub slice: String,
    pub profile: String,
    /// The router's view: starting, ready, restarting, draining, failed, …
    pub state: &'static str,
    pub pinned: bool,
    /// Bytes of its slice it may use (`null`: the whole slice).
    pub memory_share_bytes: Option<u64>,
    pub pid: Option<u32>,
    pub in_flight: usize,
}

impl Fleet {
    /// The card of every catalogued model, in catalogue order.
    pub fn cards(&self) -> Vec<ModelCard> {
        let mut st = lock(&self.state);
        let names: Vec<String> = st.models.iter().map(|m| m.section.name.clone()).collect();
        names
            .iter()
            .filter_map(|name| self.card(&mut st, name))
            .collect()
    }

    fn card(&self, st: &mut State, model: &str) -> Option<ModelCard> {
        let state = st.model_state(model);
        let memory = {
            let section = st.model(model)?.section.clone();
            let device = st.slices.first().map(|s| device_for(&section, s))?;
            st.footprints.of(&section, device).ok()
        };
        let replicas = st
            .workers_of(model)
            .map(|w| ReplicaCard {
                slice: w.slot.id().to_string(),
                profile: w.slot.profile().to_string(),
                state: w.backend.state(),
                pinned: w.pinned,
                memory_share_bytes: w.slot.assignment.share_bytes,
                pid: w.slot.status().pid,
                in_flight: w.backend.stats.in_flight(),
            })
            .collect();
        let entry = st.model(model)?;
        let usage = &entry.usage;
        let last_unix = usage.last_use_unix_ms.load(Ordering::Relaxed);
        let last_ms = usage.last_use_ms.load(Ordering::Relaxed);
        let now = Instant::now();
        let failure = entry.failure.as_ref();
        let c = &usage.counters;
        Some(ModelCard {
            id: model.to_string(),
            object: "model",
            owned_by: "migserve",
            status: CardStatus {
                value: state,
                reason: failure.map(|f| f.reason.clone()),
                retry_in_secs: failure
                    .filter(|f| !f.gave_up && f.retry_at > now)
                    .map(|f| (f.retry_at - now).as_secs_f64()),
            },
            source: match entry.section.from_models_dir {
                true => "models_dir",
                false => "config",
            },
            path: entry.section.path.display().to_string(),
            pinned_replicas: entry.section.pinning().count(),
            max_replicas: entry.section.replica_limit(),
            replicas,
            last_used: (last_unix > 0).then(|| last_unix as f64 / 1000.0),
            idle_secs: (last_ms > 0).then(|| self.now_ms().saturating_sub(last_ms) as f64 / 1000.0),
            load_seconds: entry.load_secs,
            memory_bytes: memory,
            loads: c.loads.load(Ordering::Relaxed),
            load_failures: c.load_failures.load(Ordering::Relaxed),
            evictions: c.evictions(),
            held_requests: usage.held(),
        })
    }

    fn card_json(&self, model: &str) -> serde_json::Value {
        let mut st = lock(&self.state);
        self.card(&mut st, model)
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// An admin's load of `model` (on `slice` when given); with `wait`, answers once it is
    /// loaded, failed, or past the load timeout.
    pub async fn load(
        &self,
        model: &str,
        slice: Option<&str>,
        wait: bool,
    ) -> Result<serde_json::Value, ApiError> {
        let mut changed = self.changed.subscribe();
        let (at, failures_before, timeout) = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let at = self.check_call(st, model, slice)?;
            let entry = st.model(model).ok_or_else(|| not_catalogued(st, model))?;
            let failures_before = entry.usage.counters.load_failures.load(Ordering::Relaxed);
            let limit = entry.section.replica_limit();
            let there = st
                .workers_of(model)
                .any(|w| w.live() && at.is_none_or(|i| w.slice == i))
                || st
                    .pending
                    .iter()
                    .any(|p| p.model == model && (at.is_none() || p.target == at));
            if !there {
                let have = st.replicas(model);
                if have >= limit {
                    return Err(ApiError::Conflict(format!(
                        "model {model:?} has {have} replicas, its max_replicas ({limit}): unload one first, or raise max_replicas"
                    )));
                }
                if let Some(entry) = st.model_mut(model) {
                    entry.failure = None;
                }
                self.queue_load(st, model, at, true)?;
            }
            let timeout = Duration::from_secs_f64(st.config.lifecycle.load_timeout_secs);
            (at, failures_before, timeout)
        };
        self.bump();
        if !wait {
            return Ok(self.card_json(model));
        }
        let deadline = Instant::now() + timeout;
        loop {
            {
                let st = lock(&self.state);
                let ready = st.workers_of(model).any(|w| {
                    w.phase == Phase::Serving
                        && at.is_none_or(|i| w.slice == i)
                        && w.slot.with_status(|s| s.state == SlotState::Ready)
                });
                if ready {
                    drop(st);
                    return Ok(self.card_json(model));
                }
                let entry = st.model(model).ok_or_else(|| not_catalogued(&st, model))?;
                if entry.usage.counters.load_failures.load(Ordering::Relaxed) > failures_before {
                    let why = entry
                        .failure
                        .as_ref()
                        .map(|f| f.reason.clone())
                        .unwrap_or_else(|| "its worker failed".into());
                    return Err(ApiError::Unhealthy(format!(
                        "model {model:?} failed to load: {why}"
                    )));
                }
                let going = st.workers_of(model).any(|w| w.live())
                    || st.pending.iter().any(|p| p.model == model);
                if !going {
                    return Err(ApiError::Unhealthy(format!(
                        "the load of {model:?} was cancelled (unloaded or removed meanwhile)"
                    )));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::Unhealthy(format!(
                    "model {model:?} was not loaded within the load timeout ({:.0} s); it is still loading",
                    timeout.as_secs_f64()
                )));
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(500)), changed.changed()).await;
        }
    }

    /// An admin's unload of `model` (its replica on `slice` only, when given): drains its
    /// unpinned replicas and answers once they have stopped.
    pub async fn unload(
        &self,
        model: &str,
        slice: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let mut changed = self.changed.subscribe();
        let keys: Vec<u64> = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let at = self.check_call(st, model, slice)?;
            st.pending
                .retain(|p| !(p.model == model && at.is_none_or(|i| p.target == Some(i))));
            let targets: Vec<(u64, bool)> = st
                .workers_of(model)
                .filter(|w| w.live() && at.is_none_or(|i| w.slice == i))
                .map(|w| (w.key(), w.pinned))
                .collect();
            if !targets.is_empty() && targets.iter().all(|(_, pinned)| *pinned) {
                return Err(ApiError::Conflict(format!(
                    "model {model:?} is pinned there by the config (replicas, profiles or slices): change the config and reload to unload it"
                )));
            }
            let keys: Vec<u64> = targets
                .iter()
                .filter(|(_, pinned)| !pinned)
                .map(|(k, _)| *k)
                .collect();
            for &key in &keys {
                self.begin_drain(st, key, DrainReason::Unload);
            }
            keys
        };
        self.bump();
        let t = self.supervisor.timings();
        let deadline = Instant::now() + t.drain + t.stop + Duration::from_secs(5);
        loop {
            let left_over = {
                let st = lock(&self.state);
                keys.iter().any(|k| st.worker(*k).is_some())
            };
            if !left_over {
                return Ok(self.card_json(model));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::Unhealthy(format!(
                    "model {model:?} is still draining"
                )));
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(500)), changed.changed()).await;
        }
    }

    /// Checks an admin call's model and slice; the slice's index.
    fn check_call(
        &self,
        st: &State,
        model: &str,
        slice: Option<&str>,
    ) -> Result<Option<usize>, ApiError> {
        if st.closing {
            return Err(ApiError::Unhealthy("the server is shutting down".into()));
        }
        if st.model(model).is_none() {
            return Err(not_catalogued(st, model));
        }
        slice
            .map(|id| {
                st.slices
                    .iter()
                    .position(|s| s.id == id || s.uuid == id)
                    .ok_or_else(|| {
                        let ids: Vec<&str> = st.slices.iter().map(|s| s.id.as_str()).collect();
                        ApiError::NotFound(format!("no slice {id:?} (slices: {})", ids.join(", ")))
                    })
            })
            .transpose()
    }
}

fn not_catalogued(st: &State, model: &str) -> ApiError {
    let names: Vec<&str> = st.models.iter().map(|m| m.section.name.as_str()).collect();
    ApiError::NotFound(format!(
        "model {model:?} is not catalogued (models: {})",
        names.join(", ")
    ))
}
