//! `migserve generate`: one prompt, text streamed to stdout, speed on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use migserve_models::{generate, ChatMessage, Device, Model, SamplingParams, WeightFormat};

/// Arguments of `migserve generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model: a GGUF file or a Hugging Face directory (config.json, safetensors,
    /// tokenizer.json).
    #[arg(long, env = "MIGSERVE_MODEL")]
    pub model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Stop after this many new tokens (or at end of sequence).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to P.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalty above 1 for tokens already seen.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How weights are held on CPU: q8 (re-quantized to Q8_0 at load; fastest decode, least
    /// memory), f32 (dequantized; fastest prefill) or quantized (the file's own types).
    #[arg(long, default_value = "q8")]
    pub weights: WeightFormat,
}

/// Runs `migserve generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.prompt.is_empty() {
        bail!("the prompt is empty: pass some text with --prompt");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    params.validate()?;
    let load_start = Instant::now();
    let model = Model::load(&args.model, args.weights, &Device::Cpu)
        .with_context(|| format!("loading {}", args.model.display()))?;
    tracing::debug!(elapsed = ?load_start.elapsed(), "model loaded");
    let prompt = if args.chat {
        model.encode_chat(&[ChatMessage::new("user", args.prompt.as_str())])?
    } else {
        model.encode_prompt(&args.prompt)?
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let generation = generate(&model, &prompt, params, args.max_new_tokens, |piece| {
        if write_error.is_none() {
            if let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
            {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    writeln!(stdout)?;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | finish: {:?}",
        generation.prompt_tokens,
        generation.prefill_tokens_per_second(),
        generation.tokens.len(),
        generation.decode_tokens_per_second(),
        generation.finish_reason,
    );
    Ok(())
}
