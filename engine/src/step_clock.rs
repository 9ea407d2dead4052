//! Where a step's time goes: the step loop laps a [`StepClock`] at the end of each phase and
//! the clock records the phases and the whole step as histograms (names in
//! [`crate::metrics`]). On a GPU the forward pass only enqueues kernels, so without
//! `--profile-steps` the device's time shows in `sample` (its copy of the results waits for
//! the device); with it, the forward pass ends with a device synchronization
//! ([`SyncAfterForward`]) and `forward` holds the device's time.

use std::time::Instant;

use candle_core::Tensor;
use migserve_models::{ModelError, SeqChunk};

use crate::cache::PagedStore;
use crate::metrics as m;
use crate::step::StepModel;

/// A step's phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPhase {
    /// Scheduling: which sequences run, their blocks, their constraints taken out.
    Schedule,
    /// The forward pass (grammar masks are computed beside it).
    Forward,
    /// Prompt log-probabilities and the row sampler, up to the chosen tokens on the host.
    Sample,
    /// Tokens sent out: detokenization, stop checks, grammars advanced, alternatives.
    Emit,
}

impl StepPhase {
    /// The `phase` label of [`m::STEP_PHASE_DURATION`].
    pub fn name(self) -> &'static str {
        match self {
            StepPhase::Schedule => "schedule",
            StepPhase::Forward => "forward",
            StepPhase::Sample => "sample",
            StepPhase::Emit => "emit",
        }
    }
}

/// Whether a step only decoded (one new token per sequence) or also ran prompt chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Decode,
    Prefill,
}

impl StepKind {
    /// The kind of a step whose chunks have these lengths.
    pub fn of(chunk_lens: impl IntoIterator<Item = usize>) -> Self {
        match chunk_lens.into_iter().all(|len| len <= 1) {
            true => StepKind::Decode,
            false => StepKind::Prefill,
        }
    }

    /// The `kind` label of [`m::STEP_DURATION`] and [`m::STEP_SEQUENCES`].
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Decode => "decode",
            StepKind::Prefill => "prefill",
        }
    }
}

/// Times one step, phase by phase.
#[derive(Debug)]
pub struct StepClock {
    started: Instant,
    lap: Instant,
}

impl StepClock {
    /// Starts timing a step now.
    pub fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            lap: now,
        }
    }

    /// Records `phase` as the time since the previous lap (or the start).
    pub fn lap(&mut self, phase: StepPhase) {
        let now = Instant::now();
        metrics::histogram!(m::STEP_PHASE_DURATION, "phase" => phase.name())
            .record(now.duration_since(self.lap).as_secs_f64());
        self.lap = now;
    }

    /// Records the whole step, of `kind`, over `sequences` sequences. A step that failed is
    /// not finished: its phases stay recorded, the step is not.
    pub fn finish(self, kind: StepKind, sequences: usize) {
        let elapsed = self.started.elapsed().as_secs_f64();
        metrics::histogram!(m::STEP_DURATION, "kind" => kind.name()).record(elapsed);
        metrics::counter!(m::STEP_SEQUENCES, "kind" => kind.name()).increment(sequences as u64);
    }
}

/// A model whose forward pass waits for its device before it returns, so that the step's
/// `forward` phase holds the device's time (`--profile-steps`). It costs the overlap of the
/// host's sampling preparation with the device's work; on the CPU it changes nothing.
pub struct SyncAfterForward<M>(pub M);

impl<M: StepModel> StepModel for SyncAfterForward<M> {
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        cache: &mut dyn PagedStore,
    ) -> Result<Tensor, ModelError> {
        let logits = self.0.forward(chunks, all_positions, cache)?;
        logits.device().synchronize()?;
        Ok(logits)
    }

    fn context_length(&self) -> usize {
        self.0.context_length()
    }

    fn on_cpu(&self) -> bool {
        self.0.on_cpu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_with_a_prompt_chunk_is_a_prefill() {
        assert_eq!(StepKind::of([1, 1, 1]), StepKind::Decode);
        assert_eq!(StepKind::of([1, 7, 1]), StepKind::Prefill);
        assert_eq!(StepKind::of([]), StepKind::Decode);
    }
}
