#!/usr/bin/env bash
# Slow-loris against the front, before and after the connection guard: `serve` over one fake
# worker, started with a soft open-files limit of 1024 (a common default; SOFT_FILES=N for
# another; the hard limit
# stays the machine's); 3000 connections each send half a request head and stall
# (stall.py); a good request is timed while they are open, and the stalled connections the
# server still holds are counted after 1 s and after 35 s. Run once per binary:
#   bash bench/results/2026-12-03-front-guard/run.sh LABEL MIGSERVE FAKE_WORKER [ROUTER_TOML]
set -euo pipefail
LABEL=$1 MIGSERVE=$2 FAKE=$3 ROUTER=${4:-}
HERE=bench/results/2026-12-03-front-guard
OUT=${OUT:-/tmp/bench/front-guard}/$LABEL
PORT=${PORT:-8398}
mkdir -p "$OUT"
"$FAKE" --listen 127.0.0.1:$((PORT + 1)) --first-token-delay-ms 1 --token-delay-ms 1 \
  > "$OUT/fake.log" 2>&1 &
FAKE_PID=$!
printf '[router]\n%s\n[[remote]]\nname = "w0"\nurl = "http://127.0.0.1:%s"\nmodel = "fake"\n' \
  "$ROUTER" $((PORT + 1)) > "$OUT/serve.toml"
bash -c "ulimit -Sn ${SOFT_FILES:-1024}; exec $MIGSERVE serve --config $OUT/serve.toml --listen 127.0.0.1:$PORT" \
  > "$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE $FAKE_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf localhost:$PORT/health > /dev/null && break; sleep 0.5; done
python3 $HERE/stall.py --url http://127.0.0.1:$PORT --connections 3000 --hold 35 | tee "$OUT/result.json"
curl -s localhost:$PORT/metrics | grep -E "^migserve_front_connections" > "$OUT/metrics.txt" || true
