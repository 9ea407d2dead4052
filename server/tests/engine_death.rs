//! A worker whose engine thread panics never keeps answering `/health` with 200: its clients
//! get an error event, it exits with its own status, and under `serve` the supervisor
//! restarts it. The panic is the real one, armed with `MIGSERVE_FAULT_PANIC_AT_STEP`.

mod common;

use std::time::{Duration, Instant};

use common::{Serve, Worker};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The engine's forward pass panics at its 5th step: after the prompt and three decode steps.
const PANIC_AT_STEP: (&str, &str) = ("MIGSERVE_FAULT_PANIC_AT_STEP", "5");

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Streams `/generate_stream` at `url` and returns every event's JSON.
async fn stream_events(c: &reqwest::Client, url: &str, max_new_tokens: u32) -> Vec<Value> {
    let r = c
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "Tell me a long story", "parameters": {"max_new_tokens": max_new_tokens, "ignore_eos": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut raw = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => raw.extend_from_slice(&bytes),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

/// Tokens first, then one error event that says the engine crashed.
fn assert_tokens_then_crash(events: &[Value]) {
    let (last, tokens) = events.split_last().expect("events");
    assert!(
        !tokens.is_empty() && tokens.iter().all(|e| e.get("token").is_some()),
        "{events:?}"
    );
    assert_eq!(last["error_type"], "engine_crashed", "{events:?}");
    assert!(
        last["error"].as_str().unwrap().contains("injected fault"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_engine_fails_its_stream_turns_unhealthy_and_exits_with_status_4() {
    let c = client();
    let mut w = Worker::start_with_env(&[], &[PANIC_AT_STEP]);
    let health = c.get(w.at("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let events = stream_events(&c, &w.url, 20).await;
    assert_tokens_then_crash(&events);
    // Right after: /health is 503, or the worker no longer listens.
    if let Ok(r) = c.get(w.at("/health")).send().await {
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error_type"], "unhealthy", "{v}");
    }
    let status = w
        .wait_exit(Duration::from_secs(10))
        .expect("the worker exits after its engine died");
    assert_eq!(status.code(), Some(4), "{status:?}");
}

const ONE_SLICE: &str = r#"
[slices]
source = "emulate"
emulate = "1x1g.10gb"

[supervisor]
health_interval_secs = 0.5
restart_backoff_secs = 0.2

[[models]]
name = "smol"
path = "{model}"
replicas = 1

[models.engine]
kv_cache_tokens = 4096
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_serve_the_supervisor_restarts_a_worker_whose_engine_died() {
    let c = client();
    let serve = Serve::start_with_env("engine-death", ONE_SLICE, &[PANIC_AT_STEP]);
    let ready = |s: &[Value]| s.len() == 1 && s[0]["state"] == "ready";
    let before = serve
        .wait_slices(&c, Duration::from_secs(120), "the worker ready", ready)
        .await;
    let first_pid = before[0]["pid"].as_u64().unwrap();
    let events = stream_events(&c, &serve.url, 20).await;
    assert_tokens_then_crash(&events);
    let started = Instant::now();
    let after = serve
        .wait_slices(&c, Duration::from_secs(60), "a restarted worker", |s| {
            ready(s) && s[0]["pid"].as_u64() != Some(first_pid)
        })
        .await;
    assert!(after[0]["restarts"].as_u64().unwrap() >= 1, "{after:?}");
    let error = after[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("exit status: 4"), "{error}");
    eprintln!("restarted in {:?}", started.elapsed());
    // Two steps (prompt, one decode) stay below the armed step: the slice answers again.
    let r = c
        .post(serve.at("/generate"))
        .json(&json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(!v["generated_text"].as_str().unwrap().is_empty(), "{v}");
}
