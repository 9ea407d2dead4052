//! One decoder forward pass for every supported family, over a batch of sequences, each at
//! its own position with its own KV state: the token rows of all sequences are packed into one
//! matrix for every linear layer, and attention runs per sequence against that sequence's
//! stored keys. What differs between families (biases, q/k norms, post norms, activation,
//! RoPE pairing, embedding scale, sliding windows) is read from [`ModelConfig`].

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;
use candle_nn::rotary_emb::{rope, rope_i};

use crate::config::{Activation, ModelConfig, RopeStyle};
use crate::cpu_ops::{self, CpuRope};
use crate::embedding::TokenEmbedding;
use crate::error::{ModelError, Result};
use crate::kv::{AttentionSpan, KvStore, SeqId};
use crate::linear::{split_columns, Linear};
use crate::rope::RopeTables;
use crate::step_inputs::StepInputs;
use crate::weight_format::WeightFormat;
use crate::weights::{check_dims, shape_mismatch, RawTensor, TensorSource};
use migserve_kernels::cpu::layer_ops::{HeadNorms, QkOptions, QkvShape, RopePairs};

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

    fn values(&self) -> Option<&[f32]> {
        match self {
            Self::Cpu(w) => Some(w),
            Self::Tensor(_) => None,
        }
    }
}

/// The rotary tables: plain values for the CPU kernels (which then run every element-wise
/// step of a layer), or tensors for candle's ops on other devices. One per distinct RoPE.
enum Ropes {
    Cpu(Vec<CpuRope>),
    Tensors(Vec<(Tensor, Tensor)>),
}

struct Layer {
    attn_norm: Norm,
    /// Q, K and V stacked: one matmul.
    qkv: Linear,
    /// Biases of Q, K and V, stacked like the weights.
    qkv_bias: Option<Tensor>,
    /// Per-head RMS norms of queries and keys (before RoPE).
    qk_norms: Option<(Norm, Norm)>,
    wo: Linear,
    post_attn_norm: Option<Norm>,
    ffn_norm: Norm,
    /// Gate and up stacked: one matmul.
    gate_up: Linear,
    w_down: Linear,
    post_ffn_norm: Option<Norm>,
    /// Index of the layer's rotary table.
    rope: usize,
}

/// The weights of a decoder model, ready to run.
pub struct Decoder {
    config: ModelConfig,
    embedding: TokenEmbedding,
    layers: Vec<Layer>,
    output_norm: Norm,
    lm_head: Linear,
    /// `Cpu` on the CPU with f32 activations: the element-wise steps run as `cpu_ops` kernels.
    ropes: Ropes,
    device: Device,
    /// The step's token ids, positions and selected rows, in buffers kept between steps.
    inputs: Mutex<StepInputs>,
}

/// Reads weights of one model onto a device, in one format.
struct Loader<'a> {
    src: &'a mut dyn TensorSource,
    format: WeightFormat,
    device: &'a Device,
    dtype: DType,
    cpu_kernels: bool,
    norm_offset: f32,
}

impl Loader<'_> {
    /// A tensor, checked to have the dimensions `want`.
    fn raw(&mut self, name: &str, want: &[usize]) -> Result<RawTensor> {
        let t = self.src.tensor(name)?;
        check_dims(self.src, name, t.dims(), want)?;
        Ok(t)
    }

    /// A linear layer `[rows, cols]`.
    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let t = self.raw(name, &[rows, cols])?;
        Linear::new(t, self.format, self.device)
    }

    /// Linear layers of the same input stacked: `(name, rows)` each, `cols` wide.
    fn fused(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Linear> {
        let parts = parts
            .iter()
            .map(|(n, rows)| self.raw(n, &[*rows, cols]))
            .collect::<Result<Vec<_>>>()?;
        Linear::fused(parts, self.format, self.device)
    }

    /// A 1-D tensor as f32 values, checked to be `len` long.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.src.tensor(name)?;
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if values.len() != len {
            return Err(shape_mismatch(
                &self.src.display_name(name),
                t.dims(),
                &[len],
            ));
        }
        Ok(values)
    }

    fn norm(&mut self, name: &str, len: usize) -> Result<Norm> {
        let mut weight = self.vector(name, len)?;
        if self.norm_offset != 0.0 {
            weight.iter_mut().for_each(|w| *w += self.norm_offset);
        }
        Ok(match self.cpu_kernels {
            true => Norm::Cpu(weight),
            false => Norm::Tensor(self.tensor(weight)?),
        })
    }

    fn tensor(&self, values: Vec<f32>) -> Result<Tensor> {
        let n = values.len();
        Ok(Tensor::from_vec(values, n, &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(self.device)?)
    }

    fn has(&self, name: &str) -> bool {
        self.src.has(name)
    }
}

impl Decoder {
    /// Loads all weights from `src` onto `device`. Tensors are read and converted on the
    /// CPU, then moved, so a GPU only ever holds the final weights.
    pub fn load(
        src: &mut dyn TensorSource,
        config: ModelConfig,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let cpu = &Device::Cpu;
        let dtype = format.activation_dtype();
        let cpu_kernels = device.is_cpu() && dtype == DType::F32;
        let mut ld = Loader {
            src,
            format,
            device,
            dtype,
            cpu_kernels,
            norm_offset: config.norm_offset,
        };
        let (h, hd) = (config.hidden_size, config.head_dim);
        let (q_width, kv_width) = (config.n_heads * hd, config.n_kv_heads * hd);

        let (vocab, ffn) = (config.vocab_size, config.ffn_size);
        let embedding_raw = ld.raw("token_embd.weight", &[vocab, h])?;
        let keep_blocks = device.is_cpu()
            && matches!(format, WeightFormat::Q8 | WeightFormat::Quantized)
            && matches!(&embedding_raw, RawTensor::Quantized(q) if h.is_multiple_of(q.dtype().block_size()));
        let (embedding, embedding_raw) = match embedding_raw {
            // On the CPU a quantized table stays in its blocks; a step dequantizes its rows.
            RawTensor::Quantized(q) if keep_blocks => (TokenEmbedding::Blocks(Arc::new(*q)), None),
            raw => (
                TokenEmbedding::Dense(raw.to_dtype(dtype)?.to_device(device)?),
                Some(raw),
            ),
        };
        let lm_head = if ld.has("output.weight") {
            ld.linear("output.weight", vocab, h)?
        } else {
            match (&embedding, embedding_raw) {
                // Tied embeddings in their blocks: the output layer is made from them.
                (TokenEmbedding::Blocks(q), _) => Linear::tied(q, format, device)?,
                // Tied embeddings, dense: the output layer is the embedding tensor itself
                // (one copy in memory; Gemma's 262,144 x 640 table is 335 MB in bf16).
                (TokenEmbedding::Dense(table), _)
                    if matches!(format, WeightFormat::F32 | WeightFormat::Bf16) =>
                {
                    Linear::Candle {
                        weights: candle_core::quantized::QMatMul::Tensor(table.clone()),
                        pad: 0,
                    }
                }
                // Re-quantized on the CPU from the f32 table already in memory (not a second
                // dequantized copy of it).
                (TokenEmbedding::Dense(table), _)
                    if device.is_cpu() && table.dtype() == DType::F32 =>
                {
                    Linear::from_dense(table.clone(), format, device)?
                }
                // The embedding matrix again, in `format`.
                (TokenEmbedding::Dense(_), Some(raw)) => Linear::new(raw, format, device)?,
                (TokenEmbedding::Dense(table), None) => {
                    Linear::from_dense(table.to_device(&Device::Cpu)?, format, device)?
                }
            }
        };
        let ropes_of_layers = {
            let factors = match ld.has("rope_freqs.weight") {
                true => Some(ld.vector("rope_freqs.weight", hd / 2)?),
                false => None,
            };
            RopeTables::new(&config, factors.as_deref())
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let qkv = match ld.has(&p("attn_qkv.weight")) {
                true => ld.linear(&p("attn_qkv.weight"), q_width + 2 * kv_width, h)?,
                false => ld.fused(
                    &[
                        (p("attn_q.weight"), q_width),
                        (p("attn_k.weight"), kv_width),
                        (p("attn_v.weight"), kv_width),
                    ],
                    h,
                )?,
            };
            let qkv_bias = match config.qkv_bias {
                false => None,
                true => {
                    let mut bias = ld.vector(&p("attn_q.bias"), q_width)?;
                    bias.extend(ld.vector(&p("attn_k.bias"), kv_width)?);
                    bias.extend(ld.vector(&p("attn_v.bias"), kv_width)?);
                    Some(ld.tensor(bias)?)
                }
            };
            let qk_norms = match config.qk_norm {
                false => None,
                true => Some((
                    ld.norm(&p("attn_q_norm.weight"), hd)?,
                    ld.norm(&p("attn_k_norm.weight"), hd)?,
                )),
            };
            let gate_up = match ld.has(&p("ffn_gate.weight")) {
                true => ld.fused(&[(p("ffn_gate.weight"), ffn), (p("ffn_up.weight"), ffn)], h)?,
                // Phi-3: `ffn_up` holds gate and up stacked already.
                false => ld.linear(&p("ffn_up.weight"), 2 * ffn, h)?,
            };
            let post = |ld: &mut Loader<'_>, name: &str| -> Result<Option<Norm>> {
                match config.post_norms {
                    true => ld.norm(&p(name), h).map(Some),
                    false => Ok(None),
                }
            };
            layers.push(Layer {
                attn_norm: ld.norm(&p("attn_norm.weight"), h)?,
                qkv,
                qkv_bias,
                qk_norms,
                wo: ld.linear(&p("attn_output.weight"), h, q_width)?,
                post_attn_norm: post(&mut ld, "post_attention_norm.weight")?,
                ffn_norm: ld.norm(&p("ffn_norm.weight"), h)?,
                gate_up,
                w_down: ld.linear(&p("ffn_down.weight"), h, ffn)?,
                post_ffn_norm: post(&mut ld, "post_ffw_norm.weight")?,
                rope: ropes_of_layers.layer_table[i],
            });
        }
        let output_norm = ld.norm("output_norm.weight", h)?;
        let ropes = match cpu_kernels {
            true => Ropes::Cpu(
                ropes_of_layers
                    .tables
                    .into_iter()
                    .map(|t| CpuRope {
                        cos: t.cos,
                        sin: t.sin,
                    })
                    .collect(),
            ),
            false => {
                let half = hd / 2;
                let shape = (config.context_length, half);
                let to_device = |v: Vec<f32>| -> Result<Tensor> {
                    Ok(Tensor::from_vec(v, shape, cpu)?
                        .to_dtype(dtype)?
                        .to_device(device)?)
                };
                Ropes::Tensors(
                    ropes_of_layers
                        .tables
                        .into_iter()
                        .map(|t| Ok((to_device(t.cos)?, to_device(t.sin)?)))
                        .collect::<Result<_>>()?,
                )
            }
        };
        Ok(Self {
            config,
            embedding,
            layers,
            output_norm,
            lm_head,
            ropes,
            device: device.clone(),
            inputs: Mutex::new(StepInputs::new(device, 512)?),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `chunks` as one batch, storing their keys/values in `kv`, and returns the logits
    /// of each chunk's last token: `[chunks.len(), vocab]` f32.
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut dyn KvStore) -> Result<Tensor> {
        self.forward_rows(chunks, &[], kv)
    }

    /// [`Decoder::forward`], with the logits of every position of the chunks whose entry in
    /// `all_positions` is true (missing entries are false): one row per position for those,
    /// one (the last) for the others, in chunk order.
    pub fn forward_rows(
        &self,
        chunks: &[SeqChunk<'_>],
        all_positions: &[bool],
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        if chunks.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut rows: Vec<u32> = Vec::with_capacity(chunks.len());
        let spans: Vec<AttentionSpan> = chunks
            .iter()
            .map(|c| AttentionSpan {
                seq: c.seq,
                start: c.start,
                len: c.tokens.len(),
            })
            .collect();
        for (i, c) in chunks.iter().enumerate() {
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
            let first_row = ids.len() as u32;
            ids.extend_from_slice(c.tokens);
            positions.extend((c.start..end).map(|p| p as u32));
            match all_positions.get(i).copied().unwrap_or(false) {
                true => rows.extend(first_row..ids.len() as u32),
                false => rows.push((ids.len() - 1) as u32),
            }
        }
        // One step at a time: the lock is never contended, and a panic mid-step leaves the
        // buffers usable (they are overwritten at the next step).
        let mut inputs = self
            .inputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids = inputs.ids.write(&ids)?;
        let rope_rows = match &self.ropes {
            Ropes::Cpu(_) => Vec::new(),
            Ropes::Tensors(tables) => {
                let positions = inputs.positions.write(&positions)?;
                tables
                    .iter()
                    .map(|(cos, sin)| {
                        Ok((
                            cos.index_select(&positions, 0)?,
                            sin.index_select(&positions, 0)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let step = Step {
            positions: &positions,
            rope_rows: &rope_rows,
            spans: &spans,
        };

        let mut x = self.embedding.lookup(&ids)?;
        if let Some(scale) = cfg.embedding_scale {
            x = (x * f64::from(scale))?;
        }
        kv.begin_step(&spans)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.apply(&x, cfg.rms_eps)?;
            let attn = self.attention(li, layer, &h, &step, kv)?;
            let mut out = layer.wo.forward(&attn)?;
            if let Some(norm) = &layer.post_attn_norm {
                out = norm.apply(&out, cfg.rms_eps)?;
            }
            x = (x + out)?;
            let h = layer.ffn_norm.apply(&x, cfg.rms_eps)?;
            let gated = self.gate(&layer.gate_up.forward(&h)?)?;
            let mut out = layer.w_down.forward(&gated)?;
            if let Some(norm) = &layer.post_ffn_norm {
                out = norm.apply(&out, cfg.rms_eps)?;
            }
            x = (x + out)?;
        }
        let rows = inputs.rows.write(&rows)?;
        let x = x.index_select(&rows, 0)?;
        let x = self.output_norm.apply(&x, cfg.rms_eps)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// `act(gate) * up` of the fused `[gate | up]` rows.
    fn gate(&self, gate_up: &Tensor) -> Result<Tensor> {
        let (ffn, act) = (self.config.ffn_size, self.config.activation);
        if let Ropes::Cpu(_) = self.ropes {
            return match act {
                Activation::Silu => cpu_ops::silu_mul(gate_up, ffn),
                Activation::GeluTanh => cpu_ops::gelu_tanh_mul(gate_up, ffn),
            };
        }
        let parts = split_columns(gate_up, &[ffn, ffn])?;
        let gate = match act {
            Activation::Silu => candle_nn::ops::silu(&parts[0])?,
            // candle's `gelu` is the tanh approximation.
            Activation::GeluTanh => parts[0].gelu()?,
        };
        Ok((gate * &parts[1])?)
    }

    fn attention(
        &self,
        layer_index: usize,
        layer: &Layer,
        h: &Tensor,
        step: &Step<'_>,
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (total, _) = h.dims2()?;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let mut qkv = layer.qkv.forward(h)?;
        if let Some(bias) = &layer.qkv_bias {
            qkv = qkv.broadcast_add(bias)?;
        }
        let pairs = match cfg.rope_style {
            RopeStyle::Interleaved => RopePairs::Interleaved,
            RopeStyle::Halves => RopePairs::Halves,
        };
        if let Ropes::Cpu(tables) = &self.ropes {
            let shape = QkvShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            // On this path every norm was loaded as plain values.
            let norms = layer.qk_norms.as_ref().map(|(q, k)| HeadNorms {
                q: q.values().unwrap_or_default(),
                k: k.values().unwrap_or_default(),
                eps: cfg.rms_eps as f32,
            });
            let options = QkOptions {
                pairs,
                norms,
                q_scale: cfg.attention_scale,
            };
            let (q, k, v) =
                cpu_ops::split_qkv_rope(&qkv, shape, step.positions, &tables[layer.rope], options)?;
            return kv.attend(layer_index, step.spans, &q, &k, &v);
        }
        let (cos, sin) = &step.rope_rows[layer.rope];
        // rope wants [1, heads, rows, hd]; the KV store wants [rows, heads, hd].
        let rotate = |t: Tensor, n: usize, norm: Option<&Norm>| -> Result<Tensor> {
            let t = match norm {
                Some(norm) => norm
                    .apply(&t.reshape((total * n, hd))?, cfg.rms_eps)?
                    .reshape((total, n, hd))?,
                None => t.reshape((total, n, hd))?,
            };
            let t = t.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
            let t = match cfg.rope_style {
                RopeStyle::Interleaved => rope_i(&t, cos, sin)?,
                RopeStyle::Halves => rope(&t, cos, sin)?,
            };
            Ok(t.squeeze(0)?.transpose(0, 1)?.contiguous()?)
        };
        let (q_norm, k_norm) = match &layer.qk_norms {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let qkv = split_columns(&qkv, &[nh * hd, nkv * hd, nkv * hd])?;
        let q = (rotate(qkv[0].clone(), nh, q_norm)? * f64::from(cfg.attention_scale))?;
        let k = rotate(qkv[1].clone(), nkv, k_norm)?;
        let v = qkv[2].reshape((total, nkv, hd))?;
        kv.attend(layer_index, step.spans, &q, &k, &v)
    }
}

/// What every layer of one forward pass shares: the rows' positions (for the CPU kernels),
/// or the rotary angles gathered for them from each table (for candle's ops).
struct Step<'a> {
    positions: &'a [u32],
    rope_rows: &'a [(Tensor, Tensor)],
    spans: &'a [AttentionSpan],
}
