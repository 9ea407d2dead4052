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
