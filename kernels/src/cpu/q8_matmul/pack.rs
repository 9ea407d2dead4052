//! The packed weight layout and the per-call quantized activations.

use half::f16;

use crate::cpu::parallel::ParallelFor;

/// Input values per quantization block (one scale each), as in GGUF's Q8_0.
pub const BLOCK: usize = 32;
/// Output columns per tile: one 512-bit register of 32-bit sums.
pub const TILE_COLS: usize = 16;

/// One block of 32 input values for the 16 columns of a tile.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TileBlock {
    /// Weights plus 128 (so unsigned, as `vpdpbusd` wants its first operand): group `g` of 4
    /// inputs holds, for each column `c`, bytes `[(g * 16 + c) * 4 ..][..4]`.
    pub qs: [u8; BLOCK * TILE_COLS],
    /// Each column's scale for this block, as f16 bits.
    pub scales: [u16; TILE_COLS],
}

/// A weight matrix `[n, k]` quantized to 8 bits and packed in column tiles.
pub struct PackedQ8 {
    n: usize,
    k: usize,
    /// Tile `t`'s blocks are `blocks[t * k / BLOCK ..][..k / BLOCK]`, in input order.
    blocks: Vec<TileBlock>,
}

/// Why a matrix cannot be packed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("input width {0} is not a multiple of {BLOCK}")]
    Width(usize),
    #[error("{len} weights are not a [{n}, {k}] matrix")]
    Length { len: usize, n: usize, k: usize },
}

/// Scale and rounding of one block as GGUF's Q8_0 does it: the largest magnitude maps to 127.
/// A block holding a NaN or an infinity gets zeros and a NaN scale (so the result is NaN, as
/// f32 math would give); a block too small for `1 / scale` to be finite gets zeros.
pub(crate) fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    // One pass for both, in 8 independent lanes so that it vectorizes: the largest
    // magnitude, and whether every value is finite (a max is order-free for finite values;
    // any other input ends below).
    let (mut lanes, mut finite) = ([0.0f32; 8], [true; 8]);
    for eight in x.chunks_exact(8) {
        for i in 0..8 {
            let a = eight[i].abs();
            finite[i] &= a < f32::INFINITY;
            lanes[i] = if a > lanes[i] { a } else { lanes[i] };
        }
    }
    let mut finite = finite.iter().all(|f| *f);
    let mut amax = lanes
        .iter()
        .fold(0.0f32, |m, a| if *a > m { *a } else { m });
    for &v in x.chunks_exact(8).remainder() {
        finite &= v.is_finite();
        amax = if v.abs() > amax { v.abs() } else { amax };
    }
    if !finite {
        q.fill(0);
        return f32::NAN;
    }
    let d = amax / 127.0;
    let inv = block_inverse(d);
    for (q, v) in q.iter_mut().zip(x) {
        let r = (v * inv).round_ties_even();
        // SAFETY: every value is finite and |v| <= amax, so |r| <= 127 (inv is 127 / amax
        // rounded, or 0): in range of i32 and i8. Unchecked, the conversion vectorizes.
        *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    d
}

/// `1 / d`, or 0 where that is not finite (`d` zero or below ~3e-39).
pub(crate) fn block_inverse(d: f32) -> f32 {
    let inv = 1.0 / d;
    if inv.is_finite() {
        inv
    } else {
        0.0
    }
}

impl PackedQ8 {
    /// Quantizes the row-major f32 matrix `w` (`n` rows of `k`) and packs it. Values already
    /// on a Q8_0 grid (dequantized from a Q8_0 file) come back as they were.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Result<Self, PackError> {
        Self::quantize_with(&|n, f| f(0..n), w, n, k)
    }

    /// [`PackedQ8::quantize`] with the column tiles spread over `parallel` (the same result:
    /// each tile is computed alone).
    pub fn quantize_with(
        parallel: ParallelFor<'_>,
        w: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Self, PackError> {
        if w.len() != n * k {
            return Err(PackError::Length { len: w.len(), n, k });
        }
        Self::quantize_rows_with(parallel, n, k, &|r, out| {
            out.copy_from_slice(&w[r * k..][..k])
        })
    }

    /// [`PackedQ8::quantize_with`] of the matrix whose row `r` (`k` values) `row(r, out)`
    /// writes into `out`: a matrix held in another encoding is packed a row at a time,
    /// never whole in f32.
    pub fn quantize_rows_with(
        parallel: ParallelFor<'_>,
        n: usize,
        k: usize,
        row: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) -> Result<Self, PackError> {
        if !k.is_multiple_of(BLOCK) {
            return Err(PackError::Width(k));
        }
        let kb = k / BLOCK;
        let tiles = n.div_ceil(TILE_COLS);
        let empty = TileBlock {
            qs: [128; BLOCK * TILE_COLS],
            scales: [0; TILE_COLS],
        };
        let mut blocks = vec![empty; tiles * kb];
        let addr = blocks.as_mut_ptr() as usize;
        parallel(tiles, &|range: std::ops::Range<usize>| {
            let mut q = [0i8; BLOCK];
            let mut values = vec![0.0f32; k];
            for tile in range {
                assert!(tile < tiles, "tile {tile} out of 0..{tiles}");
                // SAFETY: `blocks` holds `tiles * kb` blocks and stays borrowed for the whole
                // call; `parallel` hands out disjoint ranges of tiles, so no two threads
                // write the same blocks.
                let own = unsafe {
                    std::slice::from_raw_parts_mut((addr as *mut TileBlock).add(tile * kb), kb)
                };
                for c in 0..TILE_COLS.min(n - tile * TILE_COLS) {
                    row(tile * TILE_COLS + c, &mut values);
                    for (block, x) in own.iter_mut().zip(values.chunks_exact(BLOCK)) {
                        let d = quantize_block(x, &mut q);
                        block.scales[c] = f16::from_f32(d).to_bits();
                        for (g, four) in q.chunks_exact(4).enumerate() {
                            let at = (g * TILE_COLS + c) * 4;
                            for (j, v) in four.iter().enumerate() {
                                block.qs[at + j] = (*v as u8) ^ 0x80;
                            }
                        }
                    }
                }
            }
        });
        Ok(Self { n, k, blocks })
    }

    /// Output width (rows of the weight matrix).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of column tiles (the last one may be partly padding).
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_COLS)
    }

    /// Tile `t`'s blocks, in input order.
    pub fn tile(&self, t: usize) -> &[TileBlock] {
        let kb = self.k / BLOCK;
        &self.blocks[t * kb..(t + 1) * kb]
    }

    /// Bytes the packed weights take.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<TileBlock>()
    }
}

/// Activation rows quantized per block of 32, with what the kernels need besides the values.
pub struct QuantizedRows {
    k: usize,
    /// `[rows, k]` values.
    pub(crate) qs: Vec<i8>,
    /// `[rows, k / BLOCK]` scales.
    pub(crate) scales: Vec<f32>,
    /// `[rows, k / BLOCK]`: `-128 ×` the block's sum of values, which cancels the +128 the
    /// weights are stored with (the kernels start each block's integer sum from it).
    pub(crate) offsets: Vec<i32>,
}

impl QuantizedRows {
    /// `rows` rows of zeros, to be filled.
    pub(crate) fn zeros(rows: usize, k: usize) -> Self {
        let blocks = rows * k / BLOCK;
        Self {
            k,
            qs: vec![0; rows * k],
            scales: vec![0.0; blocks],
            offsets: vec![0; blocks],
        }
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.qs.len() / self.k.max(1)
    }
}
