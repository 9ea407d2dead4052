//! The paged KV cache in host memory: one preallocated f16 buffer per layer for keys and one
//! for values, cut into blocks that [`BlockManager`] assigns to sequences.

use candle_core::Tensor;
use half::f16;
use migserve_kernels::batch::BatchLayout;
use migserve_kernels::cpu::kv_element::KvElement;
use migserve_kernels::cpu::kv_write::write_rows_with;
use migserve_kernels::cpu::paged_attention::{paged_attention_with, AttentionShape, SeqQueries};
use migserve_models::cpu_ops::with_f32;
use migserve_models::{AttentionSpan, KvStore, ModelConfig, ModelError, SeqId};

use super::{batch_layout, check_layer, PagedStore};
use crate::block_manager::BlockManager;

impl PagedStore for PagedKvCache {
    fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    fn blocks_mut(&mut self) -> &mut BlockManager {
        &mut self.blocks
    }
}

/// Keys and values of every layer, addressed through block tables.
pub struct PagedKvCache {
    blocks: BlockManager,
    /// Per layer: `[block][slot][kv_head][head_dim]` f16 (half of f32's memory traffic for
    /// attention, which reads every cached row of a sequence at every step).
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    /// Values in one position of one layer: kv_heads * head_dim.
    row: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Per layer: its sliding window (`None`: full attention).
    windows: Vec<Option<usize>>,
    /// The current step's layout, from [`KvStore::begin_step`].
    step: BatchLayout,
}

impl PagedKvCache {
    /// A cache of `total_blocks` blocks of `block_size` positions for this model.
    pub fn new(config: &ModelConfig, total_blocks: usize, block_size: usize) -> Self {
        let row = config.n_kv_heads * config.head_dim;
        let elements = total_blocks * block_size * row;
        Self {
            blocks: BlockManager::new(total_blocks, block_size),
            keys: (0..config.n_layers).map(|_| zeroed(elements)).collect(),
            values: (0..config.n_layers).map(|_| zeroed(elements)).collect(),
            row,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            windows: config.layer_windows.clone(),
            step: BatchLayout::default(),
        }
    }
}

/// `n` zeros from zeroed memory: the OS hands out zero pages, touched only when a block is
/// first written, so a large cache costs nothing at start (`vec![f16::ZERO; n]` would write
/// every byte).
fn zeroed(n: usize) -> Vec<f16> {
    let bits = std::mem::ManuallyDrop::new(vec![0u16; n]);
    let (ptr, len, capacity) = (bits.as_ptr() as *mut f16, bits.len(), bits.capacity());
    // SAFETY: `f16` is a transparent wrapper of `u16` (same size and alignment) and the bits
    // 0 are +0.0; the allocation is handed over whole, with its length and capacity.
    unsafe { Vec::from_raw_parts(ptr, len, capacity) }
}

impl KvStore for PagedKvCache {
    fn begin_step(&mut self, spans: &[AttentionSpan]) -> Result<(), ModelError> {
        self.step = batch_layout(&self.blocks, spans)?;
        Ok(())
    }

    fn attend(
        &mut self,
        layer: usize,
        spans: &[AttentionSpan],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, ModelError> {
        check_layer(layer, self.keys.len())?;
        let (rows, n_heads, _) = q.dims3()?;
        let slots = &self.step.slots;
        if slots.len() != rows
            || k.elem_count() < rows * self.row
            || v.elem_count() < rows * self.row
        {
            return Err(ModelError::InvalidInput(format!(
                "{rows} query rows and {} key values for a step laid out with {} new positions \
                 (begin_step not called for this batch?)",
                k.elem_count(),
                slots.len()
            )));
        }
        // New keys and values go straight from the model's rows into the f16 cache rows.
        let store = |dst: &mut [f16], src: &[f32]| f16::write(src, dst);
        let row = self.row;
        with_f32(k, |k| {
            write_rows_with(k, slots, row, &mut self.keys[layer], store)
        })?;
        with_f32(v, |v| {
            write_rows_with(v, slots, row, &mut self.values[layer], store)
        })?;
        let mut queries = Vec::with_capacity(spans.len());
        let mut first_row = 0;
        for span in spans {
            let block_table = self.blocks.table(span.seq).unwrap_or(&[]);
            queries.push(SeqQueries {
                block_table,
                row: first_row,
                len: span.len,
                start: span.start,
            });
            first_row += span.len;
        }
        let shape = AttentionShape {
            n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            block_size: self.blocks.block_size(),
            window: self.windows.get(layer).copied().flatten(),
        };
        let mut out = vec![0.0f32; rows * n_heads * self.head_dim];
        with_f32(q, |q| {
            paged_attention_with(
                &migserve_models::parallel::candle_pool,
                shape,
                q,
                &self.keys[layer],
                &self.values[layer],
                &queries,
                &mut out,
            )
        })?;
        Ok(
            Tensor::from_vec(out, (rows, n_heads * self.head_dim), q.device())?
                .to_dtype(q.dtype())?,
        )
    }

    fn release(&mut self, seq: SeqId) {
        self.blocks.release(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use migserve_models::config::{Activation, Family, LayerRope, RopeStyle};
    use migserve_models::DenseKvStore;

    fn config() -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            name: None,
            n_layers: 2,
            hidden_size: 8,
            ffn_size: 16,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 3,
            vocab_size: 10,
            context_length: 64,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            family: Family::Llama,
            rope_style: RopeStyle::Interleaved,
            activation: Activation::Silu,
            embedding_scale: None,
            norm_offset: 0.0,
            qk_norm: false,
            qkv_bias: false,
            post_norms: false,
            attention_scale: 1.0,
            // The second layer slides: the dense reference masks the same positions.
            layer_windows: vec![None, Some(3)],
            layer_ropes: vec![
                LayerRope {
                    theta: 10000.0,
                    linear_factor: 1.0
                };
                2
            ],
            tied_embeddings: true,
        }
    }

    fn rows(seed: f32, n: usize, heads: usize) -> Tensor {
        let data: Vec<f32> = (0..n * heads * 3)
            .map(|i| ((seed + i as f32) * 0.37).sin())
            .collect();
        Tensor::from_vec(data, (n, heads, 3), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn paged_attention_equals_the_dense_reference_step_by_step() {
        let cfg = config();
        let mut paged = PagedKvCache::new(&cfg, 8, 2);
        let mut dense = DenseKvStore::new(&cfg);
        // Steps mixing prefill and decode of two sequences whose blocks interleave.
        let steps: [&[(u64, usize, usize)]; 4] = [
            &[(1, 0, 3)],
            &[(1, 3, 1), (2, 0, 2)],
            &[(2, 2, 3), (1, 4, 1)],
            &[(1, 5, 1), (2, 5, 1)],
        ];
        for (i, step) in steps.iter().enumerate() {
            let spans: Vec<AttentionSpan> = step
                .iter()
                .map(|&(seq, start, len)| AttentionSpan { seq, start, len })
                .collect();
            for s in &spans {
                paged.blocks_mut().ensure(s.seq, s.start + s.len).unwrap();
            }
            let n: usize = spans.iter().map(|s| s.len).sum();
            paged.begin_step(&spans).unwrap();
            dense.begin_step(&spans).unwrap();
            for layer in 0..cfg.n_layers {
                let seed = (i * 10 + layer) as f32;
                let (q, k, v) = (
                    rows(seed, n, 4),
                    rows(seed + 100.0, n, 2),
                    rows(seed + 200.0, n, 2),
                );
                // The paged cache keeps f16: the reference gets the same rounded keys/values.
                let f16_values = |t: &Tensor| t.to_dtype(DType::F16)?.to_dtype(DType::F32);
                let (k16, v16) = (f16_values(&k).unwrap(), f16_values(&v).unwrap());
                let want = dense.attend(layer, &spans, &q, &k16, &v16).unwrap();
                let got = paged.attend(layer, &spans, &q, &k, &v).unwrap();
                assert!(max_diff(&got, &want) < 1e-5, "step {i} layer {layer}");
            }
        }
    }

    #[test]
    fn writing_past_the_allocated_blocks_is_an_error_not_a_panic() {
        let cfg = config();
        let mut paged = PagedKvCache::new(&cfg, 2, 2);
        paged.blocks_mut().ensure(7, 2).unwrap();
        let spans = [AttentionSpan {
            seq: 7,
            start: 0,
            len: 3,
        }];
        let err = paged.begin_step(&spans).unwrap_err();
        assert_eq!(err.error_type(), "kv_cache_full");
        // Attending anyway is an error too, not a write past the blocks.
        assert!(paged
            .attend(
                0,
                &spans,
                &rows(0.0, 3, 4),
                &rows(0.0, 3, 2),
                &rows(0.0, 3, 2)
            )
            .is_err());
    }

    #[test]
    fn release_frees_the_blocks() {
        let cfg = config();
        let mut paged = PagedKvCache::new(&cfg, 4, 2);
        paged.blocks_mut().ensure(1, 7).unwrap();
        assert_eq!(paged.blocks().free_blocks(), 0);
        paged.release(1);
        assert_eq!(paged.blocks().free_blocks(), 4);
    }
}
