//! The front under slow and abusive clients (`migserve serve` over a fake worker, raw TCP
//! clients): stalled request heads are closed after the header timeout, stalled bodies get a
//! 408, a connection's last allowed request closes it, stalled connections past the cap
//! make room for a good client, and when every connection is in a request a new one gets 503.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{spawn_until_line, Serve};
use serde_json::{json, Value};

/// The front's limits in these tests.
const CAP: usize = 8;

struct FakeWorker {
    child: Child,
    url: String,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake_worker(token_ms: u64) -> FakeWorker {
    let mut command = Command::new(common::fake_worker_binary());
    command.args([
        "--first-token-delay-ms",
        "1",
        "--token-delay-ms",
        &token_ms.to_string(),
    ]);
    let (child, url) = spawn_until_line(command, migserve::contract::WORKER_READY_PREFIX, 30);
    FakeWorker { child, url }
}

async fn start(worker: &FakeWorker) -> (Serve, reqwest::Client) {
    let config = format!(
        "[supervisor]\nhealth_interval_secs = 0.2\n\
         [router]\nheader_read_timeout_secs = 1\nbody_read_timeout_secs = 1\n\
         max_connections = {CAP}\nmax_requests_per_connection = 3\n\
         [[remote]]\nname = \"w0\"\nurl = \"{}\"\nmodel = \"fake\"\n",
        worker.url
    );
    let serve = Serve::start("guard", &config);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    serve
        .wait_slices(&c, Duration::from_secs(20), "the worker healthy", |s| {
            s.len() == 1 && s[0]["state"] == "ready"
        })
        .await;
    (serve, c)
}

fn addr(serve: &Serve) -> String {
    serve.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// A good request through the front, and how long it took.
async fn good_request(serve: &Serve, c: &reqwest::Client) -> (u16, Duration) {
    let started = Instant::now();
    let r = c
        .post(serve.at("/generate"))
        .json(&json!({"inputs": "hi", "parameters": {"max_new_tokens": 2}}))
        .send()
        .await
        .expect("a good request is answered");
    (r.status().as_u16(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_abusive_clients_cannot_pin_the_front() {
    let worker = fake_worker(1);
    let (serve, c) = start(&worker).await;
    let addr = addr(&serve);

    // Half a header each, three times the cap: the cap makes room for newer connections by
    // closing older idle ones, and a good request still gets through at once.
    let mut stalled: Vec<TcpStream> = (0..3 * CAP)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = good_request(&serve, &c).await;
    println!(
        "good request past {} stalled connections: {status} in {took:?}",
        stalled.len()
    );
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Every stalled connection is closed: made room for, or timed out after 1 s.
    let started = Instant::now();
    for s in &mut stalled {
        let (_, closed) = read_to_close(s, Duration::from_secs(5));
        assert!(
            closed,
            "a stalled connection is still open after {:?}",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // A body that stalls: 408 in the endpoint's shape.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\":",
    )
    .unwrap();
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value =
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");

    // Three requests per connection: the third answer says close, and it closes.
    let mut s = TcpStream::connect(&addr).unwrap();
    for _ in 0..4 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    let (answers, closed) = read_to_close(&mut s, Duration::from_secs(5));
    let answers = String::from_utf8_lossy(&answers).to_lowercase();
    assert_eq!(answers.matches("http/1.1 200").count(), 3, "{answers}");
    assert_eq!(answers.matches("connection: close").count(), 1, "{answers}");
    assert!(closed);

    let metrics = common::metrics_text(&c, &serve.url).await;
    let evicted = common::metric_value(&metrics, "migserve_front_connections_evicted_total");
    assert!(evicted.is_some_and(|n| n >= (2 * CAP) as f64), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_in_a_request_a_new_one_gets_503() {
    // Slow tokens: each stream holds its connection for about 3 s.
    let worker = fake_worker(100);
    let (serve, c) = start(&worker).await;
    let body = json!({"inputs": "hi", "parameters": {"max_new_tokens": 30}});
    let mut streams = Vec::new();
    for _ in 0..CAP {
        // A client of its own per stream: one connection each.
        let own = reqwest::Client::new();
        let r = own
            .post(serve.at("/generate_stream"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push((own, r));
    }
    let mut s = TcpStream::connect(addr(&serve)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"error_type\":\"overloaded\""), "{answer}");
    assert!(closed);
    // The streams were not disturbed, and once they end there is room again.
    for (_, r) in streams {
        let text = r.text().await.unwrap();
        assert!(text.contains("\"generated_tokens\":30"), "{text}");
    }
    let (status, _) = good_request(&serve, &c).await;
    assert_eq!(status, 200);
    let metrics = common::metrics_text(&c, &serve.url).await;
    let refused = common::metric_value(&metrics, "migserve_front_connections_refused_total");
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
}
