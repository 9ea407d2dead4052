//! The catalogue: every model `serve` may run, how many of its replicas are pinned, and the
//! `[lifecycle]` rules for the rest (loaded on demand, evicted least recently used).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelSection;

/// `[lifecycle]`: how models come and go while `serve` runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSection {
    /// Workers one slice may hold; default: as many as fit its memory (one per slice when
    /// every model is pinned and each has a slice of its own).
    pub max_models_per_slice: Option<usize>,
    /// A model nobody has asked for in this many seconds leaves its slice (pinned replicas
    /// never do); default: never.
    pub idle_unload_secs: Option<f64>,
    /// Seconds a request for a model that is not loaded is held while it loads (or waits for
    /// room); then 503 with `Retry-After`.
    pub load_timeout_secs: f64,
    /// Load a catalogued model on the first request for it; when false only
    /// `POST /models/load` (or `replicas`) loads models, and a request for one that is not
    /// loaded gets 503 at once.
    pub autoload: bool,
}

impl Default for LifecycleSection {
    fn default() -> Self {
        Self {
            max_models_per_slice: None,
            idle_unload_secs: None,
            load_timeout_secs: 300.0,
            autoload: true,
        }
    }
}

impl LifecycleSection {
    /// Refuses values `serve` cannot run with; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_models_per_slice == Some(0) {
            return Err("[lifecycle] max_models_per_slice must be at least 1".into());
        }
        if let Some(secs) = self.idle_unload_secs {
            if !(secs.is_finite() && secs > 0.0) {
                return Err("[lifecycle] idle_unload_secs must be a positive number".into());
            }
        }
        if !(self.load_timeout_secs.is_finite() && self.load_timeout_secs > 0.0) {
            return Err("[lifecycle] load_timeout_secs must be a positive number".into());
        }
        Ok(())
    }
}

/// How a catalogued model's replicas are pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinning {
    /// None pinned: loaded on demand (`replicas = 0`, or found in `models_dir`).
    OnDemand,
    /// This many, on any slices that fit (`replicas = N`, or nothing said: 1).
    Replicas(usize),
    /// One on a slice of each listed profile.
    Profiles(Vec<String>),
    /// One on each of these slices (ids or UUIDs).
    Slices(Vec<String>),
}

impl Pinning {
    /// Replicas pinned.
    pub fn count(&self) -> usize {
        match self {
            Pinning::OnDemand => 0,
            Pinning::Replicas(n) => *n,
            Pinning::Profiles(p) => p.len(),
            Pinning::Slices(s) => s.len(),
        }
    }
}

impl ModelSection {
    /// How its replicas are pinned.
    pub fn pinning(&self) -> Pinning {
        match (&self.replicas, &self.profiles, &self.slices) {
            (Some(0), _, _) => Pinning::OnDemand,
            (Some(n), _, _) => Pinning::Replicas(*n),
            (None, Some(p), _) => Pinning::Profiles(p.clone()),
            (None, None, Some(s)) => Pinning::Slices(s.clone()),
            (None, None, None) => Pinning::Replicas(1),
        }
    }

    /// Whether any replica is pinned.
    pub fn is_pinned(&self) -> bool {
        self.pinning().count() > 0
    }

    /// Most replicas at once: `max_replicas`, else the pinned count (1 for on-demand).
    pub fn replica_limit(&self) -> usize {
        self.max_replicas
            .unwrap_or_else(|| self.pinning().count().max(1))
    }
}

/// The on-demand entries for every GGUF file and Hugging Face directory (a folder with a
/// `config.json`) directly in `dir`, named by file stem or folder name, in name order; names
/// in `taken` are skipped (an explicit `[[models]]` entry wins). Split GGUF files are
/// catalogued by their first part only.
pub fn scan_models_dir(dir: &Path, taken: &[&str]) -> Result<Vec<ModelSection>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("models_dir {}: {e}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let name = if path.is_dir() {
            if !path.join("config.json").is_file() {
                continue;
            }
            file_name.to_string()
        } else {
            let Some(stem) = file_name.strip_suffix(".gguf") else {
                continue;
            };
            match split_part(stem) {
                Some((base, 1)) => base.to_string(),
                Some(_) => continue,
                None => stem.to_string(),
            }
        };
        if !taken.contains(&name.as_str()) && !found.iter().any(|(n, _)| *n == name) {
            found.push((name, path));
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(name, path)| ModelSection {
            name,
            path,
            replicas: Some(0),
            max_replicas: None,
            profiles: None,
            slices: None,
            device: None,
            engine: Default::default(),
            from_models_dir: true,
        })
        .collect())
}

/// `model-00001-of-00003` → `("model", 1)`.
fn split_part(stem: &str) -> Option<(&str, u32)> {
    let (head, total) = stem.rsplit_once("-of-")?;
    let (base, part) = head.rsplit_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !all_digits(part) || !all_digits(total) {
        return None;
    }
    Some((base, part.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_dir_catalogues_gguf_files_and_hf_folders_by_name() {
        let dir = std::env::temp_dir().join(format!("migserve-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("Qwen2.5-0.5B")).unwrap();
        std::fs::write(dir.join("Qwen2.5-0.5B/config.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("not-a-model")).unwrap();
        for file in [
            "smol.gguf",
            "big-00001-of-00002.gguf",
            "big-00002-of-00002.gguf",
            "notes.txt",
            ".hidden.gguf",
            "taken.gguf",
        ] {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        let found = scan_models_dir(&dir, &["taken"]).unwrap();
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["Qwen2.5-0.5B", "big", "smol"]);
        assert!(found
            .iter()
            .all(|m| m.pinning() == Pinning::OnDemand && m.from_models_dir));
        assert!(found[1].path.ends_with("big-00001-of-00002.gguf"));
        let missing = scan_models_dir(&dir.join("nope"), &[]).unwrap_err();
        assert!(missing.contains("models_dir"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pinning_and_replica_limits() {
        let mut m: ModelSection = toml::from_str("name = \"a\"\npath = \"x\"").unwrap();
        assert_eq!(
            m.pinning(),
            Pinning::Replicas(1),
            "nothing said: one pinned"
        );
        m.replicas = Some(0);
        assert_eq!((m.pinning(), m.replica_limit()), (Pinning::OnDemand, 1));
        m.max_replicas = Some(3);
        assert_eq!(m.replica_limit(), 3);
        m.replicas = None;
        m.max_replicas = None;
        m.profiles = Some(vec!["1g.10gb".into(), "3g.40gb".into()]);
        assert_eq!((m.pinning().count(), m.replica_limit()), (2, 2));
        assert!(LifecycleSection::default().validate().is_ok());
        let bad = LifecycleSection {
            max_models_per_slice: Some(0),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_models_per_slice"));
    }
}
