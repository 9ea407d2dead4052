//! The step's row sampler on the CPU device, by part: a `[rows][49,152]` logits tensor
//! (SmolLM2's vocabulary, logits spread like a model's: most near 0, a few high), sampled
//! greedy, with temperature + top-k + top-p, and with a frequency penalty on 64 output
//! tokens (the edit path); beside it the row sampler alone on host rows and the copy of the
//! rows to the host that the step no longer makes. Prints the median time per call.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;
use migserve_engine::row_sampler::{sample_rows, RowRequest};
use migserve_engine::sampling::SamplingParams;
use migserve_kernels::cpu::sample::{sample_row, RowSampling};

#[derive(Parser)]
struct Args {
    /// Rows sampled together.
    #[arg(long, default_value_t = 16)]
    rows: usize,
    /// Calls timed per case.
    #[arg(long, default_value_t = 200)]
    calls: usize,
}

const VOCAB: usize = 49_152;

fn serial(n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    f(0..n)
}

fn median_us(calls: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    // A cheap deterministic spread: most logits in [-4, 4], every 997th one high.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let host: Vec<f32> = (0..args.rows * VOCAB)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = (x >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0;
            if i % 997 == 0 {
                base + 14.0
            } else {
                base
            }
        })
        .collect();
    let logits = Tensor::from_vec(host.clone(), (args.rows, VOCAB), &Device::Cpu)?;
    let history: Vec<u32> = (0..192).map(|i| (i * 7919) % VOCAB as u32).collect();
    let sampled = RowSampling {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.9,
        seed: 1,
        draw: 0,
        mask_row: u32::MAX,
    };
    let penalized = SamplingParams {
        temperature: 0.8,
        top_k: Some(50),
        top_p: Some(0.9),
        frequency_penalty: 0.3,
        ..SamplingParams::default()
    };
    let edits = penalized.edits(&history, 128);
    let no_edits = Vec::new();
    let requests = |sampling: RowSampling,
                    edits: &'static [migserve_engine::sampling::LogitEdit]| {
        (0..args.rows)
            .map(|row| RowRequest {
                row,
                sampling,
                edits,
                mask: None,
            })
            .collect::<Vec<_>>()
    };
    let edits: &'static [_] = Box::leak(edits.into_boxed_slice());
    let no_edits: &'static [_] = Box::leak(no_edits.into_boxed_slice());
    println!(
        "{} rows of {VOCAB} logits, median of {} calls:",
        args.rows, args.calls
    );
    for (name, reqs) in [
        ("greedy", requests(RowSampling::greedy(), no_edits)),
        (
            "temperature 0.8, top-k 50, top-p 0.9",
            requests(sampled, no_edits),
        ),
        (
            "the same + frequency penalty (edits)",
            requests(sampled, edits),
        ),
    ] {
        let us = median_us(args.calls, || {
            sample_rows(&logits, &reqs, &serial).expect("sample");
        });
        println!("  sample_rows, {name}: {us:.0} µs");
    }
    for (name, p) in [("greedy", RowSampling::greedy()), ("sampled", sampled)] {
        let us = median_us(args.calls, || {
            for r in 0..args.rows {
                let row = &host[r * VOCAB..(r + 1) * VOCAB];
                std::hint::black_box(sample_row(row, row, None, &p));
            }
        });
        println!("  sample_row on host rows, {name}: {us:.0} µs");
    }
    let us = median_us(args.calls, || {
        for r in 0..args.rows {
            let row = &host[r * VOCAB..(r + 1) * VOCAB];
            std::hint::black_box(migserve_kernels::cpu::exp::log_sum_exp(row));
        }
    });
    println!("  of which the log-softmax normalizers: {us:.0} µs");
    let us = median_us(args.calls, || {
        for r in 0..args.rows {
            let row = &host[r * VOCAB..(r + 1) * VOCAB];
            std::hint::black_box(migserve_kernels::cpu::sample::choose(
                row,
                None,
                &RowSampling::greedy(),
            ));
        }
    });
    println!("  of which the greedy choice: {us:.0} µs");
    let us = median_us(args.calls, || {
        std::hint::black_box(logits.to_vec2::<f32>().expect("copy"));
    });
    println!("  copying the rows to the host (what the step no longer does): {us:.0} µs");
    Ok(())
}
