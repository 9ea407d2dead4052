//! `migserve generate`: one prompt through the serving engine (the same submit, paged KV
//! cache, sampler and output processing a worker's `/generate` runs), its text streamed to
//! stdout and its speed to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use migserve_engine::{
    device, DeviceKind, Engine, EngineEvent, EngineFlags, FinishEvent, GenerateRequest,
    LocalEngine, Prompt, SamplingSpec,
};
use migserve_models::ChatMessage;

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
    /// Stop after this many new tokens (or at end of sequence); never past the model's
    /// total length (`--max-total-tokens`). It is the engine's `--default-max-new-tokens`
    /// here, which it replaces.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<i64>,
    /// Sample only among the most likely tokens whose probabilities sum to P.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalty above 1 for tokens already seen.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop once the text holds this sequence (repeatable). The sequence is printed, as
    /// TGI's `generated_text` holds it.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Device to run on; default: cuda when this build has CUDA and a GPU is visible, else cpu.
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    #[command(flatten)]
    pub engine: EngineFlags,
}

/// Runs `migserve generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.prompt.is_empty() {
        bail!("the prompt is empty: pass some text with --prompt");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let kind = device::resolve(args.device);
    let device = device::open(kind)?;
    let model_id = crate::worker::default_model_id(&args.model);
    // The engine's own cap (what the model's total length leaves after the prompt) applies
    // to the default limit of new tokens: that limit is `--max-new-tokens`.
    let flags = EngineFlags {
        default_max_new_tokens: args.max_new_tokens,
        ..args.engine.clone()
    };
    let engine = LocalEngine::load(&args.model, model_id, kind, &device, &flags)?;
    let request = request(&args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime")?;
    let finish = runtime.block_on(print_stream(&engine, request))?;
    eprintln!("{}", speed_line(&finish));
    Ok(())
}

/// The request `/generate` would make of these arguments (with `--chat`, the prompt as a
/// user message through the chat template), its limit of new tokens the engine's default.
fn request(args: &GenerateArgs) -> GenerateRequest {
    let prompt = match args.chat {
        true => Prompt::Chat {
            messages: vec![ChatMessage::new("user", args.prompt.as_str())],
            tools: Vec::new(),
        },
        false => Prompt::Text(args.prompt.clone()),
    };
    GenerateRequest {
        stop: args.stop.clone(),
        sampling: SamplingSpec {
            sample: args.temperature > 0.0,
            temperature: Some(args.temperature),
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
            ..SamplingSpec::default()
        },
        ..GenerateRequest::new(prompt)
    }
}

/// Submits `request` and writes each token's text to stdout as it arrives; the finish.
async fn print_stream(engine: &LocalEngine, request: GenerateRequest) -> anyhow::Result<Finished> {
    let mut events = engine.submit(request)?.events;
    let mut stdout = std::io::stdout().lock();
    let mut text_tokens = 0;
    loop {
        let (token, finish) = match events.next().await {
            Some(EngineEvent::Token(token, finish)) => (token, finish),
            Some(EngineEvent::Failed(e)) => return Err(e.into()),
            Some(EngineEvent::Prefill(_) | EngineEvent::Resumed(_)) => continue,
            None => bail!("the engine ended the request without finishing it"),
        };
        text_tokens += usize::from(!token.special);
        stdout
            .write_all(token.text.as_bytes())
            .and_then(|_| stdout.flush())
            .context("writing to stdout")?;
        if let Some(event) = finish {
            writeln!(stdout).context("writing to stdout")?;
            return Ok(Finished { event, text_tokens });
        }
    }
}

/// A finished request and its generated tokens that are text (an end-of-sequence token is
/// not).
struct Finished {
    event: FinishEvent,
    text_tokens: usize,
}

/// `prompt: N tokens, X tok/s | decode: M tokens, Y tok/s | finish: R`: prefill from the
/// first scheduled step to the first token, decode from there to the end.
fn speed_line(finished: &Finished) -> String {
    let f = &finished.event;
    let prefill = f.time_to_first_token.saturating_sub(f.queue_time);
    let decode = f.inference_time.saturating_sub(prefill);
    format!(
        "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | finish: {:?}",
        f.prompt_tokens,
        rate(f.prompt_tokens, prefill),
        finished.text_tokens,
        rate(f.generated_tokens.saturating_sub(1), decode),
        f.reason,
    )
}

/// `n` per second of `d` (0 for no time).
fn rate(n: usize, d: Duration) -> f64 {
    match d.is_zero() {
        true => 0.0,
        false => n as f64 / d.as_secs_f64(),
    }
}
