//! MIG profiles of the GPUs `migserve plan` knows (NVIDIA's MIG user guide).

/// One MIG profile of a GPU type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileSpec {
    pub name: &'static str,
    /// GPU compute slices (of 7).
    pub compute: u32,
    /// Memory slices (of 8).
    pub memory_eighths: u32,
    /// Memory in decimal GB, as the name says.
    pub memory_gb: u32,
    /// Most instances of this profile on one GPU.
    pub max: u32,
}

/// A GPU type and its profiles, smallest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSpec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub profiles: &'static [ProfileSpec],
}

const fn p(
    name: &'static str,
    compute: u32,
    memory_eighths: u32,
    memory_gb: u32,
    max: u32,
) -> ProfileSpec {
    ProfileSpec {
        name,
        compute,
        memory_eighths,
        memory_gb,
        max,
    }
}

/// The profiles of the 80 GB parts (H100 80 GB and A100 80 GB share them).
const PROFILES_80GB: &[ProfileSpec] = &[
    p("1g.10gb", 1, 1, 10, 7),
    p("1g.20gb", 1, 2, 20, 4),
    p("2g.20gb", 2, 2, 20, 3),
    p("3g.40gb", 3, 4, 40, 2),
    p("4g.40gb", 4, 4, 40, 1),
    p("7g.80gb", 7, 8, 80, 1),
];

/// The GPU types `migserve plan` knows.
pub const GPUS: [GpuSpec; 4] = [
    GpuSpec {
        name: "h100-80gb",
        aliases: &["h100", "h100-sxm", "h100-pcie", "h800"],
        profiles: PROFILES_80GB,
    },
    GpuSpec {
        name: "h200-141gb",
        aliases: &["h200"],
        profiles: &[
            p("1g.18gb", 1, 1, 18, 7),
            p("1g.35gb", 1, 2, 35, 4),
            p("2g.35gb", 2, 2, 35, 3),
            p("3g.71gb", 3, 4, 71, 2),
            p("4g.71gb", 4, 4, 71, 1),
            p("7g.141gb", 7, 8, 141, 1),
        ],
    },
    GpuSpec {
        name: "a100-80gb",
        aliases: &["a100-sxm4-80gb"],
        profiles: PROFILES_80GB,
    },
    GpuSpec {
        name: "a100-40gb",
        aliases: &["a100", "a100-sxm4-40gb"],
        profiles: &[
            p("1g.5gb", 1, 1, 5, 7),
            p("1g.10gb", 1, 2, 10, 4),
            p("2g.10gb", 2, 2, 10, 3),
            p("3g.20gb", 3, 4, 20, 2),
            p("4g.20gb", 4, 4, 20, 1),
            p("7g.40gb", 7, 8, 40, 1),
        ],
    },
];

/// Looks a GPU type up by name or alias (case-insensitive).
pub fn gpu(name: &str) -> Option<&'static GpuSpec> {
    let name = name.to_ascii_lowercase();
    GPUS.iter()
        .find(|g| g.name == name || g.aliases.contains(&name.as_str()))
}
