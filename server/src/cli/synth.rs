//! `migserve synth`: write a model of a known shape with random weights.

use std::path::PathBuf;

use anyhow::Context;
use migserve_models::synth::{self, GgmlDType, SynthOptions, SynthShape, SHAPES};
use migserve_models::GgufFile;

/// Arguments of `migserve synth`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Shape to copy: smollm2-135m, qwen2.5-0.5b, qwen3-0.6b, gemma3-270m, gemma3-1b,
    /// phi3-mini, mistral-7b, llama-3.2-1b or tinyllama-1.1b.
    #[arg(long)]
    pub like: String,
    /// Write only this many layers (a small model of the family's real layout, for tests).
    #[arg(long)]
    pub layers: Option<u32>,
    /// Storage type of the weight matrices: q8_0, or f32 (for logit comparisons).
    #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "f32"])]
    pub matrix_type: String,
    /// GGUF file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// GGUF whose tokenizer (and chat template) the model gets.
    #[arg(long, default_value = "models-data/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub tokenizer_from: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `migserve synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let shape: &SynthShape = SynthShape::by_name(&args.like).with_context(|| {
        let known: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        format!(
            "unknown shape {:?} (known: {})",
            args.like,
            known.join(", ")
        )
    })?;
    let tokenizer = GgufFile::open(&args.tokenizer_from).with_context(|| {
        format!(
            "reading the tokenizer from {}",
            args.tokenizer_from.display()
        )
    })?;
    let started = std::time::Instant::now();
    let options = SynthOptions {
        seed: args.seed,
        layers: args.layers,
        matrix_type: match args.matrix_type.as_str() {
            "f32" => GgmlDType::F32,
            _ => GgmlDType::Q8_0,
        },
    };
    if args.layers == Some(0) {
        anyhow::bail!("--layers must be at least 1");
    }
    synth::write(shape, &tokenizer, &args.out, options)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} M parameters, {:.0} MB, {}) in {:.1} s: {}",
        args.out.display(),
        shape.config(args.layers).map_or(0, |c| c.parameter_count()) as f64 / 1e6,
        bytes as f64 / 1e6,
        args.matrix_type,
        started.elapsed().as_secs_f64(),
        shape.about
    );
    Ok(())
}
