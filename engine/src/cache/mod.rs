//! Paged KV caches: the model's [`KvStore`] over blocks that the [`BlockManager`] hands out,
//! in host memory ([`cpu::PagedKvCache`]) or on a CUDA device (`cuda::CudaPagedKvCache`,
//! feature `cuda`).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use migserve_kernels::batch::{BatchLayout, SpanBlocks};
use migserve_models::{AttentionSpan, KvStore, ModelError};

use crate::block_manager::BlockManager;

/// The flat layout of a step's spans over their block tables (which cache row each new token
/// goes to, what each query row sees), shared by the CPU and CUDA caches.
pub fn batch_layout(
    blocks: &BlockManager,
    spans: &[AttentionSpan],
) -> Result<BatchLayout, ModelError> {
    let tables: Vec<SpanBlocks<'_>> = spans
        .iter()
        .map(|s| SpanBlocks {
            block_table: blocks.table(s.seq).unwrap_or(&[]),
            start: s.start,
            len: s.len,
        })
        .collect();
    BatchLayout::new(&tables, blocks.block_size())
        .map_err(|e| ModelError::KvCacheFull(e.to_string()))
}

/// An error unless `layer` is one of the cache's `layers`.
pub fn check_layer(layer: usize, layers: usize) -> Result<(), ModelError> {
    if layer >= layers {
        return Err(ModelError::InvalidInput(format!(
            "layer {layer} out of range (the cache has {layers})"
        )));
    }
    Ok(())
}

/// A paged KV cache the engine can run on: the model's [`KvStore`] and the block
/// bookkeeping the scheduler allocates from. The CPU cache in [`cpu`]; the CUDA one in
/// `cuda` (feature `cuda`).
pub trait PagedStore: KvStore + Send {
    /// The block bookkeeping.
    fn blocks(&self) -> &BlockManager;
    /// The block bookkeeping, for allocation by the scheduler.
    fn blocks_mut(&mut self) -> &mut BlockManager;
}
