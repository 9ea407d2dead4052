//! A stand-in worker: real HTTP speaking the worker's TGI and OpenAI APIs, with canned tokens
//! at a configurable speed and no model. Router tests and the router-overhead benchmark use
//! it to isolate the router; `migserve fake-worker` runs one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Value};

/// Speed and size of a fake worker's answers.
#[derive(Debug, Clone)]
pub struct FakeWorkerConfig {
    /// Delay before the first token.
    pub first_token_delay: Duration,
    /// Delay between tokens after the first.
    pub token_delay: Duration,
    /// Tokens when a request sets no limit.
    pub default_new_tokens: u64,
    /// Answer every Nth generation request with a 500 (0: never).
    pub fail_every: u64,
    /// Cut every Nth stream after its second token by dropping the connection (0: never).
    pub cut_every: u64,
}

/// What a fake worker has seen.
#[derive(Debug, Default)]
pub struct FakeWorkerCounters {
    /// Generation requests received.
    pub requests: AtomicUsize,
    /// Generation requests being answered now.
    pub in_flight: AtomicUsize,
}

#[derive(Clone)]
struct Shared {
    config: Arc<FakeWorkerConfig>,
    counters: Arc<FakeWorkerCounters>,
}

/// The fake worker's routes.
pub fn app(config: FakeWorkerConfig, counters: Arc<FakeWorkerCounters>) -> Router {
    let shared = Shared {
        config: Arc::new(config),
        counters,
    };
    Router::new()
        .route("/generate", post(generate))
        .route("/generate_stream", post(generate_stream))
        .route("/", post(compat))
        .route("/v1/completions", post(openai))
        .route("/v1/chat/completions", post(openai))
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/info",
            get(|| async { Json(json!({"model_id": "fake", "router": "migserve-fake"})) }),
        )
        .with_state(shared)
}

/// Decrements `in_flight` when the answer is done or abandoned.
struct Busy(Arc<FakeWorkerCounters>);

impl Busy {
    fn new(counters: &Arc<FakeWorkerCounters>) -> Self {
        counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(counters.clone())
    }
}

/// Counts a generation request; its 1-based number.
fn arrive(s: &Shared) -> u64 {
    s.counters.requests.fetch_add(1, Ordering::Relaxed) as u64 + 1
}

fn every(n: u64, every: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}

fn injected_failure() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "injected failure", "error_type": "fake"})),
    )
        .into_response()
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn new_tokens(body: &Value, default: u64) -> u64 {
    body.get("parameters")
        .and_then(|p| p.get("max_new_tokens"))
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default)
        .clamp(1, 1 << 16)
}

fn token_text(i: u64) -> String {
    format!(" t{i}")
}

async fn generate(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    if every(arrive(&s), s.config.fail_every) {
        return injected_failure();
    }
    let _busy = Busy::new(&s.counters);
    let n = new_tokens(&body, s.config.default_new_tokens);
    let total = s.config.first_token_delay + s.config.token_delay * (n as u32 - 1);
    tokio::time::sleep(total).await;
    let text: String = (0..n).map(token_text).collect();
    let mut headers = HeaderMap::new();
    headers.insert("x-generated-tokens", HeaderValue::from(n));
    headers.insert("x-queue-time", HeaderValue::from(0u64));
    headers.insert(
        "x-inference-time",
        HeaderValue::from(total.as_millis() as u64),
    );
    headers.insert(
        "x-time-per-token",
        HeaderValue::from((total.as_millis() as u64) / n),
    );
    (headers, Json(json!({"generated_text": text}))).into_response()
}

async fn compat(state: State<Shared>, body: Json<Value>) -> Response {
    if body.get("stream") == Some(&Value::Bool(true)) {
        generate_stream(state, body).await
    } else {
        generate(state, body).await
    }
}

/// An SSE body of `n` events made by `event(i, last)`, paced like a worker (or a 500, or a
/// stream cut after two events, as configured).
fn paced_events(
    s: &Shared,
    n: u64,
    event: impl Fn(u64, bool) -> String + Send + 'static,
    trailer: Option<&'static str>,
) -> Response {
    let number = arrive(s);
    if every(number, s.config.fail_every) {
        return injected_failure();
    }
    let cut = every(number, s.config.cut_every);
    let busy = Busy::new(&s.counters);
    let config = s.config.clone();
    let events = stream::unfold(0u64, move |i| {
        let i = if i == u64::MAX { n + 1 } else { i };
        let config = config.clone();
        let event = &event;
        let out = if i < n {
            let delay = if i == 0 {
                config.first_token_delay
            } else {
                config.token_delay
            };
            let text = format!("data: {}\n\n", event(i, i + 1 == n));
            Some((delay, text, i + 1))
        } else if i == n {
            trailer.map(|t| (Duration::ZERO, format!("data: {t}\n\n"), i + 1))
        } else {
            None
        };
        async move {
            let (delay, text, next) = out?;
            tokio::time::sleep(delay).await;
            if cut && next == 3 {
                // An error in the body makes the server drop the connection mid-stream.
                return Some((Err(std::io::Error::other("injected cut")), u64::MAX));
            }
            Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), next))
        }
    });
    let events = futures_util::StreamExt::map(events, move |e| {
        let _keep = &busy;
        e
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

async fn generate_stream(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let n = new_tokens(&body, s.config.default_new_tokens);
    paced_events(
        &s,
        n,
        move |i, last| {
            let generated: Option<String> = last.then(|| (0..n).map(token_text).collect());
            json!({
                "index": i,
                "token": {"id": i, "text": token_text(i), "logprob": null, "special": false},
                "top_tokens": [],
                "generated_text": generated,
                "details": last.then(|| json!({"finish_reason": "length", "generated_tokens": n, "seed": null, "input_length": 1})),
            })
            .to_string()
        },
        None,
    )
}

async fn openai(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let n = new_tokens(&body, s.config.default_new_tokens);
    let chat = body.get("messages").is_some();
    if body.get("stream") == Some(&Value::Bool(true)) {
        return paced_events(
            &s,
            n,
            move |i, last| {
                let finish = last.then_some("length");
                let choice = if chat {
                    json!({"index": 0, "delta": {"content": token_text(i)}, "finish_reason": finish})
                } else {
                    json!({"index": 0, "text": token_text(i), "finish_reason": finish})
                };
                json!({"id": "fake", "object": if chat {"chat.completion.chunk"} else {"text_completion"}, "created": 0, "model": "fake", "choices": [choice]}).to_string()
            },
            Some("[DONE]"),
        );
    }
    if every(arrive(&s), s.config.fail_every) {
        return injected_failure();
    }
    let _busy = Busy::new(&s.counters);
    tokio::time::sleep(s.config.first_token_delay + s.config.token_delay * (n as u32 - 1)).await;
    let text: String = (0..n).map(token_text).collect();
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    Json(json!({
        "id": "fake", "object": if chat {"chat.completion"} else {"text_completion"}, "created": 0, "model": "fake",
        "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
    }))
    .into_response()
}

/// Arguments of `migserve fake-worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct FakeWorkerArgs {
    /// Address to listen on; port 0 picks a free port (printed like a worker's ready line).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Milliseconds before the first token.
    #[arg(long, default_value_t = 20)]
    pub first_token_delay_ms: u64,
    /// Milliseconds between later tokens.
    #[arg(long, default_value_t = 10)]
    pub token_delay_ms: u64,
    /// Tokens when a request sets no limit.
    #[arg(long, default_value_t = 16)]
    pub default_new_tokens: u64,
    /// Answer every Nth generation request with a 500 (0: never).
    #[arg(long, default_value_t = 0)]
    pub fail_every: u64,
    /// Cut every Nth stream after its second token (0: never).
    #[arg(long, default_value_t = 0)]
    pub cut_every: u64,
}

/// Runs `migserve fake-worker` until SIGTERM or Ctrl-C.
pub fn run(args: FakeWorkerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!(
            "migserve worker listening on http://{}",
            listener.local_addr()?
        );
        let config = FakeWorkerConfig {
            first_token_delay: Duration::from_millis(args.first_token_delay_ms),
            token_delay: Duration::from_millis(args.token_delay_ms),
            default_new_tokens: args.default_new_tokens,
            fail_every: args.fail_every,
            cut_every: args.cut_every,
        };
        axum::serve(crate::net::no_delay(listener), app(config, Arc::default()))
            .with_graceful_shutdown(crate::worker::shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}
