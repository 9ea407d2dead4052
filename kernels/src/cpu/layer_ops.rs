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

/// How RoPE pairs a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// `(2i, 2i + 1)`.
    Interleaved,
    /// `(i, i + head_dim / 2)` ("NeoX").
    Halves,
}

/// Per-head RMS norms applied to queries and keys before the rotation (Qwen3, Gemma 3):
/// weights of `head_dim` values, shared by all heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadNorms<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub eps: f32,
}

/// What the Q/K step does besides splitting: RoPE pairing, head norms, and the query scale.
#[derive(Debug, Clone, Copy)]
pub struct QkOptions<'a> {
    pub pairs: RopePairs,
    pub norms: Option<HeadNorms<'a>>,
    pub q_scale: f32,
}

/// Splits fused Q/K/V rows into `q` (`[rows, n_heads * head_dim]`), `k` and `v`
/// (`[rows, n_kv_heads * head_dim]`): every head of `q` and `k` RMS-normed when
/// `options.norms` says so, then rotated by its row's position, and `q` multiplied by
/// `options.q_scale`.
///
/// # Panics
/// When the slices do not have `positions.len()` rows of the shape's widths, a position is
/// past the tables, or a norm weight is not `head_dim` long.
#[allow(clippy::too_many_arguments)]
pub fn split_qkv_rope(
    qkv: &[f32],
    shape: QkvShape,
    positions: &[u32],
    rope: RopeTables<'_>,
    options: QkOptions<'_>,
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
) {
    let hd = shape.head_dim;
    let (qw, kw) = (shape.n_heads * hd, shape.n_kv_heads * hd);
    let rows = positions.len();
    assert!(qkv.len() == rows * shape.row() && q.len() == rows * qw);
    assert!(k.len() == rows * kw && v.len() == rows * kw);
    if let Some(n) = options.norms {
        assert!(n.q.len() == hd && n.k.len() == hd);
    }
    let half = hd / 2;
    // Pair `i` is (i * stride, i * stride + offset): interleaved (2i, 2i + 1) or halves
    // (i, i + half), chosen once rather than per pair.
    let (stride, offset) = match options.pairs {
        RopePairs::Interleaved => (2, 1),
        RopePairs::Halves => (1, half),
    };
    let mut normed = vec![0.0f32; hd];
    for (r, &pos) in positions.iter().enumerate() {
        let src = &qkv[r * shape.row()..][..shape.row()];
        let cos = &rope.cos[pos as usize * half..][..half];
        let sin = &rope.sin[pos as usize * half..][..half];
        let mut rotate = |src: &[f32], dst: &mut [f32], scale: f32, norm: Option<(&[f32], f32)>| {
            for (s, d) in src.chunks_exact(hd).zip(dst.chunks_exact_mut(hd)) {
                let s = match norm {
                    Some((w, eps)) => {
                        rms_norm(s, w, eps, &mut normed);
                        &normed[..]
                    }
                    None => s,
                };
                for i in 0..half {
                    let (ia, ib) = (i * stride, i * stride + offset);
                    let (a, b) = (s[ia], s[ib]);
                    d[ia] = (a * cos[i] - b * sin[i]) * scale;
                    d[ib] = (a * sin[i] + b * cos[i]) * scale;
                }
            }
        };
        let norms = options.norms;
        rotate(
            &src[..qw],
            &mut q[r * qw..][..qw],
            options.q_scale,
            norms.map(|n| (n.q, n.eps)),
        );
        rotate(
            &src[qw..qw + kw],
            &mut k[r * kw..][..kw],
            1.0,
            norms.map(|n| (n.k, n.eps)),
        );
        v[r * kw..][..kw].copy_from_slice(&src[qw + kw..]);
    }
}

/// `out[r, j] = gelu_tanh(gate_up[r, j]) * gate_up[r, ffn + j]` for rows `[gate | up]` of
/// `2 * ffn` (GELU with the tanh approximation, as Gemma uses it).
///
/// # Panics
/// When `gate_up` is not whole rows of `2 * ffn` or `out` not the same number of rows of `ffn`.
pub fn gelu_tanh_mul(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    gate_rows(gate_up, ffn, out, |x| {
        let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        // tanh(y) = 1 - 2 / (1 + e^(2y)); exp overflowing to infinity gives 1.
        let tanh = 1.0 - 2.0 / (1.0 + exp_approx(2.0 * inner));
        0.5 * x * (1.0 + tanh)
    });
}

/// `out[r, j] = silu(gate_up[r, j]) * gate_up[r, ffn + j]` for rows `[gate | up]` of `2 * ffn`.
///
/// # Panics
/// As [`gelu_tanh_mul`].
pub fn silu_mul(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    gate_rows(gate_up, ffn, out, |g| g / (1.0 + exp_approx(-g)));
}

/// `out[r, j] = act(gate[r, j]) * up[r, j]` over rows `[gate | up]`.
#[inline(always)]
fn gate_rows(gate_up: &[f32], ffn: usize, out: &mut [f32], act: impl Fn(f32) -> f32) {
    assert!(gate_up.len().is_multiple_of(2 * ffn) && out.len() * 2 == gate_up.len());
    for (src, dst) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (gate, up) = src.split_at(ffn);
        for ((d, g), u) in dst.iter_mut().zip(gate).zip(up) {
            *d = act(*g) * *u;
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
        let options = QkOptions {
            pairs: RopePairs::Interleaved,
            norms: None,
            q_scale: 0.5,
        };
        split_qkv_rope(&qkv, shape, &[0, 1], rope, options, &mut q, &mut k, &mut v);
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
    fn halves_pair_i_with_i_plus_half_after_the_head_norms() {
        let shape = QkvShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 4,
        };
        // Position 1: angles (90°, 180°).
        let cos = [1.0, 1.0, 0.0, -1.0];
        let sin = [0.0, 0.0, 1.0, 0.0];
        let qkv: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let (mut q, mut k, mut v) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 4]);
        let rope = RopeTables {
            cos: &cos,
            sin: &sin,
        };
        let w = [1.0, 2.0, 1.0, 1.0];
        let norms = HeadNorms {
            q: &w,
            k: &[1.0; 4],
            eps: 0.0,
        };
        let options = QkOptions {
            pairs: RopePairs::Halves,
            norms: Some(norms),
            q_scale: 1.0,
        };
        split_qkv_rope(&qkv, shape, &[1], rope, options, &mut q, &mut k, &mut v);
        let rms = |s: &[f32]| (s.iter().map(|x| x * x).sum::<f32>() / 4.0).sqrt();
        let (rq, rk) = (rms(&qkv[..4]), rms(&qkv[4..8]));
        // Normed q = (1, 4, 3, 4) / rq; pairs (0, 2) by 90°, (1, 3) by 180°.
        let want_q = [-3.0 / rq, -4.0 / rq, 1.0 / rq, -4.0 / rq];
        let want_k = [-7.0 / rk, -6.0 / rk, 5.0 / rk, -8.0 / rk];
        for (got, want) in q.iter().zip(&want_q).chain(k.iter().zip(&want_k)) {
            assert!((got - want).abs() < 1e-6, "{q:?} {k:?}");
        }
        assert_eq!(v, [9.0, 10.0, 11.0, 12.0]);
    }

    #[test]
    fn gelu_tanh_mul_matches_the_formula() {
        let gate_up = [
            -6.0, -1.0, 0.0, 0.5, 3.0, 12.0, 1.0, 2.0, 3.0, -4.0, 5.0, 0.25,
        ];
        let mut out = [0.0; 6];
        gelu_tanh_mul(&gate_up, 6, &mut out);
        let gelu = |x: f32| {
            0.5 * x
                * (1.0
                    + ((2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        };
        for (j, o) in out.iter().enumerate() {
            let want = gelu(gate_up[j]) * gate_up[6 + j];
            assert!(
                (o - want).abs() <= want.abs() * 1e-5 + 1e-7,
                "{j}: {o} vs {want}"
            );
        }
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
