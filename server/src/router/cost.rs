//! The router's cost model of one slice: what an uncached prompt token costs to prefill there,
//! and what an output token costs at a given running batch, each measured from the requests
//! the slice served, decaying with age so a slice judged slow once is re-measured.

use std::time::{Duration, Instant};

/// Weight of the newest sample.
const ALPHA: f64 = 0.2;
/// Age at which a slice's own estimate counts half, the fleet's mean the other half.
pub const HALF_LIFE: Duration = Duration::from_secs(30);

/// A ratio of exponentially weighted sums (seconds over tokens), so long prompts weigh more
/// than short ones.
#[derive(Debug, Clone, Copy, Default)]
struct WeightedRatio {
    secs: f64,
    tokens: f64,
}

impl WeightedRatio {
    fn add(&mut self, secs: f64, tokens: f64) {
        self.secs = (1.0 - ALPHA) * self.secs + ALPHA * secs;
        self.tokens = (1.0 - ALPHA) * self.tokens + ALPHA * tokens;
    }

    fn get(&self) -> Option<f64> {
        (self.tokens > 0.0).then(|| self.secs / self.tokens)
    }
}

/// Time per output token as a line in the running batch, fitted by exponentially weighted
/// least squares over (batch, seconds per token) samples.
#[derive(Debug, Clone, Copy, Default)]
struct DecodeFit {
    n: f64,
    b: f64,
    bb: f64,
    t: f64,
    bt: f64,
}

impl DecodeFit {
    fn add(&mut self, batch: f64, tpot: f64) {
        let keep = 1.0 - ALPHA;
        self.n = keep * self.n + ALPHA;
        self.b = keep * self.b + ALPHA * batch;
        self.bb = keep * self.bb + ALPHA * batch * batch;
        self.t = keep * self.t + ALPHA * tpot;
        self.bt = keep * self.bt + ALPHA * batch * tpot;
    }

    /// (seconds per token of a step of its own, added seconds per running request).
    fn line(&self) -> Option<(f64, f64)> {
        if self.n <= 0.0 {
            return None;
        }
        let (mean_b, mean_t) = (self.b / self.n, self.t / self.n);
        let var_b = self.bb / self.n - mean_b * mean_b;
        let cov = self.bt / self.n - mean_b * mean_t;
        // Batches too alike to tell the slope: half of the time is fixed, half per request
        // (a middle ground between a GPU's flat and a CPU's proportional step).
        if var_b < 0.25 {
            let per_row = mean_t / (2.0 * mean_b.max(1.0));
            return Some(((mean_t - per_row * mean_b).max(0.0), per_row));
        }
        let slope = (cov / var_b).max(0.0);
        let base = mean_t - slope * mean_b;
        Some(if base < 0.0 {
            (0.0, mean_t / mean_b.max(1.0))
        } else {
            (base, slope)
        })
    }
}

/// What one slice's requests have shown of its speed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CostModel {
    prefill: WeightedRatio,
    decode: DecodeFit,
    updated: Option<Instant>,
}

/// One finished request as the cost model reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CostSample {
    /// Seconds from admission on the worker to the first token, and the prompt tokens that
    /// took (the uncached ones), when known.
    pub prefill: Option<(f64, u64)>,
    /// Seconds per output token after the first, and the running batch it was measured at.
    pub decode: Option<(f64, f64)>,
}

impl CostModel {
    pub fn record(&mut self, sample: CostSample) {
        if let Some((secs, tokens)) = sample.prefill {
            if secs.is_finite() && secs >= 0.0 && tokens > 0 {
                self.prefill.add(secs, tokens as f64);
                self.updated = Some(Instant::now());
            }
        }
        if let Some((tpot, batch)) = sample.decode {
            if tpot.is_finite() && tpot > 0.0 && batch.is_finite() {
                self.decode.add(batch.max(1.0), tpot);
                self.updated = Some(Instant::now());
            }
        }
    }

    /// The slice's estimates now.
    pub fn estimate(&self) -> CostEstimate {
        CostEstimate {
            prefill_secs_per_token: self.prefill.get(),
            decode: self.decode.line(),
            age: self.updated.map(|at| at.elapsed()),
        }
    }
}

/// A slice's estimated costs, before filling in from the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostEstimate {
    /// Seconds per uncached prompt token.
    pub prefill_secs_per_token: Option<f64>,
    /// Time per output token = `.0 + .1 x running requests`.
    pub decode: Option<(f64, f64)>,
    /// Time since the last sample.
    pub age: Option<Duration>,
}

impl CostEstimate {
    /// Seconds per output token with `batch` requests running.
    pub fn tpot_at(&self, batch: f64) -> Option<f64> {
        self.decode.map(|(base, per_row)| base + per_row * batch)
    }

    /// This estimate with what is unknown taken from `fleet` and what is old pulled toward it
    /// (weight of its own halves every [`HALF_LIFE`] without a sample).
    pub fn against(&self, fleet: &CostEstimate) -> CostEstimate {
        let own = match self.age {
            Some(age) => 0.5f64.powf(age.as_secs_f64() / HALF_LIFE.as_secs_f64()),
            None => 0.0,
        };
        let mix = |mine: f64, theirs: f64| own * mine + (1.0 - own) * theirs;
        let prefill = match (self.prefill_secs_per_token, fleet.prefill_secs_per_token) {
            (Some(m), Some(t)) => Some(mix(m, t)),
            (m, t) => m.or(t),
        };
        let decode = match (self.decode, fleet.decode) {
            (Some(m), Some(t)) => Some((mix(m.0, t.0), mix(m.1, t.1))),
            (m, t) => m.or(t),
        };
        CostEstimate {
            prefill_secs_per_token: prefill,
            decode,
            age: self.age,
        }
    }

    /// The mean of the known estimates of `slices` (what a slice not yet measured is assumed
    /// to cost), as of now.
    pub fn fleet(slices: &[CostEstimate]) -> CostEstimate {
        let mean = |values: Vec<f64>| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let decodes: Vec<(f64, f64)> = slices.iter().filter_map(|s| s.decode).collect();
        CostEstimate {
            prefill_secs_per_token: mean(
                slices
                    .iter()
                    .filter_map(|s| s.prefill_secs_per_token)
                    .collect(),
            ),
            decode: mean(decodes.iter().map(|d| d.0).collect())
                .zip(mean(decodes.iter().map(|d| d.1).collect())),
            // Current: against a default it keeps what it knows.
            age: Some(Duration::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(prefill: Option<(f64, u64)>, decode: Option<(f64, f64)>) -> CostSample {
        CostSample { prefill, decode }
    }

    #[test]
    fn prefill_and_decode_are_measured_apart() {
        let mut m = CostModel::default();
        // A long prompt: 3 s of prefill for 3,000 tokens, then 26 ms per token.
        m.record(sample(Some((3.0, 3000)), Some((0.026, 1.0))));
        let e = m.estimate();
        assert!((e.prefill_secs_per_token.unwrap() - 0.001).abs() < 1e-9);
        assert!((e.tpot_at(1.0).unwrap() - 0.026).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn the_decode_line_follows_the_batch() {
        let mut m = CostModel::default();
        for _ in 0..20 {
            for batch in [1.0, 4.0, 8.0] {
                m.record(sample(None, Some((0.010 + 0.005 * batch, batch))));
            }
        }
        let (base, per_row) = m.estimate().decode.unwrap();
        assert!((base - 0.010).abs() < 1e-6 && (per_row - 0.005).abs() < 1e-6);
        // One batch size only: half fixed, half per request, through the measured point.
        let mut m = CostModel::default();
        m.record(sample(None, Some((0.040, 4.0))));
        let e = m.estimate();
        assert!((e.tpot_at(4.0).unwrap() - 0.040).abs() < 1e-9);
        assert!(e.tpot_at(8.0).unwrap() > e.tpot_at(4.0).unwrap());
    }

    #[test]
    fn old_estimates_return_to_the_fleet_mean() {
        let fresh = CostEstimate {
            prefill_secs_per_token: Some(0.004),
            decode: Some((0.0, 0.04)),
            age: Some(Duration::ZERO),
        };
        let fleet = CostEstimate {
            prefill_secs_per_token: Some(0.001),
            decode: Some((0.0, 0.01)),
            age: None,
        };
        assert_eq!(fresh.against(&fleet).decode, fresh.decode);
        let stale = CostEstimate {
            age: Some(HALF_LIFE),
            ..fresh
        };
        let blended = stale.against(&fleet);
        assert!(
            (blended.decode.unwrap().1 - 0.025).abs() < 1e-9,
            "{blended:?}"
        );
        assert!((blended.prefill_secs_per_token.unwrap() - 0.0025).abs() < 1e-9);
        let unknown = CostEstimate::default().against(&fleet);
        assert_eq!(unknown.decode, fleet.decode);
        let mean = CostEstimate::fleet(&[fresh, fleet, CostEstimate::default()]);
        assert!((mean.decode.unwrap().1 - 0.025).abs() < 1e-9);
    }
}
