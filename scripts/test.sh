#!/usr/bin/env bash
# The project's test command: fetches the real models (SmolLM2, Gemma 3 270M) if needed and
# writes their Hugging Face directories (scripts/make-hf-dirs.sh), checks the Kubernetes
# manifests and that the engine crate has no HTTP dependency, then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-model.sh
bash scripts/fetch-gemma.sh
bash scripts/make-hf-dirs.sh
bash scripts/check-k8s.sh
bash scripts/check-engine-deps.sh
cargo test --locked "$@"
