//! Percentiles and per-level aggregates of samples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::request::Sample;

/// Summary of a set of durations, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; all zero for no values.
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// One slice's share of a level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SliceResult {
    pub requests: u64,
    pub output_tokens: u64,
    pub output_tokens_per_sec: f64,
    pub ttft: Percentiles,
    pub e2e: Percentiles,
}

/// What one load level measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LevelResult {
    /// `c=16` or `rate=4/s`.
    pub label: String,
    pub concurrency: Option<usize>,
    pub rate_per_sec: Option<f64>,
    /// Seconds from the first request sent to the last one finished.
    pub wall_secs: f64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Failures by class (see `Sample::error`).
    pub errors: BTreeMap<String, u64>,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    pub prompt_tokens: u64,
    /// Share of the prompt tokens the server found cached, over the requests that reported
    /// it (OpenAI APIs with a prefix-caching server).
    #[serde(default)]
    pub cached_share: Option<f64>,
    pub output_tokens_per_sec: f64,
    pub requests_per_sec: f64,
    pub ttft: Percentiles,
    /// Inter-token latency (gaps between consecutive tokens, all requests pooled).
    pub itl: Percentiles,
    pub e2e: Percentiles,
    /// By the server's `x-slice` header (`-` when absent).
    pub per_slice: BTreeMap<String, SliceResult>,
    /// Requests a server behind `x-slice` answered (ok or not): what its counters count.
    #[serde(default)]
    pub answered_by_a_slice: u64,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
    /// The server's own step metrics over this level, when it is a migserve worker.
    #[serde(default)]
    pub server_steps: Option<crate::metrics::ServerSteps>,
}

impl LevelResult {
    /// Aggregates `samples` measured over `wall_secs`.
    pub fn from_samples(label: String, samples: &[Sample], wall_secs: f64) -> Self {
        let wall = wall_secs.max(1e-9);
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
        let mut errors = BTreeMap::new();
        for s in samples.iter().filter_map(|s| s.error.as_ref()) {
            *errors.entry(s.clone()).or_insert(0) += 1;
        }
        let output_tokens: u64 = ok.iter().map(|s| s.output_tokens).sum();
        let ttft = |set: &[&Sample]| {
            Percentiles::of(&set.iter().filter_map(|s| s.ttft).collect::<Vec<_>>())
        };
        let e2e = |set: &[&Sample]| Percentiles::of(&set.iter().map(|s| s.e2e).collect::<Vec<_>>());
        let mut by_slice: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
        for s in &ok {
            by_slice
                .entry(s.slice.clone().unwrap_or_else(|| "-".into()))
                .or_default()
                .push(s);
        }
        let per_slice = by_slice
            .into_iter()
            .map(|(slice, set)| {
                let tokens: u64 = set.iter().map(|s| s.output_tokens).sum();
                (
                    slice,
                    SliceResult {
                        requests: set.len() as u64,
                        output_tokens: tokens,
                        output_tokens_per_sec: tokens as f64 / wall,
                        ttft: ttft(&set),
                        e2e: e2e(&set),
                    },
                )
            })
            .collect();
        Self {
            label,
            wall_secs,
            requests_ok: ok.len() as u64,
            requests_failed: (samples.len() - ok.len()) as u64,
            errors,
            output_tokens,
            prompt_tokens: ok.iter().filter_map(|s| s.prompt_tokens).sum(),
            cached_share: cached_share(&ok),
            output_tokens_per_sec: output_tokens as f64 / wall,
            requests_per_sec: ok.len() as f64 / wall,
            ttft: ttft(&ok),
            itl: Percentiles::of(
                &ok.iter()
                    .flat_map(|s| s.itl.iter().copied())
                    .collect::<Vec<_>>(),
            ),
            e2e: e2e(&ok),
            per_slice,
            answered_by_a_slice: samples.iter().filter(|s| s.slice.is_some()).count() as u64,
            ..Default::default()
        }
    }
}

/// Cached over prompt tokens of the samples that report both; `None` when none does.
fn cached_share(ok: &[&Sample]) -> Option<f64> {
    let (cached, prompt) = ok
        .iter()
        .filter_map(|s| Some((s.cached_tokens?, s.prompt_tokens?)))
        .fold((0u64, 0u64), |(c, p), (sc, sp)| (c + sc, p + sp));
    (prompt > 0).then(|| cached as f64 / prompt as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.max, p.count),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&[]).count, 0);
        assert_eq!(Percentiles::of(&[3.0]).p99, 3.0);
    }

    #[test]
    fn levels_split_by_slice_and_count_errors() {
        let ok = |slice: &str, tokens| Sample {
            ttft: Some(0.1),
            e2e: 1.0,
            output_tokens: tokens,
            slice: Some(slice.into()),
            itl: vec![0.01, 0.02],
            ..Default::default()
        };
        let failed = |kind: &str| Sample {
            error: Some(kind.into()),
            ..Default::default()
        };
        let samples = vec![
            ok("a", 10),
            ok("a", 10),
            ok("b", 5),
            failed("http_5xx"),
            failed("http_5xx"),
            failed("connect"),
        ];
        let level = LevelResult::from_samples("c=1".into(), &samples, 2.0);
        assert_eq!((level.requests_ok, level.requests_failed), (3, 3));
        assert_eq!(level.errors["http_5xx"], 2);
        assert_eq!(level.errors["connect"], 1);
        assert_eq!(level.output_tokens, 25);
        assert_eq!(level.output_tokens_per_sec, 12.5);
        assert_eq!(level.per_slice["a"].output_tokens, 20);
        assert_eq!(level.per_slice["b"].requests, 1);
        assert_eq!(level.itl.count, 6);
    }
}
