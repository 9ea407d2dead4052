//! `migserve serve`: discover slices, place the pinned models, start the fleet (which loads
//! the others on demand), and serve one endpoint in front of them; SIGHUP reloads the config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::{placement, ConfigSource, DeployConfig};
use crate::fleet::admin::{AdminAccess, AdminKeyArgs};
use crate::fleet::Fleet;
use crate::slices::ProbeError;
use crate::supervisor::Timings;

/// Arguments of `migserve serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Deployment config (TOML); default: the embedded configs/local.toml (CPU, three
    /// emulated slices, SmolLM2), with paths relative to the repository's configs/.
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
    #[command(flatten)]
    pub admin: AdminKeyArgs,
}

fn source_of(path: Option<&Path>) -> ConfigSource {
    match path {
        Some(p) => ConfigSource::File(p.to_path_buf()),
        None => ConfigSource::Embedded,
    }
}

/// Runs `migserve serve` until SIGTERM or Ctrl-C; SIGHUP reloads the config.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let keys = crate::auth::ApiKeys::from_args(&args.auth)?;
    let admin = AdminAccess::from_args(&args.admin, keys.as_deref())?;
    let source = source_of(args.config.as_deref());
    let mut config = DeployConfig::load(&source)?;
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
    report_placement(&config, &slices, &assignments, args.check);
    if args.check {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the migserve binary")?;
    // A keyed front gives its workers a key of their own (in their environment, not on
    // their command line, where any user could read it) and calls them with it; its
    // clients' keys go nowhere, nor does the admin key.
    let outgoing = keys.as_ref().map(|_| crate::auth::ApiKeys::worker_key());
    match &outgoing {
        Some(key) => std::env::set_var(crate::auth::API_KEY_ENV, key),
        None => std::env::remove_var(crate::auth::API_KEY_ENV),
    }
    std::env::remove_var("MIGSERVE_API_KEY_FILE");
    std::env::remove_var(crate::fleet::admin::ADMIN_KEY_ENV);
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
        let fleet = Fleet::new(config.clone(), slices, timings.clone(), exe, outgoing);
        fleet.set_source(source);
        let front = crate::router::Front::new(&config, fleet.clone());
        fleet.attach(&front);
        fleet.start()?;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let app = crate::auth::protect(front.app(), keys)
            .merge(crate::fleet::admin::routes(fleet.clone(), admin));
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
        serve_until_stopped(&fleet).await;
        tracing::info!(
            drain_secs = timings.drain.as_secs_f64(),
            "shutting down: listener closed, no new requests, draining"
        );
        let _ = stop_tx.send(true);
        fleet.close();
        let drain_started = std::time::Instant::now();
        if tokio::time::timeout(timings.drain, server).await.is_err() {
            tracing::warn!("drain timeout reached; stopping workers with requests in flight");
        }
        // Workers get what is left of the drain (for requests sent to them directly), then
        // the stop timeout, between SIGTERM and SIGKILL.
        let left = timings.drain.saturating_sub(drain_started.elapsed());
        fleet.shutdown(left + timings.stop).await;
        tracing::info!("all workers stopped");
        anyhow::Ok(())
    })
}

/// Waits for SIGTERM or Ctrl-C; reloads the config on each SIGHUP meanwhile.
async fn serve_until_stopped(fleet: &Arc<Fleet>) {
    let stop = crate::net::shutdown_signal();
    tokio::pin!(stop);
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with `migserve reload`");
            None
        }
    };
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = hangup => {
                tracing::info!("SIGHUP: reloading the config");
                if let Err(why) = fleet.reload_from_source() {
                    tracing::error!(%why, "reload refused; nothing changed");
                }
            }
        }
    }
}

/// Logs the placement (and with `--check` prints it: one line per pinned worker, then one
/// per on-demand model with where it fits).
fn report_placement(
    config: &DeployConfig,
    slices: &[crate::slices::Slice],
    assignments: &[placement::Assignment],
    print: bool,
) {
    let sharing = placement::Sharing::of(config, slices.len());
    tracing::info!(?sharing, "slice memory sharing");
    for a in assignments {
        tracing::info!(
            slice = %a.slice.id,
            profile = %a.slice.profile,
            model = %a.model.name,
            device = ?a.device,
            footprint_gb = a.footprint_bytes as f64 / 1e9,
            share_gb = a.share_bytes.map(|b| b as f64 / 1e9),
            "placed"
        );
        if print {
            println!(
                "{}\t{}\t{}\t{:?}\t{:.2} GB",
                a.slice.id,
                a.slice.profile,
                a.model.name,
                a.device,
                a.footprint_bytes as f64 / 1e9
            );
        }
    }
    let mut footprints = placement::Footprints::default();
    for model in config.models.iter().filter(|m| !m.is_pinned()) {
        let fits: Vec<String> = slices
            .iter()
            .filter(|s| {
                let device = placement::device_for(model, s);
                footprints
                    .of(model, device)
                    .and_then(|f| sharing.share(s, &model.name, f))
                    .is_ok()
            })
            .map(|s| s.id.clone())
            .collect();
        let need = slices
            .first()
            .map(|s| footprints.of(model, placement::device_for(model, s)));
        let need = match need {
            Some(Ok(bytes)) => format!("{:.2} GB", bytes as f64 / 1e9),
            Some(Err(e)) => format!("unreadable: {e}"),
            None => "-".into(),
        };
        if fits.is_empty() {
            tracing::warn!(model = %model.name, %need, "on-demand model fits no slice");
        }
        if print {
            let fits = match fits.is_empty() {
                true => "fits no slice".to_string(),
                false => format!("fits {}", fits.join(",")),
            };
            println!("-\t-\t{}\ton-demand\t{need}\t{fits}", model.name);
        }
    }
    let idle: Vec<&str> = slices
        .iter()
        .filter(|s| !assignments.iter().any(|a| a.slice.id == s.id))
        .map(|s| s.id.as_str())
        .collect();
    if !idle.is_empty() {
        tracing::info!(slices = ?idle, "slices free for on-demand models");
    }
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
