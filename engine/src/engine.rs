//! The [`Engine`] trait: what a worker's HTTP layer needs from whatever generates tokens.

use serde::Serialize;
use tokio::sync::watch;

use crate::device::DeviceKind;
use crate::error::EngineError;
use crate::event::EventStream;
use crate::request::{GenerateRequest, Limits, Prompt};

/// One prompt token, for TGI's `decoder_input_details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptToken {
    pub id: u32,
    pub text: String,
}

/// A request the engine took.
#[derive(Debug)]
pub struct Accepted {
    /// Tokens of the prompt after templating and truncation.
    pub prompt_tokens: usize,
    /// Those tokens with their texts, when the request asked for them (else empty).
    pub prompt: Vec<PromptToken>,
    /// The seed sampling uses (drawn when a sampled request named none; `None` when greedy).
    pub seed: Option<u64>,
    /// Its events; dropping the stream cancels the request.
    pub events: EventStream,
}

/// Whether an engine can take requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running.
    Healthy,
    /// Stopped for good (it died, or was shut down), and why. A worker whose engine is dead
    /// exits, so that its supervisor restarts it.
    Dead(String),
}

impl Health {
    /// Whether the engine is running.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// What an engine serves and with which limits (the worker's `/info`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    /// The name clients use for the model (OpenAI `model`).
    pub model_id: String,
    /// How the weights are held (`q8`, `bf16`, ...).
    pub dtype: String,
    /// The device the engine runs on.
    pub device: DeviceKind,
    /// The model's GGUF architecture (`llama`, `gemma3`, ...).
    pub architecture: String,
    /// The model's parameters (a tied output layer counted once).
    pub parameters: u64,
    /// KV cache bytes one token takes over all layers, in this device's cache element type.
    pub kv_bytes_per_token: usize,
    pub limits: Limits,
    pub max_batch_size: usize,
    pub max_concurrent_requests: usize,
    /// Whether the engine reuses cached prompt prefixes.
    pub prefix_caching: bool,
}

/// The prefix cache of an engine, for `/info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PrefixCacheStatus {
    /// Prompt tokens looked up at admission.
    pub queried_tokens: u64,
    /// Of those, tokens found cached.
    pub hit_tokens: u64,
    /// Cached full blocks now (referenced or evictable).
    pub cached_blocks: usize,
    /// Cached blocks evicted for new allocations.
    pub evicted_blocks: u64,
}

impl PrefixCacheStatus {
    /// Hit tokens over queried tokens (0 before the first lookup).
    pub fn hit_rate(&self) -> f64 {
        match self.queried_tokens {
            0 => 0.0,
            q => self.hit_tokens as f64 / q as f64,
        }
    }
}

/// Something that turns requests into streams of tokens: [`crate::LocalEngine`] (the model on
/// this worker's device), or a test stand-in behind the same HTTP layer.
pub trait Engine: Send + Sync + 'static {
    /// Tokenizes (or renders the chat template), validates and queues a request (every engine
    /// does it through `submit::submit` over its own backend). May block
    /// for as long as tokenizing a large prompt takes: call it on a blocking pool. Refuses with
    /// [`EngineError::Validation`] (bad input), [`EngineError::Overloaded`] (too many in
    /// flight) or [`EngineError::Unavailable`] (the engine is not running).
    fn submit(&self, request: GenerateRequest) -> Result<Accepted, EngineError>;

    /// Whether the engine is running now.
    fn health(&self) -> Health;

    /// Health changes, for a worker that must exit when its engine dies.
    fn watch_health(&self) -> watch::Receiver<Health>;

    /// What the engine serves.
    fn info(&self) -> &EngineInfo;

    /// The prefix cache's counters now; `None` for an engine without one.
    fn prefix_cache(&self) -> Option<PrefixCacheStatus> {
        None
    }

    /// The prompt's tokens as a request with it would run them (a conversation through the
    /// chat template first). An engine without a tokenizer refuses.
    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        let _ = prompt;
        Err(EngineError::Unavailable(
            "this engine has no tokenizer".into(),
        ))
    }

    /// The text of token ids (special tokens left out). An engine without a tokenizer refuses.
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        let _ = ids;
        Err(EngineError::Unavailable(
            "this engine has no tokenizer".into(),
        ))
    }
}

/// A tokenized prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// Each token's text, decoded in sequence: together they are the decoded prompt (a
    /// token inside a multi-byte character has an empty text, the one completing it all).
    pub pieces: Vec<String>,
    /// The chat template's output, for a conversation.
    pub rendered: Option<String>,
}
