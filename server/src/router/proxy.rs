//! Forwarding API requests to a chosen slice: model selection, admission, retries before the
//! first byte (counted in `x-router-retries`), and streams handed to the relay
//! ([`super::relay`]), which continues them elsewhere if their worker dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use futures_util::stream::StreamExt;
use serde_json::Value;

use super::backend::Backend;
use super::cost::CostSample;
use super::lifecycle::{self, Demand};
use super::policy::Work;
use super::prefix_index::PromptText;
use super::relay::{Origin, Serving, StreamRelay, Upstream};
use super::routing_view::RoutingView;
use super::stats::InFlight;
use super::token_count::TokenCounter;
use super::{Pick, Placing, SharedFront};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::resume::RESUMABLE_HEADER;
use crate::api::worker_report::{header_u64, names, WorkerReport};
use crate::api::Api;
use crate::config::RoutingPolicy;

/// A request body, or why it could not be read (too large: 413).
type RequestBody = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// Header naming the model for TGI requests (which have no `model` field).
pub const MODEL_HEADER: &str = names::MODEL;

/// Response header: slices that failed the request before the one that answered (a stream
/// counts those before its first event; continuations after that are not in it).
pub const RETRIES_HEADER: &str = "x-router-retries";

fn api_error(api: Api, error: ApiError) -> Response {
    match api {
        Api::Tgi => error.into_response(),
        Api::OpenAi => OpenAiError(error).into_response(),
    }
}

/// The route that forwards `POST path` (a request of `api`) to a slice holding its model:
/// `/`, `/generate`, `/generate_stream`, `/v1/completions`, `/v1/chat/completions` and the
/// tokenize routes. TGI bodies name no model: `x-model` does.
pub fn relay(path: &'static str, api: Api) -> MethodRouter<SharedFront> {
    post(
        move |State(f): State<SharedFront>, h: HeaderMap, body: RequestBody| {
            forward(f, path, api, h, body)
        },
    )
}

/// `GET /info`: the TGI info of a ready worker of the default model.
pub async fn info(State(front): State<SharedFront>) -> Response {
    let backends = front.backends();
    let default_model = front.default_model();
    let ready = backends
        .iter()
        .filter(|b| b.model == default_model)
        .find_map(|b| b.url().map(|url| (url, b)));
    let Some((url, backend)) = ready else {
        return ApiError::Unhealthy("no worker is ready".into()).into_response();
    };
    let request = backend
        .authorize(front.client.get(format!("{url}/info")))
        .timeout(std::time::Duration::from_secs(10));
    match request.send().await {
        Ok(r) => match r.bytes().await {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => ApiError::Unhealthy(format!("worker info: {e}")).into_response(),
        },
        Err(e) => ApiError::Unhealthy(format!("worker info: {e}")).into_response(),
    }
}

/// What the router reads from a request body.
struct RequestFacts {
    model: String,
    placing: Placing,
}

fn facts(front: &SharedFront, api: Api, headers: &HeaderMap, body: &Value) -> RequestFacts {
    let view = RoutingView::of(body);
    let named = match api {
        Api::OpenAi => view.model(),
        Api::Tgi => None,
    }
    .or_else(|| headers.get(MODEL_HEADER).and_then(|v| v.to_str().ok()))
    .filter(|m| !m.is_empty());
    let model = named
        .map(str::to_string)
        .unwrap_or_else(|| front.default_model());
    let prompt = PromptText::of(&view);
    let placing = Placing {
        work: estimate_work(&prompt, &view, front.settings.default_max_new_tokens),
        // Only the prefix-aware policy reads them.
        chunks: match front.settings.policy {
            RoutingPolicy::PrefixAware => prompt.chunks(&model),
            _ => Vec::new(),
        },
    };
    RequestFacts { model, placing }
}

/// Prompt tokens (about 4 bytes each: the router does not tokenize) and requested new ones.
pub fn estimate_work(prompt: &PromptText, view: &RoutingView, default_new: u64) -> Work {
    let new = view
        .max_new_tokens()
        .unwrap_or(default_new)
        .min(MAX_ESTIMATED_NEW_TOKENS);
    Work {
        prompt_tokens: prompt.tokens(),
        new_tokens: new,
    }
}

/// Cap on a request's new tokens in queue estimates (a client may ask for anything; the
/// worker refuses what is over its limit).
const MAX_ESTIMATED_NEW_TOKENS: u64 = 1 << 20;

async fn forward(
    front: SharedFront,
    path: &'static str,
    api: Api,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let arrived = Instant::now();
    let (body, parsed) = match read_body(&front, body) {
        Ok(read) => read,
        Err(error) => return api_error(api, error),
    };
    let facts = facts(&front, api, &headers, &parsed);
    if !front.serves(&facts.model) {
        let error = ApiError::NotFound(format!(
            "model {:?} is not served here (models: {})",
            facts.model,
            front.model_names().join(", ")
        ));
        return api_error(api, error);
    }
    front.lifecycle.touch(&facts.model);
    let request = Forwarded {
        api,
        path,
        body,
        facts,
        arrived,
    };
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last_failure: Option<Response> = None;
    // Set while the request waits for a worker to load (or for room on a loaded one).
    let mut held: Option<(lifecycle::Held, Instant)> = None;
    let mut attempts = 0;
    while attempts <= front.settings.max_retries {
        let picked = front.pick(&request.facts.model, &request.facts.placing, &tried);
        let (backend, guard) = match picked {
            Pick::Chosen(backend, guard) => {
                // No longer waiting: its model may be chosen to make room again.
                held = None;
                (backend, guard)
            }
            other if last_failure.is_none() => {
                let more = matches!(other, Pick::AllFull);
                match wait_for_worker(&front, &request.facts.model, more, &mut held).await {
                    Waited::Again => continue,
                    Waited::Answer(error, retry_after) => {
                        return with_retry_after(api_error(api, error), retry_after)
                    }
                }
            }
            _ => break,
        };
        attempts += 1;
        tried.push(backend.clone());
        let Some((url, generation)) = backend.route() else {
            continue;
        };
        let serving = Serving {
            backend,
            guard,
            generation,
        };
        match try_slice(&front, &request, &url, serving, &mut tried).await {
            Attempt::Answered(answer) => return answer,
            Attempt::Failed(Some(kept)) => last_failure = Some(kept),
            Attempt::Failed(None) => {}
        }
    }
    last_failure.unwrap_or_else(|| {
        let error = ApiError::Unhealthy(format!(
            "every slice tried for {:?} failed the request",
            request.facts.model
        ));
        with_retry_after(api_error(api, error), Some(Duration::from_secs(1)))
    })
}

/// A request the front forwards, as it arrived.
struct Forwarded {
    api: Api,
    path: &'static str,
    body: Bytes,
    facts: RequestFacts,
    arrived: Instant,
}

/// The request's body and its JSON, or why the client gets neither (too large, too slow, not
/// JSON).
fn read_body(front: &SharedFront, body: RequestBody) -> Result<(Bytes, Value), ApiError> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::PayloadTooLarge(format!(
                "request body over {} bytes",
                front.settings.max_body_bytes
            )))
        }
        Err(rejection) if crate::net::guarded::is_body_timeout(&rejection) => {
            return Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} s",
                front.settings.body_read_timeout_secs
            )))
        }
        Err(rejection) => return Err(ApiError::Validation(rejection.body_text())),
    };
    match serde_json::from_slice(&body) {
        Ok(parsed) => Ok((body, parsed)),
        Err(e) => Err(ApiError::Validation(format!("invalid JSON body: {e}"))),
    }
}

/// What one try on one slice came to.
enum Attempt {
    /// The client's answer: a buffered one, a stream that has its first event, or the
    /// worker's refusal of the request itself (4xx).
    Answered(Response),
    /// The slice failed the request; its answer, when it gave one (5xx, 429), is kept in case
    /// no other slice can take the request.
    Failed(Option<Response>),
}

/// Sends the request to the slice `serving` names (at `url`) and classifies its answer;
/// `tried` (the slices tried so far) goes with a stream that starts.
async fn try_slice(
    front: &SharedFront,
    request: &Forwarded,
    url: &str,
    serving: Serving,
    tried: &mut Vec<Arc<Backend>>,
) -> Attempt {
    let Serving {
        backend,
        mut guard,
        generation,
    } = serving;
    let sent = Instant::now();
    let fail = |why: String| {
        tracing::warn!(slice = %backend.id, %why, "slice failed a request; trying another");
        backend.stats.record_error();
        backend.stats.record_retry();
    };
    let upstream = backend
        .authorize(front.client.post(format!("{url}{}", request.path)))
        .header(header::CONTENT_TYPE, "application/json")
        .header(RESUMABLE_HEADER, "1")
        .body(request.body.clone());
    let upstream = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            fail(format!("request failed: {e}"));
            backend.suspend(front.suspend_grace, generation);
            return Attempt::Failed(None);
        }
    };
    let status = upstream.status();
    learn_cache_size(&backend, upstream.headers());
    let mut out_headers = relay_headers(upstream.headers(), &backend.id, sent - request.arrived);
    out_headers.insert(RETRIES_HEADER, HeaderValue::from(tried.len() as u64 - 1));
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        if status.is_server_error() {
            fail(format!("status {status}"));
        } else {
            backend.stats.record_retry();
        }
        let body = upstream.bytes().await.unwrap_or_default();
        return Attempt::Failed(Some((status, out_headers, body).into_response()));
    }
    // A stream is what the worker answers with one (not what the body asked for: a
    // tokenize body may say `"stream": true` too).
    let streamed = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !(streamed && status.is_success()) {
        return match upstream.bytes().await {
            Ok(bytes) => {
                if status.is_success() {
                    record_buffered(&guard, &out_headers, &bytes, sent);
                }
                add_router_time(&mut out_headers, request.arrived);
                Attempt::Answered((status, out_headers, bytes).into_response())
            }
            Err(e) => {
                fail(format!("reading the response: {e}"));
                backend.suspend(front.suspend_grace, generation);
                Attempt::Failed(None)
            }
        };
    }
    let mut chunks = upstream.bytes_stream().boxed();
    match first_event(&mut chunks, request.api).await {
        Ok(head) => {
            guard.first_token();
            let origin = Origin {
                api: request.api,
                path: request.path,
                body: request.body.clone(),
                model: request.facts.model.clone(),
                placing: request.facts.placing.clone(),
                tried: std::mem::take(tried),
                sent,
            };
            let serving = Serving {
                backend,
                guard,
                generation,
            };
            let relay = StreamRelay::new(front.clone(), origin, serving);
            let body = relay.into_body(Bytes::from(head), chunks);
            Attempt::Answered((status, out_headers, body).into_response())
        }
        Err(why) => {
            fail(why);
            backend.suspend(front.suspend_grace, generation);
            Attempt::Failed(None)
        }
    }
}

/// Reads a stream up to its first event (keep-alive comments do not count), so a worker
/// that dies before sending a token costs the client nothing; what was read, or why the
/// stream failed first.
async fn first_event(chunks: &mut Upstream, api: Api) -> Result<Vec<u8>, String> {
    let mut head: Vec<u8> = Vec::new();
    // Only finds the first event: the relay counts the stream's tokens, head included.
    let mut seen = TokenCounter::new(api);
    loop {
        match chunks.next().await {
            Some(Ok(chunk)) => {
                head.extend_from_slice(&chunk);
                seen.feed(&chunk);
                if seen.data_events() > 0 {
                    return Ok(head);
                }
            }
            Some(Err(e)) => return Err(format!("stream failed before its first event: {e}")),
            None => return Err("stream ended before its first event".to_string()),
        }
    }
}

/// What waiting for a worker came to.
enum Waited {
    /// Pick again: a worker may be ready (or have room) now.
    Again,
    /// Answer the client with this, and `Retry-After` when given.
    Answer(ApiError, Option<Duration>),
}

/// No slice of `model` can take the request now (none ready, or all full when `more`): asks
/// the model's manager and waits for the next change of its workers while it loads one,
/// holding the request (counted in `held`) for at most the load timeout.
async fn wait_for_worker(
    front: &SharedFront,
    model: &str,
    more: bool,
    held: &mut Option<(lifecycle::Held, Instant)>,
) -> Waited {
    // Counted as held before asking: a load queued for it is not dropped as unwanted.
    if held.is_none() {
        if let Some(h) = front.lifecycle.hold(model) {
            *held = Some((h, Instant::now()));
        }
    }
    let mut changed = match front.lifecycle.demand(model, more) {
        Demand::Wait(changed) => changed,
        Demand::Refused(error, retry_after) => return Waited::Answer(error, retry_after),
        Demand::Unmanaged if more => {
            return Waited::Answer(
                ApiError::Overloaded(format!(
                    "every slice serving {model:?} is at its queue limit ({})",
                    front.settings.max_queue_per_slice
                )),
                Some(Duration::from_secs(1)),
            )
        }
        Demand::Unmanaged if !front.serves(model) => {
            // Removed from the catalogue by a reload while the request waited.
            return Waited::Answer(
                ApiError::NotFound(format!("model {model:?} is not served here any more")),
                None,
            );
        }
        Demand::Unmanaged => {
            return Waited::Answer(
                ApiError::Unhealthy(format!("no healthy slice serves {model:?}")),
                Some(Duration::from_secs(1)),
            )
        }
    };
    let since = held
        .as_ref()
        .map(|(_, since)| *since)
        .unwrap_or_else(Instant::now);
    let timeout = front.lifecycle.load_timeout();
    let Some(left) = timeout.checked_sub(since.elapsed()) else {
        return timed_out(model, timeout);
    };
    // Also looks again now and then: a slice's queue empties without a change of workers.
    let poll = if more { LOOK_AGAIN_FULL } else { LOOK_AGAIN };
    match tokio::time::timeout(left.min(poll), changed.changed()).await {
        Err(_) if left <= poll => timed_out(model, timeout),
        Ok(Err(_)) => Waited::Answer(
            ApiError::Unhealthy("the server is shutting down".into()),
            Some(Duration::from_secs(1)),
        ),
        _ => Waited::Again,
    }
}

/// How often a held request looks again without being told of a change.
const LOOK_AGAIN: Duration = Duration::from_millis(500);
/// The same for a request waiting for room on full slices.
const LOOK_AGAIN_FULL: Duration = Duration::from_millis(50);

fn timed_out(model: &str, timeout: Duration) -> Waited {
    Waited::Answer(
        ApiError::Unhealthy(format!(
            "no worker of {model:?} was ready within the load timeout ({:.0} s)",
            timeout.as_secs_f64()
        )),
        Some(Duration::from_secs(5)),
    )
}

/// `response` with a `Retry-After` header of `after` (whole seconds, at least 1) when given.
pub fn with_retry_after(mut response: Response, after: Option<Duration>) -> Response {
    if let Some(after) = after {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The worker's content type and `x-*` headers, `x-slice` set to the backend, and the
/// router's own wait added to `x-queue-time`.
fn relay_headers(
    upstream: &reqwest::header::HeaderMap,
    slice: &str,
    router_wait: std::time::Duration,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        let keep = name == header::CONTENT_TYPE
            || name == header::CACHE_CONTROL
            || name.as_str().starts_with("x-");
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(slice) {
        out.insert(names::SLICE, v);
    }
    let router_ms = router_wait.as_millis() as u64;
    for name in [names::QUEUE_TIME, "x-total-time", "x-compute-time"] {
        if let Some(worker_ms) = header_u64(&out, name) {
            out.insert(name, HeaderValue::from(worker_ms + router_ms));
        }
    }
    out.insert("x-router-queue-time", HeaderValue::from(router_ms));
    out
}

/// `x-router-time`: milliseconds from arrival at the router to the response.
fn add_router_time(headers: &mut HeaderMap, arrived: Instant) {
    headers.insert(
        "x-router-time",
        HeaderValue::from(arrived.elapsed().as_millis() as u64),
    );
}

/// Sizes a slice's prefix index to the KV cache its worker reports.
fn learn_cache_size(backend: &Backend, headers: &HeaderMap) {
    if let Some(tokens) = WorkerReport::from_headers(headers).kv_cache_tokens {
        backend.prefixes.set_capacity_tokens(tokens as usize);
    }
}

/// Records a buffered success from the worker's report: output tokens, the whole time per
/// token, and for the cost model (when the timings are there) the prefill time of the
/// uncached prompt tokens (first token less queue) and the time per token after the first.
fn record_buffered(guard: &InFlight, headers: &HeaderMap, body: &[u8], sent: Instant) {
    let report = WorkerReport::from_headers(headers);
    let tokens = report
        .generated_tokens
        .or_else(|| {
            serde_json::from_slice::<Value>(body)
                .ok()?
                .get("usage")?
                .get("completion_tokens")?
                .as_u64()
        })
        .unwrap_or(0);
    let cost = cost_sample(&report, tokens, guard.mean_batch());
    // The moving average of the whole time per token (prefill included), as `/slices` has
    // always shown it and the `queued-tokens` policy reads it.
    let tpot = report
        .per_token
        .map(|d| d.as_secs_f64())
        .or_else(|| (tokens > 0).then(|| sent.elapsed().as_secs_f64() / tokens as f64));
    guard.stats().record_success(None, tpot, tokens, cost);
}

/// What a worker's report of a buffered answer of `tokens` tokens, run in batches of
/// `mean_batch` on average, teaches the cost model (nothing without the timings).
fn cost_sample(report: &WorkerReport, tokens: u64, mean_batch: f64) -> CostSample {
    let mut cost = CostSample::default();
    let timings = report
        .queue
        .zip(report.time_to_first_token)
        .zip(report.inference);
    if let Some(((queue, ttft), inference)) = timings {
        let (queue, ttft, inference) = (
            queue.as_secs_f64(),
            ttft.as_secs_f64(),
            inference.as_secs_f64(),
        );
        let uncached =
            report.prompt_tokens.unwrap_or(0) as f64 - report.cached_tokens.unwrap_or(0) as f64;
        cost.prefill = Some(((ttft - queue).max(0.0), uncached.max(0.0) as u64));
        let decoding = (queue + inference - ttft).max(0.0);
        cost.decode = (tokens > 1).then(|| (decoding / (tokens - 1) as f64, mean_batch));
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_model_learns_from_the_report_a_worker_writes() {
        let written = WorkerReport {
            queue: Some(Duration::from_millis(100)),
            time_to_first_token: Some(Duration::from_millis(300)),
            inference: Some(Duration::from_millis(1_200)),
            per_token: Some(Duration::from_millis(120)),
            prompt_tokens: Some(50),
            cached_tokens: Some(10),
            generated_tokens: Some(11),
            kv_cache_tokens: Some(4096),
        };
        let report = WorkerReport::from_headers(&written.to_headers());
        let cost = cost_sample(&report, report.generated_tokens.unwrap(), 3.0);
        let (prefill_secs, uncached) = cost.prefill.unwrap();
        assert!(
            (prefill_secs - 0.2).abs() < 1e-9 && uncached == 40,
            "{cost:?}"
        );
        let (per_token, batch) = cost.decode.unwrap();
        assert!((per_token - 0.1).abs() < 1e-9 && batch == 3.0, "{cost:?}");
        let silent = cost_sample(&WorkerReport::default(), 11, 3.0);
        assert!(silent.prefill.is_none() && silent.decode.is_none());
    }

    #[test]
    fn token_estimates_use_prompt_size_and_limits() {
        let estimate = |body: Value| {
            let view = RoutingView::of(&body);
            let w = estimate_work(&PromptText::of(&view), &view, 256);
            (w.prompt_tokens, w.new_tokens)
        };
        let tgi =
            serde_json::json!({"inputs": "a".repeat(400), "parameters": {"max_new_tokens": 20}});
        assert_eq!(estimate(tgi), (100 + 1, 20));
        let chat = serde_json::json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5});
        assert_eq!(estimate(chat), (1 + 1, 5));
        assert_eq!(estimate(serde_json::json!({"prompt": ""})), (1, 256));
    }
}
