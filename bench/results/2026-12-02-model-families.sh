#!/usr/bin/env bash
# One row per model family on CPU: single-stream prefill and decode (`migserve generate`, a
# 128-token-class prompt, 64 new tokens, greedy) and worker throughput at 1 and 16 clients
# (`throughput`, 64 new tokens per request, ignore_eos). Real weights for SmolLM2 (llama) and
# Gemma 3 270M; synthetic real-size models (`migserve synth`, random Q8_0) for the rest.
# Also SmolLM2 with the build of this work's start ($BASE, default /work/baseline), to show
# the one decoder for every family costs Llama nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/target/release/migserve"
THROUGHPUT="$ROOT/target/release/throughput"
BASE="${BASE:-/work/baseline}"
OUT="${OUT:-/tmp/bench}"
mkdir -p "$OUT"
SMOL="$ROOT/models-data/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA="$ROOT/models-data/gemma-3-270m-q4_k_m.gguf"
for like in qwen2.5-0.5b qwen3-0.6b; do
  [ -f "$OUT/$like.gguf" ] || "$BIN" synth --like "$like" --out "$OUT/$like.gguf"
done
# Phi-3 mini at 8 of its 32 layers (the full 3.8 B parameters take minutes per run on 2 cores;
# every layer costs the same, so per-layer speed carries over).
[ -f "$OUT/phi3-mini-8l.gguf" ] || "$BIN" synth --like phi3-mini --layers 8 --out "$OUT/phi3-mini-8l.gguf"
PROMPT="The history of astronomy is long. People have watched the sky for thousands of years, tracking the motion of the Sun, the Moon and the planets, and using what they saw to keep calendars, to navigate at sea and to predict eclipses. The history of astronomy is long. People have watched the sky for thousands of years, tracking the motion of the Sun, the Moon and the planets, and using what they saw to keep calendars, to navigate at sea and to predict eclipses."
row() {
  local name=$1 bin=$2 model=$3
  echo "== $name: generate"
  for r in 1 2 3; do
    "$bin" generate --model "$model" --prompt "$PROMPT" --max-new-tokens 64 --temperature 0 2>&1 >/dev/null | tail -1
  done
  "$bin" worker --model "$model" --listen 127.0.0.1:8091 > "$OUT/$name.worker.log" 2>&1 &
  local pid=$!
  for i in $(seq 600); do curl -sf 127.0.0.1:8091/health >/dev/null && break; sleep 0.2; done
  echo "== $name: throughput"
  "$THROUGHPUT" --url http://127.0.0.1:8091 --concurrency 1,16 --requests-per-client 2 --rounds 3
  kill -TERM $pid; wait $pid || true
}
[ -x "$BASE/target/release/migserve" ] && row smollm2-before "$BASE/target/release/migserve" "$SMOL"
row smollm2 "$BIN" "$SMOL"
row gemma3-270m "$BIN" "$GEMMA"
row qwen2.5-0.5b "$BIN" "$OUT/qwen2.5-0.5b.gguf"
row qwen3-0.6b "$BIN" "$OUT/qwen3-0.6b.gguf"
row phi3-mini-8l "$BIN" "$OUT/phi3-mini-8l.gguf"
[ -x "$BASE/target/release/migserve" ] && row smollm2-before-again "$BASE/target/release/migserve" "$SMOL"
