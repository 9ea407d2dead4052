//! MIG profiles of every MIG-capable GPU `migserve plan` knows, from NVIDIA's MIG user guide
//! ("Supported MIG Profiles"); `mig_user_guide.txt` holds the guide's own numbers, which the
//! tests compare these tables with.

/// One MIG profile of a GPU type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileSpec {
    pub name: &'static str,
    /// GPU compute slices it takes (of the GPU's `compute_slices`).
    pub compute: u32,
    /// Memory slices it takes (of the GPU's `memory_slices`).
    pub memory_slices: u32,
    /// Memory in decimal GB, as the name says.
    pub memory_gb: u32,
    /// Most instances of this profile on one GPU.
    pub max: u32,
}

impl ProfileSpec {
    /// A variant of a base profile (`+me`, `+me.all`, `-me`, `+gfx`): the same compute and
    /// memory with other engines. The planner uses base profiles only.
    pub fn is_variant(&self) -> bool {
        self.name.contains('+') || self.name.ends_with("-me")
    }
}

/// A GPU type and its profiles, smallest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSpec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// GPU compute slices in all (7, or 4 on A30 and RTX PRO 6000).
    pub compute_slices: u32,
    /// Memory slices in all (8, or 4).
    pub memory_slices: u32,
    pub profiles: &'static [ProfileSpec],
}

const fn p(
    name: &'static str,
    compute: u32,
    memory_slices: u32,
    memory_gb: u32,
    max: u32,
) -> ProfileSpec {
    ProfileSpec {
        name,
        compute,
        memory_slices,
        memory_gb,
        max,
    }
}

/// H100 80 GB and A100 80 GB.
const PROFILES_80GB: &[ProfileSpec] = &[
    p("1g.10gb", 1, 1, 10, 7),
    p("1g.10gb+me", 1, 1, 10, 1),
    p("1g.20gb", 1, 2, 20, 4),
    p("2g.20gb", 2, 2, 20, 3),
    p("3g.40gb", 3, 4, 40, 2),
    p("4g.40gb", 4, 4, 40, 1),
    p("7g.80gb", 7, 8, 80, 1),
];

/// The seven-slice layout of the Hopper and Blackwell data-center GPUs, by the sizes in
/// their profile names (1g, 1g with two memory slices, 2g, 3g, 4g, 7g).
macro_rules! seven_slices {
    ($one:literal, $two:literal, $four:literal, $all:literal) => {
        &[
            p(concat!("1g.", $one, "gb"), 1, 1, $one, 7),
            p(concat!("1g.", $one, "gb+me"), 1, 1, $one, 1),
            p(concat!("1g.", $two, "gb"), 1, 2, $two, 4),
            p(concat!("2g.", $two, "gb"), 2, 2, $two, 3),
            p(concat!("3g.", $four, "gb"), 3, 4, $four, 2),
            p(concat!("4g.", $four, "gb"), 4, 4, $four, 1),
            p(concat!("7g.", $all, "gb"), 7, 8, $all, 1),
        ]
    };
}

const fn gpu(
    name: &'static str,
    aliases: &'static [&'static str],
    compute_slices: u32,
    memory_slices: u32,
    profiles: &'static [ProfileSpec],
) -> GpuSpec {
    GpuSpec {
        name,
        aliases,
        compute_slices,
        memory_slices,
        profiles,
    }
}

/// The GPU types `migserve plan` knows.
pub const GPUS: [GpuSpec; 10] = [
    gpu(
        "h100-80gb",
        &["h100", "h100-sxm", "h100-pcie", "h800"],
        7,
        8,
        PROFILES_80GB,
    ),
    gpu(
        "h100-94gb",
        &["h100-nvl", "h100-94gb-nvl"],
        7,
        8,
        seven_slices!(12, 24, 47, 94),
    ),
    gpu(
        "h100-96gb",
        &["gh200", "gh200-96gb"],
        7,
        8,
        seven_slices!(12, 24, 48, 96),
    ),
    gpu(
        "h200-141gb",
        &["h200", "h200-nvl", "h200-sxm"],
        7,
        8,
        seven_slices!(18, 35, 71, 141),
    ),
    // Not in the guide's tables: NVIDIA's mig-parted default config lists these.
    gpu(
        "gh200-144gb",
        &["gh200-144gb-hbm3e"],
        7,
        8,
        seven_slices!(18, 36, 72, 144),
    ),
    gpu(
        "b200-180gb",
        &["b200"],
        7,
        8,
        seven_slices!(23, 45, 90, 180),
    ),
    gpu("a100-80gb", &["a100-sxm4-80gb"], 7, 8, PROFILES_80GB),
    gpu(
        "a100-40gb",
        &["a100", "a100-sxm4-40gb"],
        7,
        8,
        &[
            p("1g.5gb", 1, 1, 5, 7),
            p("1g.5gb+me", 1, 1, 5, 1),
            p("1g.10gb", 1, 2, 10, 4),
            p("2g.10gb", 2, 2, 10, 3),
            p("3g.20gb", 3, 4, 20, 2),
            p("4g.20gb", 4, 4, 20, 1),
            p("7g.40gb", 7, 8, 40, 1),
        ],
    ),
    gpu(
        "a30-24gb",
        &["a30"],
        4,
        4,
        &[
            p("1g.6gb", 1, 1, 6, 4),
            p("1g.6gb+me", 1, 1, 6, 1),
            p("2g.12gb", 2, 2, 12, 2),
            p("2g.12gb+me", 2, 2, 12, 1),
            p("4g.24gb", 4, 4, 24, 1),
        ],
    ),
    gpu(
        "rtx-pro-6000-96gb",
        &["rtx-pro-6000", "rtx-pro-6000-blackwell"],
        4,
        4,
        &[
            p("1g.24gb", 1, 1, 24, 4),
            p("1g.24gb+me", 1, 1, 24, 1),
            p("1g.24gb+gfx", 1, 1, 24, 4),
            p("1g.24gb+me.all", 1, 1, 24, 1),
            p("1g.24gb-me", 1, 1, 24, 4),
            p("2g.48gb", 2, 2, 48, 2),
            p("2g.48gb+gfx", 2, 2, 48, 2),
            p("2g.48gb+me.all", 2, 2, 48, 1),
            p("2g.48gb-me", 2, 2, 48, 2),
            p("4g.96gb", 4, 4, 96, 1),
            p("4g.96gb+gfx", 4, 4, 96, 1),
        ],
    ),
];

/// Looks a GPU type up by name or alias (case-insensitive).
pub fn gpu_spec(name: &str) -> Option<&'static GpuSpec> {
    let name = name.to_ascii_lowercase();
    GPUS.iter()
        .find(|g| g.name == name || g.aliases.contains(&name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of a guide table: profile, fraction of memory, fraction of SMs, instances.
    type Row = (String, String, String, u32);

    /// The guide's numbers (`mig_user_guide.txt`): per GPU, its rows.
    fn guide() -> Vec<(String, Vec<Row>)> {
        let mut out: Vec<(String, Vec<Row>)> = Vec::new();
        for line in include_str!("mig_user_guide.txt").lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(gpu) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                out.push((gpu.to_string(), Vec::new()));
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "{line}");
            let rows = &mut out.last_mut().expect("a [gpu] first").1;
            rows.push((f[0].into(), f[1].into(), f[2].into(), f[3].parse().unwrap()));
        }
        out
    }

    /// `n/d` or `Full` as a count of `total` slices.
    fn slices(fraction: &str, total: u32) -> u32 {
        if fraction == "Full" {
            return total;
        }
        let (n, d) = fraction.split_once('/').unwrap();
        let (n, d): (u32, u32) = (n.parse().unwrap(), d.parse().unwrap());
        assert_eq!(n * total % d, 0, "{fraction} of {total}");
        n * total / d
    }

    #[test]
    fn every_table_matches_the_mig_user_guide() {
        let guide = guide();
        assert_eq!(guide.len(), GPUS.len(), "one guide table per GPU");
        for (name, rows) in guide {
            let gpu = gpu_spec(&name).unwrap_or_else(|| panic!("{name} not known"));
            let ours: Vec<(String, u32, u32, u32)> = gpu
                .profiles
                .iter()
                .map(|p| (p.name.to_string(), p.compute, p.memory_slices, p.max))
                .collect();
            let theirs: Vec<(String, u32, u32, u32)> = rows
                .iter()
                .map(|(profile, memory, sms, max)| {
                    (
                        profile.clone(),
                        slices(sms, gpu.compute_slices),
                        slices(memory, gpu.memory_slices),
                        *max,
                    )
                })
                .collect();
            assert_eq!(ours, theirs, "{name}");
            for p in gpu.profiles {
                // The name says the compute slices and the memory.
                let (compute, memory) = p.name.split_once('.').unwrap();
                assert_eq!(compute, format!("{}g", p.compute), "{}", p.name);
                assert!(
                    memory.starts_with(&format!("{}gb", p.memory_gb)),
                    "{}",
                    p.name
                );
                assert!(
                    crate::slices::Profile::parse(p.name).is_some(),
                    "{}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn gpus_are_found_by_name_and_alias() {
        assert_eq!(gpu_spec("H100").unwrap().name, "h100-80gb");
        assert_eq!(gpu_spec("h100-nvl").unwrap().name, "h100-94gb");
        assert_eq!(gpu_spec("gh200").unwrap().name, "h100-96gb");
        assert_eq!(gpu_spec("h200-nvl").unwrap().name, "h200-141gb");
        assert_eq!(gpu_spec("b200").unwrap().name, "b200-180gb");
        assert_eq!(gpu_spec("a30").unwrap().compute_slices, 4);
        assert_eq!(gpu_spec("rtx-pro-6000").unwrap().memory_slices, 4);
        assert!(gpu_spec("t4").is_none());
    }
}
