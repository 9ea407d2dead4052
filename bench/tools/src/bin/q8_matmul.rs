//! The 8-bit matmul of `migserve-kernels` beside candle's Q8_0 `QMatMul` (the weights padded
//! to candle's 256-wide tiles, as the worker used them before), on SmolLM2-135M's layer shapes,
//! at several batch sizes, both on candle's thread pool. Rounds alternate between the two so
//! machine noise hits both alike; medians are reported, and the time of one whole forward
//! step's matmuls (30 layers plus the output layer).

use std::time::Instant;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use clap::Parser;
use migserve_kernels::cpu::q8_matmul::{self, PackedQ8};

#[derive(Parser)]
struct Args {
    /// Batch sizes (rows per call).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    rows: Vec<usize>,
    /// Timed calls per shape, batch size and kernel.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Also time whole steps: every layer's own weights (143 MB in all, more than the
    /// caches), called in a forward pass's order, as a worker streams them.
    #[arg(long)]
    step: bool,
}

/// (name, output width, input width, times per forward step)
const SHAPES: [(&str, usize, usize, usize); 5] = [
    ("qkv", 960, 576, 30),
    ("attn_output", 576, 576, 30),
    ("gate_up", 3072, 576, 30),
    ("ffn_down", 576, 1536, 30),
    ("output", 49152, 576, 1),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One random `[n, k]` weight matrix for both kernels: candle's Q8_0 (input padded by the
/// returned number of zero columns to its 256-wide tiles) and ours.
fn random_weights(n: usize, k: usize) -> Result<(QMatMul, PackedQ8, usize)> {
    let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?;
    let pad = k.next_multiple_of(256) - k;
    let candle = QMatMul::from_arc(std::sync::Arc::new(QTensor::quantize(
        &w.pad_with_zeros(1, 0, pad)?,
        GgmlDType::Q8_0,
    )?))?;
    let packed = PackedQ8::quantize(&w.flatten_all()?.to_vec1::<f32>()?, n, k)?;
    Ok((candle, packed, pad))
}

/// Every matmul of a forward step, each with its own weights, at each batch size.
fn whole_steps(args: &Args) -> Result<()> {
    let cpu = Device::Cpu;
    let mut layers = Vec::new();
    for (_, n, k, per_step) in SHAPES {
        for _ in 0..per_step {
            layers.push(random_weights(n, k)?);
        }
    }
    let pool = |items: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
        candle_core::utils::barrier_pool().execute_chunked(items, f)
    };
    println!();
    println!(
        "whole steps ({} matmuls with their own weights):",
        layers.len()
    );
    println!("| rows | candle ms per step | migserve ms per step | candle / migserve |");
    println!("|---:|---:|---:|---:|");
    for &rows in &args.rows {
        let (mut tc, mut tm) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let t = Instant::now();
            for (candle, packed, pad) in &layers {
                let x = Tensor::zeros((rows, packed.k() + pad), candle_core::DType::F32, &cpu)?;
                drop(candle.forward(&x)?);
            }
            tc.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            for (_, packed, _) in &layers {
                let x = vec![0.5f32; rows * packed.k()];
                let mut out = vec![0f32; rows * packed.n()];
                q8_matmul::matmul(&pool, packed, &x, rows, &mut out);
            }
            tm.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (c, m) = (median(tc), median(tm));
        println!("| {rows} | {c:.2} | {m:.2} | {:.2}x |", c / m);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cpu = Device::Cpu;
    println!(
        "simd kernel: {}",
        if q8_matmul::simd_available() {
            "AVX-512 VNNI"
        } else {
            "none (scalar reference)"
        }
    );
    println!("| shape | n x k | rows | candle µs | migserve µs | candle / migserve |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut step = vec![(0.0, 0.0); args.rows.len()];
    for (name, n, k, per_step) in SHAPES {
        let (candle, packed, pad) = random_weights(n, k)?;
        let pool = |items: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
            candle_core::utils::barrier_pool().execute_chunked(items, f)
        };
        for (ri, &rows) in args.rows.iter().enumerate() {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &cpu)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; rows * n];
            let (mut tc, mut tm) = (Vec::new(), Vec::new());
            for _ in 0..args.calls {
                let t = Instant::now();
                let y = candle.forward(&x.pad_with_zeros(1, 0, pad)?)?;
                tc.push(t.elapsed().as_secs_f64() * 1e6);
                drop(y);
                let t = Instant::now();
                q8_matmul::matmul(&pool, &packed, &xv, rows, &mut out);
                tm.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let (c, m) = (median(tc), median(tm));
            step[ri].0 += c * per_step as f64;
            step[ri].1 += m * per_step as f64;
            println!(
                "| {name} | {n} x {k} | {rows} | {c:.1} | {m:.1} | {:.2}x |",
                c / m
            );
        }
    }
    if args.step {
        whole_steps(&args)?;
    }
    println!();
    println!("| rows | candle ms per step | migserve ms per step | candle / migserve |");
    println!("|---:|---:|---:|---:|");
    for (ri, rows) in args.rows.iter().enumerate() {
        let (c, m) = step[ri];
        println!(
            "| {rows} | {:.2} | {:.2} | {:.2}x |",
            c / 1e3,
            m / 1e3,
            c / m
        );
    }
    Ok(())
}
