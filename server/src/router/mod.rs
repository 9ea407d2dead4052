//! The front router of `migserve serve`: one TGI + OpenAI endpoint, load-balanced across the
//! slices that hold the requested model, with per-slice queue and latency tracking.

pub mod attempt;
pub mod backend;
pub mod cost;
pub mod discovery;
pub mod lifecycle;
pub mod policy;
pub mod prefix_index;
pub mod proxy;
pub mod relay;
pub mod routing_view;
pub mod sse;
pub mod stats;
pub mod status;
pub mod token_count;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use crate::api::Api;
use crate::config::{DeployConfig, RouterSection};
use backend::Backend;
use lifecycle::Lifecycle;
use proxy::relay;
use stats::InFlight;

/// The router's state, shared by its handlers.
pub struct Front {
    /// Local slots first (config order), then remote workers, then discovered ones. Replaced
    /// whole when discovery changes it; readers take a snapshot.
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    /// Health probing of remote workers.
    probe_client: reqwest::Client,
    probe_interval: Duration,
    /// Who manages the local models: which are catalogued, loads for requests held.
    pub lifecycle: Arc<dyn Lifecycle>,
    /// The default model when the manager names none (a router of remote workers: `[router]
    /// default_model`, else the first remote model).
    fallback_default: String,
    pub settings: RouterSection,
    /// How long a failed local worker stays out of rotation if the supervisor never
    /// replaces it (it was alive after all).
    pub suspend_grace: Duration,
    pub client: reqwest::Client,
    turn: AtomicUsize,
    /// What the front's connection guard did (`/metrics`).
    guard: Arc<crate::net::guarded::GuardStats>,
}

/// Shared handle on the front.
pub type SharedFront = Arc<Front>;

/// A request as the router places it.
#[derive(Debug, Clone, Default)]
pub struct Placing {
    pub work: policy::Work,
    /// The hash chain of its prompt's chunks ([`prefix_index::PromptText::chunks`]); empty
    /// unless the policy reads it.
    pub chunks: Vec<u64>,
}

/// The outcome of picking a slice.
pub enum Pick {
    /// Chosen, and counted in flight there.
    Chosen(Arc<Backend>, InFlight),
    /// Every healthy candidate is at its queue limit.
    AllFull,
    /// No candidate is healthy (or all were tried).
    NoneHealthy,
}

impl Front {
    /// Builds the router over the config's remote workers and starts their health probes
    /// and DNS discovery (needs a tokio runtime). Local workers are added by their manager
    /// (`lifecycle`) as they load ([`Front::add_backend`]).
    pub fn new(config: &DeployConfig, lifecycle: Arc<dyn Lifecycle>) -> Arc<Self> {
        let remotes: Vec<Arc<Backend>> = config
            .remote
            .iter()
            .map(|r| {
                Arc::new(
                    Backend::remote(
                        r.name.clone(),
                        r.model.clone(),
                        r.profile.clone().unwrap_or_else(|| "remote".into()),
                        r.url.clone(),
                    )
                    .with_key(r.api_key.as_deref()),
                )
            })
            .collect();
        let sup = &config.supervisor;
        let probe_client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(sup.health_timeout_secs))
            .build()
            .unwrap_or_default();
        let probe_interval = Duration::from_secs_f64(sup.health_interval_secs);
        for remote in &remotes {
            backend::spawn_probe(remote.clone(), probe_client.clone(), probe_interval);
        }
        let fallback_default = config
            .router
            .default_model
            .clone()
            .or_else(|| config.model_names().first().map(|m| m.to_string()))
            .unwrap_or_default();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        let front = Arc::new(Self {
            backends: RwLock::new(Arc::new(remotes)),
            probe_client,
            probe_interval,
            lifecycle,
            fallback_default,
            settings: config.router.clone(),
            suspend_grace: Duration::from_secs_f64(
                sup.health_interval_secs * f64::from(sup.unhealthy_after) + sup.health_timeout_secs,
            ),
            client,
            turn: AtomicUsize::new(0),
            guard: Arc::default(),
        });
        for entry in &config.discover {
            discovery::spawn(front.clone(), entry.clone(), discovery::system_resolver());
        }
        front
    }

    /// The model for requests that name none.
    pub fn default_model(&self) -> String {
        self.lifecycle
            .default_model()
            .unwrap_or_else(|| self.fallback_default.clone())
    }

    /// Every model name a request may ask for: the catalogued ones, then those of remote and
    /// discovered workers.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lifecycle.listed().into_iter().map(|l| l.id).collect();
        for b in self.backends().iter() {
            if !names.contains(&b.model) {
                names.push(b.model.clone());
            }
        }
        names
    }

    /// Adds a backend (a local worker its manager started). Local backends come before
    /// remote ones.
    pub fn add_backend(&self, backend: Arc<Backend>) {
        self.edit_backends(|list| {
            let at = list
                .iter()
                .position(|b| !matches!(b.target, backend::Target::Local(_)))
                .unwrap_or(list.len());
            list.insert(at, backend);
        });
    }

    /// Removes a backend (a local worker that was stopped).
    pub fn remove_backend(&self, backend: &Arc<Backend>) {
        self.edit_backends(|list| list.retain(|b| !Arc::ptr_eq(b, backend)));
    }

    fn edit_backends(&self, edit: impl FnOnce(&mut Vec<Arc<Backend>>)) {
        let mut guard = match self.backends.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next: Vec<Arc<Backend>> = guard.as_ref().clone();
        edit(&mut next);
        *guard = Arc::new(next);
    }

    /// The backends now (a snapshot).
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        match self.backends.read() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the backends whose id starts with `prefix` by `fresh` (discovery): new ones
    /// get a health probe, gone ones are retired. Backends kept keep their stats.
    pub fn replace_group(&self, prefix: &str, fresh: Vec<Arc<Backend>>) {
        let mut guard = match self.backends.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = guard.clone();
        let mut next: Vec<Arc<Backend>> = Vec::with_capacity(current.len() + fresh.len());
        for b in current.iter() {
            let in_group = b.id.starts_with(prefix);
            if !in_group || fresh.iter().any(|f| f.id == b.id) {
                next.push(b.clone());
            } else {
                tracing::info!(slice = %b.id, "worker left discovery; removed");
                b.retire();
            }
        }
        for f in fresh {
            if !next.iter().any(|b| b.id == f.id) {
                tracing::info!(slice = %f.id, "worker discovered; added");
                backend::spawn_probe(f.clone(), self.probe_client.clone(), self.probe_interval);
                next.push(f);
            }
        }
        *guard = Arc::new(next);
    }

    /// All routes of the front.
    pub fn app(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", relay("/", Api::Tgi))
            .route("/generate", relay("/generate", Api::Tgi))
            .route("/generate_stream", relay("/generate_stream", Api::Tgi))
            .route("/v1/completions", relay("/v1/completions", Api::OpenAi))
            .route(
                "/v1/chat/completions",
                relay("/v1/chat/completions", Api::OpenAi),
            )
            .route("/v1/models", get(status::models))
            .route("/info", get(proxy::info))
            .route("/slices", get(status::slices))
            .route("/health", get(status::health))
            .route("/metrics", get(status::metrics))
            .route("/tokenize", relay("/tokenize", Api::Tgi))
            .route("/chat_tokenize", relay("/chat_tokenize", Api::OpenAi))
            .route("/detokenize", relay("/detokenize", Api::OpenAi))
            .route("/openapi.json", get(crate::api::openapi::openapi_json))
            .route("/docs", get(crate::api::openapi::docs_page))
            .fallback(crate::api::error::route_not_found)
            .method_not_allowed_fallback(crate::api::error::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.settings.max_body_bytes))
            .with_state(self.clone())
    }

    /// The counts of the front's connection guard ([`crate::net::guarded::serve`] fills them).
    pub fn guard_stats(&self) -> Arc<crate::net::guarded::GuardStats> {
        self.guard.clone()
    }

    /// Whether `model` is served (catalogued, even if no worker of it is up now, or held by
    /// a remote worker).
    pub fn serves(&self, model: &str) -> bool {
        self.lifecycle.catalogued(model) || self.backends().iter().any(|b| b.model == model)
    }

    /// Picks a slice for `placing` (a request for `model`), skipping `tried`, and counts it in
    /// flight there (never past the per-slice queue limit); its prompt's chunks are noted as
    /// held there.
    pub fn pick(&self, model: &str, placing: &Placing, tried: &[Arc<Backend>]) -> Pick {
        self.pick_within(model, placing, tried, self.settings.max_queue_per_slice)
    }

    /// [`Front::pick`] with `limit` requests in flight per slice at most (a stream continued
    /// from a dead slice was admitted already: it may go past the queue limit).
    pub fn pick_within(
        &self,
        model: &str,
        placing: &Placing,
        tried: &[Arc<Backend>],
        limit: usize,
    ) -> Pick {
        let backends = self.backends();
        let mut healthy: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|b| !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .filter(|b| b.model == model && b.routable())
            .collect();
        if healthy.is_empty() {
            return Pick::NoneHealthy;
        }
        loop {
            healthy.retain(|b| b.stats.in_flight() < limit);
            if healthy.is_empty() {
                return Pick::AllFull;
            }
            let work = placing.work;
            let loads: Vec<policy::Load> = healthy
                .iter()
                .map(|b| {
                    let view = b.stats.load();
                    let matched = prefix_index::chunk_tokens(b.prefixes.matched(&placing.chunks));
                    policy::Load {
                        in_flight: view.in_flight,
                        queued_tokens: view.queued_tokens,
                        secs_per_token: view.tpot,
                        pending_prefill_tokens: view.pending_prefill_tokens,
                        cost: view.cost,
                        // A prompt's last token is always computed.
                        cached_tokens: matched.min(work.prompt_tokens.saturating_sub(1)),
                    }
                })
                .collect();
            let Some(k) = policy::choose(
                self.settings.policy,
                &loads,
                work,
                &self.turn,
                &mut rand::rng(),
            ) else {
                return Pick::AllFull;
            };
            let chosen = healthy[k];
            let prefill = work.prompt_tokens - loads[k].cached_tokens;
            // Another request may have filled it since the snapshot: then choose again.
            if let Some(guard) = chosen.stats.try_begin(work.total(), prefill, limit) {
                // Counted in flight first, then checked: a drain that began meanwhile either
                // sees this request or is seen here (both sequentially consistent).
                if chosen.is_draining() {
                    drop(guard);
                    healthy.retain(|b| !Arc::ptr_eq(b, chosen));
                    if healthy.is_empty() {
                        return Pick::NoneHealthy;
                    }
                    continue;
                }
                chosen.prefixes.insert(&placing.chunks);
                return Pick::Chosen(chosen.clone(), guard);
            }
        }
    }
}
