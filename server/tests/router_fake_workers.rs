//! The router of `migserve serve` against fake workers (real `migserve-fake-worker`
//! processes: the worker's HTTP layer over a fake engine with set speeds, added as remote
//! workers): balancing by speed, 429 when full, retries and stream continuations when a
//! worker is killed under load.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{spawn_until_line, Serve};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A `migserve-fake-worker` process, killed when dropped.
struct FakeWorker {
    child: Child,
    url: String,
}

impl FakeWorker {
    fn start(first_token_ms: u64, token_ms: u64) -> Self {
        Self::start_with(&[
            "--first-token-delay-ms",
            &first_token_ms.to_string(),
            "--token-delay-ms",
            &token_ms.to_string(),
        ])
    }

    fn start_with(args: &[&str]) -> Self {
        let mut command = Command::new(common::fake_worker_binary());
        command.args(args);
        let (child, url) = spawn_until_line(command, migserve::contract::WORKER_READY_PREFIX, 30);
        Self { child, url }
    }

    /// A worker that batches like a CPU slice: each token `token_ms` times the requests in
    /// flight, 1 ms of prefill per prompt word.
    fn batching(token_ms: u64) -> Self {
        Self::start_with(&[
            "--first-token-delay-ms",
            "5",
            "--token-delay-ms",
            &token_ms.to_string(),
            "--prefill-ms-per-token",
            "1",
            "--batch-slowdown",
            "1",
        ])
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A serve config with the workers as remotes `w0`, `w1`, … of model `fake`.
fn config(workers: &[FakeWorker], router: &str) -> String {
    let mut text = format!("[supervisor]\nhealth_interval_secs = 0.2\n[router]\n{router}\n");
    for (i, w) in workers.iter().enumerate() {
        text.push_str(&format!(
            "[[remote]]\nname = \"w{i}\"\nurl = \"{}\"\nmodel = \"fake\"\n",
            w.url
        ));
    }
    text
}

async fn start(name: &str, workers: &[FakeWorker], router: &str) -> (Serve, reqwest::Client) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let serve = Serve::start(name, &config(workers, router));
    let n = workers.len();
    serve
        .wait_slices(&c, Duration::from_secs(20), "remote workers healthy", |s| {
            s.len() == n && s.iter().all(|s| s["state"] == "ready")
        })
        .await;
    (serve, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_three_times_slower_receives_clearly_fewer_requests() {
    let workers = [
        FakeWorker::start(10, 10),
        FakeWorker::start(10, 10),
        FakeWorker::start(30, 30),
    ];
    let (serve, c) = start("speed", &workers, "").await;
    let url = serve.at("/generate");
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut tasks = futures_util::stream::iter(0..90)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            async move {
                let r = c
                    .post(url)
                    .json(&json!({"inputs": "hello", "parameters": {"max_new_tokens": 10}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.headers()["x-slice"].to_str().unwrap().to_string()
            }
        })
        .buffer_unordered(12);
    while let Some(slice) = tasks.next().await {
        *counts.entry(slice).or_default() += 1;
    }
    let count = |s: &str| counts.get(s).copied().unwrap_or(0);
    println!("requests per slice (w2 three times slower): {counts:?}");
    assert_eq!(count("w0") + count("w1") + count("w2"), 90);
    let slowest_fast = count("w0").min(count("w1"));
    assert!(
        (count("w2") as f64) < 0.6 * slowest_fast as f64,
        "the slow slice got {} vs {slowest_fast}",
        count("w2")
    );
    let slices = serve.slices(&c).await;
    let tpot = |id: &str| {
        slices.iter().find(|s| s["id"] == id).unwrap()["tpot_secs"]
            .as_f64()
            .unwrap()
    };
    assert!(
        tpot("w2") > 2.0 * tpot("w0"),
        "measured speeds: {slices:#?}"
    );
}

/// `n` requests of `max_new_tokens` at once with `inputs`; the slice of each.
async fn burst(c: &reqwest::Client, url: &str, n: usize, inputs: &str, new: u32) -> Vec<String> {
    let requests = (0..n).map(|_| {
        let c = c.clone();
        let body = json!({"inputs": inputs, "parameters": {"max_new_tokens": new}});
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-slice"].to_str().unwrap().to_string()
        }
    });
    futures_util::future::join_all(requests).await
}

/// The router's split of 24 concurrent short requests after long prompts landed on two of
/// three slices (one of them twice as fast as the others), under `policy`.
async fn split_after_long_prompts(policy: &str) -> HashMap<String, usize> {
    let workers = [
        FakeWorker::batching(10),
        FakeWorker::batching(20),
        FakeWorker::batching(20),
    ];
    let (serve, c) = start(policy, &workers, &format!("policy = \"{policy}\"")).await;
    let url = serve.at("/generate");
    for _ in 0..4 {
        burst(&c, &url, 3, "hello there", 16).await;
    }
    let long = "word ".repeat(3000);
    let landed = burst(&c, &url, 2, &long, 8).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for slice in burst(&c, &url, 24, "a short question", 32).await {
        *counts.entry(slice).or_default() += 1;
    }
    println!("{policy}: long prompts on {landed:?}, then 24 short ones: {counts:?}");
    counts
}

/// The new user's case: after a few 3,000-token prompts on two slices, 24 concurrent short
/// requests are split by the slices' measured decode speed (about 12/6/6), never all on one.
/// The previous policy (`queued-tokens`) is run too, for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_long_prompts_short_requests_split_by_measured_speed() {
    let before = split_after_long_prompts("queued-tokens").await;
    let counts = split_after_long_prompts("prefix-aware").await;
    let count = |counts: &HashMap<String, usize>, s: &str| counts.get(s).copied().unwrap_or(0);
    let (fast, slow) = (
        count(&counts, "w0"),
        [count(&counts, "w1"), count(&counts, "w2")],
    );
    assert_eq!(fast + slow[0] + slow[1], 24);
    assert!(
        slow.iter().all(|&s| (3..=9).contains(&s)) && (9..=17).contains(&fast),
        "split {counts:?} (queued-tokens gave {before:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_queue_full_the_router_answers_429_at_once() {
    let workers = [FakeWorker::start(200, 200), FakeWorker::start(200, 200)];
    let (serve, c) = start("full", &workers, "max_queue_per_slice = 2").await;
    // Four long requests fill both queues (about 4 s each).
    let mut held = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = serve.at("/generate");
        held.push(tokio::spawn(async move {
            c.post(url)
                .json(&json!({"inputs": "x", "parameters": {"max_new_tokens": 20}}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    serve
        .wait_slices(&c, Duration::from_secs(5), "both queues full", |s| {
            s.iter().all(|s| s["in_flight"] == 2)
        })
        .await;
    let started = Instant::now();
    let r = c
        .post(serve.at("/generate"))
        .json(&json!({"inputs": "x", "parameters": {"max_new_tokens": 20}}))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "overloaded", "{body}");
    assert!(waited < Duration::from_millis(500), "429 took {waited:?}");
    let r = c
        .post(serve.at("/v1/chat/completions"))
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue limit"),
        "{body}"
    );
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
}

/// One request's outcome: (slice, complete, ended with an error event, `x-router-retries`).
async fn one_request(c: reqwest::Client, base: String, i: usize) -> (String, bool, bool, u64) {
    let stream = i.is_multiple_of(2);
    let path = if stream {
        "/generate_stream"
    } else {
        "/generate"
    };
    let r = c
        .post(format!("{base}{path}"))
        .json(&json!({"inputs": format!("request {i}"), "parameters": {"max_new_tokens": 10}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {i}: connection error {e}"));
    assert_eq!(r.status(), 200, "request {i}");
    let slice = r.headers()["x-slice"].to_str().unwrap().to_string();
    let retries: u64 = r.headers()["x-router-retries"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    if !stream {
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("request {i}: body {e}"));
        return (
            slice,
            v["generated_text"] == " t0 t1 t2 t3 t4 t5 t6 t7 t8 t9",
            false,
            retries,
        );
    }
    let mut text = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("request {i}: stream reset: {e}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    let error = events.last().is_some_and(|e| e.get("error_type").is_some());
    // Each token once, in order, whichever workers sent them.
    let indexes: Vec<u64> = events.iter().filter_map(|e| e["index"].as_u64()).collect();
    let tokens: String = events
        .iter()
        .filter_map(|e| e["token"]["text"].as_str())
        .collect();
    let complete = events.len() == 10
        && indexes == (1..=10).collect::<Vec<u64>>()
        && tokens == " t0 t1 t2 t3 t4 t5 t6 t7 t8 t9"
        && events[9]["generated_text"] == tokens
        && events[9]["details"]["generated_tokens"] == 10;
    (slice, complete, error, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_load_loses_no_request() {
    let mut workers = vec![
        FakeWorker::start(20, 20),
        FakeWorker::start(20, 20),
        FakeWorker::start(20, 20),
    ];
    let (serve, c) = start("kill", &workers, "").await;
    let base = serve.url.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120 {
        tasks.spawn(one_request(c.clone(), base.clone(), i));
        if i == 40 {
            // Under load: kill w1 with SIGKILL; requests keep arriving.
            tokio::time::sleep(Duration::from_millis(100)).await;
            workers[1].kill();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut complete, mut broken_on_w1, mut other, mut retried) = (0, 0, 0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (slice, true, false, retries) => {
                complete += 1;
                if retries > 0 {
                    // Sent again after w1 failed it: answered by a live slice.
                    assert_ne!(slice, "w1");
                    retried += 1;
                }
            }
            (slice, false, true, _) if slice == "w1" => broken_on_w1 += 1,
            outcome => {
                other += 1;
                eprintln!("unexpected outcome {outcome:?}");
            }
        }
    }
    let slices = serve.slices(&c).await;
    let w1 = slices.iter().find(|s| s["id"] == "w1").unwrap();
    let resumed = w1["resumes"].as_u64().unwrap();
    println!(
        "complete {complete}, streams cut {broken_on_w1}, continued elsewhere {resumed}, \
         retried before the first byte {retried}"
    );
    assert_eq!(other, 0);
    // Streams running on w1 went on elsewhere, with no gap and nothing twice.
    assert_eq!((complete, broken_on_w1), (120, 0));
    // About seven requests are in flight on each slice at any time: w1 died with some.
    assert!(
        resumed + retried >= 1,
        "nothing was running on w1 when it died: {w1:#}"
    );
    assert_eq!(w1["state"], "unhealthy", "{w1:#}");
    // Requests after the kill all went elsewhere.
    for i in 0..6 {
        let (slice, ok, _, _) = one_request(c.clone(), base.clone(), i).await;
        assert!(ok && slice != "w1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_found_through_dns_are_balanced_like_local_ones() {
    let worker = FakeWorker::start(5, 5);
    let port = worker.url.rsplit(':').next().unwrap().to_string();
    // `localhost` resolves through the system resolver like a headless Service's name would.
    let config = format!(
        "[supervisor]\nhealth_interval_secs = 0.2\n[[discover]]\nname = \"pods\"\ndns = \"localhost:{port}\"\nmodel = \"fake\"\ninterval_secs = 0.5\n"
    );
    let c = reqwest::Client::new();
    let serve = Serve::start("discover", &config);
    let slices = serve
        .wait_slices(
            &c,
            Duration::from_secs(20),
            "the discovered worker ready",
            |s| {
                s.iter().any(|s| {
                    s["id"] == "pods/127.0.0.1:".to_string() + &port && s["state"] == "ready"
                })
            },
        )
        .await;
    assert!(slices.iter().all(|s| s["location"] == "remote"));
    let r = c
        .post(serve.at("/generate"))
        .json(&json!({"inputs": "x", "parameters": {"max_new_tokens": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-slice"],
        format!("pods/127.0.0.1:{port}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_front_calls_a_remote_worker_with_the_remotes_own_key() {
    let mut command = Command::new(common::fake_worker_binary());
    command.args(["--api-key", "remote-key-a"]);
    let (child, url) = spawn_until_line(command, migserve::contract::WORKER_READY_PREFIX, 30);
    let worker = FakeWorker { child, url };
    let config = format!(
        "[supervisor]\nhealth_interval_secs = 0.2\n[[remote]]\nname = \"w0\"\nurl = \"{}\"\nmodel = \"fake\"\napi_key = \"remote-key-a\"\n",
        worker.url
    );
    let serve = Serve::start_with_env(
        "remote-key",
        &config,
        &[("MIGSERVE_API_KEY", "front-key-b")],
    );
    let c = reqwest::Client::new();
    let body = serde_json::json!({"inputs": "hi", "parameters": {"max_new_tokens": 3}});
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .post(serve.at("/generate"))
            .bearer_auth("front-key-b")
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker takes only its own key: the front did not hand on its client's.
    let r = c
        .post(format!("{}/generate", worker.url))
        .bearer_auth("front-key-b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(serve.at("/generate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the front is keyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_no_other_slice_can_take_ends_with_an_error_event() {
    let mut workers = vec![FakeWorker::start(5, 50)];
    let (serve, c) = start("alone", &workers, "").await;
    let r = c
        .post(serve.at("/generate_stream"))
        .json(&json!({"inputs": "hello", "parameters": {"max_new_tokens": 40}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let mut body = r.bytes_stream();
    let mut raw = String::new();
    let mut killed = false;
    while let Some(chunk) = body.next().await {
        raw.push_str(&String::from_utf8_lossy(&chunk.expect("no reset")));
        if !killed && raw.matches("\"token\"").count() >= 3 {
            workers[0].kill();
            killed = true;
        }
    }
    let events: Vec<Value> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    let (last, tokens) = events.split_last().unwrap();
    assert!(tokens.len() >= 3 && tokens.len() < 40, "{raw}");
    assert!(tokens.iter().all(|e| e.get("token").is_some()), "{raw}");
    assert_eq!(last["error_type"], "generation", "{raw}");
    assert!(
        last["error"].as_str().unwrap().contains("mid-stream"),
        "{last}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stream hung"
    );
}
