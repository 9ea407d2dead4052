//! One log line per request (the access log), for the front and for workers: method, path,
//! status, model, slice, prompt and generated tokens, queue and total time, at `info` (in
//! JSON with `--log-format json`, like every other line). Everything but method, path and
//! status comes from the response's `x-*` headers; a stream's line is written when its last
//! byte is sent, with the token counts its worker reported in its headers (none: the counts
//! of a stream are in the metrics). A worker under `serve` writes its lines at `debug`, so
//! the front's line is the one that shows. The fleet writes a line here for each model load
//! and eviction ([`model_event`]).

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use crate::api::worker_report::names;

/// Whether the lines go out at `info` (else `debug`).
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    pub info: bool,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// What one line says.
struct Line {
    info: bool,
    method: String,
    path: String,
    status: u16,
    model: String,
    slice: String,
    prompt_tokens: String,
    generated_tokens: String,
    queue_ms: String,
    arrived: Instant,
    streamed: bool,
}

impl Line {
    fn write(&self) {
        let total_ms = self.arrived.elapsed().as_millis() as u64;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    method = %self.method,
                    path = %self.path,
                    status = self.status,
                    model = %self.model,
                    slice = %self.slice,
                    prompt_tokens = %self.prompt_tokens,
                    generated_tokens = %self.generated_tokens,
                    queue_ms = %self.queue_ms,
                    total_ms,
                    streamed = self.streamed,
                    "request"
                )
            };
        }
        match self.info {
            true => line!(info),
            false => line!(debug),
        }
    }
}

/// Middleware writing the line of each request (health checks and metrics scrapes left out).
pub async fn log_request(
    axum::extract::State(log): axum::extract::State<AccessLog>,
    request: Request,
    next: Next,
) -> Response {
    let enabled = match log.info {
        true => tracing::enabled!(tracing::Level::INFO),
        false => tracing::enabled!(tracing::Level::DEBUG),
    };
    // Nothing to write: no copies, no wrapped stream.
    if !enabled || matches!(request.uri().path(), "/health" | "/metrics") {
        return next.run(request).await;
    }
    let arrived = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let h = response.headers();
    let streamed = header(h, "content-type").starts_with("text/event-stream");
    let line = Line {
        info: log.info,
        method,
        path,
        status: response.status().as_u16(),
        model: header(h, names::MODEL).to_string(),
        slice: header(h, names::SLICE).to_string(),
        prompt_tokens: header(h, names::PROMPT_TOKENS).to_string(),
        generated_tokens: header(h, names::GENERATED_TOKENS).to_string(),
        queue_ms: header(h, names::QUEUE_TIME).to_string(),
        arrived,
        streamed,
    };
    if !streamed {
        line.write();
        return response;
    }
    // A stream's line goes out when its body ends (or is dropped: the client left).
    struct AtEnd(Line);
    impl Drop for AtEnd {
        fn drop(&mut self) {
            self.0.write();
        }
    }
    let (parts, body) = response.into_parts();
    let at_end = AtEnd(line);
    let body = body.into_data_stream().map(move |chunk| {
        let _keep = &at_end;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// A model's load or eviction, as a line of the front's access log (`event`: `load`,
/// `loaded`, `load_failed`, `evict`, `unload`, `unloaded`), beside the request lines.
pub fn model_event(event: &str, model: &str, slice: &str, detail: &str) {
    tracing::info!(event, model, slice, detail, "model");
}

/// `router` with the access log.
pub fn layer(router: axum::Router, log: AccessLog) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(log, log_request))
}
