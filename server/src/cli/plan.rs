//! `migserve plan`: recommend a MIG layout for a set of models on a GPU type.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::config::placement::footprint;
use crate::config::ModelSection;
use crate::contract::DeviceKind;
use crate::plan::{gpus, plan, render, ModelNeed};
use migserve_engine::EngineFlags;

/// Arguments of `migserve plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// GPU type: h100-80gb, h100-94gb (H100 NVL), h100-96gb (GH200), h200-141gb (SXM and
    /// NVL), gh200-144gb, b200-180gb, a100-80gb, a100-40gb, a30-24gb or rtx-pro-6000-96gb.
    #[arg(long, default_value = "h100-80gb")]
    pub gpu: String,
    /// A model: NAME=PATH (a GGUF file or a Hugging Face directory; memory from its headers)
    /// or NAME=SIZE_GB (memory given), with an optional expected load after a colon
    /// (`chat=/models/chat.gguf:3`; default 1).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Fix each worker's KV cache at this many positions and write it into the config.
    /// Default: profiles are chosen for a cache of 16,384 positions and the config leaves
    /// the size to the worker, which on a GPU gives its cache what the weights leave of the
    /// slice.
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// Write `mig-parted.yaml` and `migserve.toml` here (default: print them).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Name of the layout in the mig-parted config.
    #[arg(long, default_value = "migserve-plan")]
    pub layout_name: String,
}

fn parse_model(text: &str, kv_cache_tokens: Option<usize>) -> anyhow::Result<ModelNeed> {
    let (name, rest) = text
        .split_once('=')
        .with_context(|| format!("--model {text:?}: expected NAME=PATH or NAME=SIZE_GB"))?;
    let (what, load) = match rest.rsplit_once(':') {
        Some((what, load)) if load.parse::<f64>().is_ok() => (what, load.parse::<f64>()?),
        _ => (rest, 1.0),
    };
    if name.is_empty() || what.is_empty() || !(load.is_finite() && load > 0.0) {
        bail!("--model {text:?}: expected NAME=PATH or NAME=SIZE_GB, and a positive load");
    }
    if let Ok(gb) = what.parse::<f64>() {
        if !(gb.is_finite() && gb > 0.0) {
            bail!("--model {text:?}: the size must be positive");
        }
        return Ok(ModelNeed {
            name: name.into(),
            bytes: (gb * 1e9) as u64,
            load,
            path: None,
            kv_cache_tokens,
        });
    }
    let section = ModelSection {
        name: name.into(),
        path: PathBuf::from(what),
        replicas: None,
        max_replicas: None,
        profiles: None,
        slices: None,
        device: Some(DeviceKind::Cuda),
        engine: EngineFlags {
            kv_cache_tokens,
            ..Default::default()
        },
        from_models_dir: false,
    };
    let bytes = footprint(&section, DeviceKind::Cuda).map_err(anyhow::Error::msg)?;
    // Absolute, so the written config works from wherever it is put.
    let path = std::fs::canonicalize(what).unwrap_or_else(|_| PathBuf::from(what));
    Ok(ModelNeed {
        name: name.into(),
        bytes,
        load,
        path: Some(path.display().to_string()),
        kv_cache_tokens,
    })
}

/// Runs `migserve plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let gpu = gpus::gpu_spec(&args.gpu).with_context(|| {
        let known: Vec<&str> = gpus::GPUS.iter().map(|g| g.name).collect();
        format!(
            "unknown GPU type {:?} (known: {})",
            args.gpu,
            known.join(", ")
        )
    })?;
    let models = args
        .models
        .iter()
        .map(|m| parse_model(m, args.kv_cache_tokens))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name_ok = !args.layout_name.is_empty()
        && args
            .layout_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        bail!(
            "--layout-name {:?}: use letters, digits, '-', '_' and '.'",
            args.layout_name
        );
    }
    let layout = plan(gpu, &models)?;
    let yaml = render::mig_parted(&layout, &args.layout_name);
    let toml = render::migserve_config(&layout);
    eprint!("{}", render::summary(&layout));
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("mig-parted.yaml"), yaml)?;
            std::fs::write(dir.join("migserve.toml"), toml)?;
            eprintln!(
                "wrote {}/mig-parted.yaml and {}/migserve.toml",
                dir.display(),
                dir.display()
            );
        }
        None => println!("{yaml}---\n{toml}"),
    }
    Ok(())
}
