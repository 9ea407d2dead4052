#!/usr/bin/env bash
# A/B: worker throughput of the session's start (baseline) and its end (engine crate), alternating.
set -euo pipefail
MODEL=/work/main/models-data/SmolLM2-135M-Instruct.Q4_1.gguf
THROUGHPUT=/work/baseline/target/release/throughput
run() {
  local name=$1 bin=$2
  "$bin" worker --model "$MODEL" --listen 127.0.0.1:8091 > /tmp/bench/$name.worker.log 2>&1 &
  local pid=$!
  for i in $(seq 100); do curl -sf 127.0.0.1:8091/health >/dev/null && break; sleep 0.2; done
  echo "== $name ($bin)"
  "$THROUGHPUT" --url http://127.0.0.1:8091 --concurrency 1,4,16 --requests-per-client 3 --rounds 5
  kill -TERM $pid; wait $pid || true
}
for r in 1 2; do
  run before /work/baseline/target/release/migserve
  run after /work/main/target/release/migserve
done
