//! Aggregate output throughput of a running worker (or any TGI-compatible server) at a sweep
//! of concurrency levels: each of C clients sends `/generate` requests back to back with a
//! fixed prompt and a fixed number of new tokens (`ignore_eos`), for a fixed number of requests.
//! With `--rounds N` the sweep is repeated N times (levels alternating within each round) and
//! medians are reported, with each level's ratio to the first level taken round by round.

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
    /// Rounds of the whole sweep; medians over rounds are reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
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

/// One level's run: output tokens, wall seconds, each request's latency in seconds.
async fn measure(
    client: &reqwest::Client,
    args: &Args,
    c: usize,
    round: usize,
) -> Result<(usize, f64, Vec<f64>)> {
    let started = Instant::now();
    let clients = (0..c).map(|i| {
        let client = client.clone();
        let url = args.url.clone();
        let (n, per) = (args.max_new_tokens, args.requests_per_client);
        tokio::spawn(async move {
            let mut out = Vec::new();
            for r in 0..per {
                let seed = round * 1_000_000 + i * 1000 + r;
                out.push(one_request(&client, &url, n, seed).await?);
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
    Ok((tokens, started.elapsed().as_secs_f64(), latencies))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    // Warm-up.
    one_request(&client, &args.url, 4, 0).await?;
    // rates[level][round]; the levels alternate within each round, so slow spells of a
    // shared machine hit every level alike.
    let levels = &args.concurrency;
    let mut rates = vec![Vec::new(); levels.len()];
    let mut latencies = vec![Vec::new(); levels.len()];
    let mut tokens = vec![0; levels.len()];
    for round in 0..args.rounds {
        for (li, &c) in levels.iter().enumerate() {
            let (n, wall, lat) = measure(&client, &args, c, round).await?;
            rates[li].push(n as f64 / wall);
            tokens[li] += n;
            latencies[li].extend(lat);
        }
    }
    let per_round_ratio = |li: usize| -> Vec<f64> {
        rates[li]
            .iter()
            .zip(&rates[0])
            .map(|(r, b)| r / b)
            .collect()
    };
    println!(
        "{} round(s), {} request(s) per client per level and round, {} new tokens each",
        args.rounds, args.requests_per_client, args.max_new_tokens
    );
    println!(
        "| concurrency | output tokens | output tok/s (median) | min | max | mean latency s | vs concurrency {} (median of rounds) | per-round range |",
        levels[0]
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    for (li, c) in levels.iter().enumerate() {
        let r = &rates[li];
        let min = r.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.iter().copied().fold(0.0, f64::max);
        let lat = &latencies[li];
        let ratios = per_round_ratio(li);
        let (lo, hi) = (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {c} | {} | {:.1} | {min:.1} | {max:.1} | {:.2} | {:.2}x | {lo:.2}x-{hi:.2}x |",
            tokens[li],
            median(r.clone()),
            lat.iter().sum::<f64>() / lat.len() as f64,
            median(ratios.clone()),
        );
    }
    Ok(())
}
