#!/usr/bin/env bash
# Issue 6's GPU table, on a machine with a GPU: one migserve worker on the whole GPU
# (`--device cuda`) measured by `loadtest` at concurrency 1, 16, 64, 256, beside the same
# model in HF transformers (hf_throughput.py) with the same prompt and output lengths.
#
#   bash bench/gpu/run.sh MIGSERVE_BIN LOADTEST_BIN MODEL.gguf OUT_DIR
#
# MIGSERVE_BIN is a `--features cuda` build (scripts/cuda-toolchain.sh); LOADTEST_BIN any build.
# Writes OUT_DIR/migserve/ (loadtest's JSON/Markdown/SVG), OUT_DIR/hf.json and
# OUT_DIR/worker.log.
set -euo pipefail
migserve=$1 loadtest=$2 model=$3 out=$4
conc="${CONCURRENCY:-1,16,64,256}" prompt="${PROMPT_TOKENS:-128}" output="${OUTPUT_TOKENS:-64}"
duration="${DURATION:-30}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

"$migserve" worker --model "$model" --device cuda --listen 127.0.0.1:8091 \
  --max-batch-size 256 --max-concurrent-requests 1024 >"$out/worker.log" 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:8091/health >/dev/null 2>&1 && break
  kill -0 $worker 2>/dev/null || { cat "$out/worker.log"; exit 1; }
  sleep 1
done
"$loadtest" run --url http://127.0.0.1:8091 --api tgi --concurrency "$conc" \
  --prompt-tokens "$prompt" --output-tokens "$output" --duration "$duration" \
  --max-in-flight 1024 --out "$out/migserve" --name migserve-cuda --quiet
kill $worker; wait $worker || true

python3 "$(dirname "$0")/hf_throughput.py" --gguf "$model" --concurrency "$conc" \
  --prompt-tokens "$prompt" --output-tokens "$output" --duration "$duration" --out "$out/hf.json"
echo "done: $out"
