//! Helpers shared by the integration tests: where the real model file is.

use std::path::PathBuf;

/// The real SmolLM2 GGUF: `$MIGSERVE_TEST_MODEL`, or `models-data/` at the workspace root
/// (filled by `scripts/fetch-model.sh`). Panics with instructions when it is absent: these
/// tests need the real model and must not pass without it.
#[allow(dead_code)]
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("MIGSERVE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models-data/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "the real model is missing at {}: run scripts/fetch-model.sh (or set MIGSERVE_TEST_MODEL)",
        path.display()
    );
    path
}

/// The real Gemma 3 270M GGUF: `$MIGSERVE_TEST_GEMMA`, or `models-data/` at the workspace
/// root (filled by `scripts/fetch-gemma.sh`). Panics with instructions when it is absent.
#[allow(dead_code)]
pub fn gemma_path() -> PathBuf {
    let path = std::env::var_os("MIGSERVE_TEST_GEMMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models-data/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.is_file(),
        "the real Gemma 3 model is missing at {}: run scripts/fetch-gemma.sh (or set MIGSERVE_TEST_GEMMA)",
        path.display()
    );
    path
}

/// A Hugging Face directory written by `scripts/make-hf-dirs.sh` from a real GGUF
/// (`models-data/hf/<name>`). Panics with instructions when it is absent.
#[allow(dead_code)]
pub fn hf_dir(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models-data/hf")
        .join(name);
    assert!(
        path.join("config.json").is_file(),
        "the Hugging Face test directory {} is missing: run scripts/make-hf-dirs.sh",
        path.display()
    );
    path
}

/// Runs `scripts/gguf_to_hf.py GGUF OUT ARGS` with the packages `scripts/make-hf-dirs.sh`
/// installed; panics with the script's output when it fails.
#[allow(dead_code)]
pub fn gguf_to_hf(gguf: &std::path::Path, out: &std::path::Path, args: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pylib = root.join("models-data/pylib");
    assert!(
        pylib.join("gguf").is_dir(),
        "{} lacks the gguf package: run scripts/make-hf-dirs.sh",
        pylib.display()
    );
    let output = std::process::Command::new("python3")
        .arg(root.join("scripts/gguf_to_hf.py"))
        .arg(gguf)
        .arg(out)
        .args(args)
        .env("PYTHONPATH", &pylib)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "gguf_to_hf.py failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One string of a tokenizer fixture and the reference implementation's ids for it.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
pub struct TokenizerCase {
    pub text: String,
    pub ids: Vec<u32>,
}

/// The `cases` of a tokenizer fixture (`{"cases": [{"text", "ids"}], ...}`).
#[allow(dead_code)]
pub fn tokenizer_cases(json: &str) -> Vec<TokenizerCase> {
    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<TokenizerCase>,
    }
    serde_json::from_str::<Fixture>(json)
        .expect("parse tokenizer fixture")
        .cases
}
