//! Black-box tests of `migserve generate`: the real binary, the real model.

mod common;

use common::{client, model_path, post_json, Worker, FRANCE};

use std::process::{Command, Output};

fn migserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_migserve"))
        .args(args)
        .output()
        .expect("run migserve")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A bad-input run: non-zero exit, exactly one line on stderr starting with `error:`, no panic.
fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in {err}");
}

/// Writes a minimal GGUF v3 file holding only `general.architecture = arch`.
fn gguf_with_architecture(arch: &str) -> tempfile_path::TempPath {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"GGUF");
    bytes.extend_from_slice(&3u32.to_le_bytes()); // version
    bytes.extend_from_slice(&0u64.to_le_bytes()); // tensors
    bytes.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&8u32.to_le_bytes()); // string
    bytes.extend_from_slice(&(arch.len() as u64).to_le_bytes());
    bytes.extend_from_slice(arch.as_bytes());
    tempfile_path::TempPath::with_contents("arch.gguf", &bytes)
}

mod tempfile_path {
    use std::path::{Path, PathBuf};

    /// A file in the system temp dir, removed on drop.
    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn with_contents(name: &str, bytes: &[u8]) -> Self {
            let dir = std::env::temp_dir().join(format!("migserve-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn france_prompt_streams_the_answer_and_reports_speed() {
    let model = model_path();
    let o = migserve(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France? Answer in two sentences.",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "The capital of France is Paris."
    );
    assert!(
        err.contains("prompt:") && err.contains("tok/s") && err.contains("decode:"),
        "{err}"
    );
    assert!(err.contains("finish: Eos"), "{err}");
}

#[test]
fn max_new_tokens_limits_the_output() {
    let model = model_path();
    let o = migserve(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "1, 2, 3,",
        "--max-new-tokens",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("decode: 3 tokens"), "{}", stderr(&o));
}

#[test]
fn missing_file_is_one_line_error() {
    let o = migserve(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "/nonexistent/model.gguf");
}

#[test]
fn non_gguf_file_is_one_line_error() {
    let f = tempfile_path::TempPath::with_contents("not.gguf", b"this is plain text, not a model");
    let o = migserve(&[
        "generate",
        "--model",
        f.path().to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "is not a GGUF file");
}

#[test]
fn truncated_gguf_is_one_line_error() {
    let f = tempfile_path::TempPath::with_contents("trunc.gguf", b"GGUF\x03\x00\x00\x00\x01");
    let o = migserve(&[
        "generate",
        "--model",
        f.path().to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "cannot parse GGUF");
}

#[test]
fn unsupported_architecture_is_one_line_error() {
    let f = gguf_with_architecture("mamba");
    let o = migserve(&[
        "generate",
        "--model",
        f.path().to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_one_line_error(&o, "unsupported model architecture `mamba`");
}

#[test]
fn empty_prompt_is_one_line_error() {
    let model = model_path();
    let o = migserve(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "",
    ]);
    assert_one_line_error(&o, "prompt is empty");
}

#[test]
fn invalid_sampling_is_one_line_error() {
    let model = model_path();
    let o = migserve(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
        "--top-p",
        "1.5",
    ]);
    assert_one_line_error(&o, "top_p");
}

/// What `migserve generate` prints on stdout with these extra arguments (the default model).
fn generated_text(extra: &[&str]) -> String {
    let model = model_path();
    let mut args = vec!["generate", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = migserve(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_suffix('\n').expect("a final newline").to_string()
}

/// The `generated_text` of a worker's `/generate` for `body`.
async fn worker_text(worker: &Worker, body: serde_json::Value) -> String {
    let (_, answer) = post_json(&client(), worker.at("/generate"), &body).await;
    answer["generated_text"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string()
}

/// `generate` runs the serving path: the same greedy text as `/generate` of a worker on the
/// same model, for the France question in the chat template (ends at eos) and for a prompt
/// cut by a stop sequence.
#[tokio::test]
async fn generate_prints_what_a_workers_generate_returns() {
    let worker = Worker::start(&[]);
    let chat = serde_json::json!({"messages": [{"role": "user", "content": FRANCE}]});
    let (_, tokenized) = post_json(&client(), worker.at("/chat_tokenize"), &chat).await;
    let rendered = tokenized["templated_text"].as_str().unwrap().to_string();
    let served = worker_text(
        &worker,
        serde_json::json!({"inputs": rendered, "parameters": {"max_new_tokens": 40}}),
    )
    .await;
    let printed = generated_text(&["--chat", "--prompt", FRANCE, "--max-new-tokens", "40"]);
    assert_eq!(printed, "The capital of France is Paris.");
    assert_eq!(printed, served);

    let counting = "1, 2, 3, 4,";
    let served = worker_text(
        &worker,
        serde_json::json!({"inputs": counting,
            "parameters": {"max_new_tokens": 30, "stop": [" 7,"]}}),
    )
    .await;
    let printed = generated_text(&[
        "--prompt",
        counting,
        "--max-new-tokens",
        "30",
        "--stop",
        " 7,",
    ]);
    assert!(printed.ends_with(" 7,"), "{printed:?}");
    assert_eq!(printed, served);
}

#[test]
fn same_seed_same_sampled_text() {
    let sampled = |seed: &str| {
        generated_text(&[
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "24",
            "--temperature",
            "0.9",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ])
    };
    let a = sampled("42");
    assert_eq!(a, sampled("42"));
    assert_ne!(
        a,
        sampled("43"),
        "a different seed should give a different sample"
    );
}
