//! The worker's HTTP API: TGI and OpenAI routes over one engine.

mod openai;
mod stop_holdback;
mod tgi;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use migserve_models::Model;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::engine::{
    EngineEvent, EngineHandle, EngineRequest, FinishEvent, FinishReason, TokenEvent,
};
use crate::api::error::ApiError;
use crate::api::tgi::Info;
use crate::api::validation::Limits;

/// Everything a handler needs.
pub struct AppState {
    pub engine: EngineHandle,
    pub model: Arc<Model>,
    pub model_id: String,
    pub limits: Limits,
    pub info: Info,
    pub metrics: PrometheusHandle,
    /// Value of the `x-slice` header (the slice this worker serves), if known.
    pub slice: Option<HeaderValue>,
    /// Compute type for TGI's `x-compute-type` header ("cpu", "cuda").
    pub compute_type: HeaderValue,
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

/// Largest request body accepted (bytes); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// All routes of a worker.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/", post(tgi::compat_generate))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(state): State<SharedState>) -> Response {
    if state
        .engine
        .status()
        .healthy
        .load(std::sync::atomic::Ordering::Acquire)
    {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unhealthy("the engine has stopped".into()).into_response()
    }
}

async fn info(State(state): State<SharedState>) -> axum::Json<Info> {
    axum::Json(state.info.clone())
}

async fn metrics(State(state): State<SharedState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// A JSON body whose rejections are API errors: 413 over the size limit, 422 otherwise.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than {MAX_BODY_BYTES} bytes"
                ))
            } else {
                ApiError::Validation(e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::Validation(format!("Failed to deserialize the JSON body: {e}")))
    }
}

/// Submits a validated request; its events arrive on the returned receiver.
pub fn submit(
    state: &AppState,
    request: EngineRequest,
) -> Result<UnboundedReceiver<EngineEvent>, ApiError> {
    let (tx, rx) = unbounded_channel();
    state.engine.submit(request, tx)?;
    Ok(rx)
}

/// A whole generation, for non-streamed responses.
pub struct Collected {
    pub tokens: Vec<TokenEvent>,
    pub text: String,
    pub finish: FinishEvent,
}

/// Waits for every event of a request.
pub async fn collect(mut rx: UnboundedReceiver<EngineEvent>) -> Result<Collected, ApiError> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            EngineEvent::Token(t, finish) => {
                text.push_str(&t.text);
                tokens.push(t);
                if let Some(finish) = finish {
                    return Ok(Collected {
                        tokens,
                        text,
                        finish,
                    });
                }
            }
            EngineEvent::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::Generation(
        "the engine dropped the request".into(),
    ))
}

/// TGI's name of a finish reason.
pub fn tgi_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EosToken => "eos_token",
        FinishReason::StopSequence => "stop_sequence",
    }
}

/// OpenAI's name of a finish reason.
pub fn openai_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_millis() as u64)
}

/// TGI's timing headers for a finished request, plus `x-slice`.
pub fn timing_headers(state: &AppState, finish: &FinishEvent, arrived: Instant) -> HeaderMap {
    let mut h = HeaderMap::new();
    let total = arrived.elapsed();
    let per_token = if finish.generated_tokens > 0 {
        finish.inference_time / finish.generated_tokens as u32
    } else {
        Duration::ZERO
    };
    h.insert("x-compute-type", state.compute_type.clone());
    h.insert("x-compute-time", millis(total));
    h.insert("x-total-time", millis(total));
    h.insert(
        "x-validation-time",
        millis(total.saturating_sub(finish.queue_time + finish.inference_time)),
    );
    h.insert("x-queue-time", millis(finish.queue_time));
    h.insert("x-inference-time", millis(finish.inference_time));
    h.insert("x-time-per-token", millis(per_token));
    h.insert(
        "x-prompt-tokens",
        HeaderValue::from(finish.prompt_tokens as u64),
    );
    h.insert(
        "x-generated-tokens",
        HeaderValue::from(finish.generated_tokens as u64),
    );
    if let Some(slice) = &state.slice {
        h.insert("x-slice", slice.clone());
    }
    h
}

/// Headers of a streamed response.
pub fn stream_headers(state: &AppState) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-compute-type", state.compute_type.clone());
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(slice) = &state.slice {
        h.insert("x-slice", slice.clone());
    }
    h
}
