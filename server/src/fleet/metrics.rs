//! The fleet's series on the front's `/metrics`: loads, load seconds, failures, drains by
//! reason, held requests and state, per model.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::drain::DrainReason;

/// Upper bounds of the load-time histogram, in seconds.
pub const LOAD_SECONDS_BUCKETS: [f64; 10] =
    [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// One model's counters (kept across reloads while the model stays catalogued).
#[derive(Debug, Default)]
pub struct ModelCounters {
    /// Loads that ended ready.
    pub loads: AtomicU64,
    /// Loads that failed.
    pub load_failures: AtomicU64,
    /// Drains begun, by [`DrainReason::ALL`] order.
    pub drains: [AtomicU64; 4],
    /// Requests ever held for a load.
    pub held_total: AtomicU64,
    /// Load seconds: bucket counts (cumulative when written), sum and count.
    load_seconds: Mutex<(Vec<u64>, f64, u64)>,
}

impl ModelCounters {
    /// Records a load that took `secs`.
    pub fn record_load(&self, secs: f64) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.load_seconds.lock() {
            if h.0.is_empty() {
                h.0 = vec![0; LOAD_SECONDS_BUCKETS.len()];
            }
            if let Some(i) = LOAD_SECONDS_BUCKETS.iter().position(|b| secs <= *b) {
                h.0[i] += 1;
            }
            h.1 += secs;
            h.2 += 1;
        }
    }

    /// Records a drain begun for `reason`.
    pub fn record_drain(&self, reason: DrainReason) {
        let i = DrainReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drains[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Drains begun for `reason`.
    pub fn drains(&self, reason: DrainReason) -> u64 {
        DrainReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map(|i| self.drains[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Evictions: drains that made room or freed an idle model's slice.
    pub fn evictions(&self) -> u64 {
        self.drains(DrainReason::Evicted) + self.drains(DrainReason::Idle)
    }
}

/// What one model's series are written from.
pub struct ModelSeries<'a> {
    pub model: &'a str,
    pub state: &'static str,
    pub held: usize,
    pub replicas: usize,
    pub counters: &'a ModelCounters,
}

/// Every model state `migserve_model_state` has a series for.
pub const MODEL_STATES: [&str; 5] = ["unloaded", "loading", "loaded", "draining", "failed"];

/// Appends the fleet's series for `models` to `out` (Prometheus text).
pub fn write(out: &mut String, models: &[ModelSeries<'_>]) {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ModelSeries) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for m in models {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", esc(m.model), value(m));
        }
    };
    family(
        "migserve_model_loads_total",
        "counter",
        "Loads of the model that ended with its worker ready",
        &|m| m.counters.loads.load(Ordering::Relaxed) as f64,
    );
    family(
        "migserve_model_load_failures_total",
        "counter",
        "Loads of the model that failed",
        &|m| m.counters.load_failures.load(Ordering::Relaxed) as f64,
    );
    family(
        "migserve_model_evictions_total",
        "counter",
        "Workers of the model drained to make room for another model or after idle_unload_secs",
        &|m| m.counters.evictions() as f64,
    );
    family(
        "migserve_model_held_requests",
        "gauge",
        "Requests for the model held now while a worker loads",
        &|m| m.held as f64,
    );
    family(
        "migserve_model_held_requests_total",
        "counter",
        "Requests for the model ever held while a worker loaded",
        &|m| m.counters.held_total.load(Ordering::Relaxed) as f64,
    );
    family(
        "migserve_model_replicas",
        "gauge",
        "Workers of the model loading or serving",
        &|m| m.replicas as f64,
    );
    let _ = writeln!(
        out,
        "# HELP migserve_model_drains_total Workers of the model drained, by reason (evicted, idle, unload, reload)"
    );
    let _ = writeln!(out, "# TYPE migserve_model_drains_total counter");
    for m in models {
        for reason in DrainReason::ALL {
            let _ = writeln!(
                out,
                "migserve_model_drains_total{{model=\"{}\",reason=\"{}\"}} {}",
                esc(m.model),
                reason.as_str(),
                m.counters.drains(reason)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP migserve_model_state 1 for the state the model is in"
    );
    let _ = writeln!(out, "# TYPE migserve_model_state gauge");
    for m in models {
        for state in MODEL_STATES {
            let _ = writeln!(
                out,
                "migserve_model_state{{model=\"{}\",state=\"{state}\"}} {}",
                esc(m.model),
                u8::from(m.state == state)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP migserve_model_load_seconds Seconds from starting a worker to its ready line"
    );
    let _ = writeln!(out, "# TYPE migserve_model_load_seconds histogram");
    for m in models {
        let model = esc(m.model);
        let (buckets, sum, count) = match m.counters.load_seconds.lock() {
            Ok(h) => h.clone(),
            Err(_) => continue,
        };
        let mut cumulative = 0;
        for (i, bound) in LOAD_SECONDS_BUCKETS.iter().enumerate() {
            cumulative += buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "migserve_model_load_seconds_bucket{{model=\"{model}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "migserve_model_load_seconds_bucket{{model=\"{model}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "migserve_model_load_seconds_sum{{model=\"{model}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "migserve_model_load_seconds_count{{model=\"{model}\"}} {count}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_count_what_happened() {
        let c = ModelCounters::default();
        c.record_load(1.5);
        c.record_load(40.0);
        c.record_drain(DrainReason::Evicted);
        c.record_drain(DrainReason::Idle);
        c.record_drain(DrainReason::Reload);
        let mut out = String::new();
        write(
            &mut out,
            &[ModelSeries {
                model: "a\"b",
                state: "loaded",
                held: 2,
                replicas: 1,
                counters: &c,
            }],
        );
        for line in [
            "migserve_model_loads_total{model=\"a\\\"b\"} 2",
            "migserve_model_evictions_total{model=\"a\\\"b\"} 2",
            "migserve_model_drains_total{model=\"a\\\"b\",reason=\"reload\"} 1",
            "migserve_model_held_requests{model=\"a\\\"b\"} 2",
            "migserve_model_state{model=\"a\\\"b\",state=\"loaded\"} 1",
            "migserve_model_state{model=\"a\\\"b\",state=\"failed\"} 0",
            "migserve_model_load_seconds_bucket{model=\"a\\\"b\",le=\"2\"} 1",
            "migserve_model_load_seconds_bucket{model=\"a\\\"b\",le=\"60\"} 2",
            "migserve_model_load_seconds_count{model=\"a\\\"b\"} 2",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }
}
