//! `migserve serve`: discover slices, place models, supervise one worker per slice, and serve
//! one endpoint in front of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{placement, DeployConfig, EMBEDDED_DEFAULT};
use crate::slices::ProbeError;
use crate::supervisor::{Supervisor, Timings};

/// Arguments of `migserve serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Deployment config (TOML); default: the embedded configs/local.toml (CPU, three
    /// emulated slices, SmolLM2), with paths relative to ./configs.
    #[arg(long, env = "MIGSERVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address; overrides the config's `listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Validate the config and print the placement, then exit without starting anything.
    #[arg(long)]
    pub check: bool,
    /// Take slices from this inventory (`nvidia-smi -L` text or JSON) instead of the config's
    /// `[slices]`: check a config against a recorded machine before deploying it.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub auth: crate::auth::ApiKeyArgs,
}

/// Loads a config file, or the embedded default.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<DeployConfig> {
    Ok(match path {
        Some(path) => DeployConfig::from_file(path)?,
        None => DeployConfig::from_str_at(
            EMBEDDED_DEFAULT,
            "embedded default (configs/local.toml)",
            Path::new("configs"),
        )?,
    })
}

/// Runs `migserve serve` until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let keys = crate::auth::ApiKeys::from_args(&args.auth)?;
    let mut config = load_config(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let slices = if config.models.is_empty() {
        Vec::new()
    } else {
        let source = match &args.inventory {
            Some(path) => crate::slices::SliceSource::Inventory(path.clone()),
            None => config.slice_source().map_err(anyhow::Error::msg)?,
        };
        source.probe().map_err(|e| match e {
            ProbeError::NoDriver(reason) => anyhow::anyhow!(
                "no NVIDIA driver ({reason}); set [slices] source = \"emulate\" or \"inventory\" in the config"
            ),
            other => other.into(),
        })?
    };
    let assignments = placement::place(&config, &slices)?;
    for a in &assignments {
        tracing::info!(
            slice = %a.slice.id,
            profile = %a.slice.profile,
            model = %a.model.name,
            device = ?a.device,
            footprint_gb = a.footprint_bytes as f64 / 1e9,
            "placed"
        );
    }
    let idle: Vec<&str> = slices
        .iter()
        .filter(|s| !assignments.iter().any(|a| a.slice.id == s.id))
        .map(|s| s.id.as_str())
        .collect();
    if !idle.is_empty() {
        tracing::info!(slices = ?idle, "slices left idle (no model placed on them)");
    }
    if args.check {
        for a in &assignments {
            println!(
                "{}\t{}\t{}\t{:?}\t{:.2} GB",
                a.slice.id,
                a.slice.profile,
                a.model.name,
                a.device,
                a.footprint_bytes as f64 / 1e9
            );
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the migserve binary")?;
    // A keyed front gives its workers a key of their own (in their environment, not on
    // their command line, where any user could read it) and calls them with it; its
    // clients' keys go nowhere.
    let outgoing = keys.as_ref().map(|_| crate::auth::ApiKeys::worker_key());
    match &outgoing {
        Some(key) => std::env::set_var(crate::auth::API_KEY_ENV, key),
        None => std::env::remove_var(crate::auth::API_KEY_ENV),
    }
    std::env::remove_var("MIGSERVE_API_KEY_FILE");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let timings = Timings::from(&config.supervisor);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local = listener.local_addr()?;
        let supervisor = Supervisor::start(assignments, timings.clone(), exe);
        let front = crate::router::Front::new(supervisor.slots(), &config, outgoing.as_deref());
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let app = crate::auth::protect(front.app(), keys);
        let app = crate::access_log::layer(app, crate::access_log::AccessLog { info: true });
        let limits = front_limits(&config.router);
        let server =
            crate::net::guarded::serve(listener, app, limits, front.guard_stats(), async move {
                let _ = stop_rx.changed().await;
            });
        let server = tokio::spawn(server);
        // Machine-readable ready line (the workers may still be loading: see /slices).
        println!("{}http://{local}", crate::contract::SERVE_READY_PREFIX);
        tracing::info!(%local, "front listening");
        crate::net::shutdown_signal().await;
        tracing::info!(
            drain_secs = timings.drain.as_secs_f64(),
            "shutting down: no new requests, draining"
        );
        let _ = stop_tx.send(true);
        let drain_started = std::time::Instant::now();
        if tokio::time::timeout(timings.drain, server).await.is_err() {
            tracing::warn!("drain timeout reached; stopping workers with requests in flight");
        }
        // Workers get what is left of the drain (for requests sent to them directly), then
        // the stop timeout, between SIGTERM and SIGKILL.
        let left = timings.drain.saturating_sub(drain_started.elapsed());
        supervisor.shutdown(left + timings.stop).await;
        tracing::info!("all workers stopped");
        anyhow::Ok(())
    })
}

/// The front's connection limits, the cap held under what the open-files limit allows.
fn front_limits(router: &crate::config::RouterSection) -> crate::net::guarded::ConnectionLimits {
    use crate::net::guarded::{raise_open_files_limit, RESERVED_FILES};
    let mut limits = router.connection_limits();
    let files = raise_open_files_limit();
    let room = files.saturating_sub(RESERVED_FILES).max(16) as usize;
    if limits.max_connections > room {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_files_limit = files,
            "max_connections lowered to what the open-files limit allows: {room}"
        );
        limits.max_connections = room;
    }
    limits
}
