//! Single-stream CPU speed of migserve's Llama forward (f32 and quantized weights) beside
//! candle's own `quantized_llama`, on the same GGUF file in the same process and run.
//!
//! Every engine runs the same prompt ids (prefill) and then decodes a fixed number of tokens
//! greedily, ignoring eos, so the work is identical. Rounds alternate between engines so that
//! machine noise hits all of them alike; the median of the rounds is reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::Parser;
use migserve_engine::sampling::argmax;
use migserve_models::{DenseKvStore, KvStore, Model, SeqChunk, WeightFormat};

/// Compare single-stream prompt and decode speed on CPU.
#[derive(Parser)]
struct Args {
    /// GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens (taken from a fixed English text, repeated as needed).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Rounds per engine (median reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const TEXT: &str = "The history of astronomy is long. People have watched the sky for thousands of years, \
tracking the motion of the Sun, the Moon and the planets, and using what they saw to keep calendars, \
to navigate at sea and to predict eclipses. ";

#[derive(Clone, Copy)]
struct Timing {
    prefill: Duration,
    decode: Duration,
}

fn run_ours(model: &Model, prompt: &[u32], decode_tokens: usize) -> Result<(Timing, Vec<u32>)> {
    let mut kv = DenseKvStore::new(model.config());
    let t0 = Instant::now();
    let logits = model.decoder.forward(
        &[SeqChunk {
            seq: 0,
            tokens: prompt,
            start: 0,
        }],
        &mut kv,
    )?;
    let mut next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
    let prefill = t0.elapsed();
    let mut out = vec![next];
    let t1 = Instant::now();
    for i in 0..decode_tokens {
        let pos = prompt.len() + i;
        let logits = model.decoder.forward(
            &[SeqChunk {
                seq: 0,
                tokens: &[next],
                start: pos,
            }],
            &mut kv,
        )?;
        next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        out.push(next);
    }
    kv.release(0);
    Ok((
        Timing {
            prefill,
            decode: t1.elapsed(),
        },
        out,
    ))
}

fn run_candle(args: &Args, prompt: &[u32]) -> Result<(Timing, Vec<u32>)> {
    let mut file = std::fs::File::open(&args.model)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    let t0 = Instant::now();
    let input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?;
    let mut next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
    let prefill = t0.elapsed();
    let mut out = vec![next];
    let t1 = Instant::now();
    for i in 0..args.decode_tokens {
        let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input, prompt.len() + i)?;
        next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        out.push(next);
    }
    Ok((
        Timing {
            prefill,
            decode: t1.elapsed(),
        },
        out,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ours_f32 =
        Model::load(&args.model, WeightFormat::F32, &Device::Cpu).context("loading f32")?;
    let ours_q = Model::load(&args.model, WeightFormat::Quantized, &Device::Cpu)
        .context("loading quantized")?;
    let ours_q8 = Model::load(&args.model, WeightFormat::Q8, &Device::Cpu).context("loading q8")?;
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(ours_f32.tokenizer.encode(TEXT, true)?);
    }
    prompt.truncate(args.prompt_tokens);

    let names = [
        "migserve f32",
        "migserve quantized (file's types)",
        "migserve q8_0",
        "candle quantized_llama",
    ];
    let mut results: Vec<Vec<Timing>> = vec![Vec::new(); names.len()];
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); names.len()];
    for round in 0..args.rounds {
        for (i, name) in names.iter().enumerate() {
            let (t, out) = match i {
                0 => run_ours(&ours_f32, &prompt, args.decode_tokens)?,
                1 => run_ours(&ours_q, &prompt, args.decode_tokens)?,
                2 => run_ours(&ours_q8, &prompt, args.decode_tokens)?,
                _ => run_candle(&args, &prompt)?,
            };
            eprintln!(
                "round {round} {name}: prefill {:.1} tok/s, decode {:.1} tok/s",
                prompt.len() as f64 / t.prefill.as_secs_f64(),
                args.decode_tokens as f64 / t.decode.as_secs_f64()
            );
            results[i].push(t);
            outputs[i] = out;
        }
    }
    println!("| engine | prefill tok/s ({} tokens) | decode tok/s ({} tokens) | same greedy tokens as migserve f32 |", prompt.len(), args.decode_tokens);
    println!("|---|---:|---:|---|");
    for (i, name) in names.iter().enumerate() {
        let prefill = median(
            results[i]
                .iter()
                .map(|t| prompt.len() as f64 / t.prefill.as_secs_f64())
                .collect(),
        );
        let decode = median(
            results[i]
                .iter()
                .map(|t| args.decode_tokens as f64 / t.decode.as_secs_f64())
                .collect(),
        );
        let same = outputs[i] == outputs[0];
        println!(
            "| {name} | {prefill:.1} | {decode:.1} | {} |",
            if same { "yes" } else { "no" }
        );
    }
    Ok(())
}
