//! Starting and stopping `migserve serve` for a layout.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// The start of `migserve serve`'s ready line (the contract in migserve's `contract.rs`;
/// a test there checks that this copy matches).
const SERVE_READY_PREFIX: &str = "migserve serving on ";

/// A running `migserve serve`, stopped when dropped.
pub struct ServeProcess {
    child: Child,
    /// Front URL.
    pub url: String,
}

impl ServeProcess {
    /// Starts `migserve serve --config CONFIG --listen 127.0.0.1:0` and waits (up to
    /// `timeout`) for its ready line.
    pub fn start(migserve: &Path, config: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let mut child = Command::new(migserve)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", migserve.display()))?;
        let stdout = child.stdout.take().context("serve stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(SERVE_READY_PREFIX) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(timeout) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!(
                    "migserve serve --config {} did not start serving within {timeout:?} ({status:?})",
                    config.display()
                );
            }
        };
        Ok(Self { child, url })
    }

    /// Waits until every slice is ready (or `cancel` turns true); returns `/slices`.
    pub async fn wait_ready(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        cancel: &tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if *cancel.borrow() {
                bail!("interrupted while the workers were starting");
            }
            if let Ok(r) = client.get(format!("{}/slices", self.url)).send().await {
                if let Ok(slices) = r.json::<Vec<Value>>().await {
                    if !slices.is_empty() && slices.iter().all(|s| s["state"] == "ready") {
                        return Ok(slices);
                    }
                    if slices.iter().any(|s| s["state"] == "failed") {
                        bail!("a slice failed to start: {slices:?}");
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("slices not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, then wait (SIGKILL after 60 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
