//! `synth`: a random-weight model of SmolLM2-135M's exact shape loads and generates, with the
//! real model's tokenizer and dimensions.

mod common;
#[path = "common/greedy.rs"]
mod greedy;

use greedy::greedy;

use migserve_models::synth::{self, SynthOptions, SynthShape};
use migserve_models::{Device, GgufFile, Model, ModelConfig, WeightFormat};

#[test]
fn a_synthetic_smollm2_has_the_real_shape_and_runs() {
    let real = GgufFile::open(&common::model_path()).unwrap();
    let out = std::env::temp_dir().join(format!("synth-smollm2-{}.gguf", std::process::id()));
    let shape = SynthShape::by_name("smollm2-135m").unwrap();
    let options = SynthOptions {
        seed: 7,
        ..SynthOptions::default()
    };
    synth::write(shape, &real, &out, options).unwrap();

    let made = GgufFile::open(&out).unwrap();
    let (a, b) = (
        ModelConfig::from_gguf(&real).unwrap(),
        ModelConfig::from_gguf(&made).unwrap(),
    );
    assert_eq!(
        (
            a.n_layers,
            a.hidden_size,
            a.ffn_size,
            a.n_heads,
            a.n_kv_heads,
            a.head_dim,
            a.vocab_size,
            a.context_length
        ),
        (
            b.n_layers,
            b.hidden_size,
            b.ffn_size,
            b.n_heads,
            b.n_kv_heads,
            b.head_dim,
            b.vocab_size,
            b.context_length
        )
    );
    assert_eq!(a.rope_theta, b.rope_theta);
    assert_eq!(a.parameter_count() as u64, shape.parameters());

    let model = Model::load(&out, WeightFormat::Q8, &Device::Cpu).unwrap();
    let real_model = Model::load(&common::model_path(), WeightFormat::Q8, &Device::Cpu).unwrap();
    let text = "Synthetic weights, real tokenizer: ünïcode and 12345.";
    assert_eq!(
        model.encode_prompt(text).unwrap(),
        real_model.encode_prompt(text).unwrap()
    );
    // Random weights still run the whole forward pass and produce tokens (eos among 49152
    // near-uniform candidates is unlikely, and allowed).
    let prompt = model.encode_prompt("Hello").unwrap();
    let g = greedy(&model, &prompt, 5, |_| {}).unwrap();
    assert!(!g.tokens.is_empty() && g.tokens.len() <= 5);
    assert!(g.tokens.iter().all(|&t| (t as usize) < b.vocab_size));
    let _ = std::fs::remove_file(&out);
}

#[test]
fn a_vocabulary_smaller_than_the_tokenizer_keeps_the_merges_it_can_make() {
    let real = GgufFile::open(&common::model_path()).unwrap();
    let out = std::env::temp_dir().join(format!("synth-small-vocab-{}.gguf", std::process::id()));
    // Phi-3's layout, at a test model's size, with 2000 of SmolLM2's 49152 tokens.
    let shape = SynthShape {
        n_layers: 1,
        hidden: 64,
        ffn: 96,
        heads: 4,
        kv_heads: 4,
        head_dim: 16,
        vocab: 2000,
        context: 256,
        ..*SynthShape::by_name("phi3-mini").unwrap()
    };
    synth::write(&shape, &real, &out, SynthOptions::default()).unwrap();
    let model = Model::load(&out, WeightFormat::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, 2000);
    assert_eq!(model.tokenizer.vocab_size(), 2000);
    let text = "the cat sat on the mat";
    let ids = model.encode_prompt(text).unwrap();
    assert!(ids.iter().all(|&t| t < 2000));
    assert_eq!(model.tokenizer.decode(&ids, true).unwrap(), text);
    let g = greedy(&model, &ids, 3, |_| {}).unwrap();
    assert!(g.tokens.len() <= 3);
    let _ = std::fs::remove_file(&out);
}
