//! A Llama-family forward pass over a batch of sequences, each at its own position with its
//! own KV state: the token rows of all sequences are packed into one matrix for every
//! linear layer, and attention runs per sequence against that sequence's stored keys.

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;
use candle_nn::rotary_emb::rope_i;

use crate::config::LlamaConfig;
use crate::cpu_ops::{self, CpuRope};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::kv::{AttentionSpan, KvStore, SeqId};
use crate::linear::{split_columns, Linear};
use migserve_kernels::cpu::layer_ops::QkvShape;

/// How linear-layer weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dequantized to f32 at load: the reference for numerics, fastest CPU prefill, slowest decode.
    F32,
    /// Kept in the file's quantized type; matmuls quantize activations on the fly.
    Quantized,
    /// Re-quantized to 8-bit blocks (Q8_0) at load: a quarter of f32's bytes, and candle's
    /// SIMD Q8_0 matmul (AVX2). The CPU default: 3x f32's single-stream decode (bench/results).
    #[default]
    Q8,
    /// Dequantized to bf16 at load, activations in bf16 too: the GPU default (tensor-core
    /// matmuls through cuBLAS). Also runs on CPU, slowly.
    Bf16,
}

impl WeightFormat {
    /// The name `--weights` and configs take (`q8`, `bf16`, `f32`, `quantized`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Quantized => "quantized",
            Self::Q8 => "q8",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype activations (and so the KV values handed to the store) have.
    pub fn activation_dtype(self) -> DType {
        match self {
            Self::Bf16 => DType::BF16,
            Self::F32 | Self::Quantized | Self::Q8 => DType::F32,
        }
    }

    /// Bytes the weights of a model with `params` parameters take in this format;
    /// `file_bytes` (the GGUF file's size) stands for the file's own types.
    pub fn weight_bytes(self, params: usize, file_bytes: u64) -> u64 {
        let params = params as u64;
        match self {
            Self::Q8 => params * 34 / 32,
            Self::Bf16 => params * 2,
            Self::F32 => params * 4,
            Self::Quantized => file_bytes,
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "quantized" | "q" => Ok(Self::Quantized),
            "q8" | "q8_0" => Ok(Self::Q8),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown weight format `{other}` (use q8, bf16, f32 or quantized)"
            )),
        }
    }
}

/// One sequence's share of a batched forward call.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// Which KV state the tokens extend.
    pub seq: SeqId,
    /// New tokens (a whole prompt, a prompt chunk, or one decoded token).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`: the number of tokens already in this sequence's KV state.
    pub start: usize,
}

/// An RMS-norm weight: its values for the CPU kernels, or a tensor for candle's op.
enum Norm {
    Cpu(Vec<f32>),
    Tensor(Tensor),
}

impl Norm {
    fn apply(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        match self {
            Self::Cpu(w) => cpu_ops::rms_norm(x, w, eps as f32),
            Self::Tensor(w) => Ok(rms_norm(x, w, eps as f32)?),
        }
    }
}

/// The rotary tables `[context, head_dim / 2]`: plain values for the CPU kernels (which then
/// run every element-wise step of a layer), or tensors for candle's ops on other devices.
enum RopeTables {
    Cpu(CpuRope),
    Tensors { cos: Tensor, sin: Tensor },
}

struct Layer {
    attn_norm: Norm,
    /// Q, K and V stacked: one matmul.
    qkv: Linear,
    wo: Linear,
    ffn_norm: Norm,
    /// Gate and up stacked: one matmul.
    gate_up: Linear,
    w_down: Linear,
}

/// The weights of a Llama-family model, ready to run.
pub struct Llama {
    config: LlamaConfig,
    embedding: Tensor,
    layers: Vec<Layer>,
    output_norm: Norm,
    lm_head: Linear,
    /// `Cpu` on the CPU with f32 activations: the element-wise steps run as `cpu_ops` kernels.
    rope: RopeTables,
    device: Device,
}

impl Llama {
    /// Loads all weights from `file` onto `device`. Tensors are read and converted on the
    /// CPU, then moved, so a GPU only ever holds the final weights.
    pub fn load(
        file: &mut GgufFile,
        config: LlamaConfig,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let cpu = &Device::Cpu;
        let dtype = format.activation_dtype();
        let cpu_kernels = device.is_cpu() && dtype == DType::F32;
        let linear = |file: &mut GgufFile, name: &str| -> Result<Linear> {
            Linear::new(file.tensor(name, cpu)?, format, device)
        };
        let fused = |file: &mut GgufFile, names: &[&str]| -> Result<Linear> {
            let parts = names
                .iter()
                .map(|n| file.tensor(n, cpu))
                .collect::<Result<Vec<_>>>()?;
            Linear::fused(parts, format, device)
        };
        let norm = |file: &mut GgufFile, name: &str| -> Result<Norm> {
            let weight = file.tensor(name, cpu)?.dequantize(cpu)?;
            Ok(match cpu_kernels {
                true => Norm::Cpu(weight.to_vec1::<f32>()?),
                false => Norm::Tensor(weight.to_dtype(dtype)?.to_device(device)?),
            })
        };

        let embedding_q = file.tensor("token_embd.weight", cpu)?;
        let embedding = embedding_q
            .dequantize(cpu)?
            .to_dtype(dtype)?
            .to_device(device)?;
        check_shape(
            &embedding,
            &[config.vocab_size, config.hidden_size],
            "token_embd.weight",
        )?;
        let lm_head = if file.has_tensor("output.weight") {
            linear(file, "output.weight")?
        } else {
            // Tied embeddings: the output layer reuses the embedding matrix.
            Linear::new(embedding_q, format, device)?
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: norm(file, &p("attn_norm"))?,
                qkv: fused(file, &[&p("attn_q"), &p("attn_k"), &p("attn_v")])?,
                wo: linear(file, &p("attn_output"))?,
                ffn_norm: norm(file, &p("ffn_norm"))?,
                gate_up: fused(file, &[&p("ffn_gate"), &p("ffn_up")])?,
                w_down: linear(file, &p("ffn_down"))?,
            });
        }
        let output_norm = norm(file, "output_norm.weight")?;
        let rope_factors = if file.has_tensor("rope_freqs.weight") {
            Some(
                file.tensor("rope_freqs.weight", cpu)?
                    .dequantize(cpu)?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        let (cos, sin) = rope_tables(&config, rope_factors.as_deref(), cpu)?;
        let rope = match cpu_kernels {
            true => RopeTables::Cpu(CpuRope {
                cos: cos.flatten_all()?.to_vec1::<f32>()?,
                sin: sin.flatten_all()?.to_vec1::<f32>()?,
            }),
            false => RopeTables::Tensors {
                cos: cos.to_dtype(dtype)?.to_device(device)?,
                sin: sin.to_dtype(dtype)?.to_device(device)?,
            },
        };
        Ok(Self {
            config,
            embedding,
            layers,
            output_norm,
            lm_head,
            rope,
            device: device.clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `chunks` as one batch, storing their keys/values in `kv`, and returns the logits
    /// of each chunk's last token: `[chunks.len(), vocab]` f32.
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut dyn KvStore) -> Result<Tensor> {
        let cfg = &self.config;
        if chunks.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(chunks.len());
        let spans: Vec<AttentionSpan> = chunks
            .iter()
            .map(|c| AttentionSpan {
                seq: c.seq,
                start: c.start,
                len: c.tokens.len(),
            })
            .collect();
        for c in chunks {
            if c.tokens.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "sequence {} has no tokens to run",
                    c.seq
                )));
            }
            let end = c.start + c.tokens.len();
            if end > cfg.context_length {
                return Err(ModelError::InvalidInput(format!(
                    "sequence {} would reach {end} tokens, over the model's context of {}",
                    c.seq, cfg.context_length
                )));
            }
            if let Some(bad) = c.tokens.iter().find(|t| **t as usize >= cfg.vocab_size) {
                return Err(ModelError::InvalidInput(format!(
                    "token id {bad} is outside the vocabulary ({})",
                    cfg.vocab_size
                )));
            }
            ids.extend_from_slice(c.tokens);
            positions.extend((c.start..end).map(|p| p as u32));
            last_rows.push((ids.len() - 1) as u32);
        }
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let rope = match &self.rope {
            RopeTables::Cpu(tables) => Rope::Cpu {
                positions: &positions,
                tables,
            },
            RopeTables::Tensors { cos, sin } => {
                let positions = Tensor::from_slice(&positions, total, &self.device)?;
                Rope::Tensors {
                    cos: cos.index_select(&positions, 0)?,
                    sin: sin.index_select(&positions, 0)?,
                }
            }
        };

        let mut x = self.embedding.index_select(&ids, 0)?;
        kv.begin_step(&spans)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.apply(&x, cfg.rms_eps)?;
            let attn = self.attention(li, layer, &h, &rope, &spans, kv)?;
            x = (x + layer.wo.forward(&attn)?)?;
            let h = layer.ffn_norm.apply(&x, cfg.rms_eps)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let gated = match rope {
                Rope::Cpu { .. } => cpu_ops::silu_mul(&gate_up, cfg.ffn_size)?,
                Rope::Tensors { .. } => {
                    let parts = split_columns(&gate_up, &[cfg.ffn_size, cfg.ffn_size])?;
                    (candle_nn::ops::silu(&parts[0])? * &parts[1])?
                }
            };
            x = (x + layer.w_down.forward(&gated)?)?;
        }
        let last = Tensor::from_vec(last_rows, chunks.len(), &self.device)?;
        let x = x.index_select(&last, 0)?;
        let x = self.output_norm.apply(&x, cfg.rms_eps)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    fn attention(
        &self,
        layer_index: usize,
        layer: &Layer,
        h: &Tensor,
        rope: &Rope<'_>,
        spans: &[AttentionSpan],
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (total, _) = h.dims2()?;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let qkv = layer.qkv.forward(h)?;
        let (cos, sin) = match rope {
            Rope::Cpu { positions, tables } => {
                let shape = QkvShape {
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                };
                let (q, k, v) =
                    cpu_ops::split_qkv_rope(&qkv, shape, positions, tables, scale as f32)?;
                return kv.attend(layer_index, spans, &q, &k, &v);
            }
            Rope::Tensors { cos, sin } => (cos, sin),
        };
        // rope_i wants [1, heads, rows, hd]; the KV store wants [rows, heads, hd].
        let rotate = |t: Tensor, n: usize| -> Result<Tensor> {
            let t = t
                .reshape((total, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?;
            Ok(rope_i(&t, cos, sin)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let qkv = split_columns(&qkv, &[nh * hd, nkv * hd, nkv * hd])?;
        let q = (rotate(qkv[0].clone(), nh)? * scale)?;
        let k = rotate(qkv[1].clone(), nkv)?;
        let v = qkv[2].reshape((total, nkv, hd))?;
        kv.attend(layer_index, spans, &q, &k, &v)
    }
}

/// A step's rotary angles (and so which path the step takes): the CPU kernels read the
/// model's tables by position; candle's ops take the rows of the tables gathered for the step.
enum Rope<'a> {
    Cpu {
        positions: &'a [u32],
        tables: &'a CpuRope,
    },
    Tensors {
        cos: Tensor,
        sin: Tensor,
    },
}

fn check_shape(t: &Tensor, want: &[usize], name: &str) -> Result<()> {
    if t.dims() != want {
        return Err(ModelError::BadGguf {
            path: name.into(),
            reason: format!(
                "tensor {name} has shape {:?}, metadata says {want:?}",
                t.dims()
            ),
        });
    }
    Ok(())
}

/// Cosine and sine tables `[context_length, head_dim / 2]` for interleaved rotary embeddings.
fn rope_tables(
    cfg: &LlamaConfig,
    factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / cfg.head_dim as f32);
            f / factors.and_then(|fs| fs.get(i)).copied().unwrap_or(1.0)
        })
        .collect();
    let mut cos = Vec::with_capacity(cfg.context_length * half);
    let mut sin = Vec::with_capacity(cfg.context_length * half);
    for p in 0..cfg.context_length {
        for f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (cfg.context_length, half), device)?,
        Tensor::from_vec(sin, (cfg.context_length, half), device)?,
    ))
}
