//! MIG profile names (`1g.10gb`, `3g.40gb`, `1g.10gb+me`) and what they imply.

use std::fmt;

/// A parsed MIG profile name, or a whole GPU (`full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A MIG profile: `[<ci>c.]<compute>g.<memory>gb`, optionally with a variant suffix
    /// (`+me`, `+me.all`, `-me`, `+gfx`); `ci` is set for a compute instance smaller than its
    /// GPU instance.
    Mig {
        /// Compute slices of a compute-instance profile (`1c.3g.40gb`), if it is one.
        compute_instance: Option<u32>,
        /// GPU compute slices (1 to 7 on H100 and A100).
        compute_slices: u32,
        /// Memory in decimal gigabytes, as the name says.
        memory_gb: u32,
        /// A variant of the profile (media engines, graphics).
        variant: Option<Variant>,
    },
    /// A whole GPU.
    Full,
}

/// Most GPU compute slices a GPU has (H100, H200, A100, B200; A30 and RTX PRO 6000 have 4).
pub const MAX_COMPUTE_SLICES: u32 = 7;

/// A variant of a MIG profile, as the suffix of its name says (NVIDIA's MIG user guide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `+me`: with the media engines (decoders, JPEG, OFA).
    Media,
    /// `+me.all`: with every media engine of the GPU (RTX PRO 6000).
    MediaAll,
    /// `-me`: without media engines (RTX PRO 6000).
    NoMedia,
    /// `+gfx`: with graphics (RTX PRO 6000).
    Graphics,
}

impl Variant {
    /// Every variant with its suffix, longest first (for parsing).
    const SUFFIXES: [(&'static str, Variant); 4] = [
        ("+me.all", Variant::MediaAll),
        ("+gfx", Variant::Graphics),
        ("+me", Variant::Media),
        ("-me", Variant::NoMedia),
    ];

    /// Its suffix in profile names.
    pub fn suffix(self) -> &'static str {
        Self::SUFFIXES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(s, _)| *s)
            .unwrap_or("")
    }
}

impl Profile {
    /// Parses a profile name; `None` when it is not one.
    pub fn parse(name: &str) -> Option<Self> {
        if name == "full" {
            return Some(Profile::Full);
        }
        let (base, variant) = Variant::SUFFIXES
            .iter()
            .find_map(|(suffix, v)| name.strip_suffix(suffix).map(|base| (base, Some(*v))))
            .unwrap_or((name, None));
        let (compute_instance, base) = match base.split_once("c.") {
            Some((ci, rest)) if !ci.is_empty() && ci.chars().all(|c| c.is_ascii_digit()) => {
                (Some(ci.parse::<u32>().ok()?), rest)
            }
            _ => (None, base),
        };
        let (compute, memory) = base.split_once('.')?;
        let compute_slices: u32 = compute.strip_suffix('g')?.parse().ok()?;
        let memory_gb: u32 = memory.strip_suffix("gb")?.parse().ok()?;
        if !(1..=MAX_COMPUTE_SLICES).contains(&compute_slices)
            || memory_gb == 0
            || compute_instance.is_some_and(|ci| ci == 0 || ci > compute_slices)
        {
            return None;
        }
        Some(Profile::Mig {
            compute_instance,
            compute_slices,
            memory_gb,
            variant,
        })
    }

    /// Memory the name promises, in bytes (decimal GB: never more than the real slice has).
    pub fn memory_bytes(&self) -> Option<u64> {
        match self {
            Profile::Mig { memory_gb, .. } => Some(u64::from(*memory_gb) * 1_000_000_000),
            Profile::Full => None,
        }
    }

    /// Compute slices out of [`MAX_COMPUTE_SLICES`] that a worker on it uses (a compute
    /// instance's own count; `full` counts as all of them).
    pub fn compute_slices(&self) -> u32 {
        match self {
            Profile::Mig {
                compute_instance,
                compute_slices,
                ..
            } => compute_instance.unwrap_or(*compute_slices),
            Profile::Full => MAX_COMPUTE_SLICES,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Mig {
                compute_instance,
                compute_slices,
                memory_gb,
                variant,
            } => write!(
                f,
                "{}{compute_slices}g.{memory_gb}gb{}",
                compute_instance
                    .map(|ci| format!("{ci}c."))
                    .unwrap_or_default(),
                variant.map(Variant::suffix).unwrap_or("")
            ),
            Profile::Full => f.write_str("full"),
        }
    }
}

/// Memory of a whole GPU guessed from its marketing name (`NVIDIA H100 80GB HBM3`, `NVIDIA
/// H200`), for sources that do not report it (an `nvidia-smi -L` text).
pub fn gpu_memory_from_name(name: &str) -> Option<u64> {
    let upper = name.to_ascii_uppercase();
    // A GH200's name counts the Grace CPU's memory too ("GH200 480GB"): its GPU has 96 GB
    // (HBM3) or 144 GB (HBM3e, "144G").
    if upper.contains("GH200") {
        let gb = if upper.contains("144G") { 144 } else { 96 };
        return Some(gb * 1_000_000_000);
    }
    let from_digits = upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|word| word.strip_suffix("GB")?.parse::<u64>().ok())
        .next_back();
    let gb = from_digits.or_else(|| {
        [
            ("H200", 141),
            ("H100 NVL", 94),
            ("A30", 24),
            ("B200", 180),
            ("RTX PRO 6000", 96),
        ]
        .iter()
        .find(|(model, _)| upper.contains(model))
        .map(|(_, gb)| *gb)
    })?;
    Some(gb * 1_000_000_000)
}

/// Streaming multiprocessors per compute slice, by GPU family (H100/H200: 16, A100/A30: 14,
/// RTX PRO 6000: 46).
pub fn sms_per_compute_slice(gpu_name: &str) -> Option<u32> {
    let upper = gpu_name.to_ascii_uppercase();
    if upper.contains("RTX PRO 6000") {
        Some(46)
    } else if upper.contains("H100") || upper.contains("H200") || upper.contains("H800") {
        Some(16)
    } else if upper.contains("A100") || upper.contains("A30") || upper.contains("A800") {
        Some(14)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_profiles() {
        for name in [
            "1g.10gb",
            "3g.40gb",
            "7g.80gb",
            "1g.10gb+me",
            "1g.24gb+me.all",
            "1g.24gb-me",
            "2g.48gb+gfx",
            "full",
            "1g.18gb",
        ] {
            let profile = Profile::parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(profile.to_string(), name);
        }
        assert_eq!(
            Profile::parse("2g.20gb").unwrap().memory_bytes(),
            Some(20_000_000_000)
        );
        assert_eq!(Profile::parse("3g.40gb").unwrap().compute_slices(), 3);
        assert_eq!(Profile::parse("2c.3g.40gb").unwrap().compute_slices(), 2);
    }

    #[test]
    fn refuses_malformed_profiles() {
        for name in [
            "",
            "1g",
            "10gb",
            "8g.80gb",
            "0g.10gb",
            "1g.0gb",
            "1x.10gb",
            "1g.10gb+xx",
            "1g.10gb+me+me",
            "FULL",
        ] {
            assert!(Profile::parse(name).is_none(), "{name}");
        }
    }

    #[test]
    fn guesses_gpu_memory_from_names() {
        assert_eq!(
            gpu_memory_from_name("NVIDIA H100 80GB HBM3"),
            Some(80_000_000_000)
        );
        assert_eq!(
            gpu_memory_from_name("NVIDIA A100-SXM4-40GB"),
            Some(40_000_000_000)
        );
        assert_eq!(gpu_memory_from_name("NVIDIA H200"), Some(141_000_000_000));
        assert_eq!(
            gpu_memory_from_name("NVIDIA GH200 480GB"),
            Some(96_000_000_000)
        );
        assert_eq!(
            gpu_memory_from_name("NVIDIA GH200 144G HBM3e"),
            Some(144_000_000_000)
        );
        assert_eq!(
            gpu_memory_from_name("NVIDIA H100 NVL"),
            Some(94_000_000_000)
        );
        assert_eq!(
            gpu_memory_from_name("NVIDIA RTX PRO 6000 Blackwell Server Edition"),
            Some(96_000_000_000)
        );
        assert_eq!(gpu_memory_from_name("Tesla T4"), None);
    }
}
