//! Aggregate output throughput of a running worker (or any TGI-compatible server) at a sweep
//! of concurrency levels: each of C clients sends `/generate` requests back to back with a
//! fixed prompt and a fixed number of new tokens (`ignore_eos`), for a fixed number of requests.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

/// Closed-loop throughput at several concurrency levels.
#[derive(Parser)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    url: String,
    /// Concurrency levels to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Requests per client at each level.
    #[arg(long, default_value_t = 3)]
    requests_per_client: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
}

const PROMPT: &str =
    "The history of astronomy is long. People have watched the sky for thousands of years, \
tracking the motion of the Sun, the Moon and the planets. Write a short essay about it:";

async fn one_request(
    client: &reqwest::Client,
    url: &str,
    max_new_tokens: usize,
    seed: usize,
) -> Result<(usize, Duration)> {
    let body = json!({
        "inputs": format!("{PROMPT} ({seed})"),
        "parameters": {"max_new_tokens": max_new_tokens, "ignore_eos": true, "details": true}
    });
    let started = Instant::now();
    let r = client
        .post(format!("{url}/generate"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "status {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let v: Value = r.json().await?;
    let n = v["details"]["generated_tokens"]
        .as_u64()
        .context("no generated_tokens")? as usize;
    Ok((n, started.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    // Warm-up.
    one_request(&client, &args.url, 4, 0).await?;
    println!("| concurrency | requests | output tokens | wall s | output tok/s | mean latency s | vs concurrency {} |", args.concurrency[0]);
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut base = None;
    for &c in &args.concurrency {
        let started = Instant::now();
        let clients = (0..c).map(|i| {
            let client = client.clone();
            let url = args.url.clone();
            let (n, per) = (args.max_new_tokens, args.requests_per_client);
            tokio::spawn(async move {
                let mut out = Vec::new();
                for r in 0..per {
                    out.push(one_request(&client, &url, n, i * 1000 + r).await?);
                }
                anyhow::Ok(out)
            })
        });
        let mut tokens = 0;
        let mut latencies = Vec::new();
        for handle in futures_util::future::join_all(clients).await {
            for (n, d) in handle??.into_iter() {
                tokens += n;
                latencies.push(d.as_secs_f64());
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let rate = tokens as f64 / wall;
        let base_rate = *base.get_or_insert(rate);
        let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
        println!(
            "| {c} | {} | {tokens} | {wall:.1} | {rate:.1} | {mean:.2} | {:.2}x |",
            latencies.len(),
            rate / base_rate
        );
    }
    Ok(())
}
