#!/usr/bin/env bash
# The row sampler's cost on the CPU: one worker (real SmolLM2, release, this machine's cores)
# built before the change (host sampling over copied rows) and after (rows sampled where the
# logits are), alternating twice; /v1/chat/completions, 128-token prompts, exactly 64 new
# tokens, at 1 and 16 closed-loop clients, greedy and sampled (temperature 0.8, top_p 0.9,
# top_k 50, frequency_penalty 0.3: the edit path).
# Usage (repository root): bash bench/results/2026-12-03-row-sampler/run.sh OLD_BIN NEW_BIN
set -euo pipefail
old=$1 new=$2
OUT=${OUT:-/tmp/bench/row-sampler}
PORT=${PORT:-8393}
mkdir -p "$OUT"
run() { # name binary extra-body
  "$2" worker --model models-data/SmolLM2-135M-Instruct.Q4_1.gguf --listen 127.0.0.1:$PORT \
    --max-batch-size 16 > "$OUT/$1.worker.log" 2>&1 &
  local worker=$!
  for _ in $(seq 120); do curl -sf localhost:$PORT/health > /dev/null && break; sleep 1; done
  target/release/loadtest run --url http://127.0.0.1:$PORT --api openai-chat --concurrency 1,16 \
    --duration "${DURATION:-20}" --warmup 4 --prompt-tokens 128 --output-tokens 64 \
    --extra-body "$3" --out "$OUT/$1" --name "$1" --quiet
  kill $worker; wait $worker 2>/dev/null || true
  grep -E "^\| c=" "$OUT/$1/summary.md" | sed "s/^/$1 /"
}
GREEDY='{"temperature": 0}'
SAMPLED='{"temperature": 0.8, "top_p": 0.9, "top_k": 50, "frequency_penalty": 0.3}'
for round in 1 2; do
  run old-greedy-$round "$old" "$GREEDY"
  run new-greedy-$round "$new" "$GREEDY"
  run old-sampled-$round "$old" "$SAMPLED"
  run new-sampled-$round "$new" "$SAMPLED"
done
