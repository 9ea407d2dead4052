//! `loadtest` black-box: real processes (`migserve-fake-worker`, and `migserve serve` with the
//! real model), real HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The migserve binary built beside loadtest (`cargo test` at the workspace root builds it).
fn migserve() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_loadtest")).with_file_name("migserve");
    assert!(
        path.is_file(),
        "{} missing: run `cargo test` at the workspace root (it builds migserve)",
        path.display()
    );
    path
}

/// Where the real model is: the same lookup as the models crate's tests.
#[path = "../../models/tests/common/mod.rs"]
mod model_file;

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a migserve subcommand and returns it with the URL from its ready line.
fn start(args: &[&str], prefix: &'static str) -> (Proc, String) {
    start_binary(&migserve(), args, prefix)
}

/// Starts `binary` and returns it with the URL from its ready line.
fn start_binary(binary: &Path, args: &[&str], prefix: &'static str) -> (Proc, String) {
    let mut child = Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("ready line").unwrap();
        if let Some(url) = line.strip_prefix(prefix) {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), url)
}

/// A `migserve-fake-worker` (crate `migserve-testkit`: the worker's HTTP layer over a fake
/// engine), built beside loadtest by `cargo test` at the workspace root.
fn fake_worker(extra: &[&str]) -> (Proc, String) {
    let binary = Path::new(env!("CARGO_BIN_EXE_loadtest")).with_file_name("migserve-fake-worker");
    assert!(
        binary.is_file(),
        "{} missing: run `cargo test` at the workspace root (it builds migserve-testkit)",
        binary.display()
    );
    let mut args = vec!["--first-token-delay-ms", "5", "--token-delay-ms", "2"];
    args.extend_from_slice(extra);
    start_binary(&binary, &args, "migserve worker listening on ")
}

/// `GET url` as JSON (`Null` on any failure).
fn get_json(url: &str) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match reqwest::get(url).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    })
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

#[test]
fn errors_are_counted_by_type_and_the_report_is_still_written() {
    let (_worker, url) = fake_worker(&["--fail-every", "4", "--cut-every", "5"]);
    let out = temp_dir("errors");
    let result = loadtest(&[
        "run",
        "--url",
        &url,
        "--concurrency",
        "2",
        "--requests",
        "40",
        "--output-tokens",
        "6",
        "--prompt-tokens",
        "uniform:8-32",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report = json(&out.join("result.json"));
    let level = &report["levels"][0];
    let errors = &level["errors"];
    let (http, cut) = (
        errors["http_5xx"].as_u64().unwrap(),
        errors["stream_broken"].as_u64().unwrap(),
    );
    assert!(http >= 5 && cut >= 3, "{errors}");
    assert_eq!(
        level["requests_ok"].as_u64().unwrap() + level["requests_failed"].as_u64().unwrap(),
        40
    );
    assert_eq!(
        level["output_tokens"].as_u64().unwrap(),
        6 * level["requests_ok"].as_u64().unwrap()
    );
    for file in ["summary.md", "latency-throughput.svg", "per-slice.svg"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("http_5xx") && summary.contains("stream_broken"));
}

#[test]
fn a_refused_connection_is_an_error_not_a_crash() {
    let out = temp_dir("refused");
    // Nothing listens on port 9 of loopback.
    let result = loadtest(&[
        "run",
        "--url",
        "http://127.0.0.1:9",
        "--concurrency",
        "1",
        "--requests",
        "3",
        "--warmup",
        "0",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success());
    assert_eq!(
        json(&out.join("result.json"))["levels"][0]["errors"]["connect"],
        3
    );
}

#[test]
fn ctrl_c_writes_a_partial_report() {
    let (_worker, url) = fake_worker(&[]);
    let out = temp_dir("ctrl-c");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            "--url",
            &url,
            "--concurrency",
            "2,4",
            "--duration",
            "60",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let report = json(&out.join("result.json"));
    assert_eq!(report["interrupted"], true);
    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 1, "the second level never started");
    assert_eq!(levels[0]["interrupted"], true);
    assert!(levels[0]["requests_ok"].as_u64().unwrap() > 10);
    assert!(std::fs::read_to_string(out.join("summary.md"))
        .unwrap()
        .contains("partial"));
}

#[test]
fn counts_agree_with_the_servers_own_metrics() {
    let model = model_file::model_path();
    let dir = temp_dir("metrics");
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[slices]\nsource = \"emulate\"\nemulate = \"2x1g.10gb\"\n[[models]]\nname = \"smol\"\npath = \"{}\"\nreplicas = 2\n[models.engine]\nkv_cache_tokens = 4096\n",
            model.display()
        ),
    )
    .unwrap();
    let (_serve, url) = start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        "migserve serving on ",
    );
    // Wait for both workers.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let slices = get_json(&format!("{url}/slices"));
        if slices
            .as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["state"] == "ready"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "workers not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = dir.join("report");
    for api in ["tgi", "openai-chat"] {
        let result = loadtest(&[
            "run",
            "--url",
            &url,
            "--api",
            api,
            "--model",
            "smol",
            "--concurrency",
            "1,3",
            "--requests",
            "6",
            "--output-tokens",
            "uniform:4-12",
            "--prompt-tokens",
            "32",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let report = json(&out.join("result.json"));
        let check = &report["metrics_check"];
        assert_eq!(check["metric"], "migserve_router_requests_total", "{check}");
        assert_eq!(check["loadtest_requests"], 12, "{check}");
        assert!(
            check["max_relative_difference"].as_f64().unwrap() <= 0.01,
            "{api}: {check}"
        );
        let levels = report["levels"].as_array().unwrap();
        assert!(levels.iter().all(|l| l["requests_failed"] == 0));
        let slices: Vec<&String> = levels
            .iter()
            .flat_map(|l| l["per_slice"].as_object().unwrap().keys())
            .collect();
        assert!(
            slices.iter().any(|s| *s == "cpu0") && slices.iter().any(|s| *s == "cpu1"),
            "{slices:?}"
        );
    }
}

#[test]
fn a_workers_step_metrics_are_reported_per_level() {
    let model = model_file::model_path();
    let (_worker, url) = start(
        &[
            "worker",
            "--model",
            model.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--kv-cache-tokens",
            "2048",
            "--no-prefix-caching",
            // On the CPU it only waits for nothing: the same steps, the same phases.
            "--profile-steps",
        ],
        "migserve worker listening on ",
    );
    let out = temp_dir("steps");
    let result = loadtest(&[
        "run",
        "--url",
        &url,
        "--api",
        "tgi",
        "--concurrency",
        "1,4",
        "--requests",
        "8",
        "--output-tokens",
        "6",
        "--prompt-tokens",
        "24",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report = json(&out.join("result.json"));
    let levels = report["levels"].as_array().unwrap();
    for level in levels {
        let steps = &level["server_steps"];
        let decode = steps["decode_steps"].as_u64().unwrap();
        let prefill = steps["prefill_steps"].as_u64().unwrap();
        // Each request: one step over its prompt gives its first token, one decode step each
        // of the other five (a step may run several requests' prompts or decodes together).
        assert!(
            (1..=8).contains(&prefill) && (5..=40).contains(&decode),
            "{steps}"
        );
        let batch = steps["decode_batch"].as_f64().unwrap();
        let step_ms = |key: &str| steps[key].as_f64().unwrap();
        let phases: f64 = ["schedule", "forward", "sample", "emit"]
            .iter()
            .map(|p| steps["phase_ms"][p].as_f64().unwrap())
            .sum();
        // The phases cover the whole step, back to back.
        let mean = (step_ms("decode_step_ms") * decode as f64
            + step_ms("prefill_step_ms") * prefill as f64)
            / (decode + prefill) as f64;
        assert!(
            (phases - mean).abs() <= 0.05 * mean,
            "{phases} vs {mean}: {steps}"
        );
        assert!(
            steps["phase_ms"]["forward"].as_f64().unwrap() > 0.0,
            "{steps}"
        );
        if level["label"] == "c=1" {
            // One client: exactly one sequence per decode step, five per request.
            assert_eq!(batch, 1.0, "{steps}");
            assert_eq!((decode, prefill), (40, 8), "{steps}");
        } else {
            assert!((1.0..=4.0).contains(&batch), "{steps}");
        }
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("Server steps"), "{summary}");
}

#[test]
fn compare_runs_each_layout_and_writes_one_report() {
    let (_a, url_a) = fake_worker(&[]);
    let (_b, url_b) = fake_worker(&[]);
    let dir = temp_dir("compare");
    let remote = |name: &str, url: &str| {
        format!("[[remote]]\nname = \"{name}\"\nurl = \"{url}\"\nmodel = \"fake\"\n")
    };
    let header = "[supervisor]\nhealth_interval_secs = 0.2\n";
    std::fs::write(
        dir.join("one.toml"),
        format!("{header}{}", remote("w0", &url_a)),
    )
    .unwrap();
    std::fs::write(
        dir.join("two.toml"),
        format!("{header}{}{}", remote("w0", &url_a), remote("w1", &url_b)),
    )
    .unwrap();
    let out = dir.join("report");
    let result = loadtest(&[
        "compare",
        "--layout",
        &format!("one={}", dir.join("one.toml").display()),
        "--layout",
        &format!("two={}", dir.join("two.toml").display()),
        "--migserve",
        migserve().to_str().unwrap(),
        "--concurrency",
        "1,4",
        "--duration",
        "1",
        "--output-tokens",
        "8",
        "--isolation",
        "--isolation-secs",
        "1",
        "--isolation-heavy",
        "4",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report = json(&out.join("compare.json"));
    let layouts = report["layouts"].as_array().unwrap();
    assert_eq!(layouts.len(), 2);
    assert_eq!(layouts[1]["slices"].as_array().unwrap().len(), 2);
    assert!(
        layouts[0]["isolation"].is_null(),
        "one slice: no isolation experiment"
    );
    let iso = &layouts[1]["isolation"];
    assert!(
        iso["alone"]["requests_ok"].as_u64().unwrap() > 0
            && iso["heavy"]["requests_ok"].as_u64().unwrap() > 0
    );
    for layout in layouts {
        for level in layout["report"]["levels"].as_array().unwrap() {
            assert!(level["requests_ok"].as_u64().unwrap() > 0);
        }
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("Throughput per slice against the baseline")
            && md.contains("two / one")
            && md.contains("Isolation")
    );
    for file in [
        "latency-throughput.svg",
        "throughput.svg",
        "per-slice-one.svg",
        "per-slice-two.svg",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
}
