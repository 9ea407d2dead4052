//! Attention of a batch of query rows against keys and values kept in a paged cache.
//!
//! Cache layout (per layer): `[block][slot][kv_head][head_dim]`, in f32 or f16
//! ([`KvElement`]). A sequence's position
//! `p` lives in block `block_table[p / block_size]`, slot `p % block_size`. Grouped-query
//! attention: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.

use super::exp::exp_shifted_sum;
use super::kv_element::KvElement;
use super::lanes::max_lanes;
use super::parallel::{rayon_for, ParallelFor};

/// Shapes shared by every sequence of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Sliding-window attention: a query at position `p` sees only the `window` positions
    /// `p + 1 - window ..= p` (as llama.cpp and transformers count it). `None`: all of them.
    pub window: Option<usize>,
}

impl AttentionShape {
    /// The first position a query row that sees `visible` positions (`0..visible`) attends to.
    pub fn first_visible(&self, visible: usize) -> usize {
        self.window.map_or(0, |w| visible.saturating_sub(w))
    }
}

/// One sequence's query rows.
#[derive(Debug, Clone, Copy)]
pub struct SeqQueries<'a> {
    /// The sequence's blocks, in position order.
    pub block_table: &'a [u32],
    /// First query row of this sequence in `q`.
    pub row: usize,
    /// Number of query rows (new tokens).
    pub len: usize,
    /// Position of the first query row; row `i` sees keys at positions `0..=start + i`.
    pub start: usize,
}

/// Computes `out[row, head, :] = softmax(q · Kᵀ) · V` for every query row of every sequence,
/// on rayon's pool. See [`paged_attention_with`].
pub fn paged_attention<T: KvElement>(
    shape: AttentionShape,
    q: &[f32],
    key_cache: &[T],
    value_cache: &[T],
    seqs: &[SeqQueries<'_>],
    out: &mut [f32],
) {
    paged_attention_with(&rayon_for, shape, q, key_cache, value_cache, seqs, out)
}

/// Computes `out[row, head, :] = softmax(q · Kᵀ) · V` for every query row of every sequence,
/// spreading rows over `parallel` (so a caller can use the thread pool its other math runs
/// on, instead of two pools fighting over the cores). `q` and `out` are
/// `[rows, n_heads, head_dim]`; queries are expected pre-scaled by `1/sqrt(head_dim)`. Uses
/// a two-pass softmax over a small per-row score buffer.
///
/// Block tables must cover every visible position (`batch::BatchLayout::new` checks that
/// before a step): positions past a short table are left out of the softmax's sums.
///
/// # Panics
/// When `out` is shorter than the rows, or a block lies outside the caches.
pub fn paged_attention_with<T: KvElement>(
    parallel: ParallelFor<'_>,
    shape: AttentionShape,
    q: &[f32],
    key_cache: &[T],
    value_cache: &[T],
    seqs: &[SeqQueries<'_>],
    out: &mut [f32],
) {
    let row_len = shape.n_heads * shape.head_dim;
    // (sequence, row within it) for every output row.
    let mut owners = Vec::with_capacity(out.len() / row_len.max(1));
    for (s, seq) in seqs.iter().enumerate() {
        for i in 0..seq.len {
            owners.push((s, i));
        }
    }
    assert!(
        out.len() >= owners.len() * row_len,
        "output too short for {} rows",
        owners.len()
    );
    let out_addr = out.as_mut_ptr() as usize;
    parallel(owners.len(), &|rows: std::ops::Range<usize>| {
        for r in rows {
            // Indexing first keeps `r` below the number of rows `out` was checked to hold.
            let (s, i) = owners[r];
            // SAFETY: `out` holds every row (asserted above), and the executor hands out
            // disjoint ranges, so each row slice is written by exactly one thread while `out`
            // stays mutably borrowed by this function.
            let out_row = unsafe {
                std::slice::from_raw_parts_mut((out_addr as *mut f32).add(r * row_len), row_len)
            };
            attend_row(shape, q, key_cache, value_cache, &seqs[s], i, out_row);
        }
    });
}

/// One query row (all heads) of one sequence. Walks the cached rows in position order, each
/// key and value row read once, whole (all KV heads: a block's rows are one contiguous run of
/// memory, which the prefetcher streams), for every query head; scores are kept in a small
/// buffer and the softmax is taken over the whole buffer (two passes, one `exp` per score).
fn attend_row<T: KvElement>(
    shape: AttentionShape,
    q: &[f32],
    key_cache: &[T],
    value_cache: &[T],
    seq: &SeqQueries<'_>,
    i: usize,
    out_row: &mut [f32],
) {
    let hd = shape.head_dim;
    let row_len = shape.n_heads * hd;
    let group = shape.n_heads / shape.n_kv_heads;
    let kv_row = shape.n_kv_heads * hd;
    let q_row = &q[(seq.row + i) * row_len..(seq.row + i + 1) * row_len];
    let visible = seq.start + i + 1;
    let first = shape.first_visible(visible);
    let seen = visible - first;
    let bs = shape.block_size;
    // Positions come block by block: within a block they are contiguous, so the block table
    // is read once per block instead of dividing for every position. Each run is (index of
    // its first position among the seen ones, its first cache value, its length).
    let runs = || {
        (first / bs..visible.div_ceil(bs)).map_while(move |b| {
            let block = *seq.block_table.get(b)? as usize;
            let lo = (b * bs).max(first);
            let hi = ((b + 1) * bs).min(visible);
            Some((lo - first, (block * bs + lo - b * bs) * kv_row, hi - lo))
        })
    };
    // scores[head * seen + position - first]
    let mut scores = vec![0.0f32; shape.n_heads * seen];
    // A block's key (then value) rows, converted once for all the heads.
    let mut block_buf = vec![0.0f32; bs * kv_row];
    for (first, base, n) in runs() {
        let keys = T::read(&key_cache[base..][..n * kv_row], &mut block_buf);
        for (h, qh) in q_row.chunks_exact(hd).enumerate() {
            let out = &mut scores[h * seen + first..][..n];
            block_scores(qh, keys, kv_row, (h / group) * hd, out);
        }
    }
    for s in scores.chunks_exact_mut(seen) {
        let max = max_lanes(s);
        let inv = 1.0 / exp_shifted_sum(s, max);
        s.iter_mut().for_each(|x| *x *= inv);
    }
    out_row.fill(0.0);
    // Each head sums over a block's value rows with its output in registers (not read and
    // written back for every position).
    for (first, base, n) in runs() {
        let values = T::read(&value_cache[base..][..n * kv_row], &mut block_buf);
        for (h, o) in out_row.chunks_exact_mut(hd).enumerate() {
            let weights = &scores[h * seen + first..][..n];
            weighted_sum(weights, values, kv_row, (h / group) * hd, o);
        }
    }
}

/// `out[j] = q · rows[j * stride + offset..][..q.len()]` for every `j` of `out`.
fn block_scores(q: &[f32], rows: &[f32], stride: usize, offset: usize, out: &mut [f32]) {
    let hd = q.len();
    let mut done = 0;
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if hd.is_multiple_of(8) {
        while done + 8 <= out.len() {
            // SAFETY: the features are enabled at compile time; the 8 rows lie inside `rows`
            // (the slice indexing checks it) and `out` has 8 places from `done`.
            unsafe {
                let keys: [&[f32]; 8] =
                    std::array::from_fn(|i| &rows[(done + i) * stride + offset..][..hd]);
                avx2::dots8(q, keys, &mut out[done..done + 8]);
            }
            done += 8;
        }
    }
    for (j, o) in out.iter_mut().enumerate().skip(done) {
        *o = dot(q, &rows[j * stride + offset..][..hd]);
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use core::arch::x86_64::*;

    /// `out[i] = q · keys[i]` for 8 key rows as long as `q` (a multiple of 8): eight 8-wide
    /// accumulators, reduced together by a tree of horizontal adds (not one by one).
    ///
    /// # Safety
    /// Needs AVX2 and FMA; every key row as long as `q`; `out` at least 8 long.
    pub unsafe fn dots8(q: &[f32], keys: [&[f32]; 8], out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for d in (0..q.len()).step_by(8) {
            let qv = _mm256_loadu_ps(q.as_ptr().add(d));
            for (a, k) in acc.iter_mut().zip(&keys) {
                *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(d)), *a);
            }
        }
        // Pairs, then quads: lane i of each 128-bit half ends up holding part of dot i.
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        let lo = _mm256_hadd_ps(h01, h23); // [d0 d1 d2 d3 | d0' d1' d2' d3']
        let hi = _mm256_hadd_ps(h45, h67); // [d4 d5 d6 d7 | d4' d5' d6' d7']
        let sums = _mm256_add_ps(
            _mm256_permute2f128_ps(lo, hi, 0x20),
            _mm256_permute2f128_ps(lo, hi, 0x31),
        );
        _mm256_storeu_ps(out.as_mut_ptr(), sums);
    }
}

/// `out += Σ_j weights[j] * rows[j * stride + offset..][..out.len()]`, in chunks of 64 outputs
/// kept in registers across all the rows.
fn weighted_sum(weights: &[f32], rows: &[f32], stride: usize, offset: usize, out: &mut [f32]) {
    const CHUNK: usize = 64;
    let (chunks, rest) = out.as_chunks_mut::<CHUNK>();
    for (c, o) in chunks.iter_mut().enumerate() {
        let mut acc = *o;
        for (j, w) in weights.iter().enumerate() {
            let v = &rows[j * stride + offset + c * CHUNK..][..CHUNK];
            for t in 0..CHUNK {
                acc[t] = v[t].mul_add(*w, acc[t]);
            }
        }
        *o = acc;
    }
    let done = chunks.len() * CHUNK;
    for (j, w) in weights.iter().enumerate() {
        axpy(*w, &rows[j * stride + offset + done..][..rest.len()], rest);
    }
}

/// `out += w * v`.
#[inline]
fn axpy(w: f32, v: &[f32], out: &mut [f32]) {
    let (oc, or) = out.as_chunks_mut::<8>();
    let (vc, vr) = v.as_chunks::<8>();
    for (o, v) in oc.iter_mut().zip(vc) {
        for j in 0..8 {
            o[j] = v[j].mul_add(w, o[j]);
        }
    }
    for (o, v) in or.iter_mut().zip(vr) {
        *o += w * v;
    }
}

/// Dot product with eight independent accumulators (vectorizes to 8-wide FMAs).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for j in 0..8 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward attention over contiguous keys/values, the textbook way.
    fn naive(
        q: &[f32],
        keys: &[Vec<f32>],
        values: &[Vec<f32>],
        shape: AttentionShape,
        start: usize,
        n: usize,
    ) -> Vec<f32> {
        let hd = shape.head_dim;
        let group = shape.n_heads / shape.n_kv_heads;
        let mut out = vec![0.0; n * shape.n_heads * hd];
        for i in 0..n {
            for h in 0..shape.n_heads {
                let kvh = h / group;
                let qh = &q[(i * shape.n_heads + h) * hd..][..hd];
                let visible = start + i + 1;
                let first = shape.first_visible(visible);
                let scores: Vec<f32> = (first..visible)
                    .map(|p| {
                        qh.iter()
                            .zip(&keys[p][kvh * hd..][..hd])
                            .map(|(a, b)| a * b)
                            .sum()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = exps.iter().sum();
                for d in 0..hd {
                    out[(i * shape.n_heads + h) * hd + d] = (first..visible)
                        .map(|p| exps[p - first] / total * values[p][kvh * hd + d])
                        .sum();
                }
            }
        }
        out
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    const SMALL: AttentionShape = AttentionShape {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 8,
        block_size: 4,
        window: None,
    };
    /// Long enough runs of positions for the 8-at-a-time score path, with tails.
    const WIDE: AttentionShape = AttentionShape {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 64,
        block_size: 16,
        window: None,
    };

    #[test]
    fn matches_naive_attention_with_scattered_blocks_and_gqa() {
        check_against_naive::<f32>(SMALL, |x| x, |x| x);
        check_against_naive::<f32>(WIDE, |x| x, |x| x);
    }

    #[test]
    fn a_sliding_window_hides_older_positions() {
        // Windows inside a block, across block edges, wider than a sequence, and of one.
        for window in [1, 3, SMALL.block_size, SMALL.block_size + 1, 100] {
            let small = AttentionShape {
                window: Some(window),
                ..SMALL
            };
            check_against_naive::<f32>(small, |x| x, |x| x);
        }
        for window in [7, 16, 17, 33] {
            let wide = AttentionShape {
                window: Some(window),
                ..WIDE
            };
            check_against_naive::<f32>(wide, |x| x, |x| x);
        }
    }

    #[test]
    fn first_visible_counts_the_window_with_the_query_itself() {
        let shape = AttentionShape {
            window: Some(4),
            ..SMALL
        };
        assert_eq!(shape.first_visible(3), 0);
        assert_eq!(shape.first_visible(4), 0);
        assert_eq!(shape.first_visible(10), 6);
        assert_eq!(SMALL.first_visible(10), 0);
    }

    #[test]
    fn an_f16_cache_matches_naive_attention_on_the_rounded_values() {
        check_against_naive::<half::f16>(SMALL, half::f16::from_f32, half::f16::to_f32);
        check_against_naive::<half::f16>(WIDE, half::f16::from_f32, half::f16::to_f32);
    }

    /// Attention over a cache of `T` against the naive version on the values as `T` holds them.
    fn check_against_naive<T: KvElement>(
        shape: AttentionShape,
        to: fn(f32) -> T,
        from: fn(T) -> f32,
    ) {
        let bs = shape.block_size;
        let kv_row = shape.n_kv_heads * shape.head_dim;
        let num_blocks = 16;
        let mut seed = 7;
        let mut key_cache = vec![T::default(); num_blocks * shape.block_size * kv_row];
        let mut value_cache = key_cache.clone();
        // Two sequences: one decoding its last position, one prefilling its last 5 tokens.
        let tables: [Vec<u32>; 2] = [vec![5, 1, 12], vec![3, 9]];
        let lens = [2 * bs + 2, bs + 3];
        let mut keys: Vec<Vec<Vec<f32>>> = vec![Vec::new(), Vec::new()];
        let mut values = keys.clone();
        for s in 0..2 {
            for p in 0..lens[s] {
                let k: Vec<T> = (0..kv_row).map(|_| to(lcg(&mut seed) * 4.0)).collect();
                let v: Vec<T> = (0..kv_row).map(|_| to(lcg(&mut seed))).collect();
                let block = tables[s][p / shape.block_size] as usize;
                let off = (block * shape.block_size + p % shape.block_size) * kv_row;
                key_cache[off..off + kv_row].copy_from_slice(&k);
                value_cache[off..off + kv_row].copy_from_slice(&v);
                let (k, v): (Vec<f32>, Vec<f32>) = (
                    k.into_iter().map(from).collect(),
                    v.into_iter().map(from).collect(),
                );
                keys[s].push(k);
                values[s].push(v);
            }
        }
        let row = shape.n_heads * shape.head_dim;
        let q: Vec<f32> = (0..6 * row).map(|_| lcg(&mut seed)).collect();
        let seqs = [
            SeqQueries {
                block_table: &tables[0],
                row: 0,
                len: 1,
                start: lens[0] - 1,
            },
            SeqQueries {
                block_table: &tables[1],
                row: 1,
                len: 5,
                start: lens[1] - 5,
            },
        ];
        let mut out = vec![0.0; 6 * row];
        paged_attention(shape, &q, &key_cache, &value_cache, &seqs, &mut out);
        let want0 = naive(&q[..row], &keys[0], &values[0], shape, lens[0] - 1, 1);
        let want1 = naive(&q[row..], &keys[1], &values[1], shape, lens[1] - 5, 5);
        let want: Vec<f32> = want0.into_iter().chain(want1).collect();
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
    }
}
