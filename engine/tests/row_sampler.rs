//! The step's row sampler on the CPU device (the code a GPU step runs, with the CPU
//! reference in place of the kernel) against the host: rows picked out of a step's logits in
//! any order, edits applied with tensor ops, masks, and what comes back per row.

use candle_core::{Device, Tensor};
use migserve_engine::row_sampler::{sample_rows, RowRequest};
use migserve_engine::sampling::{apply_edits, SamplingParams};
use migserve_kernels::cpu::sample::{choose, RowSampling, NO_MASK};
use rand::{Rng, SeedableRng};

fn serial(n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    f(0..n)
}

/// First index of the largest value, written here rather than taken from the crates.
fn first_max(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in row.iter().enumerate() {
        if l > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn rows_edits_and_masks_give_what_the_host_computes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let (step_rows, vocab) = (12, 49_152);
    let host: Vec<f32> = (0..step_rows * vocab)
        .map(|_| rng.random_range(-6.0f32..6.0))
        .collect();
    let logits = Tensor::from_vec(host.clone(), (step_rows, vocab), &Device::Cpu).unwrap();
    let history: Vec<u32> = (0..40).map(|_| rng.random_range(0..vocab as u32)).collect();
    let prompt_len = 25;
    // Each case: its row (out of order, one row twice), its parameters, and a mask or not.
    let greedy = SamplingParams::greedy();
    let penalized = SamplingParams {
        repetition_penalty: Some(1.3),
        presence_penalty: 0.4,
        frequency_penalty: 0.2,
        logit_bias: vec![(history[30], 3.0), (7, 25.0), (9, -5.0)],
        ..SamplingParams::greedy()
    };
    let min_tokens = SamplingParams {
        min_tokens: 30,
        end_tokens: vec![first_max(&host[..vocab])],
        ..SamplingParams::greedy()
    };
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: Some(50),
        top_p: Some(0.9),
        seed: Some(5),
        repetition_penalty: Some(1.1),
        ..SamplingParams::default()
    };
    let mask: Vec<u32> = (0..vocab.div_ceil(32))
        .map(|_| rng.random::<u32>())
        .collect();
    let cases: Vec<(usize, &SamplingParams, bool)> = vec![
        (5, &greedy, false),
        (0, &min_tokens, false),
        (3, &penalized, false),
        (3, &greedy, true),
        (11, &sampled, false),
        (7, &sampled, true),
        (2, &penalized, true),
    ];
    let edits: Vec<_> = cases
        .iter()
        .map(|(_, p, _)| p.edits(&history, prompt_len))
        .collect();
    let rows: Vec<RowRequest<'_>> = cases
        .iter()
        .zip(&edits)
        .enumerate()
        .map(|(i, ((row, p, masked), edits))| RowRequest {
            row: *row,
            sampling: RowSampling {
                temperature: p.temperature,
                top_k: p.top_k.unwrap_or(0) as u32,
                top_p: p.top_p.unwrap_or(1.0),
                seed: 77,
                draw: i as u64,
                mask_row: NO_MASK,
            },
            edits,
            mask: masked.then_some(mask.as_slice()),
        })
        .collect();
    let got = sample_rows(&logits, &rows, &serial).unwrap();
    assert_eq!(got.len(), cases.len());
    for ((req, (row, params, masked)), choice) in rows.iter().zip(&cases).zip(&got) {
        let raw = &host[row * vocab..(row + 1) * vocab];
        let mut edited = raw.to_vec();
        apply_edits(params, &mut edited, &history, prompt_len);
        let allowed = |t: usize| !masked || (mask[t / 32] >> (t % 32)) & 1 == 1;
        if *masked {
            for (t, l) in edited.iter_mut().enumerate() {
                if !allowed(t) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let want = match params.is_greedy() {
            true => first_max(&edited),
            false => choose(&edited, None, &req.sampling),
        };
        assert_eq!(
            choice.token, want,
            "row {row} ({params:?}, masked {masked})"
        );
        assert!(allowed(choice.token as usize));
        let norm = raw.iter().map(|l| (*l as f64).exp()).sum::<f64>().ln();
        assert!((choice.log_norm as f64 - norm).abs() < 1e-3);
        let logprob = raw[choice.token as usize] as f64 - norm;
        assert!((choice.logprob as f64 - logprob).abs() < 1e-3);
    }
    // The edits moved the choice where they should: the +25 bias wins the penalized row, the
    // masked `min_tokens` row does not take its row's most likely token.
    assert_eq!(got[2].token, 7);
    assert_ne!(got[1].token, first_max(&host[..vocab]));
}

#[test]
fn a_row_outside_the_step_is_an_error_not_a_panic() {
    let logits = Tensor::zeros((2, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    let rows = [RowRequest {
        row: 2,
        sampling: RowSampling::greedy(),
        edits: &[],
        mask: None,
    }];
    assert!(sample_rows(&logits, &rows, &serial).is_err());
    assert!(sample_rows(&logits, &[], &serial).unwrap().is_empty());
}
