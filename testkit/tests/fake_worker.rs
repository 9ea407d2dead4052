//! `migserve-fake-worker` as the router and loadtest tests use it: the real worker HTTP layer
//! over the fake engine, with its injected failures and cut streams. (This test also makes
//! `cargo test` build the binary those tests start.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use futures_util::StreamExt;
use serde_json::{json, Value};

struct Fake(Child, String);

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Fake {
    let mut child = Command::new(env!("CARGO_BIN_EXE_migserve-fake-worker"))
        .args(["--first-token-delay-ms", "1", "--token-delay-ms", "1"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let url = migserve::contract::parse_worker_ready_line(&line)
        .unwrap_or_else(|| panic!("not a ready line: {line}"))
        .to_string();
    Fake(child, url)
}

/// The body of a `/generate_stream` call, and whether it ended cleanly.
async fn stream(c: &reqwest::Client, url: &str) -> (String, bool) {
    let r = c
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "one two three", "parameters": {"max_new_tokens": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => text.extend_from_slice(&b),
            Err(_) => return (String::from_utf8_lossy(&text).into(), false),
        }
    }
    (String::from_utf8_lossy(&text).into(), true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canned_tokens_through_the_real_http_layer() {
    let fake = start(&[]);
    let c = reqwest::Client::new();
    let info: Value = c
        .get(format!("{}/info", fake.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["model_id"], "fake");
    let r = c
        .post(format!("{}/generate", fake.1))
        .json(&json!({"inputs": "one two three", "parameters": {"max_new_tokens": 3, "details": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-generated-tokens"], "3");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["generated_text"], " t0 t1 t2");
    assert_eq!(v["details"]["finish_reason"], "length");
    let (body, clean) = stream(&c, &fake.1).await;
    assert!(clean && body.contains("\"input_length\":3"), "{body}");
    // The engine's own validation: the same 422 as a real worker.
    let r = c
        .post(format!("{}/generate", fake.1))
        .json(&json!({"inputs": "x", "parameters": {"max_new_tokens": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_cut_streams_come_as_configured() {
    let fake = start(&["--fail-every", "2", "--cut-every", "2"]);
    let c = reqwest::Client::new();
    let post = || {
        c.post(format!("{}/generate", fake.1))
            .json(&json!({"inputs": "a", "parameters": {"max_new_tokens": 2}}))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 200);
    assert_eq!(post().await.unwrap().status(), 503, "every 2nd request");
    // Requests 3 and 5 stream (4 is refused); the second stream is cut.
    let (_, first_clean) = stream(&c, &fake.1).await;
    assert_eq!(post().await.unwrap().status(), 503);
    let (body, second_clean) = stream(&c, &fake.1).await;
    assert!(first_clean, "the first stream is whole");
    assert!(!second_clean, "the second stream is cut: {body}");
}
