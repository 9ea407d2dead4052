//! Rotary-embedding tables: one per distinct [`LayerRope`] of a model (Gemma 3's local and
//! global layers have different bases), each `[context_length, head_dim / 2]`.

use crate::config::{LayerRope, ModelConfig};

/// Cosine and sine of every position's angle for every pair of a head.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// The tables a model needs, and which one each layer uses.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub tables: Vec<RopeTable>,
    /// Per layer: the index of its table in `tables`.
    pub layer_table: Vec<usize>,
}

impl RopeTables {
    /// Tables for `cfg`'s layers; `factors` (Llama 3's `rope_freqs`) divide every frequency.
    pub fn new(cfg: &ModelConfig, factors: Option<&[f32]>) -> Self {
        let mut distinct: Vec<LayerRope> = Vec::new();
        let layer_table = cfg
            .layer_ropes
            .iter()
            .map(|r| match distinct.iter().position(|d| d == r) {
                Some(i) => i,
                None => {
                    distinct.push(*r);
                    distinct.len() - 1
                }
            })
            .collect();
        let tables = distinct
            .iter()
            .map(|r| table(cfg.head_dim, cfg.context_length, *r, factors))
            .collect();
        Self {
            tables,
            layer_table,
        }
    }
}

fn table(head_dim: usize, context: usize, rope: LayerRope, factors: Option<&[f32]>) -> RopeTable {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / rope.theta.powf(2.0 * i as f32 / head_dim as f32);
            let factor = factors.and_then(|fs| fs.get(i)).copied().unwrap_or(1.0);
            f / factor / rope.linear_factor
        })
        .collect();
    let mut cos = Vec::with_capacity(context * half);
    let mut sin = Vec::with_capacity(context * half);
    for p in 0..context {
        for f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    RopeTable { cos, sin }
}

/// Llama 3's RoPE frequency scaling: low frequencies divided by `factor`, high ones kept,
/// a smooth blend between (GGUF files carry the result as a `rope_freqs` tensor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    /// The context the model was trained for before scaling.
    pub original_context: u32,
}

impl Llama3Rope {
    /// One divisor per frequency of a head of `head_dim` with base `theta`.
    pub fn factors(&self, head_dim: usize, theta: f32) -> Vec<f32> {
        let low_wavelen = self.original_context as f32 / self.low_freq_factor;
        let high_wavelen = self.original_context as f32 / self.high_freq_factor;
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (self.original_context as f32 / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                }
            })
            .collect()
    }
}
