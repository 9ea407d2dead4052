#!/usr/bin/env bash
# The project's test command: fetches the real models (SmolLM2, Gemma 3 270M) if needed and
# writes their Hugging Face directories (scripts/make-hf-dirs.sh), checks the Kubernetes
# manifests, that the engine crate has no HTTP dependency and that the tests reuse the main
# job's build (scripts/check-one-build.sh), then runs every test under the release profile:
# after the README's main job (`cargo run --release`), only the test targets and the
# test-only crates are left to compile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-model.sh
bash scripts/fetch-gemma.sh
bash scripts/make-hf-dirs.sh
bash scripts/check-k8s.sh
bash scripts/check-engine-deps.sh
bash scripts/check-one-build.sh
cargo test --release --locked "$@"
