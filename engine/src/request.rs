//! Requests: as a client asked for them ([`GenerateRequest`], in neither API's terms), and as
//! the engine runs them once validated ([`EngineRequest`]).

use std::time::Instant;

use migserve_models::ChatMessage;

use crate::grammar::{Constraint, Grammar};
use crate::sampling::SamplingParams;

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text, tokenized with the model's tokenizer (a BOS added when the model wants one).
    Text(String),
    /// A conversation, rendered through the model's chat template, ready for the reply; with
    /// the tools the model may call (OpenAI's function objects; the template's `tools`).
    Chat {
        messages: Vec<ChatMessage>,
        tools: Vec<serde_json::Value>,
    },
    /// Token ids, used as they are (nothing added).
    Tokens(Vec<u32>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

/// Sampling fields as the client sent them; validation checks them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingSpec {
    /// Whether to sample at all (otherwise greedy, whatever the other fields say).
    pub sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Added to these tokens' logits (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

/// Most alternatives a request may ask for with each token (OpenAI's and vLLM's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Which log-probabilities a request wants beyond each generated token's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogprobsSpec {
    /// The most likely tokens at each generated position, with theirs (0..=[`MAX_TOP_LOGPROBS`]).
    pub top: usize,
    /// The prompt's tokens' log-probabilities too (and `top` alternatives at each position).
    pub prompt: bool,
}

/// A generation request from either API, before validation.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Keep only the last this many prompt tokens (TGI `truncate`).
    pub truncate: Option<usize>,
    /// New tokens at most; `None`: the worker's default, within what is left of the total.
    pub max_new_tokens: Option<i64>,
    /// New tokens before an end-of-sequence token may end the output (it is masked until then).
    pub min_new_tokens: Option<i64>,
    pub sampling: SamplingSpec,
    pub logprobs: LogprobsSpec,
    pub stop: Vec<String>,
    /// Keep generating past eos (benchmarks with fixed output lengths).
    pub ignore_eos: bool,
    /// Return the prompt's tokens (id and text) on acceptance (TGI `decoder_input_details`).
    pub return_prompt_tokens: bool,
    /// What the output must match (a JSON schema, a regex, a grammar, a choice).
    pub grammar: Option<Grammar>,
    /// Output this request already generated elsewhere (a stream continued after its worker
    /// died): these tokens count as generated, not as prompt; sampling continues where it
    /// was (same seed, same step), and the answer goes on after them.
    pub resume: Vec<u32>,
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
            min_new_tokens: None,
            sampling: SamplingSpec::default(),
            logprobs: LogprobsSpec::default(),
            stop: Vec::new(),
            ignore_eos: false,
            return_prompt_tokens: false,
            grammar: None,
            resume: Vec::new(),
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
    /// Token ids run from 0 to this (exclusive).
    pub vocab_size: usize,
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
    pub logprobs: LogprobsSpec,
    /// The request's grammar, compiled: which tokens may come next.
    pub constraint: Option<Constraint>,
    /// Output already generated elsewhere ([`GenerateRequest::resume`]), part of
    /// `max_new_tokens`.
    pub resumed: Vec<u32>,
    /// When the request reached the server.
    pub arrived: Instant,
}
