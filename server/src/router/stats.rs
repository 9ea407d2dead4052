//! What the router measures per slice: requests in flight, queued tokens, moving averages of
//! time to first token and time per output token, recent errors, throughput.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cost::{CostEstimate, CostModel, CostSample};

/// Weight of the newest sample in the moving averages.
const EWMA_ALPHA: f64 = 0.2;
/// Outcomes kept for the error rate.
const OUTCOME_WINDOW: usize = 50;
/// Span of the throughput window.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// An exponentially weighted moving average; `None` until the first sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ewma(Option<f64>);

impl Ewma {
    pub fn add(&mut self, sample: f64) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        self.0 = Some(match self.0 {
            Some(old) => old + EWMA_ALPHA * (sample - old),
            None => sample,
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.0
    }
}

#[derive(Debug, Default)]
struct Measured {
    ttft: Ewma,
    tpot: Ewma,
    /// true = error, most recent last.
    outcomes: VecDeque<bool>,
    /// (finished at, tokens) for the throughput window.
    completions: VecDeque<(Instant, u64)>,
    cost: CostModel,
}

impl Measured {
    fn push_outcome(&mut self, error: bool) {
        if self.outcomes.len() == OUTCOME_WINDOW {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(error);
    }
}

/// Counters and averages of one slice.
#[derive(Debug, Default)]
pub struct SliceStats {
    in_flight: AtomicUsize,
    queued_tokens: AtomicU64,
    pending_prefill: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    resumes: AtomicU64,
    generated_tokens: AtomicU64,
    measured: Mutex<Measured>,
}

/// A snapshot for policies, `/slices` and metrics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub in_flight: usize,
    pub queued_tokens: u64,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    /// Streams broken here that went on on another slice.
    pub resumes: u64,
    pub generated_tokens: u64,
    /// Moving average of time to first token, seconds.
    pub ttft_secs: Option<f64>,
    /// Moving average of time per output token, seconds.
    pub tpot_secs: Option<f64>,
    /// Share of errors among the last 50 outcomes.
    pub error_rate: f64,
    /// Output tokens per second over the last 30 s.
    pub tokens_per_second: f64,
    /// Uncached prompt tokens of requests in flight without a first token yet (estimated).
    pub pending_prefill_tokens: u64,
    /// Measured seconds per uncached prompt token.
    pub prefill_secs_per_token: Option<f64>,
    /// Measured time per output token = `[0] + [1] x running requests`, seconds.
    pub decode_secs_per_token: Option<[f64; 2]>,
}

/// What routing policies read of a slice.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadView {
    pub in_flight: usize,
    pub queued_tokens: u64,
    pub pending_prefill_tokens: u64,
    /// Moving average of seconds per output token.
    pub tpot: Option<f64>,
    pub cost: CostEstimate,
}

impl SliceStats {
    /// Counts a request of `tokens` tokens (`prefill` of them prompt tokens to compute) as
    /// sent to this slice until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>, tokens: u64, prefill: u64) -> InFlight {
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.admitted(tokens, prefill, before)
    }

    /// Like [`SliceStats::begin`], but only while fewer than `limit` requests are in flight.
    pub fn try_begin(
        self: &Arc<Self>,
        tokens: u64,
        prefill: u64,
        limit: usize,
    ) -> Option<InFlight> {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(self.admitted(tokens, prefill, before))
    }

    fn admitted(self: &Arc<Self>, tokens: u64, prefill: u64, before: usize) -> InFlight {
        add(&self.queued_tokens, tokens);
        add(&self.pending_prefill, prefill);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
            tokens,
            prefill,
            prefilled: false,
            batch_at_start: before + 1,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// A request this slice failed (connection error, 5xx, broken stream).
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.push_outcome(true);
    }

    /// A request moved to another slice after this one failed it.
    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream this slice broke went on on another slice.
    pub fn record_resume(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
    }

    /// A finished request: its time to first token (if measured), time per output token after
    /// the first (if measured), output tokens, and what it showed of the slice's costs.
    pub fn record_success(
        &self,
        ttft: Option<f64>,
        tpot: Option<f64>,
        tokens: u64,
        cost: CostSample,
    ) {
        self.generated_tokens.fetch_add(tokens, Ordering::Relaxed);
        if let Ok(mut m) = self.measured.lock() {
            m.cost.record(cost);
            if let Some(t) = ttft {
                m.ttft.add(t);
            }
            if let Some(t) = tpot {
                m.tpot.add(t);
            }
            let now = Instant::now();
            m.completions.push_back((now, tokens));
            while m
                .completions
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
            {
                m.completions.pop_front();
            }
            m.push_outcome(false);
        }
    }

    fn push_outcome(&self, error: bool) {
        if let Ok(mut m) = self.measured.lock() {
            m.push_outcome(error);
        }
    }

    /// What a routing policy needs, cheaply.
    pub fn load(&self) -> LoadView {
        let (tpot, cost) = self
            .measured
            .lock()
            .map(|m| (m.tpot.get(), m.cost.estimate()))
            .unwrap_or_default();
        LoadView {
            in_flight: self.in_flight.load(Ordering::Acquire),
            queued_tokens: self.queued_tokens.load(Ordering::Acquire),
            pending_prefill_tokens: self.pending_prefill.load(Ordering::Acquire),
            tpot,
            cost,
        }
    }

    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut snap = StatsSnapshot {
            in_flight: self.in_flight.load(Ordering::Acquire),
            queued_tokens: self.queued_tokens.load(Ordering::Acquire),
            pending_prefill_tokens: self.pending_prefill.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
            generated_tokens: self.generated_tokens.load(Ordering::Relaxed),
            ..Default::default()
        };
        if let Ok(m) = self.measured.lock() {
            snap.ttft_secs = m.ttft.get();
            snap.tpot_secs = m.tpot.get();
            let cost = m.cost.estimate();
            snap.prefill_secs_per_token = cost.prefill_secs_per_token;
            snap.decode_secs_per_token = cost.decode.map(|(base, per_row)| [base, per_row]);
            if !m.outcomes.is_empty() {
                snap.error_rate =
                    m.outcomes.iter().filter(|e| **e).count() as f64 / m.outcomes.len() as f64;
            }
            let now = Instant::now();
            let tokens: u64 = m
                .completions
                .iter()
                .filter(|(at, _)| now.duration_since(*at) <= RATE_WINDOW)
                .map(|(_, t)| t)
                .sum();
            snap.tokens_per_second = tokens as f64 / RATE_WINDOW.as_secs_f64();
        }
        snap
    }
}

fn add(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
        Some(q.saturating_add(n))
    });
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
        Some(q.saturating_sub(n))
    });
}

/// A request counted as in flight on a slice; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<SliceStats>,
    tokens: u64,
    /// Prompt tokens the slice was expected to compute (not cached).
    prefill: u64,
    /// Whether they are no longer counted as waiting (the first token came).
    prefilled: bool,
    /// Requests in flight on the slice when this one was sent, itself included.
    batch_at_start: usize,
}

impl InFlight {
    /// The slice's stats.
    pub fn stats(&self) -> &SliceStats {
        &self.stats
    }

    /// The first token came: the prompt no longer waits for prefill.
    pub fn first_token(&mut self) {
        if !std::mem::replace(&mut self.prefilled, true) {
            sub(&self.stats.pending_prefill, self.prefill);
        }
    }

    /// Prompt tokens the slice was expected to compute (not cached).
    pub fn prefill_tokens(&self) -> u64 {
        self.prefill
    }

    /// The mean of the slice's requests in flight when this one was sent and now: the batch
    /// its tokens were decoded in, roughly.
    pub fn mean_batch(&self) -> f64 {
        (self.batch_at_start + self.stats.in_flight()) as f64 / 2.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        sub(&self.stats.queued_tokens, self.tokens);
        self.first_token();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_and_queued_tokens_follow_the_guards() {
        let stats = Arc::new(SliceStats::default());
        let a = stats.begin(100, 90);
        let mut b = stats.begin(20, 10);
        assert_eq!(
            (stats.snapshot().in_flight, stats.snapshot().queued_tokens),
            (2, 120)
        );
        assert_eq!(stats.snapshot().pending_prefill_tokens, 100);
        b.first_token();
        assert_eq!(stats.snapshot().pending_prefill_tokens, 90);
        assert_eq!(b.mean_batch(), 2.0);
        drop(a);
        assert_eq!(stats.snapshot().pending_prefill_tokens, 0);
        assert_eq!(
            (stats.snapshot().in_flight, stats.snapshot().queued_tokens),
            (1, 20)
        );
        drop(b);
        assert_eq!(stats.snapshot().in_flight, 0);
        assert_eq!(stats.snapshot().requests, 2);
        let held = stats.try_begin(1, 0, 1).expect("room for one");
        assert!(stats.try_begin(1, 0, 1).is_none(), "limit reached");
        drop(held);
        assert!(stats.try_begin(1, 0, 1).is_some());
    }

    #[test]
    fn averages_and_error_rate() {
        let stats = SliceStats::default();
        let cost = CostSample {
            prefill: Some((0.5, 500)),
            decode: Some((0.1, 1.0)),
        };
        stats.record_success(Some(1.0), Some(0.1), 10, cost);
        stats.record_success(Some(2.0), None, 10, CostSample::default());
        stats.record_error();
        stats.record_error();
        let s = stats.snapshot();
        assert!((s.ttft_secs.unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(s.tpot_secs, Some(0.1));
        assert_eq!(s.prefill_secs_per_token, Some(0.001));
        assert!(s.decode_secs_per_token.is_some());
        assert_eq!(s.error_rate, 0.5);
        assert_eq!(s.generated_tokens, 20);
        assert!(s.tokens_per_second > 0.0);
    }
}
