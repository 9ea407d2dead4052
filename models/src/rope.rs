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
