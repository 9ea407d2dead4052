//! Requests: as a client asked for them ([`GenerateRequest`], in neither API's terms), and as
//! the engine runs them once validated ([`EngineRequest`]).

use std::time::Instant;

use migserve_models::{ChatMessage, SamplingParams};

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text, tokenized with the model's tokenizer (a BOS added when the model wants one).
    Text(String),
    /// A conversation, rendered through the model's chat template, ready for the reply.
    Chat(Vec<ChatMessage>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

/// Sampling fields as the client sent them; [`crate::validate`] checks them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingSpec {
    /// Whether to sample at all (otherwise greedy, whatever the other fields say).
    pub sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// A generation request from either API, before validation.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Keep only the last this many prompt tokens (TGI `truncate`).
    pub truncate: Option<usize>,
    /// New tokens at most; `None`: the worker's default, within what is left of the total.
    pub max_new_tokens: Option<i64>,
    pub sampling: SamplingSpec,
    pub stop: Vec<String>,
    /// Keep generating past eos (benchmarks with fixed output lengths).
    pub ignore_eos: bool,
    /// Return the prompt's tokens (id and text) on acceptance (TGI `decoder_input_details`).
    pub return_prompt_tokens: bool,
    /// When the request reached the server.
    pub arrived: Instant,
}

impl GenerateRequest {
    /// A request for `prompt` with every other field at its default.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            truncate: None,
            max_new_tokens: None,
            sampling: SamplingSpec::default(),
            stop: Vec::new(),
            ignore_eos: false,
            return_prompt_tokens: false,
            arrived: Instant::now(),
        }
    }
}

/// What a worker accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest prompt, in tokens.
    pub max_input_tokens: usize,
    /// Longest prompt plus new tokens.
    pub max_total_tokens: usize,
    /// Most stop sequences per request.
    pub max_stop_sequences: usize,
    /// New tokens when the request names no limit (capped by what is left of the total).
    pub default_max_new_tokens: usize,
    /// Positions the whole KV cache holds: a request needing more could never run.
    pub kv_cache_tokens: usize,
}

/// A validated request, ready for the engine thread.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Keep generating past eos (benchmarks with fixed output lengths).
    pub ignore_eos: bool,
    /// When the request reached the server.
    pub arrived: Instant,
}
