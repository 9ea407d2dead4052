//! The row sampler (`cpu::sample`, the CUDA kernel's reference) draws from the filtered
//! softmax: the frequencies of many draws against probabilities computed here independently
//! in f64 (softmax with temperature, then top-k, then top-p over the sorted tokens).

use migserve_kernels::cpu::sample::{choose, sample_row, RowSampling, NO_MASK};
use rand::{Rng, SeedableRng};

/// Probabilities of every token after the filters, from first principles.
fn filtered_softmax(logits: &[f32], mask: Option<&[u32]>, t: f32, k: u32, p: f32) -> Vec<f64> {
    let allowed = |i: usize| mask.is_none_or(|m| (m[i / 32] >> (i % 32)) & 1 == 1);
    let mut live: Vec<(usize, f64)> = (0..logits.len())
        .filter(|&i| allowed(i) && logits[i].is_finite())
        .map(|i| (i, logits[i] as f64))
        .collect();
    live.sort_by(|a, b| b.1.total_cmp(&a.1));
    if k > 0 && (k as usize) < live.len() {
        let cut = live[k as usize - 1].1;
        live.retain(|c| c.1 >= cut);
    }
    let max = live[0].1;
    let weights: Vec<f64> = live
        .iter()
        .map(|c| ((c.1 - max) / t as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut keep = live.len();
    if p < 1.0 {
        let mut mass = 0.0;
        for (j, w) in weights.iter().enumerate() {
            mass += w / total;
            if mass >= p as f64 - 1e-12 {
                // Ties with the last kept logit stay.
                let cut = live[j].1;
                keep = live.iter().take_while(|c| c.1 >= cut).count();
                break;
            }
        }
    }
    let kept_total: f64 = weights[..keep].iter().sum();
    let mut probs = vec![0.0; logits.len()];
    for (c, w) in live[..keep].iter().zip(&weights) {
        probs[c.0] = w / kept_total;
    }
    probs
}

fn check(logits: &[f32], mask: Option<&[u32]>, t: f32, k: u32, p: f32, seed: u64) {
    let want = filtered_softmax(logits, mask, t, k, p);
    let n = 40_000u64;
    let mut counts = vec![0u64; logits.len()];
    for draw in 0..n {
        let params = RowSampling {
            temperature: t,
            top_k: k,
            top_p: p,
            seed,
            draw,
            mask_row: if mask.is_some() { 0 } else { NO_MASK },
        };
        counts[choose(logits, mask, &params) as usize] += 1;
    }
    let mut chi2 = 0.0;
    let mut cells = 0;
    for (i, (&c, &q)) in counts.iter().zip(&want).enumerate() {
        let freq = c as f64 / n as f64;
        if q == 0.0 {
            assert_eq!(
                c, 0,
                "token {i} is outside the filtered set but drawn {c} times"
            );
            continue;
        }
        let sd = (q * (1.0 - q) / n as f64).sqrt();
        assert!(
            (freq - q).abs() <= 5.0 * sd + 1e-4,
            "token {i}: drawn {freq:.5}, expected {q:.5} (t {t}, k {k}, p {p})"
        );
        chi2 += (c as f64 - q * n as f64).powi(2) / (q * n as f64);
        cells += 1;
    }
    // Chi-square with `cells - 1` degrees of freedom: mean cells - 1, sd sqrt(2 (cells - 1)).
    let dof = (cells - 1) as f64;
    assert!(
        chi2 < dof + 6.0 * (2.0 * dof).sqrt() + 10.0,
        "chi-square {chi2:.1} over {cells} cells (t {t}, k {k}, p {p})"
    );
}

fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..vocab).map(|_| rng.random_range(-4.0f32..4.0)).collect()
}

#[test]
fn draws_follow_the_filtered_softmax() {
    let mut logits = random_logits(48, 1);
    logits[3] = f32::NEG_INFINITY;
    logits[7] = logits[9]; // a tie
    for (t, k, p) in [
        (1.0, 0, 1.0),
        (0.6, 0, 1.0),
        (1.5, 8, 1.0),
        (1.0, 0, 0.7),
        (0.8, 12, 0.9),
        (2.0, 3, 0.5),
    ] {
        check(&logits, None, t, k, p, 11);
    }
    // With a mask: only allowed tokens, renormalized.
    let mask = [0x5555_5555u32, 0x0000_F0F0];
    check(&logits, Some(&mask), 1.0, 0, 0.95, 5);
    check(&logits, Some(&mask), 0.7, 6, 1.0, 5);
}

#[test]
fn a_large_vocabulary_nucleus_needs_more_than_one_selection_round() {
    // Flat logits: a 0.99 nucleus holds most of 5000 tokens, far past the first 64 sorted.
    let logits: Vec<f32> = (0..5000).map(|i| (i % 7) as f32 * 0.01).collect();
    let want = filtered_softmax(&logits, None, 1.0, 0, 0.99);
    let allowed: usize = want.iter().filter(|q| **q > 0.0).count();
    assert!(allowed > 4000, "{allowed}");
    for draw in 0..2000 {
        let params = RowSampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.99,
            seed: 3,
            draw,
            mask_row: NO_MASK,
        };
        let t = choose(&logits, None, &params) as usize;
        assert!(want[t] > 0.0, "token {t} is outside the nucleus");
    }
}

#[test]
fn top_k_over_a_large_vocabulary_keeps_exactly_the_k_most_likely() {
    let logits = random_logits(50_000, 21);
    let mut sorted = logits.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    for k in [1u32, 2, 40, 1000] {
        let cut = sorted[k as usize - 1];
        let mut seen = std::collections::HashSet::new();
        for draw in 0..1500 {
            let params = RowSampling {
                temperature: 3.0,
                top_k: k,
                top_p: 1.0,
                seed: 8,
                draw,
                mask_row: NO_MASK,
            };
            let t = choose(&logits, None, &params) as usize;
            assert!(
                logits[t] >= cut,
                "k {k}: token {t} ({}) below the cut {cut}",
                logits[t]
            );
            seen.insert(t);
        }
        // At temperature 3 over near-equal logits, small k are all drawn.
        if k <= 40 {
            assert_eq!(seen.len(), k as usize, "k {k}");
        }
    }
}

#[test]
fn greedy_matches_argmax_and_logprob_is_the_raw_rows() {
    for seed in 0..20 {
        let raw = random_logits(1000, seed);
        let mut edited = raw.clone();
        edited[17] += 100.0;
        let choice = sample_row(&raw, &edited, None, &RowSampling::greedy());
        assert_eq!(choice.token, 17);
        let norm = raw.iter().map(|l| (*l as f64).exp()).sum::<f64>().ln();
        assert!((choice.log_norm as f64 - norm).abs() < 1e-4);
        assert!((choice.logprob as f64 - (raw[17] as f64 - norm)).abs() < 1e-4);
        let first_max = raw
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &l)| if l > b.1 { (i, l) } else { b })
            .0;
        let choice = sample_row(&raw, &raw, None, &RowSampling::greedy());
        assert_eq!(choice.token as usize, first_max);
    }
}

#[test]
fn the_same_seed_and_draw_choose_the_same_token_and_seeds_differ() {
    let logits = random_logits(500, 9);
    let at = |seed, draw| {
        let params = RowSampling {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            seed,
            draw,
            mask_row: NO_MASK,
        };
        choose(&logits, None, &params)
    };
    let a: Vec<u32> = (0..64).map(|d| at(1, d)).collect();
    let b: Vec<u32> = (0..64).map(|d| at(1, d)).collect();
    let c: Vec<u32> = (0..64).map(|d| at(2, d)).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
