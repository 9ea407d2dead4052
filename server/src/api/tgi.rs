//! text-generation-inference wire types, with TGI's field names.

use serde::{Deserialize, Serialize};

/// Body of `POST /generate`, `/generate_stream` and `/`.
#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
pub struct GenerateRequest {
    pub inputs: Option<String>,
    #[serde(default)]
    pub parameters: GenerateParameters,
    /// Only read by `POST /`.
    #[serde(default)]
    pub stream: bool,
}

/// TGI's `parameters` object. Fields TGI has that migserve does not implement are accepted
/// and rejected by validation when set to something other than their neutral value.
#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
pub struct GenerateParameters {
    pub best_of: Option<usize>,
    #[serde(default)]
    pub decoder_input_details: bool,
    #[serde(default)]
    pub details: bool,
    #[serde(default)]
    pub do_sample: bool,
    pub frequency_penalty: Option<f32>,
    pub max_new_tokens: Option<i64>,
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub return_full_text: bool,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_n_tokens: Option<u32>,
    pub top_p: Option<f32>,
    pub truncate: Option<usize>,
    pub typical_p: Option<f32>,
    #[serde(default)]
    pub watermark: bool,
    /// migserve extension: keep generating past eos, so benchmarks get fixed output lengths.
    #[serde(default)]
    pub ignore_eos: bool,
    /// What the output must match: JSON schema, regex (and, extensions, Lark, choice).
    pub grammar: Option<super::structured::TgiGrammar>,
}

/// One generated (or prompt) token in `details`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
    pub special: bool,
}

/// A prompt token in `details.prefill`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PrefillToken {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
}

/// What `details` says of one generated sequence (the answer's, or another `best_of` one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SequenceDetails {
    pub finish_reason: String,
    pub generated_tokens: usize,
    pub seed: Option<u64>,
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    /// With `top_n_tokens`: the most likely tokens at each generated position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
}

/// `details` of a non-streamed response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Details {
    #[serde(flatten)]
    pub sequence: SequenceDetails,
    /// With `best_of`: the samples not chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub best_of_sequences: Vec<BestOfSequence>,
}

/// One sample of `best_of` that was not the answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BestOfSequence {
    pub generated_text: String,
    #[serde(flatten)]
    pub sequence: SequenceDetails,
}

/// Response of `POST /generate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct GenerateResponse {
    pub generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// `details` of the last streamed event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StreamDetails {
    pub finish_reason: String,
    pub generated_tokens: usize,
    pub seed: Option<u64>,
    pub input_length: usize,
}

/// One server-sent event of `POST /generate_stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StreamResponse {
    pub index: usize,
    pub token: Token,
    pub top_tokens: Vec<Token>,
    pub generated_text: Option<String>,
    pub details: Option<StreamDetails>,
}

/// Response of `GET /info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Info {
    pub model_id: String,
    pub model_sha: Option<String>,
    pub model_dtype: String,
    pub model_device_type: String,
    pub model_pipeline_tag: Option<String>,
    pub max_concurrent_requests: usize,
    pub max_best_of: usize,
    pub max_stop_sequences: usize,
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_batch_size: Option<usize>,
    pub max_client_batch_size: usize,
    pub validation_workers: usize,
    pub router: String,
    pub version: String,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
    /// migserve extension: which slice this worker runs on.
    pub slice: Option<String>,
    /// migserve extension: KV cache size in tokens.
    pub kv_cache_tokens: usize,
    /// migserve extension: the model's GGUF architecture (`llama`, `qwen2`, `gemma3`, ...).
    #[serde(default)]
    pub model_architecture: Option<String>,
    /// migserve extension: the model's parameter count.
    #[serde(default)]
    pub model_parameters: Option<u64>,
    /// migserve extension: KV cache bytes per token over all layers.
    #[serde(default)]
    pub kv_bytes_per_token: Option<usize>,
    /// migserve extension: the prefix cache's counters now (absent when it is off).
    #[serde(default)]
    pub prefix_cache: Option<PrefixCacheInfo>,
}

/// The prefix cache of a worker, in `/info`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PrefixCacheInfo {
    /// Prompt tokens looked up at admission.
    pub queried_tokens: u64,
    /// Of those, tokens found cached (not computed).
    pub hit_tokens: u64,
    /// hit_tokens / queried_tokens.
    pub hit_rate: f64,
    /// Cached full KV blocks now.
    pub cached_blocks: usize,
    /// Cached blocks evicted for new allocations.
    pub evicted_blocks: u64,
}
