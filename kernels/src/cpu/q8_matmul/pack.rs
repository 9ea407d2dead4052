//! The packed weight layout and the per-call quantized activations.

use half::f16;

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
    if !x.iter().all(|v| v.is_finite()) {
        q.fill(0);
        return f32::NAN;
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = block_inverse(d);
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * inv).round_ties_even() as i8;
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
        if !k.is_multiple_of(BLOCK) {
            return Err(PackError::Width(k));
        }
        if w.len() != n * k {
            return Err(PackError::Length { len: w.len(), n, k });
        }
        let kb = k / BLOCK;
        let tiles = n.div_ceil(TILE_COLS);
        let empty = TileBlock {
            qs: [128; BLOCK * TILE_COLS],
            scales: [0; TILE_COLS],
        };
        let mut blocks = vec![empty; tiles * kb];
        let mut q = [0i8; BLOCK];
        for col in 0..n {
            let (tile, c) = (col / TILE_COLS, col % TILE_COLS);
            for b in 0..kb {
                let d = quantize_block(&w[col * k + b * BLOCK..][..BLOCK], &mut q);
                let block = &mut blocks[tile * kb + b];
                block.scales[c] = f16::from_f32(d).to_bits();
                for (i, v) in q.iter().enumerate() {
                    let (g, j) = (i / 4, i % 4);
                    block.qs[(g * TILE_COLS + c) * 4 + j] = (*v as i16 + 128) as u8;
                }
            }
        }
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
    /// Quantizes `rows` rows of `k` values.
    ///
    /// # Panics
    /// When `x` is not `rows * k` long or `k` is not a multiple of [`BLOCK`].
    pub fn quantize(x: &[f32], rows: usize, k: usize) -> Self {
        assert!(
            k.is_multiple_of(BLOCK) && x.len() == rows * k,
            "not {rows} rows of {k}"
        );
        if !super::avx512::available() {
            return super::reference::quantize(x, rows, k);
        }
        let mut out = Self::zeros(rows, k);
        // SAFETY: features checked; the buffers were sized for `x`.
        unsafe {
            super::avx512::quantize_blocks(x, &mut out.qs, &mut out.scales, &mut out.offsets)
        };
        out
    }

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
