#!/usr/bin/env bash
# Prefix cache A/B on one CPU worker: 16 clients whose prompts share a ~1,000-token system
# prompt and end in a short question of their own; caching off, then on, then both again.
# Usage: bash bench/results/2026-12-02-prefix-cache.sh (from the repository root, after
# `cargo build --release -p migserve -p migserve-loadtest`).
set -euo pipefail
MODEL=models-data/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-/tmp/bench/prefix}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  target/release/migserve worker --model "$MODEL" --listen 127.0.0.1:8091 "$@" > "$OUT/$name.worker.log" 2>&1 &
  local pid=$!
  for i in $(seq 200); do curl -sf 127.0.0.1:8091/health >/dev/null && break; sleep 0.2; done
  echo "== $name ($*)"
  target/release/loadtest run --url http://127.0.0.1:8091 --api openai-completions \
    --concurrency 16 --requests 64 --warmup 2 \
    --shared-prefix-tokens 1000 --prefix-groups 1 --prompt-tokens 16 --output-tokens 32 \
    --quiet --out "$OUT/$name" --name "$name"
  curl -s 127.0.0.1:8091/info | python3 -c 'import json,sys; print("prefix_cache:", json.load(sys.stdin).get("prefix_cache"))'
  kill -TERM $pid; wait $pid || true
}
for r in 1 2; do
  run "off-$r" --no-prefix-caching
  run "on-$r"
done
