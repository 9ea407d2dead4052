//! The layer's element-wise steps on the CPU through `migserve_kernels::cpu::layer_ops`
//! instead of candle's ops: one pass each instead of several (the Q/K/V split, transposes and
//! rotation are one loop), no threads (candle's rotary embedding wakes rayon's pool for every
//! call, which on a few cores fights the matmul pool), and a vectorized `exp` in SiLU.
//! Only SiLU, the one with real work per value, is spread over threads.

use candle_core::{DType, Storage, Tensor};
use migserve_kernels::cpu::layer_ops::{self, QkOptions, QkvShape, RopeTables};
use migserve_kernels::cpu::parallel::par_rows;

use crate::error::{ModelError, Result};
use crate::parallel::candle_pool;

/// Runs `f` on the values of `t`, a tensor on the CPU, as f32: without copying them when
/// they are f32 and contiguous, converted otherwise.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(ModelError::Tensor(candle_core::Error::msg(
            "a CPU kernel was given a tensor on another device",
        )));
    };
    let values = &cpu.as_slice::<f32>()?[layout.start_offset()..][..t.elem_count()];
    Ok(f(values))
}

/// The rotary tables of a model, as the kernels read them.
pub struct CpuRope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// `q` (head-normed and rotated as `options` say, times its scale, `[rows, n_heads,
/// head_dim]`), `k` (likewise) and `v` (`[rows, n_kv_heads, head_dim]`) from the fused
/// projection `qkv` (`[rows, width]`).
pub fn split_qkv_rope(
    qkv: &Tensor,
    shape: QkvShape,
    positions: &[u32],
    rope: &CpuRope,
    options: QkOptions<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let rows = positions.len();
    let hd = shape.head_dim;
    let mut q = vec![0.0; rows * shape.n_heads * hd];
    let mut k = vec![0.0; rows * shape.n_kv_heads * hd];
    let mut v = vec![0.0; rows * shape.n_kv_heads * hd];
    let tables = RopeTables {
        cos: &rope.cos,
        sin: &rope.sin,
    };
    with_f32(qkv, |qkv| {
        layer_ops::split_qkv_rope(
            qkv, shape, positions, tables, options, &mut q, &mut k, &mut v,
        )
    })?;
    let device = qkv.device();
    Ok((
        Tensor::from_vec(q, (rows, shape.n_heads, hd), device)?,
        Tensor::from_vec(k, (rows, shape.n_kv_heads, hd), device)?,
        Tensor::from_vec(v, (rows, shape.n_kv_heads, hd), device)?,
    ))
}

/// `silu(gate) * up` of rows `[gate | up]` (`[rows, 2 * ffn]`) -> `[rows, ffn]`, rows spread
/// over candle's pool (an `exp` per value: the largest of these steps).
pub fn silu_mul(gate_up: &Tensor, ffn: usize) -> Result<Tensor> {
    gated(gate_up, ffn, layer_ops::silu_mul)
}

/// `gelu_tanh(gate) * up`, as [`silu_mul`] (Gemma's activation).
pub fn gelu_tanh_mul(gate_up: &Tensor, ffn: usize) -> Result<Tensor> {
    gated(gate_up, ffn, layer_ops::gelu_tanh_mul)
}

fn gated(gate_up: &Tensor, ffn: usize, kernel: fn(&[f32], usize, &mut [f32])) -> Result<Tensor> {
    let (rows, _) = gate_up.dims2()?;
    let mut out = vec![0.0; rows * ffn];
    with_f32(gate_up, |g| {
        par_rows(&candle_pool, &mut out, ffn, &|range, out| {
            kernel(&g[range.start * 2 * ffn..range.end * 2 * ffn], ffn, out)
        })
    })?;
    Ok(Tensor::from_vec(out, (rows, ffn), gate_up.device())?)
}

/// RMS normalization of each row of `x` (`[rows, n]`) times `weight` (`[n]`).
pub fn rms_norm(x: &Tensor, weight: &[f32], eps: f32) -> Result<Tensor> {
    let mut out = vec![0.0; x.elem_count()];
    with_f32(x, |x| layer_ops::rms_norm(x, weight, eps, &mut out))?;
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}
