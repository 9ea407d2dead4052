//! Choosing the next token from logits: logit bias, repetition, presence and frequency
//! penalties ([`LogitEdit`]s, a few per row), then greedy or temperature with top-k and top-p
//! ([`migserve_kernels::cpu::sample`], which the engine runs where the logits are: one
//! definition of the choice for the host, the CPU device and the CUDA kernel). A seeded
//! sampler always makes the same choices, and its `n`-th choice depends only on the seed, `n`
//! and the logits, so a sequence can continue elsewhere ([`Sampler::resumed`]) and draw what
//! it would have drawn.

use std::collections::HashMap;

use migserve_kernels::cpu::sample::{RowSampling, NO_MASK};

/// How one sequence picks its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below 1e-5) means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability sums to at least `p`.
    pub top_p: Option<f32>,
    /// Above 1 discourages tokens already present in the prompt or output (CTRL-style).
    pub repetition_penalty: Option<f32>,
    /// Subtracted once from the logit of every token the output already holds (OpenAI).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time the output already holds it (OpenAI).
    pub frequency_penalty: f32,
    /// Added to the logits of these token ids before anything else (OpenAI `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Output tokens before any of `end_tokens` may be chosen (`min_tokens`).
    pub min_tokens: usize,
    /// Masked until `min_tokens` are out (the engine sets the model's end-of-sequence tokens).
    pub end_tokens: Vec<u32>,
    /// Same seed, same choices. `None` draws a random seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            min_tokens: 0,
            end_tokens: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether these parameters always pick the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5 || self.top_k == Some(1)
    }

    /// Whether sampling, with `generated` output tokens so far, edits the logits before
    /// choosing (bias, a penalty, the `min_tokens` mask), so a caller that wants the model's
    /// own distribution must keep a copy.
    pub fn edits_logits(&self, generated: usize) -> bool {
        self.repetition_penalty.is_some_and(|p| p != 1.0)
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
            || (generated < self.min_tokens && !self.end_tokens.is_empty())
    }
}

/// A sampler for one sequence: its parameters plus its own random stream.
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    /// Choices made so far: the index of the next draw.
    step: u64,
}

impl Sampler {
    /// A sampler seeded from `params.seed` (or from the OS when unset).
    pub fn new(params: SamplingParams) -> Self {
        Self::resumed(params, 0)
    }

    /// A sampler that has already made `made` choices: its next one is what a sampler with
    /// the same seed would choose as its `made + 1`-th (given the same logits).
    pub fn resumed(params: SamplingParams, made: usize) -> Self {
        let seed = params.seed.unwrap_or_else(random_seed);
        Self {
            params,
            seed,
            step: made as u64,
        }
    }

    /// The parameters this sampler was made with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token on the host (the unit tests' reference of one choice; the engine
    /// runs [`choose`] where its logits are). `logits` is modified in place (bias, penalties, mask); `history` is
    /// every token of the sequence so far, of which the first `prompt_len` are the prompt.
    #[cfg(test)]
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], prompt_len: usize) -> u32 {
        apply_edits(&self.params, logits, history, prompt_len);
        let row = self.next_row();
        migserve_kernels::cpu::sample::choose(logits, None, &row)
    }

    /// The parameters of this sampler's next choice for the row sampler (and counts it made):
    /// the edits ([`SamplingParams::edits`]) are the caller's to apply first.
    pub fn next_row(&mut self) -> RowSampling {
        let draw = self.step;
        self.step += 1;
        RowSampling {
            temperature: self.params.temperature,
            top_k: self
                .params
                .top_k
                .map_or(0, |k| k.min(u32::MAX as usize) as u32),
            top_p: self.params.top_p.unwrap_or(1.0),
            seed: self.seed,
            draw,
            mask_row: NO_MASK,
        }
    }
}

/// A seed for a request that names none (so its choices can still be reported and repeated).
pub fn random_seed() -> u64 {
    rand::random()
}

/// The `n` most likely tokens of `logits` whose log-softmax normalizer is `log_norm`, with
/// their log-probabilities, most likely first (the lower id first on ties). One pass over the
/// row keeping a sorted list of `n`, so it costs little beside the normalizer's own pass.
pub fn top_logprobs(logits: &[f32], log_norm: f32, n: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        if (top.len() == n && top[n - 1].1 >= l) || l.is_nan() {
            continue;
        }
        let at = top.partition_point(|(_, v)| *v >= l);
        top.insert(at, (i as u32, l));
        top.truncate(n);
    }
    for t in &mut top {
        t.1 -= log_norm;
    }
    top
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

/// What sampling does to one token's logit, in this order: `bias` added (`logit_bias`); the
/// repetition penalty (CTRL-style: a positive logit divided by it, a negative one multiplied;
/// 1 for none); `lower` subtracted (frequency and presence penalties); masked to minus
/// infinity (an end token before `min_tokens` are out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitEdit {
    pub token: u32,
    pub bias: f32,
    pub repetition: f32,
    pub lower: f32,
    pub masked: bool,
}

impl LogitEdit {
    fn new(token: u32) -> Self {
        Self {
            token,
            bias: 0.0,
            repetition: 1.0,
            lower: 0.0,
            masked: false,
        }
    }

    /// The edited logit.
    pub fn apply(&self, logit: f32) -> f32 {
        if self.masked {
            return f32::NEG_INFINITY;
        }
        let mut l = logit + self.bias;
        if self.repetition != 1.0 {
            l = if l > 0.0 {
                l / self.repetition
            } else {
                l * self.repetition
            };
        }
        l - self.lower
    }
}

impl SamplingParams {
    /// The edits these parameters make to a row, by token id: `logit_bias`; the repetition
    /// penalty on every token of the prompt and the output; over the output only, a token
    /// generated `c` times lowered by `frequency_penalty x c + presence_penalty`; while fewer
    /// than `min_tokens` are out, `end_tokens` masked. Tokens outside the vocabulary are the
    /// caller's to skip.
    pub fn edits(&self, history: &[u32], prompt_len: usize) -> Vec<LogitEdit> {
        let mut edits: HashMap<u32, LogitEdit> = HashMap::new();
        for &(id, bias) in &self.logit_bias {
            edits.entry(id).or_insert_with(|| LogitEdit::new(id)).bias += bias;
        }
        if let Some(penalty) = self.repetition_penalty.filter(|p| *p != 1.0) {
            for &t in history {
                edits
                    .entry(t)
                    .or_insert_with(|| LogitEdit::new(t))
                    .repetition = penalty;
            }
        }
        if self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 {
            let mut counts = HashMap::<u32, u32>::with_capacity(history.len());
            for &t in &history[prompt_len.min(history.len())..] {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                edits.entry(t).or_insert_with(|| LogitEdit::new(t)).lower =
                    self.frequency_penalty * c as f32 + self.presence_penalty;
            }
        }
        if history.len().saturating_sub(prompt_len) < self.min_tokens {
            for &t in &self.end_tokens {
                edits.entry(t).or_insert_with(|| LogitEdit::new(t)).masked = true;
            }
        }
        let mut edits: Vec<LogitEdit> = edits.into_values().collect();
        edits.sort_by_key(|e| e.token);
        edits
    }
}

/// Applies [`SamplingParams::edits`] to a row of logits in place.
pub fn apply_edits(
    params: &SamplingParams,
    logits: &mut [f32],
    history: &[u32],
    prompt_len: usize,
) {
    for e in params.edits(history, prompt_len) {
        if let Some(l) = logits.get_mut(e.token as usize) {
            *l = e.apply(*l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[], 0), 1);
    }

    #[test]
    fn repetition_penalty_can_change_the_greedy_choice() {
        let params = SamplingParams {
            repetition_penalty: Some(1.5),
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params);
        // token 1 (3.0) becomes 2.0 once seen, so token 5 (2.9) wins.
        assert_eq!(s.sample(&mut logits(), &[1, 1, 3], 0), 5);
    }

    #[test]
    fn penalties_and_bias_edit_the_logits_as_specified() {
        // Prompt [1, 3], output [5, 5, 2]: counts in the output 5 -> 2, 2 -> 1.
        let history = [1, 3, 5, 5, 2];
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(0, 2.0), (4, -100.0)],
            ..SamplingParams::greedy()
        };
        let mut l = logits();
        apply_edits(&params, &mut l, &history, 2);
        // by hand: [1+2, 3, 2.5-(0.25+0.5), -1, 0.5-100, 2.9-(0.5+0.5)]
        let want = [3.0, 3.0, 1.75, -1.0, -99.5, 1.9];
        for (got, want) in l.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{l:?} vs {want:?}");
        }
        // Prompt tokens (1 and 3) are not penalized by presence/frequency; repetition is
        // applied to them: 3.0 / 2 and -1.0 * 2.
        let params = SamplingParams {
            repetition_penalty: Some(2.0),
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        let mut l = logits();
        apply_edits(&params, &mut l, &history, 2);
        let want = [1.0, 1.5, 1.25 - 1.0, -2.0, 0.5, 1.45 - 1.0];
        for (got, want) in l.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{l:?} vs {want:?}");
        }
        // Greedy picks from the edited logits: token 0 after its bias of +2.5.
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, 2.5)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &history, 2), 0);
        assert!(!SamplingParams::greedy().edits_logits(0));
        assert!(params.edits_logits(0));
        // Until two tokens are out, token 1 (the likeliest) cannot be chosen.
        let masked = SamplingParams {
            min_tokens: 2,
            end_tokens: vec![1],
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(masked.clone());
        assert_eq!(s.sample(&mut logits(), &[3, 4], 1), 5, "one out: masked");
        assert_eq!(s.sample(&mut logits(), &[3, 4, 5], 1), 1, "two out: free");
        assert!(masked.edits_logits(1) && !masked.edits_logits(2));
    }

    #[test]
    fn top_logprobs_are_the_n_largest_sorted() {
        let l = logits();
        let norm = l.iter().map(|x| x.exp()).sum::<f32>().ln();
        let top = top_logprobs(&l, norm, 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 5, 2]);
        assert!((top[0].1 - (3.0 - norm)).abs() < 1e-6);
        assert!(top_logprobs(&l, norm, 0).is_empty());
        assert_eq!(top_logprobs(&l, norm, 10).len(), l.len());
        // Ties: the lower id first.
        let tied = top_logprobs(&[1.0, 2.0, 2.0, 0.0], 0.0, 2);
        assert_eq!(tied, [(1, 2.0), (2, 2.0)]);
    }

    #[test]
    fn same_seed_same_choices() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50)
                .map(|_| s.sample(&mut logits(), &[], 0))
                .collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        let other = SamplingParams {
            seed: Some(8),
            ..params
        };
        assert_ne!(a, draw(&other));
        assert!(
            a.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "temperature 1 should vary"
        );
    }

    #[test]
    fn a_resumed_sampler_draws_what_the_undisturbed_one_would() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(11),
            ..Default::default()
        };
        let mut whole = Sampler::new(params.clone());
        let all: Vec<u32> = (0..40)
            .map(|_| whole.sample(&mut logits(), &[], 0))
            .collect();
        for k in [0, 1, 17, 39] {
            let mut resumed = Sampler::resumed(params.clone(), k);
            let rest: Vec<u32> = (k..40)
                .map(|_| resumed.sample(&mut logits(), &[], 0))
                .collect();
            assert_eq!(rest, all[k..], "resumed after {k} choices");
        }
    }

    #[test]
    fn temperature_sampling_draws_from_the_softmax() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, f32::NEG_INFINITY];
        let t = 0.8f32;
        let weights: Vec<f32> = logits.iter().map(|l| (l / t).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut s = Sampler::new(SamplingParams {
            temperature: t,
            seed: Some(3),
            ..SamplingParams::default()
        });
        let n = 40_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), &[], 0) as usize] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = weights[i] / total;
            let got = *c as f32 / n as f32;
            // 4 standard deviations of a binomial share at n = 40,000 is under 0.01.
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
        assert_eq!(counts[4], 0);
    }

    #[test]
    fn top_k_limits_the_candidates() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: Some(2),
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[], 0);
            assert!(t == 1 || t == 5, "top-2 gave {t}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probabilities ~ [0.9, 0.09, 0.01]: p = 0.5 keeps only the first.
        let params = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.5),
            seed: Some(3),
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        let base = vec![(0.9f32).ln(), (0.09f32).ln(), (0.01f32).ln()];
        for _ in 0..100 {
            assert_eq!(s.sample(&mut base.clone(), &[], 0), 0);
        }
        let params = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.95),
            seed: Some(3),
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        let picks: std::collections::HashSet<u32> = (0..500)
            .map(|_| s.sample(&mut base.clone(), &[], 0))
            .collect();
        assert!(picks.contains(&1) && !picks.contains(&2), "{picks:?}");
    }
}
