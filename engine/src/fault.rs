//! Fault injection, for tests of what happens when the engine dies: with
//! `MIGSERVE_FAULT_PANIC_AT_STEP=N` in its environment, an engine's forward pass panics at its
//! N-th step, as a failed kernel assertion would. Unset (always, in production), nothing
//! changes.

use migserve_models::{ModelError, SeqChunk};

use crate::cache::PagedStore;
use crate::step::StepModel;

/// The environment variable that arms the panic.
pub const PANIC_AT_STEP_ENV: &str = "MIGSERVE_FAULT_PANIC_AT_STEP";

/// The step at which to panic, from the environment; `None` unless armed with a number >= 1.
pub fn panic_at_step_from_env() -> Option<u64> {
    std::env::var(PANIC_AT_STEP_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n >= 1)
}

/// A model whose `at`-th forward pass panics.
pub struct PanicAtStep<M> {
    inner: M,
    at: u64,
    steps: u64,
}

impl<M: StepModel> PanicAtStep<M> {
    /// Wraps `inner`; its `at`-th forward pass (1-based) panics.
    pub fn new(inner: M, at: u64) -> Self {
        Self {
            inner,
            at,
            steps: 0,
        }
    }
}

impl<M: StepModel> StepModel for PanicAtStep<M> {
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        cache: &mut dyn PagedStore,
    ) -> Result<candle_core::Tensor, ModelError> {
        self.steps += 1;
        if self.steps == self.at {
            panic!("injected fault: {PANIC_AT_STEP_ENV}={} reached", self.at);
        }
        self.inner.forward(chunks, all_positions, cache)
    }

    fn context_length(&self) -> usize {
        self.inner.context_length()
    }

    fn on_cpu(&self) -> bool {
        self.inner.on_cpu()
    }
}
