//! The run report: JSON (everything), a Markdown summary and SVG charts.

use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::MetricsCheck;
use crate::stats::LevelResult;
use crate::svg;

/// One run against one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// A name for this run (a layout name in `compare`).
    pub name: String,
    pub url: String,
    pub api: String,
    pub model: Option<String>,
    /// The load: prompt and output lengths, duration or requests per level, seed.
    pub load: serde_json::Value,
    /// Unix seconds at the start.
    pub started_unix: u64,
    pub levels: Vec<LevelResult>,
    /// loadtest's counts against the server's own metrics, when it exposes them.
    pub metrics_check: Option<MetricsCheck>,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
}

fn ms(seconds: f64) -> String {
    format!("{:.1}", seconds * 1e3)
}

impl Report {
    /// Requests the server's own counters should show: those a slice answered (`x-slice`,
    /// failures included) when the server names slices, else successes plus HTTP and stream
    /// failures.
    pub fn server_side_requests(&self) -> u64 {
        if self.levels.iter().any(|l| l.answered_by_a_slice > 0) {
            return self.levels.iter().map(|l| l.answered_by_a_slice).sum();
        }
        self.levels
            .iter()
            .map(|l| {
                l.requests_ok
                    + l.errors
                        .iter()
                        .filter(|(k, _)| k.starts_with("http_") || k.starts_with("stream_"))
                        .map(|(_, v)| v)
                        .sum::<u64>()
            })
            .sum()
    }

    /// Markdown: one table of levels, errors, per-slice breakdown, metrics check.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## {}\n", self.name);
        let _ = writeln!(
            out,
            "Target `{}` ({}{}), load `{}`{}.\n",
            self.url,
            self.api,
            self.model
                .as_ref()
                .map(|m| format!(", model `{m}`"))
                .unwrap_or_default(),
            self.load,
            if self.interrupted {
                " — **interrupted (partial report)**"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "| level | ok | failed | output tok/s | req/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p99 (ms) | e2e p50 / p90 / p99 (ms) |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for l in &self.levels {
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {:.1} | {:.2} | {} / {} / {} | {} / {} | {} / {} / {} |",
                l.label,
                if l.interrupted { " (partial)" } else { "" },
                l.requests_ok,
                l.requests_failed,
                l.output_tokens_per_sec,
                l.requests_per_sec,
                ms(l.ttft.p50),
                ms(l.ttft.p90),
                ms(l.ttft.p99),
                ms(l.itl.p50),
                ms(l.itl.p99),
                ms(l.e2e.p50),
                ms(l.e2e.p90),
                ms(l.e2e.p99),
            );
        }
        if self.levels.iter().any(|l| l.cached_share.is_some()) {
            let shares: Vec<String> = self
                .levels
                .iter()
                .filter_map(|l| Some(format!("{} {:.0} %", l.label, l.cached_share? * 100.0)))
                .collect();
            let _ = writeln!(
                out,
                "\nPrompt tokens the server found cached: {}.",
                shares.join(", ")
            );
        }
        if self.levels.iter().any(|l| l.server_steps.is_some()) {
            self.steps_table(&mut out);
        }
        if self.levels.iter().any(|l| !l.errors.is_empty()) {
            let _ = writeln!(out, "\nErrors by type:\n");
            for l in self.levels.iter().filter(|l| !l.errors.is_empty()) {
                let list: Vec<String> = l.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(out, "- {}: {}", l.label, list.join(", "));
            }
        }
        let slices: Vec<&String> = {
            let mut s: Vec<&String> = self
                .levels
                .iter()
                .flat_map(|l| l.per_slice.keys())
                .collect();
            s.sort();
            s.dedup();
            s
        };
        if slices.len() > 1 || slices.first().is_some_and(|s| *s != "-") {
            let _ = writeln!(
                out,
                "\nPer slice (`x-slice`): requests, output tok/s, e2e p50 (ms):\n"
            );
            let _ = writeln!(
                out,
                "| level | {} |",
                slices
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(out, "|---|{}", "---|".repeat(slices.len()));
            for l in &self.levels {
                let cells: Vec<String> = slices
                    .iter()
                    .map(|s| match l.per_slice.get(*s) {
                        Some(r) => format!(
                            "{} / {:.1} / {}",
                            r.requests,
                            r.output_tokens_per_sec,
                            ms(r.e2e.p50)
                        ),
                        None => "-".into(),
                    })
                    .collect();
                let _ = writeln!(out, "| {} | {} |", l.label, cells.join(" | "));
            }
        }
        if let Some(c) = &self.metrics_check {
            let _ = writeln!(
                out,
                "\nServer metrics (`{}`): {} requests and {} tokens counted by the server, {} and {} by loadtest (largest difference {:.2} %{}).",
                c.metric,
                c.server_requests,
                c.server_tokens,
                c.loadtest_requests,
                c.loadtest_tokens,
                c.max_relative_difference * 100.0,
                if c.max_relative_difference > 0.01 { ": **more than 1 %, check the run**" } else { "" }
            );
        }
        out
    }

    /// The server's step metrics per level (a migserve worker's `migserve_step_*`).
    fn steps_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nServer steps (the worker's `/metrics`; on a GPU `forward` is the time to enqueue its kernels unless the worker runs with `--profile-steps`):\n"
        );
        let _ = writeln!(
            out,
            "| level | decode steps | decode batch | decode step (ms) | prefill steps | prefill step (ms) | schedule / forward / sample / emit (ms per step) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        let opt = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        for l in &self.levels {
            let Some(s) = &l.server_steps else {
                continue;
            };
            let phases: Vec<String> = ["schedule", "forward", "sample", "emit"]
                .iter()
                .map(|p| opt(s.phase_ms.get(*p).copied(), 3))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                l.label,
                s.decode_steps,
                opt(s.decode_batch, 1),
                opt(s.decode_step_ms, 3),
                s.prefill_steps,
                opt(s.prefill_step_ms, 3),
                phases.join(" / ")
            );
        }
    }

    /// Latency against throughput, one point per level: TTFT and e2e p50 and p99.
    pub fn latency_chart(reports: &[&Report]) -> String {
        let mut series = Vec::new();
        for r in reports {
            let pts = |f: fn(&LevelResult) -> f64| -> Vec<(f64, f64)> {
                r.levels
                    .iter()
                    .map(|l| (l.output_tokens_per_sec, f(l) * 1e3))
                    .collect()
            };
            let prefix = if reports.len() > 1 {
                format!("{} ", r.name)
            } else {
                String::new()
            };
            series.push((format!("{prefix}e2e p50"), pts(|l| l.e2e.p50)));
            series.push((format!("{prefix}e2e p99"), pts(|l| l.e2e.p99)));
            series.push((format!("{prefix}TTFT p99"), pts(|l| l.ttft.p99)));
        }
        svg::line_chart(
            "Latency against throughput",
            "output tokens/s",
            "milliseconds",
            &series,
        )
    }

    /// Output tokens/s per slice at each level.
    pub fn per_slice_chart(&self) -> String {
        let groups: Vec<String> = self.levels.iter().map(|l| l.label.clone()).collect();
        let mut slices: Vec<String> = self
            .levels
            .iter()
            .flat_map(|l| l.per_slice.keys().cloned())
            .collect();
        slices.sort();
        slices.dedup();
        let series: Vec<(String, Vec<f64>)> = slices
            .iter()
            .map(|s| {
                let v = self
                    .levels
                    .iter()
                    .map(|l| l.per_slice.get(s).map_or(0.0, |r| r.output_tokens_per_sec))
                    .collect();
                (s.clone(), v)
            })
            .collect();
        svg::bar_chart(
            &format!("{}: output tokens/s per slice", self.name),
            "output tokens/s",
            &groups,
            &series,
        )
    }

    /// Writes `result.json`, `summary.md`, `latency-throughput.svg` and `per-slice.svg`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("result.json"), json)?;
        let mut md = format!("# loadtest report\n\n{}", self.markdown());
        md.push_str("\n![latency against throughput](latency-throughput.svg)\n\n![per-slice throughput](per-slice.svg)\n");
        std::fs::write(dir.join("summary.md"), md)?;
        std::fs::write(
            dir.join("latency-throughput.svg"),
            Report::latency_chart(&[self]),
        )?;
        std::fs::write(dir.join("per-slice.svg"), self.per_slice_chart())?;
        Ok(())
    }
}
