//! The load `loadtest` puts on a server (`LoadArgs`) and one measurement of it (`measure`),
//! shared by `loadtest run` and `loadtest compare`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use rand::SeedableRng;
use serde_json::json;
use tokio::sync::watch;

use crate::corpus::PromptSource;
use crate::dist::LengthDist;
use crate::metrics::{self, MetricsCheck, ServerSteps, StepTotals};
use crate::report::Report;
use crate::request::{Api, Target};
use crate::run::{run_level, Level, LoadShape};

/// The load: levels, lengths, prompts, duration.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// API to speak.
    #[arg(long, value_enum, default_value = "tgi")]
    pub api: Api,
    /// Model name (OpenAI `model`; `x-model` header for TGI).
    #[arg(long)]
    pub model: Option<String>,
    /// Closed loop: a sweep of client counts, e.g. `1,4,16`.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Open loop: a sweep of Poisson arrival rates (requests/s), e.g. `0.5,1,2`.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Seconds per level.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Requests per level (stops the level earlier when reached).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Prompt tokens: `N`, `uniform:LO-HI` or `normal:MEAN,SD`.
    #[arg(long, default_value = "128")]
    pub prompt_tokens: LengthDist,
    /// Output tokens, same forms.
    #[arg(long, default_value = "64")]
    pub output_tokens: LengthDist,
    /// Prompts from a JSONL file (`{"prompt": …}` per line) instead of the built-in corpus.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Shared-prefix workload: each request is one of `--prefix-groups` shared prefixes of
    /// about this many tokens, then its own prompt (`--prompt-tokens`); 0: no shared prefix.
    #[arg(long, default_value_t = 0)]
    pub shared_prefix_tokens: u64,
    /// Distinct shared prefixes, used in turn (request i gets prefix i mod G).
    #[arg(long, default_value_t = 1)]
    pub prefix_groups: u64,
    /// Let the server stop at eos (default: generate exactly the drawn output length, with
    /// migserve's `ignore_eos`).
    #[arg(long)]
    pub allow_eos: bool,
    /// JSON object merged into every request body (OpenAI: at the top; TGI: into
    /// `parameters`), e.g. `{"response_format": {"type": "json_object"}}`.
    #[arg(long, value_parser = parse_json_object)]
    pub extra_body: Option<serde_json::Value>,
    /// Requests sent before measuring (not counted).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Most requests in flight in open loop; arrivals beyond are counted as dropped.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadArgs {
    /// The levels: closed-loop ones first, then open-loop ones; `c=1` when none are given.
    pub fn levels(&self) -> anyhow::Result<Vec<Level>> {
        if self.concurrency.contains(&0) {
            bail!("--concurrency values must be at least 1");
        }
        if self.rate.iter().any(|r| !(r.is_finite() && *r >= 1e-3)) {
            bail!("--rate values must be at least 0.001 requests/s");
        }
        let mut levels: Vec<Level> = self
            .concurrency
            .iter()
            .map(|&c| Level::Closed { concurrency: c })
            .chain(self.rate.iter().map(|&rate| Level::Open { rate }))
            .collect();
        if levels.is_empty() {
            levels.push(Level::Closed { concurrency: 1 });
        }
        Ok(levels)
    }

    /// The load shape against `url`.
    pub fn shape(&self, url: &str) -> anyhow::Result<LoadShape> {
        let bounded = |v: f64| v.is_finite() && v > 0.0 && v <= 1e7;
        if !bounded(self.duration) || !bounded(self.timeout) {
            bail!("--duration and --timeout must be positive seconds (at most 1e7)");
        }
        let prompts = match &self.prompts {
            Some(path) => PromptSource::from_jsonl(path).map_err(anyhow::Error::msg)?,
            None => PromptSource::Builtin,
        };
        Ok(LoadShape {
            target: Target {
                url: url.trim_end_matches('/').to_string(),
                api: self.api,
                model: self.model.clone(),
                ignore_eos: !self.allow_eos,
                extra_body: self.extra_body.clone(),
                timeout: Duration::from_secs_f64(self.timeout),
            },
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.output_tokens,
            shared_prefixes: shared_prefixes(
                self.shared_prefix_tokens,
                self.prefix_groups,
                self.seed,
            ),
            prompts,
            duration: Duration::from_secs_f64(self.duration),
            requests: self.requests,
            max_in_flight: self.max_in_flight.max(1),
            seed: self.seed,
            progress: !self.quiet,
        })
    }

    /// The load as recorded in reports.
    pub fn describe(&self) -> serde_json::Value {
        json!({
            "prompt_tokens": self.prompt_tokens.to_string(),
            "output_tokens": self.output_tokens.to_string(),
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "prefix_groups": self.prefix_groups,
            "prompts": self.prompts.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "builtin".into()),
            "duration_secs": self.duration,
            "requests_per_level": self.requests,
            "ignore_eos": !self.allow_eos,
            "seed": self.seed,
        })
    }
}

/// An HTTP client for load: many idle connections, no Nagle.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()?)
}

/// Resolves when Ctrl-C arrives (turns `cancel` true).
pub fn cancel_on_ctrl_c() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the report with what was measured");
            let _ = tx.send(true);
        }
        // Keep the sender: a dropped one would look like a change to every receiver.
        std::future::pending::<()>().await;
    });
    rx
}

/// Runs every level against `url`; stops early on cancel.
pub async fn measure(
    name: &str,
    url: &str,
    load: &LoadArgs,
    client: &reqwest::Client,
    cancel: &watch::Receiver<bool>,
) -> anyhow::Result<Report> {
    let shape = load.shape(url)?;
    let levels = load.levels()?;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for i in 0..load.warmup {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(i);
        let prompt = shape
            .prompts
            .prompt(i, shape.prompt_tokens.sample(&mut rng), &mut rng);
        crate::request::send(client, &shape.target, &prompt, 4, std::time::Instant::now()).await;
    }
    let first_metrics = metrics::fetch_settled(client, url).await;
    let before = first_metrics.as_deref().and_then(metrics::snapshot);
    let mut steps_before = first_metrics.as_deref().and_then(StepTotals::read);
    let mut last_metrics = first_metrics;
    let mut report = Report {
        name: name.to_string(),
        url: url.to_string(),
        api: load.api.name(),
        model: load.model.clone(),
        load: load.describe(),
        started_unix,
        levels: Vec::new(),
        metrics_check: None,
        interrupted: false,
    };
    for level in levels {
        if *cancel.borrow() {
            report.interrupted = true;
            break;
        }
        let mut result = run_level(&shape, client, level, cancel.clone()).await;
        last_metrics = metrics::fetch_settled(client, url).await;
        let steps_after = last_metrics.as_deref().and_then(StepTotals::read);
        if let (Some(b), Some(a)) = (&steps_before, &steps_after) {
            result.server_steps = Some(ServerSteps::between(b, a));
        }
        steps_before = steps_after;
        if !load.quiet {
            eprintln!(
                "{name} {}: {} ok, {} failed, {:.1} output tok/s, TTFT p50 {:.0} ms, e2e p50 {:.0} ms{}{}",
                result.label,
                result.requests_ok,
                result.requests_failed,
                result.output_tokens_per_sec,
                result.ttft.p50 * 1e3,
                result.e2e.p50 * 1e3,
                result
                    .cached_share
                    .map(|s| format!(", {:.0} % of prompt tokens cached", s * 100.0))
                    .unwrap_or_default(),
                result
                    .server_steps
                    .as_ref()
                    .and_then(|s| Some(format!(
                        ", decode step {:.2} ms at batch {:.1}",
                        s.decode_step_ms?,
                        s.decode_batch?
                    )))
                    .unwrap_or_default()
            );
        }
        report.interrupted |= result.interrupted;
        report.levels.push(result);
    }
    let after = last_metrics.as_deref().and_then(metrics::snapshot);
    let comparable =
        matches!((&before, &after), (Some(b), Some(a)) if b.requests_metric == a.requests_metric);
    if let (Some(before), Some(after), false, true) =
        (before, after, report.interrupted, comparable)
    {
        report.metrics_check = Some(MetricsCheck::new(
            &before,
            &after,
            report.server_side_requests(),
            report.levels.iter().map(|l| l.output_tokens).sum(),
        ));
        if let Some(check) = report
            .metrics_check
            .as_ref()
            .filter(|c| c.max_relative_difference > 0.01)
        {
            eprintln!(
                "warning: the server's counters differ from loadtest's by {:.2} % ({check:?})",
                check.max_relative_difference * 100.0
            );
        }
    }
    Ok(report)
}

/// The `groups` shared prefixes of about `tokens` tokens each (none when `tokens` is 0), from
/// the built-in corpus, fixed by `seed`.
fn shared_prefixes(tokens: u64, groups: u64, seed: u64) -> Vec<String> {
    if tokens == 0 {
        return Vec::new();
    }
    (0..groups.max(1))
        .map(|g| {
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ 0x7072_6566 ^ g.wrapping_mul(0x9E37_79B9));
            PromptSource::Builtin.prompt(g, tokens, &mut rng)
        })
        .collect()
}

/// `--extra-body`: a JSON object.
fn parse_json_object(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}
