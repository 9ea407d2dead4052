//! The small element-wise steps of a transformer layer on the CPU, over plain row-major
//! slices. Each runs on the calling thread: for a decode batch they take microseconds, less
//! than waking a thread pool would.

use super::exp::exp_approx;
use super::lanes::sum_lanes;

/// The shape of a fused Q/K/V projection's output rows: `[q heads | k heads | v heads]`, each
/// head `head_dim` wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl QkvShape {
    /// Width of one row of the fused projection.
    pub fn row(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
}

/// Rotary tables: `cos[p * head_dim / 2 + i]` is the cosine of position `p`'s angle for the
/// pair `i` (likewise `sin`).
#[derive(Debug, Clone, Copy)]
pub struct RopeTables<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Splits fused Q/K/V rows into `q` (`[rows, n_heads * head_dim]`), `k` and `v`
/// (`[rows, n_kv_heads * head_dim]`), rotating every head of `q` and `k` by its row's position
/// (interleaved pairs `(2i, 2i + 1)`) and multiplying `q` by `q_scale`.
///
/// # Panics
/// When the slices do not have `positions.len()` rows of the shape's widths, or a position is
/// past the tables.
#[allow(clippy::too_many_arguments)]
pub fn split_qkv_rope(
    qkv: &[f32],
    shape: QkvShape,
    positions: &[u32],
    rope: RopeTables<'_>,
    q_scale: f32,
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
) {
    let hd = shape.head_dim;
    let (qw, kw) = (shape.n_heads * hd, shape.n_kv_heads * hd);
    let rows = positions.len();
    assert!(qkv.len() == rows * shape.row() && q.len() == rows * qw);
    assert!(k.len() == rows * kw && v.len() == rows * kw);
    let half = hd / 2;
    for (r, &pos) in positions.iter().enumerate() {
        let src = &qkv[r * shape.row()..][..shape.row()];
        let cos = &rope.cos[pos as usize * half..][..half];
        let sin = &rope.sin[pos as usize * half..][..half];
        let rotate = |src: &[f32], dst: &mut [f32], scale: f32| {
            for (s, d) in src.chunks_exact(hd).zip(dst.chunks_exact_mut(hd)) {
                for i in 0..half {
                    let (a, b) = (s[2 * i], s[2 * i + 1]);
                    d[2 * i] = (a * cos[i] - b * sin[i]) * scale;
                    d[2 * i + 1] = (a * sin[i] + b * cos[i]) * scale;
                }
            }
        };
        rotate(&src[..qw], &mut q[r * qw..][..qw], q_scale);
        rotate(&src[qw..qw + kw], &mut k[r * kw..][..kw], 1.0);
        v[r * kw..][..kw].copy_from_slice(&src[qw + kw..]);
    }
}

/// `out[r, j] = silu(gate_up[r, j]) * gate_up[r, ffn + j]` for rows `[gate | up]` of `2 * ffn`.
///
/// # Panics
/// When `gate_up` is not whole rows of `2 * ffn` or `out` not the same number of rows of `ffn`.
pub fn silu_mul(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    assert!(gate_up.len().is_multiple_of(2 * ffn) && out.len() * 2 == gate_up.len());
    for (src, dst) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (gate, up) = src.split_at(ffn);
        for ((d, g), u) in dst.iter_mut().zip(gate).zip(up) {
            *d = *g / (1.0 + exp_approx(-*g)) * *u;
        }
    }
}

/// RMS normalization of each row of `x` (rows of `weight.len()`), times `weight`.
///
/// # Panics
/// When `x` is not whole rows or `out` is not as long as `x`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    assert!(x.len().is_multiple_of(n) && out.len() == x.len());
    for (src, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum = sum_lanes(src, |v| v * v);
        let inv = 1.0 / (sum / n as f32 + eps).sqrt();
        for ((d, s), w) in dst.iter_mut().zip(src).zip(weight) {
            *d = *s * inv * *w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_by_the_rows_position_and_splits() {
        let shape = QkvShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
        };
        // Two positions, two pairs each: angles (0, 0) at position 0, (90°, 180°) at 1.
        let cos = [1.0, 1.0, 0.0, -1.0];
        let sin = [0.0, 0.0, 1.0, 0.0];
        let row: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let qkv: Vec<f32> = row.iter().chain(&row).copied().collect();
        let (mut q, mut k, mut v) = (vec![0.0; 16], vec![0.0; 8], vec![0.0; 8]);
        let rope = RopeTables {
            cos: &cos,
            sin: &sin,
        };
        split_qkv_rope(&qkv, shape, &[0, 1], rope, 0.5, &mut q, &mut k, &mut v);
        // Row 0: no rotation, q halved.
        assert_eq!(q[..8], [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]);
        assert_eq!(k[..4], [9.0, 10.0, 11.0, 12.0]);
        assert_eq!(v[..4], [13.0, 14.0, 15.0, 16.0]);
        // Row 1: (a, b) -> (-b, a) for the first pair, -(a, b) for the second.
        assert_eq!(q[8..12], [-1.0, 0.5, -1.5, -2.0]);
        assert_eq!(k[4..], [-10.0, 9.0, -11.0, -12.0]);
        assert_eq!(v[4..], [13.0, 14.0, 15.0, 16.0]);
    }

    #[test]
    fn silu_mul_gates_the_up_half() {
        let gate_up = [0.0, 2.0, -3.0, 5.0, 7.0, 11.0];
        let mut out = [0.0; 3];
        silu_mul(&gate_up, 3, &mut out);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        for (j, o) in out.iter().enumerate() {
            let want = silu(gate_up[j]) * gate_up[3 + j];
            assert!((o - want).abs() <= want.abs() * 1e-6, "{o} vs {want}");
        }
    }

    #[test]
    fn rms_norm_scales_rows_to_unit_rms_times_the_weight() {
        let x: Vec<f32> = (0..20).map(|v| v as f32 - 7.0).collect();
        let w: Vec<f32> = (0..10).map(|v| 1.0 + v as f32 * 0.1).collect();
        let mut out = vec![0.0; 20];
        rms_norm(&x, &w, 1e-5, &mut out);
        for r in 0..2 {
            let row = &x[r * 10..][..10];
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / 10.0 + 1e-5).sqrt();
            for i in 0..10 {
                let want = row[i] / rms * w[i];
                assert!((out[r * 10 + i] - want).abs() < 1e-5);
            }
        }
    }
}
