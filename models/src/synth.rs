//! Synthetic models: GGUF files of exactly a known model's shape with random weights, for
//! benchmarks at realistic sizes without downloading weights (the speed of a forward pass does
//! not depend on the weights' values).

use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
pub use candle_core::quantized::GgmlDType;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use std::collections::HashMap;

use crate::config::{Family, ModelConfig};
use crate::gguf::{GgufFile, MetadataView};
pub use crate::rope::Llama3Rope;

/// The dimensions and layer layout of a known model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthShape {
    /// Name for `--like`.
    pub name: &'static str,
    /// What the shape follows, and what it leaves out.
    pub about: &'static str,
    pub family: Family,
    pub n_layers: u32,
    pub hidden: u32,
    pub ffn: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab: u32,
    pub context: u32,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Sliding window (Gemma 3: its local layers; Phi-3: every layer).
    pub sliding_window: Option<u32>,
    /// The output layer is the embedding matrix (no `output.weight`).
    pub tied: bool,
    pub llama3_rope: Option<Llama3Rope>,
}

const fn shape(name: &'static str, about: &'static str, family: Family) -> SynthShape {
    SynthShape {
        name,
        about,
        family,
        n_layers: 0,
        hidden: 0,
        ffn: 0,
        heads: 0,
        kv_heads: 0,
        head_dim: 0,
        vocab: 0,
        context: 0,
        rope_theta: 10_000.0,
        rms_eps: 1e-6,
        sliding_window: None,
        tied: true,
        llama3_rope: None,
    }
}

/// The shapes `migserve synth --like` knows.
pub const SHAPES: [SynthShape; 9] = [
    SynthShape {
        n_layers: 30,
        hidden: 576,
        ffn: 1536,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
        ..shape(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct (llama, tied embeddings)",
            Family::Llama,
        )
    },
    SynthShape {
        n_layers: 24,
        hidden: 896,
        ffn: 4864,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        vocab: 151_936,
        context: 32_768,
        rope_theta: 1_000_000.0,
        ..shape(
            "qwen2.5-0.5b",
            "Qwen/Qwen2.5-0.5B-Instruct (qwen2: q/k/v biases, tied embeddings)",
            Family::Qwen2,
        )
    },
    SynthShape {
        n_layers: 28,
        hidden: 1024,
        ffn: 3072,
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        vocab: 151_936,
        context: 40_960,
        rope_theta: 1_000_000.0,
        ..shape(
            "qwen3-0.6b",
            "Qwen/Qwen3-0.6B (qwen3: q/k norms, head_dim 128 > hidden / heads, tied embeddings)",
            Family::Qwen3,
        )
    },
    SynthShape {
        n_layers: 18,
        hidden: 640,
        ffn: 2048,
        heads: 4,
        kv_heads: 1,
        head_dim: 256,
        vocab: 262_144,
        context: 32_768,
        rope_theta: 1_000_000.0,
        sliding_window: Some(512),
        ..shape(
            "gemma3-270m",
            "google/gemma-3-270m (gemma3: 5 of 6 layers slide over 512 positions, head_dim 256)",
            Family::Gemma3,
        )
    },
    SynthShape {
        n_layers: 26,
        hidden: 1152,
        ffn: 6912,
        heads: 4,
        kv_heads: 1,
        head_dim: 256,
        vocab: 262_144,
        context: 32_768,
        rope_theta: 1_000_000.0,
        sliding_window: Some(512),
        ..shape(
            "gemma3-1b",
            "google/gemma-3-1b-it (gemma3: 5 of 6 layers slide over 512 positions, head_dim 256)",
            Family::Gemma3,
        )
    },
    SynthShape {
        n_layers: 32,
        hidden: 3072,
        ffn: 8192,
        heads: 32,
        kv_heads: 32,
        head_dim: 96,
        vocab: 32_064,
        context: 4096,
        rms_eps: 1e-5,
        sliding_window: Some(2047),
        tied: false,
        ..shape(
            "phi3-mini",
            "microsoft/Phi-3-mini-4k-instruct (phi3: fused QKV and gate/up, window 2047)",
            Family::Phi3,
        )
    },
    SynthShape {
        n_layers: 32,
        hidden: 4096,
        ffn: 14_336,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 32_768,
        context: 32_768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-5,
        tied: false,
        ..shape(
            "mistral-7b",
            "mistralai/Mistral-7B-Instruct-v0.3 (llama architecture, untied output)",
            Family::Llama,
        )
    },
    SynthShape {
        n_layers: 16,
        hidden: 2048,
        ffn: 8192,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
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
        ..shape(
            "llama-3.2-1b",
            "meta-llama/Llama-3.2-1B-Instruct (llama, tied embeddings, Llama 3 RoPE scaling)",
            Family::Llama,
        )
    },
    SynthShape {
        n_layers: 22,
        hidden: 2048,
        ffn: 5632,
        heads: 32,
        kv_heads: 4,
        head_dim: 64,
        vocab: 32_000,
        context: 2048,
        rms_eps: 1e-5,
        tied: false,
        ..shape(
            "tinyllama-1.1b",
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0 (llama, Llama 2 layout, untied output)",
            Family::Llama,
        )
    },
];

/// How to write a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthOptions {
    /// Seed of the random weights.
    pub seed: u64,
    /// Fewer layers than the shape (small test models of a family's real layout).
    pub layers: Option<u32>,
    /// Storage type of the matrices: Q8_0 (benchmarks) or F32 (logit references).
    pub matrix_type: GgmlDType,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            layers: None,
            matrix_type: GgmlDType::Q8_0,
        }
    }
}

impl SynthShape {
    /// Looks a shape up by name.
    pub fn by_name(name: &str) -> Option<&'static SynthShape> {
        SHAPES.iter().find(|s| s.name == name)
    }

    /// This layout (biases, norms, windows, RoPE) at test size: 2 layers, width 64, 4 heads
    /// of 16 over 2 KV heads, a 512-token vocabulary, 1024 positions.
    pub fn narrow(&self) -> SynthShape {
        SynthShape {
            n_layers: 2,
            hidden: 64,
            ffn: 128,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            vocab: 512,
            context: 1024,
            ..*self
        }
    }

    /// Head dimension.
    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }

    /// Parameters (tied embeddings counted once), as the loaded model will count them.
    pub fn parameters(&self) -> u64 {
        self.config(None).map_or(0, |c| c.parameter_count() as u64)
    }

    /// The configuration the written file will load as (with `layers` layers).
    pub fn config(&self, layers: Option<u32>) -> Result<ModelConfig> {
        let metadata: HashMap<String, Value> =
            self.metadata(layers, self.vocab).into_iter().collect();
        let tensors = self.tensor_names(0);
        ModelConfig::from_metadata(MetadataView(&metadata), |name| {
            tensors.iter().any(|t| t == name)
        })
    }

    /// The names of layer `layer`'s tensors, and the model's others, in this family's layout.
    fn tensor_names(&self, layer: u32) -> Vec<String> {
        let p = |n: &str| format!("blk.{layer}.{n}");
        let mut names = vec!["token_embd.weight".to_string(), p("attn_norm.weight")];
        match self.family {
            Family::Phi3 => names.push(p("attn_qkv.weight")),
            _ => names.extend(["attn_q.weight", "attn_k.weight", "attn_v.weight"].map(p)),
        }
        if self.family == Family::Qwen2 {
            names.extend(["attn_q.bias", "attn_k.bias", "attn_v.bias"].map(p));
        }
        if matches!(self.family, Family::Qwen3 | Family::Gemma3) {
            names.extend(["attn_q_norm.weight", "attn_k_norm.weight"].map(p));
        }
        names.extend(["attn_output.weight", "ffn_norm.weight"].map(p));
        match self.family {
            Family::Phi3 => names.push(p("ffn_up.weight")),
            _ => names.extend(["ffn_gate.weight", "ffn_up.weight"].map(p)),
        }
        names.push(p("ffn_down.weight"));
        if self.family == Family::Gemma3 {
            names.extend(["post_attention_norm.weight", "post_ffw_norm.weight"].map(p));
        }
        names.push("output_norm.weight".into());
        if !self.tied {
            names.push("output.weight".into());
        }
        if self.llama3_rope.is_some() {
            names.push("rope_freqs.weight".into());
        }
        names
    }

    /// The `general.*` and `{arch}.*` metadata of the shape with `layers` layers.
    fn metadata(&self, layers: Option<u32>, vocab: u32) -> Vec<(String, Value)> {
        let arch = self.family.architecture();
        let u = |v: u32| Value::U32(v);
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            (
                "general.name".to_string(),
                Value::String(format!("synthetic {}", self.name)),
            ),
        ];
        let mut keys = vec![
            ("block_count", u(layers.unwrap_or(self.n_layers))),
            ("embedding_length", u(self.hidden)),
            ("feed_forward_length", u(self.ffn)),
            ("attention.head_count", u(self.heads)),
            ("attention.head_count_kv", u(self.kv_heads)),
            ("attention.key_length", u(self.head_dim)),
            ("attention.value_length", u(self.head_dim)),
            ("rope.dimension_count", u(self.head_dim)),
            ("context_length", u(self.context)),
            ("vocab_size", u(vocab)),
            ("rope.freq_base", Value::F32(self.rope_theta)),
            ("attention.layer_norm_rms_epsilon", Value::F32(self.rms_eps)),
        ];
        if let Some(w) = self.sliding_window {
            keys.push(("attention.sliding_window", u(w)));
        }
        for (key, value) in keys {
            metadata.push((format!("{arch}.{key}"), value));
        }
        metadata
    }
}

/// Random weights of one storage type.
struct Weights {
    rng: StdRng,
    matrix_type: GgmlDType,
    scale: f32,
}

impl Weights {
    /// A `[rows, cols]` matrix, uniform with the spread of N(0, scale).
    fn matrix(&mut self, rows: u32, cols: u32) -> Result<QTensor> {
        let bound = self.scale * 3f32.sqrt();
        let data: Vec<f32> = (0..u64::from(rows) * u64::from(cols))
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        let t = Tensor::from_vec(data, (rows as usize, cols as usize), &Device::Cpu)?;
        Ok(QTensor::quantize(&t, self.matrix_type)?)
    }

    /// An f32 vector of `n` values around `center` (norm weights near one, biases near zero).
    fn vector(&mut self, n: u32, center: f32) -> Result<QTensor> {
        let values = (0..n)
            .map(|_| center + self.rng.random_range(-0.2..0.2))
            .collect();
        vector(values)
    }
}

fn vector(values: Vec<f32>) -> Result<QTensor> {
    let n = values.len();
    let t = Tensor::from_vec(values, n, &Device::Cpu)?;
    Ok(QTensor::quantize(&t, GgmlDType::F32)?)
}

/// Writes a synthetic model of `shape` to `out`: random weights in the family's tensor layout
/// (matrices in `options.matrix_type`, norms near one, biases near zero), and the tokenizer
/// (and chat template) of `tokenizer_from`, padded with reserved control tokens up to the
/// shape's vocabulary, or cut to it (a GPT-2 BPE keeps the merges it still can make).
pub fn write(
    shape: &SynthShape,
    tokenizer_from: &GgufFile,
    out: &Path,
    options: SynthOptions,
) -> Result<()> {
    let layers = options.layers.unwrap_or(shape.n_layers);
    let mut metadata = shape.metadata(Some(layers), shape.vocab);
    metadata.extend(tokenizer_metadata(tokenizer_from, shape.vocab as usize)?);
    let mut w = Weights {
        rng: StdRng::seed_from_u64(options.seed),
        matrix_type: options.matrix_type,
        scale: 0.02,
    };
    let (h, hd, ffn) = (shape.hidden, shape.head_dim, shape.ffn);
    let (q, kv) = (shape.heads * hd, shape.kv_heads * hd);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for l in 0..layers {
        names.extend(
            shape
                .tensor_names(l)
                .into_iter()
                .filter(|n| n.starts_with("blk.")),
        );
    }
    names.extend(
        shape
            .tensor_names(0)
            .into_iter()
            .filter(|n| !n.starts_with("blk.")),
    );
    for name in names {
        let kind = name.rsplit_once('.').map_or("", |(_, k)| k);
        let base = name.trim_end_matches(".weight").trim_end_matches(".bias");
        let what = base.rsplit('.').next().unwrap_or("");
        let t = match (what, kind) {
            ("token_embd" | "output", _) => w.matrix(shape.vocab, h)?,
            ("attn_q", "bias") => w.vector(q, 0.0)?,
            ("attn_k" | "attn_v", "bias") => w.vector(kv, 0.0)?,
            ("attn_q", _) => w.matrix(q, h)?,
            ("attn_k" | "attn_v", _) => w.matrix(kv, h)?,
            ("attn_qkv", _) => w.matrix(q + 2 * kv, h)?,
            ("attn_output", _) => w.matrix(h, q)?,
            ("attn_q_norm" | "attn_k_norm", _) => w.vector(hd, 1.0)?,
            ("ffn_gate", _) => w.matrix(ffn, h)?,
            // Phi-3 stacks gate and up in `ffn_up`.
            ("ffn_up", _) if shape.family == Family::Phi3 => w.matrix(2 * ffn, h)?,
            ("ffn_up", _) => w.matrix(ffn, h)?,
            ("ffn_down", _) => w.matrix(h, ffn)?,
            ("rope_freqs", _) => match &shape.llama3_rope {
                Some(r) => vector(r.factors(shape.head_dim() as usize, shape.rope_theta))?,
                None => continue,
            },
            // Every norm: attn_norm, ffn_norm, post_*, output_norm.
            _ => w.vector(h, 1.0)?,
        };
        tensors.push((name, t));
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

/// `tokenizer.*` metadata of `source` with exactly `vocab` tokens.
fn tokenizer_metadata(source_file: &GgufFile, vocab: usize) -> Result<Vec<(String, Value)>> {
    let source = source_file.metadata();
    let bad = |reason: String| ModelError::Metadata {
        key: "tokenizer.ggml.tokens".into(),
        reason,
    };
    let tokens = source
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| bad(format!("{} has no tokenizer", source_file.path().display())))?;
    let original = tokens.len();
    for key in [
        "bos_token_id",
        "eos_token_id",
        "unknown_token_id",
        "padding_token_id",
    ] {
        let key = format!("tokenizer.ggml.{key}");
        if let Some(id) = source.get(&key).and_then(|v| v.to_u32().ok()) {
            if id as usize >= vocab {
                return Err(bad(format!(
                    "{key} {id} is outside a vocabulary of {vocab}"
                )));
            }
        }
    }
    let kept: std::collections::HashSet<&str> = tokens
        .iter()
        .take(vocab)
        .filter_map(|t| t.to_string().ok().map(String::as_str))
        .collect();
    let mut keys: Vec<&String> = source
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    let mut metadata = Vec::new();
    for key in keys {
        let fit = |values: &[Value], filler: Value| -> Value {
            let mut v: Vec<Value> = values.iter().take(vocab).cloned().collect();
            v.extend(std::iter::repeat_n(filler, vocab.saturating_sub(original)));
            Value::Array(v)
        };
        let Ok(values) = source[key].to_vec() else {
            metadata.push((key.clone(), source[key].clone()));
            continue;
        };
        let value = match key.as_str() {
            "tokenizer.ggml.tokens" => {
                let mut v: Vec<Value> = values.iter().take(vocab).cloned().collect();
                v.extend((original..vocab).map(|i| Value::String(format!("<|reserved_{i}|>"))));
                Value::Array(v)
            }
            "tokenizer.ggml.token_type" => fit(values, Value::I32(3)),
            "tokenizer.ggml.scores" => fit(values, Value::F32(0.0)),
            "tokenizer.ggml.merges" if vocab < original => Value::Array(
                values
                    .iter()
                    .filter(|m| {
                        m.to_string()
                            .ok()
                            .and_then(|m| m.split_once(' '))
                            .is_some_and(|(a, b)| {
                                kept.contains(a)
                                    && kept.contains(b)
                                    && kept.contains(&*format!("{a}{b}"))
                            })
                    })
                    .cloned()
                    .collect(),
            ),
            _ => source[key].clone(),
        };
        metadata.push((key.clone(), value));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_sizes() {
        // Millions, as the model cards (or the checkpoints' tensor sizes) give them.
        let published = [
            ("smollm2-135m", 134.5),
            ("qwen2.5-0.5b", 494.0),
            ("qwen3-0.6b", 596.0),
            ("gemma3-270m", 268.1),
            ("gemma3-1b", 999.9),
            ("phi3-mini", 3821.0),
            ("mistral-7b", 7248.0),
            ("llama-3.2-1b", 1236.0),
            ("tinyllama-1.1b", 1100.0),
        ];
        assert_eq!(published.len(), SHAPES.len());
        for (name, millions) in published {
            let count = SynthShape::by_name(name).unwrap().parameters() as f64 / 1e6;
            assert!(
                (count - millions).abs() < millions * 0.005,
                "{name}: {count} M"
            );
        }
        assert!(SynthShape::by_name("gpt-5").is_none());
    }

    #[test]
    fn llama3_rope_factors_span_one_to_the_factor() {
        let shape = SynthShape::by_name("llama-3.2-1b").unwrap();
        let f = shape
            .llama3_rope
            .unwrap()
            .factors(shape.head_dim() as usize, shape.rope_theta);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }
}
