//! Latency the front router adds over calling workers directly, at many concurrent streams.
//!
//! Starts `--workers` fake workers (`migserve-fake-worker`: the worker's HTTP layer over a fake
//! engine with canned tokens at a set pace, so only HTTP and routing cost time) and `migserve serve` with them as remote workers, then
//! runs the same closed-loop streaming load directly against the workers (round-robin) and
//! through the router, alternating rounds, and prints time-to-first-token and end-to-end
//! percentiles of both and their differences.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The migserve binary.
    #[arg(long, default_value = "target/release/migserve")]
    migserve: PathBuf,
    /// The fake worker binary (crate `migserve-testkit`).
    #[arg(long, default_value = "target/release/migserve-fake-worker")]
    fake_worker: PathBuf,
    /// Fake workers behind the router.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Concurrent streams.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Requests per stream per round.
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// Rounds of each mode (alternating direct / router).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fake worker: milliseconds to the first token.
    #[arg(long, default_value_t = 10)]
    first_token_ms: u64,
    /// Fake worker: milliseconds between tokens.
    #[arg(long, default_value_t = 2)]
    token_ms: u64,
    /// Tokens per request.
    #[arg(long, default_value_t = 16)]
    tokens: u64,
    /// Start all streams at once (synchronized bursts of `--streams` requests) instead of
    /// spreading their starts over one request's duration (steady arrivals).
    #[arg(long)]
    synchronized: bool,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a command and returns it with the rest of its first stdout line starting `prefix`.
fn spawn(mut command: Command, prefix: &str) -> Result<(Proc, String)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning migserve")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let proc = Proc(child);
    for line in lines.by_ref() {
        if let Some(rest) = line?.strip_prefix(prefix) {
            // Keep draining stdout so the process never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok((proc, rest.trim().to_string()));
        }
    }
    bail!("no {prefix:?} line")
}

/// (time to first token, end to end) of one streamed request.
async fn one(c: &reqwest::Client, url: &str, tokens: u64) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let r = c
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "hello", "parameters": {"max_new_tokens": tokens}}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("status {}", r.status());
    }
    let mut body = r.bytes_stream();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if first.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            first = Some(started.elapsed());
        }
    }
    Ok((first.context("no token")?, started.elapsed()))
}

async fn round(
    c: &reqwest::Client,
    urls: &[String],
    args: &Args,
) -> Result<Vec<(Duration, Duration)>> {
    let mut tasks = tokio::task::JoinSet::new();
    let request_ms = args.first_token_ms + args.token_ms * args.tokens.saturating_sub(1);
    for s in 0..args.streams {
        let c = c.clone();
        let url = urls[s % urls.len()].clone();
        let (n, tokens) = (args.requests, args.tokens);
        let offset = if args.synchronized {
            Duration::ZERO
        } else {
            Duration::from_millis(request_ms * s as u64 / args.streams as u64)
        };
        tasks.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(one(&c, &url, tokens).await?);
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut workers = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..args.workers {
        let mut command = Command::new(&args.fake_worker);
        command.args([
            "--first-token-delay-ms",
            &args.first_token_ms.to_string(),
            "--token-delay-ms",
            &args.token_ms.to_string(),
        ]);
        let (proc, url) = spawn(command, "migserve worker listening on ")?;
        workers.push(proc);
        urls.push(url);
    }
    let mut config = String::from(
        "[supervisor]\nhealth_interval_secs = 0.5\n[router]\nmax_queue_per_slice = 1024\n",
    );
    for (i, url) in urls.iter().enumerate() {
        config.push_str(&format!(
            "[[remote]]\nname = \"w{i}\"\nurl = \"{url}\"\nmodel = \"fake\"\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("router-overhead-{}.toml", std::process::id()));
    std::fs::write(&path, config)?;
    let mut command = Command::new(&args.migserve);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn");
    let (_serve, front) = spawn(command, "migserve serving on ")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        // Wait for the router to see every worker healthy, then warm both paths.
        tokio::time::sleep(Duration::from_secs(1)).await;
        round(&c, &urls, &Args { requests: 2, ..Args::parse() }).await?;
        round(&c, std::slice::from_ref(&front), &Args { requests: 2, ..Args::parse() }).await?;
        let (mut direct, mut routed) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            direct.extend(round(&c, &urls, &args).await?);
            routed.extend(round(&c, std::slice::from_ref(&front), &args).await?);
        }
        let ms = |v: &[(Duration, Duration)], pick: fn(&(Duration, Duration)) -> Duration| {
            let mut x: Vec<f64> = v.iter().map(|s| pick(s).as_secs_f64() * 1e3).collect();
            x.sort_by(f64::total_cmp);
            x
        };
        println!(
            "{} fake workers (first token {} ms, then {} ms/token, {} tokens), {} concurrent streams ({}), {} requests per mode",
            args.workers, args.first_token_ms, args.token_ms, args.tokens, args.streams,
            if args.synchronized { "synchronized starts" } else { "starts spread over one request" },
            direct.len()
        );
        println!("| metric | direct p50 | router p50 | added p50 | direct p99 | router p99 | added p99 |");
        println!("|---|---|---|---|---|---|---|");
        for (name, pick) in [
            ("time to first token (ms)", (|s: &(Duration, Duration)| s.0) as fn(&(Duration, Duration)) -> Duration),
            ("end to end (ms)", |s: &(Duration, Duration)| s.1),
        ] {
            let (d, r) = (ms(&direct, pick), ms(&routed, pick));
            println!(
                "| {name} | {:.2} | {:.2} | {:+.2} | {:.2} | {:.2} | {:+.2} |",
                pct(&d, 0.5),
                pct(&r, 0.5),
                pct(&r, 0.5) - pct(&d, 0.5),
                pct(&d, 0.99),
                pct(&r, 0.99),
                pct(&r, 0.99) - pct(&d, 0.99)
            );
        }
        anyhow::Ok(())
    })?;
    drop(workers);
    Ok(())
}
