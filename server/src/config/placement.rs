//! Placement: which model runs on which slice with which share of its memory, refusing
//! models that do not fit. Pure logic over slices and model footprints; the fleet
//! (`crate::fleet`) places on-demand models with the same rules while serving.

use std::collections::HashMap;

use migserve_engine::flags::DEFAULT_KV_CACHE_TOKENS;
use migserve_models::ModelSource;

use super::{ConfigError, DeployConfig, ModelSection, Pinning};
use crate::contract::DeviceKind;
use crate::slices::{Slice, SliceKind};

/// One worker to run: a model on a slice, with its share of the slice's memory.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub slice: Slice,
    pub model: ModelSection,
    /// Device the worker runs on.
    pub device: DeviceKind,
    /// Bytes the worker is expected to need (weights + KV cache + overhead).
    pub footprint_bytes: u64,
    /// The memory it may use when it shares its slice (passed as `--memory-budget-bytes`);
    /// `None`: the whole slice.
    pub share_bytes: Option<u64>,
}

impl Assignment {
    /// Bytes of the slice this worker holds: its share, or the whole slice.
    pub fn held_bytes(&self) -> u64 {
        self.share_bytes
            .or(self.slice.memory_bytes)
            .unwrap_or(self.footprint_bytes)
    }
}

/// Estimated memory of a model on a device: weights in the format the worker will hold plus
/// its KV cache (`kv_cache_tokens`, else the default's), plus 10 % for activations and the
/// runtime.
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
    Ok(migserve_engine::device::footprint_bytes(
        weight_bytes,
        kv_bytes as u64,
    ))
}

/// Footprints by model and device, each read from the model's headers once.
#[derive(Debug, Default)]
pub struct Footprints(HashMap<(String, bool), Result<u64, String>>);

impl Footprints {
    /// The footprint of `model` on `device` (remembered, error included).
    pub fn of(&mut self, model: &ModelSection, device: DeviceKind) -> Result<u64, String> {
        self.0
            .entry((model.name.clone(), device == DeviceKind::Cuda))
            .or_insert_with(|| footprint(model, device))
            .clone()
    }

    /// Forgets what was read of `model` (its file may have changed).
    pub fn forget(&mut self, model: &str) {
        self.0.retain(|(name, _), _| name != model);
    }

    /// Takes what `other` read that this has not.
    pub fn merge(&mut self, other: Footprints) {
        for (key, value) in other.0 {
            self.0.entry(key).or_insert(value);
        }
    }
}

/// The device a model's worker on `slice` runs on.
pub fn device_for(model: &ModelSection, slice: &Slice) -> DeviceKind {
    model.device.unwrap_or(match slice.kind {
        SliceKind::Cpu => DeviceKind::Cpu,
        _ => DeviceKind::Cuda,
    })
}

/// How a slice's memory is shared between the workers on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One worker per slice, sized from the whole slice.
    Whole,
    /// At most N workers per slice, each given its memory / N.
    Equal(usize),
    /// As many workers as their footprints fit, each given its footprint.
    Fit,
}

impl Sharing {
    /// The sharing `config` asks for: `[lifecycle] max_models_per_slice` (1: whole slices,
    /// N: equal shares); unset, whole slices when every model is pinned and the pinned
    /// replicas need no more slices than there are, else as many as fit.
    pub fn of(config: &DeployConfig, slices: usize) -> Self {
        match config.lifecycle.max_models_per_slice {
            Some(1) => Sharing::Whole,
            Some(n) => Sharing::Equal(n),
            None => {
                let all_pinned = config.models.iter().all(ModelSection::is_pinned);
                let pinned: usize = config.models.iter().map(|m| m.pinning().count()).sum();
                if all_pinned && pinned <= slices {
                    Sharing::Whole
                } else {
                    Sharing::Fit
                }
            }
        }
    }

    /// Most workers `slice` may hold.
    pub fn max_workers(&self, slice: &Slice) -> usize {
        match self {
            Sharing::Whole => 1,
            Sharing::Equal(n) => *n,
            Sharing::Fit if slice.memory_bytes.is_some() => usize::MAX,
            Sharing::Fit => 1,
        }
    }

    /// The share a worker of `footprint` bytes gets on `slice` (`None`: the whole slice), or
    /// why it cannot fit there even alone.
    pub fn share(&self, slice: &Slice, model: &str, footprint: u64) -> Result<Option<u64>, String> {
        let memory = slice.memory_bytes;
        let (share, room) = match (self, memory) {
            (_, None) => return Ok(None),
            (Sharing::Whole, Some(m)) => (None, m),
            (Sharing::Equal(n), Some(m)) => (Some(m / *n as u64), m / *n as u64),
            (Sharing::Fit, Some(m)) => (Some(footprint), m),
        };
        if footprint > room {
            let what = match self {
                Sharing::Equal(n) => format!("a 1/{n} share of slice"),
                _ => "slice".into(),
            };
            return Err(format!(
                "model {model:?} needs about {} but {what} {} ({}) has {}",
                gb(footprint),
                slice.id,
                slice.profile,
                gb(room)
            ));
        }
        Ok(share)
    }
}

/// A worker already on a slice, as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Occupant {
    pub model: String,
    /// Bytes of the slice it holds.
    pub bytes: u64,
}

/// Whether a worker holding `bytes` fits beside `occupants` on `slice`.
pub fn has_room(sharing: Sharing, slice: &Slice, occupants: &[Occupant], bytes: u64) -> bool {
    if occupants.len() >= sharing.max_workers(slice) {
        return false;
    }
    match (sharing, slice.memory_bytes) {
        (Sharing::Fit, Some(memory)) => {
            occupants.iter().map(|o| o.bytes).sum::<u64>() + bytes <= memory
        }
        _ => true,
    }
}

/// Pinned workers a config asks for, given the ones that run already.
#[derive(Debug, Default)]
pub struct PinnedPlan {
    /// Workers to start.
    pub start: Vec<Assignment>,
    /// Indexes into the `kept` list that no pin asks for any more.
    pub surplus: Vec<usize>,
}

/// A pinned worker that runs already: its model and slice index.
#[derive(Debug, Clone)]
pub struct Kept {
    pub model: String,
    pub slice: usize,
    pub bytes: u64,
}

/// Assigns every pinned replica of `config` to slices: explicit slices first, then
/// profiles, then replicas (empty slices before shared ones, smallest first). Slices left over
/// stay free for on-demand models.
pub fn place(config: &DeployConfig, slices: &[Slice]) -> Result<Vec<Assignment>, ConfigError> {
    let sharing = Sharing::of(config, slices.len());
    let plan = place_pinned(config, slices, sharing, &[], &mut Footprints::default())?;
    Ok(plan.start)
}

/// [`place`] around `kept` pinned workers (a reload): each still asked for stays where it
/// is; the others are surplus; what is missing is placed on the room left. On-demand
/// workers are not counted: the caller evicts those a new pinned worker needs room from.
pub fn place_pinned(
    config: &DeployConfig,
    slices: &[Slice],
    sharing: Sharing,
    kept: &[Kept],
    footprints: &mut Footprints,
) -> Result<PinnedPlan, ConfigError> {
    let err = ConfigError::Placement;
    let mut occupants: Vec<Vec<Occupant>> = vec![Vec::new(); slices.len()];
    let mut kept_used = vec![false; kept.len()];
    let mut plan = PinnedPlan::default();
    // What each model still needs, once the kept workers that satisfy a pin are counted.
    let mut wanted: Vec<(usize, Vec<Want>)> = Vec::new();
    for (mi, model) in config.models.iter().enumerate() {
        let mut wants: Vec<Want> = match model.pinning() {
            Pinning::OnDemand => continue,
            Pinning::Replicas(n) => vec![Want::Any; n],
            Pinning::Profiles(p) => p.into_iter().map(Want::Profile).collect(),
            Pinning::Slices(s) => s.into_iter().map(Want::Slice).collect(),
        };
        for want in &wants {
            if let Want::Slice(wanted) = want {
                if find_slice(slices, wanted).is_none() {
                    return Err(err(format!(
                        "model {:?} names slice {wanted:?}, which does not exist (slices: {})",
                        model.name,
                        ids(slices)
                    )));
                }
            }
        }
        // Kept workers satisfy the most specific pin they can.
        for rank in 0..3 {
            for (k, w) in kept.iter().enumerate() {
                if kept_used[k] || w.model != model.name {
                    continue;
                }
                let slice = &slices[w.slice];
                let hit = wants
                    .iter()
                    .position(|want| want.rank() == rank && want.accepts(slice));
                if let Some(i) = hit {
                    wants.remove(i);
                    kept_used[k] = true;
                    occupants[w.slice].push(Occupant {
                        model: w.model.clone(),
                        bytes: w.bytes,
                    });
                }
            }
        }
        wanted.push((mi, wants));
    }
    plan.surplus = (0..kept.len()).filter(|&k| !kept_used[k]).collect();
    let mut fit = |model: &ModelSection, i: usize, occupants: &[Vec<Occupant>]| {
        let slice = &slices[i];
        let device = device_for(model, slice);
        if device == DeviceKind::Cuda && slice.kind == SliceKind::Cpu {
            return Err(format!(
                "model {:?} asks for device cuda but slice {} is a CPU slice",
                model.name, slice.id
            ));
        }
        let need = footprints.of(model, device)?;
        let share = sharing.share(slice, &model.name, need)?;
        let assignment = Assignment {
            slice: slice.clone(),
            model: model.clone(),
            device,
            footprint_bytes: need,
            share_bytes: share,
        };
        if occupants[i].iter().any(|o| o.model == model.name) {
            return Err(format!(
                "slice {} already holds a replica of {:?}",
                slice.id, model.name
            ));
        }
        if !has_room(sharing, slice, &occupants[i], assignment.held_bytes()) {
            return Err(format!("slice {} is full", slice.id));
        }
        Ok(assignment)
    };
    // Pass 1: explicit slices; pass 2: profiles; pass 3: any slice.
    for rank in 0..3 {
        for (mi, wants) in &wanted {
            let model = &config.models[*mi];
            for want in wants.iter().filter(|w| w.rank() == rank) {
                let mut candidates: Vec<usize> = (0..slices.len())
                    .filter(|&i| want.accepts(&slices[i]))
                    .collect();
                if candidates.is_empty() {
                    let Want::Profile(profile) = want else {
                        continue;
                    };
                    return Err(err(format!(
                        "model {:?} asks for profile {profile}, but no slice has it (slices: {})",
                        model.name,
                        ids(slices)
                    )));
                }
                // Empty slices first (spread), then the smallest.
                candidates.sort_by_key(|&i| {
                    (
                        occupants[i].len(),
                        slices[i].memory_bytes.unwrap_or(u64::MAX),
                    )
                });
                let mut last_misfit = None;
                let mut placed = None;
                for i in candidates {
                    match fit(model, i, &occupants) {
                        Ok(a) => {
                            placed = Some((i, a));
                            break;
                        }
                        Err(e) => last_misfit = Some(e),
                    }
                }
                let Some((i, assignment)) = placed else {
                    return Err(err(refusal(model, want, slices, &occupants, last_misfit)));
                };
                occupants[i].push(Occupant {
                    model: model.name.clone(),
                    bytes: assignment.held_bytes(),
                });
                plan.start.push(assignment);
            }
        }
    }
    plan.start.sort_by_key(|a| {
        slices
            .iter()
            .position(|s| s.id == a.slice.id)
            .unwrap_or(usize::MAX)
    });
    Ok(plan)
}

/// One pinned replica still to place.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Slice(String),
    Profile(String),
    Any,
}

impl Want {
    /// Placement order: explicit slices, then profiles, then any.
    fn rank(&self) -> usize {
        match self {
            Want::Slice(_) => 0,
            Want::Profile(_) => 1,
            Want::Any => 2,
        }
    }

    fn accepts(&self, slice: &Slice) -> bool {
        match self {
            Want::Slice(wanted) => &slice.id == wanted || &slice.uuid == wanted,
            Want::Profile(profile) => &slice.profile == profile,
            Want::Any => true,
        }
    }
}

fn find_slice<'a>(slices: &'a [Slice], wanted: &str) -> Option<&'a Slice> {
    slices.iter().find(|s| s.id == wanted || s.uuid == wanted)
}

/// Why `want` of `model` found no slice: the model, the slices it could use and the models
/// holding them.
fn refusal(
    model: &ModelSection,
    want: &Want,
    slices: &[Slice],
    occupants: &[Vec<Occupant>],
    last_misfit: Option<String>,
) -> String {
    let held: Vec<String> = (0..slices.len())
        .filter(|&i| want.accepts(&slices[i]))
        .map(|i| {
            let names: Vec<&str> = occupants[i].iter().map(|o| o.model.as_str()).collect();
            match names.is_empty() {
                true => format!("{} free", slices[i].id),
                false => format!("{} holds {}", slices[i].id, names.join(" + ")),
            }
        })
        .collect();
    let what = match want {
        Want::Slice(s) => format!("slice {s}"),
        Want::Profile(p) => format!("a {p} slice"),
        Want::Any => "a slice".into(),
    };
    let why = last_misfit.unwrap_or_default();
    format!(
        "model {:?} (pinned) found no room on {what}: {why} ({}); give it replicas = 0 to load it on demand, pin fewer replicas, or let slices hold more models ([lifecycle] max_models_per_slice)",
        model.name,
        held.join(", ")
    )
}

/// Decimal gigabytes with two decimals, for messages.
pub fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
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

#[cfg(test)]
mod tests;
