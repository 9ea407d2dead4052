//! Restart policy, pure logic: exponential backoff and a sliding crash window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delays between restarts: `initial`, doubled per crash in a row, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next restart.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        self.attempt = self.attempt.saturating_add(1);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Called once a worker has stayed up long enough: the next crash starts from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Counts crashes within a sliding window; too many means the slice has failed.
#[derive(Debug, Clone)]
pub struct CrashWindow {
    limit: usize,
    window: Duration,
    crashes: VecDeque<Instant>,
}

impl CrashWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            window,
            crashes: VecDeque::new(),
        }
    }

    /// Records a crash at `now`; true when the limit is reached within the window.
    pub fn record(&mut self, now: Instant) -> bool {
        while let Some(&first) = self.crashes.front() {
            if now.duration_since(first) > self.window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        self.crashes.push_back(now);
        self.crashes.len() >= self.limit
    }

    /// Crashes currently inside the window.
    pub fn count(&self) -> usize {
        self.crashes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn crash_window_trips_only_within_the_window() {
        let start = Instant::now();
        let mut w = CrashWindow::new(3, Duration::from_secs(60));
        assert!(!w.record(start));
        assert!(!w.record(start + Duration::from_secs(10)));
        // The first crash has left the window: two crashes inside it.
        assert!(!w.record(start + Duration::from_secs(65)));
        assert_eq!(w.count(), 2);
        assert!(w.record(start + Duration::from_secs(66)));
    }
}
