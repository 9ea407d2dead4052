//! Shared by the black-box tests: the real model, and a real `migserve worker` process on a free port.

#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the real model is: the same lookup as the models crate's tests.
#[path = "../../../models/tests/common/mod.rs"]
mod model_file;
#[allow(unused_imports)]
pub use model_file::{gemma_path, hf_dir, model_path};

/// The migserve binary the tests start: `$MIGSERVE_TEST_BIN` (a binary carried to another
/// machine with these tests, as `bench/gpu/validate.sh` does), else the one cargo built.
pub fn migserve_binary() -> std::path::PathBuf {
    std::env::var_os("MIGSERVE_TEST_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_migserve").into())
}

/// The test stand-in worker (crate `migserve-testkit`), built beside migserve by `cargo test`
/// at the workspace root.
pub fn fake_worker_binary() -> std::path::PathBuf {
    let path =
        std::path::Path::new(env!("CARGO_BIN_EXE_migserve")).with_file_name("migserve-fake-worker");
    assert!(
        path.is_file(),
        "{} missing: run `cargo test` at the workspace root (it builds migserve-testkit)",
        path.display()
    );
    path
}

/// Spawns `command` (stdout piped, stderr inherited, `RUST_LOG` default warn) and waits up to
/// `timeout_secs` for a stdout line starting with `prefix`; returns the child and the rest of
/// that line.
pub fn spawn_until_line(
    command: Command,
    prefix: &'static str,
    timeout_secs: u64,
) -> (Child, String) {
    spawn_until_line_with(command, prefix, timeout_secs, Stdio::inherit())
}

/// [`spawn_until_line`] with stderr going to `stderr`.
pub fn spawn_until_line_with(
    mut command: Command,
    prefix: &'static str,
    timeout_secs: u64,
    stderr: Stdio,
) -> (Child, String) {
    if std::env::var_os("RUST_LOG").is_some() || command.get_envs().all(|(k, _)| k != "RUST_LOG") {
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn migserve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(timeout_secs)) {
        Ok(rest) => (child, rest),
        Err(_) => {
            let _ = child.kill();
            panic!("no {prefix:?} line within {timeout_secs} s");
        }
    }
}

/// A worker process, killed when dropped.
pub struct Worker {
    child: Child,
    pub url: String,
}

impl Worker {
    /// Starts `migserve worker` on 127.0.0.1:0 with the real model and `extra` arguments,
    /// and waits for its ready line.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// [`Worker::start`] with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_model(&model_path(), extra, env)
    }

    /// [`Worker::start_with_env`] with another model file.
    pub fn start_model(model: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_logged(model, extra, env, Stdio::inherit())
    }

    /// [`Worker::start_model`] with its stderr (the log) going to `stderr`.
    pub fn start_logged(
        model: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Self {
        let mut command = Command::new(migserve_binary());
        command
            .args([
                "worker",
                "--model",
                model.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .envs(env.iter().copied());
        let (child, url) = spawn_until_line_with(
            command,
            migserve::contract::WORKER_READY_PREFIX,
            120,
            stderr,
        );
        Self { child, url }
    }

    /// Full URL of `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for exit up to `timeout`; the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled-except-globals metric in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A `migserve serve` process on a free port, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub url: String,
    /// The config file it runs (rewrite it, then reload).
    pub config: std::path::PathBuf,
}

impl Serve {
    /// Writes `config` (with `{model}` replaced by the real model's path) to a file and starts
    /// `migserve serve` on it on 127.0.0.1:0; returns once the front listens.
    pub fn start(name: &str, config: &str) -> Self {
        Self::start_with_env(name, config, &[])
    }

    /// [`Serve::start`] with extra environment variables (its workers inherit them).
    pub fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_logged(name, config, env, Stdio::inherit())
    }

    /// [`Serve::start_with_env`] with its stderr (its log and its workers') going to `stderr`.
    pub fn start_logged(name: &str, config: &str, env: &[(&str, &str)], stderr: Stdio) -> Self {
        let dir = std::env::temp_dir().join(format!("migserve-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, fill_paths(config)).unwrap();
        let mut command = Command::new(migserve_binary());
        command.args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        command.envs(env.iter().copied());
        let (child, url) =
            spawn_until_line_with(command, migserve::contract::SERVE_READY_PREFIX, 60, stderr);
        Self {
            child,
            url,
            config: path,
        }
    }

    /// Full URL of `path` on the front.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET /slices`.
    pub async fn slices(&self, c: &reqwest::Client) -> Vec<serde_json::Value> {
        c.get(self.at("/slices"))
            .send()
            .await
            .expect("GET /slices")
            .json()
            .await
            .expect("/slices JSON")
    }

    /// Polls `/slices` until `done` holds for it; panics after `timeout`.
    pub async fn wait_slices(
        &self,
        c: &reqwest::Client,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let slices = self.slices(c).await;
            if done(&slices) {
                return slices;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {slices:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal to the serve process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits for exit up to `timeout`; the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config` with the real models' paths in place of `{model}` (SmolLM2 GGUF), `{gemma}`
/// (Gemma 3 270M GGUF) and `{hf}` (SmolLM2 as a Hugging Face directory).
pub fn fill_paths(config: &str) -> String {
    let mut text = config.replace("{model}", model_path().to_str().unwrap());
    if text.contains("{gemma}") {
        text = text.replace("{gemma}", gemma_path().to_str().unwrap());
    }
    if text.contains("{hf}") {
        text = text.replace("{hf}", hf_dir("smollm2-135m").to_str().unwrap());
    }
    text
}

/// Writes a synthetic Qwen2.5-0.5B-shaped GGUF of `layers` layers (random weights, the
/// real model's tokenizer) into `dir` with `migserve synth`; its path.
pub fn synth_qwen(dir: &std::path::Path, layers: u32) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(format!("qwen-synth-{layers}.gguf"));
    if !out.is_file() {
        let status = Command::new(migserve_binary())
            .args([
                "synth",
                "--like",
                "qwen2.5-0.5b",
                "--layers",
                &layers.to_string(),
            ])
            .arg("--out")
            .arg(&out)
            .arg("--tokenizer-from")
            .arg(model_path())
            .env("RUST_LOG", "warn")
            .status()
            .expect("run migserve synth");
        assert!(status.success(), "migserve synth failed");
    }
    out
}

/// True while a process exists and is not a zombie.
pub fn process_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// One variable of a process's environment, from /proc/PID/environ.
pub fn process_env(pid: u64, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| {
            entry
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_string)
        })
}

/// Parent pid of a process, from /proc/PID/stat.
pub fn parent_pid(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `GET {base}/metrics` as text.
pub async fn metrics_text(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Waits for `child` to exit, up to `timeout`; its status if it did.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The prompt whose greedy answer with the real model is known ("The capital of France is
/// Paris.").
pub const FRANCE: &str = "What is the capital of France? Answer in two sentences.";

/// `GET url` as JSON; panics on a transport or JSON error.
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

/// An HTTP client for tests that run the real model under load (generous timeout).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("HTTP client")
}

/// POSTs `body` as JSON; the status and the JSON answer (`null` when it is not JSON).
pub async fn post_json(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = c.post(url).json(body).send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// POSTs `body` and reads the whole event stream: each `data:` event's JSON, up to `[DONE]`.
pub async fn post_sse(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let raw = c
        .post(url)
        .json(body)
        .send()
        .await
        .expect("POST")
        .text()
        .await
        .expect("stream body");
    raw.lines()
        .filter_map(|l| l.strip_prefix("data:").map(str::trim))
        .take_while(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("JSON event"))
        .collect()
}
