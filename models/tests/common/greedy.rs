//! A greedy decode loop over the bare decoder (dense KV, argmax): the reference the models
//! tests compare the forward pass with, below the engine (which serves through its own
//! paged cache and sampler; `migserve generate` runs that path).

use migserve_models::{DenseKvStore, IncrementalDecoder, KvStore, Model, Result, SeqChunk};

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The limit of new tokens was reached.
    Length,
}

/// What the loop produced.
#[derive(Debug, Clone)]
pub struct Greedy {
    /// Generated ids, without the final eos.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
}

/// Greedily generates up to `max_new` tokens after `prompt`, calling `on_text` with each
/// complete piece of text.
pub fn greedy(
    model: &Model,
    prompt: &[u32],
    max_new: usize,
    mut on_text: impl FnMut(&str),
) -> Result<Greedy> {
    const SEQ: u64 = 0;
    let mut kv = DenseKvStore::new(model.config());
    let mut decoder = IncrementalDecoder::new();
    let mut history = prompt.to_vec();
    let mut out = Greedy {
        tokens: Vec::new(),
        text: String::new(),
        finish: Finish::Length,
    };
    let mut start = 0;
    while out.tokens.len() < max_new {
        let chunk = SeqChunk {
            seq: SEQ,
            tokens: &history[start..],
            start,
        };
        let logits = model.decoder.forward(&[chunk], &mut kv)?;
        // Candle's argmax keeps the first of equal maxima.
        let next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        if model.tokenizer.eos_ids().contains(&next) {
            out.finish = Finish::Eos;
            break;
        }
        start = history.len();
        history.push(next);
        out.tokens.push(next);
        if let Some(piece) = decoder.push(&model.tokenizer, next)? {
            on_text(&piece);
            out.text.push_str(&piece);
        }
    }
    if let Some(piece) = decoder.flush(&model.tokenizer)? {
        on_text(&piece);
        out.text.push_str(&piece);
    }
    kv.release(SEQ);
    Ok(out)
}
