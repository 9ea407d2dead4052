//! The CPU paged-attention kernel on a decode step's shape: SmolLM2-135M's heads, 16
//! sequences of a given length, a cache as large as a worker's default, f16 or f32 values.
//! Runs every layer once per step (so the cache is read as a real step reads it, mostly
//! from memory) and prints the median step time.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use half::f16;
use migserve_kernels::cpu::kv_element::KvElement;
use migserve_kernels::cpu::paged_attention::{paged_attention_with, AttentionShape, SeqQueries};

#[derive(Parser)]
struct Args {
    /// Sequences decoding together.
    #[arg(long, default_value_t = 16)]
    seqs: usize,
    /// Cached positions per sequence.
    #[arg(long, default_value_t = 100)]
    len: usize,
    /// Steps timed.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Keep the cache in f32 instead of f16.
    #[arg(long)]
    f32: bool,
}

const LAYERS: usize = 30;
const SHAPE: AttentionShape = AttentionShape {
    n_heads: 9,
    n_kv_heads: 3,
    head_dim: 64,
    block_size: 16,
    window: None,
};

fn run<T: KvElement>(args: &Args) -> f64 {
    let kv_row = SHAPE.n_kv_heads * SHAPE.head_dim;
    let blocks = 1024; // 16384 positions, the worker's default cache
    let values: Vec<f32> = (0..blocks * SHAPE.block_size * kv_row)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.001 - 0.5)
        .collect();
    let mut cache = vec![T::default(); values.len()];
    T::write(&values, &mut cache);
    let layers: Vec<Vec<T>> = (0..LAYERS).map(|_| cache.clone()).collect();
    // Blocks handed out round-robin, as sequences that grew together get them.
    let per_seq = args.len.div_ceil(SHAPE.block_size);
    let tables: Vec<Vec<u32>> = (0..args.seqs)
        .map(|s| (0..per_seq).map(|b| (b * args.seqs + s) as u32).collect())
        .collect();
    let seqs: Vec<SeqQueries<'_>> = tables
        .iter()
        .enumerate()
        .map(|(s, t)| SeqQueries {
            block_table: t,
            row: s,
            len: 1,
            start: args.len - 1,
        })
        .collect();
    let row = SHAPE.n_heads * SHAPE.head_dim;
    let q: Vec<f32> = (0..args.seqs * row)
        .map(|i| (i % 13) as f32 * 0.01)
        .collect();
    let mut out = vec![0.0; args.seqs * row];
    let pool = |n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
        candle_core::utils::barrier_pool().execute_chunked(n, f)
    };
    let mut times = Vec::new();
    for _ in 0..args.steps {
        let t = Instant::now();
        for layer in &layers {
            paged_attention_with(&pool, SHAPE, &q, layer, layer, &seqs, &mut out);
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ms = if args.f32 {
        run::<f32>(&args)
    } else {
        run::<f16>(&args)
    };
    println!(
        "{} sequences x {} positions, {LAYERS} layers, {} cache: {ms:.3} ms per step",
        args.seqs,
        args.len,
        if args.f32 { "f32" } else { "f16" }
    );
    Ok(())
}
