//! Where CPU kernels of our own run their threads.

use std::ops::Range;

/// Runs `f` over disjoint ranges covering `0..n` on candle's thread pool (a
/// `migserve_kernels` `ParallelFor`). candle's workers spin between its own ops: running our
/// kernels on the same pool keeps a second pool from fighting them for the cores.
pub fn candle_pool(n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    candle_core::utils::barrier_pool().execute_chunked(n, f)
}
