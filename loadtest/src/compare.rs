//! `loadtest compare`: the same load on several `migserve serve` layouts (e.g. one worker on
//! the whole device against one per slice), one report; optionally an isolation experiment.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::load::{cancel_on_ctrl_c, http_client, measure, LoadArgs};
use crate::report::Report;
use crate::run::{run_level, Level};
use crate::serve::ServeProcess;
use crate::stats::LevelResult;
use crate::svg;

/// Arguments of `loadtest compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Layouts as NAME=CONFIG (a `migserve serve` config), two or more; the first is the
    /// baseline ratios are taken against (e.g. `full=configs/cpu-one-worker.toml`).
    #[arg(long = "layout", required = true)]
    pub layouts: Vec<String>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// The migserve binary.
    #[arg(long, default_value = "migserve")]
    pub migserve: PathBuf,
    /// Folder for the report.
    #[arg(long, default_value = "loadtest-compare")]
    pub out: PathBuf,
    /// Also run the isolation experiment on each layout with two or more slices.
    #[arg(long)]
    pub isolation: bool,
    /// Isolation: clients saturating the first slice.
    #[arg(long, default_value_t = 8)]
    pub isolation_heavy: usize,
    /// Isolation: seconds per phase.
    #[arg(long, default_value_t = 20.0)]
    pub isolation_secs: f64,
    /// Seconds to wait for a layout's workers to be ready.
    #[arg(long, default_value_t = 300.0)]
    pub ready_timeout: f64,
}

/// One slice of a layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceInfo {
    pub id: String,
    pub profile: String,
    pub model: String,
}

/// The isolation experiment: a light load on one slice alone, then beside a saturated one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Isolation {
    pub light_slice: String,
    pub heavy_slice: String,
    pub heavy_clients: usize,
    pub alone: LevelResult,
    pub beside_heavy: LevelResult,
    /// The heavy slice's own level while it ran.
    pub heavy: LevelResult,
    /// Light slice e2e p99 beside the heavy load over alone.
    pub e2e_p99_ratio: f64,
    pub ttft_p99_ratio: f64,
}

/// One layout's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayoutResult {
    pub name: String,
    pub config: String,
    pub slices: Vec<SliceInfo>,
    pub report: Report,
    pub isolation: Option<Isolation>,
}

/// A layout that could not be measured, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayoutFailure {
    pub name: String,
    pub config: String,
    pub error: String,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub baseline: String,
    pub layouts: Vec<LayoutResult>,
    /// Layouts that failed (the others are still reported).
    #[serde(default)]
    pub failed: Vec<LayoutFailure>,
    pub interrupted: bool,
}

fn parse_layout(text: &str) -> anyhow::Result<(String, PathBuf)> {
    let (name, path) = text
        .split_once('=')
        .with_context(|| format!("--layout {text:?}: expected NAME=CONFIG"))?;
    if name.is_empty() || path.is_empty() {
        bail!("--layout {text:?}: expected NAME=CONFIG");
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Runs the comparison and writes the report (also after Ctrl-C, marked partial).
pub async fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let layouts = args
        .layouts
        .iter()
        .map(|l| parse_layout(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if layouts.len() < 2 {
        bail!("give at least two --layout NAME=CONFIG");
    }
    args.load.levels()?;
    let client = http_client()?;
    let cancel = cancel_on_ctrl_c();
    let mut result = CompareReport {
        baseline: layouts[0].0.clone(),
        layouts: Vec::new(),
        failed: Vec::new(),
        interrupted: false,
    };
    for (name, config) in &layouts {
        if *cancel.borrow() {
            result.interrupted = true;
            break;
        }
        // One layout failing (it does not start, a worker fails) must not lose the others.
        match measure_layout(&args, name, config, &client, &cancel).await {
            Ok(layout) => {
                result.interrupted |= layout.report.interrupted
                    || layout
                        .isolation
                        .as_ref()
                        .is_some_and(Isolation::interrupted);
                result.layouts.push(layout);
            }
            Err(e) => {
                eprintln!("layout {name}: {e:#}");
                result.interrupted |= *cancel.borrow();
                result.failed.push(LayoutFailure {
                    name: name.clone(),
                    config: config.display().to_string(),
                    error: format!("{e:#}"),
                });
            }
        }
    }
    result.write(&args.out)?;
    println!("{}", result.markdown());
    eprintln!("report written to {}", args.out.display());
    Ok(if result.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

async fn measure_layout(
    args: &CompareArgs,
    name: &str,
    config: &std::path::Path,
    client: &reqwest::Client,
    cancel: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<LayoutResult> {
    eprintln!(
        "layout {name}: starting migserve serve --config {}",
        config.display()
    );
    let timeout = Duration::from_secs_f64(args.ready_timeout);
    let serve = ServeProcess::start(&args.migserve, config, timeout)?;
    let slices = serve.wait_ready(client, timeout, cancel).await?;
    let report = measure(name, &serve.url, &args.load, client, cancel).await?;
    let isolation = if args.isolation && slices.len() >= 2 && !report.interrupted {
        Some(isolation(args, client, &slices, cancel).await?)
    } else {
        None
    };
    serve.stop();
    Ok(LayoutResult {
        name: name.to_string(),
        config: config.display().to_string(),
        slices: slices
            .iter()
            .map(|s| SliceInfo {
                id: s["id"].as_str().unwrap_or_default().to_string(),
                profile: s["profile"].as_str().unwrap_or_default().to_string(),
                model: s["model"].as_str().unwrap_or_default().to_string(),
            })
            .collect(),
        report,
        isolation,
    })
}

impl Isolation {
    /// Whether Ctrl-C cut any of its phases.
    pub fn interrupted(&self) -> bool {
        self.alone.interrupted || self.beside_heavy.interrupted || self.heavy.interrupted
    }
}

async fn isolation(
    args: &CompareArgs,
    client: &reqwest::Client,
    slices: &[Value],
    cancel: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Isolation> {
    let url = |s: &Value| {
        s["url"]
            .as_str()
            .map(str::to_string)
            .context("slice without url")
    };
    let (heavy_slice, light_slice) = (&slices[0], &slices[1]);
    // Each slice's own model (workers are called directly).
    let model = |s: &Value| s["model"].as_str().map(str::to_string);
    let mut light = args.load.shape(&url(light_slice)?)?;
    light.target.model = model(light_slice).or(light.target.model);
    light.duration = Duration::from_secs_f64(args.isolation_secs);
    light.requests = None;
    let mut heavy = args.load.shape(&url(heavy_slice)?)?;
    heavy.target.model = model(heavy_slice).or(heavy.target.model);
    heavy.duration = light.duration;
    heavy.requests = None;
    heavy.progress = false;
    eprintln!("isolation: light load on {} alone", light_slice["id"]);
    let alone = run_level(
        &light,
        client,
        Level::Closed { concurrency: 1 },
        cancel.clone(),
    )
    .await;
    eprintln!(
        "isolation: light load on {} beside {} clients on {}",
        light_slice["id"], args.isolation_heavy, heavy_slice["id"]
    );
    let (beside_heavy, heavy_level) = tokio::join!(
        run_level(
            &light,
            client,
            Level::Closed { concurrency: 1 },
            cancel.clone()
        ),
        run_level(
            &heavy,
            client,
            Level::Closed {
                concurrency: args.isolation_heavy
            },
            cancel.clone()
        ),
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(Isolation {
        light_slice: light_slice["id"].as_str().unwrap_or_default().to_string(),
        heavy_slice: heavy_slice["id"].as_str().unwrap_or_default().to_string(),
        heavy_clients: args.isolation_heavy,
        e2e_p99_ratio: ratio(beside_heavy.e2e.p99, alone.e2e.p99),
        ttft_p99_ratio: ratio(beside_heavy.ttft.p99, alone.ttft.p99),
        alone,
        beside_heavy,
        heavy: heavy_level,
    })
}

impl CompareReport {
    fn baseline(&self) -> Option<&LayoutResult> {
        self.layouts.iter().find(|l| l.name == self.baseline)
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Layout comparison\n\n");
        if self.interrupted {
            out.push_str("**Interrupted: partial report.**\n\n");
        }
        for f in &self.failed {
            let _ = writeln!(
                out,
                "- **{}** (`{}`): **failed**: {}",
                f.name, f.config, f.error
            );
        }
        for l in &self.layouts {
            let slices: Vec<String> = l
                .slices
                .iter()
                .map(|s| format!("{} ({})", s.id, s.profile))
                .collect();
            let _ = writeln!(
                out,
                "- **{}** (`{}`): {} slice(s): {}",
                l.name,
                l.config,
                l.slices.len(),
                slices.join(", ")
            );
        }
        if let Some(first) = self.layouts.first() {
            let _ = writeln!(
                out,
                "\nLoad: `{}`, API {}.\n",
                first.report.load, first.report.api
            );
        }
        let Some(base) = self.baseline() else {
            return out;
        };
        let _ = writeln!(out, "## Throughput (output tokens/s)\n");
        let names: Vec<&str> = self.layouts.iter().map(|l| l.name.as_str()).collect();
        let _ = writeln!(
            out,
            "| level | {} | {} |",
            names.join(" | "),
            names
                .iter()
                .skip(1)
                .map(|n| format!("{n} / {}", base.name))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "|---|{}{}",
            "---|".repeat(names.len()),
            "---|".repeat(names.len() - 1)
        );
        for (i, level) in base.report.levels.iter().enumerate() {
            let tps: Vec<Option<f64>> = self
                .layouts
                .iter()
                .map(|l| l.report.levels.get(i).map(|x| x.output_tokens_per_sec))
                .collect();
            let cells: Vec<String> = tps
                .iter()
                .map(|t| t.map_or("-".into(), |t| format!("{t:.1}")))
                .collect();
            let ratios: Vec<String> = tps
                .iter()
                .skip(1)
                .map(|t| match t {
                    Some(t) if level.output_tokens_per_sec > 0.0 => {
                        format!("{:.2}x", t / level.output_tokens_per_sec)
                    }
                    _ => "-".into(),
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                level.label,
                cells.join(" | "),
                ratios.join(" | ")
            );
        }
        let _ = writeln!(
            out,
            "\n## Throughput per slice against the baseline's whole device\n"
        );
        let _ = writeln!(
            out,
            "Mean output tokens/s of one slice, and that as a share of `{}` at the same level.\n",
            base.name
        );
        let _ = writeln!(
            out,
            "| layout | level | slices | per-slice tok/s (mean) | per slice / {} |",
            base.name
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for l in &self.layouts {
            for (i, level) in l.report.levels.iter().enumerate() {
                let n = l.slices.len().max(1) as f64;
                let per_slice = level.output_tokens_per_sec / n;
                let base_tps = base
                    .report
                    .levels
                    .get(i)
                    .map_or(0.0, |b| b.output_tokens_per_sec);
                let share = if base_tps > 0.0 {
                    format!("{:.2}", per_slice / base_tps)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {per_slice:.1} | {share} |",
                    l.name,
                    level.label,
                    l.slices.len()
                );
            }
        }
        let _ = writeln!(out, "\n## Latency (ms)\n");
        let _ = writeln!(
            out,
            "| level | layout | TTFT p50 | TTFT p99 | ITL p50 | e2e p50 | e2e p99 | failed |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for (i, level) in base.report.levels.iter().enumerate() {
            for l in &self.layouts {
                if let Some(x) = l.report.levels.get(i) {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                        level.label,
                        l.name,
                        x.ttft.p50 * 1e3,
                        x.ttft.p99 * 1e3,
                        x.itl.p50 * 1e3,
                        x.e2e.p50 * 1e3,
                        x.e2e.p99 * 1e3,
                        x.requests_failed
                    );
                }
            }
        }
        for l in &self.layouts {
            if let Some(iso) = &l.isolation {
                let _ = writeln!(out, "\n## Isolation on `{}`\n", l.name);
                let _ = writeln!(
                    out,
                    "One client on slice {} alone, then beside {} clients saturating slice {} ({:.1} output tok/s there).\n",
                    iso.light_slice, iso.heavy_clients, iso.heavy_slice, iso.heavy.output_tokens_per_sec
                );
                let _ = writeln!(
                    out,
                    "| light slice | TTFT p99 (ms) | e2e p50 (ms) | e2e p99 (ms) | output tok/s |"
                );
                let _ = writeln!(out, "|---|---|---|---|---|");
                for (what, x) in [
                    ("alone", &iso.alone),
                    ("beside the heavy load", &iso.beside_heavy),
                ] {
                    let _ = writeln!(
                        out,
                        "| {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        x.ttft.p99 * 1e3,
                        x.e2e.p50 * 1e3,
                        x.e2e.p99 * 1e3,
                        x.output_tokens_per_sec
                    );
                }
                let _ = writeln!(
                    out,
                    "\nLight slice p99 beside / alone: e2e {:.2}x, TTFT {:.2}x.",
                    iso.e2e_p99_ratio, iso.ttft_p99_ratio
                );
            }
        }
        out.push_str("\n![latency against throughput](latency-throughput.svg)\n\n![throughput by layout](throughput.svg)\n");
        for l in &self.layouts {
            let _ = writeln!(out, "\n![{} per slice](per-slice-{}.svg)", l.name, l.name);
        }
        out.push_str("\n## Each layout\n\n");
        for l in &self.layouts {
            out.push_str(&l.report.markdown());
            out.push('\n');
        }
        out
    }

    /// Writes compare.json, compare.md and the charts.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("compare.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join("compare.md"), self.markdown())?;
        let reports: Vec<&Report> = self.layouts.iter().map(|l| &l.report).collect();
        std::fs::write(
            dir.join("latency-throughput.svg"),
            Report::latency_chart(&reports),
        )?;
        if let Some(base) = self.baseline() {
            let groups: Vec<String> = base.report.levels.iter().map(|l| l.label.clone()).collect();
            let series: Vec<(String, Vec<f64>)> = self
                .layouts
                .iter()
                .map(|l| {
                    (
                        l.name.clone(),
                        l.report
                            .levels
                            .iter()
                            .map(|x| x.output_tokens_per_sec)
                            .collect(),
                    )
                })
                .collect();
            std::fs::write(
                dir.join("throughput.svg"),
                svg::bar_chart(
                    "Output tokens/s by layout",
                    "output tokens/s",
                    &groups,
                    &series,
                ),
            )?;
        }
        for l in &self.layouts {
            std::fs::write(
                dir.join(format!("per-slice-{}.svg", l.name)),
                l.report.per_slice_chart(),
            )?;
        }
        Ok(())
    }
}
