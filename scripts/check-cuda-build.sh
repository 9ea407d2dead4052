#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine with no GPU and no system CUDA (CI does this):
# sets up the CUDA toolchain from PyPI wheels, builds `migserve --features cuda`, lints it,
# builds the GPU tests and runs them where a GPU is visible (elsewhere they are reported as
# ignored, with the reason), and checks that the CUDA binary, finding no usable GPU, exits with one clear
# line and status 3.
#
# The toolchain (.tools/cuda) and the CUDA build's target dir (target/cuda) live in the clone:
# nothing is cached outside it. Later runs in the same clone reuse them (candle's CUDA kernels
# take most of a clean build).
#
# CI runs it with MIGSERVE_CUDA_TARGET=target and MIGSERVE_CUDA_PROFILE=release, right after
# the test command: the ~200 dependencies the `cuda` feature does not touch are then reused
# from the release build (only candle, cudarc, our crates and what depends on them are
# compiled again). That mode overwrites target/release/migserve with the CUDA build, so the
# default, for a developer, is its own target dir and the dev profile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE="$PWD/target/cuda-check"
mkdir -p "$CACHE"
export MIGSERVE_CUDA_TOOLS="${MIGSERVE_CUDA_TOOLS:-$PWD/.tools/cuda}"
export CARGO_TARGET_DIR="${MIGSERVE_CUDA_TARGET:-$PWD/target/cuda}"
PROFILE="${MIGSERVE_CUDA_PROFILE:-dev}"
case "$PROFILE" in
  dev) PROFILE_DIR=debug profile_args=() ;;
  release) PROFILE_DIR=release profile_args=(--release) ;;
  *) echo "MIGSERVE_CUDA_PROFILE must be dev or release, not '$PROFILE'" >&2; exit 2 ;;
esac
bash scripts/cuda-toolchain.sh
# shellcheck disable=SC1091
source "$MIGSERVE_CUDA_TOOLS/env.sh"

echo "== cuda: build, and the GPU tests (run on a visible GPU, else reported as ignored)"
gpu_tests=()
if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  gpu_tests=(--include-ignored)
fi
# One invocation builds the `migserve` binary (the GPU server tests run it) and both test
# binaries with one feature set: a separate `cargo build` first would build it without the
# dev-dependencies' features and this step would then rebuild candle and ~75 crates (~6
# minutes of a cold run); the kernels' tests run alone would rebuild candle too.
cargo test --locked "${profile_args[@]}" -p migserve -p migserve-kernels \
  --features migserve/cuda,migserve-kernels/cuda --test gpu --test cuda_kernels -- --nocapture "${gpu_tests[@]}"
echo "== cuda: lints"
# Under the same profile as the build above: candle's kernels' build script (nvcc, most of
# the time) then runs once, not again for another profile.
cargo clippy --locked "${profile_args[@]}" -p migserve -p migserve-engine -p migserve-kernels -p migserve-models --features cuda \
  --all-targets -- -D warnings

echo "== cuda: a worker that finds no usable GPU says so in one line and exits 3"
bash scripts/fetch-model.sh >/dev/null
model="$(ls models-data/*.gguf | head -n1)"
set +e
CUDA_VISIBLE_DEVICES=MIG-00000000-0000-0000-0000-000000000000 \
  "$CARGO_TARGET_DIR/$PROFILE_DIR/migserve" worker --model "$model" --device cuda \
  --listen 127.0.0.1:0 >/dev/null 2>"$CACHE/unusable.err"
rc=$?
set -e
cat "$CACHE/unusable.err"
lines=$(grep -c '' "$CACHE/unusable.err")
if [[ $rc -ne 3 || $lines -ne 1 ]] || ! grep -q '^error: no usable CUDA device (CUDA_VISIBLE_DEVICES=MIG-0' "$CACHE/unusable.err"; then
  echo "expected exit 3 and one 'error: no usable CUDA device' line; got exit $rc, $lines lines" >&2
  exit 1
fi
echo "cuda: ok"
