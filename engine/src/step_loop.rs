//! The engine thread: it owns the model and the KV cache and runs the scheduler's steps, one
//! batched forward pass each. Requests come in over a channel; each request's tokens go out
//! over its own channel as soon as they are sampled. A request whose channel is dropped (the
//! client went away) is cancelled before the next step.
//!
//! A step reads as its stages: schedule, forward (grammar masks computed beside it,
//! [`crate::grammar`]), sample ([`crate::row_sampler`]), update (output processing,
//! [`crate::output`]; log-probabilities, `logprobs`). Each request has one record, a
//! `RequestState`, which the scheduler holds by id. A panic on this thread fails every
//! request in flight and marks the engine dead ([`crate::status`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use candle_core::Tensor;
use migserve_kernels::cpu::parallel::ParallelFor;
use migserve_kernels::cpu::sample::{RowChoice, RowSampling};
use migserve_models::parallel::candle_pool;
use migserve_models::{ModelError, SeqChunk, SeqId, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::cache::PagedStore;
use crate::error::EngineError;
use crate::event::{EngineEvent, FinishEvent, FinishReason, TokenEvent};
use crate::grammar::mask_worker::{forward_beside, MaskWorker, Pending};
use crate::grammar::TokenMask;
use crate::logprobs::sampled_alternatives;
use crate::metrics as m;
use crate::request::EngineRequest;
use crate::request_state::RequestState;
use crate::row_sampler::{sample_rows, RowRequest};
use crate::sampling::LogitEdit;
use crate::scheduler::{Scheduler, SchedulerConfig, StepPlan};
use crate::status::{panic_message, DeadOnExit, EngineStatus};
use crate::step::StepModel;
use crate::step_clock::{StepClock, StepKind, StepPhase};

/// A validated request on its way to the engine thread, with the sender of its events.
pub struct Submission {
    pub request: EngineRequest,
    pub events: UnboundedSender<EngineEvent>,
}

/// Starts the engine thread: `model` runs the steps over `cache` (sized for the model, on its
/// device), `tokenizer` turns tokens into text. Returns the sender requests go in by.
pub fn spawn<M: StepModel + 'static>(
    model: M,
    tokenizer: Arc<Tokenizer>,
    cache: Box<dyn PagedStore>,
    scheduler: SchedulerConfig,
    status: Arc<EngineStatus>,
) -> std::io::Result<mpsc::Sender<Submission>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let _dead_on_exit = DeadOnExit(status.clone());
            let mut core = StepLoop::new(model, tokenizer, cache, scheduler, status.clone());
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| core.run(&rx))) {
                let why = panic_message(payload.as_ref());
                tracing::error!(panic = %why, "the engine thread panicked; failing every request in flight");
                status.mark_dead(format!("the engine thread panicked: {why}"));
                let error = EngineError::Crashed(format!(
                    "the engine crashed ({why}); this worker restarts"
                ));
                core.fail_everything(&error);
                while let Ok(s) = rx.try_recv() {
                    status.release();
                    let _ = s.events.send(EngineEvent::Failed(error.clone()));
                }
            }
        })?;
    Ok(tx)
}

/// A row that samples this step: its sequence, its row of the step's logits, how it
/// chooses, the edits to its logits and its grammar's mask.
struct PlannedRow {
    id: SeqId,
    row: usize,
    sampling: RowSampling,
    edits: Vec<LogitEdit>,
    mask: Option<TokenMask>,
}

/// The engine thread's state.
struct StepLoop<M> {
    model: M,
    tokenizer: Arc<Tokenizer>,
    cache: Box<dyn PagedStore>,
    /// The queues, and every request's one record.
    scheduler: Scheduler<RequestState>,
    next_id: SeqId,
    status: Arc<EngineStatus>,
    /// The grammar-mask thread, once a step has had a constraint.
    masks: Option<MaskWorker>,
}

impl<M: StepModel> StepLoop<M> {
    fn new(
        model: M,
        tokenizer: Arc<Tokenizer>,
        cache: Box<dyn PagedStore>,
        scheduler: SchedulerConfig,
        status: Arc<EngineStatus>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            cache,
            scheduler: Scheduler::new(scheduler),
            next_id: 0,
            status,
            masks: None,
        }
    }

    /// Steps until every sender is gone and nothing is left to do.
    fn run(&mut self, rx: &mpsc::Receiver<Submission>) {
        self.publish_gauges();
        loop {
            if self.scheduler.is_idle() {
                match rx.recv() {
                    Ok(s) => self.admit(s),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(s) => self.admit(s),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        if self.scheduler.is_idle() {
                            return;
                        }
                        break;
                    }
                }
            }
            self.drop_cancelled();
            self.step();
            self.publish_gauges();
        }
    }

    fn admit(&mut self, s: Submission) {
        let id = self.next_id;
        self.next_id += 1;
        m::counter_inc(m::REQUESTS, 1);
        m::counter_inc(m::PROMPT_TOKENS, s.request.prompt.len() as u64);
        let mut state = RequestState::new(id, s.request, s.events, self.tokenizer.eos_ids());
        if state.resumed_len > 0 {
            match state.replay(&self.tokenizer) {
                Ok(earlier) => {
                    let _ = state.events.send(EngineEvent::Resumed(earlier));
                }
                Err(e) => {
                    self.status.release();
                    let _ = state.events.send(EngineEvent::Failed(e));
                    return;
                }
            }
        }
        self.scheduler.add(state);
    }

    /// Frees the sequences whose clients went away.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .scheduler
            .records()
            .filter(|a| a.events.is_closed())
            .map(|a| a.seq.id)
            .collect();
        for id in gone {
            m::counter_inc(m::CANCELLED, 1);
            self.end(id);
        }
    }

    /// Removes a request, frees its blocks and stops counting it in flight; its record, for a
    /// last event. (Counts drop before that event goes out, so a client that has its answer
    /// and sends the next request at once is not refused as over the limit.)
    fn end(&mut self, id: SeqId) -> Option<RequestState> {
        let ended = self.scheduler.remove(id, self.cache.blocks_mut());
        if ended.is_some() {
            self.status.release();
        }
        ended
    }

    /// Drops the sequence and sends `error` to the request's client (the HTTP side counts it).
    fn fail(&mut self, id: SeqId, error: EngineError) {
        if let Some(a) = self.end(id) {
            let _ = a.events.send(EngineEvent::Failed(error));
        }
    }

    /// After a panic: every request still here gets `error`. The cache may be half-updated,
    /// so it is left alone; the thread ends right after.
    fn fail_everything(&mut self, error: &EngineError) {
        for a in self.scheduler.drain() {
            self.status.release();
            let _ = a.events.send(EngineEvent::Failed(error.clone()));
        }
    }

    fn step(&mut self) {
        let mut clock = StepClock::start();
        let plan = self.scheduler.schedule(self.cache.blocks_mut());
        m::counter_inc(m::PREEMPTIONS, plan.preempted.len() as u64);
        if plan.chunks.is_empty() {
            // Nothing can run: only possible if a waiting request can never get blocks, which
            // validation prevents. Fail the head of the queue rather than spin.
            if let Some(id) = self.scheduler.ids().first().copied() {
                self.fail(
                    id,
                    EngineError::Generation("the KV cache cannot hold this request".into()),
                );
            }
            return;
        }
        let all_positions = self.note_scheduled(&plan);
        let pending = self.take_constraints(&plan);
        clock.lap(StepPhase::Schedule);
        let worker = self.masks.take();
        let (result, masks, worker) =
            forward_beside(worker, pending, || self.forward(&plan, &all_positions));
        self.masks = worker;
        clock.lap(StepPhase::Forward);
        for (id, constraint, mask) in masks {
            if let Some(a) = self.scheduler.get_mut(id) {
                a.constraint = constraint;
                a.mask = Some(mask);
            }
        }
        m::counter_inc(m::STEPS, 1);
        let Some(logits) = self.checked_logits(&plan, &all_positions, result) else {
            return;
        };
        let Some(last_rows) = self.take_prompt_rows(&plan, &all_positions, &logits) else {
            return;
        };
        let ready = self.scheduler.complete(&plan);
        // Sequences that sample a token now (not the middle of a chunked prompt).
        let due: Vec<(SeqId, usize)> = plan
            .chunks
            .iter()
            .zip(last_rows)
            .filter(|(c, _)| ready.contains(&c.seq))
            .map(|(c, row)| (c.seq, row))
            .collect();
        self.sample_and_emit(&logits, &due, &mut clock);
        clock.finish(
            StepKind::of(plan.chunks.iter().map(|c| c.len)),
            plan.chunks.len(),
        );
    }

    /// Notes the plan's admissions (tokens found cached) and first schedulings; per chunk,
    /// whether its logits come back for every position (prompt log-probabilities).
    fn note_scheduled(&mut self, plan: &StepPlan) -> Vec<bool> {
        for &(id, cached) in &plan.admitted {
            if let Some(a) = self
                .scheduler
                .get_mut(id)
                .filter(|a| a.first_scheduled.is_none())
            {
                a.cached_tokens = cached;
            }
        }
        let now = Instant::now();
        let mut all_positions = Vec::with_capacity(plan.chunks.len());
        for c in &plan.chunks {
            let a = self.scheduler.get_mut(c.seq);
            all_positions.push(a.as_ref().is_some_and(|a| a.prefill.is_some()));
            if let Some(a) = a {
                a.note_scheduled(now);
            }
        }
        all_positions
    }

    /// The step's logits when the pass ran and returned one row per sampled position (the
    /// blocks this step was to fill stay cached only then); otherwise the batch fails.
    fn checked_logits(
        &mut self,
        plan: &StepPlan,
        all_positions: &[bool],
        result: Result<Tensor, ModelError>,
    ) -> Option<Tensor> {
        let expected: usize = plan
            .chunks
            .iter()
            .zip(all_positions)
            .map(|(c, all)| if *all { c.len } else { 1 })
            .sum();
        match result {
            Ok(t) if t.dims2().is_ok_and(|(rows, _)| rows == expected) => {
                self.cache.blocks_mut().commit_step();
                Some(t)
            }
            Ok(t) => {
                self.cache.blocks_mut().forget_step();
                let e = format!(
                    "the model returned logits of shape {:?} for {expected} rows",
                    t.dims(),
                );
                self.fail_batch(plan, &e);
                None
            }
            Err(e) => {
                self.cache.blocks_mut().forget_step();
                self.fail_batch(plan, &e.to_string());
                None
            }
        }
    }

    /// Gives the rows of every position (prompt log-probabilities) to their sequences; each
    /// chunk's row to sample from (its last).
    fn take_prompt_rows(
        &mut self,
        plan: &StepPlan,
        all_positions: &[bool],
        logits: &Tensor,
    ) -> Option<Vec<usize>> {
        let mut last_rows = Vec::with_capacity(plan.chunks.len());
        let mut offset = 0;
        for (c, all) in plan.chunks.iter().zip(all_positions) {
            let len = if *all { c.len } else { 1 };
            if *all {
                let rows = logits
                    .narrow(0, offset, len)
                    .and_then(|r| r.to_vec2::<f32>());
                match rows {
                    Ok(mut rows) => {
                        let tail = rows.pop().unwrap_or_default();
                        self.record_prompt_logprobs(c.seq, c.start, &rows, &tail);
                    }
                    Err(e) => {
                        self.fail_batch(plan, &e.to_string());
                        return None;
                    }
                }
            }
            last_rows.push(offset + len - 1);
            offset += len;
        }
        Some(last_rows)
    }

    /// The constraints of the sequences whose chunk reaches their last token (they sample
    /// after this step), taken out of their state so their masks can be computed meanwhile.
    fn take_constraints(&mut self, plan: &StepPlan) -> Pending {
        let mut pending = Vec::new();
        for c in &plan.chunks {
            let Some(a) = self
                .scheduler
                .get_mut(c.seq)
                .filter(|a| c.start + c.len >= a.seq.tokens.len())
            else {
                continue;
            };
            if let Some(constraint) = a.constraint.take() {
                pending.push((c.seq, constraint));
            }
        }
        pending
    }

    /// Records the log-probabilities of the prompt tokens that the rows of positions `start..`
    /// predict (see `PromptLogprobs::record`).
    fn record_prompt_logprobs(&mut self, id: SeqId, start: usize, rows: &[Vec<f32>], tail: &[f32]) {
        let Some(a) = self.scheduler.get_mut(id) else {
            return;
        };
        let prompt_len = a.prompt_len;
        if let Some(prefill) = a.prefill.as_mut() {
            prefill.record(
                &self.tokenizer,
                &a.seq.tokens,
                prompt_len,
                start,
                rows,
                tail,
            );
        }
    }

    /// A failed forward pass fails the sequences of its batch, and only those.
    fn fail_batch(&mut self, plan: &StepPlan, error: &str) {
        tracing::error!(%error, "forward pass failed");
        for c in &plan.chunks {
            self.fail(
                c.seq,
                EngineError::Generation(format!("forward pass failed: {error}")),
            );
        }
    }

    fn forward(&mut self, plan: &StepPlan, all_positions: &[bool]) -> Result<Tensor, ModelError> {
        let mut chunks = Vec::with_capacity(plan.chunks.len());
        for c in &plan.chunks {
            let a = self.scheduler.get(c.seq).ok_or_else(|| {
                ModelError::InvalidInput(format!("scheduled sequence {} is unknown", c.seq))
            })?;
            chunks.push(SeqChunk {
                seq: c.seq,
                tokens: &a.seq.tokens[c.start..c.start + c.len],
                start: c.start,
            });
        }
        self.model
            .forward(&chunks, all_positions, self.cache.as_mut())
    }

    /// Samples the next token of every sequence in `due` (each with its row of `logits`) where
    /// the logits are, and sends each out (lapping `clock` after each).
    fn sample_and_emit(&mut self, logits: &Tensor, due: &[(SeqId, usize)], clock: &mut StepClock) {
        let mut planned: Vec<PlannedRow> = Vec::with_capacity(due.len());
        for &(id, row) in due {
            let Some(a) = self.scheduler.get_mut(id) else {
                continue;
            };
            let mask = match a.take_mask() {
                Ok(mask) => mask,
                Err(e) => {
                    self.fail(id, e);
                    continue;
                }
            };
            let params = a.sampler.params();
            let edits = match params.edits_logits(a.output.generated()) {
                true => params.edits(&a.seq.tokens, a.prompt_len),
                false => Vec::new(),
            };
            planned.push(PlannedRow {
                id,
                row,
                sampling: a.sampler.next_row(),
                edits,
                mask,
            });
        }
        let requests: Vec<RowRequest<'_>> = planned
            .iter()
            .map(|p| RowRequest {
                row: p.row,
                sampling: p.sampling,
                edits: &p.edits,
                mask: p.mask.as_ref().map(TokenMask::words),
            })
            .collect();
        let serial = |n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)| f(0..n);
        let parallel: ParallelFor<'_> = match self.model.on_cpu() {
            true => &candle_pool,
            false => &serial,
        };
        let choices = match sample_rows(logits, &requests, parallel) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "sampling failed");
                for p in &planned {
                    self.fail(
                        p.id,
                        EngineError::Generation(format!("sampling failed: {e}")),
                    );
                }
                return;
            }
        };
        drop(requests);
        clock.lap(StepPhase::Sample);
        for (p, choice) in planned.into_iter().zip(choices) {
            self.emit(p.id, logits, p.row, choice);
        }
        clock.lap(StepPhase::Emit);
    }

    /// Sends out the token a sequence chose (its grammar advanced, its alternatives read from
    /// its raw row when asked for).
    fn emit(&mut self, id: SeqId, logits: &Tensor, row: usize, choice: RowChoice) {
        let context_length = self.model.context_length();
        let Some(a) = self.scheduler.get_mut(id) else {
            return;
        };
        let context_full = a.seq.tokens.len() + 1 >= context_length;
        let prev = a.seq.tokens.last().copied();
        let token = choice.token;
        let eos = self.tokenizer.eos_ids().contains(&token);
        let grammar_complete = match a.commit_grammar(token, eos) {
            Ok(done) => done,
            Err(e) => return self.fail(id, e),
        };
        let n = a.top_logprobs;
        let top = match sampled_alternatives(&self.tokenizer, logits, row, prev, choice.log_norm, n)
        {
            Ok(top) => top,
            Err(e) => {
                return self.fail(id, EngineError::Generation(format!("logprobs: {e}")));
            }
        };
        if !a.send_prefill() {
            m::counter_inc(m::CANCELLED, 1);
            self.end(id);
            return;
        }
        let now = Instant::now();
        a.note_token(now);
        let end = match (grammar_complete, context_full) {
            (true, _) => Some(FinishReason::GrammarComplete),
            (false, true) => Some(FinishReason::Length),
            (false, false) => None,
        };
        let out = match a.output.push(&self.tokenizer, token, end) {
            Ok(out) => out,
            Err(e) => {
                let error = EngineError::Generation(format!("detokenization failed: {e}"));
                return self.fail(id, error);
            }
        };
        let done = out.finish.map(|reason| a.finish(reason, now));
        let event = TokenEvent {
            id: token,
            text: out.text,
            visible: out.visible,
            logprob: choice.logprob,
            top,
            special: out.special,
        };
        self.deliver(id, event, done);
    }

    /// Sends a token to its client: the last one ends the request first (counts drop before
    /// the client sees its answer); a client gone cancels it.
    fn deliver(&mut self, id: SeqId, event: TokenEvent, done: Option<FinishEvent>) {
        let token = event.id;
        if done.is_some() {
            let delivered = self
                .end(id)
                .is_some_and(|a| a.events.send(EngineEvent::Token(event, done)).is_ok());
            if !delivered {
                m::counter_inc(m::CANCELLED, 1);
            }
            return;
        }
        let sent = self
            .scheduler
            .get(id)
            .is_some_and(|a| a.events.send(EngineEvent::Token(event, None)).is_ok());
        if sent {
            self.scheduler.push_token(id, token);
        } else {
            m::counter_inc(m::CANCELLED, 1);
            self.end(id);
        }
    }

    fn publish_gauges(&self) {
        let blocks = self.cache.blocks();
        m::gauge_set(m::QUEUE_SIZE, self.scheduler.waiting_len() as f64);
        m::gauge_set(m::BATCH_SIZE, self.scheduler.running_len() as f64);
        m::gauge_set(m::KV_BLOCKS_USED, blocks.used_blocks() as f64);
        m::gauge_set(m::KV_BLOCKS_FREE, blocks.free_blocks() as f64);
        m::gauge_set(m::PREFIX_CACHE_BLOCKS, blocks.cached_blocks() as f64);
        let stats = blocks.stats();
        self.status.set_prefix_stats(stats, blocks.cached_blocks());
        m::counter_set(m::PREFIX_CACHE_QUERIED_TOKENS, stats.queried_tokens);
        m::counter_set(m::PREFIX_CACHE_HIT_TOKENS, stats.hit_tokens);
        m::counter_set(m::PREFIX_CACHE_EVICTIONS, stats.evicted_blocks);
        m::counter_set(m::KV_BLOCKS_ALLOCATED, stats.allocated_blocks);
    }
}
