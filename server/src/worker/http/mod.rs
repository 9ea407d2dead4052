//! The worker's HTTP API: TGI and OpenAI routes over one [`Engine`]. Handlers turn wire
//! requests into [`GenerateRequest`]s (checking only what one API alone has), submit them on
//! a blocking pool (tokenizing and templating a large body takes a while), and turn engine
//! events into responses and server-sent events.

mod openai;
mod openai_answer;
mod openai_logprobs;
mod openai_request;
mod openai_stream;
mod resume;
mod structured;
mod tgi;
mod tokenize;
mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use migserve_engine::event::Collected;
use migserve_engine::{Accepted, Engine, FinishEvent, FinishReason, GenerateRequest};
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::api::tgi::{Info, PrefixCacheInfo};
use crate::api::worker_report::{names, WorkerReport};

/// Everything a handler needs.
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    /// `/info`, made once from the engine's info.
    pub info: Info,
    pub metrics: PrometheusHandle,
    /// Value of the `x-slice` header (the slice this worker serves), if known.
    pub slice: Option<HeaderValue>,
    /// Compute type for TGI's `x-compute-type` header (`cpu`, `cuda`).
    pub compute_type: HeaderValue,
    /// The model id, as the `x-model` response header.
    pub model_header: HeaderValue,
}

impl AppState {
    /// The state of a worker serving `engine` on `slice` (if known).
    pub fn new(engine: Arc<dyn Engine>, metrics: PrometheusHandle, slice: Option<&str>) -> Self {
        let e = engine.info();
        let info = Info {
            model_id: e.model_id.clone(),
            model_sha: None,
            model_dtype: e.dtype.clone(),
            model_device_type: e.device.name().into(),
            model_pipeline_tag: Some("text-generation".into()),
            max_concurrent_requests: e.max_concurrent_requests,
            max_best_of: tgi::MAX_BEST_OF,
            max_stop_sequences: e.limits.max_stop_sequences,
            max_input_tokens: e.limits.max_input_tokens,
            max_total_tokens: e.limits.max_total_tokens,
            max_batch_size: Some(e.max_batch_size),
            max_client_batch_size: 1,
            validation_workers: 1,
            router: "migserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sha: None,
            docker_label: None,
            slice: slice.map(str::to_string),
            kv_cache_tokens: e.limits.kv_cache_tokens,
            model_architecture: Some(e.architecture.clone()),
            model_parameters: Some(e.parameters),
            kv_bytes_per_token: Some(e.kv_bytes_per_token),
            prefix_cache: None,
        };
        let compute_type = HeaderValue::from_static(e.device.name());
        let model_header =
            HeaderValue::from_str(&e.model_id).unwrap_or(HeaderValue::from_static("-"));
        Self {
            model_header,
            engine,
            info,
            metrics,
            slice: slice.and_then(|s| HeaderValue::from_str(s).ok()),
            compute_type,
        }
    }

    /// The name clients use for the model.
    pub fn model_id(&self) -> &str {
        &self.info.model_id
    }
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
        .route("/tokenize", post(tokenize::tokenize))
        .route("/chat_tokenize", post(tokenize::chat_tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/openapi.json", get(crate::api::openapi::openapi_json))
        .route("/docs", get(crate::api::openapi::docs_page))
        .fallback(crate::api::error::route_not_found)
        .method_not_allowed_fallback(crate::api::error::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(state): State<SharedState>) -> Response {
    match state.engine.health() {
        migserve_engine::Health::Healthy => StatusCode::OK.into_response(),
        migserve_engine::Health::Dead(why) => {
            ApiError::Unhealthy(format!("the engine has stopped: {why}")).into_response()
        }
    }
}

async fn info(State(state): State<SharedState>) -> axum::Json<Info> {
    let mut info = state.info.clone();
    info.prefix_cache = state.engine.prefix_cache().map(|p| PrefixCacheInfo {
        queried_tokens: p.queried_tokens,
        hit_tokens: p.hit_tokens,
        hit_rate: p.hit_rate(),
        cached_blocks: p.cached_blocks,
        evicted_blocks: p.evicted_blocks,
    });
    axum::Json(info)
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

/// Runs `work` on the engine on tokio's blocking pool (tokenizing and templating a large body
/// take a while).
pub async fn on_engine<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&dyn Engine) -> Result<T, migserve_engine::EngineError> + Send + 'static,
) -> Result<T, migserve_engine::EngineError> {
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || work(engine.as_ref()))
        .await
        .map_err(|e| {
            migserve_engine::EngineError::Generation(format!("the engine's work failed: {e}"))
        })?
}

/// Submits a request on the blocking pool.
pub async fn submit(state: &AppState, request: GenerateRequest) -> Result<Accepted, ApiError> {
    Ok(on_engine(state, move |e| e.submit(request)).await?)
}

/// Submits every request (the choices of one OpenAI request) on the blocking pool, in order;
/// if one is refused, those already accepted are dropped (cancelled) and its error returned.
pub async fn submit_all(
    state: &AppState,
    requests: Vec<GenerateRequest>,
) -> Result<Vec<Accepted>, migserve_engine::EngineError> {
    on_engine(state, move |e| {
        requests.into_iter().map(|r| e.submit(r)).collect()
    })
    .await
}

/// Waits for every event of a request.
pub async fn collect(accepted: Accepted) -> Result<Collected, ApiError> {
    accepted.events.collect().await.map_err(ApiError::from)
}

/// TGI's name of a finish reason.
pub fn tgi_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        // The output is complete, as at an eos (TGI's own grammars end with one).
        FinishReason::EosToken | FinishReason::GrammarComplete => "eos_token",
        FinishReason::StopSequence => "stop_sequence",
    }
}

/// OpenAI's name of a finish reason.
pub fn openai_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EosToken | FinishReason::StopSequence | FinishReason::GrammarComplete => {
            "stop"
        }
    }
}

fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_millis() as u64)
}

/// TGI's timing headers for a finished request, the worker's report to the front
/// ([`WorkerReport`]), and `x-slice`.
pub fn timing_headers(state: &AppState, finish: &FinishEvent, arrived: Instant) -> HeaderMap {
    let mut h = HeaderMap::new();
    let total = arrived.elapsed();
    h.insert("x-compute-type", state.compute_type.clone());
    h.insert(names::MODEL, state.model_header.clone());
    h.insert("x-compute-time", millis(total));
    h.insert("x-total-time", millis(total));
    h.insert(
        "x-validation-time",
        millis(total.saturating_sub(finish.queue_time + finish.inference_time)),
    );
    finish_report(state, finish).write_to(&mut h);
    if let Some(slice) = &state.slice {
        h.insert(names::SLICE, slice.clone());
    }
    h
}

/// The report of a finished request: its timings and counts, and the size of the worker's
/// KV cache (which the router sizes its picture of the slice's prefix cache by).
pub fn finish_report(state: &AppState, finish: &FinishEvent) -> WorkerReport {
    let per_token = if finish.generated_tokens > 0 {
        finish.inference_time / finish.generated_tokens as u32
    } else {
        Duration::ZERO
    };
    WorkerReport {
        queue: Some(finish.queue_time),
        time_to_first_token: Some(finish.time_to_first_token),
        inference: Some(finish.inference_time),
        per_token: Some(per_token),
        prompt_tokens: Some(finish.prompt_tokens as u64),
        cached_tokens: Some(finish.cached_tokens as u64),
        generated_tokens: Some(finish.generated_tokens as u64),
        kv_cache_tokens: Some(state.info.kv_cache_tokens as u64),
    }
}

/// Headers of a streamed response (of the report, only the KV cache's size is known yet).
pub fn stream_headers(state: &AppState) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-compute-type", state.compute_type.clone());
    h.insert(names::MODEL, state.model_header.clone());
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(slice) = &state.slice {
        h.insert(names::SLICE, slice.clone());
    }
    let report = WorkerReport {
        kv_cache_tokens: Some(state.info.kv_cache_tokens as u64),
        ..WorkerReport::default()
    };
    report.write_to(&mut h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use migserve_engine::{DeviceKind, EngineError, EngineInfo, Health, Limits};

    /// An engine that only has an info.
    struct InfoOnly(EngineInfo);

    impl Engine for InfoOnly {
        fn submit(&self, _: GenerateRequest) -> Result<Accepted, EngineError> {
            Err(EngineError::Unavailable("info only".into()))
        }
        fn health(&self) -> Health {
            Health::Healthy
        }
        fn watch_health(&self) -> tokio::sync::watch::Receiver<Health> {
            tokio::sync::watch::Sender::new(Health::Healthy).subscribe()
        }
        fn info(&self) -> &EngineInfo {
            &self.0
        }
    }

    #[test]
    fn info_and_compute_type_name_the_engines_device() {
        for device in [DeviceKind::Cpu, DeviceKind::Cuda] {
            let engine = InfoOnly(EngineInfo {
                model_id: "m".into(),
                dtype: "bf16".into(),
                device,
                architecture: "gemma3".into(),
                parameters: 268_098_176,
                kv_bytes_per_token: 18_432,
                limits: Limits {
                    max_input_tokens: 10,
                    max_total_tokens: 20,
                    max_stop_sequences: 4,
                    default_max_new_tokens: 5,
                    kv_cache_tokens: 64,
                    vocab_size: 100,
                },
                max_batch_size: 8,
                max_concurrent_requests: 16,
                prefix_caching: true,
            });
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle();
            let state = AppState::new(Arc::new(engine), metrics, Some("mig0-1"));
            assert_eq!(state.info.model_device_type, device.name());
            assert_eq!(state.compute_type, device.name());
            assert_eq!(state.info.kv_cache_tokens, 64);
            assert_eq!(state.info.slice.as_deref(), Some("mig0-1"));
        }
    }
}
