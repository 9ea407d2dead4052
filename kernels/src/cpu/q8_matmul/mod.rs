//! `y = x · Wᵀ` with 8-bit weights and 8-bit activations, for batches of rows.
//!
//! Weights are quantized once (blocks of 32 values along the input, one scale each, as
//! GGUF's Q8_0) and packed in tiles of 16 output columns so that one AVX-512 VNNI
//! `vpdpbusd` multiplies 4 input values of one row with the 16 columns at once. Activations
//! are quantized per call the same way. A group of up to [`ROWS`] input rows is run against one
//! column tile, so every weight byte loaded serves several rows: a batch of 16 decode rows
//! costs a few times one row, not sixteen times.
//!
//! Every output element is computed by the same sequence of operations whatever the batch
//! (integer sums per block, then one fused multiply-add per block in block order), so a row's
//! result does not depend on which other rows share the call, and the scalar
//! [`reference`] gives bit-identical results.

mod avx512;
mod pack;
pub mod reference;

pub use pack::{PackedQ8, QuantizedRows, BLOCK, TILE_COLS};

use std::mem::MaybeUninit;

use crate::cpu::parallel::ParallelFor;

/// Input rows run together against one column tile (measured: 8 x 1 tile matches 6 x 2
/// tiles on a batch and beats it on one row; more rows spill registers).
pub const ROWS: usize = 8;
/// Rows handed to one work unit: keeps a unit's activations hot in cache while its weights
/// are reused across them.
const ROWS_PER_UNIT: usize = 64;

/// Activations quantized for the kernels, on the fastest path the CPU has (the AVX-512
/// kernels, else the scalar reference; the two are bit-identical).
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
        if !avx512::available() {
            return reference::quantize(x, rows, k);
        }
        let mut out = QuantizedRows::zeros(rows, k);
        // SAFETY: features checked; the buffers were sized for `x`.
        unsafe { avx512::quantize_blocks(x, &mut out.qs, &mut out.scales, &mut out.offsets) };
        out
    }
}

/// Whether this CPU runs the SIMD kernel (x86-64 with AVX-512 F, BW and VNNI). Without it
/// [`matmul`] runs the scalar reference, which is correct but slow: callers that have
/// another fast path should take it instead.
pub fn simd_available() -> bool {
    avx512::available()
}

/// Computes `out[r, c] = Σ_k x[r, k] · w[c, k]` for the `rows` rows of `x` (`[rows, k]`,
/// row-major), writing `out` (`[rows, n]`), with the work spread over `parallel`.
///
/// # Panics
/// When `x` or `out` is not `rows` rows of the weights' input / output width.
pub fn matmul(parallel: ParallelFor<'_>, w: &PackedQ8, x: &[f32], rows: usize, out: &mut [f32]) {
    // SAFETY: same layout; `matmul_uninit` only ever writes initialized values.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    matmul_uninit(parallel, w, x, rows, out)
}

/// [`matmul`] into memory that need not be initialized (a new output buffer skips being
/// zeroed first): every element of `out` is written.
///
/// # Panics
/// When `x` or `out` is not `rows` rows of the weights' input / output width.
pub fn matmul_uninit(
    parallel: ParallelFor<'_>,
    w: &PackedQ8,
    x: &[f32],
    rows: usize,
    out: &mut [MaybeUninit<f32>],
) {
    assert_eq!(
        x.len(),
        rows * w.k(),
        "input is not {rows} rows of {}",
        w.k()
    );
    assert_eq!(
        out.len(),
        rows * w.n(),
        "output is not {rows} rows of {}",
        w.n()
    );
    if rows == 0 {
        return;
    }
    let acts = QuantizedRows::quantize(x, rows, w.k());
    if !simd_available() {
        let out: &mut [f32] = {
            out.fill(MaybeUninit::new(0.0));
            // SAFETY: every element was initialized just above; same layout.
            unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
        };
        reference::matmul(w, &acts, out);
        return;
    }
    let tiles = w.tiles();
    let row_units = rows.div_ceil(ROWS_PER_UNIT);
    let out_addr = out.as_mut_ptr() as usize;
    parallel(tiles * row_units, &|units: std::ops::Range<usize>| {
        for unit in units {
            assert!(unit < tiles * row_units, "work unit {unit} out of range");
            // Unit order is tile major: a thread's consecutive units reuse the same weights
            // for the next rows.
            let (tile, row_unit) = (unit / row_units, unit % row_units);
            let row_end = rows.min((row_unit + 1) * ROWS_PER_UNIT);
            let mut row = row_unit * ROWS_PER_UNIT;
            // The next tile is likely this thread's next unit: while the first row group
            // reads this one from memory, it asks for that one.
            let mut prefetch = (tile + 1 < tiles).then_some(tile + 1);
            while row < row_end {
                let n_rows = (row_end - row).min(ROWS);
                // SAFETY: the SIMD features were checked above; units cover disjoint
                // (row, tile) rectangles of `out`, whose size was asserted, and together all
                // of it; `out` stays mutably borrowed for the whole call.
                unsafe {
                    avx512::run_group(
                        w,
                        &acts,
                        tile,
                        row,
                        n_rows,
                        prefetch.take(),
                        out_addr as *mut f32,
                    )
                };
                row += n_rows;
            }
        }
    });
}
