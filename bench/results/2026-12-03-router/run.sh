#!/usr/bin/env bash
# Router policies on `serve` with three emulated CPU slices of the real SmolLM2 (on a 2-core
# machine slices 0 and 2 share a core, slice 1 has one alone: one slice twice as fast).
#   A: 16 clients, 4 shared 1,000-token prefixes (request i gets prefix i mod 4) + a 16-token
#      question; each worker's KV cache (2,048 tokens) holds about two prefixes besides its
#      running requests, not four: the prefix-aware policy against the previous one, twice.
#   B: 16 clients, unshared prompts of 32-1,500 tokens: round-robin, the previous policy
#      (queued-tokens) and the default (prefix-aware: cost model + prefix index).
# Each layout is the same config but for [router] policy, run by `loadtest compare` in turn.
# Usage: bash bench/results/2026-12-03-router/run.sh (from the repository root, after
# `cargo build --release -p migserve -p migserve-loadtest`).
set -euo pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/bench/router}
mkdir -p "$OUT"
config() { # name policy kv_cache_tokens
  cat > "$OUT/$1.toml" <<TOML
listen = "127.0.0.1:0"
[slices]
source = "emulate"
emulate = "3x1g.10gb"
emulate_on = "cpu"
[router]
policy = "$2"
[[models]]
name = "SmolLM2-135M-Instruct"
path = "$ROOT/models-data/SmolLM2-135M-Instruct.Q4_1.gguf"
replicas = 3
[models.engine]
max_batch_size = 32
kv_cache_tokens = $3
TOML
}
config a-prefix-aware prefix-aware 2048
config a-queued-tokens queued-tokens 2048
config b-round-robin round-robin 16384
config b-queued-tokens queued-tokens 16384
config b-prefix-aware prefix-aware 16384
common=(--migserve target/release/migserve --api openai-completions
  --model SmolLM2-135M-Instruct --concurrency 16 --warmup 2 --quiet)
echo "== A: 4 prefix groups"
target/release/loadtest compare "${common[@]}" \
  --layout queued-tokens="$OUT/a-queued-tokens.toml" --layout prefix-aware="$OUT/a-prefix-aware.toml" \
  --layout queued-tokens-2="$OUT/a-queued-tokens.toml" --layout prefix-aware-2="$OUT/a-prefix-aware.toml" \
  --requests 96 --duration 240 --shared-prefix-tokens 1000 --prefix-groups 4 \
  --prompt-tokens 16 --output-tokens 32 --out "$OUT/a"
echo "== B: unequal slices"
target/release/loadtest compare "${common[@]}" \
  --layout round-robin="$OUT/b-round-robin.toml" --layout queued-tokens="$OUT/b-queued-tokens.toml" \
  --layout prefix-aware="$OUT/b-prefix-aware.toml" \
  --requests 96 --duration 240 --prompt-tokens uniform:32-1500 --output-tokens uniform:16-96 \
  --out "$OUT/b"
