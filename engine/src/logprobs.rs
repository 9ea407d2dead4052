//! Log-probability bookkeeping in one place: the alternatives of a sampled token, and the
//! prompt's log-probabilities gathered chunk by chunk while it is prefilled.

use candle_core::Tensor;
use migserve_kernels::cpu::exp::log_sum_exp;
use migserve_models::Tokenizer;

use crate::sampling::top_logprobs;

use crate::event::{PrefillLogprob, TokenLogprob};

/// The `n` most likely tokens of a row (normalizer `norm`) after token `prev`, each with its
/// text as it would read after `prev` (SentencePiece drops a leading space from a token
/// decoded alone).
pub(crate) fn alternatives(
    tokenizer: &Tokenizer,
    prev: Option<u32>,
    row: &[f32],
    norm: f32,
    n: usize,
) -> Vec<TokenLogprob> {
    if n == 0 {
        return Vec::new();
    }
    let before = prev.and_then(|p| tokenizer.decode(&[p], false).ok().map(|t| (p, t)));
    top_logprobs(row, norm, n)
        .into_iter()
        .map(|(id, logprob)| {
            let after = before.as_ref().and_then(|(p, text)| {
                let both = tokenizer.decode(&[*p, id], false).ok()?;
                both.strip_prefix(text.as_str()).map(str::to_string)
            });
            TokenLogprob {
                id,
                text: after.unwrap_or_else(|| tokenizer.decode(&[id], false).unwrap_or_default()),
                logprob,
                special: tokenizer.eos_ids().contains(&id),
            }
        })
        .collect()
}

/// The `n` alternatives of the token sampled from row `row` of a step's `logits` (read raw
/// from the device only when asked for).
pub(crate) fn sampled_alternatives(
    tokenizer: &Tokenizer,
    logits: &Tensor,
    row: usize,
    prev: Option<u32>,
    norm: f32,
    n: usize,
) -> candle_core::Result<Vec<TokenLogprob>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let raw = logits.get(row)?.to_vec1::<f32>()?;
    Ok(alternatives(tokenizer, prev, &raw, norm, n))
}

/// The prompt's log-probabilities of one request while they are computed.
#[derive(Debug)]
pub(crate) struct PromptLogprobs {
    entries: Vec<PrefillLogprob>,
    /// Alternatives wanted per position.
    top: usize,
}

impl PromptLogprobs {
    /// Nothing computed yet but the first token's entry (no log-probability: nothing
    /// predicts it). `prompt` is not empty (validation sees to it).
    pub(crate) fn new(prompt: &[u32], top: usize) -> Self {
        let first = PrefillLogprob {
            id: prompt.first().copied().unwrap_or_default(),
            logprob: None,
            top: Vec::new(),
        };
        Self {
            entries: vec![first],
            top,
        }
    }

    /// Records the log-probabilities of the prompt tokens that the rows of positions
    /// `start..` predict (`rows`, then `tail` for the chunk's last position, which predicts
    /// a prompt token only in the middle of a chunked prompt). `tokens` are the sequence's
    /// tokens, the first `prompt_len` of them its prompt. Positions already recorded (a
    /// prompt recomputed after preemption) are skipped.
    pub(crate) fn record(
        &mut self,
        tokenizer: &Tokenizer,
        tokens: &[u32],
        prompt_len: usize,
        start: usize,
        rows: &[Vec<f32>],
        tail: &[f32],
    ) {
        let all = rows.iter().map(Vec::as_slice).chain(std::iter::once(tail));
        for (j, row) in all.enumerate() {
            let target = start + j + 1;
            if target >= prompt_len || target >= tokens.len() {
                break;
            }
            if target != self.entries.len() {
                continue;
            }
            let token = tokens[target];
            let norm = log_sum_exp(row);
            self.entries.push(PrefillLogprob {
                id: token,
                logprob: row.get(token as usize).map(|l| l - norm),
                top: alternatives(tokenizer, Some(tokens[target - 1]), row, norm, self.top),
            });
        }
    }

    /// Every entry, in prompt order.
    pub(crate) fn into_entries(self) -> Vec<PrefillLogprob> {
        self.entries
    }
}
