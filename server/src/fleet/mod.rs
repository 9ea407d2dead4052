//! The fleet: the catalogue of models and the placement that changes while `serve` runs.
//!
//! Pinned replicas load at start and stay. Other models load on the first request for them
//! (the request is held meanwhile), on a slice with room or in place of the least recently
//! used unpinned model, which is drained first: its requests in flight finish, nothing new
//! goes to it. Idle models leave after `idle_unload_secs`. An admin loads and unloads models
//! (`admin.rs`) and reloads the config (`reload.rs`), which restarts only the workers whose
//! model or settings changed.
//!
//! The fleet drives the supervisor (one slot per worker) and tells the router which workers
//! exist ([`Front::add_backend`]); the router asks it, through [`Lifecycle`], what to do with
//! a request no worker can take.

pub mod admin;
pub mod cards;
pub mod choose;
pub mod drain;
pub mod metrics;
mod placing;
pub mod reload;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::placement::{self, Footprints, Sharing};
use crate::config::{ConfigError, ConfigSource, DeployConfig};
use crate::router::lifecycle::{Demand, Held, Lifecycle, Listed};
use crate::router::Front;
use crate::slices::Slice;
use crate::supervisor::{Supervisor, Timings};
use state::{lock, ModelEntry, State, Usage};

/// The catalogue, the workers and the loads waiting for room.
pub struct Fleet {
    /// Itself, for the tasks it spawns.
    me: Weak<Fleet>,
    state: Mutex<State>,
    /// Bumped on every change of a worker or a load; held requests wait on it.
    changed: watch::Sender<u64>,
    supervisor: Supervisor,
    front: OnceLock<Weak<Front>>,
    /// The API key the supervised workers require (a keyed front gives them one).
    worker_key: Option<String>,
    /// Each catalogued model's use, read on every request without the state's lock.
    usage: RwLock<HashMap<String, Arc<Usage>>>,
    /// Where a reload reads the config.
    source: Mutex<ConfigSource>,
    epoch: Instant,
}

impl Fleet {
    /// A fleet over `slices` for `config`'s catalogue; nothing starts until
    /// [`Fleet::start`].
    pub fn new(
        config: DeployConfig,
        slices: Vec<Slice>,
        timings: Timings,
        exe: PathBuf,
        worker_key: Option<String>,
    ) -> Arc<Self> {
        let sharing = Sharing::of(&config, slices.len());
        let fleet = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            state: Mutex::new(State {
                config: config.clone(),
                sharing,
                slices,
                models: Vec::new(),
                workers: Vec::new(),
                pending: Vec::new(),
                footprints: Footprints::default(),
                next_pending: 1,
                closing: false,
            }),
            changed: watch::channel(0).0,
            supervisor: Supervisor::new(timings, exe),
            front: OnceLock::new(),
            worker_key,
            usage: RwLock::new(HashMap::new()),
            source: Mutex::new(ConfigSource::Embedded),
            epoch: Instant::now(),
        });
        fleet.set_catalogue(&mut lock(&fleet.state), &config);
        fleet
    }

    /// Tells the fleet the router its workers are added to.
    pub fn attach(&self, front: &Arc<Front>) {
        let _ = self.front.set(Arc::downgrade(front));
    }

    fn front(&self) -> Option<Arc<Front>> {
        self.front.get().and_then(Weak::upgrade)
    }

    fn myself(&self) -> Weak<Fleet> {
        self.me.clone()
    }

    /// Places and starts the pinned replicas (refusing a config whose pinned replicas do not
    /// fit), then watches for idle models. Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) -> Result<(), ConfigError> {
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let plan = placement::place_pinned(
                &st.config,
                &st.slices,
                st.sharing,
                &[],
                &mut st.footprints,
            )?;
            for assignment in plan.start {
                let i = slice_index(&st.slices, &assignment.slice.id);
                self.launch(st, assignment, i, true);
            }
        }
        self.bump();
        self.read_footprints();
        let fleet = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(250));
            loop {
                ticker.tick().await;
                let Some(fleet) = fleet.upgrade() else { break };
                if !fleet.tick() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Reads every catalogued model's footprint (its headers) on the blocking pool, so that
    /// the first request for a model does not wait for it.
    pub(crate) fn read_footprints(&self) {
        let (models, slices) = {
            let st = lock(&self.state);
            let models: Vec<_> = st.models.iter().map(|m| m.section.clone()).collect();
            (models, st.slices.clone())
        };
        let fleet = self.myself();
        tokio::task::spawn_blocking(move || {
            let mut read = Footprints::default();
            for model in &models {
                for slice in &slices {
                    let _ = read.of(model, placement::device_for(model, slice));
                }
            }
            if let Some(fleet) = fleet.upgrade() {
                lock(&fleet.state).footprints.merge(read);
            }
        });
    }

    /// Starts no more loads: held requests get 503 at once, waiting loads are dropped. The
    /// workers keep serving what they have.
    pub fn close(&self) {
        {
            let mut st = lock(&self.state);
            st.closing = true;
            st.pending.clear();
        }
        self.bump();
    }

    /// Closes ([`Fleet::close`]) and stops every worker (SIGTERM, SIGKILL after `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        self.close();
        self.supervisor.shutdown(grace).await;
    }

    /// The slices the fleet places workers on.
    pub fn slices(&self) -> Vec<Slice> {
        lock(&self.state).slices.clone()
    }

    /// Tells everyone waiting that something changed.
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Milliseconds since the fleet was made (never 0: 0 means "never used").
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Makes `config`'s models the catalogue, keeping the use and counters of those that
    /// stay.
    fn set_catalogue(&self, st: &mut State, config: &DeployConfig) {
        let mut usage = match self.usage.write() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = HashMap::new();
        let mut models = Vec::new();
        for section in &config.models {
            let u = usage.get(&section.name).cloned().unwrap_or_default();
            next.insert(section.name.clone(), u.clone());
            let old = st
                .models
                .iter_mut()
                .find(|m| m.section.name == section.name);
            let (failure, load_secs) = match old {
                Some(old) if old.section == *section => (old.failure.take(), old.load_secs),
                _ => (None, None),
            };
            models.push(ModelEntry {
                section: section.clone(),
                usage: u,
                failure,
                load_secs,
            });
        }
        *usage = next;
        st.models = models;
        st.config = config.clone();
    }

    fn usage_of(&self, model: &str) -> Option<Arc<Usage>> {
        self.usage.read().ok()?.get(model).cloned()
    }
}

/// The index of the slice named `id` (0 if none: callers pass ids of `slices`).
fn slice_index(slices: &[Slice], id: &str) -> usize {
    slices.iter().position(|s| s.id == id).unwrap_or(0)
}

impl Lifecycle for Fleet {
    fn catalogued(&self, model: &str) -> bool {
        self.usage_of(model).is_some()
    }

    fn listed(&self) -> Vec<Listed> {
        let st = lock(&self.state);
        st.models
            .iter()
            .map(|m| Listed {
                id: m.section.name.clone(),
                state: st.model_state(&m.section.name),
            })
            .collect()
    }

    fn touch(&self, model: &str) {
        if let Some(u) = self.usage_of(model) {
            u.last_use_ms.store(self.now_ms(), Ordering::Relaxed);
            let unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            u.last_use_unix_ms.store(unix, Ordering::Relaxed);
        }
    }

    fn hold(&self, model: &str) -> Option<Held> {
        let u = self.usage_of(model)?;
        u.counters.held_total.fetch_add(1, Ordering::Relaxed);
        Some(Held::new(u.held.clone()))
    }

    fn demand(&self, model: &str, more: bool) -> Demand {
        self.demand_worker(model, more)
    }

    fn load_timeout(&self) -> Duration {
        Duration::from_secs_f64(lock(&self.state).config.lifecycle.load_timeout_secs)
    }

    fn default_model(&self) -> Option<String> {
        let st = lock(&self.state);
        st.config
            .router
            .default_model
            .clone()
            .or_else(|| st.config.model_names().first().map(|m| m.to_string()))
    }

    fn write_metrics(&self, out: &mut String) {
        let st = lock(&self.state);
        let series: Vec<metrics::ModelSeries> = st
            .models
            .iter()
            .map(|m| metrics::ModelSeries {
                model: &m.section.name,
                state: st.model_state(&m.section.name),
                held: m.usage.held(),
                replicas: st.workers_of(&m.section.name).filter(|w| w.live()).count(),
                counters: &m.usage.counters,
            })
            .collect();
        metrics::write(out, &series);
    }
}
