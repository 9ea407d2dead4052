//! Hugging Face directories through the binary: a worker serving one gives the GGUF's text,
//! `serve` and `plan` take one as a model path, and a broken directory is one line on stderr
//! with exit 1 (no config.json, an unknown architecture, a missing tensor, a wrong shape, a
//! tokenizer.json that does not parse, a format the directory cannot give).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{get_json, hf_dir, Serve, Worker};
use serde_json::{json, Value};

fn migserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_migserve"))
        .args(args)
        .output()
        .expect("run migserve")
}

/// Exit 1, one `error:` line on stderr containing every `needle`, no panic.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "expected {needle:?} in {err}");
    }
}

async fn greedy(c: &reqwest::Client, url: String, prompt: &str) -> Value {
    c.post(url)
        .json(&json!({"inputs": prompt, "parameters": {"max_new_tokens": 20, "details": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serves_a_directory_as_it_serves_the_gguf() {
    let dir = hf_dir("smollm2-135m");
    let args = ["--weights", "f32", "--kv-cache-tokens", "1024"];
    let from_dir = Worker::start_model(&dir, &args, &[]);
    let from_gguf = Worker::start_model(&common::model_path(), &args, &[]);
    let c = reqwest::Client::new();
    let info: Value = get_json(&c, from_dir.at("/info")).await;
    assert_eq!(info["model_architecture"], "llama", "{info}");
    // Named after the directory when --model-id is not given.
    assert_eq!(info["model_id"], "smollm2-135m", "{info}");
    let gguf_info: Value = get_json(&c, from_gguf.at("/info")).await;
    assert_eq!(info["model_parameters"], gguf_info["model_parameters"]);
    for prompt in ["The capital of France is", "def fibonacci(n):"] {
        let (a, b) = (
            greedy(&c, from_dir.at("/generate"), prompt).await,
            greedy(&c, from_gguf.at("/generate"), prompt).await,
        );
        assert_eq!(a["generated_text"], b["generated_text"], "{prompt:?}");
        // The same tokens; log-probabilities equal up to the f16 KV cache's rounding.
        let (ta, tb) = (
            a["details"]["tokens"].as_array().unwrap(),
            b["details"]["tokens"].as_array().unwrap(),
        );
        assert_eq!(ta.len(), 20);
        for (x, y) in ta.iter().zip(tb) {
            assert_eq!(x["id"], y["id"], "{prompt:?}");
            let (lx, ly) = (
                x["logprob"].as_f64().unwrap(),
                y["logprob"].as_f64().unwrap(),
            );
            assert!((lx - ly).abs() < 5e-3, "{prompt:?}: {lx} vs {ly}");
        }
    }
    // Chat through the template from tokenizer_config.json.
    let r = c
        .post(from_dir.at("/v1/chat/completions"))
        .json(&json!({"max_tokens": 20, "temperature": 0, "messages": [
            {"role": "user", "content": "What is the capital of France? Answer in two sentences."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_plan_take_a_directory() {
    let dir = hf_dir("gemma3-270m");
    let config = r#"
[slices]
source = "emulate"
emulate = "1x1g.10gb"

[[models]]
name = "gemma"
path = "{dir}"

[models.engine]
kv_cache_tokens = 1024
"#
    .replace("{dir}", dir.to_str().unwrap());
    let serve = Serve::start("hf-dir", &config);
    let c = reqwest::Client::new();
    let ready = |s: &[Value]| s.len() == 1 && s[0]["state"] == "ready";
    serve
        .wait_slices(&c, Duration::from_secs(120), "the worker ready", ready)
        .await;
    let r = c
        .post(serve.at("/generate"))
        .json(&json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 6}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // plan sizes the directory from its safetensors headers: 268M parameters in bf16 plus a
    // KV cache, on an H100.
    let out = migserve(&[
        "plan",
        "--model",
        &format!("gemma={}", dir.display()),
        "--kv-cache-tokens",
        "4096",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let absolute = std::fs::canonicalize(&dir).unwrap();
    assert!(
        text.contains(&format!("path = \"{}\"", absolute.display())),
        "{text}"
    );
    // 268M parameters x 2 bytes + 4096 x 18 KB of KV cache, + 10 %.
    assert!(text.contains("needs about 0.7 GB per worker"), "{text}");
}

/// A tiny Llama directory written by hand (not by our script): 1 layer, width 8, vocab 8.
struct TinyDir {
    path: PathBuf,
}

const TINY_TENSORS: &[(&str, &[usize])] = &[
    ("model.embed_tokens.weight", &[8, 8]),
    ("model.norm.weight", &[8]),
    ("model.layers.0.input_layernorm.weight", &[8]),
    ("model.layers.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.layers.0.self_attn.k_proj.weight", &[4, 8]),
    ("model.layers.0.self_attn.v_proj.weight", &[4, 8]),
    ("model.layers.0.self_attn.o_proj.weight", &[8, 8]),
    ("model.layers.0.post_attention_layernorm.weight", &[8]),
    ("model.layers.0.mlp.gate_proj.weight", &[16, 8]),
    ("model.layers.0.mlp.up_proj.weight", &[16, 8]),
    ("model.layers.0.mlp.down_proj.weight", &[8, 16]),
];

impl TinyDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hf-tiny-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let dir = Self { path };
        dir.write_json(
            "config.json",
            &json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "vocab_size": 8, "max_position_embeddings": 64,
                "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "eos_token_id": 1}),
        );
        let vocab: serde_json::Map<String, Value> =
            ["<s>", "</s>", "a", "b", "c", "ab", "bc", "abc"]
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), json!(i)))
                .collect();
        dir.write_json(
            "tokenizer.json",
            &json!({"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [
                    {"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                     "rstrip": false, "normalized": false, "special": true},
                    {"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
                     "rstrip": false, "normalized": false, "special": true}],
                "normalizer": null, "pre_tokenizer": null, "post_processor": null,
                "decoder": null,
                "model": {"type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
                    "merges": ["a b", "b c", "ab c"]}}),
        );
        dir.write_weights(TINY_TENSORS);
        dir
    }

    fn write_json(&self, name: &str, v: &Value) {
        std::fs::write(self.path.join(name), serde_json::to_vec(v).unwrap()).unwrap();
    }

    /// A safetensors file of small f32 values, written by hand from the format's definition.
    fn write_weights(&self, tensors: &[(&str, &[usize])]) {
        let mut header = serde_json::Map::new();
        let mut data: Vec<u8> = Vec::new();
        for (name, shape) in tensors {
            let n: usize = shape.iter().product();
            let start = data.len();
            for i in 0..n {
                let v = if name.ends_with("norm.weight") {
                    1.0f32
                } else {
                    ((i % 7) as f32 - 3.0) * 0.05
                };
                data.extend_from_slice(&v.to_le_bytes());
            }
            header.insert(
                name.to_string(),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut header = serde_json::to_vec(&header).unwrap();
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(data);
        std::fs::write(self.path.join("model.safetensors"), bytes).unwrap();
    }

    fn generate(&self, extra: &[&str]) -> Output {
        let path = self.path.to_str().unwrap();
        let mut args = vec![
            "generate",
            "--model",
            path,
            "--prompt",
            "abc",
            "--max-new-tokens",
            "3",
        ];
        args.extend_from_slice(extra);
        migserve(&args)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TinyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[test]
fn a_hand_made_directory_runs() {
    let dir = TinyDir::new("ok");
    let out = dir.generate(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dir.generate(&["--weights", "bf16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_directories_are_one_line_errors() {
    let dir = TinyDir::new("no-config");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_one_line_error(&dir.generate(&[]), &["config.json", "missing"]);

    let dir = TinyDir::new("arch");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["architectures"] = json!(["FalconForCausalLM"]);
    dir.write_json("config.json", &config);
    assert_one_line_error(
        &dir.generate(&[]),
        &[
            "config.json",
            "`architectures`",
            "FalconForCausalLM is not supported",
            "Qwen3ForCausalLM",
        ],
    );

    let dir = TinyDir::new("missing-tensor");
    dir.write_weights(&TINY_TENSORS[..TINY_TENSORS.len() - 1]);
    assert_one_line_error(
        &dir.generate(&[]),
        &["model.layers.0.mlp.down_proj.weight", "missing"],
    );

    let dir = TinyDir::new("shape");
    let mut tensors = TINY_TENSORS.to_vec();
    tensors[6] = ("model.layers.0.self_attn.o_proj.weight", &[8, 4]);
    dir.write_weights(&tensors);
    assert_one_line_error(
        &dir.generate(&[]),
        &["model.layers.0.self_attn.o_proj.weight", "[8, 4]", "[8, 8]"],
    );

    let dir = TinyDir::new("tokenizer");
    std::fs::write(
        dir.path().join("tokenizer.json"),
        b"{\"model\": {\"type\": \"BPE\"",
    )
    .unwrap();
    assert_one_line_error(&dir.generate(&[]), &["tokenizer.json", "does not parse"]);

    let dir = TinyDir::new("no-weights");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_one_line_error(&dir.generate(&[]), &["model.safetensors", "missing"]);

    let dir = TinyDir::new("quantized");
    assert_one_line_error(
        &dir.generate(&["--weights", "quantized"]),
        &["quantized", "use q8, bf16 or f32"],
    );
}
