//! Test stand-ins for migserve, kept out of the shipped binary.
//!
//! [`FakeEngine`] implements the engine trait with canned tokens (` t0`, ` t1`, ...) at a set
//! pace and injected failures, and no model; the `migserve-fake-worker` binary serves it
//! through the real worker HTTP layer (`migserve::worker`), so router and loadtest tests see
//! the real wire format, headers and errors. Requests go through the engine's own submit
//! pipeline ([`migserve_engine::submit`]: the same checks and words as the real engine) onto
//! this fake backend; its "tokenizer" counts whitespace-separated words.

pub mod cut;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use migserve_engine::request::EngineRequest;
use migserve_engine::submit::{self, Backend};
use migserve_engine::{
    Accepted, Constraint, DeviceKind, Engine, EngineError, EngineEvent, EngineInfo, EventStream,
    FinishEvent, FinishReason, GenerateRequest, Grammar, Health, Limits, Prompt, TokenEvent,
};
use tokio::sync::watch;

/// Speed, size and failures of a fake engine's answers.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Delay before the first token.
    pub first_token_delay: Duration,
    /// Delay between tokens after the first, with one request running.
    pub token_delay: Duration,
    /// Added to the first token's delay per prompt token (a prefill's cost).
    pub prefill_per_token: Duration,
    /// Each further request in flight makes every token this share of `token_delay` slower
    /// (1.0: a step's time proportional to its batch, as on a CPU; 0.0: flat).
    pub batch_slowdown: f64,
    /// Tokens when a request sets no limit.
    pub default_new_tokens: usize,
    /// Refuse every Nth request with [`EngineError::Unavailable`] (a 503; 0: never).
    pub fail_every: u64,
    /// Requests in flight at once; more are refused as overloaded.
    pub max_concurrent_requests: usize,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            first_token_delay: Duration::from_millis(20),
            token_delay: Duration::from_millis(10),
            prefill_per_token: Duration::ZERO,
            batch_slowdown: 0.0,
            default_new_tokens: 16,
            fail_every: 0,
            max_concurrent_requests: 1024,
        }
    }
}

/// An engine that answers every request with ` t0 t1 ...` at the configured pace.
pub struct FakeEngine {
    config: FakeConfig,
    info: EngineInfo,
    runtime: tokio::runtime::Handle,
    requests: AtomicU64,
    in_flight: Arc<AtomicUsize>,
    health: watch::Sender<Health>,
}

impl FakeEngine {
    /// A fake engine whose token streams run on `runtime`.
    pub fn new(config: FakeConfig, runtime: tokio::runtime::Handle) -> Self {
        let limits = Limits {
            max_input_tokens: 1 << 20,
            max_total_tokens: 1 << 21,
            max_stop_sequences: 4,
            default_max_new_tokens: config.default_new_tokens,
            kv_cache_tokens: 1 << 21,
            vocab_size: u32::MAX as usize,
        };
        let info = EngineInfo {
            model_id: "fake".into(),
            dtype: "none".into(),
            device: DeviceKind::Cpu,
            architecture: "fake".into(),
            parameters: 0,
            kv_bytes_per_token: 0,
            limits,
            max_batch_size: config.max_concurrent_requests,
            max_concurrent_requests: config.max_concurrent_requests,
            prefix_caching: false,
        };
        Self {
            config,
            info,
            runtime,
            requests: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            health: watch::Sender::new(Health::Healthy),
        }
    }
}

/// The text of canned token `i`.
pub fn token_text(i: usize) -> String {
    format!(" t{i}")
}

/// Canned token `i`: id `i`, text [`token_text`].
fn fake_token(i: usize) -> TokenEvent {
    let text = token_text(i);
    TokenEvent {
        id: i as u32,
        visible: text.clone(),
        text,
        logprob: -0.5,
        top: Vec::new(),
        special: false,
    }
}

/// One fake token id per whitespace-separated word (at least one).
fn fake_tokens(prompt: &Prompt) -> Vec<u32> {
    let words = match prompt {
        Prompt::Text(text) => text.split_whitespace().count(),
        Prompt::Chat { messages, .. } => messages
            .iter()
            .map(|m| m.content.split_whitespace().count() + 1)
            .sum(),
        Prompt::Tokens(ids) => return ids.clone(),
    };
    (0..words.max(1) as u32).collect()
}

/// Decrements the in-flight count when a stream ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backend for FakeEngine {
    fn check_running(&self) -> Result<(), EngineError> {
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.fail_every > 0 && number.is_multiple_of(self.config.fail_every) {
            return Err(EngineError::Unavailable("injected failure".into()));
        }
        Ok(())
    }

    fn prompt_ids(&self, prompt: &Prompt) -> Result<(Vec<u32>, Option<String>), EngineError> {
        Ok((fake_tokens(prompt), None))
    }

    fn pieces(&self, ids: &[u32]) -> Result<Vec<String>, EngineError> {
        Ok(ids.iter().map(|id| format!(" w{id}")).collect())
    }

    /// The fake engine's tokens follow no grammar.
    fn constraint(&self, _: &Grammar) -> Result<Option<Constraint>, EngineError> {
        Ok(None)
    }

    fn limits(&self) -> &Limits {
        &self.info.limits
    }

    fn enqueue(&self, valid: EngineRequest) -> Result<EventStream, EngineError> {
        let limit = self.config.max_concurrent_requests;
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(self.in_flight.clone());
        if before >= limit {
            return Err(EngineError::Overloaded(format!(
                "fake engine overloaded: {before} requests in flight (limit {limit})"
            )));
        }
        let (tx, events) = EventStream::channel();
        let (n, prompt_tokens, seed) =
            (valid.max_new_tokens, valid.prompt.len(), valid.params.seed);
        // A resumed request's tokens are those of the same request here: token i is `i`.
        let resumed = valid.resumed.len();
        let first =
            self.config.first_token_delay + self.config.prefill_per_token * prompt_tokens as u32;
        let (between, slowdown) = (self.config.token_delay, self.config.batch_slowdown);
        let arrived = valid.arrived;
        let running = self.in_flight.clone();
        self.runtime.spawn(async move {
            let _in_flight = in_flight;
            let started = Instant::now();
            if resumed > 0 {
                let earlier = (0..resumed).map(fake_token).collect();
                if tx.send(EngineEvent::Resumed(earlier)).is_err() {
                    return;
                }
            }
            for i in resumed..n {
                let others = running.load(Ordering::Acquire).saturating_sub(1) as f64;
                let delay = if i == 0 {
                    first
                } else {
                    between.mul_f64(1.0 + slowdown * others)
                };
                tokio::time::sleep(delay).await;
                let finish = (i + 1 == n).then(|| FinishEvent {
                    reason: FinishReason::Length,
                    prompt_tokens,
                    cached_tokens: 0,
                    generated_tokens: n,
                    queue_time: started.duration_since(arrived),
                    inference_time: started.elapsed(),
                    time_to_first_token: started.duration_since(arrived) + first,
                    seed,
                });
                if tx.send(EngineEvent::Token(fake_token(i), finish)).is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(events)
    }
}

impl Engine for FakeEngine {
    /// The engine's own submit pipeline, over this backend: real validation, fake tokens.
    fn submit(&self, request: GenerateRequest) -> Result<Accepted, EngineError> {
        submit::submit(self, request)
    }

    fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    fn info(&self) -> &EngineInfo {
        &self.info
    }
}
