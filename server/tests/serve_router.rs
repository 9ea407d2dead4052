//! End to end: `migserve serve` on three emulated CPU slices with the real model, mixed
//! TGI and OpenAI traffic through the one front endpoint.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::Serve;
use futures_util::StreamExt;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[slices]
source = "emulate"
emulate = "3x1g.10gb"

[[models]]
name = "smol"
path = "{model}"
replicas = 3

[models.engine]
kv_cache_tokens = 4096
"#;

async fn one(c: reqwest::Client, base: String, i: usize) -> (String, String) {
    let prompt = format!("Write one short sentence about the number {i}.");
    let (path, body) = match i % 3 {
        0 => (
            "/generate",
            json!({"inputs": prompt, "parameters": {"max_new_tokens": 8, "details": true}}),
        ),
        1 => (
            "/generate_stream",
            json!({"inputs": prompt, "parameters": {"max_new_tokens": 8}}),
        ),
        _ => (
            "/v1/chat/completions",
            json!({"model": "smol", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}),
        ),
    };
    let r = c
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "request {i} on {path}");
    let slice = r.headers()["x-slice"].to_str().unwrap().to_string();
    let text = match i % 3 {
        0 => {
            let v: Value = r.json().await.unwrap();
            assert!(v["details"]["generated_tokens"].as_u64().unwrap() >= 1);
            v["generated_text"].as_str().unwrap().to_string()
        }
        1 => {
            let mut raw = String::new();
            let mut s = r.bytes_stream();
            while let Some(chunk) = s.next().await {
                raw.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            let last: Value = raw
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .next_back()
                .map(|d| serde_json::from_str(d.trim()).unwrap())
                .unwrap();
            assert!(last["details"]["generated_tokens"].as_u64().unwrap() >= 1);
            last["generated_text"].as_str().unwrap().to_string()
        }
        _ => {
            let v: Value = r.json().await.unwrap();
            assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 8);
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    (slice, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_mixed_requests_through_the_front_all_succeed_on_all_three_slices() {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let serve = Serve::start("router-e2e", CONFIG);
    serve
        .wait_slices(&c, Duration::from_secs(180), "3 ready workers", |s| {
            s.len() == 3 && s.iter().all(|s| s["state"] == "ready")
        })
        .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        tasks.spawn(one(c.clone(), serve.url.clone(), i));
    }
    let mut slices = HashSet::new();
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        let (slice, _text) = r.unwrap();
        slices.insert(slice);
        done += 1;
    }
    assert_eq!(done, 30);
    assert_eq!(
        slices,
        ["cpu0", "cpu1", "cpu2"]
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>(),
        "x-slice shows all three slices"
    );

    // The router's view: every request counted, tokens relayed, nothing in flight.
    let report = serve.slices(&c).await;
    let requests: u64 = report.iter().map(|s| s["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 30);
    assert!(report
        .iter()
        .all(|s| s["in_flight"] == 0 && s["errors"] == 0));
    assert!(report
        .iter()
        .all(|s| s["generated_tokens"].as_u64().unwrap() > 0));
    let metrics = common::metrics_text(&c, &serve.url).await;
    assert!(metrics.contains(
        "migserve_router_requests_total{slice=\"cpu1\",profile=\"1g.10gb\",model=\"smol\"}"
    ));

    // Structured output and tool calls pass through the front unchanged.
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}},
                        "required": ["n"], "additionalProperties": false});
    let (status, v) = common::post_json(
        &c,
        serve.at("/v1/chat/completions"),
        &json!({"model": "smol", "messages": [{"role": "user", "content": "A number, as JSON."}],
                "max_tokens": 30, "temperature": 0, "response_format": {"type": "json_schema",
                "json_schema": {"name": "n", "schema": schema}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let answer: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(answer["n"].is_i64(), "{v}");
    let (status, v) = common::post_json(
        &c,
        serve.at("/v1/chat/completions"),
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Time in Oslo?"}],
                "max_tokens": 100, "temperature": 0, "tool_choice": "required",
                "parallel_tool_calls": false,
                "tools": [{"type": "function", "function": {"name": "get_time", "parameters":
                    {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}},
                     "required": ["tz"], "additionalProperties": false}}}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );

    // Unknown models: 404 in each API's error shape; /v1/models and /info answer.
    let r = c
        .post(serve.at("/v1/chat/completions"))
        .json(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
    let r = c
        .post(serve.at("/generate"))
        .header("x-model", "gpt-9")
        .json(&json!({"inputs": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error_type"], "not_found");
    let models: Value = common::get_json(&c, serve.at("/v1/models")).await;
    assert_eq!(models["data"][0]["id"], "smol");
    let info: Value = common::get_json(&c, serve.at("/info")).await;
    assert_eq!(info["model_id"], "smol");
    // Bad input is the worker's 422, relayed with the slice that judged it.
    let r = c
        .post(serve.at("/generate"))
        .json(&json!({"inputs": "hi", "parameters": {"max_new_tokens": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.headers().contains_key("x-slice"));
    let r = c
        .post(serve.at("/generate"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}
