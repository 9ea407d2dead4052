//! The engine: one thread that owns the model and the KV cache and runs the scheduler's
//! steps, one batched forward pass each. Requests come in over a channel; each request's
//! tokens go out over its own channel as soon as they are sampled. A request whose channel
//! is dropped (the client went away) is cancelled before the next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use migserve_kernels::cpu::exp::log_sum_exp;
use migserve_kernels::cpu::parallel::{par_rows, ParallelFor};
use migserve_models::parallel::candle_pool;
use migserve_models::{IncrementalDecoder, Model, Sampler, SamplingParams, SeqChunk, SeqId};
use tokio::sync::mpsc::UnboundedSender;

use super::paged_cache::PagedStore;
use super::scheduler::{Scheduler, SchedulerConfig, Sequence, StepPlan};
use crate::api::error::ApiError;
use crate::metrics as m;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached (or the model's context).
    Length,
    /// The model produced an end-of-sequence token.
    EosToken,
    /// The text produced one of the request's stop sequences.
    StopSequence,
}

/// A validated request, ready for the engine.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Keep generating past eos (benchmarks with fixed output lengths).
    pub ignore_eos: bool,
    /// When the request reached the server.
    pub arrived: Instant,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub id: u32,
    /// New text this token completes (may be empty inside a multi-byte character).
    pub text: String,
    /// Log-probability of the token under the model (before sampling transforms).
    pub logprob: f32,
    pub special: bool,
}

/// Timings and counts of a finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishEvent {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Arrival to first scheduled step.
    pub queue_time: Duration,
    /// First scheduled step to finish.
    pub inference_time: Duration,
    /// Arrival to first token.
    pub time_to_first_token: Duration,
    pub seed: Option<u64>,
}

/// What the engine sends back for a request: tokens, the last one with the finish details.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    Token(TokenEvent, Option<FinishEvent>),
    Failed(ApiError),
}

/// Engine sizes and limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    pub kv_blocks: usize,
    pub block_size: usize,
    /// Most requests waiting or running at once; more get 429.
    pub max_concurrent_requests: usize,
}

struct Submission {
    request: EngineRequest,
    events: UnboundedSender<EngineEvent>,
}

/// Live numbers the HTTP side reads without asking the engine thread.
#[derive(Debug, Default)]
pub struct EngineStatus {
    pub in_flight: AtomicUsize,
    pub healthy: AtomicBool,
}

/// Cheap handle to submit requests to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Submission>,
    status: Arc<EngineStatus>,
    config: EngineConfig,
}

impl EngineHandle {
    /// Queues a request; its events arrive on `events`. Refuses with 429 when the engine
    /// already holds `max_concurrent_requests`, and 503 when the engine thread is gone.
    pub fn submit(
        &self,
        request: EngineRequest,
        events: UnboundedSender<EngineEvent>,
    ) -> Result<(), ApiError> {
        if !self.status.healthy.load(Ordering::Acquire) {
            return Err(ApiError::Unhealthy("the engine has stopped".into()));
        }
        let previous = self.status.in_flight.fetch_add(1, Ordering::AcqRel);
        if previous >= self.config.max_concurrent_requests {
            self.status.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Overloaded(format!(
                "Model is overloaded: {} requests in flight (limit {})",
                previous, self.config.max_concurrent_requests
            )));
        }
        self.tx.send(Submission { request, events }).map_err(|_| {
            self.status.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.status.healthy.store(false, Ordering::Release);
            ApiError::Unhealthy("the engine has stopped".into())
        })
    }

    /// Live status.
    pub fn status(&self) -> &EngineStatus {
        &self.status
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

/// Starts the engine thread over `model`, keeping keys and values in `cache` (sized
/// `config.kv_blocks` x `config.block_size`, on the model's device).
pub fn spawn(
    model: Arc<Model>,
    config: EngineConfig,
    cache: Box<dyn PagedStore>,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(EngineStatus {
        in_flight: AtomicUsize::new(0),
        healthy: AtomicBool::new(true),
    });
    let thread_status = status.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let mut engine = Engine::new(model, config, thread_status.clone(), cache);
            engine.run(rx);
            thread_status.healthy.store(false, Ordering::Release);
        })?;
    Ok(EngineHandle { tx, status, config })
}

/// Per-request state the scheduler does not need.
struct Active {
    events: UnboundedSender<EngineEvent>,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    text: String,
    generated: usize,
    request: EngineRequest,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
}

struct Engine {
    model: Arc<Model>,
    cache: Box<dyn PagedStore>,
    scheduler: Scheduler,
    active: HashMap<SeqId, Active>,
    next_id: SeqId,
    status: Arc<EngineStatus>,
}

impl Engine {
    fn new(
        model: Arc<Model>,
        config: EngineConfig,
        status: Arc<EngineStatus>,
        cache: Box<dyn PagedStore>,
    ) -> Self {
        Self {
            model,
            cache,
            scheduler: Scheduler::new(config.scheduler),
            active: HashMap::new(),
            next_id: 0,
            status,
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Submission>) {
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
        let sampler = Sampler::new(s.request.params.clone());
        self.scheduler
            .add(Sequence::new(id, s.request.prompt.clone()));
        self.active.insert(
            id,
            Active {
                events: s.events,
                sampler,
                decoder: IncrementalDecoder::new(),
                text: String::new(),
                generated: 0,
                request: s.request,
                first_scheduled: None,
                first_token: None,
            },
        );
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

    /// Removes a sequence everywhere and frees its blocks.
    fn end(&mut self, id: SeqId) {
        self.scheduler.remove(id, self.cache.blocks_mut());
        if self.active.remove(&id).is_some() {
            self.status.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sends `error` to the request's client (the HTTP side counts it) and drops the sequence.
    fn fail(&mut self, id: SeqId, error: ApiError) {
        if let Some(a) = self.active.get(&id) {
            let _ = a.events.send(EngineEvent::Failed(error));
        }
        self.end(id);
    }

    fn step(&mut self) {
        let plan = self.scheduler.schedule(self.cache.blocks_mut());
        m::counter_inc(m::PREEMPTIONS, plan.preempted.len() as u64);
        if plan.chunks.is_empty() {
            // Nothing can run: only possible if a waiting request can never get blocks, which
            // validation prevents. Fail the head of the queue rather than spin.
            if let Some(id) = self.scheduler.ids().first().copied() {
                self.fail(
                    id,
                    ApiError::Generation("the KV cache cannot hold this request".into()),
                );
            }
            return;
        }
        let now = Instant::now();
        for c in &plan.chunks {
            if let Some(a) = self.active.get_mut(&c.seq) {
                if a.first_scheduled.is_none() {
                    a.first_scheduled = Some(now);
                    m::histogram_record(m::QUEUE_DURATION, now.duration_since(a.request.arrived));
                }
            }
        }
        let result = self.forward(&plan);
        m::counter_inc(m::STEPS, 1);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed");
                for c in &plan.chunks {
                    self.fail(
                        c.seq,
                        ApiError::Generation(format!("forward pass failed: {e}")),
                    );
                }
                return;
            }
        };
        let ready = self.scheduler.complete(&plan);
        // Rows whose sequence samples a token now (not the middle of a chunked prompt).
        let samples: Vec<bool> = plan.chunks.iter().map(|c| ready.contains(&c.seq)).collect();
        // Each such row's log-softmax normalizer (for the sampled token's log-probability): a
        // pass over the whole vocabulary per row, all rows at once on the CPU pool where the
        // model runs on the CPU (a GPU worker does not start that pool's spinning threads).
        let mut log_norms = vec![0.0f32; rows.len()];
        let serial = |n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)| f(0..n);
        let parallel: ParallelFor<'_> = match self.model.llama.device().is_cpu() {
            true => &candle_pool,
            false => &serial,
        };
        par_rows(parallel, &mut log_norms, 1, &|range, out| {
            for ((o, row), samples) in out
                .iter_mut()
                .zip(&rows[range.clone()])
                .zip(&samples[range])
            {
                if *samples {
                    *o = log_sum_exp(row);
                }
            }
        });
        let rows = plan.chunks.iter().zip(rows).zip(log_norms).zip(samples);
        for (((chunk, mut row), log_norm), samples) in rows {
            if samples {
                self.sample_and_emit(chunk.seq, &mut row, log_norm);
            }
        }
    }

    fn forward(&mut self, plan: &StepPlan) -> migserve_models::Result<Vec<Vec<f32>>> {
        let mut chunks = Vec::with_capacity(plan.chunks.len());
        for c in &plan.chunks {
            let seq = self.scheduler.get(c.seq).ok_or_else(|| {
                migserve_models::ModelError::InvalidInput(format!(
                    "scheduled sequence {} is unknown",
                    c.seq
                ))
            })?;
            chunks.push(SeqChunk {
                seq: c.seq,
                tokens: &seq.tokens[c.start..c.start + c.len],
                start: c.start,
            });
        }
        let logits = self.model.llama.forward(&chunks, self.cache.as_mut())?;
        Ok(logits.to_vec2::<f32>()?)
    }

    /// Samples the next token of `id` from `logits`, whose log-softmax normalizer is
    /// `logprob_base` (before any penalty edits them), and sends it out.
    fn sample_and_emit(&mut self, id: SeqId, logits: &mut [f32], logprob_base: f32) {
        let Some(seq) = self.scheduler.get(id) else {
            return;
        };
        let history_len = seq.tokens.len();
        let tokenizer = &self.model.tokenizer;
        let context = self.model.config().context_length;
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        // The repetition penalty edits the row in place: keep the raw one for the log-probability.
        let raw = a
            .sampler
            .params()
            .repetition_penalty
            .map(|_| logits.to_vec());
        let token = a.sampler.sample(logits, &seq.tokens);
        let raw_logit = raw.as_deref().unwrap_or(logits)[token as usize];
        let logprob = raw_logit - logprob_base;
        let now = Instant::now();
        if a.first_token.is_none() {
            a.first_token = Some(now);
            m::histogram_record(
                m::TIME_TO_FIRST_TOKEN,
                now.duration_since(a.request.arrived),
            );
        }
        a.generated += 1;
        m::counter_inc(m::GENERATED_TOKENS, 1);
        let is_eos = tokenizer.eos_ids().contains(&token);
        let mut finish = None;
        let text = if is_eos && !a.request.ignore_eos {
            finish = Some(FinishReason::EosToken);
            String::new()
        } else {
            match a.decoder.push(tokenizer, token) {
                Ok(piece) => piece.unwrap_or_default(),
                Err(e) => {
                    let error = ApiError::Generation(format!("detokenization failed: {e}"));
                    self.fail(id, error);
                    return;
                }
            }
        };
        if finish.is_none() {
            let before = a.text.len();
            a.text.push_str(&text);
            if stop_sequence_hit(&a.text, before, &a.request.stop) {
                finish = Some(FinishReason::StopSequence);
            } else if a.generated >= a.request.max_new_tokens || history_len + 1 >= context {
                finish = Some(FinishReason::Length);
            }
        }
        let event = TokenEvent {
            id: token,
            text,
            logprob,
            special: is_eos,
        };
        let done = finish.map(|reason| {
            let first_scheduled = a.first_scheduled.unwrap_or(now);
            let first_token = a.first_token.unwrap_or(now);
            m::histogram_record(m::REQUEST_DURATION, now.duration_since(a.request.arrived));
            if a.generated > 1 {
                m::histogram_record(
                    m::TIME_PER_OUTPUT_TOKEN,
                    now.duration_since(first_token) / (a.generated as u32 - 1),
                );
            }
            FinishEvent {
                reason,
                prompt_tokens: a.request.prompt.len(),
                generated_tokens: a.generated,
                queue_time: first_scheduled.duration_since(a.request.arrived),
                inference_time: now.duration_since(first_scheduled),
                time_to_first_token: first_token.duration_since(a.request.arrived),
                seed: a.request.params.seed,
            }
        });
        let finished = done.is_some();
        if a.events.send(EngineEvent::Token(event, done)).is_err() {
            m::counter_inc(m::CANCELLED, 1);
            self.end(id);
        } else if finished {
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
    }
}

/// Whether text appended at byte `appended_from` completes one of `stops`.
fn stop_sequence_hit(text: &str, appended_from: usize, stops: &[String]) -> bool {
    stops.iter().any(|stop| {
        // Only matches that end in the new text count; earlier ones were checked before.
        let window_start = appended_from.saturating_sub(stop.len());
        let mut start = window_start;
        while start > 0 && !text.is_char_boundary(start) {
            start -= 1;
        }
        text[start..].contains(stop.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_match_across_token_boundaries() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert!(stop_sequence_hit("hello\n\n", 6, &stops));
        assert!(!stop_sequence_hit("the EN", 4, &stops));
        assert!(stop_sequence_hit("the END", 6, &stops));
        assert!(!stop_sequence_hit("nothing here", 8, &stops));
        assert!(
            stop_sequence_hit("é\n\n", 3, &stops),
            "multi-byte text before the window"
        );
    }
}
