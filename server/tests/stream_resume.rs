//! Streams that continue on another slice when their worker dies: `migserve serve` on three
//! emulated CPU slices with the real model. The client reads k tokens of a stream, then the
//! worker serving it is killed (SIGKILL); for k at the first token, the middle and near the
//! end, over TGI, OpenAI chat (greedy, and with a JSON schema) and OpenAI completions
//! (sampled with a seed), the client's answer equals an undisturbed run of the same request:
//! the same text, tokens and counts, no gap, nothing twice, and no trace of the router's
//! marks.

mod common;

use std::time::{Duration, Instant};

use common::Serve;
use futures_util::StreamExt;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[slices]
source = "emulate"
emulate = "3x1g.10gb"

[supervisor]
health_interval_secs = 0.2
restart_backoff_secs = 0.2
max_crashes = 100

[[models]]
name = "smol"
path = "{model}"
replicas = 3

[models.engine]
kv_cache_tokens = 4096
"#;

/// New tokens per request.
const N: usize = 24;

/// A stream as the client saw it.
#[derive(Debug)]
struct Seen {
    events: Vec<Value>,
    raw: String,
    slice: String,
    /// Whether the test killed the worker serving it.
    killed: bool,
}

/// The data events of whole SSE events in `raw` (up to `[DONE]`).
fn data_events(raw: &str) -> Vec<Value> {
    raw.split("\n\n")
        .flat_map(|event| event.lines())
        .filter_map(|l| l.strip_prefix("data:").map(str::trim))
        .take_while(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d:?}: {e}")))
        .collect()
}

/// Whether a data event carries a generated token (TGI: every event; OpenAI: text).
fn is_token(event: &Value) -> bool {
    event.get("token").is_some()
        || event["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        || event["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
}

/// Streams `body` from `path`; with `kill_after = Some(k)`, SIGKILLs the serving worker once k
/// token events have arrived.
async fn stream(
    serve: &Serve,
    c: &reqwest::Client,
    path: &str,
    body: &Value,
    kill_after: Option<usize>,
) -> Seen {
    let r = c
        .post(serve.at(path))
        .json(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200, "{path}");
    let slice = r.headers()["x-slice"].to_str().unwrap().to_string();
    let pid = match kill_after {
        Some(_) => {
            let slices = serve.slices(c).await;
            let s = slices.iter().find(|s| s["id"] == slice.as_str()).unwrap();
            s["pid"].as_i64().expect("worker pid") as i32
        }
        None => 0,
    };
    let mut raw = String::new();
    let mut killed = false;
    let mut body = r.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(chunk) = body.next().await {
        assert!(Instant::now() < deadline, "stream hangs: {raw}");
        raw.push_str(&String::from_utf8_lossy(&chunk.expect("the stream broke")));
        if let (Some(k), false) = (kill_after, killed) {
            let complete = &raw[..raw.rfind("\n\n").map_or(0, |i| i + 2)];
            if data_events(complete).iter().filter(|e| is_token(e)).count() >= k {
                // SAFETY: kill(2) on a pid of our own worker.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
                killed = true;
            }
        }
    }
    Seen {
        events: data_events(&raw),
        raw,
        slice,
        killed,
    }
}

/// What must be equal between an undisturbed and a disturbed run.
fn answer(path: &str, seen: &Seen) -> Value {
    assert!(
        !seen.raw.contains("migserve {"),
        "a router mark reached the client: {}",
        seen.raw
    );
    for e in &seen.events {
        assert!(e.get("error").is_none(), "error event: {e}");
    }
    let last = seen.events.last().expect("events");
    match path {
        "/generate_stream" => {
            let indexes: Vec<u64> = seen
                .events
                .iter()
                .map(|e| e["index"].as_u64().unwrap())
                .collect();
            assert_eq!(indexes, (1..=N as u64).collect::<Vec<_>>(), "{}", seen.raw);
            let text: String = seen
                .events
                .iter()
                .map(|e| e["token"]["text"].as_str().unwrap())
                .collect();
            assert_eq!(last["generated_text"], text.as_str());
            let ids: Vec<&Value> = seen.events.iter().map(|e| &e["token"]["id"]).collect();
            json!({"text": text, "ids": ids, "details": last["details"]})
        }
        _ => {
            let id = &seen.events[0]["id"];
            assert!(seen.events.iter().all(|e| &e["id"] == id), "one answer id");
            let created = &seen.events[0]["created"];
            assert!(seen.events.iter().all(|e| &e["created"] == created));
            let roles = seen
                .events
                .iter()
                .filter(|e| e["choices"][0]["delta"].get("role").is_some())
                .count();
            let text: String = seen
                .events
                .iter()
                .filter_map(|e| {
                    let choice = &e["choices"][0];
                    choice["delta"]["content"]
                        .as_str()
                        .or(choice["text"].as_str())
                })
                .collect();
            let finish: Vec<&Value> = seen
                .events
                .iter()
                .map(|e| &e["choices"][0]["finish_reason"])
                .filter(|f| !f.is_null())
                .collect();
            // Cached prompt tokens are the serving slice's own (a continuation may find more).
            let usage = &last["usage"];
            let counts = [
                &usage["prompt_tokens"],
                &usage["completion_tokens"],
                &usage["total_tokens"],
            ];
            json!({"text": text, "roles": roles, "finish": finish, "usage": counts})
        }
    }
}

fn resumes(slices: &[Value]) -> u64 {
    slices.iter().map(|s| s["resumes"].as_u64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_worker_dies_goes_on_elsewhere_as_if_nothing_happened() {
    let serve = Serve::start("resume", CONFIG);
    let c = common::client();
    let all_ready = |s: &[Value]| s.len() == 3 && s.iter().all(|s| s["state"] == "ready");
    serve
        .wait_slices(&c, Duration::from_secs(120), "three workers", all_ready)
        .await;
    let prompt = "Write a short story about a lighthouse keeper.";
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
    // (route, body, after how many tokens to kill)
    let requests = [
        (
            "/generate_stream",
            json!({"inputs": prompt, "parameters": {"max_new_tokens": N, "ignore_eos": true}}),
            vec![1, N / 2, N - 2],
        ),
        (
            "/v1/chat/completions",
            json!({"model": "smol", "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": N, "ignore_eos": true, "temperature": 0, "stream": true,
                   "stream_options": {"include_usage": true}}),
            vec![1, N / 2, N - 2],
        ),
        (
            "/v1/completions",
            json!({"model": "smol", "prompt": prompt, "max_tokens": N, "ignore_eos": true,
                   "temperature": 0.9, "seed": 42, "stream": true,
                   "stream_options": {"include_usage": true}}),
            vec![1, N / 2, N - 2],
        ),
        // A grammar: the continuation's matcher starts where the dead worker's was.
        (
            "/v1/chat/completions",
            json!({"model": "smol", "temperature": 0, "stream": true, "max_tokens": 40,
                   "messages": [{"role": "user", "content": "Describe a lighthouse keeper as JSON."}],
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "keeper", "schema": schema}}}),
            vec![4],
        ),
    ];
    for (path, body, kills) in &requests {
        let want = answer(path, &stream(&serve, &c, path, body, None).await);
        for &k in kills {
            let before = resumes(&serve.slices(&c).await);
            let seen = stream(&serve, &c, path, body, Some(k)).await;
            assert!(seen.killed, "{path}: fewer than {k} tokens");
            let got = answer(path, &seen);
            let after = serve
                .wait_slices(
                    &c,
                    Duration::from_secs(120),
                    "the killed worker back",
                    all_ready,
                )
                .await;
            let resumed = resumes(&after) - before;
            println!(
                "{path}: killed {} after {k} tokens, continued {resumed}x",
                seen.slice
            );
            assert_eq!(got, want, "{path}, killed after {k} tokens: {}", seen.raw);
            if k < N / 2 + 1 {
                assert_eq!(resumed, 1, "{path}: the stream was not continued elsewhere");
            }
        }
    }
}
