//! Where the model keeps each sequence's attention keys and values.
//!
//! The forward pass only talks to [`KvStore`], so the dense per-sequence store here and a
//! paged block cache are interchangeable.

use std::collections::HashMap;

use candle_core::{Tensor, D};

use crate::error::{ModelError, Result};

/// Identifies one sequence's KV state inside a store.
pub type SeqId = u64;

/// Storage of per-sequence, per-layer keys and values.
pub trait KvStore {
    /// Stores `k`/`v` (each `[n_kv_heads, n, head_dim]`) as positions `start..start + n` of
    /// `seq` in `layer`, and returns the keys and values of positions `0..start + n`
    /// (each `[n_kv_heads, start + n, head_dim]`). Positions at or past `start` that were
    /// stored before are replaced.
    fn write_and_read(
        &mut self,
        seq: SeqId,
        layer: usize,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)>;

    /// Forgets everything stored for `seq`.
    fn release(&mut self, seq: SeqId);
}

/// One growing key/value tensor pair per sequence and layer. Simple and exact; memory is
/// not pooled (the paged cache does that).
#[derive(Debug, Default)]
pub struct DenseKvStore {
    n_layers: usize,
    seqs: HashMap<SeqId, Vec<Option<(Tensor, Tensor)>>>,
}

impl DenseKvStore {
    /// An empty store for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            n_layers,
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
}

impl KvStore for DenseKvStore {
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
        debug_assert_eq!(k_all.dim(D::Minus2)?, start + k.dim(1)?);
        *slot = Some((k_all.clone(), v_all.clone()));
        Ok((k_all, v_all))
    }

    fn release(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }
}
