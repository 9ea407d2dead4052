#!/usr/bin/env bash
# Structured output's cost: one worker (real SmolLM2, release build, this machine's cores),
# 16 closed-loop clients on /v1/chat/completions, the same 16 prompts asking for a JSON
# profile; unconstrained against `response_format: json_schema` (the schema of
# server/tests/structured_output.rs: nested object, array of objects, enums, integer
# ranges, required fields), alternating, twice; then 8 + 8 clients of each at once (mixed
# batches: unconstrained rows must not wait for the grammar's masks). Both let the model stop (`--allow-eos`:
# `ignore_eos` cannot be combined with a grammar); output tokens at most 160.
# Usage (repository root, after `cargo build --release -p migserve -p migserve-loadtest`):
#   bash bench/results/2026-12-03-structured/run.sh
set -euo pipefail
HERE=bench/results/2026-12-03-structured
OUT=${OUT:-/tmp/bench/structured}
PORT=${PORT:-8391}
mkdir -p "$OUT"
target/release/migserve worker --model models-data/SmolLM2-135M-Instruct.Q4_1.gguf \
  --listen 127.0.0.1:$PORT --max-batch-size 16 > "$OUT/worker.log" 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf localhost:$PORT/health > /dev/null && break; sleep 1; done
SCHEMA='{"type":"object","properties":{"name":{"type":"string","minLength":1,"maxLength":30},"age":{"type":"integer","minimum":18,"maximum":99},"role":{"enum":["admin","editor","viewer"]},"address":{"type":"object","properties":{"city":{"type":"string","maxLength":30},"zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["city","zip"],"additionalProperties":false},"pets":{"type":"array","maxItems":3,"items":{"type":"object","properties":{"kind":{"enum":["cat","dog","fish"]},"legs":{"type":"integer","minimum":0,"maximum":4}},"required":["kind","legs"],"additionalProperties":false}}},"required":["name","age","role","address","pets"],"additionalProperties":false}'
run() { # name extra-body [clients]
  target/release/loadtest run --url http://127.0.0.1:$PORT --api openai-chat \
    --concurrency "${3:-16}" --duration "${DURATION:-60}" --warmup 4 --allow-eos --output-tokens 160 \
    --prompts $HERE/prompts.jsonl --extra-body "$2" --out "$OUT/$1" --name "$1" --quiet
  grep -E "^\| c=" "$OUT/$1/summary.md"
}
FORMAT='{"type": "json_schema", "json_schema": {"name": "person", "schema": '"$SCHEMA"'}}'
for round in 1 2; do
  run free-$round '{"temperature": 0.8}'
  run schema-$round "{\"temperature\": 0.8, \"response_format\": $FORMAT}"
done
# Mixed batches: 8 unconstrained and 8 constrained clients at once (two loadtest processes).
run mixed-free '{"temperature": 0.8}' 8 &
run mixed-schema "{\"temperature\": 0.8, \"response_format\": $FORMAT}" 8
wait
