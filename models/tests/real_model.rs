//! The real SmolLM2 model on CPU: the known greedy answer, and batched forward passes that
//! agree with running each sequence alone.

mod common;
#[path = "common/greedy.rs"]
mod greedy;

use std::sync::OnceLock;

use greedy::{greedy, Finish};
use migserve_models::{ChatMessage, DenseKvStore, Device, Model, SeqChunk, WeightFormat};

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::load(&common::model_path(), WeightFormat::F32, &Device::Cpu).expect("load model")
    })
}

const FRANCE: &str = "What is the capital of France? Answer in two sentences.";

#[test]
fn greedy_france_answer_stops_at_eos() {
    let m = model();
    let prompt = m.encode_chat(&[ChatMessage::new("user", FRANCE)]).unwrap();
    let mut streamed = String::new();
    let g = greedy(m, &prompt, 64, |p| streamed.push_str(p)).unwrap();
    assert_eq!(g.text, "The capital of France is Paris.");
    assert_eq!(streamed, g.text);
    assert_eq!(g.finish, Finish::Eos);
}

#[test]
fn every_weight_format_gives_the_same_greedy_answer() {
    for format in [
        WeightFormat::Q8,
        WeightFormat::Quantized,
        WeightFormat::Bf16,
    ] {
        let m = Model::load(&common::model_path(), format, &Device::Cpu).unwrap();
        let prompt = m.encode_chat(&[ChatMessage::new("user", FRANCE)]).unwrap();
        let g = greedy(&m, &prompt, 64, |_| {}).unwrap();
        assert_eq!(g.text, "The capital of France is Paris.", "{format:?}");
        assert_eq!(g.finish, Finish::Eos, "{format:?}");
    }
}

#[test]
fn q8_batched_decode_matches_alone() {
    let m = Model::load(&common::model_path(), WeightFormat::Q8, &Device::Cpu).unwrap();
    let a = m.encode_prompt("The quick brown fox").unwrap();
    let b = m.encode_prompt("def fibonacci(n): return").unwrap();
    let mut kv = DenseKvStore::new(m.config());
    let out: Vec<Vec<f32>> = m
        .decoder
        .forward(
            &[
                SeqChunk {
                    seq: 0,
                    tokens: &a,
                    start: 0,
                },
                SeqChunk {
                    seq: 1,
                    tokens: &b,
                    start: 0,
                },
            ],
            &mut kv,
        )
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!(max_relative_error(&out[0], &logits_alone(&m, &a)) < 1e-4);
    assert!(max_relative_error(&out[1], &logits_alone(&m, &b)) < 1e-4);
}

fn max_relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn logits_alone(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut kv = DenseKvStore::new(m.config());
    m.decoder
        .forward(
            &[SeqChunk {
                seq: 0,
                tokens,
                start: 0,
            }],
            &mut kv,
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn batched_prefill_and_decode_match_each_sequence_alone() {
    let m = model();
    let prompts: Vec<Vec<u32>> = [
        "The quick brown fox",
        "In 1969, the first humans walked on the Moon. The mission was called",
        "def fibonacci(n):",
    ]
    .iter()
    .map(|p| m.encode_prompt(p).unwrap())
    .collect();
    assert!(prompts[0].len() != prompts[1].len() && prompts[1].len() != prompts[2].len());

    // Prefill: all three prompts in one forward call.
    let mut kv = DenseKvStore::new(m.config());
    let chunks: Vec<SeqChunk> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| SeqChunk {
            seq: i as u64,
            tokens: p,
            start: 0,
        })
        .collect();
    let batched: Vec<Vec<f32>> = m
        .decoder
        .forward(&chunks, &mut kv)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let err = max_relative_error(&batched[i], &logits_alone(m, p));
        assert!(err < 1e-4, "prefill of prompt {i}: relative error {err}");
    }

    // Decode: each sequence gets two more tokens, one step at a time, all at different positions.
    let mut histories = prompts.clone();
    for step in 0..2 {
        let next: Vec<u32> = (0..3).map(|i| (100 + 37 * i + step) as u32).collect();
        for (h, t) in histories.iter_mut().zip(&next) {
            h.push(*t);
        }
        let chunks: Vec<SeqChunk> = histories
            .iter()
            .enumerate()
            .map(|(i, h)| SeqChunk {
                seq: i as u64,
                tokens: &h[h.len() - 1..],
                start: h.len() - 1,
            })
            .collect();
        let batched: Vec<Vec<f32>> = m
            .decoder
            .forward(&chunks, &mut kv)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, h) in histories.iter().enumerate() {
            let err = max_relative_error(&batched[i], &logits_alone(m, h));
            assert!(
                err < 1e-4,
                "decode step {step} of sequence {i}: relative error {err}"
            );
        }
    }
}

#[test]
fn mixed_prefill_and_decode_in_one_batch() {
    let m = model();
    let a = m.encode_prompt("Paris is the capital of").unwrap();
    let b = m.encode_prompt("Water boils at a temperature of").unwrap();
    let mut kv = DenseKvStore::new(m.config());
    // Sequence 0 is prefilled first; then its decode step runs in the same batch as 1's prefill.
    m.decoder
        .forward(
            &[SeqChunk {
                seq: 0,
                tokens: &a,
                start: 0,
            }],
            &mut kv,
        )
        .unwrap();
    let mut a_next = a.clone();
    a_next.push(4649);
    let out: Vec<Vec<f32>> = m
        .decoder
        .forward(
            &[
                SeqChunk {
                    seq: 0,
                    tokens: &a_next[a.len()..],
                    start: a.len(),
                },
                SeqChunk {
                    seq: 1,
                    tokens: &b,
                    start: 0,
                },
            ],
            &mut kv,
        )
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!(max_relative_error(&out[0], &logits_alone(m, &a_next)) < 1e-4);
    assert!(max_relative_error(&out[1], &logits_alone(m, &b)) < 1e-4);
}

#[test]
fn forward_rejects_positions_past_the_context() {
    let m = model();
    let mut kv = DenseKvStore::new(m.config());
    let ctx = m.config().context_length;
    let err = m
        .decoder
        .forward(
            &[SeqChunk {
                seq: 0,
                tokens: &[1],
                start: ctx,
            }],
            &mut kv,
        )
        .unwrap_err();
    assert_eq!(err.error_type(), "validation");
}
