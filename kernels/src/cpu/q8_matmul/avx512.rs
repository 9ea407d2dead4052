//! The AVX-512 VNNI kernel: `R` activation rows against `T` column tiles at a time.

#[cfg(target_arch = "x86_64")]
pub use x86::{available, quantize_blocks, run_group};

#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn quantize_blocks(_: &[f32], _: &mut [i8], _: &mut [f32], _: &mut [i32]) {
    unreachable!("the AVX-512 kernel exists only on x86-64")
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_group(
    _: &super::PackedQ8,
    _: &super::QuantizedRows,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: Option<usize>,
    _: *mut f32,
) {
    unreachable!("the AVX-512 kernel exists only on x86-64")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::super::pack::{block_inverse, PackedQ8, QuantizedRows, TileBlock, BLOCK, TILE_COLS};
    use super::super::{ROWS, TILES};

    /// Whether this CPU has the instructions the kernel uses.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// Quantizes `x` block by block exactly as `pack::quantize_block` does (the same
    /// maximum, division and round-to-nearest-even), with each block's offset.
    ///
    /// # Safety
    /// The CPU must have the features [`available`] checks; `x.len()` must be a multiple of
    /// [`BLOCK`], `qs` as long as `x`, `scales` and `offsets` one entry per block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn quantize_blocks(
        x: &[f32],
        qs: &mut [i8],
        scales: &mut [f32],
        offsets: &mut [i32],
    ) {
        let blocks = x.len() / BLOCK;
        debug_assert!(qs.len() == x.len() && scales.len() == blocks && offsets.len() == blocks);
        let infinity = _mm512_set1_ps(f32::INFINITY);
        for b in 0..blocks {
            let src = x.as_ptr().add(b * BLOCK);
            let lo = _mm512_loadu_ps(src);
            let hi = _mm512_loadu_ps(src.add(16));
            let (alo, ahi) = (_mm512_abs_ps(lo), _mm512_abs_ps(hi));
            // Lanes below infinity (false for NaN): all 32 must be finite.
            let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(alo, infinity)
                & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ahi, infinity);
            let dst = qs.as_mut_ptr().add(b * BLOCK);
            if finite != 0xffff {
                // As `quantize_block`: zeros and a NaN scale.
                std::ptr::write_bytes(dst, 0, BLOCK);
                *scales.get_unchecked_mut(b) = f32::NAN;
                *offsets.get_unchecked_mut(b) = 0;
                continue;
            }
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(alo, ahi));
            let d = amax / 127.0;
            let inv = _mm512_set1_ps(block_inverse(d));
            // The default rounding mode is to nearest, ties to even; |value| <= 127 here.
            let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
            let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
            let dst = dst as *mut __m128i;
            _mm_storeu_si128(dst, _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128(dst.add(1), _mm512_cvtsepi32_epi8(qhi));
            *scales.get_unchecked_mut(b) = d;
            *offsets.get_unchecked_mut(b) =
                -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
        }
    }

    /// Runs rows `row..row + rows` against tiles `first_tile..first_tile + tiles`, writing
    /// their outputs into `out` (`[all rows, w.n()]`).
    ///
    /// # Safety
    /// The CPU must have the features [`available`] checks; `rows <= ROWS`, `tiles <= TILES`,
    /// the rows and tiles must exist, and `out` must be valid for writes of every row of
    /// `acts` times `w.n()` with no one else writing this rectangle.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_group(
        w: &PackedQ8,
        acts: &QuantizedRows,
        first_tile: usize,
        tiles: usize,
        row: usize,
        rows: usize,
        prefetch: Option<usize>,
        out: *mut f32,
    ) {
        debug_assert!(rows <= ROWS && tiles <= TILES);
        let ahead = prefetch.map(|t| w.tile(t));
        macro_rules! dispatch {
            ($($r:literal),*) => {
                match (rows, tiles) {
                    $(($r, 2) => group::<$r, 2>(w, acts, first_tile, row, ahead, out),
                      ($r, 1) => group::<$r, 1>(w, acts, first_tile, row, ahead, out),)*
                    _ => unreachable!("at most {ROWS} rows and 2 tiles per group"),
                }
            };
        }
        dispatch!(1, 2, 3, 4, 5, 6, 7, 8)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn group<const R: usize, const T: usize>(
        w: &PackedQ8,
        acts: &QuantizedRows,
        first_tile: usize,
        row: usize,
        ahead: Option<&[TileBlock]>,
        out: *mut f32,
    ) {
        let k = w.k();
        let kb = k / BLOCK;
        let tiles: [&[TileBlock]; T] = std::array::from_fn(|t| w.tile(first_tile + t));
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for b in 0..kb {
            // Ask for the same block of the tile this thread runs next, so that it streams in
            // from memory while this one computes.
            if let Some(next) = ahead {
                let bytes = next.as_ptr().add(b) as *const i8;
                // 544 bytes at any 2-byte alignment: up to 10 cache lines.
                for line in (0..std::mem::size_of::<TileBlock>()).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(bytes.add(line));
                }
                _mm_prefetch::<_MM_HINT_T0>(bytes.add(std::mem::size_of::<TileBlock>() - 1));
            }
            let mut sums = [[_mm512_setzero_si512(); T]; R];
            for (r, row_sums) in sums.iter_mut().enumerate() {
                let offset = _mm512_set1_epi32(*acts.offsets.get_unchecked((row + r) * kb + b));
                *row_sums = [offset; T];
            }
            let a = acts.qs.as_ptr().add(row * k + b * BLOCK);
            for g in 0..BLOCK / 4 {
                let wv: [__m512i; T] = std::array::from_fn(|t| {
                    _mm512_loadu_si512(
                        tiles[t].get_unchecked(b).qs.as_ptr().add(g * TILE_COLS * 4) as *const _
                    )
                });
                for (r, row_sums) in sums.iter_mut().enumerate() {
                    let four = (a.add(r * k + g * 4) as *const i32).read_unaligned();
                    let av = _mm512_set1_epi32(four);
                    for t in 0..T {
                        row_sums[t] = _mm512_dpbusd_epi32(row_sums[t], wv[t], av);
                    }
                }
            }
            for t in 0..T {
                let scales = tiles[t].get_unchecked(b).scales.as_ptr();
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales as *const __m256i));
                for r in 0..R {
                    let da = _mm512_set1_ps(*acts.scales.get_unchecked((row + r) * kb + b));
                    let scale = _mm512_mul_ps(dw, da);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][t]), scale, acc[r][t]);
                }
            }
        }
        let n = w.n();
        for (r, row_acc) in acc.iter().enumerate() {
            for (t, v) in row_acc.iter().enumerate() {
                let col = (first_tile + t) * TILE_COLS;
                let width = (n - col).min(TILE_COLS);
                let mask: __mmask16 = if width == TILE_COLS {
                    !0
                } else {
                    (1u16 << width) - 1
                };
                _mm512_mask_storeu_ps(out.add((row + r) * n + col), mask, *v);
            }
        }
    }
}
