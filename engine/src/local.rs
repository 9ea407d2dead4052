//! [`LocalEngine`]: the model on this process's device, behind the [`Engine`] trait.

use std::path::Path;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use migserve_models::{
    ChatTemplate, Decoder, Device, IncrementalDecoder, Model, ModelConfig, ModelSource, Tokenizer,
    WeightFormat,
};
use tokio::sync::watch;

use crate::cache::cpu::PagedKvCache;
use crate::cache::PagedStore;
use crate::device::{self, DeviceKind, DeviceUnusable};
use crate::engine::{Accepted, Engine, EngineInfo, Health, PrefixCacheStatus, Tokenized};
use crate::error::{error_chain, EngineError, Field, StartError};
use crate::event::EventStream;
use crate::fault;
use crate::flags::{EngineFlags, DEFAULT_KV_CACHE_TOKENS};
use crate::grammar::{Constraint, Grammar, GrammarCompiler};
use crate::request::{EngineRequest, GenerateRequest, Limits, Prompt};
use crate::scheduler::SchedulerConfig;
use crate::status::EngineStatus;
use crate::step::StepModel;
use crate::step_clock::SyncAfterForward;
use crate::step_loop::{self, Submission};
use crate::submit::{self, Backend};
use crate::validate;

/// The pieces an engine is made of; [`LocalEngine::load`] makes them from a model file, tests
/// from a step model of their own.
pub struct EngineParts<M> {
    pub model: M,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// The KV cache, with `limits.kv_cache_tokens` positions.
    pub cache: Box<dyn PagedStore>,
    pub scheduler: SchedulerConfig,
    pub info: EngineInfo,
}

/// A running engine: its thread, and what submitting to it needs (tokenizer, chat template,
/// limits). Dropping every handle lets the thread finish what it holds and end.
pub struct LocalEngine {
    tx: mpsc::Sender<Submission>,
    status: Arc<EngineStatus>,
    tokenizer: Arc<Tokenizer>,
    chat_template: ChatTemplate,
    info: EngineInfo,
    /// Built by the first request with a grammar (the token trie is work no other request
    /// needs); an error stays for every later one.
    grammars: OnceLock<Result<GrammarCompiler, String>>,
}

/// Loads the model at `path`; out of GPU memory is a device that cannot hold it.
fn load_model(
    path: &Path,
    weights: WeightFormat,
    kind: DeviceKind,
    device: &Device,
) -> Result<Model, StartError> {
    Model::load(path, weights, device).map_err(|source| {
        let e = format!("loading {}: {}", path.display(), error_chain(&source));
        if kind == DeviceKind::Cuda && e.contains("OUT_OF_MEMORY") {
            StartError::DeviceUnusable(DeviceUnusable(format!(
                "{e} (the GPU has too little memory for this model)"
            )))
        } else {
            StartError::Model {
                path: path.display().to_string(),
                source,
            }
        }
    })
}

/// The KV cache's positions: as the flags say, else what the memory budget leaves beside the
/// weights (within the device's free memory), else the free memory's share, else (no
/// memory figure: the CPU) the default.
fn kv_cache_tokens(
    flags: &EngineFlags,
    path: &Path,
    weights: WeightFormat,
    free: Option<usize>,
    bytes_per_position: usize,
) -> Result<usize, StartError> {
    let from_free =
        |free| device::kv_tokens_for(free, flags.kv_memory_fraction, bytes_per_position);
    Ok(match (flags.kv_cache_tokens, flags.memory_budget_bytes) {
        (Some(tokens), _) => tokens,
        (None, Some(budget)) => {
            let weight_bytes = weight_bytes(path, weights)?;
            let in_budget = device::kv_tokens_in_budget(budget, weight_bytes, bytes_per_position);
            free.map_or(in_budget, |free| in_budget.min(from_free(free)))
        }
        (None, None) => free.map_or(DEFAULT_KV_CACHE_TOKENS, from_free),
    })
}

/// The model the steps run: the decoder, armed to panic when fault injection asks for it
/// (`MIGSERVE_FAULT_PANIC_AT_STEP`), synchronized after each forward pass when steps are
/// profiled.
fn step_model(decoder: Decoder, flags: &EngineFlags) -> Box<dyn StepModel> {
    let model: Box<dyn StepModel> = match fault::panic_at_step_from_env() {
        Some(at) => {
            tracing::warn!(
                at,
                "fault injection armed: the engine panics at step {at} ({})",
                fault::PANIC_AT_STEP_ENV
            );
            Box::new(fault::PanicAtStep::new(decoder, at))
        }
        None => Box::new(decoder),
    };
    match flags.profile_steps {
        true => Box::new(SyncAfterForward(model)),
        false => model,
    }
}

impl LocalEngine {
    /// Loads the model (GGUF file or Hugging Face directory) at `path` onto `kind` (already opened as `device`) with `flags`
    /// and starts its engine thread. With `MIGSERVE_FAULT_PANIC_AT_STEP` set, the engine
    /// panics at that step (see [`fault`]).
    pub fn load(
        path: &Path,
        model_id: String,
        kind: DeviceKind,
        device: &Device,
        flags: &EngineFlags,
    ) -> Result<Self, StartError> {
        flags.validate().map_err(StartError::InvalidFlags)?;
        let weights = flags.weights.unwrap_or(kind.default_weights());
        check_weights_fit(path, device, weights)?;
        let model = load_model(path, weights, kind, device)?;
        // Work queued while loading finishes before the engine thread (and its stream) starts.
        sync(device)?;
        let config = model.config().clone();
        let bytes_per_position = config.kv_bytes_per_position(kind.kv_element_bytes());
        let free = device::memory(device)?.map(|(free, _)| free);
        let kv_cache_tokens = kv_cache_tokens(flags, path, weights, free, bytes_per_position)?;
        let kv_blocks = kv_cache_tokens / flags.block_size;
        if kv_blocks == 0 {
            let within = flags
                .memory_budget_bytes
                .map(|b| format!(" (memory budget {})", device::gib(b as usize)))
                .unwrap_or_default();
            return Err(DeviceUnusable(format!(
                "no room for a KV cache{within}: {kv_cache_tokens} positions is less than one block of {}",
                flags.block_size
            ))
            .into());
        }
        let limits = limits(
            flags,
            config.context_length,
            kv_blocks * flags.block_size,
            config.vocab_size,
        )?;
        let cache: Box<dyn PagedStore> = match kind {
            DeviceKind::Cpu => Box::new(PagedKvCache::new(&config, kv_blocks, flags.block_size)),
            DeviceKind::Cuda => cuda_cache(&config, kv_blocks, flags.block_size, device)?,
        };
        sync(device)?;
        tracing::info!(
            model = %model_id,
            device = %device::describe(device),
            weights = weights.name(),
            layers = config.n_layers,
            kv_cache_tokens = limits.kv_cache_tokens,
            kv_cache_mib = (limits.kv_cache_tokens * bytes_per_position) >> 20,
            "model loaded"
        );
        let Model {
            decoder,
            tokenizer,
            chat_template,
        } = model;
        let info = EngineInfo {
            model_id,
            dtype: weights.name().into(),
            device: kind,
            architecture: config.architecture.clone(),
            parameters: config.parameter_count() as u64,
            kv_bytes_per_token: bytes_per_position,
            limits,
            max_batch_size: flags.max_batch_size,
            max_concurrent_requests: flags.max_concurrent_requests,
            prefix_caching: !flags.no_prefix_caching,
        };
        let scheduler = SchedulerConfig {
            max_batch_size: flags.max_batch_size,
            max_batch_tokens: flags.max_batch_tokens,
            prefix_caching: !flags.no_prefix_caching,
        };
        Self::start(EngineParts {
            model: step_model(decoder, flags),
            tokenizer,
            chat_template,
            cache,
            scheduler,
            info,
        })
    }

    /// Starts the engine thread over `parts`.
    pub fn start<M: StepModel + 'static>(parts: EngineParts<M>) -> Result<Self, StartError> {
        let status = Arc::new(EngineStatus::default());
        let tokenizer = Arc::new(parts.tokenizer);
        let tx = step_loop::spawn(
            parts.model,
            tokenizer.clone(),
            parts.cache,
            parts.scheduler,
            status.clone(),
        )?;
        Ok(Self {
            tx,
            status,
            tokenizer,
            chat_template: parts.chat_template,
            info: parts.info,
            grammars: OnceLock::new(),
        })
    }

    /// The grammar compiler for this model's tokenizer, built on first use.
    fn grammars(&self) -> Result<&GrammarCompiler, EngineError> {
        self.grammars
            .get_or_init(|| {
                let started = Instant::now();
                let built = GrammarCompiler::new(&self.tokenizer, self.info.limits.vocab_size)
                    .map_err(|e| e.to_string());
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = built.is_ok(),
                    "grammar support ready"
                );
                built
            })
            .as_ref()
            .map_err(|e| EngineError::Generation(e.clone()))
    }

    /// Requests waiting or running now.
    pub fn in_flight(&self) -> usize {
        self.status.in_flight()
    }
}

impl Backend for LocalEngine {
    fn check_running(&self) -> Result<(), EngineError> {
        match self.status.health() {
            Health::Dead(why) => Err(EngineError::Unavailable(format!(
                "the engine has stopped: {why}"
            ))),
            Health::Healthy => Ok(()),
        }
    }

    /// Text through the tokenizer, a conversation through the chat template first (its
    /// rendered text returned too).
    fn prompt_ids(&self, prompt: &Prompt) -> Result<(Vec<u32>, Option<String>), EngineError> {
        match prompt {
            Prompt::Text(text) => Ok((self.tokenizer.encode(text, true)?, None)),
            Prompt::Chat { messages, tools } => {
                let text = self
                    .chat_template
                    .render_with_tools(messages, tools, true)?;
                Ok((self.tokenizer.encode(&text, false)?, Some(text)))
            }
            Prompt::Tokens(ids) => Ok((ids.clone(), None)),
        }
    }

    /// Each token's text, decoded in sequence (so they add up to the decoded whole; special
    /// tokens have none; a token inside a multi-byte character has none, the one that
    /// completes it all).
    fn pieces(&self, ids: &[u32]) -> Result<Vec<String>, EngineError> {
        let mut decoder = IncrementalDecoder::new();
        let mut pieces = Vec::with_capacity(ids.len());
        for &id in ids {
            pieces.push(decoder.push(&self.tokenizer, id)?.unwrap_or_default());
        }
        if let (Some(last), Some(rest)) = (pieces.last_mut(), decoder.flush(&self.tokenizer)?) {
            last.push_str(&rest);
        }
        Ok(pieces)
    }

    fn constraint(&self, grammar: &Grammar) -> Result<Option<Constraint>, EngineError> {
        self.grammars()?.compile(grammar).map(Some)
    }

    fn limits(&self) -> &Limits {
        &self.info.limits
    }

    fn enqueue(&self, request: EngineRequest) -> Result<EventStream, EngineError> {
        let limit = self.info.max_concurrent_requests;
        self.status.try_admit(limit).map_err(|in_flight| {
            EngineError::Overloaded(format!(
                "Model is overloaded: {in_flight} requests in flight (limit {limit})"
            ))
        })?;
        let (events_tx, events) = EventStream::channel();
        let submission = Submission {
            request,
            events: events_tx,
        };
        let gate = self.status.gate();
        if let Err(stopped) = self.check_running() {
            self.status.release();
            return Err(stopped);
        }
        let sent = self.tx.send(submission).is_ok();
        drop(gate);
        if !sent {
            self.status.release();
            self.status.mark_dead("the engine thread is gone");
            return Err(EngineError::Unavailable("the engine has stopped".into()));
        }
        Ok(events)
    }
}

impl Engine for LocalEngine {
    fn submit(&self, request: GenerateRequest) -> Result<Accepted, EngineError> {
        submit::submit(self, request)
    }

    fn health(&self) -> Health {
        self.status.health()
    }

    fn watch_health(&self) -> watch::Receiver<Health> {
        self.status.watch()
    }

    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn prefix_cache(&self) -> Option<PrefixCacheStatus> {
        self.info.prefix_caching.then(|| self.status.prefix_cache())
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        validate::check_prompt(prompt)?;
        let (ids, rendered) = self.prompt_ids(prompt)?;
        let pieces = self.pieces(&ids)?;
        Ok(Tokenized {
            ids,
            pieces,
            rendered,
        })
    }

    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        validate::check_token_ids(ids, self.info.limits.vocab_size, Field::Prompt)?;
        Ok(self.tokenizer.decode(ids, true)?)
    }
}

/// The request limits `flags` give a model of `context` positions and `vocab_size` tokens
/// with a KV cache of `kv_cache_tokens` positions.
pub fn limits(
    flags: &EngineFlags,
    context: usize,
    kv_cache_tokens: usize,
    vocab_size: usize,
) -> Result<Limits, StartError> {
    let bad = |m: String| Err(StartError::InvalidFlags(m));
    let max_total_tokens = flags.max_total_tokens.unwrap_or(context.min(4096));
    if max_total_tokens < 2 || max_total_tokens > context {
        return bad(format!(
            "--max-total-tokens must be between 2 and the model's context ({context})"
        ));
    }
    let max_input_tokens = flags.max_input_tokens.unwrap_or(max_total_tokens - 1);
    if max_input_tokens == 0 || max_input_tokens >= max_total_tokens {
        return bad(format!(
            "--max-input-tokens must be at least 1 and below --max-total-tokens ({max_total_tokens})"
        ));
    }
    Ok(Limits {
        max_input_tokens,
        max_total_tokens,
        max_stop_sequences: flags.max_stop_sequences,
        default_max_new_tokens: flags.default_max_new_tokens,
        kv_cache_tokens,
        vocab_size,
    })
}

/// Waits for the device's queued work. A failure here may be passing (the worker is
/// restarted), so it is not [`StartError::DeviceUnusable`].
fn sync(device: &Device) -> Result<(), StartError> {
    device
        .synchronize()
        .map_err(|e| StartError::DeviceFailed(error_chain(&e)))
}

/// Bytes the weights of the model at `path` take when held as `weights`.
fn weight_bytes(path: &Path, weights: WeightFormat) -> Result<u64, StartError> {
    let model_error = |source| StartError::Model {
        path: path.display().to_string(),
        source,
    };
    let source = ModelSource::open(path).map_err(model_error)?;
    let config = source.config().map_err(model_error)?;
    Ok(source.weight_bytes(&config, weights))
}

/// Refuses, before loading, a model whose weights cannot fit in the GPU's free memory.
fn check_weights_fit(
    path: &Path,
    device: &Device,
    weights: WeightFormat,
) -> Result<(), StartError> {
    let Some((free, total)) = device::memory(device)? else {
        return Ok(());
    };
    let need = weight_bytes(path, weights)? as usize;
    if need > free {
        return Err(DeviceUnusable(format!(
            "{} needs {} for its weights ({}) but the GPU has {} free of {} \
             (CUDA_VISIBLE_DEVICES={})",
            path.display(),
            device::gib(need),
            weights.name(),
            device::gib(free),
            device::gib(total),
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
        ))
        .into());
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn cuda_cache(
    config: &ModelConfig,
    kv_blocks: usize,
    block_size: usize,
    device: &Device,
) -> Result<Box<dyn PagedStore>, StartError> {
    let cache = crate::cache::cuda::CudaPagedKvCache::new(config, kv_blocks, block_size, device)
        .map_err(|e| DeviceUnusable(format!("cannot allocate the KV cache on the GPU: {e}")))?;
    Ok(Box::new(cache))
}

#[cfg(not(feature = "cuda"))]
fn cuda_cache(
    _config: &ModelConfig,
    _kv_blocks: usize,
    _block_size: usize,
    _device: &Device,
) -> Result<Box<dyn PagedStore>, StartError> {
    Err(DeviceUnusable("this build of migserve has no CUDA support".into()).into())
}
