//! `POST /tokenize` and `/chat_tokenize` (TGI's shapes) and `/detokenize` (vLLM's): the
//! worker's own tokenizer and chat template, exactly as a generation request would use them.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use migserve_engine::{Prompt, Tokenized};

use super::{on_engine, ApiJson, SharedState};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::openai::ChatRequest;
use crate::api::tgi::GenerateRequest;
use crate::api::tokenize::{
    ChatTokenizeResponse, DetokenizeRequest, DetokenizeResponse, SimpleToken,
};

/// Tokenizes on the blocking pool.
async fn run_tokenize(state: &SharedState, prompt: Prompt) -> Result<Tokenized, ApiError> {
    Ok(on_engine(state, move |e| e.tokenize(&prompt)).await?)
}

/// Tokens with their byte ranges in the decoded prompt.
fn simple_tokens(t: Tokenized) -> Vec<SimpleToken> {
    let mut at = 0;
    t.ids
        .into_iter()
        .zip(t.pieces)
        .map(|(id, text)| {
            let start = at;
            at += text.len();
            SimpleToken {
                id,
                text,
                start,
                stop: at,
            }
        })
        .collect()
}

/// `POST /tokenize`: TGI's request body (`inputs`; `parameters` ignored).
pub async fn tokenize(
    State(state): State<SharedState>,
    body: Result<ApiJson<GenerateRequest>, ApiError>,
) -> Response {
    let run = async {
        let ApiJson(req) = body?;
        let inputs = req
            .inputs
            .filter(|i| !i.is_empty())
            .ok_or_else(|| ApiError::Validation("`inputs` cannot be empty".into()))?;
        run_tokenize(&state, Prompt::Text(inputs)).await
    };
    match run.await {
        Ok(t) => Json(simple_tokens(t)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /chat_tokenize`: an OpenAI chat body, rendered and tokenized.
pub async fn chat_tokenize(
    State(state): State<SharedState>,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Response {
    let run = async {
        let ApiJson(req) = body?;
        let prepared = super::openai_request::chat(&req, std::time::Instant::now())?;
        let prompt = prepared
            .choices
            .into_iter()
            .next()
            .map(|c| c.request.prompt)
            .ok_or_else(|| ApiError::Validation("`messages` cannot be empty".into()))?;
        run_tokenize(&state, prompt).await
    };
    match run.await {
        Ok(mut t) => {
            let templated_text = t.rendered.take().unwrap_or_default();
            Json(ChatTokenizeResponse {
                tokenize_response: simple_tokens(t),
                templated_text,
            })
            .into_response()
        }
        Err(e) => OpenAiError(e).into_response(),
    }
}

/// `POST /detokenize`: `{"tokens": [...]}` to `{"prompt": "..."}`.
pub async fn detokenize(
    State(state): State<SharedState>,
    body: Result<ApiJson<DetokenizeRequest>, ApiError>,
) -> Response {
    let run = async {
        let ApiJson(req) = body?;
        Ok::<_, ApiError>(on_engine(&state, move |e| e.detokenize(&req.tokens)).await?)
    };
    match run.await {
        Ok(prompt) => Json(DetokenizeResponse { prompt }).into_response(),
        Err(e) => OpenAiError(e).into_response(),
    }
}
