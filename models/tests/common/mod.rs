//! Helpers shared by the integration tests: where the real model file is.

use std::path::PathBuf;

/// The real SmolLM2 GGUF: `$MIGSERVE_TEST_MODEL`, or `models-data/` at the workspace root
/// (filled by `scripts/fetch-model.sh`). Panics with instructions when it is absent: these
/// tests need the real model and must not pass without it.
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
