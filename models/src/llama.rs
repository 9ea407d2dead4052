//! A Llama-family forward pass over a batch of sequences, each at its own position with its
//! own KV state: the token rows of all sequences are packed into one matrix for every
//! linear layer, and attention runs per sequence against that sequence's stored keys.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_i;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::kv::{KvStore, SeqId};

/// How linear-layer weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dequantized to f32 at load: the reference for numerics, fastest CPU prefill, slowest decode.
    F32,
    /// Kept in the file's quantized type; matmuls quantize activations on the fly.
    Quantized,
    /// Re-quantized to 8-bit blocks (Q8_0) at load: a quarter of f32's bytes and a SIMD dot
    /// product on x86-64 with AVX2. The CPU default: 3x f32's decode speed (bench/results).
    #[default]
    Q8,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "quantized" | "q" => Ok(Self::Quantized),
            "q8" | "q8_0" => Ok(Self::Q8),
            other => Err(format!(
                "unknown weight format `{other}` (use f32, q8 or quantized)"
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

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
}

/// The weights of a Llama-family model, ready to run.
pub struct Llama {
    config: LlamaConfig,
    embedding: Tensor,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: QMatMul,
    rope_cos: Tensor,
    rope_sin: Tensor,
    device: Device,
}

impl Llama {
    /// Loads all weights from `file` onto `device`.
    pub fn load(
        file: &mut GgufFile,
        config: LlamaConfig,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let linear = |file: &mut GgufFile, name: &str| -> Result<QMatMul> {
            let q = file.tensor(name, device)?;
            to_matmul(q, format, device)
        };
        let vector = |file: &mut GgufFile, name: &str| -> Result<Tensor> {
            Ok(file.tensor(name, device)?.dequantize(device)?)
        };

        let embedding_q = file.tensor("token_embd.weight", device)?;
        let embedding = embedding_q.dequantize(device)?;
        check_shape(
            &embedding,
            &[config.vocab_size, config.hidden_size],
            "token_embd.weight",
        )?;
        let lm_head = if file.has_tensor("output.weight") {
            linear(file, "output.weight")?
        } else {
            match format {
                WeightFormat::F32 => QMatMul::Tensor(embedding.clone()),
                WeightFormat::Quantized => QMatMul::from_arc(Arc::new(embedding_q))?,
                WeightFormat::Q8 => {
                    QMatMul::from_arc(Arc::new(QTensor::quantize(&embedding, GgmlDType::Q8_0)?))?
                }
            }
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(file, &p("attn_norm"))?,
                wq: linear(file, &p("attn_q"))?,
                wk: linear(file, &p("attn_k"))?,
                wv: linear(file, &p("attn_v"))?,
                wo: linear(file, &p("attn_output"))?,
                ffn_norm: vector(file, &p("ffn_norm"))?,
                w_gate: linear(file, &p("ffn_gate"))?,
                w_up: linear(file, &p("ffn_up"))?,
                w_down: linear(file, &p("ffn_down"))?,
            });
        }
        let output_norm = vector(file, "output_norm.weight")?;
        let rope_factors = if file.has_tensor("rope_freqs.weight") {
            Some(vector(file, "rope_freqs.weight")?.to_vec1::<f32>()?)
        } else {
            None
        };
        let (rope_cos, rope_sin) = rope_tables(&config, rope_factors.as_deref(), device)?;
        Ok(Self {
            config,
            embedding,
            layers,
            output_norm,
            lm_head,
            rope_cos,
            rope_sin,
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
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let cos = self.rope_cos.index_select(&positions, 0)?;
        let sin = self.rope_sin.index_select(&positions, 0)?;

        let mut x = self.embedding.index_select(&ids, 0)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, cfg.rms_eps as f32)?;
            let attn = self.attention(li, layer, &h, &cos, &sin, chunks, kv)?;
            x = (x + layer.wo.forward(&attn)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, cfg.rms_eps as f32)?;
            let gate = candle_nn::ops::silu(&layer.w_gate.forward(&h)?)?;
            let up = layer.w_up.forward(&h)?;
            x = (x + layer.w_down.forward(&(gate * up)?)?)?;
        }
        let last = Tensor::from_vec(last_rows, chunks.len(), &self.device)?;
        let x = x.index_select(&last, 0)?;
        let x = rms_norm(&x, &self.output_norm, cfg.rms_eps as f32)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer_index: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        chunks: &[SeqChunk<'_>],
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (total, _) = h.dims2()?;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let group = cfg.group_size();
        // [total, heads*hd] -> [1, heads, total, hd], as rope_i wants.
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((total, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?)
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let q = rope_i(&heads(layer.wq.forward(h)?, nh)?, cos, sin)?.squeeze(0)?;
        let q = (q * scale)?;
        let k = rope_i(&heads(layer.wk.forward(h)?, nkv)?, cos, sin)?.squeeze(0)?;
        let v = heads(layer.wv.forward(h)?, nkv)?.squeeze(0)?;

        let mut outputs = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for c in chunks {
            let n = c.tokens.len();
            let k_new = k.narrow(1, row, n)?;
            let v_new = v.narrow(1, row, n)?;
            let (k_all, v_all) = kv.write_and_read(c.seq, layer_index, c.start, &k_new, &v_new)?;
            let len = c.start + n;
            // Grouped-query attention: the `group` query heads of one KV head become rows.
            let q_seq = q
                .narrow(1, row, n)?
                .contiguous()?
                .reshape((nkv, group * n, hd))?;
            let mut scores = q_seq.matmul(&k_all.t()?)?;
            if n > 1 {
                scores =
                    scores.broadcast_add(&causal_mask(c.start, n, len, group, &self.device)?)?;
            }
            let probs = softmax_last_dim(&scores)?;
            let out = probs.matmul(&v_all.contiguous()?)?; // [nkv, group*n, hd]
            outputs.push(
                out.reshape((nh, n, hd))?
                    .transpose(0, 1)?
                    .reshape((n, nh * hd))?,
            );
            row += n;
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }
}

fn to_matmul(q: QTensor, format: WeightFormat, device: &Device) -> Result<QMatMul> {
    Ok(match format {
        WeightFormat::F32 => QMatMul::Tensor(q.dequantize(device)?),
        WeightFormat::Quantized => QMatMul::from_arc(Arc::new(q))?,
        WeightFormat::Q8 if q.dtype() == GgmlDType::Q8_0 => QMatMul::from_arc(Arc::new(q))?,
        WeightFormat::Q8 => QMatMul::from_arc(Arc::new(QTensor::quantize(
            &q.dequantize(device)?,
            GgmlDType::Q8_0,
        )?))?,
    })
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

/// `[group * n, len]` additive mask: query `i` (at position `start + i`) sees keys `0..=start + i`.
fn causal_mask(
    start: usize,
    n: usize,
    len: usize,
    group: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut mask = Vec::with_capacity(group * n * len);
    for _ in 0..group {
        for i in 0..n {
            let visible = start + i + 1;
            mask.extend((0..len).map(|j| {
                if j < visible {
                    0.0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Ok(Tensor::from_vec(mask, (group * n, len), device)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_offsets_by_start() {
        let m = causal_mask(2, 2, 4, 1, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][..3], [0.0, 0.0, 0.0]);
        assert!(m[0][3].is_infinite());
        assert_eq!(m[1], [0.0; 4]);
    }
}
