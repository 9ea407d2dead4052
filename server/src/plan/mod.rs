//! `migserve plan`: choose a MIG layout for a set of models on a GPU type.
//!
//! Each model gets the smallest profile its memory needs; the layout must fit the GPU's 7
//! compute and 8 memory slices (and each profile's instance limit); room left over goes to
//! extra replicas of the models with the most expected load per replica.

pub mod gpus;
pub mod render;

use gpus::{GpuSpec, ProfileSpec};

/// A model to place.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelNeed {
    pub name: String,
    /// Bytes one worker of it needs (weights + KV cache + overhead).
    pub bytes: u64,
    /// Expected load, relative to the other models (requests/s, tokens/s: any unit).
    pub load: f64,
    /// The GGUF file or Hugging Face directory, when known (goes into the migserve config).
    pub path: Option<String>,
    /// KV cache tokens its footprint was sized with (written into the migserve config).
    pub kv_cache_tokens: Option<usize>,
}

/// One model's share of the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub model: ModelNeed,
    pub profile: ProfileSpec,
    pub replicas: u32,
}

/// A layout for one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub gpu: &'static GpuSpec,
    pub placed: Vec<Placed>,
}

impl Plan {
    /// Compute slices used (of the GPU's).
    pub fn compute(&self) -> u32 {
        self.placed
            .iter()
            .map(|p| p.profile.compute * p.replicas)
            .sum()
    }

    /// Memory slices used (of the GPU's).
    pub fn memory_slices(&self) -> u32 {
        self.placed
            .iter()
            .map(|p| p.profile.memory_slices * p.replicas)
            .sum()
    }

    /// Instances of each profile, in the GPU's profile order.
    pub fn profile_counts(&self) -> Vec<(&'static str, u32)> {
        self.gpu
            .profiles
            .iter()
            .filter_map(|spec| {
                let n: u32 = self
                    .placed
                    .iter()
                    .filter(|p| p.profile.name == spec.name)
                    .map(|p| p.replicas)
                    .sum();
                (n > 0).then_some((spec.name, n))
            })
            .collect()
    }

    fn fits(&self) -> bool {
        self.compute() <= self.gpu.compute_slices
            && self.memory_slices() <= self.gpu.memory_slices
            && self.profile_counts().iter().all(|(name, n)| {
                self.gpu
                    .profiles
                    .iter()
                    .find(|s| s.name == *name)
                    .is_some_and(|s| *n <= s.max)
            })
    }
}

/// Why no layout exists.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error(
        "model {model:?} needs {need_gb:.1} GB, more than the largest {gpu} slice ({largest})"
    )]
    TooBig {
        model: String,
        need_gb: f64,
        gpu: String,
        largest: String,
    },
    #[error("the models do not fit one {gpu}: their smallest slices ({list}) need {compute} of {compute_total} compute slices and {memory} of {memory_total} memory slices")]
    DoesNotFit {
        gpu: String,
        list: String,
        compute: u32,
        memory: u32,
        compute_total: u32,
        memory_total: u32,
    },
    #[error("no models to plan for")]
    NoModels,
    #[error("model {0:?} is named twice")]
    Duplicate(String),
}

/// Plans a layout of `models` on one `gpu`.
pub fn plan(gpu: &'static GpuSpec, models: &[ModelNeed]) -> Result<Plan, PlanError> {
    if models.is_empty() {
        return Err(PlanError::NoModels);
    }
    if let Some((_, m)) = models
        .iter()
        .enumerate()
        .find(|(i, m)| models[..*i].iter().any(|o| o.name == m.name))
    {
        return Err(PlanError::Duplicate(m.name.clone()));
    }
    let mut placed = Vec::new();
    for m in models {
        let profile = gpu
            .profiles
            .iter()
            .filter(|p| !p.is_variant() && u64::from(p.memory_gb) * 1_000_000_000 >= m.bytes)
            .min_by_key(|p| (p.memory_slices, p.compute))
            .ok_or_else(|| PlanError::TooBig {
                model: m.name.clone(),
                need_gb: m.bytes as f64 / 1e9,
                gpu: gpu.name.into(),
                largest: gpu.profiles.last().map(|p| p.name).unwrap_or("-").into(),
            })?;
        placed.push(Placed {
            model: m.clone(),
            profile: *profile,
            replicas: 1,
        });
    }
    let mut layout = Plan { gpu, placed };
    if !layout.fits() {
        let list: Vec<String> = layout
            .placed
            .iter()
            .map(|p| format!("{} {}", p.model.name, p.profile.name))
            .collect();
        return Err(PlanError::DoesNotFit {
            gpu: gpu.name.into(),
            list: list.join(", "),
            compute: layout.compute(),
            memory: layout.memory_slices(),
            compute_total: gpu.compute_slices,
            memory_total: gpu.memory_slices,
        });
    }
    // Spend what is left on replicas: most load per replica first.
    loop {
        let mut order: Vec<usize> = (0..layout.placed.len()).collect();
        order.sort_by(|&a, &b| {
            let per = |i: usize| layout.placed[i].model.load / f64::from(layout.placed[i].replicas);
            per(b).total_cmp(&per(a))
        });
        let grown = order.into_iter().find(|&i| {
            layout.placed[i].replicas += 1;
            let ok = layout.fits();
            if !ok {
                layout.placed[i].replicas -= 1;
            }
            ok
        });
        if grown.is_none() {
            return Ok(layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(name: &str, gb: f64, load: f64) -> ModelNeed {
        ModelNeed {
            name: name.into(),
            bytes: (gb * 1e9) as u64,
            load,
            path: None,
            kv_cache_tokens: None,
        }
    }

    #[test]
    fn seven_small_models_on_an_h100_get_seven_1g_10gb() {
        let h100 = gpus::gpu_spec("h100").unwrap();
        let models: Vec<ModelNeed> = (0..7).map(|i| need(&format!("m{i}"), 0.7, 1.0)).collect();
        let p = plan(h100, &models).unwrap();
        assert_eq!(p.profile_counts(), [("1g.10gb", 7)]);
        assert!(p.placed.iter().all(|x| x.replicas == 1));
    }

    #[test]
    fn spare_room_goes_to_the_busiest_model() {
        let h100 = gpus::gpu_spec("h100-80gb").unwrap();
        let p = plan(h100, &[need("busy", 0.7, 6.0), need("quiet", 0.7, 1.0)]).unwrap();
        let replicas: Vec<u32> = p.placed.iter().map(|x| x.replicas).collect();
        assert_eq!(replicas, [6, 1]);
        assert_eq!(p.compute(), 7);
    }

    #[test]
    fn bigger_models_get_bigger_slices() {
        let h100 = gpus::gpu_spec("h100").unwrap();
        let p = plan(
            h100,
            &[
                need("big", 30.0, 1.0),
                need("mid", 15.0, 1.0),
                need("small", 5.0, 1.0),
            ],
        )
        .unwrap();
        let profiles: Vec<&str> = p.placed.iter().map(|x| x.profile.name).collect();
        assert_eq!(profiles, ["3g.40gb", "1g.20gb", "1g.10gb"]);
        assert!(p.memory_slices() <= 8 && p.compute() <= 7);
    }

    #[test]
    fn refusals_say_why() {
        let h100 = gpus::gpu_spec("h100").unwrap();
        let err = plan(h100, &[need("huge", 90.0, 1.0)]).unwrap_err();
        assert!(
            err.to_string().contains(
                "\"huge\" needs 90.0 GB, more than the largest h100-80gb slice (7g.80gb)"
            ),
            "{err}"
        );
        let eight: Vec<ModelNeed> = (0..8).map(|i| need(&format!("m{i}"), 0.7, 1.0)).collect();
        let err = plan(h100, &eight).unwrap_err();
        assert!(
            err.to_string().contains("need 8 of 7 compute slices"),
            "{err}"
        );
        let err = plan(
            h100,
            &[
                need("a", 35.0, 1.0),
                need("b", 35.0, 1.0),
                need("c", 5.0, 1.0),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("9 of 8 memory slices"), "{err}");
        assert_eq!(plan(h100, &[]), Err(PlanError::NoModels));
    }
}
