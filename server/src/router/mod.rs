//! The front router of `migserve serve`: one TGI + OpenAI endpoint, load-balanced across the
//! slices that hold the requested model, with per-slice queue and latency tracking.

pub mod backend;
pub mod policy;
pub mod proxy;
pub mod stats;
pub mod status;
pub mod token_count;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::{DeployConfig, RouterSection};
use crate::supervisor::WorkerSlot;
use backend::Backend;
use stats::InFlight;

/// The router's state, shared by its handlers.
pub struct Front {
    /// Local slots first (config order), then remote workers.
    pub backends: Vec<Arc<Backend>>,
    /// Served model names; the first is the default unless `[router] default_model` says.
    pub models: Vec<String>,
    pub default_model: String,
    pub settings: RouterSection,
    /// How long a failed local worker stays out of rotation if the supervisor never
    /// replaces it (it was alive after all).
    pub suspend_grace: Duration,
    pub client: reqwest::Client,
    turn: AtomicUsize,
}

/// Shared handle on the front.
pub type SharedFront = Arc<Front>;

/// The outcome of picking a slice.
pub enum Pick {
    /// Chosen, and counted in flight there.
    Chosen(usize, InFlight),
    /// Every healthy candidate is at its queue limit.
    AllFull,
    /// No candidate is healthy (or all were tried).
    NoneHealthy,
}

impl Front {
    /// Builds the router over the supervisor's slots and the config's remote workers; starts
    /// the remote health probes (needs a tokio runtime).
    pub fn new(slots: Arc<[Arc<WorkerSlot>]>, config: &DeployConfig) -> Arc<Self> {
        let mut backends: Vec<Arc<Backend>> = slots
            .iter()
            .map(|slot| Arc::new(Backend::local(slot.clone())))
            .collect();
        let remotes: Vec<Arc<Backend>> = config
            .remote
            .iter()
            .map(|r| {
                Arc::new(Backend::remote(
                    r.name.clone(),
                    r.model.clone(),
                    r.profile.clone().unwrap_or_else(|| "remote".into()),
                    r.url.clone(),
                ))
            })
            .collect();
        let sup = &config.supervisor;
        backend::spawn_remote_probes(
            &remotes,
            Duration::from_secs_f64(sup.health_interval_secs),
            Duration::from_secs_f64(sup.health_timeout_secs),
        );
        backends.extend(remotes);
        let models: Vec<String> = config.model_names().into_iter().map(String::from).collect();
        let default_model = config
            .router
            .default_model
            .clone()
            .or_else(|| models.first().cloned())
            .unwrap_or_default();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            backends,
            models,
            default_model,
            settings: config.router.clone(),
            suspend_grace: Duration::from_secs_f64(
                sup.health_interval_secs * f64::from(sup.unhealthy_after) + sup.health_timeout_secs,
            ),
            client,
            turn: AtomicUsize::new(0),
        })
    }

    /// All routes of the front.
    pub fn app(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", post(proxy::tgi_compat))
            .route("/generate", post(proxy::tgi_generate))
            .route("/generate_stream", post(proxy::tgi_generate_stream))
            .route("/v1/completions", post(proxy::openai_completions))
            .route("/v1/chat/completions", post(proxy::openai_chat))
            .route("/v1/models", get(status::models))
            .route("/info", get(proxy::info))
            .route("/slices", get(status::slices))
            .route("/health", get(status::health))
            .route("/metrics", get(status::metrics))
            .layer(DefaultBodyLimit::max(self.settings.max_body_bytes))
            .with_state(self.clone())
    }

    /// Whether any backend serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.backends.iter().any(|b| b.model == model)
    }

    /// Picks a slice for a request of `tokens` tokens for `model`, skipping `tried`, and
    /// counts it in flight there (never past the per-slice queue limit).
    pub fn pick(&self, model: &str, tokens: u64, tried: &[usize]) -> Pick {
        let mut healthy: Vec<usize> = (0..self.backends.len())
            .filter(|i| !tried.contains(i))
            .filter(|&i| self.backends[i].model == model && self.backends[i].url().is_some())
            .collect();
        if healthy.is_empty() {
            return Pick::NoneHealthy;
        }
        let limit = self.settings.max_queue_per_slice;
        loop {
            healthy.retain(|&i| self.backends[i].stats.in_flight() < limit);
            if healthy.is_empty() {
                return Pick::AllFull;
            }
            let loads: Vec<policy::Load> = healthy
                .iter()
                .map(|&i| {
                    let (in_flight, queued_tokens, secs_per_token) = self.backends[i].stats.load();
                    policy::Load {
                        in_flight,
                        queued_tokens,
                        secs_per_token,
                    }
                })
                .collect();
            let Some(k) = policy::choose(
                self.settings.policy,
                &loads,
                tokens,
                &self.turn,
                &mut rand::rng(),
            ) else {
                return Pick::AllFull;
            };
            let index = healthy[k];
            // Another request may have filled it since the snapshot: then choose again.
            if let Some(guard) = self.backends[index].stats.try_begin(tokens, limit) {
                return Pick::Chosen(index, guard);
            }
        }
    }
}
