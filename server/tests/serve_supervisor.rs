//! `migserve serve` supervising real worker processes on emulated CPU slices: pinning,
//! restart after a crash, and a SIGTERM drain that leaves no process behind.

mod common;

use std::time::{Duration, Instant};

use common::{parent_pid, process_alive, process_env, Serve};
use futures_util::StreamExt;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[slices]
source = "emulate"
emulate = "3x1g.10gb"

[supervisor]
health_interval_secs = 0.5
restart_backoff_secs = 0.2
drain_timeout_secs = 60

[[models]]
name = "smol"
path = "{model}"
replicas = 3

[models.engine]
kv_cache_tokens = 4096
"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn all_ready(slices: &[Value]) -> bool {
    slices.len() == 3 && slices.iter().all(|s| s["state"] == "ready")
}

fn by_id<'a>(slices: &'a [Value], id: &str) -> &'a Value {
    slices
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no slice {id}"))
}

async fn generate(c: &reqwest::Client, base: &str, max_new_tokens: u32) -> Value {
    let r = c
        .post(format!("{base}/generate"))
        .json(&json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": max_new_tokens}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/generate: {e}"));
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pins_restarts_and_drains_its_workers() {
    let c = client();
    let mut serve = Serve::start("supervisor", CONFIG);
    let serve_pid = u64::from(serve.child.id());
    let slices = serve
        .wait_slices(&c, Duration::from_secs(180), "3 ready workers", all_ready)
        .await;

    // Three worker processes, children of serve, each seeing exactly its own slice.
    let mut pids = Vec::new();
    for (i, slice) in slices.iter().enumerate() {
        let id = format!("cpu{i}");
        let s = by_id(&slices, &id);
        let pid = s["pid"].as_u64().unwrap();
        assert!(process_alive(pid));
        assert_eq!(parent_pid(pid), Some(serve_pid), "{id}");
        assert_eq!(
            process_env(pid, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(format!("EMU-cpu-{i}").as_str()),
            "{id}"
        );
        assert_eq!(s["slice"]["uuid"], format!("EMU-cpu-{i}"));
        assert_eq!(
            process_env(pid, "MIGSERVE_SLICE").as_deref(),
            Some(id.as_str())
        );
        pids.push(pid);
        let _ = slice;
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "three distinct worker processes");

    // kill -9 one worker: the others keep answering, it comes back within 10 s.
    let victim = by_id(&slices, "cpu1").clone();
    let victim_pid = victim["pid"].as_u64().unwrap();
    let killed_at = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let others: Vec<String> = ["cpu0", "cpu2"]
        .iter()
        .map(|id| by_id(&slices, id)["url"].as_str().unwrap().to_string())
        .collect();
    let back = loop {
        for url in &others {
            let v = generate(&c, url, 4).await;
            assert!(!v["generated_text"].as_str().unwrap().is_empty());
        }
        let now = serve.slices(&c).await;
        let s = by_id(&now, "cpu1");
        if s["state"] == "ready" && s["pid"].as_u64() != Some(victim_pid) {
            break s.clone();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "cpu1 not back within 10 s: {s:#}"
        );
    };
    let answered = generate(&c, back["url"].as_str().unwrap(), 4).await;
    let recovery = killed_at.elapsed();
    assert!(
        recovery < Duration::from_secs(10),
        "answered after {recovery:?}"
    );
    println!("worker killed with SIGKILL answered again after {recovery:?}");
    assert!(!answered["generated_text"].as_str().unwrap().is_empty());
    assert_eq!(back["restarts"], 1);
    assert!(
        back["last_error"].as_str().unwrap().contains("SIGKILL"),
        "{back:#}"
    );
    let new_pid = back["pid"].as_u64().unwrap();
    assert_eq!(
        process_env(new_pid, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some("EMU-cpu-1")
    );
    let metrics = common::metrics_text(&c, &serve.url).await;
    assert!(
        metrics.contains(
            "migserve_slice_restarts_total{slice=\"cpu1\",profile=\"1g.10gb\",model=\"smol\"} 1"
        ),
        "{metrics}"
    );

    // SIGTERM to serve with a request in flight: it finishes, then nothing is left running.
    let now = serve.slices(&c).await;
    let worker_pids: Vec<u64> = now.iter().map(|s| s["pid"].as_u64().unwrap()).collect();
    // Through the front: the router drains first, then the workers.
    let body = json!({"inputs": "Tell me a story.", "parameters": {"max_new_tokens": 48, "ignore_eos": true}});
    let response = c
        .post(serve.at("/generate_stream"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    // Wait for the first token, then ask serve to stop.
    while !text.contains("data:") {
        text.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    serve.signal("TERM");
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("stream cut during drain"),
        ));
    }
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert_eq!(
        events.len(),
        48,
        "every token of the in-flight request arrived"
    );
    assert_eq!(events[47]["details"]["finish_reason"], "length");
    let status = serve
        .wait_exit(Duration::from_secs(60))
        .expect("serve exited");
    assert!(status.success(), "{status:?}");
    for pid in worker_pids {
        assert!(!process_alive(pid), "worker {pid} outlived serve");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_outlives_a_killed_supervisor() {
    let c = client();
    let serve = Serve::start(
        "orphans",
        &CONFIG
            .replace("3x1g.10gb", "2x1g.10gb")
            .replace("replicas = 3", "replicas = 2"),
    );
    let slices = serve
        .wait_slices(&c, Duration::from_secs(180), "2 ready workers", |s| {
            s.len() == 2 && s.iter().all(|s| s["state"] == "ready")
        })
        .await;
    let pids: Vec<u64> = slices.iter().map(|s| s["pid"].as_u64().unwrap()).collect();
    serve.signal("KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| process_alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived a SIGKILLed supervisor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_crashing_marks_its_slice_failed_and_the_others_serve() {
    let c = client();
    // `max_total_tokens = 1` makes that worker exit with an error at every start.
    let config = r#"
[slices]
source = "emulate"
emulate = "2x1g.10gb"

[supervisor]
restart_backoff_secs = 0.1
max_crashes = 3
crash_window_secs = 60

[[models]]
name = "good"
path = "{model}"
slices = ["cpu0"]
[models.engine]
kv_cache_tokens = 2048

[[models]]
name = "broken"
path = "{model}"
slices = ["cpu1"]
[models.engine]
max_total_tokens = 1
"#;
    let serve = Serve::start("failing", config);
    let slices = serve
        .wait_slices(
            &c,
            Duration::from_secs(180),
            "cpu1 failed, cpu0 ready",
            |s| by_id(s, "cpu1")["state"] == "failed" && by_id(s, "cpu0")["state"] == "ready",
        )
        .await;
    let failed = by_id(&slices, "cpu1");
    assert_eq!(
        failed["restarts"], 2,
        "two restarts, then the third crash marks it failed"
    );
    assert!(failed["pid"].is_null());
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.contains("exit status: 1") && error.contains("--max-total-tokens"),
        "{error}"
    );
    let metrics = common::metrics_text(&c, &serve.url).await;
    assert!(metrics.contains(
        "migserve_slice_state{slice=\"cpu1\",profile=\"1g.10gb\",model=\"broken\",state=\"failed\"} 1"
    ));
    let good = by_id(&slices, "cpu0")["url"].as_str().unwrap().to_string();
    let v = generate(&c, &good, 4).await;
    assert!(!v["generated_text"].as_str().unwrap().is_empty());
    // Failed stays failed: no more restarts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(by_id(&serve.slices(&c).await, "cpu1")["restarts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_use_its_gpu_fails_its_slice_at_once_and_the_others_serve() {
    let c = client();
    // Real MIG slices from a recorded H100; their UUIDs are not this machine's (and a CPU
    // build has no CUDA at all), so the CUDA worker cannot open its device. The other model
    // runs on the CPU.
    let inventory = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nvidia-smi/h100-3g-2g-2x1g.txt");
    let config = format!(
        r#"
[slices]
source = "inventory"
inventory = "{}"

[supervisor]
restart_backoff_secs = 0.1
max_crashes = 3
crash_window_secs = 60

[[models]]
name = "on-cpu"
path = "{{model}}"
slices = ["mig0-2"]
device = "cpu"
[models.engine]
kv_cache_tokens = 2048

[[models]]
name = "on-gpu"
path = "{{model}}"
slices = ["mig0-3"]
"#,
        inventory.display()
    );
    let serve = Serve::start("unusable-device", &config);
    let slices = serve
        .wait_slices(
            &c,
            Duration::from_secs(180),
            "mig0-3 failed, mig0-2 ready",
            |s| by_id(s, "mig0-3")["state"] == "failed" && by_id(s, "mig0-2")["state"] == "ready",
        )
        .await;
    let failed = by_id(&slices, "mig0-3");
    assert_eq!(
        failed["restarts"], 0,
        "a device it cannot use is not retried"
    );
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.contains("exit status: 3")
            && (error.contains("no CUDA support") || error.contains("no usable CUDA device")),
        "{error}"
    );
    assert!(
        error.contains("MIG-9a3d5f7c-1e8b-4c2a-8d4f-7b6e0a9c3d58"),
        "the line names the slice it was pinned to: {error}"
    );
    let good = by_id(&slices, "mig0-2")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let v = generate(&c, &good, 4).await;
    assert!(!v["generated_text"].as_str().unwrap().is_empty());
    // And through the front.
    let r = c
        .post(serve.at("/generate"))
        .header("x-model", "on-cpu")
        .json(&serde_json::json!({"inputs": "Hello", "parameters": {"max_new_tokens": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(by_id(&serve.slices(&c).await, "mig0-3")["restarts"], 0);
}
