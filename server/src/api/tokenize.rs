//! Wire types of `/tokenize`, `/chat_tokenize` (TGI's shapes) and `/detokenize` (vLLM's).

use serde::{Deserialize, Serialize};

/// One token of a tokenized prompt: `start..stop` are its bytes in the decoded prompt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub start: usize,
    pub stop: usize,
}

/// Response of `POST /chat_tokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChatTokenizeResponse {
    pub tokenize_response: Vec<SimpleToken>,
    /// The conversation as the chat template renders it.
    pub templated_text: String,
}

/// Body of `POST /detokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

/// Response of `POST /detokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
