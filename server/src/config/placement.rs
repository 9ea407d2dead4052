//! Placement: which model runs on which slice, refusing models that do not fit.

use migserve_models::ModelSource;

use migserve_engine::flags::DEFAULT_KV_CACHE_TOKENS;

use super::{ConfigError, DeployConfig, ModelSection};
use crate::contract::DeviceKind;
use crate::slices::{Slice, SliceKind};

/// One worker to run: a model on a slice.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub slice: Slice,
    pub model: ModelSection,
    /// Device the worker runs on.
    pub device: DeviceKind,
    /// Bytes the worker is expected to need (weights + KV cache + overhead).
    pub footprint_bytes: u64,
}

/// Estimated memory of a model on a device: weights in the format the worker will hold plus
/// its KV cache, plus 10 % for activations and the runtime.
pub fn footprint(model: &ModelSection, device: DeviceKind) -> Result<u64, String> {
    let at = |e: migserve_models::ModelError| format!("model {:?}: {e}", model.name);
    let source = ModelSource::open(&model.path).map_err(at)?;
    let config = source.config().map_err(at)?;
    let format = model.engine.weights.unwrap_or(device.default_weights());
    source.check_format(format).map_err(at)?;
    let weight_bytes = source.weight_bytes(&config, format);
    let kv_tokens = model
        .engine
        .kv_cache_tokens
        .unwrap_or(DEFAULT_KV_CACHE_TOKENS);
    let kv_bytes = kv_tokens * config.kv_bytes_per_position(device.kv_element_bytes());
    Ok(((weight_bytes + kv_bytes as u64) as f64 * 1.1) as u64)
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// Assigns every model of `config` to slices: explicit slices first, then profiles, then
/// replicas (smallest fitting slices first). Slices left over stay idle.
pub fn place(config: &DeployConfig, slices: &[Slice]) -> Result<Vec<Assignment>, ConfigError> {
    let mut free: Vec<bool> = vec![true; slices.len()];
    let mut out: Vec<(usize, Assignment)> = Vec::new();
    let err = ConfigError::Placement;
    let device_for = |model: &ModelSection, slice: &Slice| {
        model.device.unwrap_or(match slice.kind {
            SliceKind::Cpu => DeviceKind::Cpu,
            _ => DeviceKind::Cuda,
        })
    };
    // A model's footprint reads its headers: once per model and device, not per slice tried.
    let footprints = std::cell::RefCell::new(std::collections::HashMap::new());
    let footprint_of = |model: &ModelSection, device: DeviceKind| -> Result<u64, ConfigError> {
        let key = (model.name.clone(), device == DeviceKind::Cuda);
        if let Some(bytes) = footprints.borrow().get(&key) {
            return Ok(*bytes);
        }
        let bytes = footprint(model, device).map_err(err)?;
        footprints.borrow_mut().insert(key, bytes);
        Ok(bytes)
    };
    let check_fit = |model: &ModelSection, slice: &Slice| -> Result<Assignment, ConfigError> {
        let device = device_for(model, slice);
        if device == DeviceKind::Cuda && slice.kind == SliceKind::Cpu {
            return Err(err(format!(
                "model {:?} asks for device cuda but slice {} is a CPU slice",
                model.name, slice.id
            )));
        }
        let need = footprint_of(model, device)?;
        if let Some(have) = slice.memory_bytes {
            if need > have {
                return Err(err(format!(
                    "model {:?} needs about {} but slice {} ({}) has {}",
                    model.name,
                    gb(need),
                    slice.id,
                    slice.profile,
                    gb(have)
                )));
            }
        }
        Ok(Assignment {
            slice: slice.clone(),
            model: model.clone(),
            device,
            footprint_bytes: need,
        })
    };

    // Pass 1: explicit slices.
    for model in &config.models {
        for wanted in model.slices.iter().flatten() {
            let index = slices
                .iter()
                .position(|s| &s.id == wanted || &s.uuid == wanted)
                .ok_or_else(|| {
                    err(format!(
                        "model {:?} names slice {wanted:?}, which does not exist (slices: {})",
                        model.name,
                        ids(slices)
                    ))
                })?;
            if !free[index] {
                return Err(err(format!(
                    "model {:?}: slice {wanted} is already taken",
                    model.name
                )));
            }
            out.push((index, check_fit(model, &slices[index])?));
            free[index] = false;
        }
    }
    // Pass 2: one slice per listed profile.
    for model in &config.models {
        for profile in model.profiles.iter().flatten() {
            let index = (0..slices.len())
                .find(|&i| free[i] && &slices[i].profile == profile)
                .ok_or_else(|| {
                    let total = slices.iter().filter(|s| &s.profile == profile).count();
                    err(if total == 0 {
                        format!(
                            "model {:?} asks for profile {profile}, but no slice has it (slices: {})",
                            model.name,
                            ids(slices)
                        )
                    } else {
                        format!(
                            "model {:?} asks for profile {profile}, but all {total} such slices are taken",
                            model.name
                        )
                    })
                })?;
            out.push((index, check_fit(model, &slices[index])?));
            free[index] = false;
        }
    }
    // Pass 3: replicas (default 1 when nothing else is given) on the smallest slices that fit.
    for model in &config.models {
        let replicas = match (&model.replicas, &model.profiles, &model.slices) {
            (Some(n), _, _) => *n,
            (None, None, None) => 1,
            _ => continue,
        };
        let mut candidates: Vec<usize> = (0..slices.len()).filter(|&i| free[i]).collect();
        if candidates.len() < replicas {
            return Err(err(format!(
                "model {:?} asks for {replicas} replicas but only {} of {} slices are free",
                model.name,
                candidates.len(),
                slices.len()
            )));
        }
        candidates.sort_by_key(|&i| slices[i].memory_bytes.unwrap_or(u64::MAX));
        let mut placed = 0;
        let mut last_misfit = None;
        for i in candidates {
            if placed == replicas {
                break;
            }
            match check_fit(model, &slices[i]) {
                Ok(assignment) => {
                    out.push((i, assignment));
                    free[i] = false;
                    placed += 1;
                }
                Err(e) => last_misfit = Some(e),
            }
        }
        if placed < replicas {
            return Err(last_misfit
                .unwrap_or_else(|| err(format!("model {:?}: not enough slices", model.name))));
        }
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, a)| a).collect())
}

fn ids(slices: &[Slice]) -> String {
    if slices.is_empty() {
        return "none".into();
    }
    slices
        .iter()
        .map(|s| format!("{} {}", s.id, s.profile))
        .collect::<Vec<_>>()
        .join(", ")
}
