//! One try of a request on one slice, written once for the first forward (`proxy.rs`) and
//! for a stream's continuation (`relay.rs`): send the body (with the point the
//! stream goes on from, when it continues one), then sort the worker's answer into a whole
//! one, a stream that has its first event, or a failure of the slice. The slice's bookkeeping
//! (errors, retries, suspension, its cache size, a buffered success) happens here too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::Value;

use super::backend::Backend;
use super::cost::CostSample;
use super::stats::InFlight;
use super::token_count::TokenCounter;
use super::SharedFront;
use crate::api::resume::{RESUMABLE_HEADER, RESUME_HEADER};
use crate::api::worker_report::{header_u64, names, WorkerReport};
use crate::api::Api;

/// A worker's response body.
pub type Upstream = BoxStream<'static, reqwest::Result<Bytes>>;

/// The slice serving a stream now.
pub struct Serving {
    pub backend: Arc<Backend>,
    pub guard: InFlight,
    pub generation: u64,
}

/// What goes to the slice.
pub struct Outgoing<'a> {
    pub api: Api,
    pub path: &'static str,
    pub body: &'a Bytes,
    /// The point a stream continues from (JSON of [`crate::api::resume::Resume`]).
    pub resume: Option<&'a str>,
    /// When the request reached the router (its wait before this try goes in the headers).
    pub arrived: Instant,
}

/// The answer's status and the headers the client gets (the worker's content type and `x-*`
/// headers, with the slice and the router's wait).
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// What one try on one slice came to.
pub enum Attempt {
    /// A whole answer: a success (recorded already), or the worker's refusal of the request
    /// itself (4xx).
    Whole(Head, Bytes),
    /// A stream that has its first event: `head_event` is what was read, `rest` the stream
    /// after it; `serving` holds the slice's in-flight guard until the stream ends.
    Stream {
        head: Head,
        head_event: Bytes,
        rest: Upstream,
        serving: Serving,
        /// When this try sent the request (the stream's time to first token counts from it).
        sent: Instant,
    },
    /// The slice failed the request; its answer, when it gave one (5xx, 429), is kept in case
    /// no other slice can take the request.
    Failed(Option<(Head, Bytes)>),
}

/// Sends `out` to the slice `serving` names (at `url`) and sorts its answer.
pub async fn try_slice(
    front: &SharedFront,
    out: &Outgoing<'_>,
    url: &str,
    serving: Serving,
) -> Attempt {
    let Serving {
        backend,
        mut guard,
        generation,
    } = serving;
    let sent = Instant::now();
    let fail = |why: String, suspend: bool| {
        tracing::warn!(slice = %backend.id, %why, "slice failed a request; trying another");
        backend.stats.record_error();
        backend.stats.record_retry();
        if suspend {
            backend.suspend(front.suspend_grace, generation);
        }
    };
    let mut request = backend
        .authorize(front.client.post(format!("{url}{}", out.path)))
        .header(header::CONTENT_TYPE, "application/json")
        .header(RESUMABLE_HEADER, "1");
    if let Some(point) = out.resume {
        request = request.header(RESUME_HEADER, point);
    }
    let upstream = match request.body(out.body.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            fail(format!("request failed: {e}"), true);
            return Attempt::Failed(None);
        }
    };
    let status = upstream.status();
    // Read once, from the worker's own headers (the relayed ones add the router's wait to
    // the queue time, which is not the worker's).
    let report = WorkerReport::from_headers(upstream.headers());
    if let Some(tokens) = report.kv_cache_tokens {
        // The slice's prefix index, sized to its worker's KV cache.
        backend.prefixes.set_capacity_tokens(tokens as usize);
    }
    let head = Head {
        status,
        headers: relay_headers(upstream.headers(), &backend.id, sent - out.arrived),
    };
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        if status.is_server_error() {
            fail(format!("status {status}"), false);
        } else {
            backend.stats.record_retry();
        }
        let body = upstream.bytes().await.unwrap_or_default();
        return Attempt::Failed(Some((head, body)));
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
                    record_buffered(&guard, &report, &bytes, sent);
                }
                Attempt::Whole(head, bytes)
            }
            Err(e) => {
                fail(format!("reading the response: {e}"), true);
                Attempt::Failed(None)
            }
        };
    }
    let mut rest = upstream.bytes_stream().boxed();
    match first_event(&mut rest, out.api).await {
        Ok(head_event) => {
            guard.first_token();
            Attempt::Stream {
                head,
                head_event: Bytes::from(head_event),
                rest,
                serving: Serving {
                    backend,
                    guard,
                    generation,
                },
                sent,
            }
        }
        Err(why) => {
            fail(why, true);
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

/// The worker's content type and `x-*` headers, `x-slice` set to the backend, and the
/// router's own wait added to `x-queue-time`.
fn relay_headers(upstream: &HeaderMap, slice: &str, router_wait: Duration) -> HeaderMap {
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

/// Records a buffered success from the worker's report: output tokens, the whole time per
/// token, and for the cost model (when the timings are there) the prefill time of the
/// uncached prompt tokens (first token less queue) and the time per token after the first.
fn record_buffered(guard: &InFlight, report: &WorkerReport, body: &[u8], sent: Instant) {
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
    let cost = cost_sample(report, tokens, guard.mean_batch());
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
}
