//! The engine thread: it owns the model and the KV cache and runs the scheduler's steps, one
//! batched forward pass each. Requests come in over a channel; each request's tokens go out
//! over its own channel as soon as they are sampled. A request whose channel is dropped (the
//! client went away) is cancelled before the next step.
//!
//! A panic on this thread (a kernel assertion, an index out of range) does not leave a zombie
//! behind: the engine is marked dead, every request in flight or queued gets a
//! [`EngineError::Crashed`] event, and whoever watches [`EngineStatus::watch`] (the worker)
//! exits so that the supervisor restarts it.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::Tensor;
use migserve_kernels::cpu::exp::log_sum_exp;
use migserve_kernels::cpu::parallel::ParallelFor;
use migserve_kernels::cpu::sample::{RowChoice, RowSampling};
use migserve_models::parallel::candle_pool;
use migserve_models::{top_logprobs, LogitEdit, ModelError, Sampler, SeqChunk, SeqId, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::block_manager::PrefixStats;
use crate::cache::PagedStore;
use crate::engine::{Health, PrefixCacheStatus};
use crate::error::EngineError;
use crate::event::{
    EngineEvent, FinishEvent, FinishReason, PrefillLogprob, TokenEvent, TokenLogprob,
};
use crate::grammar::{Constraint, TokenMask};
use crate::metrics as m;
use crate::output::OutputProcessor;
use crate::request::EngineRequest;
use crate::row_sampler::{sample_rows, RowRequest};
use crate::scheduler::{Scheduler, SchedulerConfig, Sequence, StepPlan};
use crate::step::StepModel;
use crate::step_clock::{StepClock, StepKind, StepPhase};

/// Most prompt tokens per step of a request that wants the prompt's log-probabilities: its
/// logits come back for every position (`positions x vocab` f32), so its chunks stay small
/// (64 x 152k vocabulary = 39 MB).
const PROMPT_LOGPROBS_CHUNK: usize = 64;

/// A validated request on its way to the engine thread, with the sender of its events.
pub struct Submission {
    pub request: EngineRequest,
    pub events: UnboundedSender<EngineEvent>,
}

/// What the submitting side and the engine thread share: requests in flight and health.
#[derive(Debug)]
pub struct EngineStatus {
    in_flight: AtomicUsize,
    health: watch::Sender<Health>,
    /// Held while a request is checked against the health and sent, and while the engine is
    /// marked dead: once it is dead, nothing more can reach the channel, so the thread's last
    /// drain fails every request that did.
    gate: Mutex<()>,
    /// The prefix cache's counters as of the last step.
    prefix: Mutex<PrefixCacheStatus>,
}

impl Default for EngineStatus {
    fn default() -> Self {
        Self {
            prefix: Mutex::new(PrefixCacheStatus::default()),
            in_flight: AtomicUsize::new(0),
            health: watch::Sender::new(Health::Healthy),
            gate: Mutex::new(()),
        }
    }
}

impl EngineStatus {
    /// Counts a new request in flight unless `limit` are already; the count before it.
    pub fn try_admit(&self, limit: usize) -> Result<usize, usize> {
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if previous >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(previous);
        }
        Ok(previous)
    }

    /// A request in flight is done (finished, failed, cancelled, or never reached the thread).
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests waiting or running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The engine's health now.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Health changes.
    pub fn watch(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Holds off [`EngineStatus::mark_dead`] while a submitter checks the health and sends.
    pub fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The prefix cache's counters as of the last step.
    pub fn prefix_cache(&self) -> PrefixCacheStatus {
        *self.prefix.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_prefix_stats(&self, stats: PrefixStats, cached_blocks: usize) {
        let mut p = self.prefix.lock().unwrap_or_else(|p| p.into_inner());
        p.queried_tokens = stats.queried_tokens;
        p.hit_tokens = stats.hit_tokens;
        p.evicted_blocks = stats.evicted_blocks;
        p.cached_blocks = cached_blocks;
    }

    /// Marks the engine dead for good (the first reason stays).
    pub fn mark_dead(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let _gate = self.gate();
        self.health.send_if_modified(|h| {
            if h.is_healthy() {
                *h = Health::Dead(reason);
                true
            } else {
                false
            }
        });
    }
}

/// Marks the engine dead when the thread ends by any path: all senders gone, or a panic
/// (marked with its own reason first), even one while cleaning up after a panic.
struct DeadOnExit(Arc<EngineStatus>);

impl Drop for DeadOnExit {
    fn drop(&mut self) {
        self.0.mark_dead("the engine has stopped");
    }
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

/// The `n` most likely tokens of a row (normalizer `norm`) after token `prev`, each with its
/// text as it would read after `prev` (SentencePiece drops a leading space from a token
/// decoded alone).
fn alternatives(
    tokenizer: &Tokenizer,
    prev: Option<u32>,
    row: &[f32],
    norm: f32,
    n: usize,
) -> Vec<TokenLogprob> {
    if n == 0 {
        return Vec::new();
    }
    let before = prev.and_then(|p| tokenizer.decode(&[p], false).ok().map(|t| (p, t)));
    top_logprobs(row, norm, n)
        .into_iter()
        .map(|(id, logprob)| {
            let after = before.as_ref().and_then(|(p, text)| {
                let both = tokenizer.decode(&[*p, id], false).ok()?;
                both.strip_prefix(text.as_str()).map(str::to_string)
            });
            TokenLogprob {
                id,
                text: after.unwrap_or_else(|| tokenizer.decode(&[id], false).unwrap_or_default()),
                logprob,
                special: tokenizer.eos_ids().contains(&id),
            }
        })
        .collect()
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

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Per-request state the scheduler does not need.
struct Active {
    events: UnboundedSender<EngineEvent>,
    sampler: Sampler,
    output: OutputProcessor,
    request: EngineRequest,
    /// The prompt's log-probabilities while they are computed, when the request asked for
    /// them; taken when they are sent (before the first token).
    prefill: Option<Vec<PrefillLogprob>>,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    /// Prompt tokens the prefix cache held at its first admission.
    cached_tokens: usize,
    /// The request's grammar state, when it has one.
    constraint: Option<Constraint>,
    /// The tokens the grammar allows at the position sampled next, computed while the step's
    /// forward pass ran.
    mask: Option<Result<TokenMask, String>>,
}

/// Constraints taken out of their sequences for the length of a forward pass.
type Pending = Vec<(SeqId, Constraint)>;

/// The constraints given back after the pass, each with its mask (or why there is none).
type Masked = Vec<(SeqId, Option<Constraint>, Result<TokenMask, String>)>;

/// Each constraint's mask for its next token.
fn masks_of(pending: Pending) -> Masked {
    pending
        .into_iter()
        .map(|(id, mut c)| {
            let mask = c.mask();
            (id, Some(c), mask)
        })
        .collect()
}

/// A thread that computes the masks of a step's constrained sequences while the engine
/// thread runs the forward pass (so rows without a grammar never wait for one), started by
/// the first step with a constraint and kept for the next ones (a step is too short to pay
/// for a new thread each time).
struct MaskWorker {
    jobs: mpsc::Sender<Pending>,
    done: mpsc::Receiver<Masked>,
}

impl MaskWorker {
    fn start() -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Pending>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("grammar-masks".into())
            .spawn(move || {
                while let Ok(pending) = job_rx.recv() {
                    let ids: Vec<SeqId> = pending.iter().map(|(id, _)| *id).collect();
                    let masked = catch_unwind(AssertUnwindSafe(|| masks_of(pending)))
                        // A panic in the grammar code loses these constraints (their sequences
                        // fail); the thread goes on.
                        .unwrap_or_else(|p| {
                            let why =
                                format!("the grammar panicked: {}", panic_message(p.as_ref()));
                            ids.iter().map(|id| (*id, None, Err(why.clone()))).collect()
                        });
                    if done_tx.send(masked).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { jobs, done })
    }

    /// Runs `forward` here while the worker computes each pending constraint's mask.
    fn beside<R>(&self, pending: Pending, forward: impl FnOnce() -> R) -> (R, Masked) {
        let ids: Vec<SeqId> = pending.iter().map(|(id, _)| *id).collect();
        let sent = self.jobs.send(pending).is_ok();
        let result = forward();
        let masked = match sent {
            true => self.done.recv().ok(),
            false => None,
        };
        let masked = masked.unwrap_or_else(|| {
            let why = "the grammar thread is gone".to_string();
            ids.iter().map(|id| (*id, None, Err(why.clone()))).collect()
        });
        (result, masked)
    }
}

/// The engine thread's state.
struct StepLoop<M> {
    model: M,
    tokenizer: Arc<Tokenizer>,
    cache: Box<dyn PagedStore>,
    scheduler: Scheduler,
    active: HashMap<SeqId, Active>,
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
            active: HashMap::new(),
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

    fn admit(&mut self, mut s: Submission) {
        let id = self.next_id;
        self.next_id += 1;
        m::counter_inc(m::REQUESTS, 1);
        m::counter_inc(m::PROMPT_TOKENS, s.request.prompt.len() as u64);
        let mut params = s.request.params.clone();
        if !s.request.ignore_eos {
            params.end_tokens = self.tokenizer.eos_ids().to_vec();
        }
        let sampler = Sampler::resumed(params, s.request.resumed.len());
        let constraint = s.request.constraint.take();
        let mut output = OutputProcessor::new(
            s.request.max_new_tokens,
            s.request.stop.clone(),
            s.request.ignore_eos,
        );
        if !s.request.resumed.is_empty() {
            match self.replay(&mut output, &s.request.resumed) {
                Ok(earlier) => {
                    let _ = s.events.send(EngineEvent::Resumed(earlier));
                }
                Err(e) => {
                    self.status.release();
                    let _ = s.events.send(EngineEvent::Failed(e));
                    return;
                }
            }
        }
        let tokens = [s.request.prompt.as_slice(), &s.request.resumed].concat();
        let mut sequence = Sequence::new(id, tokens);
        if s.request.logprobs.prompt {
            sequence = sequence
                .with_chunk_limit(PROMPT_LOGPROBS_CHUNK)
                .without_prefix_reuse();
        }
        self.scheduler.add(sequence);
        let prefill = s.request.logprobs.prompt.then(|| {
            vec![PrefillLogprob {
                id: s.request.prompt[0],
                logprob: None,
                top: Vec::new(),
            }]
        });
        self.active.insert(
            id,
            Active {
                events: s.events,
                sampler,
                output,
                request: s.request,
                prefill,
                first_scheduled: None,
                first_token: None,
                cached_tokens: 0,
                constraint,
                mask: None,
            },
        );
    }

    /// Runs a resumed request's earlier output through its output processing, as if it had
    /// been generated here; an output that had already finished is refused.
    fn replay(
        &self,
        output: &mut OutputProcessor,
        resumed: &[u32],
    ) -> Result<Vec<TokenEvent>, EngineError> {
        let mut events = Vec::with_capacity(resumed.len());
        for &id in resumed {
            let out = output
                .push(&self.tokenizer, id, None)
                .map_err(|e| EngineError::Validation(format!("the output to resume from: {e}")))?;
            if out.finish.is_some() {
                return Err(EngineError::Validation(
                    "the output to resume from has already finished".into(),
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

    /// Frees the sequences whose clients went away.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            m::counter_inc(m::CANCELLED, 1);
            self.end(id);
        }
    }

    /// Removes a sequence everywhere, frees its blocks and stops counting it in flight; its
    /// state, for a last event. (Counts drop before that event goes out, so a client that has
    /// its answer and sends the next request at once is not refused as over the limit.)
    fn end(&mut self, id: SeqId) -> Option<Active> {
        self.scheduler.remove(id, self.cache.blocks_mut());
        let active = self.active.remove(&id);
        if active.is_some() {
            self.status.release();
        }
        active
    }

    /// Drops the sequence and sends `error` to the request's client (the HTTP side counts it).
    fn fail(&mut self, id: SeqId, error: EngineError) {
        if let Some(a) = self.end(id) {
            let _ = a.events.send(EngineEvent::Failed(error));
        }
    }

    /// After a panic: every request still here gets `error`. The scheduler and cache may be
    /// half-updated, so they are left alone; the thread ends right after.
    fn fail_everything(&mut self, error: &EngineError) {
        for (_, a) in self.active.drain() {
            self.status.release();
            let _ = a.events.send(EngineEvent::Failed(error.clone()));
        }
    }

    fn step(&mut self) {
        let mut clock = StepClock::start();
        let plan = self.scheduler.schedule(self.cache.blocks_mut());
        m::counter_inc(m::PREEMPTIONS, plan.preempted.len() as u64);
        for &(id, cached) in &plan.admitted {
            if let Some(a) = self
                .active
                .get_mut(&id)
                .filter(|a| a.first_scheduled.is_none())
            {
                a.cached_tokens = cached;
            }
        }
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
        let now = Instant::now();
        // Per chunk: whether its logits come back for every position (prompt logprobs).
        let mut all_positions = Vec::with_capacity(plan.chunks.len());
        for c in &plan.chunks {
            let a = self.active.get_mut(&c.seq);
            all_positions.push(a.as_ref().is_some_and(|a| a.prefill.is_some()));
            if let Some(a) = a.filter(|a| a.first_scheduled.is_none()) {
                a.first_scheduled = Some(now);
                m::histogram_record(m::QUEUE_DURATION, now.duration_since(a.request.arrived));
            }
        }
        let pending = self.take_constraints(&plan);
        clock.lap(StepPhase::Schedule);
        let (result, masks) = self.forward_beside_masks(&plan, &all_positions, pending);
        clock.lap(StepPhase::Forward);
        for (id, constraint, mask) in masks {
            if let Some(a) = self.active.get_mut(&id) {
                a.constraint = constraint;
                a.mask = Some(mask);
            }
        }
        m::counter_inc(m::STEPS, 1);
        let expected: usize = plan
            .chunks
            .iter()
            .zip(&all_positions)
            .map(|(c, all)| if *all { c.len } else { 1 })
            .sum();
        // The blocks this step was to fill stay cached only if it ran.
        let logits = match result {
            Ok(t) if t.dims2().is_ok_and(|(rows, _)| rows == expected) => {
                self.cache.blocks_mut().commit_step();
                t
            }
            Ok(t) => {
                self.cache.blocks_mut().forget_step();
                let e = format!(
                    "the model returned logits of shape {:?} for {expected} rows",
                    t.dims(),
                );
                self.fail_batch(&plan, &e);
                return;
            }
            Err(e) => {
                self.cache.blocks_mut().forget_step();
                self.fail_batch(&plan, &e.to_string());
                return;
            }
        };
        // Rows of every position (prompt log-probabilities) go to their sequences; each
        // chunk samples from its last row.
        let mut last_rows = Vec::with_capacity(plan.chunks.len());
        let mut offset = 0;
        for (c, all) in plan.chunks.iter().zip(&all_positions) {
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
                        self.fail_batch(&plan, &e.to_string());
                        return;
                    }
                }
            }
            last_rows.push(offset + len - 1);
            offset += len;
        }
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

    /// The constraints of the sequences whose chunk reaches their last token (they sample
    /// after this step), taken out of their state so their masks can be computed meanwhile.
    fn take_constraints(&mut self, plan: &StepPlan) -> Pending {
        let mut pending = Vec::new();
        for c in &plan.chunks {
            let samples = self
                .scheduler
                .get(c.seq)
                .is_some_and(|seq| c.start + c.len >= seq.tokens.len());
            let Some(a) = self.active.get_mut(&c.seq).filter(|_| samples) else {
                continue;
            };
            if let Some(constraint) = a.constraint.take() {
                pending.push((c.seq, constraint));
            }
        }
        pending
    }

    /// Records the log-probabilities of the prompt tokens that the rows of positions
    /// `start..` predict (`rows`, then `tail` for the chunk's last position, which predicts
    /// a prompt token only in the middle of a chunked prompt). Positions already recorded
    /// (a prompt recomputed after preemption) are skipped.
    fn record_prompt_logprobs(&mut self, id: SeqId, start: usize, rows: &[Vec<f32>], tail: &[f32]) {
        let Some(seq) = self.scheduler.get(id) else {
            return;
        };
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        let (prompt_len, top) = (a.request.prompt.len(), a.request.logprobs.top);
        let Some(prefill) = a.prefill.as_mut() else {
            return;
        };
        let all = rows.iter().map(Vec::as_slice).chain(std::iter::once(tail));
        for (j, row) in all.enumerate() {
            let target = start + j + 1;
            if target >= prompt_len || target >= seq.tokens.len() {
                break;
            }
            if target != prefill.len() {
                continue;
            }
            let token = seq.tokens[target];
            let norm = log_sum_exp(row);
            prefill.push(PrefillLogprob {
                id: token,
                logprob: row.get(token as usize).map(|l| l - norm),
                top: alternatives(
                    &self.tokenizer,
                    Some(seq.tokens[target - 1]),
                    row,
                    norm,
                    top,
                ),
            });
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

    /// The forward pass, with the pending constraints' masks computed beside it on the mask
    /// thread (here, before it, if no thread can be started).
    fn forward_beside_masks(
        &mut self,
        plan: &StepPlan,
        all_positions: &[bool],
        pending: Pending,
    ) -> (Result<Tensor, ModelError>, Masked) {
        if pending.is_empty() {
            return (self.forward(plan, all_positions), Vec::new());
        }
        let worker = match self.masks.take() {
            Some(w) => w,
            None => match MaskWorker::start() {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for grammar masks");
                    let masked = masks_of(pending);
                    return (self.forward(plan, all_positions), masked);
                }
            },
        };
        let out = worker.beside(pending, || self.forward(plan, all_positions));
        self.masks = Some(worker);
        out
    }

    fn forward(&mut self, plan: &StepPlan, all_positions: &[bool]) -> Result<Tensor, ModelError> {
        let mut chunks = Vec::with_capacity(plan.chunks.len());
        for c in &plan.chunks {
            let seq = self.scheduler.get(c.seq).ok_or_else(|| {
                ModelError::InvalidInput(format!("scheduled sequence {} is unknown", c.seq))
            })?;
            chunks.push(SeqChunk {
                seq: c.seq,
                tokens: &seq.tokens[c.start..c.start + c.len],
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
            let Some(seq) = self.scheduler.get(id) else {
                continue;
            };
            let Some(a) = self.active.get_mut(&id) else {
                continue;
            };
            let mask = match (a.mask.take(), a.constraint.as_mut()) {
                (Some(mask), _) => Some(mask),
                (None, Some(c)) => Some(c.mask()),
                (None, None) => None,
            };
            let mask = match mask {
                Some(Ok(mask)) if mask.count() > 0 => Some(mask),
                Some(Ok(_)) => {
                    let e = "the grammar allows no token here".to_string();
                    self.fail(id, EngineError::Generation(e));
                    continue;
                }
                Some(Err(e)) => {
                    self.fail(id, EngineError::Generation(format!("grammar: {e}")));
                    continue;
                }
                None => None,
            };
            let params = a.sampler.params();
            let edits = match params.edits_logits(a.output.generated()) {
                true => params.edits(&seq.tokens, a.request.prompt.len()),
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
        let Some(seq) = self.scheduler.get(id) else {
            return;
        };
        let context_full = seq.tokens.len() + 1 >= self.model.context_length();
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        let token = choice.token;
        // An end-of-sequence token ends the output itself; any other goes to the grammar.
        let eos = self.tokenizer.eos_ids().contains(&token);
        let committed = match a.constraint.as_mut().filter(|_| !eos) {
            Some(c) => c.commit(token).map(|()| c.is_finished()),
            None => Ok(false),
        };
        let grammar_complete = match committed {
            Ok(done) => done,
            Err(e) => {
                self.fail(id, EngineError::Generation(format!("grammar: {e}")));
                return;
            }
        };
        let logprob = choice.logprob;
        let top = match a.request.logprobs.top {
            0 => Vec::new(),
            n => match logits.get(row).and_then(|r| r.to_vec1::<f32>()) {
                Ok(raw) => alternatives(
                    &self.tokenizer,
                    seq.tokens.last().copied(),
                    &raw,
                    choice.log_norm,
                    n,
                ),
                Err(e) => {
                    self.fail(id, EngineError::Generation(format!("logprobs: {e}")));
                    return;
                }
            },
        };
        if let Some(prefill) = a.prefill.take() {
            if a.events.send(EngineEvent::Prefill(prefill)).is_err() {
                m::counter_inc(m::CANCELLED, 1);
                self.end(id);
                return;
            }
        }
        let now = Instant::now();
        if a.first_token.is_none() {
            a.first_token = Some(now);
            m::histogram_record(
                m::TIME_TO_FIRST_TOKEN,
                now.duration_since(a.request.arrived),
            );
        }
        m::counter_inc(m::GENERATED_TOKENS, 1);
        let end = match (grammar_complete, context_full) {
            (true, _) => Some(FinishReason::GrammarComplete),
            (false, true) => Some(FinishReason::Length),
            (false, false) => None,
        };
        let out = match a.output.push(&self.tokenizer, token, end) {
            Ok(out) => out,
            Err(e) => {
                let error = EngineError::Generation(format!("detokenization failed: {e}"));
                self.fail(id, error);
                return;
            }
        };
        let generated = a.output.generated();
        let done = out.finish.map(|reason| {
            let first_scheduled = a.first_scheduled.unwrap_or(now);
            let first_token = a.first_token.unwrap_or(now);
            m::histogram_record(m::REQUEST_DURATION, now.duration_since(a.request.arrived));
            if generated > 1 {
                m::histogram_record(
                    m::TIME_PER_OUTPUT_TOKEN,
                    now.duration_since(first_token) / (generated as u32 - 1),
                );
            }
            FinishEvent {
                reason,
                prompt_tokens: a.request.prompt.len(),
                cached_tokens: a.cached_tokens,
                generated_tokens: generated,
                queue_time: first_scheduled.duration_since(a.request.arrived),
                inference_time: now.duration_since(first_scheduled),
                time_to_first_token: first_token.duration_since(a.request.arrived),
                seed: a.request.params.seed,
            }
        });
        let event = TokenEvent {
            id: token,
            text: out.text,
            visible: out.visible,
            logprob,
            top,
            special: out.special,
        };
        if done.is_some() {
            let delivered = self
                .end(id)
                .is_some_and(|a| a.events.send(EngineEvent::Token(event, done)).is_ok());
            if !delivered {
                m::counter_inc(m::CANCELLED, 1);
            }
        } else if a.events.send(EngineEvent::Token(event, None)).is_err() {
            m::counter_inc(m::CANCELLED, 1);
            self.end(id);
        } else {
            self.scheduler.push_token(id, token);
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
