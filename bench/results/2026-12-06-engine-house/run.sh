#!/usr/bin/env bash
# The engine-house refactor (issue 32) must not cost throughput: one `migserve worker` (real
# SmolLM2-135M Q4_1, release build, this machine's cores) built before and after it, the same
# `loadtest` against each: 1 and 16 closed-loop clients, 128-token prompts, exactly 64 output
# tokens (`ignore_eos`), 30 s per level after 4 warm-up requests; before, after, before,
# after, in one session.
# Usage (repository root): BEFORE=<dir with the old release migserve> [AFTER=<dir>]
# [OUT=<results dir>] [ROUNDS="1 2 3"] bash <this script>, after `cargo build --release -p
# migserve -p migserve-loadtest` here (2026-12-07-one-record ran it for a later change).
# Build the old commit in its own target dir: when a worktree was built into this one, the
# next build here kept the worktree's engine as fresh (the same unit hashes) until this
# clone's sources were touched.
set -euo pipefail
HERE=$(dirname "$0")
OUT=${OUT:-$HERE}
PORT=${PORT:-8392}
BEFORE=${BEFORE:?the release build of migserve before the change (a folder)}
AFTER=${AFTER:-target/release}
MODEL=${MODEL:-models-data/SmolLM2-135M-Instruct.Q4_1.gguf}
run() { # name bin-dir
  "$2/migserve" worker --model "$MODEL" --listen 127.0.0.1:$PORT > "/tmp/$(basename "$OUT")-$1.log" 2>&1 &
  local worker=$!
  for _ in $(seq 120); do curl -sf localhost:$PORT/health > /dev/null && break; sleep 1; done
  target/release/loadtest run --url http://127.0.0.1:$PORT --concurrency 1,16 \
    --duration "${DURATION:-30}" --warmup 4 --prompt-tokens 128 --output-tokens 64 \
    --out "$OUT/$1" --name "$1" --quiet
  kill $worker; wait $worker 2>/dev/null || true
  grep -E "^\| c=" "$OUT/$1/summary.md"
}
for round in ${ROUNDS:-1 2}; do
  run before-$round "$BEFORE"
  run after-$round "$AFTER"
done
