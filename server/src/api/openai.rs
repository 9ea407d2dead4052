//! OpenAI-compatible wire types (`/v1/completions`, `/v1/chat/completions`, `/v1/models`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::structured::{GuidedFields, ResponseFormat, Tool, ToolCall, ToolCallDelta, ToolChoice};

/// A field that may be one string or a list of strings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `stream_options` of a streamed request.
#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both request kinds.
#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (vLLM, llama.cpp): sample among the K most likely tokens.
    pub top_k: Option<i64>,
    /// Extension: CTRL repetition penalty.
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Token id (as a string) to a bias in -100..=100 added to its logit.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Extension (vLLM): end-of-sequence tokens are masked until this many tokens are out.
    pub min_tokens: Option<i64>,
    pub n: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    /// Accepted and ignored (OpenAI's end-user id).
    pub user: Option<String>,
    /// Extension (vLLM): keep generating past eos.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// What the output must match: JSON (any object, or a schema's), or (extensions) a
    /// regex, a Lark grammar, a list of choices.
    pub response_format: Option<ResponseFormat>,
    #[serde(flatten)]
    pub guided: GuidedFields,
}

/// `prompt` of `POST /v1/completions`: a string, token ids, or a list of either (one
/// choice each).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptInput>,
    /// Repeat the prompt before the completion (`null` is false).
    pub echo: Option<bool>,
    /// Log-probabilities of each token and of this many most likely alternatives.
    pub logprobs: Option<i64>,
    /// Refused unless empty (no insertion mode).
    pub suffix: Option<String>,
    /// Refused unless 1 (the best of several samples is TGI's `best_of`).
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// Content of a chat message: a string, or a list of parts of which text parts are used.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part message.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A message of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<MessageContent>,
    /// A participant's name (a `tool` message's function name).
    pub name: Option<String>,
    /// An assistant message's calls of tools.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ChatRequest {
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Vec<RequestMessage>,
    /// Return each output token's log-probability (`null` is false).
    pub logprobs: Option<bool>,
    /// With `logprobs`: this many most likely alternatives at each position (0..=20).
    pub top_logprobs: Option<i64>,
    /// Functions the model may call.
    pub tools: Option<Vec<Tool>>,
    /// `"none"`, `"auto"` (the default with tools), `"required"`, or a named function.
    pub tool_choice: Option<ToolChoice>,
    /// Whether one answer may make several calls (default true).
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Of the prompt tokens, those found in the prefix cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// What the prompt tokens were.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    /// Usage from prompt and completion counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// The same usage, with `cached_tokens` of the prompt found in the prefix cache.
    pub fn with_cached(mut self, cached_tokens: usize) -> Self {
        self.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens });
        self
    }

    /// Prompt tokens found in the prefix cache (0 when not reported).
    pub fn cached_tokens(&self) -> usize {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// `logprobs` of a completion choice (the legacy completions shape): parallel lists, one
/// entry per token; the first prompt token of an echo has no log-probability.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// The most likely tokens at each position and the chosen one, text to log-probability.
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    /// Each token's offset in the choice's text, in characters.
    pub text_offset: Vec<usize>,
}

/// One choice of a completion (streamed or not).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// Response (or stream chunk) of `POST /v1/completions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The assistant's message in a chat response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ResponseMessage {
    pub role: String,
    /// The text; `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// A token with its log-probability, as chat `logprobs` lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's text as UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One output token of chat `logprobs.content`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` of a chat choice or chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// One choice of a chat response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ResponseMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// Response of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

/// The change a stream chunk brings to the assistant's message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One choice of a chat stream chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// One chunk of a streamed chat response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Through `serve`: whether the model is loaded (`unloaded`, `loading`, `loaded`,
    /// `draining`, `failed`), in the shape llama.cpp's router mode uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ModelStatus>,
}

/// `status` of a [`ModelCard`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelStatus {
    pub value: String,
}

/// Response of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}
