//! Black-box tests of `migserve worker`: the real binary, the real model, real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{metric_value, Worker};
use futures_util::StreamExt;
use serde_json::{json, Value};

use common::FRANCE;
use migserve::api::worker_report::WorkerReport;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Greedy token ids of one `/generate` call.
async fn generate_ids(
    c: &reqwest::Client,
    w: &Worker,
    inputs: &str,
    max_new_tokens: u32,
) -> (Vec<u64>, String) {
    let body = json!({"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens, "details": true, "ignore_eos": true}});
    let r = c.post(w.at("/generate")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    let ids = v["details"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    (ids, v["generated_text"].as_str().unwrap().to_string())
}

async fn metrics(c: &reqwest::Client, w: &Worker) -> String {
    common::metrics_text(c, &w.url).await
}

const PROMPTS: [&str; 8] = [
    "The quick brown fox",
    "In 1969, the first humans walked on the Moon. The mission was called",
    "def fibonacci(n):",
    "List three colors:",
    "Water boils at",
    "The best way to learn a language is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 4,",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_greedy_requests_equal_the_same_requests_one_at_a_time() {
    let w = Worker::start(&["--max-batch-size", "16"]);
    let c = client();
    let requests: Vec<(String, u32)> = (0..16)
        .map(|i| {
            (
                format!("{} {}", PROMPTS[i % 8], if i >= 8 { "and" } else { "" }),
                6 + (i as u32 * 5) % 23,
            )
        })
        .collect();
    let mut alone = Vec::new();
    for (p, n) in &requests {
        alone.push(generate_ids(&c, &w, p, *n).await);
    }
    let concurrent =
        futures_util::future::join_all(requests.iter().map(|(p, n)| generate_ids(&c, &w, p, *n)))
            .await;
    for (i, (a, b)) in alone.iter().zip(&concurrent).enumerate() {
        assert_eq!(a.0.len(), requests[i].1 as usize);
        assert_eq!(
            a, b,
            "request {i} ({:?}) differs when batched",
            requests[i].0
        );
    }
    let m = metrics(&c, &w).await;
    assert!(metric_value(&m, "migserve_batch_size").is_some(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_stream_frees_its_blocks() {
    let w = Worker::start(&[]);
    let c = client();
    let body = json!({"inputs": "Tell me a long story about dragons.", "parameters": {"max_new_tokens": 1000, "ignore_eos": true}});
    let r = c
        .post(w.at("/generate_stream"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut seen = 0;
    while seen < 5 {
        let chunk = stream.next().await.expect("stream ended early").unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("data:").count();
    }
    let used = metric_value(&metrics(&c, &w).await, "migserve_kv_blocks_used").unwrap();
    assert!(used > 0.0, "the running sequence holds blocks");
    drop(stream);
    let dropped_at = Instant::now();
    loop {
        let m = metrics(&c, &w).await;
        if metric_value(&m, "migserve_kv_blocks_used") == Some(0.0) {
            assert!(
                metric_value(&m, "migserve_cancelled_total").unwrap_or(0.0) >= 1.0,
                "{m}"
            );
            break;
        }
        assert!(
            dropped_at.elapsed() < Duration::from_secs(5),
            "blocks not freed after disconnect:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Freed within a step or two: a decode step here takes tens of milliseconds.
    assert!(dropped_at.elapsed() < Duration::from_secs(2));
    // And the worker still serves.
    let (ids, _) = generate_ids(&c, &w, "Hello", 3).await;
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_small_kv_cache_thirty_two_concurrent_requests_all_complete_correctly() {
    // 96 blocks of 4 = 384 positions; each request needs up to ~45 (12 blocks), so 32 at once
    // do not fit. Small blocks make preemption certain rather than a matter of timing: the
    // ~19 sequences admitted together (prompt blocks plus one spare each) keep growing during
    // decode to about twice the cache.
    let w = Worker::start(&[
        "--kv-cache-tokens",
        "384",
        "--block-size",
        "4",
        "--max-batch-size",
        "32",
    ]);
    let c = client();
    let mut reference = Vec::new();
    for p in PROMPTS {
        reference.push(generate_ids(&c, &w, p, 24).await);
    }
    let results =
        futures_util::future::join_all((0..32).map(|i| generate_ids(&c, &w, PROMPTS[i % 8], 24)))
            .await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r,
            &reference[i % 8],
            "request {i} differs from its output run alone"
        );
    }
    let m = metrics(&c, &w).await;
    let preemptions = metric_value(&m, "migserve_preemptions_total").unwrap_or(0.0);
    eprintln!("preemptions: {preemptions}");
    assert!(
        preemptions > 0.0,
        "the cache was meant to be too small:\n{m}"
    );
    // Every block is back once the engine has published the step that finished the last
    // requests (the gauges follow a step; the last tokens can reach clients just before).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = metric_value(&metrics(&c, &w).await, "migserve_kv_blocks_used");
        if used == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "KV blocks still used: {used:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_tgi_errors_and_the_worker_keeps_serving() {
    let w = Worker::start(&["--max-input-tokens", "64", "--max-total-tokens", "128"]);
    let c = client();
    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed JSON", "{\"inputs\": ".into(), 422),
        ("missing inputs", json!({"parameters": {}}).to_string(), 422),
        ("empty inputs", json!({"inputs": ""}).to_string(), 422),
        (
            "max_new_tokens 0",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 0}}).to_string(),
            422,
        ),
        (
            "max_new_tokens over the limit",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 500}}).to_string(),
            422,
        ),
        (
            "negative temperature",
            json!({"inputs": "hi", "parameters": {"temperature": -1.0}}).to_string(),
            422,
        ),
        (
            "top_p 0",
            json!({"inputs": "hi", "parameters": {"top_p": 0.0}}).to_string(),
            422,
        ),
        (
            "top_p over 1",
            json!({"inputs": "hi", "parameters": {"top_p": 1.5}}).to_string(),
            422,
        ),
        (
            "too many stops",
            json!({"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}).to_string(),
            422,
        ),
        (
            "prompt too long",
            json!({"inputs": "word ".repeat(200)}).to_string(),
            422,
        ),
        (
            "body too large",
            json!({"inputs": "x".repeat(3 * 1024 * 1024)}).to_string(),
            413,
        ),
    ];
    for (name, body, status) in cases {
        for path in ["/generate", "/generate_stream"] {
            // The server answers 413 without reading the whole body and then closes the
            // connection: do not let the client pool it.
            let r = c
                .post(w.at(path))
                .header("connection", "close")
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{name} on {path}");
            let v: Value = r
                .json()
                .await
                .unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{name}: {v}"
            );
            let expected_type = if status == 413 {
                "payload_too_large"
            } else {
                "validation"
            };
            assert_eq!(v["error_type"], expected_type, "{name}: {v}");
        }
    }
    // OpenAI routes answer in OpenAI's error shape.
    let r = c
        .post(w.at("/v1/chat/completions"))
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "OpenAI's status for a bad request");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let r = c
        .post(w.at("/v1/completions"))
        .json(&json!({"model": "no-such-model", "prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let m = metrics(&c, &w).await;
    assert!(
        m.contains("migserve_errors_total{") && m.contains("error_type=\"validation\""),
        "{m}"
    );
    let (ids, _) = generate_ids(&c, &w, "Still there?", 4).await;
    assert_eq!(ids.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tgi_and_openai_endpoints_answer_the_france_prompt() {
    let w = Worker::start(&["--slice", "test-slice-0"]);
    let c = client();
    assert_eq!(c.get(w.at("/health")).send().await.unwrap().status(), 200);
    let info: Value = common::get_json(&c, w.at("/info")).await;
    assert_eq!(info["model_id"], "SmolLM2-135M-Instruct.Q4_1");
    assert!(info["max_total_tokens"].as_u64().unwrap() > 0);

    // Chat, not streamed.
    let body = json!({"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": FRANCE}], "temperature": 0});
    let r = c
        .post(w.at("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-slice"], "test-slice-0");
    for h in [
        "x-compute-time",
        "x-queue-time",
        "x-inference-time",
        "x-time-per-token",
        "x-prompt-tokens",
        "x-generated-tokens",
    ] {
        assert!(r.headers().contains_key(h), "missing {h}");
    }
    // The report the router's cost model reads, through the type both sides share.
    let report = WorkerReport::from_headers(r.headers());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let usage = &v["usage"];
    assert_eq!(report.prompt_tokens, usage["prompt_tokens"].as_u64());
    assert_eq!(report.generated_tokens, usage["completion_tokens"].as_u64());
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert_eq!(report.cached_tokens, Some(cached.unwrap_or(0)));
    assert!(report.kv_cache_tokens.is_some_and(|t| t > 0), "{report:?}");
    let (queue, ttft, inference) = (
        report.queue.unwrap(),
        report.time_to_first_token.unwrap(),
        report.inference.unwrap(),
    );
    // Whole milliseconds: the sum of two truncated times may lose one.
    let ms = Duration::from_millis(1);
    assert!(
        ttft >= queue && queue + inference + ms >= ttft,
        "{report:?}"
    );
    assert!(report.per_token.is_some(), "{report:?}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    // Chat, streamed: chunks, then usage, then [DONE].
    let body = json!({"messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let text = c
        .post(w.at("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .collect();
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "The capital of France is Paris.");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // TGI stream: the last event carries generated_text and details.
    let prompt = "<|im_start|>user\nWhat is the capital of France? Answer in two sentences.<|im_end|>\n<|im_start|>assistant\n";
    let body = json!({"inputs": prompt, "parameters": {"max_new_tokens": 40}});
    let text = c
        .post(w.at("/generate_stream"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["details"]["finish_reason"], "eos_token");
    assert_eq!(last["generated_text"], "The capital of France is Paris.");
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e["generated_text"].is_null()));

    // POST / without stream returns a list; stop sequences end generation.
    let body = json!({"inputs": prompt, "parameters": {"max_new_tokens": 40, "stop": ["France"], "details": true}});
    let v: Value = c
        .post(w.at("/"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["generated_text"], "The capital of France");
    assert_eq!(v[0]["details"]["finish_reason"], "stop_sequence");

    // Completions: text and length finish.
    let body = json!({"prompt": "1, 2, 3, 4,", "max_tokens": 5, "temperature": 0});
    let v: Value = c
        .post(w.at("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let models: Value = common::get_json(&c, w.at("/v1/models")).await;
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_concurrency_limit_is_429_at_once() {
    let w = Worker::start(&["--max-concurrent-requests", "1"]);
    let c = client();
    let body = json!({"inputs": "Count to one hundred:", "parameters": {"max_new_tokens": 500, "ignore_eos": true}});
    let r = c
        .post(w.at("/generate_stream"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let started = Instant::now();
    let r = c
        .post(w.at("/generate"))
        .json(&json!({"inputs": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(started.elapsed() < Duration::from_secs(2));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error_type"], "overloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let mut w = Worker::start(&[]);
    let c = client();
    let url = w.at("/generate");
    let pending = tokio::spawn(async move {
        let body = json!({"inputs": "Write a poem:", "parameters": {"max_new_tokens": 30, "ignore_eos": true, "details": true}});
        let r = client().post(url).json(&body).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        v["details"]["generated_tokens"].as_u64().unwrap()
    });
    // Let the request reach the engine.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.terminate();
    assert_eq!(pending.await.unwrap(), 30, "the in-flight request finished");
    let status = w
        .wait_exit(Duration::from_secs(20))
        .expect("worker exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        c.get(w.at("/health")).send().await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streams_never_show_a_stop_sequence() {
    let w = Worker::start(&[]);
    let c = client();
    // Greedy answer: "The capital of France is Paris." Stop at " Paris", which spans tokens'
    // boundaries differently from the text around it.
    let body = json!({
        "messages": [{"role": "user", "content": FRANCE}],
        "temperature": 0, "stream": true, "stop": [" Paris"], "max_tokens": 32
    });
    let r = c
        .post(w.at("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = r.text().await.unwrap();
    let mut streamed = String::new();
    let mut finish = None;
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(text) = v["choices"][0]["delta"]["content"].as_str() {
            assert!(
                !text.contains('P'),
                "a piece of the stop sequence was streamed: {text:?}"
            );
            streamed.push_str(text);
        }
        if let Some(reason) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
    }
    assert_eq!(streamed, "The capital of France is");
    assert_eq!(finish.as_deref(), Some("stop"));
}
