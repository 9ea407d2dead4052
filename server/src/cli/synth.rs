//! `migserve synth`: write a model of a known shape with random weights.

use std::path::PathBuf;

use anyhow::Context;
use migserve_models::synth::{self, SynthShape, SHAPES};
use migserve_models::GgufFile;

/// Arguments of `migserve synth`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Shape to copy: smollm2-135m, qwen2.5-0.5b or llama-3.2-1b.
    #[arg(long)]
    pub like: String,
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
    synth::write(shape, &tokenizer, &args.out, args.seed)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} M parameters, {:.0} MB, Q8_0) in {:.1} s: {}",
        args.out.display(),
        shape.parameters() as f64 / 1e6,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        shape.about
    );
    Ok(())
}
