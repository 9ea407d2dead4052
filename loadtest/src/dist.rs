//! Lengths (prompt or output tokens): fixed, or drawn from a distribution.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Normal};

/// How many tokens a prompt or an output has.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LengthDist {
    /// Always `n`.
    Fixed { n: u64 },
    /// Uniform in `[lo, hi]`.
    Uniform { lo: u64, hi: u64 },
    /// Normal, rounded, at least 1.
    Normal { mean: f64, sd: f64 },
}

impl LengthDist {
    /// Draws one length (at least 1).
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            LengthDist::Fixed { n } => n.max(1),
            LengthDist::Uniform { lo, hi } => rng.random_range(lo..=hi).max(1),
            LengthDist::Normal { mean, sd } => Normal::new(mean, sd)
                .map(|d| d.sample(rng).round().max(1.0) as u64)
                .unwrap_or(mean.max(1.0) as u64),
        }
    }

    /// The expected length.
    pub fn mean(&self) -> f64 {
        match *self {
            LengthDist::Fixed { n } => n as f64,
            LengthDist::Uniform { lo, hi } => (lo + hi) as f64 / 2.0,
            LengthDist::Normal { mean, .. } => mean,
        }
    }
}

impl FromStr for LengthDist {
    type Err = String;

    /// `128`, `uniform:64-256`, `normal:128,32`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?}: expected N, uniform:LO-HI or normal:MEAN,SD");
        if let Some(range) = text.strip_prefix("uniform:") {
            let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
            let (lo, hi): (u64, u64) = (
                lo.trim().parse().map_err(|_| bad())?,
                hi.trim().parse().map_err(|_| bad())?,
            );
            if lo == 0 || hi < lo {
                return Err(format!("{text:?}: need 1 <= LO <= HI"));
            }
            return Ok(LengthDist::Uniform { lo, hi });
        }
        if let Some(params) = text.strip_prefix("normal:") {
            let (mean, sd) = params.split_once(',').ok_or_else(bad)?;
            let (mean, sd): (f64, f64) = (
                mean.trim().parse().map_err(|_| bad())?,
                sd.trim().parse().map_err(|_| bad())?,
            );
            if !(mean >= 1.0 && sd >= 0.0 && mean.is_finite() && sd.is_finite()) {
                return Err(format!("{text:?}: need MEAN >= 1 and SD >= 0"));
            }
            return Ok(LengthDist::Normal { mean, sd });
        }
        let n: u64 = text.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("{text:?}: must be at least 1"));
        }
        Ok(LengthDist::Fixed { n })
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthDist::Fixed { n } => write!(f, "{n}"),
            LengthDist::Uniform { lo, hi } => write!(f, "uniform:{lo}-{hi}"),
            LengthDist::Normal { mean, sd } => write!(f, "normal:{mean},{sd}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_and_samples() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!("64".parse::<LengthDist>().unwrap().sample(&mut rng), 64);
        let u: LengthDist = "uniform:10-20".parse().unwrap();
        assert!((0..100)
            .map(|_| u.sample(&mut rng))
            .all(|n| (10..=20).contains(&n)));
        let n: LengthDist = "normal:100,10".parse().unwrap();
        let mean = (0..2000).map(|_| n.sample(&mut rng) as f64).sum::<f64>() / 2000.0;
        assert!((mean - 100.0).abs() < 2.0, "{mean}");
        for bad in [
            "0",
            "x",
            "uniform:5-1",
            "uniform:0-3",
            "normal:0,1",
            "normal:5",
        ] {
            assert!(bad.parse::<LengthDist>().is_err(), "{bad}");
        }
        assert_eq!(u.to_string(), "uniform:10-20");
    }
}
