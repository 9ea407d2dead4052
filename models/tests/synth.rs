//! `synth`: a random-weight model of SmolLM2-135M's exact shape loads and generates, with the
//! real model's tokenizer and dimensions.

mod common;

use migserve_models::synth::{self, SynthShape};
use migserve_models::{
    generate, Device, GgufFile, ModelConfig, Model, SamplingParams, WeightFormat,
};

#[test]
fn a_synthetic_smollm2_has_the_real_shape_and_runs() {
    let real = GgufFile::open(&common::model_path()).unwrap();
    let out = std::env::temp_dir().join(format!("synth-smollm2-{}.gguf", std::process::id()));
    let shape = SynthShape::by_name("smollm2-135m").unwrap();
    synth::write(shape, &real, &out, 7).unwrap();

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
    let g = generate(&model, &prompt, SamplingParams::greedy(), 5, |_| {}).unwrap();
    assert!(!g.tokens.is_empty() && g.tokens.len() <= 5);
    assert!(g.tokens.iter().all(|&t| (t as usize) < b.vocab_size));
    let _ = std::fs::remove_file(&out);
}
