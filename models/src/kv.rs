//! Where the model keeps each sequence's attention keys and values.
//!
//! The forward pass only talks to [`KvStore`], so the dense per-sequence store here and a
//! paged block cache are interchangeable.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Identifies one sequence's KV state inside a store.
pub type SeqId = u64;

/// The new tokens of one sequence in a batched attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSpan {
    pub seq: SeqId,
    /// Position of the span's first token (= tokens already stored for `seq`).
    pub start: usize,
    /// Number of new tokens (rows of the batch).
    pub len: usize,
}

/// Storage of per-sequence, per-layer keys and values, and attention over them.
pub trait KvStore {
    /// Stores the keys and values of every span's new tokens in `layer` and returns the
    /// attention output of every query row. Rows are the spans' tokens in order:
    /// `q` is `[rows, n_heads, head_dim]` (already scaled by `1/sqrt(head_dim)`), `k` and `v`
    /// `[rows, n_kv_heads, head_dim]`; the result is `[rows, n_heads * head_dim]`. Row `i` of a
    /// span sees the sequence's positions `0..=start + i`. Positions at or past a span's
    /// `start` that were stored before are replaced.
    fn attend(
        &mut self,
        layer: usize,
        spans: &[AttentionSpan],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor>;

    /// Called once per forward pass, before the first layer's [`KvStore::attend`], with the
    /// step's spans (the same for every layer): a store can lay the step out here once
    /// instead of in every layer.
    fn begin_step(&mut self, _spans: &[AttentionSpan]) -> Result<()> {
        Ok(())
    }

    /// Forgets everything stored for `seq`.
    fn release(&mut self, seq: SeqId);
}

/// One growing key/value tensor pair per sequence and layer, and attention through candle
/// tensor ops: simple, exact, the reference other stores are tested against. Memory is not
/// pooled (the paged cache does that).
#[derive(Debug, Default)]
pub struct DenseKvStore {
    n_layers: usize,
    /// Per layer: its sliding window (`None`: full attention).
    windows: Vec<Option<usize>>,
    seqs: HashMap<SeqId, Vec<Option<(Tensor, Tensor)>>>,
}

impl DenseKvStore {
    /// An empty store for `config`'s layers (and their sliding windows).
    pub fn new(config: &ModelConfig) -> Self {
        Self {
            n_layers: config.n_layers,
            windows: config.layer_windows.clone(),
            seqs: HashMap::new(),
        }
    }

    /// Number of positions stored for `seq` (0 when unknown).
    pub fn len(&self, seq: SeqId) -> usize {
        self.seqs
            .get(&seq)
            .and_then(|layers| layers.first())
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(1).ok())
            .unwrap_or(0)
    }

    /// Whether nothing is stored at all.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Appends `k`/`v` (`[n_kv_heads, n, head_dim]`) at `start` and returns all positions.
    fn write_and_read(
        &mut self,
        seq: SeqId,
        layer: usize,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if layer >= self.n_layers {
            return Err(ModelError::InvalidInput(format!(
                "layer {layer} out of range ({} layers)",
                self.n_layers
            )));
        }
        let n_layers = self.n_layers;
        let slot = &mut self.seqs.entry(seq).or_insert_with(|| vec![None; n_layers])[layer];
        let stored = slot
            .as_ref()
            .map(|(k, _)| k.dim(1))
            .transpose()?
            .unwrap_or(0);
        if start > stored {
            return Err(ModelError::InvalidInput(format!(
                "sequence {seq} layer {layer}: writing at position {start} but only {stored} positions are stored"
            )));
        }
        let (k_all, v_all) = match slot.take() {
            Some((k_old, v_old)) if start > 0 => (
                Tensor::cat(&[&k_old.narrow(1, 0, start)?, k], 1)?,
                Tensor::cat(&[&v_old.narrow(1, 0, start)?, v], 1)?,
            ),
            _ => (k.contiguous()?, v.contiguous()?),
        };
        *slot = Some((k_all.clone(), v_all.clone()));
        Ok((k_all, v_all))
    }
}

impl KvStore for DenseKvStore {
    fn attend(
        &mut self,
        layer: usize,
        spans: &[AttentionSpan],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let (_, n_heads, head_dim) = q.dims3()?;
        let n_kv_heads = k.dim(1)?;
        let group = n_heads / n_kv_heads;
        let window = self.windows.get(layer).copied().flatten();
        let mut outputs = Vec::with_capacity(spans.len());
        let mut row = 0;
        for span in spans {
            let n = span.len;
            // [n, heads, hd] -> [heads, n, hd]
            let k_new = k.narrow(0, row, n)?.transpose(0, 1)?.contiguous()?;
            let v_new = v.narrow(0, row, n)?.transpose(0, 1)?.contiguous()?;
            let (k_all, v_all) =
                self.write_and_read(span.seq, layer, span.start, &k_new, &v_new)?;
            let len = span.start + n;
            // Grouped-query attention: the `group` query heads of one KV head become rows.
            let q_seq = q
                .narrow(0, row, n)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((n_kv_heads, group * n, head_dim))?;
            let mut scores = q_seq.matmul(&k_all.t()?)?;
            if n > 1 || window.is_some_and(|w| len > w) {
                let mask = causal_mask(span.start, n, len, group, window, q.device())?;
                scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = probs.matmul(&v_all)?; // [nkv, group*n, hd]
            outputs.push(
                out.reshape((n_heads, n, head_dim))?
                    .transpose(0, 1)?
                    .reshape((n, n_heads * head_dim))?,
            );
            row += n;
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }

    fn release(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }
}

/// `[group * n, len]` additive mask: query `i` (at position `start + i`) sees keys
/// `0..=start + i`, or with a sliding window only the last `window` of them.
fn causal_mask(
    start: usize,
    n: usize,
    len: usize,
    group: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let mut mask = Vec::with_capacity(group * n * len);
    for _ in 0..group {
        for i in 0..n {
            let visible = start + i + 1;
            let first = window.map_or(0, |w| visible.saturating_sub(w));
            mask.extend((0..len).map(|j| {
                if j >= first && j < visible {
                    0.0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Ok(Tensor::from_vec(mask, (group * n, len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_offsets_by_start() {
        let m = causal_mask(2, 2, 4, 1, None, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][..3], [0.0, 0.0, 0.0]);
        assert!(m[0][3].is_infinite());
        assert_eq!(m[1], [0.0; 4]);
        // A window of two: the query at position 3 sees positions 2 and 3.
        let m = causal_mask(2, 2, 4, 1, Some(2), &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(m[1][0].is_infinite() && m[1][1].is_infinite());
        assert_eq!(m[1][2..], [0.0, 0.0]);
    }
}
