//! Running load levels: closed loop (fixed clients, back to back) and open loop (Poisson
//! arrivals at a rate), with a progress bar and Ctrl-C.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use tokio::sync::watch;

use crate::corpus::PromptSource;
use crate::dist::LengthDist;
use crate::request::{send, Sample, Target};
use crate::stats::LevelResult;

/// One load level.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `concurrency` clients, each sending its next request when the last one ends.
    Closed { concurrency: usize },
    /// Requests arriving at random (exponential gaps) at `rate` per second.
    Open { rate: f64 },
}

impl Level {
    pub fn label(&self) -> String {
        match self {
            Level::Closed { concurrency } => format!("c={concurrency}"),
            Level::Open { rate } => format!("rate={rate}/s"),
        }
    }
}

/// Everything about the load but its levels.
#[derive(Debug, Clone)]
pub struct LoadShape {
    pub target: Target,
    pub prompt_tokens: LengthDist,
    pub output_tokens: LengthDist,
    /// Shared prefixes; request i starts with prefix i mod their number (none: no prefix).
    pub shared_prefixes: Vec<String>,
    pub prompts: PromptSource,
    /// Time per level (new requests stop after it; in-flight ones finish).
    pub duration: Duration,
    /// Or: this many requests per level (whichever comes first).
    pub requests: Option<u64>,
    /// Most requests in flight in open loop (arrivals beyond it are counted as dropped).
    pub max_in_flight: usize,
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

struct Shared {
    shape: LoadShape,
    client: reqwest::Client,
    started: Instant,
    next_index: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    bar: ProgressBar,
    tokens: AtomicU64,
}

impl Shared {
    /// Claims the next request index, or `None` when the level's request budget is spent.
    fn claim(&self) -> Option<u64> {
        let i = self.next_index.fetch_add(1, Ordering::AcqRel);
        match self.shape.requests {
            Some(n) if i >= n => None,
            _ => Some(i),
        }
    }

    async fn one(&self, index: u64) {
        let mut rng =
            StdRng::seed_from_u64(self.shape.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let prompt_len = self.shape.prompt_tokens.sample(&mut rng);
        let max_tokens = self.shape.output_tokens.sample(&mut rng);
        let mut prompt = self.shape.prompts.prompt(index, prompt_len, &mut rng);
        let groups = self.shape.shared_prefixes.len() as u64;
        if groups > 0 {
            let prefix = &self.shape.shared_prefixes[(index % groups) as usize];
            prompt = format!("{prefix}\n\n{prompt}");
        }
        let sample = send(
            &self.client,
            &self.shape.target,
            &prompt,
            max_tokens,
            self.started,
        )
        .await;
        let tokens = self
            .tokens
            .fetch_add(sample.output_tokens, Ordering::Relaxed)
            + sample.output_tokens;
        self.bar.inc(1);
        if !self.bar.is_hidden() {
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            self.bar
                .set_message(format!("{:.1} tok/s", tokens as f64 / secs));
        }
        if let Ok(mut samples) = self.samples.lock() {
            samples.push(sample);
        }
    }
}

/// Runs one level until its duration or request budget is used up, or `cancel` turns true
/// (then in-flight requests are abandoned and the result is marked interrupted).
pub async fn run_level(
    shape: &LoadShape,
    client: &reqwest::Client,
    level: Level,
    mut cancel: watch::Receiver<bool>,
) -> LevelResult {
    let bar = if shape.progress {
        let bar = match shape.requests {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{elapsed_precise}] {bar:30} {pos} requests  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(level.label());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let shared = Arc::new(Shared {
        shape: shape.clone(),
        client: client.clone(),
        started: Instant::now(),
        next_index: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
        bar: bar.clone(),
        tokens: AtomicU64::new(0),
    });
    let deadline = shared.started + shape.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0u64;
    let interrupted = match level {
        Level::Closed { concurrency } => {
            for _ in 0..concurrency.max(1) {
                let shared = shared.clone();
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let Some(index) = shared.claim() else { break };
                        shared.one(index).await;
                    }
                });
            }
            wait_all(&mut tasks, &mut cancel).await
        }
        Level::Open { rate } => {
            let gaps = Exp::new(rate.max(1e-9)).ok();
            let mut rng = StdRng::seed_from_u64(shape.seed.wrapping_add(1));
            let mut next = Instant::now();
            let mut cancelled = false;
            loop {
                if let Some(gaps) = &gaps {
                    // Bounded: a gap past the level's end ends the level anyway.
                    let gap = gaps
                        .sample(&mut rng)
                        .min(shape.duration.as_secs_f64() + 1.0);
                    next += Duration::from_secs_f64(gap);
                }
                if next >= deadline {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = cancel.changed() => { cancelled = true; break; }
                }
                // Reap finished tasks so the in-flight count is current.
                while tasks.try_join_next().is_some() {}
                if tasks.len() >= shape.max_in_flight {
                    dropped += 1;
                    continue;
                }
                let Some(index) = shared.claim() else { break };
                let shared = shared.clone();
                tasks.spawn(async move { shared.one(index).await });
            }
            if cancelled {
                tasks.abort_all();
                true
            } else {
                wait_all(&mut tasks, &mut cancel).await
            }
        }
    };
    bar.finish_and_clear();
    let samples = shared
        .samples
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    // From the first request sent to the last one finished (open loop sends its first after
    // a random gap), or the level's elapsed time when nothing was sent.
    let first = samples
        .iter()
        .map(|s| s.sent_at)
        .fold(f64::INFINITY, f64::min);
    let last = samples
        .iter()
        .map(|s| s.sent_at + s.e2e)
        .fold(0.0, f64::max);
    let wall = if samples.is_empty() {
        shared.started.elapsed().as_secs_f64()
    } else {
        (last - first).max(1e-6)
    };
    let mut result = LevelResult::from_samples(level.label(), &samples, wall);
    match level {
        Level::Closed { concurrency } => result.concurrency = Some(concurrency),
        Level::Open { rate } => result.rate_per_sec = Some(rate),
    }
    if dropped > 0 {
        result
            .errors
            .insert("dropped_over_max_in_flight".into(), dropped);
        result.requests_failed += dropped;
    }
    result.interrupted = interrupted;
    result
}

/// Waits for every task; true when cancelled first (the rest are aborted).
async fn wait_all(
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &mut watch::Receiver<bool>,
) -> bool {
    if *cancel.borrow() {
        tasks.abort_all();
        return true;
    }
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { return false },
            _ = cancel.changed() => { tasks.abort_all(); return true; }
        }
    }
}
