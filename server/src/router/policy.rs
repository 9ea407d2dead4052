//! Choosing a slice for a request, pure logic over load snapshots.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::cost::CostEstimate;
use crate::config::RoutingPolicy;

/// What a policy sees of one admissible candidate slice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub in_flight: usize,
    pub queued_tokens: u64,
    /// Moving average of seconds per output token, when known (the `queued-tokens` policy).
    pub secs_per_token: Option<f64>,
    /// Uncached prompt tokens of the requests sent there that have no first token yet.
    pub pending_prefill_tokens: u64,
    /// The slice's measured costs.
    pub cost: CostEstimate,
    /// Prompt tokens of this request the slice is expected to hold in its prefix cache.
    pub cached_tokens: u64,
}

/// The request being placed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Work {
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Requested (or assumed) new tokens.
    pub new_tokens: u64,
}

impl Work {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.new_tokens)
    }
}

/// Scores within this factor of the best count as a tie.
const NEAR_TIE: f64 = 1.10;
/// Cache affinity never sends a request to a slice with more than `max(2 x fewest, fewest +
/// 4)` requests in flight, the fewest being that of the least busy candidate.
const IMBALANCE_RATIO: usize = 2;
const IMBALANCE_SLACK: usize = 4;
/// Costs assumed while no slice has been measured (only their ratio matters then: every slice
/// gets the same).
const UNMEASURED: CostEstimate = CostEstimate {
    prefill_secs_per_token: Some(0.001),
    decode: Some((0.01, 0.001)),
    age: None,
};

/// Picks one of `loads` (all admissible; at least one) for `work`.
pub fn choose(
    policy: RoutingPolicy,
    loads: &[Load],
    work: Work,
    turn: &AtomicUsize,
    rng: &mut impl Rng,
) -> Option<usize> {
    if loads.is_empty() {
        return None;
    }
    let all = || (0..loads.len()).collect::<Vec<usize>>();
    Some(match policy {
        RoutingPolicy::RoundRobin => turn.fetch_add(1, Ordering::Relaxed) % loads.len(),
        RoutingPolicy::LeastOutstanding => {
            let least = loads.iter().map(|l| l.in_flight).min().unwrap_or(0);
            let tied: Vec<usize> = (0..loads.len())
                .filter(|&i| loads[i].in_flight == least)
                .collect();
            tied[rng.random_range(0..tied.len())]
        }
        RoutingPolicy::QueuedTokens => best_of(
            loads,
            &all(),
            &queued_token_seconds(loads, work.total()),
            rng,
        ),
        RoutingPolicy::EarliestCompletion => {
            best_of(loads, &all(), &expected_completion(loads, work, false), rng)
        }
        RoutingPolicy::PrefixAware => {
            let fewest = loads.iter().map(|l| l.in_flight).min().unwrap_or(0);
            let bound = (fewest * IMBALANCE_RATIO).max(fewest + IMBALANCE_SLACK);
            let within: Vec<usize> = all()
                .into_iter()
                .filter(|&i| loads[i].in_flight <= bound)
                .collect();
            best_of(loads, &within, &expected_completion(loads, work, true), rng)
        }
    })
}

/// The candidate of `among` with the lowest score; near-ties (within 10 %) broken by two
/// random choices, fewer requests in flight winning.
fn best_of(loads: &[Load], among: &[usize], scores: &[f64], rng: &mut impl Rng) -> usize {
    let best = among
        .iter()
        .map(|&i| scores[i])
        .fold(f64::INFINITY, f64::min);
    let tied: Vec<usize> = among
        .iter()
        .copied()
        .filter(|&i| scores[i] <= best * NEAR_TIE + f64::EPSILON)
        .collect();
    match tied.len() {
        0 => among.first().copied().unwrap_or(0),
        1 => tied[0],
        n => {
            let i = rng.random_range(0..n);
            let mut j = rng.random_range(0..n - 1);
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
}

/// The cost of placing `work` on each slice, in seconds: its own expected completion there
/// (the prefill queued before it, its prompt's prefill less what the slice is expected to hold
/// when `use_cache`, its new tokens at the slice's time per token with one more request
/// running) plus the delay it adds to the requests already running there (each waits for its
/// prefill and decodes a little slower beside it). Unmeasured costs are the fleet's mean; old
/// ones drift toward it.
pub fn expected_completion(loads: &[Load], work: Work, use_cache: bool) -> Vec<f64> {
    let estimates: Vec<CostEstimate> = loads.iter().map(|l| l.cost).collect();
    let fleet = CostEstimate::fleet(&estimates).against(&UNMEASURED);
    loads
        .iter()
        .map(|l| {
            let cost = l.cost.against(&fleet);
            let prefill = cost.prefill_secs_per_token.unwrap_or(0.0);
            let (_, per_row) = cost.decode.unwrap_or_default();
            let cached = if use_cache { l.cached_tokens } else { 0 };
            let own_prefill = work.prompt_tokens.saturating_sub(cached).max(1) as f64 * prefill;
            let tpot = cost.tpot_at(l.in_flight as f64 + 1.0).unwrap_or(0.0);
            let own = l.pending_prefill_tokens as f64 * prefill
                + own_prefill
                + work.new_tokens as f64 * tpot;
            let added = l.in_flight as f64 * (own_prefill + work.new_tokens as f64 * per_row);
            own + added
        })
        .collect()
}

/// The `queued-tokens` score: the tokens queued on the slice plus the request's, times its
/// moving average of seconds per output token (the mean of the measured slices for one not
/// measured yet).
pub fn queued_token_seconds(loads: &[Load], tokens: u64) -> Vec<f64> {
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
    use std::time::Duration;

    fn load(in_flight: usize, queued: u64, spt: Option<f64>) -> Load {
        Load {
            in_flight,
            queued_tokens: queued,
            secs_per_token: spt,
            ..Default::default()
        }
    }

    /// A slice measured just now: `prefill` seconds per prompt token, `per_row` seconds per
    /// output token per running request.
    fn measured(in_flight: usize, prefill: f64, per_row: f64) -> Load {
        Load {
            in_flight,
            cost: CostEstimate {
                prefill_secs_per_token: Some(prefill),
                decode: Some((0.0, per_row)),
                age: Some(Duration::ZERO),
            },
            ..Default::default()
        }
    }

    fn work(prompt: u64, new: u64) -> Work {
        Work {
            prompt_tokens: prompt,
            new_tokens: new,
        }
    }

    fn pick(policy: RoutingPolicy, loads: &[Load], w: Work, seed: u64) -> usize {
        let turn = AtomicUsize::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        choose(policy, loads, w, &turn, &mut rng).unwrap()
    }

    #[test]
    fn queued_tokens_prefers_the_faster_and_the_emptier() {
        let q = RoutingPolicy::QueuedTokens;
        // Same queue, one three times slower: the fast one.
        let loads = [load(2, 200, Some(0.03)), load(2, 200, Some(0.01))];
        assert_eq!(pick(q, &loads, work(0, 50), 1), 1);
        // Same speed, one with less queued.
        let loads = [load(1, 100, Some(0.01)), load(5, 900, Some(0.01))];
        assert_eq!(pick(q, &loads, work(0, 50), 1), 0);
        // The slower slice wins when the faster one has three times more queued work plus.
        let loads = [load(1, 100, Some(0.03)), load(9, 1000, Some(0.01))];
        assert_eq!(pick(q, &loads, work(0, 10), 1), 0);
    }

    #[test]
    fn earliest_completion_splits_by_decode_speed_at_the_running_batch() {
        // Slice 1 decodes twice as fast per running request: it takes requests until it runs
        // about twice as many as slice 0.
        let mut loads = [measured(0, 0.001, 0.02), measured(0, 0.001, 0.01)];
        for i in 0..30 {
            let k = pick(RoutingPolicy::EarliestCompletion, &loads, work(10, 32), i);
            loads[k].in_flight += 1;
        }
        let (slow, fast) = (loads[0].in_flight, loads[1].in_flight);
        assert!(
            (9..=11).contains(&slow) && (19..=21).contains(&fast),
            "{slow} / {fast}"
        );
    }

    #[test]
    fn prefill_queued_on_a_slice_counts_against_it() {
        let mut busy = measured(1, 0.002, 0.01);
        busy.pending_prefill_tokens = 3000;
        let loads = [busy, measured(2, 0.002, 0.01)];
        assert_eq!(
            pick(RoutingPolicy::EarliestCompletion, &loads, work(10, 32), 1),
            1
        );
    }

    #[test]
    fn prefix_aware_goes_where_the_prefix_is_cached_within_the_imbalance_bound() {
        let mut holder = measured(3, 0.002, 0.01);
        holder.cached_tokens = 1000;
        let loads = [measured(1, 0.002, 0.01), holder, measured(1, 0.002, 0.01)];
        // 1,000 cached tokens save 2 s of prefill; two more running requests cost 0.64 s.
        assert_eq!(
            pick(RoutingPolicy::PrefixAware, &loads, work(1010, 32), 1),
            1
        );
        // Without cache affinity the emptier slices win.
        assert_ne!(
            pick(RoutingPolicy::EarliestCompletion, &loads, work(1010, 32), 1),
            1
        );
        // Past max(2 x fewest, fewest + 4) in flight, the cache no longer pins the request.
        let mut hot = holder;
        hot.in_flight = 6;
        let loads = [measured(1, 0.002, 0.01), hot, measured(1, 0.002, 0.01)];
        assert_ne!(
            pick(RoutingPolicy::PrefixAware, &loads, work(1010, 32), 1),
            1
        );
        let mut hot = holder;
        hot.in_flight = 5;
        let loads = [measured(1, 0.002, 0.01), hot, measured(1, 0.002, 0.01)];
        assert_eq!(
            pick(RoutingPolicy::PrefixAware, &loads, work(1010, 32), 1),
            1
        );
    }

    #[test]
    fn unmeasured_slices_cost_the_fleet_mean() {
        // A new slice beside two measured ones is neither shunned nor flooded: with equal
        // loads it is as good as the mean of the others.
        let loads = [
            measured(2, 0.001, 0.01),
            measured(2, 0.001, 0.03),
            Load {
                in_flight: 2,
                ..Default::default()
            },
        ];
        let scores = expected_completion(&loads, work(10, 32), false);
        assert!(scores[0] < scores[2] && scores[2] < scores[1], "{scores:?}");
    }

    #[test]
    fn near_ties_spread_over_all_candidates() {
        let turn = AtomicUsize::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let loads = [load(0, 0, None), load(0, 0, None), load(0, 0, None)];
        for policy in [
            RoutingPolicy::EarliestCompletion,
            RoutingPolicy::PrefixAware,
            RoutingPolicy::QueuedTokens,
        ] {
            let mut hits = [0; 3];
            for _ in 0..300 {
                hits[choose(policy, &loads, work(5, 10), &turn, &mut rng).unwrap()] += 1;
            }
            assert!(hits.iter().all(|&h| h > 50), "{policy:?}: {hits:?}");
        }
    }

    #[test]
    fn round_robin_and_least_outstanding() {
        let turn = AtomicUsize::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let loads = [load(5, 0, None), load(1, 0, None), load(3, 0, None)];
        let w = work(1, 0);
        let picks: Vec<usize> = (0..4)
            .map(|_| choose(RoutingPolicy::RoundRobin, &loads, w, &turn, &mut rng).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        assert_eq!(
            choose(RoutingPolicy::LeastOutstanding, &loads, w, &turn, &mut rng),
            Some(1)
        );
        assert_eq!(
            choose(RoutingPolicy::LeastOutstanding, &[], w, &turn, &mut rng),
            None
        );
    }
}
