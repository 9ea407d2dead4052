//! The model behind an engine step: one batched forward pass over chunks of many sequences,
//! reading and writing their keys and values in the paged cache.

use candle_core::Tensor;
use migserve_models::{Decoder, ModelError, SeqChunk};

use crate::cache::PagedStore;

/// What the step loop needs from a model. [`Decoder`] is the real one; tests put a model of
/// their own here to run the scheduler, the cache bookkeeping and output processing without
/// weights.
pub trait StepModel: Send {
    /// Runs `chunks` (positions `start..start + tokens.len()` of each sequence) through the
    /// model, storing their keys and values in `cache`, and returns the logits, `[rows]
    /// [vocab]` on the model's device (they stay there: the step samples them there), rows
    /// in chunk order: one per position of a chunk whose `all_positions` entry is true
    /// (prompt log-probabilities), else one for its last position.
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        cache: &mut dyn PagedStore,
    ) -> Result<Tensor, ModelError>;

    /// Longest sequence (prompt and generated tokens) the model can hold.
    fn context_length(&self) -> usize;

    /// Whether the model computes on the CPU (then per-row host work runs on its thread pool).
    fn on_cpu(&self) -> bool;
}

impl StepModel for Decoder {
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        cache: &mut dyn PagedStore,
    ) -> Result<Tensor, ModelError> {
        Decoder::forward_rows(self, chunks, all_positions, cache)
    }

    fn context_length(&self) -> usize {
        self.config().context_length
    }

    fn on_cpu(&self) -> bool {
        self.device().is_cpu()
    }
}

impl<M: StepModel + ?Sized> StepModel for Box<M> {
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        cache: &mut dyn PagedStore,
    ) -> Result<Tensor, ModelError> {
        (**self).forward(chunks, all_positions, cache)
    }

    fn context_length(&self) -> usize {
        (**self).context_length()
    }

    fn on_cpu(&self) -> bool {
        (**self).on_cpu()
    }
}
