//! An engine over a step model of the tests' own, with the real SmolLM2 tokenizer: the real
//! scheduler, block manager, step loop and output processing, no weights.
//!
//! [`ScriptedModel`] keeps every token it is given in the cache's blocks (one token per
//! position, addressed through the block tables the scheduler allocated), and picks each
//! next token from the history it reads back from those blocks. A block handed to two
//! sequences at once, a recompute that skips positions, or a freed block read as if it were
//! still owned would change the tokens.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use migserve_engine::block_manager::{BlockId, BlockManager};
use migserve_engine::cache::PagedStore;
use migserve_engine::local::EngineParts;
use migserve_engine::scheduler::SchedulerConfig;
use migserve_engine::{
    Accepted, DeviceKind, Engine, EngineEvent, EngineInfo, GenerateRequest, Limits, LocalEngine,
    Prompt,
};
use migserve_models::{
    AttentionSpan, ChatTemplate, GgufFile, KvStore, ModelError, SeqChunk, SeqId, Tokenizer,
};

#[path = "../../../models/tests/common/mod.rs"]
mod model_file;

/// The real model's tokenizer (read once per test binary).
pub fn tokenizer() -> Tokenizer {
    static FILE: OnceLock<GgufFile> = OnceLock::new();
    let file = FILE.get_or_init(|| GgufFile::open(&model_file::model_path()).expect("GGUF"));
    Tokenizer::from_gguf(file).expect("tokenizer")
}

/// A KV store that holds no tensors: only the block bookkeeping (the scripted model keeps its
/// tokens itself, addressed through these blocks).
pub struct BlocksOnly(pub BlockManager);

impl KvStore for BlocksOnly {
    fn attend(
        &mut self,
        _layer: usize,
        _spans: &[AttentionSpan],
        _q: &candle_core::Tensor,
        _k: &candle_core::Tensor,
        _v: &candle_core::Tensor,
    ) -> Result<candle_core::Tensor, ModelError> {
        Err(ModelError::InvalidInput(
            "BlocksOnly stores no tensors".into(),
        ))
    }

    fn release(&mut self, seq: SeqId) {
        self.0.release(seq);
    }
}

impl PagedStore for BlocksOnly {
    fn blocks(&self) -> &BlockManager {
        &self.0
    }

    fn blocks_mut(&mut self) -> &mut BlockManager {
        &mut self.0
    }
}

/// What the scripted model saw, shared with the test.
#[derive(Debug, Default)]
pub struct Seen {
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Chunks that started at position 0 for a sequence that had been computed before: a
    /// preempted sequence recomputed.
    pub recomputes: AtomicUsize,
    /// Blocks in use during the last forward pass.
    pub used_blocks: AtomicUsize,
    /// Positions sequences read from blocks they did not compute (shared prefixes).
    pub reused: AtomicUsize,
}

/// The next token after a history.
pub type NextToken = Box<dyn Fn(&[u32]) -> u32 + Send>;

/// A model whose next token is a function of the history stored in the cache's blocks.
pub struct ScriptedModel {
    next: NextToken,
    vocab: usize,
    /// Token at each (block, slot).
    store: HashMap<(BlockId, usize), u32>,
    computed: HashMap<SeqId, usize>,
    seen: Arc<Seen>,
    /// Step (1-based) that returns an error.
    pub fail_at: Option<u64>,
    /// Step (1-based) that panics.
    pub panic_at: Option<u64>,
    /// Time each step takes.
    pub step_time: Duration,
}

impl ScriptedModel {
    /// A model over a `vocab`-sized vocabulary choosing its tokens with `next`.
    pub fn new(vocab: usize, next: NextToken, seen: Arc<Seen>) -> Self {
        Self {
            next,
            vocab,
            store: HashMap::new(),
            computed: HashMap::new(),
            seen,
            fail_at: None,
            panic_at: None,
            step_time: Duration::ZERO,
        }
    }
}

/// Ordinary tokens (no eos, no control tokens) that depend on the whole history.
pub fn hashed_next(history: &[u32]) -> u32 {
    let h = history
        .iter()
        .fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64));
    1000 + (h % 20000) as u32
}

impl migserve_engine::StepModel for ScriptedModel {
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        cache: &mut dyn PagedStore,
    ) -> Result<candle_core::Tensor, ModelError> {
        let step = self.seen.steps.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(self.step_time);
        if self.panic_at == Some(step) {
            panic!("scripted panic at step {step}");
        }
        if self.fail_at == Some(step) {
            return Err(ModelError::InvalidInput(format!(
                "scripted failure at step {step}"
            )));
        }
        let blocks = cache.blocks();
        self.seen
            .used_blocks
            .store(blocks.used_blocks(), Ordering::SeqCst);
        let size = blocks.block_size();
        let mut rows = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let table = blocks.table(chunk.seq).unwrap_or(&[]);
            let end = chunk.start + chunk.tokens.len();
            if table.len() * size < end {
                return Err(ModelError::KvCacheFull(format!(
                    "sequence {} has {} blocks for {end} positions",
                    chunk.seq,
                    table.len()
                )));
            }
            if chunk.start < self.computed.get(&chunk.seq).copied().unwrap_or(0) {
                self.seen.recomputes.fetch_add(1, Ordering::SeqCst);
            }
            // A start past what this sequence computed reads the positions before it from
            // shared (prefix-cached) blocks: the history below fails if any was never written.
            let before = self.computed.get(&chunk.seq).copied().unwrap_or(0);
            if chunk.start > before {
                self.seen
                    .reused
                    .fetch_add(chunk.start - before, Ordering::SeqCst);
            }
            for (i, &t) in chunk.tokens.iter().enumerate() {
                let p = chunk.start + i;
                self.store.insert((table[p / size], p % size), t);
            }
            self.computed.insert(chunk.seq, end);
            let history = (0..end)
                .map(|p| {
                    self.store
                        .get(&(table[p / size], p % size))
                        .copied()
                        .ok_or_else(|| {
                            ModelError::InvalidInput(format!("position {p} was never written"))
                        })
                })
                .collect::<Result<Vec<u32>, _>>()?;
            let first = match all_positions.get(i).copied().unwrap_or(false) {
                true => chunk.start + 1,
                false => end,
            };
            for upto in first..=end {
                let mut row = vec![0.0f32; self.vocab];
                row[(self.next)(&history[..upto]) as usize % self.vocab] = 10.0;
                rows.extend(row);
            }
        }
        let n = rows.len() / self.vocab;
        Ok(candle_core::Tensor::from_vec(
            rows,
            (n, self.vocab),
            &candle_core::Device::Cpu,
        )?)
    }

    fn context_length(&self) -> usize {
        4096
    }

    fn on_cpu(&self) -> bool {
        true
    }
}

/// Engine sizes for a test.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub blocks: usize,
    pub block_size: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub prefix_caching: bool,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            blocks: 256,
            block_size: 4,
            max_batch_size: 16,
            max_batch_tokens: 256,
            prefix_caching: true,
        }
    }
}

/// Starts an engine over `model`.
pub fn engine(model: ScriptedModel, sizes: Sizes) -> LocalEngine {
    let tokens = sizes.blocks * sizes.block_size;
    let limits = Limits {
        max_input_tokens: 512,
        max_total_tokens: 1024,
        max_stop_sequences: 4,
        default_max_new_tokens: 16,
        kv_cache_tokens: tokens,
        vocab_size: 49152,
    };
    LocalEngine::start(EngineParts {
        model,
        tokenizer: tokenizer(),
        chat_template: ChatTemplate::new(
            "{% for m in messages %}{{ m['content'] }}{% endfor %}".into(),
            String::new(),
            String::new(),
        )
        .expect("template"),
        cache: Box::new(BlocksOnly(BlockManager::new(
            sizes.blocks,
            sizes.block_size,
        ))),
        scheduler: SchedulerConfig {
            max_batch_size: sizes.max_batch_size,
            max_batch_tokens: sizes.max_batch_tokens,
            prefix_caching: sizes.prefix_caching,
        },
        info: EngineInfo {
            model_id: "scripted".into(),
            dtype: "none".into(),
            device: DeviceKind::Cpu,
            architecture: "scripted".into(),
            parameters: 0,
            kv_bytes_per_token: 0,
            limits,
            max_batch_size: sizes.max_batch_size,
            max_concurrent_requests: 64,
            prefix_caching: sizes.prefix_caching,
        },
    })
    .expect("engine starts")
}

/// A greedy request for `text` with at most `max_new_tokens`.
pub fn request(text: &str, max_new_tokens: i64) -> GenerateRequest {
    GenerateRequest {
        max_new_tokens: Some(max_new_tokens),
        ..GenerateRequest::new(Prompt::Text(text.into()))
    }
}

/// Every token id of a request, or the error it ended with.
pub async fn token_ids(accepted: Accepted) -> Result<Vec<u32>, migserve_engine::EngineError> {
    let collected = accepted.events.collect().await?;
    Ok(collected.tokens.iter().map(|t| t.id).collect())
}

/// Submits on a blocking thread, as the worker does.
pub async fn submit(
    engine: &Arc<LocalEngine>,
    request: GenerateRequest,
) -> Result<Accepted, migserve_engine::EngineError> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.submit(request))
        .await
        .expect("submit does not panic")
}

/// The first event of a stream.
pub async fn first_event(accepted: &mut Accepted) -> EngineEvent {
    tokio::time::timeout(Duration::from_secs(30), accepted.events.next())
        .await
        .expect("an event within 30 s")
        .expect("an event, not the end")
}
