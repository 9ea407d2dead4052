//! The one record of a request on the engine thread, held by the [`crate::scheduler`] by id:
//! its sequence (tokens and computed positions, which the scheduler plans over), where its
//! events go, how it samples, its output processing, its grammar, its prompt
//! log-probabilities and its timings.

use std::time::Instant;

use migserve_models::{SeqId, Tokenizer};

use crate::sampling::Sampler;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{EngineError, Field};
use crate::event::{EngineEvent, FinishEvent, FinishReason, TokenEvent};
use crate::grammar::{Constraint, TokenMask};
use crate::logprobs::PromptLogprobs;
use crate::metrics as m;
use crate::output::OutputProcessor;
use crate::request::EngineRequest;
use crate::scheduler::{Scheduled, Sequence};

/// Most prompt tokens per step of a request that wants the prompt's log-probabilities: its
/// logits come back for every position (`positions x vocab` f32), so its chunks stay small
/// (64 x 152k vocabulary = 39 MB).
const PROMPT_LOGPROBS_CHUNK: usize = 64;

/// One request on the engine thread.
pub(crate) struct RequestState {
    /// Its prompt and generated tokens and how many are computed (the scheduler's part).
    pub(crate) seq: Sequence,
    pub(crate) events: UnboundedSender<EngineEvent>,
    pub(crate) sampler: Sampler,
    pub(crate) output: OutputProcessor,
    /// When the request reached the server.
    pub(crate) arrived: Instant,
    /// Its prompt's tokens, the first of `seq.tokens`.
    pub(crate) prompt_len: usize,
    /// Tokens of output generated elsewhere that it resumes from, right after the prompt.
    pub(crate) resumed_len: usize,
    /// Alternatives asked for at each position.
    pub(crate) top_logprobs: usize,
    /// The prompt's log-probabilities while they are computed, when the request asked for
    /// them; taken when they are sent (before the first token).
    pub(crate) prefill: Option<PromptLogprobs>,
    pub(crate) first_scheduled: Option<Instant>,
    pub(crate) first_token: Option<Instant>,
    /// Prompt tokens the prefix cache held at its first admission.
    pub(crate) cached_tokens: usize,
    /// The request's grammar state, when it has one.
    pub(crate) constraint: Option<Constraint>,
    /// The tokens the grammar allows at the position sampled next, computed while the step's
    /// forward pass ran.
    pub(crate) mask: Option<Result<TokenMask, String>>,
}

impl RequestState {
    /// The state of a request just admitted as sequence `id`; `eos_ids` end its output unless
    /// it ignores eos.
    pub(crate) fn new(
        id: SeqId,
        request: EngineRequest,
        events: UnboundedSender<EngineEvent>,
        eos_ids: &[u32],
    ) -> Self {
        // Each part goes where it is used: the prompt and the resumed output become the
        // sequence's tokens, the parameters the sampler's, the stops the output's.
        let EngineRequest {
            prompt,
            mut params,
            max_new_tokens,
            stop,
            ignore_eos,
            logprobs,
            constraint,
            resumed,
            arrived,
        } = request;
        if !ignore_eos {
            params.end_tokens = eos_ids.to_vec();
        }
        let sampler = Sampler::resumed(params, resumed.len());
        let output = OutputProcessor::new(max_new_tokens, stop, ignore_eos);
        let prefill = logprobs
            .prompt
            .then(|| PromptLogprobs::new(&prompt, logprobs.top));
        let (prompt_len, resumed_len) = (prompt.len(), resumed.len());
        let mut tokens = prompt;
        tokens.extend_from_slice(&resumed);
        let mut seq = Sequence::new(id, tokens);
        if logprobs.prompt {
            seq = seq
                .with_chunk_limit(PROMPT_LOGPROBS_CHUNK)
                .without_prefix_reuse();
        }
        Self {
            seq,
            events,
            sampler,
            output,
            arrived,
            prompt_len,
            resumed_len,
            top_logprobs: logprobs.top,
            constraint,
            prefill,
            first_scheduled: None,
            first_token: None,
            cached_tokens: 0,
            mask: None,
        }
    }

    /// Runs a resumed request's earlier output through its output processing, as if it had
    /// been generated here; an output that had already finished is refused.
    pub(crate) fn replay(&mut self, tokenizer: &Tokenizer) -> Result<Vec<TokenEvent>, EngineError> {
        let resumed = &self.seq.tokens[self.prompt_len..self.prompt_len + self.resumed_len];
        let mut events = Vec::with_capacity(resumed.len());
        for &id in resumed {
            let out = self.output.push(tokenizer, id, None).map_err(|e| {
                EngineError::invalid(Field::Resume, format!("the output to resume from: {e}"))
            })?;
            if out.finish.is_some() {
                return Err(EngineError::invalid(
                    Field::Resume,
                    "the output to resume from has already finished",
                ));
            }
            events.push(TokenEvent {
                id,
                text: out.text,
                visible: out.visible,
                logprob: 0.0,
                top: Vec::new(),
                special: out.special,
            });
        }
        Ok(events)
    }

    /// Notes its first scheduling (`now`), once.
    pub(crate) fn note_scheduled(&mut self, now: Instant) {
        if self.first_scheduled.is_none() {
            self.first_scheduled = Some(now);
            m::histogram_record(m::QUEUE_DURATION, now.duration_since(self.arrived));
        }
    }

    /// The grammar's mask for the token sampled now (computed beside the forward pass, or
    /// here when it was not); an error when the grammar failed or allows nothing.
    pub(crate) fn take_mask(&mut self) -> Result<Option<TokenMask>, EngineError> {
        let mask = match (self.mask.take(), self.constraint.as_mut()) {
            (Some(mask), _) => Some(mask),
            (None, Some(c)) => Some(c.mask()),
            (None, None) => None,
        };
        match mask {
            Some(Ok(mask)) if mask.count() > 0 => Ok(Some(mask)),
            Some(Ok(_)) => Err(EngineError::Generation(
                "the grammar allows no token here".into(),
            )),
            Some(Err(e)) => Err(EngineError::Generation(format!("grammar: {e}"))),
            None => Ok(None),
        }
    }

    /// Advances the grammar past `token` (an end-of-sequence token ends the output itself
    /// and goes to no grammar); whether the grammar is complete after it.
    pub(crate) fn commit_grammar(&mut self, token: u32, eos: bool) -> Result<bool, EngineError> {
        match self.constraint.as_mut().filter(|_| !eos) {
            Some(c) => c
                .commit(token)
                .map(|()| c.is_finished())
                .map_err(|e| EngineError::Generation(format!("grammar: {e}"))),
            None => Ok(false),
        }
    }

    /// Sends the prompt's log-probabilities, once, before the first token; false when the
    /// client is gone.
    pub(crate) fn send_prefill(&mut self) -> bool {
        match self.prefill.take() {
            Some(prefill) => self
                .events
                .send(EngineEvent::Prefill(prefill.into_entries()))
                .is_ok(),
            None => true,
        }
    }

    /// Notes a token sampled at `now` (the first one's time to first token).
    pub(crate) fn note_token(&mut self, now: Instant) {
        if self.first_token.is_none() {
            self.first_token = Some(now);
            m::histogram_record(m::TIME_TO_FIRST_TOKEN, now.duration_since(self.arrived));
        }
        m::counter_inc(m::GENERATED_TOKENS, 1);
    }

    /// The request's finish event at `now`, for `reason` (its duration metrics recorded).
    pub(crate) fn finish(&self, reason: FinishReason, now: Instant) -> FinishEvent {
        let generated = self.output.generated();
        let first_scheduled = self.first_scheduled.unwrap_or(now);
        let first_token = self.first_token.unwrap_or(now);
        m::histogram_record(m::REQUEST_DURATION, now.duration_since(self.arrived));
        if generated > 1 {
            m::histogram_record(
                m::TIME_PER_OUTPUT_TOKEN,
                now.duration_since(first_token) / (generated as u32 - 1),
            );
        }
        FinishEvent {
            reason,
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens,
            generated_tokens: generated,
            queue_time: first_scheduled.duration_since(self.arrived),
            inference_time: now.duration_since(first_scheduled),
            time_to_first_token: first_token.duration_since(self.arrived),
            seed: self.sampler.params().seed,
        }
    }
}

impl Scheduled for RequestState {
    fn sequence(&self) -> &Sequence {
        &self.seq
    }

    fn sequence_mut(&mut self) -> &mut Sequence {
        &mut self.seq
    }
}
