//! The paged KV cache's storage: one preallocated buffer per layer for keys and one for
//! values, cut into blocks that [`BlockManager`] assigns to sequences.

use candle_core::{Device, Tensor};
use migserve_models::{KvStore, LlamaConfig, ModelError, SeqId};

use super::block_manager::BlockManager;

/// Keys and values of every layer, addressed through block tables.
pub struct PagedKvCache {
    blocks: BlockManager,
    /// Per layer: `[block][slot][kv_head][head_dim]` f32.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Floats in one position of one layer: kv_heads * head_dim.
    row: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl PagedKvCache {
    /// A cache of `total_blocks` blocks of `block_size` positions for this model.
    pub fn new(config: &LlamaConfig, total_blocks: usize, block_size: usize) -> Self {
        let row = config.n_kv_heads * config.head_dim;
        let floats = total_blocks * block_size * row;
        Self {
            blocks: BlockManager::new(total_blocks, block_size),
            keys: (0..config.n_layers).map(|_| vec![0.0; floats]).collect(),
            values: (0..config.n_layers).map(|_| vec![0.0; floats]).collect(),
            row,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
        }
    }

    /// Bytes one cached position takes over all layers (keys and values).
    pub fn bytes_per_position(config: &LlamaConfig) -> usize {
        2 * config.n_layers * config.n_kv_heads * config.head_dim * std::mem::size_of::<f32>()
    }

    /// The block bookkeeping.
    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    /// The block bookkeeping, for allocation by the scheduler.
    pub fn blocks_mut(&mut self) -> &mut BlockManager {
        &mut self.blocks
    }

    /// Offsets (in floats) of positions `from..to` of `seq`, as runs that are contiguous in
    /// storage: `(storage offset, positions in the run)`.
    fn runs(&self, seq: SeqId, from: usize, to: usize) -> Result<Vec<(usize, usize)>, ModelError> {
        let bs = self.blocks.block_size();
        let table = self.blocks.table(seq).unwrap_or(&[]);
        if to > table.len() * bs {
            return Err(ModelError::KvCacheFull(format!(
                "sequence {seq} has blocks for {} positions, {to} needed",
                table.len() * bs
            )));
        }
        let mut runs = Vec::new();
        let mut pos = from;
        while pos < to {
            let block = table[pos / bs] as usize;
            let slot = pos % bs;
            let n = (bs - slot).min(to - pos);
            runs.push(((block * bs + slot) * self.row, n));
            pos += n;
        }
        Ok(runs)
    }
}

impl KvStore for PagedKvCache {
    fn write_and_read(
        &mut self,
        seq: SeqId,
        layer: usize,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (_, n, _) = k.dims3()?;
        let end = start + n;
        if layer >= self.keys.len() {
            return Err(ModelError::InvalidInput(format!(
                "layer {layer} out of range"
            )));
        }
        // [kv_heads, n, hd] -> [n, kv_heads, hd]: one row per position.
        let k_rows = k.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let v_rows = v.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let row = self.row;
        let mut src = 0;
        for (offset, count) in self.runs(seq, start, end)? {
            let len = count * row;
            self.keys[layer][offset..offset + len].copy_from_slice(&k_rows[src..src + len]);
            self.values[layer][offset..offset + len].copy_from_slice(&v_rows[src..src + len]);
            src += len;
        }
        let mut k_all = Vec::with_capacity(end * row);
        let mut v_all = Vec::with_capacity(end * row);
        for (offset, count) in self.runs(seq, 0, end)? {
            let len = count * row;
            k_all.extend_from_slice(&self.keys[layer][offset..offset + len]);
            v_all.extend_from_slice(&self.values[layer][offset..offset + len]);
        }
        let shape = (end, self.n_kv_heads, self.head_dim);
        let to_heads = |data: Vec<f32>| -> Result<Tensor, ModelError> {
            Ok(Tensor::from_vec(data, shape, &Device::Cpu)?
                .transpose(0, 1)?
                .contiguous()?)
        };
        Ok((to_heads(k_all)?, to_heads(v_all)?))
    }

    fn release(&mut self, seq: SeqId) {
        self.blocks.release(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migserve_models::DenseKvStore;

    fn config() -> LlamaConfig {
        LlamaConfig {
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
        }
    }

    fn chunk(seed: f32, n: usize) -> Tensor {
        let data: Vec<f32> = (0..2 * n * 3).map(|i| seed + i as f32).collect();
        Tensor::from_vec(data, (2, n, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn paged_store_reads_back_what_the_dense_store_does() {
        let cfg = config();
        let mut paged = PagedKvCache::new(&cfg, 8, 2);
        let mut dense = DenseKvStore::new(cfg.n_layers);
        // Two sequences interleaved so their blocks are not contiguous.
        let writes = [
            (1u64, 0usize, 3usize),
            (2, 0, 1),
            (1, 3, 1),
            (2, 1, 4),
            (1, 4, 1),
        ];
        for (i, (seq, start, n)) in writes.into_iter().enumerate() {
            paged.blocks_mut().ensure(seq, start + n).unwrap();
            for layer in 0..cfg.n_layers {
                let k = chunk(100.0 * i as f32 + layer as f32, n);
                let v = chunk(-100.0 * i as f32 - layer as f32, n);
                let (pk, pv) = paged.write_and_read(seq, layer, start, &k, &v).unwrap();
                let (dk, dv) = dense.write_and_read(seq, layer, start, &k, &v).unwrap();
                assert_eq!(pk.to_vec3::<f32>().unwrap(), dk.to_vec3::<f32>().unwrap());
                assert_eq!(pv.to_vec3::<f32>().unwrap(), dv.to_vec3::<f32>().unwrap());
            }
        }
    }

    #[test]
    fn writing_past_the_allocated_blocks_is_an_error_not_a_panic() {
        let cfg = config();
        let mut paged = PagedKvCache::new(&cfg, 2, 2);
        paged.blocks_mut().ensure(7, 2).unwrap();
        let err = paged
            .write_and_read(7, 0, 0, &chunk(0.0, 3), &chunk(0.0, 3))
            .unwrap_err();
        assert_eq!(err.error_type(), "kv_cache_full");
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
