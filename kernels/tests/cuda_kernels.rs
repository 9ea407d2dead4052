//! Each CUDA kernel against its CPU reference on fresh random inputs. Ignored unless asked for
//! (`--include-ignored`), so a machine without a GPU counts them as not run; asked for where
//! they still cannot run (no `cuda` feature, no visible GPU), each prints why it was skipped.

#[cfg(not(feature = "cuda"))]
#[test]
#[ignore = "needs an NVIDIA GPU and the cuda build: run by scripts/check-cuda-build.sh (on a GPU) and bench/gpu/validate.sh"]
fn cuda_kernels_match_cpu_references() {
    eprintln!(
        "skipped: migserve-kernels built without the `cuda` feature (no GPU kernels to test)"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
#[ignore = "needs an NVIDIA GPU and the cuda build: run by scripts/check-cuda-build.sh (on a GPU) and bench/gpu/validate.sh"]
fn cuda_sampling_matches_the_cpu_reference() {
    eprintln!(
        "skipped: migserve-kernels built without the `cuda` feature (no sampling kernel to test)"
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::Device;
    use half::bf16;
    use migserve_kernels::batch::{BatchLayout, SpanBlocks};
    use migserve_kernels::cpu::kv_write::write_rows;
    use migserve_kernels::cpu::paged_attention::{paged_attention, AttentionShape, SeqQueries};
    use migserve_kernels::cuda::{kv_write, paged_attention as gpu_attention, DeviceLayout};
    use rand::{Rng, SeedableRng};

    fn device() -> Option<CudaDevice> {
        match Device::new_cuda(0) {
            Ok(Device::Cuda(d)) => Some(d),
            Ok(_) => None,
            Err(e) => {
                let e = e.to_string();
                eprintln!(
                    "skipped: no usable CUDA device ({})",
                    e.lines().next().unwrap_or_default()
                );
                None
            }
        }
    }

    /// Random bf16 values, and the same values as f32 (what the reference computes on).
    fn random(rng: &mut impl Rng, n: usize, scale: f32) -> (Vec<bf16>, Vec<f32>) {
        let h: Vec<bf16> = (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-scale..scale)))
            .collect();
        let f = h.iter().map(|x| x.to_f32()).collect();
        (h, f)
    }

    /// Sequences of random lengths over shuffled blocks, some prefilling several rows.
    struct Case {
        shape: AttentionShape,
        tables: Vec<Vec<u32>>,
        /// (start, len) of each sequence's new tokens.
        spans: Vec<(usize, usize)>,
        num_blocks: usize,
    }

    fn case(rng: &mut impl Rng, shape: AttentionShape, n_seqs: usize) -> Case {
        let lens: Vec<usize> = (0..n_seqs).map(|_| rng.random_range(1..300)).collect();
        let blocks_needed: usize = lens.iter().map(|l| l.div_ceil(shape.block_size)).sum();
        let num_blocks = blocks_needed + 7;
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.random_range(0..=i));
        }
        let mut tables = Vec::new();
        let mut spans = Vec::new();
        for &len in &lens {
            let n = len.div_ceil(shape.block_size);
            tables.push(free.drain(..n).collect());
            // Half decode one token, half prefill a chunk ending at `len`.
            let new = if rng.random_bool(0.5) {
                1
            } else {
                rng.random_range(1..=len)
            };
            spans.push((len - new, new));
        }
        Case {
            shape,
            tables,
            spans,
            num_blocks,
        }
    }

    fn run_case(dev: &CudaDevice, dl: &mut DeviceLayout, rng: &mut impl Rng, c: &Case) {
        let s = c.shape;
        let kv_row = s.n_kv_heads * s.head_dim;
        let row_len = s.n_heads * s.head_dim;
        let cache_len = c.num_blocks * s.block_size * kv_row;
        // Positions before each span's start are already cached (random); the span's own
        // rows are written by the kernel under test.
        let (cache_k_h, mut cache_k) = random(rng, cache_len, 2.0);
        let (cache_v_h, mut cache_v) = random(rng, cache_len, 1.0);
        let spans: Vec<SpanBlocks<'_>> = c
            .tables
            .iter()
            .zip(&c.spans)
            .map(|(t, &(start, len))| SpanBlocks {
                block_table: t,
                start,
                len,
            })
            .collect();
        let layout = BatchLayout::new(&spans, s.block_size).unwrap();
        let rows = layout.slots.len();
        let (new_k_h, new_k) = random(rng, rows * kv_row, 2.0);
        let (new_v_h, new_v) = random(rng, rows * kv_row, 1.0);
        let (q_h, q) = random(rng, rows * row_len, 0.5);

        // CPU reference.
        write_rows(&new_k, &layout.slots, kv_row, &mut cache_k);
        write_rows(&new_v, &layout.slots, kv_row, &mut cache_v);
        let mut first = 0;
        let seqs: Vec<SeqQueries<'_>> = spans
            .iter()
            .map(|sp| {
                let q = SeqQueries {
                    block_table: sp.block_table,
                    row: first,
                    len: sp.len,
                    start: sp.start,
                };
                first += sp.len;
                q
            })
            .collect();
        let mut want = vec![0.0f32; rows * row_len];
        paged_attention(s, &q, &cache_k, &cache_v, &seqs, &mut want);

        // GPU.
        let stream = dev.cuda_stream();
        let mut gk = stream.clone_htod(&cache_k_h).unwrap();
        let mut gv = stream.clone_htod(&cache_v_h).unwrap();
        let nk = stream.clone_htod(&new_k_h).unwrap();
        let nv = stream.clone_htod(&new_v_h).unwrap();
        let gq = stream.clone_htod(&q_h).unwrap();
        dl.write(dev, &layout).unwrap();
        // The same step again: written in place, nothing allocated.
        let allocations = dl.allocations;
        dl.write(dev, &layout).unwrap();
        assert_eq!(
            dl.allocations, allocations,
            "a step of the same size allocated"
        );
        let dl = &*dl;
        kv_write(
            dev,
            &nk.slice(..),
            &nv.slice(..),
            &dl.slots(),
            kv_row,
            &mut gk,
            &mut gv,
        )
        .unwrap();
        let written: Vec<bf16> = stream.clone_dtoh(&gk).unwrap();
        let want_k: Vec<bf16> = cache_k.iter().map(|x| bf16::from_f32(*x)).collect();
        assert!(written == want_k, "kv_write keys differ from write_rows");
        let mut out = stream.alloc_zeros::<bf16>(rows * row_len).unwrap();
        gpu_attention(dev, s, &gq.slice(..), &gk, &gv, dl, &mut out.slice_mut(..)).unwrap();
        let got: Vec<bf16> = stream.clone_dtoh(&out).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (g, w)| m.max((g.to_f32() - w).abs()));
        // bf16 output rounding (8 bits of mantissa) on values below ~1.
        assert!(worst < 1e-2, "{s:?}: max |gpu - cpu| = {worst}");
        eprintln!("{s:?}, {rows} rows: max |gpu - cpu| = {worst:.2e}");
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU and the cuda build: run by scripts/check-cuda-build.sh (on a GPU) and bench/gpu/validate.sh"]
    fn cuda_kernels_match_cpu_references() {
        let Some(dev) = device() else { return };
        let seed: u64 = rand::random();
        eprintln!("random inputs from seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Small on purpose: the cases grow it, and the same case again must not.
        let mut dl = DeviceLayout::with_capacity(&dev, 16, 16).unwrap();
        // SmolLM2 (9/3 heads, 64), Qwen 0.5B (14/2, 64), Llama 3.2 1B (32/8, 64), and
        // head_dim 128 with 8 heads per KV head, Gemma 3 270M (4/1, 256).
        for (n_heads, n_kv_heads, head_dim) in [
            (9, 3, 64),
            (14, 2, 64),
            (32, 8, 64),
            (32, 4, 128),
            (4, 1, 256),
        ] {
            for block_size in [16, 32] {
                let shape = AttentionShape {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    block_size,
                    window: None,
                };
                let c = case(&mut rng, shape, 9);
                run_case(&dev, &mut dl, &mut rng, &c);
                // Gemma 3's sliding window (shorter than some sequences of the case).
                let windowed = AttentionShape {
                    window: Some(block_size + 3),
                    ..shape
                };
                let c = case(&mut rng, windowed, 9);
                run_case(&dev, &mut dl, &mut rng, &c);
            }
        }
    }

    /// Rows of a 151,936-token vocabulary (Qwen's), greedy and sampled with top-k / top-p /
    /// masks: greedy choices and every log-probability equal the CPU reference's; a sampled
    /// choice may differ only where the device's exp rounds a weight differently, so nearly
    /// every row must agree and each chosen token must be one the reference's filters keep.
    #[test]
    #[ignore = "needs an NVIDIA GPU and the cuda build: run by scripts/check-cuda-build.sh (on a GPU) and bench/gpu/validate.sh"]
    fn cuda_sampling_matches_the_cpu_reference() {
        use migserve_kernels::cpu::sample::{sample_row, RowSampling, NO_MASK};
        let Some(dev) = device() else { return };
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let vocab: usize = 151_936;
        let rows: usize = 96;
        let words = vocab.div_ceil(32);
        let raw: Vec<f32> = (0..rows * vocab)
            .map(|_| rng.random_range(-8.0f32..8.0))
            .collect();
        let mut edited = raw.clone();
        for r in 0..rows {
            edited[r * vocab + r * 13] += 12.0;
        }
        let mask: Vec<u32> = (0..words).map(|_| rng.random::<u32>()).collect();
        let params: Vec<RowSampling> = (0..rows)
            .map(|r| RowSampling {
                temperature: [0.0, 0.7, 1.0, 1.3][r % 4],
                top_k: [0, 0, 40, 1000][(r / 4) % 4],
                top_p: [1.0, 0.9, 0.5][(r / 16) % 3],
                seed: 1000 + r as u64,
                draw: r as u64 * 7,
                mask_row: if r % 5 == 0 { 0 } else { NO_MASK },
            })
            .collect();
        let stream = dev.cuda_stream();
        let raw_d = stream.clone_htod(&raw).unwrap();
        let edited_d = stream.clone_htod(&edited).unwrap();
        let got = migserve_kernels::cuda::sample_rows(
            &dev,
            &raw_d.slice(..),
            &edited_d.slice(..),
            vocab,
            &params,
            &mask,
            words,
        )
        .unwrap();
        let mut agree = 0;
        for (r, (p, g)) in params.iter().zip(&got).enumerate() {
            let span = r * vocab..(r + 1) * vocab;
            let m = (p.mask_row != NO_MASK).then_some(mask.as_slice());
            let want = sample_row(&raw[span.clone()], &edited[span.clone()], m, p);
            assert!(
                (g.log_norm - want.log_norm).abs() < 1e-3,
                "row {r}: log_norm {} vs {}",
                g.log_norm,
                want.log_norm
            );
            let expect_logprob = raw[r * vocab + g.token as usize] - want.log_norm;
            assert!(
                (g.logprob - expect_logprob).abs() < 1e-3,
                "row {r}: logprob"
            );
            let allowed = m.is_none_or(|m| (m[g.token as usize / 32] >> (g.token % 32)) & 1 == 1);
            assert!(allowed, "row {r}: token {} is masked", g.token);
            if p.is_greedy() {
                assert_eq!(g.token, want.token, "row {r}: greedy");
            }
            agree += usize::from(g.token == want.token);
        }
        assert!(
            agree >= rows - 2,
            "{agree} of {rows} rows chose the reference's token"
        );
        eprintln!("sampling kernel: {agree} of {rows} rows equal to the CPU reference");
    }
}
