//! How far a weight format's next-token distributions are from f32 weights on the real model:
//! for a few chat prompts, the f32 model's greedy continuation is run teacher-forced through
//! both, and the mean KL divergence KL(f32 || format) and the top-1 agreement over every
//! position are printed. `MIGSERVE_CANDLE_Q8=1` makes `q8` use candle's Q8_0 matmul instead
//! of migserve's kernel, for comparison.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use migserve_engine::sampling::argmax;
use migserve_models::{ChatMessage, DenseKvStore, Device, KvStore, Model, SeqChunk, WeightFormat};

#[derive(Parser)]
struct Args {
    /// GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// Format compared with f32 (q8, quantized, bf16).
    #[arg(long, default_value = "q8")]
    weights: WeightFormat,
    /// Tokens of greedy continuation per prompt.
    #[arg(long, default_value_t = 40)]
    tokens: usize,
}

const PROMPTS: [&str; 4] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis briefly.",
    "List three prime numbers.",
];

/// Logits after the prompt and after each later token of `tokens`, fed one at a time.
fn teacher_forced(model: &Model, tokens: &[u32], prompt: usize) -> Result<Vec<Vec<f32>>> {
    let mut kv = DenseKvStore::new(model.config());
    let mut out = Vec::new();
    let mut start = 0;
    for end in prompt..=tokens.len() {
        let chunk = SeqChunk {
            seq: 0,
            tokens: &tokens[start..end.max(start + 1)],
            start,
        };
        if end > start {
            out.push(
                model
                    .decoder
                    .forward(&[chunk], &mut kv)?
                    .squeeze(0)?
                    .to_vec1()?,
            );
        }
        start = end;
    }
    kv.release(0);
    Ok(out)
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|v| (*v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|v| *v as f64 - lse).collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let reference = Model::load(&args.model, WeightFormat::F32, &Device::Cpu)?;
    let other = Model::load(&args.model, args.weights, &Device::Cpu)?;
    let (mut kl, mut positions, mut agree) = (0.0, 0, 0);
    for prompt in PROMPTS {
        let mut tokens = reference.encode_chat(&[ChatMessage::new("user", prompt)])?;
        let prompt_len = tokens.len();
        // The reference's own greedy continuation.
        let mut kv = DenseKvStore::new(reference.config());
        let mut start = 0;
        for _ in 0..=args.tokens {
            let chunk = SeqChunk {
                seq: 0,
                tokens: &tokens[start..],
                start,
            };
            let logits: Vec<f32> = reference
                .decoder
                .forward(&[chunk], &mut kv)?
                .squeeze(0)?
                .to_vec1()?;
            start = tokens.len();
            tokens.push(argmax(&logits));
        }
        tokens.pop();
        let want = teacher_forced(&reference, &tokens, prompt_len)?;
        let got = teacher_forced(&other, &tokens, prompt_len)?;
        for (a, b) in want.iter().zip(&got) {
            let (la, lb) = (log_softmax(a), log_softmax(b));
            kl += la
                .iter()
                .zip(&lb)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
            positions += 1;
            agree += usize::from(argmax(a) == argmax(b));
        }
    }
    println!(
        "{:?} vs f32 over {positions} positions: mean KL {:.5}, top-1 agreement {agree}/{positions}",
        args.weights,
        kl / positions as f64
    );
    Ok(())
}
