//! The 8-bit matmul against its scalar reference (bit for bit) and against f32 math.

use migserve_kernels::cpu::parallel::rayon_for;
use migserve_kernels::cpu::q8_matmul::{
    matmul, reference, simd_available, PackedQ8, QuantizedRows, BLOCK,
};
use rand::{Rng, SeedableRng};

fn random(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn run(w: &PackedQ8, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * w.n()];
    matmul(&rayon_for, w, x, rows, &mut out);
    out
}

#[test]
fn simd_kernel_equals_the_scalar_reference_bit_for_bit() {
    if !simd_available() {
        eprintln!("note: no AVX-512 VNNI on this CPU: matmul runs the reference itself");
    }
    let seed = rand::rng().random::<u64>();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Output widths that end in a partial tile and an odd tile count; row counts that leave
    // partial row groups and cross a work unit's rows.
    for (n, k) in [(576, 576), (960, 576), (40, 64), (24, 1536), (16, 32)] {
        let w = PackedQ8::quantize(&random(&mut rng, n * k), n, k).unwrap();
        for rows in [1, 2, 3, 5, 16, 67, 130] {
            let x = random(&mut rng, rows * k);
            let got = run(&w, &x, rows);
            let mut want = vec![0.0; rows * n];
            reference::matmul(&w, &reference::quantize(&x, rows, k), &mut want);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "n {n} k {k} rows {rows}: SIMD differs from the reference"
            );
        }
    }
}

#[test]
fn activations_quantize_the_same_with_or_without_simd() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let k = 576;
    let mut x = random(&mut rng, 5 * k);
    // A block of zeros, one with ties (x.5 after scaling) and one with a single large value.
    x[..32].fill(0.0);
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = if i == 0 { 127.0 } else { (i as f32) + 0.5 };
    }
    x[64] = 1e6;
    let (simd, scalar) = (
        QuantizedRows::quantize(&x, 5, k),
        reference::quantize(&x, 5, k),
    );
    // Compared through the kernel: any difference in values, scales or offsets shows.
    let w = PackedQ8::quantize(&random(&mut rng, 48 * k), 48, k).unwrap();
    let (mut a, mut b) = (vec![0.0; 5 * 48], vec![0.0; 5 * 48]);
    reference::matmul(&w, &simd, &mut a);
    reference::matmul(&w, &scalar, &mut b);
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn a_row_gets_the_same_result_alone_or_in_a_batch() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (n, k) = (200, 192);
    let w = PackedQ8::quantize(&random(&mut rng, n * k), n, k).unwrap();
    let rows = 13;
    let x = random(&mut rng, rows * k);
    let batch = run(&w, &x, rows);
    for r in 0..rows {
        let alone = run(&w, &x[r * k..(r + 1) * k], 1);
        assert_eq!(
            alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            batch[r * n..(r + 1) * n]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "row {r}"
        );
    }
}

#[test]
fn results_are_close_to_f32_math() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (n, k, rows) = (64, 1536, 4);
    let wf = random(&mut rng, n * k);
    let x = random(&mut rng, rows * k);
    let got = run(&PackedQ8::quantize(&wf, n, k).unwrap(), &x, rows);
    // Two 8-bit roundings per product over 1536 terms: an error of ~0.075 (one standard
    // deviation) against sums spread over ~13; a wrong index or scale would be off by ~10.
    let mut squared = 0.0f64;
    for r in 0..rows {
        for c in 0..n {
            let exact: f32 = (0..k).map(|i| x[r * k + i] * wf[c * k + i]).sum();
            let err = (got[r * n + c] - exact).abs();
            assert!(err < 0.4, "row {r} col {c}: {} vs {exact}", got[r * n + c]);
            squared += (err as f64).powi(2);
        }
    }
    let rms = (squared / (rows * n) as f64).sqrt();
    assert!(rms < 0.12, "rms error {rms}");
}

#[test]
fn values_on_the_q8_grid_are_kept_exactly() {
    // Weights that are already scale × integer (as dequantized from a Q8_0 file) with a full
    // 127 in each block: an all-ones activation reads back each column's sum exactly.
    let (n, k) = (3, 64);
    let scale = 0.015625f32; // exact in f16
    let w: Vec<f32> = (0..n * k)
        .map(|i| if i % BLOCK == 0 { 127.0 } else { ((i * 37) % 255) as f32 - 127.0 } * scale)
        .collect();
    let packed = PackedQ8::quantize(&w, n, k).unwrap();
    let got = run(&packed, &vec![1.0; k], 1);
    for c in 0..n {
        let want: f32 = w[c * k..(c + 1) * k].iter().sum();
        assert_eq!(got[c], want, "column {c}");
    }
}

#[test]
fn widths_off_the_block_grid_are_refused() {
    assert!(PackedQ8::quantize(&[0.0; 40], 2, 20).is_err());
    assert!(PackedQ8::quantize(&[0.0; 40], 2, 32).is_err());
}

#[test]
fn non_finite_and_tiny_activations_quantize_the_same_with_or_without_simd() {
    let k = 128;
    let mut x = vec![0.25f32; 4 * k];
    x[3] = f32::NAN; // block 0
    x[40] = f32::INFINITY; // block 1
    x[70] = f32::NEG_INFINITY; // block 2
    for v in &mut x[96..128] {
        *v = 1e-39; // block 3: 1 / scale is not finite
    }
    x[200] = -3.0e38; // a huge but finite value
    let simd = QuantizedRows::quantize(&x, 4, k);
    let scalar = reference::quantize(&x, 4, k);
    let w = PackedQ8::quantize(&vec![0.5; 16 * k], 16, k).unwrap();
    let (mut a, mut b) = (vec![0.0; 4 * 16], vec![0.0; 4 * 16]);
    reference::matmul(&w, &simd, &mut a);
    reference::matmul(&w, &scalar, &mut b);
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{i}: {a} vs {b}"
        );
    }
    // A row with a NaN or an infinity comes out NaN, as f32 math would; the others do not.
    assert!(a[..16].iter().all(|v| v.is_nan()));
    assert!(a[16..].iter().all(|v| v.is_finite()));
}

#[test]
fn packing_in_parallel_or_row_by_row_gives_the_same_tiles() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (n, k) in [(40, 64), (960, 576), (16, 32), (17, 96)] {
        let mut w = random(&mut rng, n * k);
        w[5] = f32::NAN; // a block that is not finite: zeros and a NaN scale
        w[k + 1] = 4.0; // a block whose largest value is far from the others
        let serial = PackedQ8::quantize(&w, n, k).unwrap();
        let parallel = PackedQ8::quantize_with(&rayon_for, &w, n, k).unwrap();
        let rows = PackedQ8::quantize_rows_with(&rayon_for, n, k, &|r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        })
        .unwrap();
        for t in 0..serial.tiles() {
            for (i, (a, (b, c))) in serial
                .tile(t)
                .iter()
                .zip(parallel.tile(t).iter().zip(rows.tile(t)))
                .enumerate()
            {
                assert!(a.qs == b.qs && a.qs == c.qs, "{n}x{k} tile {t} block {i}");
                assert!(a.scales == b.scales && a.scales == c.scales);
            }
        }
        // Independently: each value is the block's value over its scale (the largest
        // magnitude maps to 127), rounded half to even, stored plus 128.
        let (col, b) = (1, 0);
        let block = &w[col * k + b * BLOCK..][..BLOCK];
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tile = &serial.tile(col / 16)[b];
        for (i, v) in block.iter().enumerate() {
            let want = (*v / (amax / 127.0)).round_ties_even() as i32 + 128;
            let got = tile.qs[((i / 4) * 16 + col % 16) * 4 + i % 4] as i32;
            assert!((want - got).abs() <= 1, "value {i}: {got} vs {want}");
        }
        // Value 1 of column 1 is 4.0, the block's largest: 127, stored as 255 (group 0,
        // column 1, place 1).
        let (group, column, place) = (0, 1, 1);
        assert_eq!(tile.qs[(group * 16 + column) * 4 + place], 255);
    }
}
