#!/usr/bin/env bash
# Chaos run: `migserve serve` on three emulated CPU slices with the real SmolLM2 (release
# build), 16 clients mixing streamed and non-streamed greedy TGI and OpenAI requests, a random
# worker SIGKILLed every 10 s for 2 minutes. Passes (exit 0) when no request is lost, none
# errs, and every answer equals the same request's answer taken before the kills.
# Usage (repository root, after `cargo build --release -p migserve`; MIGSERVE=path picks
# another binary):
#   bash bench/chaos/run.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-/tmp/bench/chaos}
PORT=${PORT:-8397}
mkdir -p "$OUT"
cat > "$OUT/serve.toml" <<TOML
[slices]
source = "emulate"
emulate = "3x1g.10gb"

[supervisor]
health_interval_secs = 0.5
restart_backoff_secs = 0.2
max_crashes = 1000

[[models]]
name = "smol"
path = "$PWD/models-data/SmolLM2-135M-Instruct.Q4_1.gguf"
replicas = 3

[models.engine]
kv_cache_tokens = 8192
TOML
RUST_LOG=${RUST_LOG:-info} ${MIGSERVE:-target/release/migserve} serve --config "$OUT/serve.toml" \
  --listen 127.0.0.1:$PORT > "$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 180); do
  ready=$(curl -sf localhost:$PORT/slices | python3 -c 'import json,sys; print(sum(s["state"]=="ready" for s in json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$ready" = 3 ] && break
  sleep 1
done
python3 bench/chaos/chaos.py --url http://127.0.0.1:$PORT --model smol --clients 16 \
  --duration "${DURATION:-120}" --kill-every 10 --out "$OUT"
