//! Emulated slices: a list of MIG profiles carved in software from the CPU or from one GPU,
//! for development and tests without MIG.

use std::str::FromStr;

use super::profile::MAX_COMPUTE_SLICES;
use super::{ProbeError, Profile, Slice, SliceKind, SliceProbe};

/// Where emulated slices are carved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulationTarget {
    /// The host's CPU cores, shared out between the slices.
    Cpu,
    /// One GPU (by index): every slice's worker sees that GPU; memory is shared out by profile.
    Gpu(u32),
}

impl FromStr for EmulationTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cpu" => Ok(EmulationTarget::Cpu),
            "gpu" => Ok(EmulationTarget::Gpu(0)),
            other => other
                .strip_prefix("gpu:")
                .and_then(|i| i.parse().ok())
                .map(EmulationTarget::Gpu)
                .ok_or_else(|| format!("{other:?} is not cpu, gpu or gpu:N")),
        }
    }
}

/// Carves slices from a spec such as `7x1g.10gb` or `3g.40gb,2g.20gb,2x1g.10gb`.
#[derive(Debug, Clone)]
pub struct EmulationProbe {
    pub spec: String,
    pub target: EmulationTarget,
    /// Cores to share out on CPU (default: the cores the OS lets this process run on).
    pub cores: Option<Vec<usize>>,
}

/// Parses an emulation spec into its profiles, in order.
pub fn parse_spec(spec: &str) -> Result<Vec<Profile>, String> {
    let mut profiles = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let (count, name) = match part.split_once('x') {
            Some((n, name)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => (
                n.parse::<usize>()
                    .map_err(|_| format!("bad count in {part:?}"))?,
                name,
            ),
            _ => (1, part),
        };
        let profile = Profile::parse(name)
            .filter(|p| *p != Profile::Full)
            .ok_or_else(|| format!("{name:?} is not a MIG profile such as 1g.10gb"))?;
        if count == 0 {
            return Err(format!("zero slices in {part:?}"));
        }
        profiles.extend(std::iter::repeat_n(profile, count));
    }
    if profiles.len() > 64 {
        return Err(format!("{} slices: at most 64", profiles.len()));
    }
    Ok(profiles)
}

impl EmulationProbe {
    fn error(&self, reason: impl Into<String>) -> ProbeError {
        ProbeError::Emulation {
            spec: self.spec.clone(),
            reason: reason.into(),
        }
    }
}

impl SliceProbe for EmulationProbe {
    fn probe(&self) -> Result<Vec<Slice>, ProbeError> {
        let profiles = parse_spec(&self.spec).map_err(|e| self.error(e))?;
        match self.target {
            EmulationTarget::Cpu => {
                let cores = self.cores.clone().unwrap_or_else(allowed_cores);
                let shares = share_cores(&cores, profiles.len());
                Ok(profiles
                    .iter()
                    .zip(shares)
                    .enumerate()
                    .map(|(i, (profile, cpus))| Slice {
                        id: format!("cpu{i}"),
                        uuid: format!("EMU-cpu-{i}"),
                        profile: profile.to_string(),
                        kind: SliceKind::Cpu,
                        memory_bytes: profile.memory_bytes(),
                        sm_count: None,
                        gpu_index: None,
                        gpu_uuid: None,
                        gpu_instance: None,
                        compute_instance: None,
                        cpus,
                    })
                    .collect())
            }
            EmulationTarget::Gpu(index) => {
                let gpus = super::nvml::NvmlProbe.probe()?;
                let gpu = gpus
                    .iter()
                    .find(|s| s.kind == SliceKind::Gpu && s.gpu_index == Some(index))
                    .ok_or_else(|| self.error(format!("no whole GPU {index} (MIG off) found")))?;
                let compute: u32 = profiles.iter().map(Profile::compute_slices).sum();
                if compute > MAX_COMPUTE_SLICES {
                    return Err(self.error(format!(
                        "{compute} compute slices asked, a GPU has {MAX_COMPUTE_SLICES}"
                    )));
                }
                let memory: u64 = profiles.iter().filter_map(Profile::memory_bytes).sum();
                if let Some(total) = gpu.memory_bytes.filter(|t| memory > *t) {
                    return Err(self.error(format!(
                        "{} GB asked, GPU {index} has {} GB",
                        memory / 1_000_000_000,
                        total / 1_000_000_000
                    )));
                }
                Ok(profiles
                    .iter()
                    .enumerate()
                    .map(|(i, profile)| Slice {
                        id: format!("emu{i}"),
                        uuid: gpu.uuid.clone(),
                        profile: profile.to_string(),
                        kind: SliceKind::Emulated,
                        memory_bytes: profile.memory_bytes(),
                        sm_count: gpu
                            .sm_count
                            .map(|sms| sms * profile.compute_slices() / MAX_COMPUTE_SLICES),
                        gpu_index: Some(index),
                        gpu_uuid: Some(gpu.uuid.clone()),
                        gpu_instance: None,
                        compute_instance: None,
                        cpus: Vec::new(),
                    })
                    .collect())
            }
        }
    }
}

/// The cores this process may run on (its affinity mask: a container's cpuset, `taskset`).
pub fn allowed_cores() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getaffinity fills a zeroed cpu_set_t of the size we pass.
        let cores: Vec<usize> = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &set))
                    .collect()
            } else {
                Vec::new()
            }
        };
        if !cores.is_empty() {
            return cores;
        }
    }
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (0..n).collect()
}

/// Shares `cores` between `slices`: disjoint runs when there are enough cores (the first
/// slices get the remainder), otherwise one core each, reused round-robin.
pub fn share_cores(cores: &[usize], slices: usize) -> Vec<Vec<usize>> {
    let fallback = [0];
    let cores = if cores.is_empty() {
        &fallback[..]
    } else {
        cores
    };
    if slices <= cores.len() {
        let (base, extra) = (cores.len() / slices.max(1), cores.len() % slices.max(1));
        let mut next = 0;
        (0..slices)
            .map(|i| {
                let n = base + usize::from(i < extra);
                let run = cores[next..next + n].to_vec();
                next += n;
                run
            })
            .collect()
    } else {
        (0..slices).map(|i| vec![cores[i % cores.len()]]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(parse_spec("7x1g.10gb").unwrap().len(), 7);
        let mixed = parse_spec("3g.40gb, 2g.20gb,2x1g.10gb").unwrap();
        let names: Vec<String> = mixed.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]);
        for bad in ["", "0x1g.10gb", "7x", "3xfull", "1g.10gb,,", "9g.10gb"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_slices_get_their_share_of_cores() {
        let eight: Vec<usize> = (0..8).collect();
        assert_eq!(
            share_cores(&eight, 3),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        assert_eq!(share_cores(&[0, 1], 3), vec![vec![0], vec![1], vec![0]]);
        // A cpuset that does not start at 0.
        assert_eq!(share_cores(&[4, 5, 6, 7], 2), vec![vec![4, 5], vec![6, 7]]);
        assert!(!allowed_cores().is_empty());
        let slices = EmulationProbe {
            spec: "3x1g.10gb".into(),
            target: EmulationTarget::Cpu,
            cores: Some((0..7).collect()),
        }
        .probe()
        .unwrap();
        assert_eq!(slices.len(), 3);
        assert_eq!(slices[0].threads(), Some(3));
        assert_eq!(slices[2].threads(), Some(2));
        assert!(slices
            .iter()
            .all(|s| s.kind == SliceKind::Cpu && s.profile == "1g.10gb"));
        assert_eq!(slices[1].id, "cpu1");
        assert_eq!(slices[1].uuid, "EMU-cpu-1");
    }

    #[test]
    fn targets_parse() {
        assert_eq!("cpu".parse(), Ok(EmulationTarget::Cpu));
        assert_eq!("gpu:1".parse(), Ok(EmulationTarget::Gpu(1)));
        assert!("tpu".parse::<EmulationTarget>().is_err());
    }
}
