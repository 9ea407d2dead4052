//! The real Gemma 3 270M against llama.cpp (fixture made by scripts/make_gemma_fixture.py):
//! SentencePiece token ids, and greedy text.

mod common;
#[path = "common/greedy.rs"]
mod greedy;

use greedy::greedy;

use candle_core::D;
use migserve_models::{DenseKvStore, Device, GgufFile, Model, SeqChunk, Tokenizer, WeightFormat};

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    completions: Vec<Completion>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Completion {
    prompt: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    /// Per step: llama.cpp's five most likely tokens, `(id, log-probability)`.
    top_logprobs: Vec<Vec<(u32, f32)>>,
    /// llama.cpp's greedy tokens with the weights dequantized to f32 and an f32 KV cache.
    tokens_f32: Vec<u32>,
}

/// How far our log-probabilities may be from llama.cpp's: both run the same Q4_K/Q6_K
/// weights, but llama.cpp quantizes activations to 8 bits for every matmul and keeps an f16
/// KV cache; we re-quantize weights to Q8_0.
const LOGPROB_TOLERANCE: f32 = 0.35;
/// Two tokens whose log-probabilities are this close are a near-tie: which one wins depends
/// on rounding, so llama.cpp and we may pick differently there.
const NEAR_TIE: f32 = 0.3;

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/gemma3_reference.json")).expect("parse fixture")
}

#[test]
fn sentencepiece_ids_match_llama_cpp() {
    let file = GgufFile::open(&common::gemma_path()).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let fixture = fixture();
    assert!(fixture.cases.len() >= 15);
    let mut wrong = Vec::new();
    for case in &fixture.cases {
        let ids = tok.encode(&case.text, false).unwrap();
        if ids != case.ids {
            wrong.push(format!(
                "{:?}: ours {ids:?}, llama.cpp {:?}",
                case.text, case.ids
            ));
        }
    }
    assert!(wrong.is_empty(), "ids differ:\n{}", wrong.join("\n"));
    for c in &fixture.completions {
        assert_eq!(
            tok.encode(&c.prompt, true).unwrap(),
            c.prompt_ids,
            "{:?}",
            c.prompt
        );
    }
}

#[test]
fn f32_greedy_tokens_equal_llama_cpp_in_f32() {
    // Both dequantize the same Q4_K/Q6_K weights exactly and compute in f32: no near-tie is
    // decided by rounding, so every token of every prompt agrees.
    let model = Model::load(&common::gemma_path(), WeightFormat::F32, &Device::Cpu).unwrap();
    for c in &fixture().completions {
        let n = c.tokens_f32.len();
        let g = greedy(&model, &c.prompt_ids, n, |_| {}).unwrap();
        assert_eq!(g.tokens, c.tokens_f32, "{:?}", c.prompt);
    }
}

#[test]
fn greedy_text_matches_llama_cpp_up_to_its_near_ties() {
    let model = Model::load(&common::gemma_path(), WeightFormat::Q8, &Device::Cpu).unwrap();
    let mut whole = 0;
    for c in &fixture().completions {
        let g = greedy(&model, &c.prompt_ids, c.tokens.len(), |_| {}).unwrap();
        let same = g
            .tokens
            .iter()
            .zip(&c.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{:?}: the first {same} of {} tokens equal",
            c.prompt,
            c.tokens.len()
        );
        if same == c.tokens.len() {
            whole += 1;
            continue;
        }
        // Where the texts part, llama.cpp's own first and second choices were a near-tie.
        let top = &c.top_logprobs[same];
        let margin = top[0].1 - top[1].1;
        assert!(
            margin < NEAR_TIE,
            "{:?}: ours {:?} and llama.cpp's {} part at token {same} although llama.cpp \
             preferred its token by {margin:.3}",
            c.prompt,
            g.tokens.get(same),
            c.tokens[same]
        );
    }
    // Which near-ties go which way depends on the Q8 matmul this CPU runs (ours with AVX-512
    // VNNI: two prompts whole; candle's on AVX2-only CPUs: one); every parting above is at a
    // near-tie either way.
    assert!(whole >= 1, "no prompt gave llama.cpp's whole text");
}

/// llama.cpp's most likely tokens at one step, `(id, log-probability)`.
type Top = Vec<(u32, f32)>;

/// Log-probabilities of every step, fed llama.cpp's own tokens (so one near-tie does not
/// send the two texts apart): (our log-softmax row, llama.cpp's top five) per step.
fn teacher_forced(model: &Model, c: &Completion) -> Vec<(Vec<f32>, Top)> {
    let mut kv = DenseKvStore::new(model.config());
    let mut rows = Vec::new();
    let mut input: Vec<u32> = c.prompt_ids.clone();
    let mut start = 0;
    for (step, top) in c.top_logprobs.iter().enumerate() {
        let chunk = SeqChunk {
            seq: 0,
            tokens: &input[start..],
            start,
        };
        let logits = model.decoder.forward(&[chunk], &mut kv).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        rows.push((
            logp.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
            top.clone(),
        ));
        start = input.len();
        input.push(c.tokens[step]);
    }
    rows
}

#[test]
fn log_probabilities_match_llama_cpp_step_by_step() {
    let model = Model::load(&common::gemma_path(), WeightFormat::Q8, &Device::Cpu).unwrap();
    let (mut worst, mut total, mut steps, mut ties) = (0.0f32, 0.0f32, 0, 0);
    for c in &fixture().completions {
        for (i, (ours, top)) in teacher_forced(&model, c).iter().enumerate() {
            let (id, lp) = top[0];
            let diff = (ours[id as usize] - lp).abs();
            assert!(
                diff < LOGPROB_TOLERANCE,
                "{:?} step {i} token {id}: ours {} llama.cpp {lp}",
                c.prompt,
                ours[id as usize]
            );
            worst = worst.max(diff);
            total += diff;
            // The same most likely token, unless llama.cpp itself saw a near-tie.
            let argmax =
                (0..ours.len()).fold(0, |best, j| if ours[j] > ours[best] { j } else { best });
            let margin = top[0].1 - top[1].1;
            if argmax as u32 != id {
                assert!(
                    margin < NEAR_TIE,
                    "{:?} step {i}: our most likely token is {argmax}, llama.cpp's {id} by {margin:.3}",
                    c.prompt
                );
                ties += 1;
            }
            steps += 1;
        }
    }
    let mean = total / steps as f32;
    eprintln!(
        "{steps} steps: log-probability of llama.cpp's token differs by {mean:.4} on average, \
         {worst:.3} at most; {ties} near-ties went the other way"
    );
    assert!(mean < 0.05, "mean difference {mean}");
}
