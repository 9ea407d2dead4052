//! How CPU kernels spread work over threads: the caller passes a [`ParallelFor`], so the
//! kernels run on whatever pool the rest of its math uses.

use rayon::prelude::*;

/// Runs `f` over disjoint ranges that together cover `0..n`, possibly on several threads.
pub type ParallelFor<'a> = &'a (dyn Fn(usize, &(dyn Fn(std::ops::Range<usize>) + Sync)) + Sync);

/// A [`ParallelFor`] on rayon's global pool.
pub fn rayon_for(n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    (0..n).into_par_iter().for_each(|i| f(i..i + 1));
}

/// Calls `f(rows, out_rows)` for disjoint ranges of the rows of `out` (rows of `row_len`),
/// `out_rows` being those rows, spread over `parallel`.
///
/// # Panics
/// When `out` is not whole rows.
pub fn par_rows(
    parallel: ParallelFor<'_>,
    out: &mut [f32],
    row_len: usize,
    f: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
) {
    assert!(
        row_len > 0 && out.len().is_multiple_of(row_len),
        "not whole rows"
    );
    let rows = out.len() / row_len;
    let addr = out.as_mut_ptr() as usize;
    parallel(rows, &|range: std::ops::Range<usize>| {
        assert!(range.end <= rows, "rows {range:?} out of 0..{rows}");
        // SAFETY: `out` holds `rows` rows and stays mutably borrowed for the whole call;
        // `parallel` hands out disjoint ranges, so no two threads get the same rows.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(
                (addr as *mut f32).add(range.start * row_len),
                range.len() * row_len,
            )
        };
        f(range, chunk);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_handed_out_once() {
        let mut out = vec![0.0f32; 37 * 3];
        par_rows(&rayon_for, &mut out, 3, &|rows, chunk| {
            for (i, r) in rows.enumerate() {
                chunk[i * 3..][..3].iter_mut().for_each(|v| *v += r as f32);
            }
        });
        for r in 0..37 {
            assert_eq!(out[r * 3..][..3], [r as f32; 3]);
        }
    }
}
