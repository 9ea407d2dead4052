//! Every supported family against candle-transformers' own implementation of it, on small
//! synthetic GGUF files of the family's real layer layout (random f32 weights, a few layers):
//! our batched forward pass over the paged KV cache gives the same logits as the reference,
//! for a prefill and several decode steps, with three sequences batched at different
//! positions; and a batched sequence gets the same logits as the same sequence alone.
//!
//! The references run one sequence at a time with their own growing KV cache. Gemma 3's is
//! candle's with three corrections (see `reference/gemma3.rs`); Phi-3's ignores the sliding
//! window, so its prompts stay shorter than the window.

#[path = "reference/gemma3.rs"]
mod reference_gemma3;

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};
use migserve_engine::cache::cpu::PagedKvCache;
use migserve_engine::cache::PagedStore;
use migserve_models::synth::{self, GgmlDType, SynthOptions, SynthShape};
use migserve_models::{Decoder, GgufFile, Model, SeqChunk, WeightFormat};

/// Largest difference allowed between our logits and the reference's, relative to the
/// largest reference logit: our CPU paged cache keeps keys and values in f16 (11 bits of
/// mantissa), the references in f32.
const TOLERANCE: f32 = 3e-3;
const BLOCK_SIZE: usize = 4;

/// A reference model: one sequence, its own KV cache.
trait Reference {
    /// Logits of the last of `tokens`, which start at `position`.
    fn forward(&mut self, tokens: &[u32], position: usize) -> Vec<f32>;
}

macro_rules! reference {
    ($model:ty) => {
        impl Reference for $model {
            fn forward(&mut self, tokens: &[u32], position: usize) -> Vec<f32> {
                let input = Tensor::new(tokens, &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = <$model>::forward(self, &input, position).unwrap();
                logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            }
        }
    };
}
reference!(quantized_llama::ModelWeights);
reference!(quantized_qwen2::ModelWeights);
reference!(quantized_qwen3::ModelWeights);
reference!(quantized_phi3::ModelWeights);
reference!(reference_gemma3::ModelWeights);

fn load_reference(path: &Path, family: &str) -> Box<dyn Reference> {
    let mut file = File::open(path).unwrap();
    let mut content = Content::read(&mut file).unwrap();
    let cpu = &Device::Cpu;
    match family {
        "llama" => {
            Box::new(quantized_llama::ModelWeights::from_gguf(content, &mut file, cpu).unwrap())
        }
        "qwen2" => {
            Box::new(quantized_qwen2::ModelWeights::from_gguf(content, &mut file, cpu).unwrap())
        }
        "qwen3" => {
            // candle's Qwen3 computes in f16 unless the file says f32 (`general.dtype`, a
            // key of candle's own).
            content
                .metadata
                .insert("general.dtype".into(), Value::U32(0));
            Box::new(quantized_qwen3::ModelWeights::from_gguf(content, &mut file, cpu).unwrap())
        }
        "phi3" => Box::new(
            quantized_phi3::ModelWeights::from_gguf(false, content, &mut file, cpu).unwrap(),
        ),
        "gemma3" => {
            Box::new(reference_gemma3::ModelWeights::from_gguf(content, &mut file, cpu).unwrap())
        }
        other => panic!("no reference for {other}"),
    }
}

/// A small model of `like`'s layout.
fn small(like: &str, edit: impl FnOnce(&mut SynthShape)) -> SynthShape {
    let mut shape = SynthShape::by_name(like).unwrap().narrow();
    edit(&mut shape);
    shape
}

fn write(shape: &SynthShape) -> PathBuf {
    let tokenizer = GgufFile::open(&smollm2_path()).unwrap();
    let out = std::env::temp_dir().join(format!(
        "family-reference-{}-{}.gguf",
        shape.name,
        std::process::id()
    ));
    let options = SynthOptions {
        seed: 11,
        layers: None,
        matrix_type: GgmlDType::F32,
    };
    synth::write(shape, &tokenizer, &out, options).unwrap();
    out
}

fn smollm2_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models-data/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "run scripts/fetch-model.sh: {} is missing",
        path.display()
    );
    path
}

fn prompt(len: usize, salt: u32, vocab: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + salt * 101 + 17) % vocab)
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// Compares one row of ours with the reference's; returns the relative difference.
fn compare(what: &str, ours: &[f32], want: &[f32]) -> f32 {
    assert_eq!(ours.len(), want.len(), "{what}: vocabulary");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = ours
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(
        diff < TOLERANCE,
        "{what}: max |ours - reference| / max |reference| = {diff}"
    );
    let (a, b) = (argmax(ours), argmax(want));
    if a != b {
        // Only a tie within the tolerance may differ.
        assert!(
            (want[a] - want[b]).abs() / scale < TOLERANCE,
            "{what}: our most likely token {a}, the reference's {b}"
        );
    }
    diff
}

fn rows(logits: &Tensor) -> Vec<Vec<f32>> {
    logits.to_vec2::<f32>().unwrap()
}

/// Runs `prompts` batched through our decoder for a prefill and `decode_steps` steps (each
/// sequence fed the reference's greedy choice), and every sequence alone through a fresh
/// reference and through our decoder alone; all must agree.
fn check_family(shape: &SynthShape, prompts: &[Vec<u32>], decode_steps: usize) {
    let path = write(shape);
    let family = shape.family.architecture();
    let model = Model::load(&path, WeightFormat::F32, &Device::Cpu).unwrap();
    let decoder: &Decoder = &model.decoder;
    let blocks = prompts
        .iter()
        .map(|p| (p.len() + decode_steps).div_ceil(BLOCK_SIZE))
        .sum::<usize>()
        * 2
        + 4;
    let new_cache = || PagedKvCache::new(decoder.config(), blocks, BLOCK_SIZE);

    // The reference, one sequence at a time: every step's logits and the token it picks.
    let mut expected: Vec<Vec<Vec<f32>>> = Vec::new();
    let mut fed: Vec<Vec<u32>> = Vec::new();
    for p in prompts {
        let mut reference = load_reference(&path, family);
        let mut steps = vec![reference.forward(p, 0)];
        let mut tokens = Vec::new();
        for step in 0..decode_steps {
            let next = argmax(&steps[step]) as u32;
            tokens.push(next);
            steps.push(reference.forward(&[next], p.len() + step));
        }
        expected.push(steps);
        fed.push(tokens);
    }

    // Ours, batched: all prompts in one prefill, then one decode row per sequence per step.
    let mut cache = new_cache();
    let mut worst = 0.0f32;
    let mut batched: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for step in 0..=decode_steps {
        let chunks: Vec<SeqChunk<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(s, p)| match step {
                0 => SeqChunk {
                    seq: s as u64,
                    tokens: p,
                    start: 0,
                },
                _ => SeqChunk {
                    seq: s as u64,
                    tokens: &fed[s][step - 1..step],
                    start: p.len() + step - 1,
                },
            })
            .collect();
        for c in &chunks {
            cache
                .blocks_mut()
                .ensure(c.seq, c.start + c.tokens.len())
                .unwrap();
        }
        let got = rows(&decoder.forward(&chunks, &mut cache).unwrap());
        for (s, row) in got.iter().enumerate() {
            let what = format!(
                "{family} sequence {s} (prompt {}) step {step}",
                prompts[s].len()
            );
            worst = worst.max(compare(&what, row, &expected[s][step]));
            batched[s].push(row.clone());
        }
    }

    // Ours, each sequence alone: the same logits as in the batch (every row is computed from
    // its own inputs; only float summation order may differ).
    for (s, p) in prompts.iter().enumerate() {
        let mut cache = new_cache();
        let mut input = p.clone();
        input.extend(&fed[s]);
        for (step, in_batch) in batched[s].iter().enumerate() {
            let (start, len) = match step {
                0 => (0, p.len()),
                _ => (p.len() + step - 1, 1),
            };
            cache.blocks_mut().ensure(0, start + len).unwrap();
            let chunk = SeqChunk {
                seq: 0,
                tokens: &input[start..start + len],
                start,
            };
            let alone = rows(&decoder.forward(&[chunk], &mut cache).unwrap());
            let scale = in_batch
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()))
                .max(1e-6);
            let diff = alone[0]
                .iter()
                .zip(in_batch)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            // Summation order only (matmul tiling depends on the batch's row count).
            assert!(
                diff <= 1e-4,
                "{family} sequence {s} step {step}: alone and batched differ by {diff} of the largest logit"
            );
        }
    }
    eprintln!(
        "{family}: {} sequences, {decode_steps} decode steps, max relative difference {worst:.2e}",
        prompts.len()
    );
    let _ = std::fs::remove_file(&path);
}

fn three_prompts(vocab: u32) -> Vec<Vec<u32>> {
    vec![
        prompt(5, 1, vocab),
        prompt(12, 2, vocab),
        prompt(1, 3, vocab),
    ]
}

#[test]
fn llama_matches_candle_quantized_llama() {
    // Interleaved RoPE, untied output (Mistral's layout; candle's Llama reads no Llama 3
    // RoPE factors, so the shape has none).
    let shape = small("mistral-7b", |s| s.context = 4096);
    check_family(&shape, &three_prompts(shape.vocab), 4);
}

#[test]
fn qwen2_matches_candle_quantized_qwen2() {
    let shape = small("qwen2.5-0.5b", |_| {});
    check_family(&shape, &three_prompts(shape.vocab), 4);
}

#[test]
fn qwen3_matches_candle_quantized_qwen3() {
    // head_dim 32 with 4 heads: wider than hidden / heads, as in Qwen3.
    let shape = small("qwen3-0.6b", |s| s.head_dim = 32);
    check_family(&shape, &three_prompts(shape.vocab), 4);
}

#[test]
fn phi3_matches_candle_quantized_phi3() {
    // Fused QKV and gate/up; candle's Phi-3 needs hidden = heads * head_dim, RoPE base 10000.
    let shape = small("phi3-mini", |s| {
        s.kv_heads = 4;
        s.context = 4096;
    });
    check_family(&shape, &three_prompts(shape.vocab), 4);
}

#[test]
fn gemma3_matches_corrected_candle_gemma3_past_its_window() {
    // Six layers: five sliding over 8 positions with base 10000, the sixth global. Prompts
    // shorter than, equal to and three times the window, then decode steps past it.
    let shape = small("gemma3-270m", |s| {
        s.n_layers = 6;
        s.sliding_window = Some(8);
        s.head_dim = 32;
        s.context = 4096;
    });
    let prompts = vec![
        prompt(5, 1, shape.vocab),
        prompt(8, 2, shape.vocab),
        prompt(24, 3, shape.vocab),
    ];
    check_family(&shape, &prompts, 6);
}
