//! Choosing a slice for a request, pure logic over load snapshots.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::config::RoutingPolicy;

/// What a policy sees of one admissible candidate slice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub in_flight: usize,
    pub queued_tokens: u64,
    /// Measured seconds per output token, when known.
    pub secs_per_token: Option<f64>,
}

/// Scores within this factor of the best count as a tie.
const NEAR_TIE: f64 = 1.10;

/// Picks one of `loads` (all admissible; at least one) for a request of `tokens` tokens.
pub fn choose(
    policy: RoutingPolicy,
    loads: &[Load],
    tokens: u64,
    turn: &AtomicUsize,
    rng: &mut impl Rng,
) -> Option<usize> {
    if loads.is_empty() {
        return None;
    }
    Some(match policy {
        RoutingPolicy::RoundRobin => turn.fetch_add(1, Ordering::Relaxed) % loads.len(),
        RoutingPolicy::LeastOutstanding => {
            let least = loads.iter().map(|l| l.in_flight).min().unwrap_or(0);
            let tied: Vec<usize> = (0..loads.len())
                .filter(|&i| loads[i].in_flight == least)
                .collect();
            tied[rng.random_range(0..tied.len())]
        }
        RoutingPolicy::EarliestCompletion => {
            let scores = expected_completion(loads, tokens);
            let best = scores.iter().cloned().fold(f64::INFINITY, f64::min);
            let tied: Vec<usize> = (0..loads.len())
                .filter(|&i| scores[i] <= best * NEAR_TIE + f64::EPSILON)
                .collect();
            if tied.len() == 1 {
                tied[0]
            } else {
                // Power of two choices among the near-ties: fewer requests in flight wins.
                let i = rng.random_range(0..tied.len());
                let mut j = rng.random_range(0..tied.len() - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (tied[i], tied[j]);
                if loads[b].in_flight < loads[a].in_flight {
                    b
                } else {
                    a
                }
            }
        }
    })
}

/// Expected time to finish a request of `tokens` tokens on each slice: the tokens queued there
/// plus its own, times the slice's measured seconds per token (slices not yet measured get the
/// mean of those that are).
pub fn expected_completion(loads: &[Load], tokens: u64) -> Vec<f64> {
    let known: Vec<f64> = loads.iter().filter_map(|l| l.secs_per_token).collect();
    let fallback = if known.is_empty() {
        1.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    loads
        .iter()
        .map(|l| {
            l.queued_tokens.saturating_add(tokens) as f64 * l.secs_per_token.unwrap_or(fallback)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn load(in_flight: usize, queued: u64, spt: Option<f64>) -> Load {
        Load {
            in_flight,
            queued_tokens: queued,
            secs_per_token: spt,
        }
    }

    #[test]
    fn earliest_completion_prefers_the_faster_and_the_emptier() {
        let turn = AtomicUsize::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Same queue, one three times slower: the fast one.
        let loads = [load(2, 200, Some(0.03)), load(2, 200, Some(0.01))];
        assert_eq!(
            choose(
                RoutingPolicy::EarliestCompletion,
                &loads,
                50,
                &turn,
                &mut rng
            ),
            Some(1)
        );
        // Same speed, one with less queued.
        let loads = [load(1, 100, Some(0.01)), load(5, 900, Some(0.01))];
        assert_eq!(
            choose(
                RoutingPolicy::EarliestCompletion,
                &loads,
                50,
                &turn,
                &mut rng
            ),
            Some(0)
        );
        // The slower slice wins when the faster one has three times more queued work plus.
        let loads = [load(1, 100, Some(0.03)), load(9, 1000, Some(0.01))];
        assert_eq!(
            choose(
                RoutingPolicy::EarliestCompletion,
                &loads,
                10,
                &turn,
                &mut rng
            ),
            Some(0)
        );
    }

    #[test]
    fn near_ties_spread_over_all_candidates() {
        let turn = AtomicUsize::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let loads = [load(0, 0, None), load(0, 0, None), load(0, 0, None)];
        let mut hits = [0; 3];
        for _ in 0..300 {
            hits[choose(
                RoutingPolicy::EarliestCompletion,
                &loads,
                10,
                &turn,
                &mut rng,
            )
            .unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| h > 50), "{hits:?}");
    }

    #[test]
    fn round_robin_and_least_outstanding() {
        let turn = AtomicUsize::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let loads = [load(5, 0, None), load(1, 0, None), load(3, 0, None)];
        let picks: Vec<usize> = (0..4)
            .map(|_| choose(RoutingPolicy::RoundRobin, &loads, 1, &turn, &mut rng).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        assert_eq!(
            choose(RoutingPolicy::LeastOutstanding, &loads, 1, &turn, &mut rng),
            Some(1)
        );
        assert_eq!(
            choose(RoutingPolicy::LeastOutstanding, &[], 1, &turn, &mut rng),
            None
        );
    }
}
