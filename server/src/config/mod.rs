//! The deployment config (`migserve serve --config FILE`): where slices come from, which
//! models run on them, and how the supervisor and router behave.
//!
//! Unknown keys are refused; relative paths are relative to the config file.

pub mod catalogue;
pub mod placement;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use migserve_engine::EngineFlags;
use serde::Deserialize;

use crate::contract::DeviceKind;
use crate::slices::emulate::{self, EmulationTarget};
use crate::slices::{Profile, SliceSource};
pub use catalogue::{LifecycleSection, Pinning};

/// The embedded default deployment: CPU, three emulated slices, the real SmolLM2 model.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../configs/local.toml");

/// Where a deployment config comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigSource {
    /// A TOML file (`--config`).
    File(PathBuf),
    /// The embedded `configs/local.toml`.
    Embedded,
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("placement: {0}")]
    Placement(String),
}

/// The whole deployment config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Address of the front endpoint.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where slices come from (needed when `[[models]]` are given).
    pub slices: Option<SlicesSection>,
    /// Supervisor timings and limits.
    #[serde(default)]
    pub supervisor: SupervisorSection,
    /// Request routing across slices.
    #[serde(default)]
    pub router: RouterSection,
    /// The catalogue: every model that may run, with its pinned replicas (those found in
    /// `models_dir` are appended, on demand).
    #[serde(default)]
    pub models: Vec<ModelSection>,
    /// A folder whose GGUF files and Hugging Face directories are catalogued on demand under
    /// their file or folder names.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// How models come and go while serving.
    #[serde(default)]
    pub lifecycle: LifecycleSection,
    /// Workers running elsewhere (other nodes), balanced like local ones.
    #[serde(default)]
    pub remote: Vec<RemoteSection>,
    /// Workers found through DNS (e.g. a Kubernetes headless Service), re-resolved on an
    /// interval.
    #[serde(default)]
    pub discover: Vec<DiscoverSection>,
}

/// One `[[discover]]` entry: every address `dns` resolves to is a worker of `model`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverSection {
    /// Prefix of the discovered slices' names (`NAME/IP:PORT`).
    pub name: String,
    /// `host:port` to resolve, e.g. `migserve-workers.migserve.svc.cluster.local:8081`.
    pub dns: String,
    /// Model the discovered workers serve.
    pub model: String,
    /// Profile label (default `remote`).
    pub profile: Option<String>,
    /// Seconds between lookups.
    #[serde(default = "default_discover_interval")]
    pub interval_secs: f64,
    /// API key the discovered workers require (sent as `Authorization: Bearer`).
    #[serde(default)]
    pub api_key: Option<String>,
}

fn default_discover_interval() -> f64 {
    5.0
}

/// How the router picks a slice for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// Where the request is expected to finish first, counting the prefill of the part of its
    /// prompt the slice is not thought to hold, within a bounded imbalance of requests in
    /// flight (docs/serve.md).
    #[default]
    PrefixAware,
    /// Where the request is expected to finish first by the slices' measured prefill and
    /// decode costs, ignoring what they cache.
    EarliestCompletion,
    /// The policy before the cost model: queued tokens times the slice's moving average of
    /// time per token (kept for comparisons).
    QueuedTokens,
    /// In turn.
    RoundRobin,
    /// Fewest requests in flight.
    LeastOutstanding,
}

/// `[router]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    pub policy: RoutingPolicy,
    /// Requests in flight per slice; when every candidate slice is full: 429.
    pub max_queue_per_slice: usize,
    /// Further slices tried when one fails before any byte reached the client.
    pub max_retries: usize,
    /// Model for TGI requests that name none (`x-model` header); default: the first model.
    pub default_model: Option<String>,
    /// New tokens assumed for a request that sets no limit (queue estimates only).
    pub default_max_new_tokens: u64,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Seconds a connection has to send a request head (and an idle keep-alive connection is
    /// kept); then it is closed.
    pub header_read_timeout_secs: f64,
    /// Seconds a request body has to arrive whole after its head (408 after).
    pub body_read_timeout_secs: f64,
    /// Open client connections at most (capped by the open-files limit); past it the oldest
    /// connection not in a request is closed, or, when all are in one, the new one gets 503.
    pub max_connections: usize,
    /// Requests one connection may send; the last gets `connection: close`.
    pub max_requests_per_connection: u64,
}

impl RouterSection {
    /// The front server's limits on its clients.
    pub fn connection_limits(&self) -> crate::net::guarded::ConnectionLimits {
        crate::net::guarded::ConnectionLimits {
            header_read_timeout: std::time::Duration::from_secs_f64(self.header_read_timeout_secs),
            body_read_timeout: std::time::Duration::from_secs_f64(self.body_read_timeout_secs),
            max_connections: self.max_connections,
            max_requests_per_connection: self.max_requests_per_connection,
        }
    }
}

impl Default for RouterSection {
    fn default() -> Self {
        Self {
            policy: RoutingPolicy::default(),
            max_queue_per_slice: 64,
            max_retries: 2,
            default_model: None,
            default_max_new_tokens: 256,
            max_body_bytes: 2 * 1024 * 1024,
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 30.0,
            max_connections: 4096,
            max_requests_per_connection: 1000,
        }
    }
}

/// One `[[remote]]` worker: a `migserve worker` (or any TGI-compatible server) elsewhere.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    /// Slice name used in `x-slice`, `/slices` and metrics.
    pub name: String,
    /// Base URL, e.g. `http://10.0.0.7:8081`.
    pub url: String,
    /// Model it serves.
    pub model: String,
    /// Profile label (default `remote`).
    pub profile: Option<String>,
    /// API key it requires (sent as `Authorization: Bearer`); the front's own keys are never
    /// sent to a remote worker.
    #[serde(default)]
    pub api_key: Option<String>,
}

/// Where the embedded default's `configs/` folder may be: the working directory's, those
/// above the running binary (`target/release/migserve` in a checkout), and the source tree
/// this binary was built from.
fn embedded_bases() -> Vec<PathBuf> {
    let mut bases = vec![PathBuf::from("configs")];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            bases.push(dir.join("configs"));
        }
    }
    bases.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs"));
    let mut seen = Vec::new();
    bases.retain(|b| {
        let key = std::fs::canonicalize(b).unwrap_or_else(|_| b.clone());
        let fresh = b.is_dir() && !seen.contains(&key);
        seen.push(key);
        fresh
    });
    if bases.is_empty() {
        bases.push(PathBuf::from("configs"));
    }
    bases
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Which source to read slices from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Nvml,
    Inventory,
    Emulate,
}

/// `[slices]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlicesSection {
    pub source: SourceKind,
    /// Inventory file (`source = "inventory"`).
    pub inventory: Option<PathBuf>,
    /// Emulation spec such as `3x1g.10gb` (`source = "emulate"`).
    pub emulate: Option<String>,
    /// `cpu` (default), `gpu` or `gpu:N`.
    pub emulate_on: Option<String>,
}

/// `[supervisor]`: how workers are started, watched and stopped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    /// Seconds a worker may take to load its model and report ready.
    pub ready_timeout_secs: f64,
    /// Seconds between health checks of a ready worker.
    pub health_interval_secs: f64,
    /// Seconds one health check may take.
    pub health_timeout_secs: f64,
    /// Consecutive failed health checks after which a worker counts as hung and is restarted.
    pub unhealthy_after: u32,
    /// First restart delay in seconds; doubles with each crash in a row.
    pub restart_backoff_secs: f64,
    /// Longest restart delay in seconds.
    pub restart_backoff_max_secs: f64,
    /// Crashes within `crash_window_secs` after which the slice is marked failed.
    pub max_crashes: u32,
    pub crash_window_secs: f64,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    pub drain_timeout_secs: f64,
    /// Seconds a worker gets between SIGTERM and SIGKILL (after the drain).
    pub stop_timeout_secs: f64,
}

impl Default for SupervisorSection {
    fn default() -> Self {
        Self {
            ready_timeout_secs: 300.0,
            health_interval_secs: 2.0,
            health_timeout_secs: 2.0,
            unhealthy_after: 3,
            restart_backoff_secs: 0.5,
            restart_backoff_max_secs: 30.0,
            max_crashes: 5,
            crash_window_secs: 300.0,
            drain_timeout_secs: 30.0,
            stop_timeout_secs: 10.0,
        }
    }
}

/// One `[[models]]` entry: a model of the catalogue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Name clients ask for (OpenAI `model`).
    pub name: String,
    /// GGUF file or Hugging Face directory.
    pub path: PathBuf,
    /// Pinned replicas on this many slices (any profile that fits), loaded at start and
    /// never evicted; 0: loaded on demand.
    pub replicas: Option<usize>,
    /// Most replicas at once (pinned ones included); default: the pinned count, 1 for an
    /// on-demand model. Replicas past the pinned ones are loaded when every loaded one is at
    /// its queue limit.
    pub max_replicas: Option<usize>,
    /// Run on one slice of each listed profile.
    pub profiles: Option<Vec<String>>,
    /// Run on exactly these slices (ids such as `mig0-3` or UUIDs).
    pub slices: Option<Vec<String>>,
    /// Device of its workers; default: cpu on CPU slices, cuda otherwise.
    pub device: Option<DeviceKind>,
    /// Engine settings of its workers: `migserve worker`'s flags of the same names.
    #[serde(default)]
    pub engine: EngineFlags,
    /// Found in `models_dir`, not named in the config.
    #[serde(skip)]
    pub from_models_dir: bool,
}

impl DeployConfig {
    /// Reads, parses and validates the config of `source`. The embedded default's paths
    /// are relative to a `configs/` folder beside its `models-data/`: the one in the
    /// working directory, else one above the migserve binary, else the source tree it was
    /// built from; when none has its model, the error says how to get it or which
    /// `--config` to pass.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        match source {
            ConfigSource::File(path) => Self::from_file(path),
            ConfigSource::Embedded => {
                let name = "embedded default (configs/local.toml)";
                let bases = embedded_bases();
                let mut first_error = None;
                for base in &bases {
                    match Self::from_str_at(EMBEDDED_DEFAULT, name, base) {
                        Ok(config) => return Ok(config),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                let looked: Vec<String> = bases
                    .iter()
                    .map(|b| b.join("..").join("models-data").display().to_string())
                    .collect();
                Err(ConfigError::Invalid {
                    path: name.into(),
                    message: format!(
                        "its model (models-data/SmolLM2-135M-Instruct.Q4_1.gguf) is not in {}; run `bash scripts/fetch-model.sh` in the repository, or pass --config FILE (first error: {})",
                        looked.join(", "),
                        first_error.map(|e| e.to_string()).unwrap_or_default()
                    ),
                })
            }
        }
    }

    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_str_at(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text; relative paths are resolved against `base`.
    pub fn from_str_at(text: &str, name: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: DeployConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| {
                1 + text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
            });
            ConfigError::Parse {
                path: name.into(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for model in &mut config.models {
            resolve(&mut model.path);
        }
        if let Some(p) = config.slices.as_mut().and_then(|s| s.inventory.as_mut()) {
            resolve(p);
        }
        if let Some(dir) = config.models_dir.as_mut() {
            resolve(dir);
            let taken: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
            let found = catalogue::scan_models_dir(dir, &taken).map_err(|message| {
                ConfigError::Invalid {
                    path: name.into(),
                    message,
                }
            })?;
            config.models.extend(found);
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: name.into(),
            message,
        })?;
        Ok(config)
    }

    fn validate_router(&self) -> Result<(), String> {
        let r = &self.router;
        if r.max_queue_per_slice == 0 || r.max_body_bytes == 0 || r.default_max_new_tokens == 0 {
            return Err("[router] max_queue_per_slice, max_body_bytes and default_max_new_tokens must be positive".into());
        }
        if r.max_connections == 0 || r.max_requests_per_connection == 0 {
            return Err(
                "[router] max_connections and max_requests_per_connection must be positive".into(),
            );
        }
        for (name, secs) in [
            ("header_read_timeout_secs", r.header_read_timeout_secs),
            ("body_read_timeout_secs", r.body_read_timeout_secs),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
                return Err(format!(
                    "[router] {name} must be a number of seconds in (0, 86400], got {secs}"
                ));
            }
        }
        let names = self.model_names();
        if let Some(model) = &r.default_model {
            if !names.contains(&model.as_str()) {
                return Err(format!(
                    "[router] default_model {model:?} is not a served model ({})",
                    names.join(", ")
                ));
            }
        }
        for (i, remote) in self.remote.iter().enumerate() {
            let at = format!("remote {:?}", remote.name);
            if remote.name.trim().is_empty() || remote.name.contains('/') {
                return Err(format!(
                    "[[remote]] entry {} needs a name without '/'",
                    i + 1
                ));
            }
            if self.remote[..i].iter().any(|r| r.name == remote.name) {
                return Err(format!("{at} is named twice"));
            }
            let rest = remote
                .url
                .strip_prefix("http://")
                .ok_or_else(|| format!("{at}: url {:?} must start with http://", remote.url))?;
            if rest.trim_end_matches('/').is_empty() {
                return Err(format!("{at}: url {:?} has no host", remote.url));
            }
        }
        for (i, entry) in self.discover.iter().enumerate() {
            let at = format!("discover {:?}", entry.name);
            if entry.name.trim().is_empty() || entry.name.contains('/') {
                return Err(format!(
                    "[[discover]] entry {} needs a name without '/'",
                    i + 1
                ));
            }
            if self.discover[..i].iter().any(|d| d.name == entry.name)
                || self.remote.iter().any(|r| r.name == entry.name)
            {
                return Err(format!("{at} is named twice"));
            }
            let port_ok = entry
                .dns
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("{at}: dns {:?} must be HOST:PORT", entry.dns));
            }
            if !(entry.interval_secs.is_finite()
                && (0.05..=86_400.0).contains(&entry.interval_secs))
            {
                return Err(format!(
                    "{at}: interval_secs must be between 0.05 and 86400"
                ));
            }
        }
        Ok(())
    }

    /// Every model name served, local first, in config order, without repeats.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for name in self
            .models
            .iter()
            .map(|m| m.name.as_str())
            .chain(self.remote.iter().map(|r| r.model.as_str()))
            .chain(self.discover.iter().map(|d| d.model.as_str()))
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The slice source this config names.
    pub fn slice_source(&self) -> Result<SliceSource, String> {
        let Some(s) = &self.slices else {
            return Err("no [slices] section: say where slices come from (source = \"nvml\", \"inventory\" or \"emulate\")".into());
        };
        match s.source {
            SourceKind::Nvml => Ok(SliceSource::Nvml),
            SourceKind::Inventory => s
                .inventory
                .clone()
                .map(SliceSource::Inventory)
                .ok_or_else(|| "[slices] source = \"inventory\" needs `inventory = FILE`".into()),
            SourceKind::Emulate => {
                let spec = s.emulate.clone().ok_or(
                    "[slices] source = \"emulate\" needs `emulate = SPEC` (e.g. \"3x1g.10gb\")",
                )?;
                emulate::parse_spec(&spec).map_err(|e| format!("[slices] emulate: {e}"))?;
                let target: EmulationTarget = s
                    .emulate_on
                    .as_deref()
                    .unwrap_or("cpu")
                    .parse()
                    .map_err(|e| format!("[slices] emulate_on: {e}"))?;
                Ok(SliceSource::Emulate { spec, target })
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !self.models.is_empty() || self.slices.is_some() {
            self.slice_source()?;
        }
        if self.models.is_empty() && self.remote.is_empty() && self.discover.is_empty() {
            return Err(match &self.models_dir {
                Some(dir) => format!(
                    "models_dir {} holds no GGUF file or Hugging Face directory, and there are no [[models]], [[remote]] or [[discover]] workers: nothing to serve",
                    dir.display()
                ),
                None => "no [[models]], [[remote]] or [[discover]] workers: nothing to serve".into(),
            });
        }
        self.lifecycle.validate()?;
        self.validate_router()?;
        let sup = &self.supervisor;
        for (name, value) in [
            ("ready_timeout_secs", sup.ready_timeout_secs),
            ("health_interval_secs", sup.health_interval_secs),
            ("health_timeout_secs", sup.health_timeout_secs),
            ("restart_backoff_secs", sup.restart_backoff_secs),
            ("restart_backoff_max_secs", sup.restart_backoff_max_secs),
            ("crash_window_secs", sup.crash_window_secs),
            ("drain_timeout_secs", sup.drain_timeout_secs),
            ("stop_timeout_secs", sup.stop_timeout_secs),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "[supervisor] {name} must be a positive number of seconds"
                ));
            }
        }
        if sup.max_crashes == 0 || sup.unhealthy_after == 0 {
            return Err("[supervisor] max_crashes and unhealthy_after must be at least 1".into());
        }
        for (i, model) in self.models.iter().enumerate() {
            let at = format!("model {:?}", model.name);
            if model.name.trim().is_empty() {
                return Err(format!("[[models]] entry {} has an empty name", i + 1));
            }
            if self.models[..i].iter().any(|m| m.name == model.name) {
                return Err(format!("{at} is named twice"));
            }
            if !model.path.exists() {
                return Err(format!(
                    "{at}: model file or directory {} does not exist",
                    model.path.display()
                ));
            }
            let ways = [
                model.replicas.is_some(),
                model.profiles.is_some(),
                model.slices.is_some(),
            ];
            if ways.iter().filter(|w| **w).count() > 1 {
                return Err(format!("{at}: give one of replicas, profiles or slices"));
            }
            let pinned = model.pinning().count();
            match model.max_replicas {
                Some(0) => return Err(format!("{at}: max_replicas must be at least 1")),
                Some(max) if max < pinned => {
                    return Err(format!(
                        "{at}: max_replicas = {max} is below its {pinned} pinned replicas"
                    ))
                }
                _ => {}
            }
            for profile in model.profiles.iter().flatten() {
                if Profile::parse(profile).is_none() {
                    return Err(format!(
                        "{at}: unknown profile {profile:?} (expected a MIG profile such as 1g.10gb, or full)"
                    ));
                }
            }
            model
                .engine
                .validate()
                .map_err(|e| format!("{at}: [models.engine] {e}"))?;
        }
        Ok(())
    }
}
