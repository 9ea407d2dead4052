//! Synthetic models: GGUF files of exactly a known model's shape with random weights, for
//! benchmarks at realistic sizes without downloading weights (the speed of a forward pass does
//! not depend on the weights' values).

use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Llama 3's RoPE frequency scaling (written as a `rope_freqs` tensor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_context: u32,
}

/// The dimensions of a known model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthShape {
    /// Name for `--like`.
    pub name: &'static str,
    /// What the shape follows, and what it leaves out.
    pub about: &'static str,
    pub n_layers: u32,
    pub hidden: u32,
    pub ffn: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub vocab: u32,
    pub context: u32,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub llama3_rope: Option<Llama3Rope>,
}

/// The shapes `migserve synth --like` knows.
pub const SHAPES: [SynthShape; 3] = [
    SynthShape {
        name: "smollm2-135m",
        about: "HuggingFaceTB/SmolLM2-135M-Instruct (llama, tied embeddings)",
        n_layers: 30,
        hidden: 576,
        ffn: 1536,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
        llama3_rope: None,
    },
    SynthShape {
        name: "qwen2.5-0.5b",
        about: "Qwen/Qwen2.5-0.5B-Instruct's dimensions in the llama architecture (tied \
                embeddings; its q/k/v biases, 0.1 % of the FLOPs, are left out)",
        n_layers: 24,
        hidden: 896,
        ffn: 4864,
        heads: 14,
        kv_heads: 2,
        vocab: 151_936,
        context: 32_768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        llama3_rope: None,
    },
    SynthShape {
        name: "llama-3.2-1b",
        about: "meta-llama/Llama-3.2-1B-Instruct (llama, tied embeddings, Llama 3 RoPE scaling)",
        n_layers: 16,
        hidden: 2048,
        ffn: 8192,
        heads: 32,
        kv_heads: 8,
        vocab: 128_256,
        context: 131_072,
        rope_theta: 500_000.0,
        rms_eps: 1e-5,
        llama3_rope: Some(Llama3Rope {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        }),
    },
];

impl SynthShape {
    /// Looks a shape up by name.
    pub fn by_name(name: &str) -> Option<&'static SynthShape> {
        SHAPES.iter().find(|s| s.name == name)
    }

    /// Head dimension.
    pub fn head_dim(&self) -> u32 {
        self.hidden / self.heads
    }

    /// Parameters (tied embeddings counted once).
    pub fn parameters(&self) -> u64 {
        let (h, f, hd) = (
            u64::from(self.hidden),
            u64::from(self.ffn),
            u64::from(self.head_dim()),
        );
        let attn = h * hd * (2 * u64::from(self.heads) + 2 * u64::from(self.kv_heads));
        u64::from(self.n_layers) * (attn + 3 * h * f + 2 * h) + u64::from(self.vocab) * h + h
    }

    /// Llama 3 RoPE factors, one per frequency (as llama.cpp writes `rope_freqs`).
    fn rope_factors(&self, r: &Llama3Rope) -> Vec<f32> {
        let hd = self.head_dim() as usize;
        let low_wavelen = r.original_context as f32 / r.low_freq_factor;
        let high_wavelen = r.original_context as f32 / r.high_freq_factor;
        (0..hd / 2)
            .map(|i| {
                let freq = 1.0 / self.rope_theta.powf(2.0 * i as f32 / hd as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    r.factor
                } else {
                    let smooth = (r.original_context as f32 / wavelen - r.low_freq_factor)
                        / (r.high_freq_factor - r.low_freq_factor);
                    1.0 / ((1.0 - smooth) / r.factor + smooth)
                }
            })
            .collect()
    }
}

fn random_q8(rng: &mut StdRng, rows: u32, cols: u32) -> Result<QTensor> {
    // Uniform with the spread of N(0, 0.02): the values do not matter, only the shape.
    let bound = 0.02f32 * 3f32.sqrt();
    let data: Vec<f32> = (0..u64::from(rows) * u64::from(cols))
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let t = Tensor::from_vec(data, (rows as usize, cols as usize), &Device::Cpu)?;
    Ok(QTensor::quantize(&t, GgmlDType::Q8_0)?)
}

fn vector(values: Vec<f32>) -> Result<QTensor> {
    let n = values.len();
    let t = Tensor::from_vec(values, n, &Device::Cpu)?;
    Ok(QTensor::quantize(&t, GgmlDType::F32)?)
}

/// Writes a synthetic model of `shape` to `out`: random Q8_0 weights, norms of one, and the
/// tokenizer (and chat template) of `tokenizer_from`, padded with reserved control tokens up
/// to the shape's vocabulary.
pub fn write(shape: &SynthShape, tokenizer_from: &GgufFile, out: &Path, seed: u64) -> Result<()> {
    let mut metadata: Vec<(String, Value)> = Vec::new();
    let arch = "llama";
    let u = |v: u32| Value::U32(v);
    metadata.push(("general.architecture".into(), Value::String(arch.into())));
    metadata.push((
        "general.name".into(),
        Value::String(format!("synthetic {}", shape.name)),
    ));
    for (key, value) in [
        ("block_count", u(shape.n_layers)),
        ("embedding_length", u(shape.hidden)),
        ("feed_forward_length", u(shape.ffn)),
        ("attention.head_count", u(shape.heads)),
        ("attention.head_count_kv", u(shape.kv_heads)),
        ("attention.key_length", u(shape.head_dim())),
        ("attention.value_length", u(shape.head_dim())),
        ("rope.dimension_count", u(shape.head_dim())),
        ("context_length", u(shape.context)),
        ("vocab_size", u(shape.vocab)),
        ("rope.freq_base", Value::F32(shape.rope_theta)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(shape.rms_eps),
        ),
    ] {
        metadata.push((format!("{arch}.{key}"), value));
    }
    // The tokenizer, padded to the vocabulary.
    let source = tokenizer_from.metadata();
    let tokens = source
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| ModelError::Metadata {
            key: "tokenizer.ggml.tokens".into(),
            reason: format!("{} has no tokenizer", tokenizer_from.path().display()),
        })?;
    if tokens.len() > shape.vocab as usize {
        return Err(ModelError::Metadata {
            key: "tokenizer.ggml.tokens".into(),
            reason: format!(
                "the tokenizer has {} tokens, more than {}'s vocabulary of {}",
                tokens.len(),
                shape.name,
                shape.vocab
            ),
        });
    }
    let original = tokens.len();
    let mut padded = tokens.clone();
    padded.extend(
        (original..shape.vocab as usize).map(|i| Value::String(format!("<|reserved_{i}|>"))),
    );
    let mut keys: Vec<&String> = source
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    for key in keys {
        let value = match key.as_str() {
            "tokenizer.ggml.tokens" => Value::Array(padded.clone()),
            "tokenizer.ggml.token_type" | "tokenizer.ggml.scores" => {
                let Ok(existing) = source[key].to_vec() else {
                    continue;
                };
                let mut v = existing.clone();
                let filler = if key.ends_with("token_type") {
                    Value::I32(3)
                } else {
                    Value::F32(0.0)
                };
                v.extend(std::iter::repeat_n(filler, shape.vocab as usize - original));
                Value::Array(v)
            }
            _ => source[key].clone(),
        };
        metadata.push((key.clone(), value));
    }
    // Weights.
    let mut rng = StdRng::seed_from_u64(seed);
    let (h, hd) = (shape.hidden, shape.head_dim());
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push((
        "token_embd.weight".into(),
        random_q8(&mut rng, shape.vocab, h)?,
    ));
    for l in 0..shape.n_layers {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((p("attn_norm"), vector(vec![1.0; h as usize])?));
        tensors.push((p("attn_q"), random_q8(&mut rng, shape.heads * hd, h)?));
        tensors.push((p("attn_k"), random_q8(&mut rng, shape.kv_heads * hd, h)?));
        tensors.push((p("attn_v"), random_q8(&mut rng, shape.kv_heads * hd, h)?));
        tensors.push((p("attn_output"), random_q8(&mut rng, h, shape.heads * hd)?));
        tensors.push((p("ffn_norm"), vector(vec![1.0; h as usize])?));
        tensors.push((p("ffn_gate"), random_q8(&mut rng, shape.ffn, h)?));
        tensors.push((p("ffn_up"), random_q8(&mut rng, shape.ffn, h)?));
        tensors.push((p("ffn_down"), random_q8(&mut rng, h, shape.ffn)?));
    }
    tensors.push(("output_norm.weight".into(), vector(vec![1.0; h as usize])?));
    if let Some(r) = &shape.llama3_rope {
        tensors.push(("rope_freqs.weight".into(), vector(shape.rope_factors(r))?));
    }
    let io = |source: std::io::Error| ModelError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(io)?;
    let mut writer = BufWriter::new(file);
    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut writer, &metadata_refs, &tensor_refs)?;
    std::io::Write::flush(&mut writer).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_sizes() {
        let count = |name| SynthShape::by_name(name).unwrap().parameters() as f64 / 1e6;
        // Published: 134.5 M, 494 M (with biases), 1236 M.
        assert!(
            (count("smollm2-135m") - 134.5).abs() < 1.0,
            "{}",
            count("smollm2-135m")
        );
        assert!(
            (count("qwen2.5-0.5b") - 494.0).abs() < 2.0,
            "{}",
            count("qwen2.5-0.5b")
        );
        assert!(
            (count("llama-3.2-1b") - 1236.0).abs() < 2.0,
            "{}",
            count("llama-3.2-1b")
        );
        assert!(SynthShape::by_name("gpt-5").is_none());
    }

    #[test]
    fn llama3_rope_factors_span_one_to_the_factor() {
        let shape = SynthShape::by_name("llama-3.2-1b").unwrap();
        let f = shape.rope_factors(&shape.llama3_rope.unwrap());
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }
}
