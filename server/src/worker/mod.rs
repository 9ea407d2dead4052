//! A worker: one model on one device, continuous batching over a paged KV cache, behind the
//! TGI and OpenAI HTTP APIs.

pub mod block_manager;
#[cfg(feature = "cuda")]
pub mod cuda_cache;
pub mod device;
pub mod engine;
pub mod http;
pub mod paged_cache;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::http::HeaderValue;
use migserve_models::{Model, WeightFormat};

use crate::api::tgi::Info;
use crate::api::validation::Limits;
use crate::metrics::MetricLabels;
pub use device::{DeviceUnusable, EXIT_DEVICE_UNUSABLE};
use engine::EngineConfig;
use paged_cache::{PagedKvCache, PagedStore};
use scheduler::SchedulerConfig;

/// Which device a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    /// The weight format a worker holds when none is asked for: Q8_0 on the CPU, bf16 on a GPU.
    pub fn default_weights(self) -> WeightFormat {
        match self {
            DeviceKind::Cpu => WeightFormat::Q8,
            DeviceKind::Cuda => WeightFormat::Bf16,
        }
    }

    /// Bytes of one cached key or value element: f16 in the CPU cache, bf16 in the CUDA one.
    pub fn kv_element_bytes(self) -> usize {
        match self {
            DeviceKind::Cpu | DeviceKind::Cuda => 2,
        }
    }
}

/// Arguments of `migserve worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// GGUF model file (Llama family).
    #[arg(long, env = "MIGSERVE_MODEL")]
    pub model: PathBuf,
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8081", env = "MIGSERVE_LISTEN")]
    pub listen: SocketAddr,
    /// Device to run on; default: cuda when this build has CUDA and a GPU is visible, else cpu.
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// Name clients use for this model (OpenAI `model`); default: the file name without `.gguf`.
    #[arg(long)]
    pub model_id: Option<String>,
    /// Most sequences decoded together in one step.
    #[arg(long, default_value_t = 32)]
    pub max_batch_size: usize,
    /// Token budget of one step: decode tokens first, prompt chunks fill the rest.
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Longest prompt plus generated tokens; default: the model's context, at most 4096.
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// Longest prompt; default: max_total_tokens - 1.
    #[arg(long)]
    pub max_input_tokens: Option<usize>,
    /// KV cache size in token positions (shared by all sequences); default: 16384 on the
    /// CPU, on a GPU what --kv-memory-fraction of the memory left after the weights holds.
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// On a GPU: share of the memory CUDA reports free after loading the weights that the KV
    /// cache takes (the rest is for activations and cuBLAS).
    #[arg(long, default_value_t = 0.9)]
    pub kv_memory_fraction: f64,
    /// Positions per KV cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Requests waiting or running at once; more get 429.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Most stop sequences per request.
    #[arg(long, default_value_t = 4)]
    pub max_stop_sequences: usize,
    /// New tokens when a request sets no limit.
    #[arg(long, default_value_t = 256)]
    pub default_max_new_tokens: usize,
    /// CPU threads for the model's math; default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// How weights are held: q8 (re-quantized to Q8_0 at load; the CPU default: fastest CPU
    /// decode, least memory), bf16 (the GPU default), f32 (fastest CPU prefill) or quantized
    /// (the file's own types).
    #[arg(long)]
    pub weights: Option<WeightFormat>,
    /// Slice this worker serves (label on metrics, `x-slice` header).
    #[arg(long, env = "MIGSERVE_SLICE")]
    pub slice: Option<String>,
    /// Profile of that slice (metric label).
    #[arg(long, env = "MIGSERVE_PROFILE")]
    pub profile: Option<String>,
    /// Seconds to let in-flight requests finish after SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

/// Runs `migserve worker` until SIGTERM or Ctrl-C.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    exit_with_supervisor();
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle's thread pool when it first starts, below.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if args.block_size == 0 {
        bail!("--block-size must be at least 1");
    }
    if !(args.kv_memory_fraction > 0.0 && args.kv_memory_fraction < 1.0) {
        bail!("--kv-memory-fraction must be between 0 and 1 (exclusive)");
    }
    if args.max_batch_size == 0 || args.max_batch_tokens == 0 || args.max_concurrent_requests == 0 {
        bail!(
            "--max-batch-size, --max-batch-tokens and --max-concurrent-requests must be positive"
        );
    }
    let kind = device::resolve(args.device);
    let device = device::open(kind)?;
    let weights = args.weights.unwrap_or(kind.default_weights());
    check_weights_fit(&args, &device, weights)?;
    let model = Model::load(&args.model, weights, &device).map_err(|e| {
        let e = anyhow::Error::new(e).context(format!("loading {}", args.model.display()));
        if kind == DeviceKind::Cuda && format!("{e:#}").contains("OUT_OF_MEMORY") {
            anyhow::Error::new(DeviceUnusable(format!(
                "{e:#} (the GPU has too little memory for this model)"
            )))
        } else {
            e
        }
    })?;
    // Work queued while loading finishes before the engine thread (and its stream) starts.
    device.synchronize()?;
    let config = model.config().clone();
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let max_total_tokens = args
        .max_total_tokens
        .unwrap_or(config.context_length.min(4096));
    if max_total_tokens < 2 || max_total_tokens > config.context_length {
        bail!(
            "--max-total-tokens must be between 2 and the model's context ({})",
            config.context_length
        );
    }
    let max_input_tokens = args.max_input_tokens.unwrap_or(max_total_tokens - 1);
    if max_input_tokens == 0 || max_input_tokens >= max_total_tokens {
        bail!("--max-input-tokens must be at least 1 and below --max-total-tokens ({max_total_tokens})");
    }
    let bytes_per_position = config.kv_bytes_per_position(kind.kv_element_bytes());
    let kv_cache_tokens = match (args.kv_cache_tokens, device::memory(&device)?) {
        (Some(tokens), _) => tokens,
        (None, None) => 16384,
        (None, Some((free, _))) => {
            device::kv_tokens_for(free, args.kv_memory_fraction, bytes_per_position)
        }
    };
    let kv_blocks = kv_cache_tokens / args.block_size;
    if kv_blocks == 0 {
        return Err(DeviceUnusable(format!(
            "no room for a KV cache: {kv_cache_tokens} positions is less than one block of {}",
            args.block_size
        ))
        .into());
    }
    let limits = Limits {
        max_input_tokens,
        max_total_tokens,
        max_stop_sequences: args.max_stop_sequences,
        default_max_new_tokens: args.default_max_new_tokens,
        kv_cache_tokens: kv_blocks * args.block_size,
    };
    let engine_config = EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_size: args.max_batch_size,
            max_batch_tokens: args.max_batch_tokens,
        },
        kv_blocks,
        block_size: args.block_size,
        max_concurrent_requests: args.max_concurrent_requests,
    };
    let cache: Box<dyn PagedStore> = match kind {
        DeviceKind::Cpu => Box::new(PagedKvCache::new(&config, kv_blocks, args.block_size)),
        DeviceKind::Cuda => new_cuda_cache(&config, kv_blocks, args.block_size, &device)?,
    };
    device.synchronize()?;
    tracing::info!(
        model = %model_id,
        device = %device::describe(&device),
        weights = ?weights,
        layers = config.n_layers,
        kv_cache_tokens = limits.kv_cache_tokens,
        kv_cache_mib = (limits.kv_cache_tokens * bytes_per_position) >> 20,
        "model loaded"
    );
    let labels = MetricLabels {
        slice: args.slice.clone().unwrap_or_else(|| "local".into()),
        profile: args.profile.clone().unwrap_or_else(|| "cpu".into()),
        model: model_id.clone(),
    };
    let metrics = crate::metrics::install(&labels)?;
    let info = Info {
        model_id: model_id.clone(),
        model_sha: None,
        model_dtype: format!("{weights:?}").to_lowercase(),
        model_device_type: match kind {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda => "cuda".into(),
        },
        model_pipeline_tag: Some("text-generation".into()),
        max_concurrent_requests: args.max_concurrent_requests,
        max_best_of: 1,
        max_stop_sequences: args.max_stop_sequences,
        max_input_tokens,
        max_total_tokens,
        max_batch_size: Some(args.max_batch_size),
        max_client_batch_size: 1,
        validation_workers: 1,
        router: "migserve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sha: None,
        docker_label: None,
        slice: args.slice.clone(),
        kv_cache_tokens: limits.kv_cache_tokens,
    };
    let model = Arc::new(model);
    let engine =
        engine::spawn(model.clone(), engine_config, cache).context("starting the engine thread")?;
    let state = Arc::new(http::AppState {
        engine,
        model,
        model_id,
        limits,
        info,
        metrics,
        slice: args
            .slice
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok()),
        compute_type: HeaderValue::from_static("cpu"),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(
        state,
        args.listen,
        Duration::from_secs(args.drain_timeout_secs),
    ))
}

/// Under a supervisor (`MIGSERVE_SUPERVISOR_PID` set), exits as soon as the supervisor is
/// gone, so that no worker outlives it (backs up the `PR_SET_PDEATHSIG` set at spawn).
fn exit_with_supervisor() {
    let Some(supervisor) = std::env::var(crate::supervisor::process::SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("supervisor-watch".into())
        .spawn(move || loop {
            // SAFETY: getppid(2) has no preconditions.
            let parent = unsafe { libc::getppid() } as u32;
            if parent != supervisor {
                eprintln!("supervisor {supervisor} is gone; worker exiting");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(500));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the supervisor");
    }
}

async fn serve(
    state: http::SharedState,
    listen: SocketAddr,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    // Machine-readable ready line: the supervisor and tests read the chosen port from it.
    println!("migserve worker listening on http://{local}");
    tracing::info!(%local, "listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::router(state);
    let server = axum::serve(crate::net::no_delay(listener), app).with_graceful_shutdown({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    });
    let server = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    tracing::info!(
        ?drain_timeout,
        "shutting down: no new connections, draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("drained"),
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::warn!("drain timeout reached; exiting with requests in flight"),
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Refuses, before loading, a model whose weights cannot fit in the GPU's free memory.
fn check_weights_fit(
    args: &WorkerArgs,
    device: &migserve_models::Device,
    weights: WeightFormat,
) -> anyhow::Result<()> {
    let Some((free, total)) = device::memory(device)? else {
        return Ok(());
    };
    let file = migserve_models::GgufFile::open(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let config = migserve_models::LlamaConfig::from_gguf(&file)?;
    let file_bytes = std::fs::metadata(&args.model).map_or(0, |m| m.len());
    let need = weights.weight_bytes(config.parameter_count(), file_bytes) as usize;
    if need > free {
        return Err(DeviceUnusable(format!(
            "{} needs {} for its weights ({weights:?}) but the GPU has {} free of {}              (CUDA_VISIBLE_DEVICES={})",
            args.model.display(),
            device::gib(need),
            device::gib(free),
            device::gib(total),
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
        ))
        .into());
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn new_cuda_cache(
    config: &migserve_models::LlamaConfig,
    kv_blocks: usize,
    block_size: usize,
    device: &migserve_models::Device,
) -> anyhow::Result<Box<dyn PagedStore>> {
    let cache = cuda_cache::CudaPagedKvCache::new(config, kv_blocks, block_size, device)
        .map_err(|e| DeviceUnusable(format!("cannot allocate the KV cache on the GPU: {e}")))?;
    Ok(Box::new(cache))
}

#[cfg(not(feature = "cuda"))]
fn new_cuda_cache(
    _config: &migserve_models::LlamaConfig,
    _kv_blocks: usize,
    _block_size: usize,
    _device: &migserve_models::Device,
) -> anyhow::Result<Box<dyn PagedStore>> {
    Err(DeviceUnusable("this build of migserve has no CUDA support".into()).into())
}
