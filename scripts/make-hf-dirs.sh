#!/usr/bin/env bash
# Writes the Hugging Face directories the tests load (git-ignored, under models-data/hf/) from
# the real GGUFs with scripts/gguf_to_hf.py: SmolLM2-135M in f32 (one file, and the same in
# two shards with an index) and Gemma 3 270M in f32. Installs that script's Python packages
# (gguf, safetensors, numpy; no PyTorch) into models-data/pylib from PyPI first. Idempotent:
# a directory is rewritten only when the script or its GGUF changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${MIGSERVE_MODEL_DIR:-$root/models-data}"
pylib="$data/pylib"
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: python3 with pip is needed to write the test directories" >&2
  exit 1
fi

packages=(gguf==0.17.1 safetensors==0.8.0 numpy==2.4.6 pyyaml==6.0.4 tqdm==4.70.1)
stamp="$pylib/.packages"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  echo "installing ${packages[*]} into $pylib..." >&2
  rm -rf "$pylib"
  if ! "$py" -m pip install --quiet --no-deps --target "$pylib" "${packages[@]}" >&2; then
    echo "error: could not install ${packages[*]} from PyPI" >&2
    exit 1
  fi
  echo "${packages[*]}" > "$stamp"
fi

script="$root/scripts/gguf_to_hf.py"
make_dir() { # GGUF OUT ARGS...
  local gguf="$1" out="$2"
  shift 2
  local key
  key="$(sha256sum "$script" | cut -d' ' -f1) $(stat -c %s "$gguf") $*"
  if [ "$(cat "$out/.made-from" 2>/dev/null)" = "$key" ]; then
    echo "directory already present: $out"
    return
  fi
  rm -rf "$out"
  PYTHONPATH="$pylib" "$py" "$script" "$gguf" "$out" "$@"
  echo "$key" > "$out/.made-from"
}

smol="$data/SmolLM2-135M-Instruct.Q4_1.gguf"
gemma="$data/gemma-3-270m-q4_k_m.gguf"
for f in "$smol" "$gemma"; do
  if [ ! -f "$f" ]; then
    echo "error: $f is missing: run scripts/fetch-model.sh and scripts/fetch-gemma.sh" >&2
    exit 1
  fi
done
make_dir "$smol" "$data/hf/smollm2-135m" --dtype f32
make_dir "$smol" "$data/hf/smollm2-135m-sharded" --dtype f32 --shards 2
make_dir "$gemma" "$data/hf/gemma3-270m" --dtype f32
