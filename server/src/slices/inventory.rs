//! Slices from an inventory file: the text `nvidia-smi -L` prints, or JSON.
//!
//! For containers where NVML sees too little, and for tests on recorded machines.

use std::path::{Path, PathBuf};

use super::profile::{gpu_memory_from_name, sms_per_compute_slice};
use super::{ProbeError, Profile, Slice, SliceKind, SliceProbe};

/// Reads slices from a file.
#[derive(Debug, Clone)]
pub struct InventoryProbe {
    pub path: PathBuf,
}

impl SliceProbe for InventoryProbe {
    fn probe(&self) -> Result<Vec<Slice>, ProbeError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| ProbeError::Inventory {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        parse_inventory(&text).map_err(|reason| ProbeError::Inventory {
            path: self.path.display().to_string(),
            reason,
        })
    }
}

/// Parses an inventory: JSON (a list of slices, or `{"slices": [...]}`) when it starts with
/// `[` or `{`, otherwise `nvidia-smi -L` text.
pub fn parse_inventory(text: &str) -> Result<Vec<Slice>, String> {
    let slices = match text.trim_start().chars().next() {
        Some('[') => serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?,
        Some('{') => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Wrapped {
                slices: Vec<Slice>,
            }
            serde_json::from_str::<Wrapped>(text)
                .map_err(|e| format!("invalid JSON: {e}"))?
                .slices
        }
        _ => parse_nvidia_smi_list(text)?,
    };
    check_unique(&slices)?;
    Ok(slices)
}

fn check_unique(slices: &[Slice]) -> Result<(), String> {
    for (i, slice) in slices.iter().enumerate() {
        if let Some(other) = slices[..i]
            .iter()
            .find(|s| s.id == slice.id || s.uuid == slice.uuid)
        {
            return Err(format!(
                "slices {} and {} share an id or UUID",
                other.id, slice.id
            ));
        }
    }
    Ok(())
}

struct GpuLine {
    index: u32,
    name: String,
    uuid: String,
    migs: Vec<Slice>,
}

/// Parses `nvidia-smi -L`: `GPU i: NAME (UUID: GPU-…)` lines, each followed by its
/// `MIG <profile> Device n: (UUID: MIG-…)` lines (or the old `MIG-GPU-<uuid>/<gi>/<ci>` form).
/// A GPU with no MIG lines is one slice of profile `full`.
pub fn parse_nvidia_smi_list(text: &str) -> Result<Vec<Slice>, String> {
    let mut gpus: Vec<GpuLine> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = |reason: &str| format!("line {}: {reason}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("GPU ") {
            let (index, rest) = rest
                .split_once(':')
                .ok_or_else(|| at("no ':' after the GPU index"))?;
            let index = index.trim().parse().map_err(|_| at("bad GPU index"))?;
            let (name, uuid) = split_uuid(rest).ok_or_else(|| at("no (UUID: …)"))?;
            gpus.push(GpuLine {
                index,
                name: name.to_string(),
                uuid: uuid.to_string(),
                migs: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("MIG ") {
            let gpu = gpus
                .last_mut()
                .ok_or_else(|| at("MIG device before any GPU line"))?;
            let profile_name = rest.split_whitespace().next().unwrap_or_default();
            let profile = Profile::parse(profile_name).ok_or_else(|| at("unknown MIG profile"))?;
            let device: u32 = rest
                .split_once("Device")
                .and_then(|(_, d)| d.split(':').next())
                .and_then(|d| d.trim().parse().ok())
                .ok_or_else(|| at("no 'Device N:'"))?;
            let (_, uuid) = split_uuid(rest).ok_or_else(|| at("no (UUID: …)"))?;
            let (gpu_instance, compute_instance) = old_style_ids(uuid);
            gpu.migs.push(Slice {
                id: format!("mig{}-{device}", gpu.index),
                uuid: uuid.to_string(),
                profile: profile.to_string(),
                kind: SliceKind::Mig,
                memory_bytes: profile.memory_bytes(),
                sm_count: sms_per_compute_slice(&gpu.name).map(|n| n * profile.compute_slices()),
                gpu_index: Some(gpu.index),
                gpu_uuid: Some(gpu.uuid.clone()),
                gpu_instance,
                compute_instance,
                cpus: Vec::new(),
            });
        } else {
            return Err(at("neither a GPU nor a MIG line"));
        }
    }
    if gpus.is_empty() {
        return Err("no GPU lines".into());
    }
    Ok(gpus
        .into_iter()
        .flat_map(|gpu| {
            if gpu.migs.is_empty() {
                vec![Slice {
                    id: format!("gpu{}", gpu.index),
                    memory_bytes: gpu_memory_from_name(&gpu.name),
                    sm_count: None,
                    uuid: gpu.uuid.clone(),
                    profile: Profile::Full.to_string(),
                    kind: SliceKind::Gpu,
                    gpu_index: Some(gpu.index),
                    gpu_uuid: Some(gpu.uuid),
                    gpu_instance: None,
                    compute_instance: None,
                    cpus: Vec::new(),
                }]
            } else {
                gpu.migs
            }
        })
        .collect())
}

/// `"… (UUID: X)"` → (text before, X).
fn split_uuid(text: &str) -> Option<(&str, &str)> {
    let (before, after) = text.rsplit_once("(UUID:")?;
    let uuid = after.trim().strip_suffix(')')?.trim();
    (!uuid.is_empty()).then_some((before.trim(), uuid))
}

/// GPU and compute instance ids from an old-style `MIG-GPU-<uuid>/<gi>/<ci>` UUID.
fn old_style_ids(uuid: &str) -> (Option<u32>, Option<u32>) {
    if !uuid.starts_with("MIG-GPU-") {
        return (None, None);
    }
    let mut parts = uuid.rsplitn(3, '/');
    let ci = parts.next().and_then(|p| p.parse().ok());
    let gi = parts.next().and_then(|p| p.parse().ok());
    (gi, ci)
}

/// Reads an inventory file into slices (convenience for the CLI).
pub fn load(path: &Path) -> Result<Vec<Slice>, ProbeError> {
    InventoryProbe {
        path: path.to_path_buf(),
    }
    .probe()
}
