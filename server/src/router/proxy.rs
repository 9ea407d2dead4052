//! Forwarding API requests to a chosen slice: model selection, admission, retries before the
//! first byte (counted in `x-router-retries`), and streams handed to the relay
//! ([`super::relay`]), which continues them elsewhere if their worker dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use serde_json::Value;

use super::attempt::{try_slice, Attempt, Head, Outgoing, Serving};
use super::backend::Backend;
use super::lifecycle::{self, Demand};
use super::policy::Work;
use super::prefix_index::PromptText;
use super::relay::{Origin, StreamRelay};
use super::routing_view::RoutingView;
use super::{Pick, Placing, SharedFront};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::worker_report::names;
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
    let out = Outgoing {
        api,
        path,
        body: &request.body,
        resume: None,
        arrived: request.arrived,
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
        let attempt = try_slice(&front, &out, &url, serving).await;
        match respond(&front, &request, attempt, &mut tried, attempts as u64 - 1) {
            Answer::Final(answer) => return answer,
            Answer::Failed(Some(kept)) => last_failure = Some(kept),
            Answer::Failed(None) => {}
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

/// What one try came to for the client.
enum Answer {
    /// The client's answer.
    Final(Response),
    /// The slice failed the request; its answer, when it gave one.
    Failed(Option<Response>),
}

/// The client's answer from one try, or the slice's failure; `retries` slices failed the
/// request before this one.
fn respond(
    front: &SharedFront,
    request: &Forwarded,
    attempt: Attempt,
    tried: &mut Vec<Arc<Backend>>,
    retries: u64,
) -> Answer {
    let answer = |mut head: Head, body: Body| {
        head.headers
            .insert(RETRIES_HEADER, HeaderValue::from(retries));
        (head.status, head.headers, body).into_response()
    };
    match attempt {
        Attempt::Whole(mut head, body) => {
            add_router_time(&mut head.headers, request.arrived);
            Answer::Final(answer(head, Body::from(body)))
        }
        Attempt::Stream {
            head,
            head_event,
            rest,
            serving,
            sent,
        } => {
            let origin = Origin {
                api: request.api,
                path: request.path,
                body: request.body.clone(),
                model: request.facts.model.clone(),
                placing: request.facts.placing.clone(),
                tried: std::mem::take(tried),
                sent,
            };
            let relay = StreamRelay::new(front.clone(), origin, serving);
            Answer::Final(answer(head, relay.into_body(head_event, rest)))
        }
        Attempt::Failed(kept) => {
            Answer::Failed(kept.map(|(head, body)| answer(head, Body::from(body))))
        }
    }
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

/// `x-router-time`: milliseconds from arrival at the router to the response.
fn add_router_time(headers: &mut HeaderMap, arrived: Instant) {
    headers.insert(
        "x-router-time",
        HeaderValue::from(arrived.elapsed().as_millis() as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
