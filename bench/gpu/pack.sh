#!/usr/bin/env bash
# Builds what bench/gpu/validate.sh runs on the GPU machine and packs it to carry there:
#
#   bash bench/gpu/pack.sh --device cuda|cpu [--out DIR]
#
# cuda: a release `--features cuda` migserve, the GPU test binaries (the kernels'
# `cuda_kernels`, the server's `gpu`), loadtest; cpu: the same built without CUDA (to rehearse
# validate.sh on a CPU machine). With them the real SmolLM2 GGUF (the France answer, and the
# tokenizer of the synthetic model validate.sh writes there).
#
# Writes DIR (default target/gpu-carry-<device>): bundle/ (the files, for a rehearsal here),
# part-00, part-01, ... (bundle.tar.xz cut into pieces that each fit one device command's
# 64 MiB with the working tree beside it) and MANIFEST (sha256 of the whole archive, parts).
# On the device: one `validate.sh stage` call per part, then `validate.sh run` (see
# bench/gpu/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

device=cuda
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "--device is cuda or cpu" >&2; exit 2 ;; esac
out="${out:-target/gpu-carry-$device}"
# A device command carries the working tree too (tracked and untracked files not ignored):
# each part gets what is left of 64 MiB beside it, less 2 MiB of margin.
tree_kib=$( (git ls-files -z; git ls-files -z --others --exclude-standard) \
  | du --files0-from=- -ck 2>/dev/null | tail -n1 | cut -f1)
part_mib="${PART_MIB:-$(( 62 - tree_kib / 1024 ))}"
model=models-data/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || bash scripts/fetch-model.sh

features=()
if [ "$device" = cuda ]; then
  bash scripts/cuda-toolchain.sh
  # shellcheck disable=SC1091
  source "${MIGSERVE_CUDA_TOOLS:-$PWD/.tools/cuda}/env.sh"
  # Hopper: native code for sm_90 beside the PTX (no JIT at the first launch).
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  features=(--features migserve/cuda,migserve-kernels/cuda)
fi

echo "== build ($device, release)"
cargo build --locked --release -p migserve -p migserve-loadtest "${features[@]}"
# The test binaries' paths, from cargo's own report of what it built.
tests_json=$(cargo test --locked --release --no-run --message-format=json \
  -p migserve -p migserve-kernels "${features[@]}" --test gpu --test cuda_kernels)
test_bin() {
  printf '%s\n' "$tests_json" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$1" | tail -n1
}
target="${CARGO_TARGET_DIR:-target}"

rm -rf "$out"
mkdir -p "$out/bundle/bin"
cp "$target/release/migserve" "$target/release/loadtest" "$out/bundle/bin/"
cp "$(test_bin gpu)" "$out/bundle/bin/test-gpu"
cp "$(test_bin cuda_kernels)" "$out/bundle/bin/test-cuda-kernels"
strip "$out/bundle/bin/"* 2>/dev/null || true
cp "$model" "$out/bundle/model.gguf"
echo "$device" > "$out/bundle/DEVICE"
git rev-parse HEAD > "$out/bundle/COMMIT" 2>/dev/null || echo unknown > "$out/bundle/COMMIT"

echo "== pack"
# xz: the GPU machine can unpack it without any tool (Python's lzma), and PTX packs well.
tar -C "$out/bundle" -cf - . | xz -9 -T0 > "$out/bundle.tar.xz"
(cd "$out" && split -b "${part_mib}M" -d -a 2 bundle.tar.xz part-)
sha256sum "$out/bundle.tar.xz" | cut -d' ' -f1 > "$out/MANIFEST"
ls "$out"/part-* | wc -l >> "$out/MANIFEST"
rm "$out/bundle.tar.xz"
du -b "$out"/bundle/bin/* "$out"/bundle/model.gguf "$out"/part-* | awk '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}'
echo "packed: $out ($(sed -n 2p "$out/MANIFEST") parts)"
