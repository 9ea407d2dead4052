#!/usr/bin/env bash
# Dropping `lto = "thin"` from the release profile (so that the test command can reuse the
# main job's build) must not cost throughput: one `migserve worker` (real SmolLM2-135M Q4_1,
# this machine's cores) built with thin LTO and without, the same `loadtest` against each: 1
# and 16 closed-loop clients, 128-token prompts, exactly 64 output tokens (`ignore_eos`), 30 s
# per level after 4 warm-up requests; lto, no-lto, lto, no-lto, in one session.
# Usage (repository root): LTO=<dir with the thin-LTO release migserve> \
#   NO_LTO=<dir with the release migserve built without LTO> bash <this script>
# (target/release/loadtest is the client for both).
set -euo pipefail
HERE=$(dirname "$0")
OUT=${OUT:-$HERE}
PORT=${PORT:-8393}
LTO=${LTO:?the thin-LTO release build of migserve (a folder)}
NO_LTO=${NO_LTO:?the release build of migserve without LTO (a folder)}
MODEL=${MODEL:-models-data/SmolLM2-135M-Instruct.Q4_1.gguf}
run() { # name bin-dir
  "$2/migserve" worker --model "$MODEL" --listen 127.0.0.1:$PORT > "/tmp/one-build-$1.log" 2>&1 &
  local worker=$!
  for _ in $(seq 120); do curl -sf localhost:$PORT/health > /dev/null && break; sleep 1; done
  target/release/loadtest run --url http://127.0.0.1:$PORT --concurrency 1,16 \
    --duration "${DURATION:-30}" --warmup 4 --prompt-tokens 128 --output-tokens 64 \
    --out "$OUT/$1" --name "$1" --quiet
  kill $worker; wait $worker 2>/dev/null || true
  grep -E "^\| c=" "$OUT/$1/summary.md"
}
for round in ${ROUNDS:-1 2}; do
  run lto-$round "$LTO"
  run no-lto-$round "$NO_LTO"
done
