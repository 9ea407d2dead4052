//! Hugging Face directories against the GGUFs they were written from (by
//! scripts/gguf_to_hf.py): the same logits within f32 tolerance, the same greedy tokens, the
//! same token ids on the tokenizer fixtures' strings (whose ids come from independent
//! implementations: transformers for SmolLM2, llama.cpp for Gemma 3); a sharded directory
//! equal to the single file; every family's synthetic model through the same round trip.

mod common;
#[path = "common/greedy.rs"]
mod greedy;

use greedy::greedy;

use std::path::{Path, PathBuf};

use migserve_models::synth::{self, GgmlDType, SynthOptions, SynthShape};
use migserve_models::{DenseKvStore, Device, GgufFile, Model, ModelSource, SeqChunk, WeightFormat};

/// Largest logit difference allowed between a GGUF and its directory, relative to the largest
/// logit: the same f32 weights, computed in a different order (halves RoPE on un-permuted Q/K
/// rows instead of interleaved RoPE; Gemma's norms as 1 + w from w).
const TOLERANCE: f32 = 1e-4;

fn load(path: &Path) -> Model {
    Model::load(path, WeightFormat::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// Logits of the last token of `tokens`, run as one prompt.
fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut kv = DenseKvStore::new(model.config());
    let chunk = SeqChunk {
        seq: 0,
        tokens,
        start: 0,
    };
    model
        .decoder
        .forward(&[chunk], &mut kv)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The largest difference relative to the largest magnitude of `want`.
fn relative_difference(have: &[f32], want: &[f32]) -> f32 {
    assert_eq!(have.len(), want.len(), "vocabulary sizes differ");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = have
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// Same greedy tokens, and the same logits after the prompt and after the greedy text.
fn assert_same_model(gguf: &Model, hf: &Model, prompt: &[u32], steps: usize) {
    let a = greedy(gguf, prompt, steps, |_| {}).unwrap();
    let b = greedy(hf, prompt, steps, |_| {}).unwrap();
    assert_eq!(a.tokens, b.tokens, "greedy tokens differ");
    let mut full = prompt.to_vec();
    full.extend(&a.tokens[..a.tokens.len().saturating_sub(1)]);
    for tokens in [prompt, &full[..]] {
        let d = relative_difference(&logits(hf, tokens), &logits(gguf, tokens));
        assert!(
            d < TOLERANCE,
            "logits differ by {d} (relative) after {} tokens",
            tokens.len()
        );
    }
}

#[test]
fn smollm2_directory_equals_its_gguf() {
    let gguf = load(&common::model_path());
    let hf = load(&common::hf_dir("smollm2-135m"));
    assert_eq!(gguf.config().n_layers, hf.config().n_layers);
    assert!(hf.config().tied_embeddings);
    let messages = [migserve_models::ChatMessage::new(
        "user",
        "What is the capital of France? Answer in two sentences.",
    )];
    let prompt = gguf.encode_chat(&messages).unwrap();
    assert_eq!(
        hf.encode_chat(&messages).unwrap(),
        prompt,
        "chat prompt ids"
    );
    assert_same_model(&gguf, &hf, &prompt, 24);
    let text = {
        let g = greedy(&hf, &prompt, 24, |_| {}).unwrap();
        hf.tokenizer.decode(&g.tokens, true).unwrap()
    };
    assert_eq!(text, "The capital of France is Paris.");
}

#[test]
fn smollm2_directory_tokenizes_as_transformers() {
    let hf = ModelSource::open(&common::hf_dir("smollm2-135m"))
        .unwrap()
        .tokenizer()
        .unwrap();
    let gguf =
        migserve_models::Tokenizer::from_gguf(&GgufFile::open(&common::model_path()).unwrap())
            .unwrap();
    let cases = common::tokenizer_cases(include_str!("fixtures/tokenizer_reference.json"));
    assert!(cases.len() >= 15);
    for case in &cases {
        let ids = hf.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "ids differ for {:?}", case.text);
        assert_eq!(
            hf.encode(&case.text, true).unwrap(),
            gguf.encode(&case.text, true).unwrap()
        );
        assert_eq!(hf.decode(&ids, false).unwrap(), case.text, "round trip");
    }
    assert_eq!(hf.bos_id(), gguf.bos_id());
    assert_eq!(hf.eos_ids(), gguf.eos_ids());
}

#[test]
fn sharded_directory_equals_the_single_file() {
    let single = load(&common::hf_dir("smollm2-135m"));
    let sharded_dir = common::hf_dir("smollm2-135m-sharded");
    assert!(sharded_dir.join("model.safetensors.index.json").is_file());
    assert!(!sharded_dir.join("model.safetensors").exists());
    let sharded = load(&sharded_dir);
    let prompt = single
        .encode_prompt("Shards of one model, loaded as one")
        .unwrap();
    assert_eq!(
        logits(&sharded, &prompt),
        logits(&single, &prompt),
        "bit for bit"
    );
    let (a, b) = (
        ModelSource::open(&sharded_dir).unwrap(),
        ModelSource::open(&common::hf_dir("smollm2-135m")).unwrap(),
    );
    let config = a.config().unwrap();
    for format in [WeightFormat::Q8, WeightFormat::Bf16, WeightFormat::F32] {
        assert_eq!(
            a.weight_bytes(&config, format),
            b.weight_bytes(&config, format)
        );
    }
    // The footprint counts the stored tensors: SmolLM2 has tied embeddings.
    assert_eq!(
        a.weight_bytes(&config, WeightFormat::F32),
        4 * config.parameter_count() as u64
    );
}

#[test]
fn gemma3_directory_equals_its_gguf() {
    let gguf = load(&common::gemma_path());
    let hf = load(&common::hf_dir("gemma3-270m"));
    let prompt = gguf.encode_prompt("The capital of France is").unwrap();
    assert_eq!(
        hf.encode_prompt("The capital of France is").unwrap(),
        prompt
    );
    assert_eq!(prompt[0], 2, "Gemma's prompts start with <bos>");
    assert_same_model(&gguf, &hf, &prompt, 16);
    // The end of a turn ends generation, from generation_config.json's eos ids.
    assert!(hf.tokenizer.eos_ids().contains(&106));
}

#[test]
fn gemma3_directory_tokenizes_as_llama_cpp() {
    let hf = ModelSource::open(&common::hf_dir("gemma3-270m"))
        .unwrap()
        .tokenizer()
        .unwrap();
    let cases = common::tokenizer_cases(include_str!("fixtures/gemma3_reference.json"));
    assert!(cases.len() >= 15);
    for case in &cases {
        assert_eq!(
            hf.encode(&case.text, false).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
    }
}

/// A small model of `like`'s layout.
fn small(like: &str) -> SynthShape {
    SynthShape::by_name(like).unwrap().narrow()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hf-directory-{name}-{}", std::process::id()))
}

#[test]
fn every_family_round_trips_through_a_directory() {
    let tokenizer = GgufFile::open(&common::model_path()).unwrap();
    let families = [
        ("smollm2-135m", "LlamaForCausalLM"),
        ("llama-3.2-1b", "LlamaForCausalLM"),
        ("mistral-7b", "MistralForCausalLM"),
        ("qwen2.5-0.5b", "Qwen2ForCausalLM"),
        ("qwen3-0.6b", "Qwen3ForCausalLM"),
        ("gemma3-270m", "Gemma3ForCausalLM"),
        ("phi3-mini", "Phi3ForCausalLM"),
    ];
    for (like, architecture) in families {
        let mut shape = small(like);
        // Windows shorter than the prompt, so that they matter (Mistral 7B v0.1 had one).
        if shape.sliding_window.is_some() || like == "mistral-7b" {
            shape.sliding_window = Some(8);
        }
        let gguf_path = temp(like).with_extension("gguf");
        let dir = temp(like);
        let options = SynthOptions {
            seed: 5,
            layers: None,
            matrix_type: GgmlDType::F32,
        };
        synth::write(&shape, &tokenizer, &gguf_path, options).unwrap();
        common::gguf_to_hf(&gguf_path, &dir, &["--dtype", "f32"]);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], architecture, "{like}");
        let gguf = load(&gguf_path);
        let hf = load(&dir);
        let (a, b) = (gguf.config(), hf.config());
        assert_eq!(
            (
                a.family,
                a.layer_windows.clone(),
                a.layer_ropes.clone(),
                a.qkv_bias,
                a.qk_norm
            ),
            (
                b.family,
                b.layer_windows.clone(),
                b.layer_ropes.clone(),
                b.qkv_bias,
                b.qk_norm
            ),
            "{like}: configurations differ"
        );
        let prompt: Vec<u32> = (0..14).map(|i| (i * 37 + 11) % 512).collect();
        for tokens in [&prompt[..3], &prompt[..]] {
            let d = relative_difference(&logits(&hf, tokens), &logits(&gguf, tokens));
            assert!(d < TOLERANCE, "{like}: logits differ by {d}");
        }
        let _ = std::fs::remove_file(&gguf_path);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bf16_and_f16_directories_load_in_every_dense_format() {
    let tokenizer = GgufFile::open(&common::model_path()).unwrap();
    let shape = small("qwen3-0.6b");
    let gguf_path = temp("dtypes").with_extension("gguf");
    let options = SynthOptions {
        seed: 9,
        layers: None,
        matrix_type: GgmlDType::F32,
    };
    synth::write(&shape, &tokenizer, &gguf_path, options).unwrap();
    let reference = logits(&load(&gguf_path), &[5, 17, 99, 3]);
    for dtype in ["bf16", "f16"] {
        let dir = temp(dtype);
        common::gguf_to_hf(&gguf_path, &dir, &["--dtype", dtype]);
        let source = ModelSource::open(&dir).unwrap();
        let config = source.config().unwrap();
        // Two bytes per stored parameter on disk; the footprint is the format's.
        assert_eq!(
            source.weight_bytes(&config, WeightFormat::F32),
            4 * config.parameter_count() as u64
        );
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Q8] {
            let model = Model::load(&dir, format, &Device::Cpu).unwrap();
            let d = relative_difference(&logits(&model, &[5, 17, 99, 3]), &reference);
            // Rounding the weights to 8 (bf16) or 11 (f16) bits of mantissa, and for bf16 and
            // q8 the activations or weights once more.
            assert!(
                d < 0.05,
                "{dtype} directory in {format:?}: logits differ by {d}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_file(&gguf_path);
}
