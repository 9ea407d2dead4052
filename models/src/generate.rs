//! Single-sequence generation: prefill, then decode token by token until eos or a limit.

use std::time::{Duration, Instant};

use crate::decoder::SeqChunk;
use crate::error::{ModelError, Result};
use crate::kv::{DenseKvStore, KvStore, SeqId};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::IncrementalDecoder;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` tokens were generated.
    Length,
}

/// What one generation produced and how fast.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Generated ids, without the final eos.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens processed per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_time)
    }

    /// Tokens generated per second after the first one (which prefill produces).
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.tokens.len().saturating_sub(1), self.decode_time)
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_text` with each piece of text
/// as soon as it is complete (never half a UTF-8 character).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    params: SamplingParams,
    max_new_tokens: usize,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput("the prompt is empty".into()));
    }
    params.validate()?;
    let context = model.config().context_length;
    if prompt.len() >= context {
        return Err(ModelError::InvalidInput(format!(
            "the prompt has {} tokens; the model's context is {context}",
            prompt.len()
        )));
    }
    let max_new_tokens = max_new_tokens.min(context - prompt.len());
    const SEQ: SeqId = 0;
    let mut kv = DenseKvStore::new(model.config());
    let mut sampler = Sampler::new(params);
    let mut decoder = IncrementalDecoder::new();
    let mut history = prompt.to_vec();
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut finish_reason = FinishReason::Length;

    let started = Instant::now();
    let mut logits = model.decoder.forward(
        &[SeqChunk {
            seq: SEQ,
            tokens: prompt,
            start: 0,
        }],
        &mut kv,
    )?;
    let prefill_time = started.elapsed();
    let decode_start = Instant::now();
    while generated.len() < max_new_tokens {
        let mut row = logits.squeeze(0)?.to_vec1::<f32>()?;
        let next = sampler.sample(&mut row, &history, prompt.len());
        if model.tokenizer.eos_ids().contains(&next) {
            finish_reason = FinishReason::Eos;
            break;
        }
        generated.push(next);
        history.push(next);
        if let Some(piece) = decoder.push(&model.tokenizer, next)? {
            on_text(&piece);
            text.push_str(&piece);
        }
        if generated.len() == max_new_tokens {
            break;
        }
        let start = history.len() - 1;
        logits = model.decoder.forward(
            &[SeqChunk {
                seq: SEQ,
                tokens: &history[start..],
                start,
            }],
            &mut kv,
        )?;
    }
    if let Some(piece) = decoder.flush(&model.tokenizer)? {
        on_text(&piece);
        text.push_str(&piece);
    }
    kv.release(SEQ);
    Ok(Generation {
        prompt_tokens: prompt.len(),
        tokens: generated,
        text,
        finish_reason,
        prefill_time,
        decode_time: decode_start.elapsed(),
    })
}
