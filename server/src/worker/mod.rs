//! A worker process: one model on one device (the engine, `migserve-engine`), behind the TGI
//! and OpenAI HTTP APIs ([`http`]).

pub mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use migserve_engine::{device, DeviceKind, Engine, EngineFlags, Health, LocalEngine, StartError};

use crate::contract::{worker_ready_line, PROFILE_ENV, SLICE_ENV, SUPERVISOR_PID_ENV};
use crate::metrics::MetricLabels;

/// Arguments of `migserve worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Model: a GGUF file or a Hugging Face directory (config.json, safetensors,
    /// tokenizer.json).
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
    #[command(flatten)]
    pub engine: EngineFlags,
    /// CPU threads for the model's math; default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Slice this worker serves (label on metrics, `x-slice` header).
    #[arg(long, env = SLICE_ENV)]
    pub slice: Option<String>,
    /// Profile of that slice (metric label).
    #[arg(long, env = PROFILE_ENV)]
    pub profile: Option<String>,
    /// Seconds to let in-flight requests finish after SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
    #[command(flatten)]
    pub auth: crate::auth::ApiKeyArgs,
}

/// The worker's engine died (its thread panicked); the process exits with
/// [`crate::contract::EXIT_ENGINE_DIED`] so that its supervisor restarts it.
#[derive(Debug, thiserror::Error)]
#[error("the engine died: {0}")]
pub struct EngineDied(pub String);

/// How long a worker whose engine died lets the error events of its requests reach their
/// clients before it exits.
const ENGINE_DEATH_DRAIN: Duration = Duration::from_secs(2);

/// Runs `migserve worker` until SIGTERM or Ctrl-C (`Ok`), or until its engine dies
/// ([`EngineDied`]).
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    exit_with_supervisor();
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle's thread pool when it first starts, below.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let keys = crate::auth::ApiKeys::from_args(&args.auth)?;
    let kind = device::resolve(args.device);
    let device = device::open(kind)?;
    let model_id = args
        .model_id
        .clone()
        .unwrap_or_else(|| default_model_id(&args.model));
    let engine = LocalEngine::load(&args.model, model_id.clone(), kind, &device, &args.engine)
        .map_err(|e| match e {
            // Kept as its own type: the exit status says "do not restart".
            StartError::DeviceUnusable(d) => anyhow::Error::new(d),
            other => anyhow::Error::new(other),
        })?;
    let labels = MetricLabels {
        slice: args.slice.clone().unwrap_or_else(|| "local".into()),
        profile: args.profile.clone().unwrap_or_else(|| "cpu".into()),
        model: model_id,
    };
    let metrics = crate::metrics::install(&labels)?;
    let state = Arc::new(http::AppState::new(
        Arc::new(engine),
        metrics,
        args.slice.as_deref(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let app = crate::auth::protect(http::router(state.clone()), keys);
    // Under `serve` the front writes each request's line; a worker alone writes its own.
    let access = crate::access_log::AccessLog {
        info: std::env::var_os(SUPERVISOR_PID_ENV).is_none(),
    };
    let app = crate::access_log::layer(app, access);
    runtime.block_on(serve(
        app,
        state.engine.as_ref(),
        args.listen,
        Duration::from_secs(args.drain_timeout_secs),
    ))
}

/// Under a supervisor (its pid in the environment), exits as soon as the supervisor is gone,
/// so that no worker outlives it (backs up the `PR_SET_PDEATHSIG` set at spawn).
fn exit_with_supervisor() {
    let Some(supervisor) = std::env::var(SUPERVISOR_PID_ENV)
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

/// Serves `app` (the [`http::router`] over `engine`, perhaps wrapped) on `listen` until
/// SIGTERM / Ctrl-C (then drains for up to `drain_timeout`) or until the engine dies (then
/// lets the failed requests' answers out and returns [`EngineDied`]). Prints the ready line
/// once it listens.
pub async fn serve(
    app: axum::Router,
    engine: &dyn Engine,
    listen: SocketAddr,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    // Machine-readable ready line: the supervisor and tests read the chosen port from it.
    println!("{}", worker_ready_line(local));
    tracing::info!(%local, "listening");
    let died = engine_death(engine);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(crate::net::no_delay(listener), app).with_graceful_shutdown({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    });
    let server = tokio::spawn(async move { server.await });
    let (drain, death) = tokio::select! {
        _ = crate::net::shutdown_signal() => (drain_timeout, None),
        why = died => (ENGINE_DEATH_DRAIN, Some(why)),
    };
    match &death {
        None => tracing::info!(
            ?drain_timeout,
            "shutting down: no new connections, draining in-flight requests"
        ),
        Some(why) => {
            tracing::error!(reason = %why, "the engine died: failing in-flight requests, then exiting")
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("drained"),
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::warn!("drain timeout reached; exiting with requests in flight"),
    }
    match death {
        Some(why) => Err(EngineDied(why).into()),
        None => Ok(()),
    }
}

/// Resolves with the reason once `engine` is dead.
fn engine_death(engine: &dyn Engine) -> impl std::future::Future<Output = String> + 'static {
    let mut health = engine.watch_health();
    async move {
        loop {
            if let Health::Dead(why) = health.borrow_and_update().clone() {
                return why;
            }
            if health.changed().await.is_err() {
                // The engine is gone without saying why: nothing more will change.
                return "the engine stopped".into();
            }
        }
    }
}

/// The name clients use when `--model-id` is not given: a GGUF file's name without `.gguf`,
/// a directory's name as it is (`Qwen2.5-0.5B-Instruct` keeps its dots).
pub(crate) fn default_model_id(model: &std::path::Path) -> String {
    let name = match model.is_dir() {
        true => std::fs::canonicalize(model)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        false => model.file_stem().map(|s| s.to_string_lossy().into_owned()),
    };
    name.unwrap_or_else(|| "model".into())
}
