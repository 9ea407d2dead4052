//! The AVX-512 VNNI kernel: `R` activation rows against one column tile at a time.

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
pub unsafe fn run_group(
    _: &super::PackedQ8,
    _: &super::QuantizedRows,
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
    use super::super::ROWS;

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

    /// Runs rows `row..row + rows` against column tile `tile`, writing their outputs into
    /// `out` (`[all rows, w.n()]`); asks for tile `prefetch` meanwhile.
    ///
    /// # Safety
    /// The CPU must have the features [`available`] checks; `rows <= ROWS`, the rows and tiles
    /// must exist, and `out` must be valid for writes of every row of `acts` times `w.n()`
    /// with no one else writing this rectangle.
    pub unsafe fn run_group(
        w: &PackedQ8,
        acts: &QuantizedRows,
        tile: usize,
        row: usize,
        rows: usize,
        prefetch: Option<usize>,
        out: *mut f32,
    ) {
        let ahead = prefetch.map(|t| w.tile(t));
        macro_rules! dispatch {
            ($($r:literal),*) => {
                match rows {
                    $($r => group::<$r>(w, acts, tile, row, ahead, out),)*
                    _ => unreachable!("at most {ROWS} rows per group"),
                }
            };
        }
        dispatch!(1, 2, 3, 4, 5, 6, 7, 8)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn group<const R: usize>(
        w: &PackedQ8,
        acts: &QuantizedRows,
        tile: usize,
        row: usize,
        ahead: Option<&[TileBlock]>,
        out: *mut f32,
    ) {
        let k = w.k();
        let kb = k / BLOCK;
        let blocks = w.tile(tile);
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, block) in blocks.iter().enumerate() {
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
            let mut sums: [__m512i; R] = std::array::from_fn(|r| {
                _mm512_set1_epi32(*acts.offsets.get_unchecked((row + r) * kb + b))
            });
            let a = acts.qs.as_ptr().add(row * k + b * BLOCK);
            for g in 0..BLOCK / 4 {
                let wv = _mm512_loadu_si512(block.qs.as_ptr().add(g * TILE_COLS * 4) as *const _);
                for (r, sum) in sums.iter_mut().enumerate() {
                    let four = (a.add(r * k + g * 4) as *const i32).read_unaligned();
                    *sum = _mm512_dpbusd_epi32(*sum, wv, _mm512_set1_epi32(four));
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(block.scales.as_ptr() as *const __m256i));
            for (r, (acc, sum)) in acc.iter_mut().zip(&sums).enumerate() {
                let da = _mm512_set1_ps(*acts.scales.get_unchecked((row + r) * kb + b));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*sum), _mm512_mul_ps(dw, da), *acc);
            }
        }
        let n = w.n();
        let col = tile * TILE_COLS;
        let width = (n - col).min(TILE_COLS);
        let mask: __mmask16 = if width == TILE_COLS {
            !0
        } else {
            (1u16 << width) - 1
        };
        for (r, v) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add((row + r) * n + col), mask, *v);
        }
    }
}
