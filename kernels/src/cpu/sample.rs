//! Choosing each row's next token where its logits are (the reference of the CUDA kernel
//! `migserve_sample_rows`): greedy, or temperature with top-k and top-p, drawn with a
//! counter-based random stream, and the chosen token's log-probability under the row's raw
//! logits. Only a few numbers per row leave the device.
//!
//! What a sampled row draws from, exactly (the kernel computes the same thing with integer
//! histograms, so its choice does not depend on the order of floating-point additions):
//! - candidates: tokens the row's mask allows whose edited logit `l` is finite, each weighted
//!   `w = floor(exp((l - max) / T) x 2^40)` (`max` the largest candidate logit), tokens whose
//!   weight is 0 (below 2^-40 of the most likely one) left out;
//! - top-k: the candidates whose logit is at least the `k`-th largest (ties at the cut kept);
//! - top-p: of those, the ones whose logit is at least `t`, `t` the largest value with
//!   `sum(w : l >= t) >= ceil(p x sum(w))` (the smallest nucleus by logit, ties at the cut
//!   kept);
//! - the draw: `target = floor(u x sum(w))` for the row's 24-bit draw `u` ([`draw_bits`]), the
//!   token the smallest id whose running sum of kept weights (in id order) passes `target`.

use super::exp::log_sum_exp;
use super::lanes::max_lanes;

/// Fixed-point bits of a candidate's weight.
pub const WEIGHT_BITS: u32 = 40;
/// [`RowSampling::mask_row`] of a row without a mask.
pub const NO_MASK: u32 = u32::MAX;

/// How one row chooses its token: the kernel's per-row parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSampling {
    /// Below 1e-5: greedy (the first most likely allowed token).
    pub temperature: f32,
    /// Keep the `top_k` most likely candidates; 0 keeps all. 1 is greedy.
    pub top_k: u32,
    /// Keep the smallest nucleus of at least this mass; 1 (or more) keeps all.
    pub top_p: f32,
    /// The row's random stream.
    pub seed: u64,
    /// Which draw of that stream this choice uses.
    pub draw: u64,
    /// Row of the step's mask buffer that says which tokens are allowed, or [`NO_MASK`].
    pub mask_row: u32,
}

impl RowSampling {
    /// The most likely token, no mask.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            draw: 0,
            mask_row: NO_MASK,
        }
    }

    /// Whether this row takes its most likely allowed token.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5 || self.top_k == 1
    }

    /// The 8 words the kernel reads per row.
    pub fn packed(&self) -> [u32; 8] {
        [
            self.temperature.to_bits(),
            self.top_k,
            self.top_p.to_bits(),
            self.seed as u32,
            (self.seed >> 32) as u32,
            self.draw as u32,
            (self.draw >> 32) as u32,
            self.mask_row,
        ]
    }
}

/// What a row chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowChoice {
    pub token: u32,
    /// `raw[token] - log_norm`.
    pub logprob: f32,
    /// The log-softmax normalizer of the raw row (log of the sum of `exp(raw)`).
    pub log_norm: f32,
}

impl RowChoice {
    /// The three numbers a row's choice travels as (the token's bits, its log-probability,
    /// the normalizer), as the CUDA kernel writes them.
    pub fn packed(&self) -> [f32; 3] {
        [f32::from_bits(self.token), self.logprob, self.log_norm]
    }

    /// The choices of rows packed one after the other.
    pub fn unpack_all(packed: &[f32]) -> Vec<RowChoice> {
        packed
            .chunks_exact(3)
            .map(|o| RowChoice {
                token: o[0].to_bits(),
                logprob: o[1],
                log_norm: o[2],
            })
            .collect()
    }
}

/// Draw `draw` of stream `seed`: 24 uniform bits (SplitMix64's finalizer over the seed and the
/// draw's index), so any draw can be made without the ones before it.
pub fn draw_bits(seed: u64, draw: u64) -> u32 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (mix(seed ^ mix(draw.wrapping_add(0x9E37_79B9_7F4A_7C15))) >> 40) as u32
}

/// Whether `mask` (one bit per token, 32 per word, low bit first) allows `token`; no mask
/// allows everything.
pub fn allows(mask: Option<&[u32]>, token: usize) -> bool {
    mask.is_none_or(|m| {
        m.get(token / 32)
            .is_some_and(|w| (w >> (token % 32)) & 1 == 1)
    })
}

/// `floor(bits x total / 2^24)` without overflow (`bits` < 2^24).
pub fn scaled_target(bits: u32, total: u64) -> u64 {
    (total >> 24) * bits as u64 + (((total & 0xFF_FFFF) * bits as u64) >> 24)
}

/// Chooses a row's token from its `edited` logits (bias and penalties applied) under `mask`,
/// and reports its log-probability under the `raw` logits. See the module's documentation.
pub fn sample_row(
    raw: &[f32],
    edited: &[f32],
    mask: Option<&[u32]>,
    params: &RowSampling,
) -> RowChoice {
    let log_norm = log_sum_exp(raw);
    let token = choose(edited, mask, params);
    let logprob = raw
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |l| l - log_norm);
    RowChoice {
        token,
        logprob,
        log_norm,
    }
}

/// The token a row chooses (see the module's documentation).
pub fn choose(logits: &[f32], mask: Option<&[u32]>, params: &RowSampling) -> u32 {
    let Some((best, max)) = most_likely(logits, mask) else {
        // Nothing finite is allowed: the first allowed token.
        return (0..logits.len()).find(|&i| allows(mask, i)).unwrap_or(0) as u32;
    };
    if params.is_greedy() {
        return best as u32;
    }
    let weight = |l: f32| {
        let w = ((l - max) / params.temperature).exp();
        (w * (1u64 << WEIGHT_BITS) as f32) as u64
    };
    // Below this no weight can be above 0 (exp(-40 ln 2) is 2^-40; one logit of slack for
    // rounding): such tokens are never weighed.
    let floor = max - params.temperature * WEIGHT_BITS as f32 * std::f32::consts::LN_2 - 1.0;
    let considered = |i: usize, l: f32| l >= floor && l.is_finite() && allows(mask, i);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch { values, kept, pool } = &mut *scratch;
        // Top-k over logits first: candidates are the most likely tokens down to the weight
        // floor, so the k-th largest logit among all is theirs unless fewer than k have a
        // weight (then it cuts below every candidate: none lost).
        let mut cut = f32::NEG_INFINITY;
        let k = params.top_k as usize;
        if k > 0 {
            cut = kth_largest(logits, considered, k, values);
        }
        // (id, logit, weight) of every kept candidate, in id order.
        kept.clear();
        kept.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(i, &l)| l >= cut && considered(i, l))
                .map(|(i, &l)| (i as u32, l, weight(l)))
                .filter(|c| c.2 > 0),
        );
        if params.top_p < 1.0 {
            pool.clear();
            pool.extend(kept.iter().map(|c| (c.1, c.2)));
            let total: u64 = pool.iter().map(|c| c.1).sum();
            let need = ((params.top_p as f64 * total as f64).ceil() as u64).clamp(1, total);
            cut = cut.max(nucleus_cut(pool, need));
        }
        let total: u64 = kept.iter().filter(|c| c.1 >= cut).map(|c| c.2).sum();
        let target = scaled_target(draw_bits(params.seed, params.draw), total);
        let mut running = 0u64;
        for c in kept.iter().filter(|c| c.1 >= cut) {
            running += c.2;
            if running > target {
                return c.0;
            }
        }
        best as u32
    })
}

/// The first most likely allowed finite token and its logit. Without a mask: a vectorized
/// maximum, then its first position.
fn most_likely(logits: &[f32], mask: Option<&[u32]>) -> Option<(usize, f32)> {
    if mask.is_none() {
        let max = max_lanes(logits);
        if max.is_finite() {
            return logits.iter().position(|&l| l == max).map(|i| (i, max));
        }
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if allows(mask, i) && l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best
}

/// The `k`-th largest logit of the tokens `considered`, or minus infinity when there are no
/// more than `k`. A small `k` (the usual 20 to 100) keeps a sorted list of the `k` largest
/// seen in one pass, most tokens costing one comparison; a large one selects over all.
fn kth_largest(
    logits: &[f32],
    considered: impl Fn(usize, f32) -> bool,
    k: usize,
    values: &mut Vec<f32>,
) -> f32 {
    values.clear();
    if k <= 256 {
        // Whether a considered token fell outside the list (else there were no more than k).
        let mut dropped = false;
        for (i, &l) in logits.iter().enumerate() {
            if values.len() == k && l <= values[k - 1] {
                dropped = dropped || considered(i, l);
                continue;
            }
            if !considered(i, l) {
                continue;
            }
            let at = values.partition_point(|v| *v >= l);
            values.insert(at, l);
            if values.len() > k {
                values.truncate(k);
                dropped = true;
            }
        }
        return if dropped {
            values[k - 1]
        } else {
            f32::NEG_INFINITY
        };
    }
    values.extend(
        logits
            .iter()
            .enumerate()
            .filter(|&(i, &l)| considered(i, l))
            .map(|(_, &l)| l),
    );
    if values.len() <= k {
        return f32::NEG_INFINITY;
    }
    values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    values[k - 1]
}

/// Buffers `choose` reuses from row to row on each thread.
#[derive(Default)]
struct Scratch {
    values: Vec<f32>,
    kept: Vec<(u32, f32, u64)>,
    pool: Vec<(f32, u64)>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The largest logit `t` with `sum(w : l >= t) >= need` over `(logit, weight)` pairs whose
/// weights add up to at least `need`. Sorts only as many of the most likely as it takes (a
/// nucleus is usually a few tokens of a vocabulary of tens of thousands).
fn nucleus_cut(pool: &mut [(f32, u64)], need: u64) -> f32 {
    let desc = |a: &(f32, u64), b: &(f32, u64)| b.0.total_cmp(&a.0);
    let mut m = pool.len().min(64);
    loop {
        if m < pool.len() {
            pool.select_nth_unstable_by(m - 1, desc);
        }
        pool[..m].sort_unstable_by(desc);
        // Runs of equal logits count whole; one that goes on past `m` only adds mass, so a
        // cut reached inside the first `m` stands.
        let mut mass = 0u64;
        let mut i = 0;
        while i < m {
            let l = pool[i].0;
            while i < m && pool[i].0 == l {
                mass += pool[i].1;
                i += 1;
            }
            if mass >= need {
                return l;
            }
        }
        if m == pool.len() {
            return f32::NEG_INFINITY;
        }
        m = pool.len().min(m * 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(temperature: f32, top_k: u32, top_p: f32, draw: u64) -> RowSampling {
        RowSampling {
            temperature,
            top_k,
            top_p,
            seed: 7,
            draw,
            mask_row: NO_MASK,
        }
    }

    #[test]
    fn greedy_is_the_first_most_likely_allowed_token() {
        let logits = [1.0, 3.0, f32::NAN, 3.0, -1.0];
        assert_eq!(choose(&logits, None, &RowSampling::greedy()), 1);
        let mask = [0b10101u32];
        assert_eq!(choose(&logits, Some(&mask), &RowSampling::greedy()), 0);
        assert_eq!(choose(&logits, Some(&[0b10100]), &RowSampling::greedy()), 4);
        let none = [f32::NEG_INFINITY; 4];
        assert_eq!(choose(&none, Some(&[0b100]), &RowSampling::greedy()), 2);
        // top_k 1 is greedy whatever the temperature.
        assert_eq!(choose(&logits, None, &sampled(1.0, 1, 1.0, 3)), 1);
    }

    #[test]
    fn cuts_keep_ties_and_the_nucleus() {
        let logits = [0.0, 2.0, 2.0, 1.0, -5.0];
        for draw in 0..200 {
            let t = choose(&logits, None, &sampled(1.0, 1 + 1, 1.0, draw));
            // top-2 with a tie at the cut keeps both 2.0s and nothing else.
            assert!(t == 1 || t == 2, "{t}");
            let t = choose(&logits, None, &sampled(1.0, 0, 0.5, draw));
            assert!(t == 1 || t == 2, "{t}");
        }
        // A disallowed token is never drawn.
        for draw in 0..200 {
            assert_ne!(
                choose(&logits, Some(&[0b11101]), &sampled(2.0, 0, 1.0, draw)),
                1
            );
        }
    }

    #[test]
    fn target_scaling_is_exact() {
        for (bits, total) in [(0, 5), (1 << 23, 1u64 << 57), (0xFF_FFFF, 123_456_789_012)] {
            let want = ((bits as u128 * total as u128) >> 24) as u64;
            assert_eq!(scaled_target(bits, total), want);
        }
    }

    #[test]
    fn packing_round_trips() {
        let p = RowSampling {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            seed: 0x1234_5678_9ABC_DEF0,
            draw: (1 << 33) + 5,
            mask_row: 3,
        };
        let w = p.packed();
        assert_eq!(f32::from_bits(w[0]), 0.7);
        assert_eq!(w[3] as u64 | (w[4] as u64) << 32, p.seed);
        assert_eq!(w[5] as u64 | (w[6] as u64) << 32, p.draw);
    }
}
