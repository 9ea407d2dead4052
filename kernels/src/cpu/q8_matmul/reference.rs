//! The scalar form of the kernel: the same operations in the same order, one element at a
//! time. Used where the CPU lacks AVX-512 VNNI, and by the tests as the expected result
//! (bit for bit).

use half::f16;

use super::pack::{quantize_block, PackedQ8, QuantizedRows, BLOCK, TILE_COLS};

/// Quantizes `rows` rows of `k` activations one block at a time.
///
/// # Panics
/// When `x` is not `rows * k` long or `k` is not a multiple of [`BLOCK`].
pub fn quantize(x: &[f32], rows: usize, k: usize) -> QuantizedRows {
    assert!(
        k.is_multiple_of(BLOCK) && x.len() == rows * k,
        "not {rows} rows of {k}"
    );
    let mut out = QuantizedRows::zeros(rows, k);
    for (b, (x, q)) in x
        .chunks_exact(BLOCK)
        .zip(out.qs.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        out.scales[b] = quantize_block(x, q);
        out.offsets[b] = -128 * q.iter().map(|v| *v as i32).sum::<i32>();
    }
    out
}

/// `out[r, c]` for every row of `acts` and every output column of `w`.
pub fn matmul(w: &PackedQ8, acts: &QuantizedRows, out: &mut [f32]) {
    let (n, k) = (w.n(), w.k());
    let kb = k / BLOCK;
    for r in 0..acts.rows() {
        for col in 0..n {
            let (tile, c) = (col / TILE_COLS, col % TILE_COLS);
            let mut acc = 0.0f32;
            for (b, block) in w.tile(tile).iter().enumerate() {
                let a = &acts.qs[r * k + b * BLOCK..][..BLOCK];
                let mut sum = acts.offsets[r * kb + b];
                for (i, a) in a.iter().enumerate() {
                    let weight = block.qs[((i / 4) * TILE_COLS + c) * 4 + i % 4];
                    sum += weight as i32 * *a as i32;
                }
                let scale = f16::from_bits(block.scales[c]).to_f32() * acts.scales[r * kb + b];
                acc = (sum as f32).mul_add(scale, acc);
            }
            out[r * n + col] = acc;
        }
    }
}
