//! Slice discovery: what devices (MIG slices, whole GPUs, emulated slices) this machine offers.
//!
//! Every source implements [`SliceProbe`] and returns plain [`Slice`] values; NVML types never
//! leave `nvml.rs`.

pub mod emulate;
pub mod inventory;
pub mod nvml;
pub mod profile;
pub mod table;

use serde::{Deserialize, Serialize};

pub use profile::Profile;

/// What kind of device a slice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceKind {
    /// A MIG device of a GPU in MIG mode.
    Mig,
    /// A whole GPU (MIG mode off).
    Gpu,
    /// A share of one GPU carved in software (no hardware isolation).
    Emulated,
    /// A share of the host's CPU cores.
    Cpu,
}

/// One device a worker can be pinned to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// Short stable name used in logs, metrics and `x-slice` (`mig0-3`, `gpu1`, `emu2`, `cpu0`).
    pub id: String,
    /// What `CUDA_VISIBLE_DEVICES` is set to for this slice's worker (`MIG-…`, `GPU-…`, or an
    /// `EMU-…` name that makes CUDA see no device for CPU slices).
    pub uuid: String,
    /// Profile name: `1g.10gb`, `3g.40gb`, … or `full` for a whole GPU.
    pub profile: String,
    pub kind: SliceKind,
    /// Memory of the slice in bytes, when known.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Streaming multiprocessors, when known.
    #[serde(default)]
    pub sm_count: Option<u32>,
    /// Index of the parent GPU.
    #[serde(default)]
    pub gpu_index: Option<u32>,
    /// UUID of the parent GPU.
    #[serde(default)]
    pub gpu_uuid: Option<String>,
    /// MIG GPU instance id.
    #[serde(default)]
    pub gpu_instance: Option<u32>,
    /// MIG compute instance id.
    #[serde(default)]
    pub compute_instance: Option<u32>,
    /// CPU cores the worker is pinned to (CPU slices; empty: no pinning).
    #[serde(default)]
    pub cpus: Vec<usize>,
}

impl Slice {
    /// Threads the worker should use: its cores for CPU slices, otherwise `None` (all).
    pub fn threads(&self) -> Option<usize> {
        (!self.cpus.is_empty()).then_some(self.cpus.len())
    }
}

/// An emulated CPU slice `cpu{i}` of `gb` decimal gigabytes (profile `1g.{gb}gb`), for
/// placement tests.
#[cfg(test)]
pub(crate) fn test_slice(i: usize, gb: u64) -> Slice {
    Slice {
        id: format!("cpu{i}"),
        uuid: format!("EMU-cpu-{i}"),
        profile: format!("1g.{gb}gb"),
        kind: SliceKind::Cpu,
        memory_bytes: Some(gb * 1_000_000_000),
        sm_count: None,
        gpu_index: None,
        gpu_uuid: None,
        gpu_instance: None,
        compute_instance: None,
        cpus: Vec::new(),
    }
}

/// Why slices could not be discovered.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The NVIDIA driver (libnvidia-ml) is not installed or cannot be loaded.
    #[error("no NVIDIA driver: {0}")]
    NoDriver(String),
    /// NVML loaded but a call failed.
    #[error("NVML: {0}")]
    Nvml(String),
    /// An inventory file could not be read or parsed.
    #[error("inventory {path}: {reason}")]
    Inventory { path: String, reason: String },
    /// An emulation spec is malformed or does not fit its device.
    #[error("emulation spec {spec:?}: {reason}")]
    Emulation { spec: String, reason: String },
}

impl ProbeError {
    /// Short label for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProbeError::NoDriver(_) => "no_driver",
            ProbeError::Nvml(_) => "nvml",
            ProbeError::Inventory { .. } => "inventory",
            ProbeError::Emulation { .. } => "emulation",
        }
    }
}

/// A source of slices.
pub trait SliceProbe {
    /// Lists the slices this source offers, in a stable order.
    fn probe(&self) -> Result<Vec<Slice>, ProbeError>;
}

/// Where a deployment's slices come from (config `[slices]` or `migserve slices` flags).
#[derive(Debug, Clone, PartialEq)]
pub enum SliceSource {
    /// The NVIDIA driver (NVML).
    Nvml,
    /// An inventory file (`nvidia-smi -L` text or JSON).
    Inventory(std::path::PathBuf),
    /// Software-carved slices.
    Emulate {
        spec: String,
        target: emulate::EmulationTarget,
    },
}

impl SliceSource {
    /// Discovers the slices of this source.
    pub fn probe(&self) -> Result<Vec<Slice>, ProbeError> {
        match self {
            SliceSource::Nvml => nvml::NvmlProbe.probe(),
            SliceSource::Inventory(path) => inventory::load(path),
            SliceSource::Emulate { spec, target } => emulate::EmulationProbe {
                spec: spec.clone(),
                target: *target,
                cores: None,
            }
            .probe(),
        }
    }
}
