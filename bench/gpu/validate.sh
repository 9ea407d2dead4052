#!/usr/bin/env bash
# The GPU machine's one prepared script (issue 20). Rehearsed on a CPU machine with the same
# script and `--device cpu`, so all that is left for the GPU is the GPU.
#
#   bash bench/gpu/validate.sh stage DIR/part-NN DIR/MANIFEST   # one call per carried part
#   bash bench/gpu/validate.sh run --device cuda|cpu [--bundle DIR] [--parts LIST] [--quick]
#
# `stage` appends a part of the archive bench/gpu/pack.sh made to $MIGSERVE_STAGE (default
# /tmp/migserve-gpu, outside the repository, kept while the machine stays warm) and unpacks
# it once every part is there and its sha256 matches. `run` takes the unpacked bundle from
# there (or --bundle DIR: pack.sh's bundle/ folder, for a rehearsal) and runs the parts named
# in LIST (default all, in this order):
#   tests       the GPU kernel tests and the GPU server tests (they print why they skip
#               where there is no GPU)
#   france      the real SmolLM2 on one worker: the France answer (greedy) must name Paris
#   throughput  a same-shape synthetic model (`migserve synth`) on one worker on the whole
#               device, `loadtest` at concurrency 1/16/64/256 (--quick: 1/8, shorter), with
#               the worker's mean decode step per level (its `migserve_step_*` metrics)
#   profile     the same worker with `--profile-steps` (the device synchronized after each
#               forward pass) at concurrency 1 and 64 (CPU: 1 and 8): where a step's time goes,
#               schedule / forward / sample / emit
#   hf          HF transformers on the same shapes (hf_throughput.py; skipped with the
#               reason when torch is missing)
#   compare     seven workers on emulated 7x1g slices of the device against one on all of it
#               (`loadtest compare`; on a CPU of fewer than 7 cores, as many 1g slices as cores)
# Results go to --out DIR (default $MIGSERVE_STAGE/results): summary.md, one folder per part
# and every log. When $OUT is set (the device tool's folder, from which at most 8 files come
# back), summary.md and all of it as results.tar.gz are copied there at the end. Exit status: 0
# when every part run passed (a skip is not a failure), else 1.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stage="${MIGSERVE_STAGE:-/tmp/migserve-gpu}"

if [ "${1:-}" = stage ]; then
  part=$2 manifest=$3
  mkdir -p "$stage/parts"
  cp "$part" "$stage/parts/" && cp "$manifest" "$stage/MANIFEST"
  want=$(sed -n 2p "$stage/MANIFEST")
  have=$(ls "$stage/parts" | wc -l)
  echo "staged $(basename "$part"): $have of $want parts"
  if [ "$have" -ge "$want" ]; then
    sum=$(cat "$stage"/parts/part-* | sha256sum | cut -d' ' -f1)
    if [ "$sum" != "$(sed -n 1p "$stage/MANIFEST")" ]; then
      echo "the staged parts do not add up to the packed archive (sha256 $sum)" >&2
      exit 1
    fi
    rm -rf "$stage/bundle" && mkdir -p "$stage/bundle"
    unxz() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)'; }
    cat "$stage"/parts/part-* | unxz | tar -C "$stage/bundle" -xf - && rm -rf "$stage/parts"
    echo "unpacked into $stage/bundle: $(cat "$stage/bundle/COMMIT")"
  fi
  exit 0
fi
[ "${1:-}" = run ] || { sed -n 2,29p "${BASH_SOURCE[0]}"; exit 2; }
shift

device="" bundle="$stage/bundle" parts="tests,france,throughput,profile,hf,compare" quick=0
out="$stage/results"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --bundle) bundle=$2; shift 2 ;;
    --parts) parts=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "--device is cuda or cpu" >&2; exit 2 ;; esac
bundle="$(cd "$bundle" && pwd)" || { echo "no bundle at $bundle: stage it first" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bin="$bundle/bin" model="$bundle/model.gguf"
summary="$out/summary.md"
failed=0
started=$(date +%s)

if [ "$device" = cuda ]; then
  # The GPU machine's CUDA libraries are pip packages (NOTES.md): cuBLAS and friends.
  if nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null); then
    for d in "$nv"/*/lib; do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
    export LD_LIBRARY_PATH
  fi
  machine=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n1)
  emulate_on=gpu full_batch=256 levels="1,16,64,256" profile_levels="1,64" sliced=7x1g.10gb
else
  machine="$(nproc) CPU cores, $(lscpu | sed -n 's/^Model name: *//p')"
  emulate_on=cpu full_batch=32 levels="1,16" profile_levels="1,8" sliced="$(( $(nproc) < 7 ? $(nproc) : 7 ))x1g.10gb"
fi
duration=20 profile_duration=8 prompt=128 output=64
if [ "$quick" = 1 ]; then
  duration=6 profile_duration=4 output=16
  [ "$device" = cpu ] && levels="1,8"
fi

{
  echo "# validate.sh --device $device ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "- machine: $machine"
  echo "- bundle: commit $(cat "$bundle/COMMIT"), built for $(cat "$bundle/DEVICE")"
  echo "- parts: $parts; load: concurrency $levels, prompt $prompt, output $output, ${duration} s per level"
  echo
  echo "| part | result | seconds | notes |"
  echo "|---|---|---|---|"
} > "$summary"

# record PART RESULT SECONDS NOTES
record() { echo "| $1 | $2 | $3 | $4 |" >> "$summary"; [ "$2" = failed ] && failed=1; return 0; }

# start_worker MODEL LOG EXTRA...: a worker on this device; sets $worker and $url.
start_worker() {
  local m=$1 log=$2
  shift 2
  "$bin/migserve" worker --model "$m" --device "$device" --listen 127.0.0.1:0 "$@" \
    > "$log.out" 2> "$log" &
  worker=$!
  url=""
  for _ in $(seq 1 300); do
    url=$(sed -n 's/^migserve worker listening on //p' "$log.out" | head -n1)
    [ -n "$url" ] && return 0
    kill -0 "$worker" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
stop_worker() { kill "$worker" 2>/dev/null; wait "$worker" 2>/dev/null; return 0; }

# tok_s RESULT_JSON: "c=1: N tok/s, ..." from a loadtest result.
tok_s() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
levels = r.get("levels", [])
def step(l):
    s = l.get("server_steps") or {}
    if s.get("decode_step_ms") is None:
        return ""
    return f", decode step {s['decode_step_ms']:.2f} ms at batch {s['decode_batch']:.1f}"
print(", ".join(f"c={l.get('concurrency')}: {l['output_tokens_per_sec']:.0f} tok/s ({l['requests_failed']} failed){step(l)}" for l in levels))
EOF
}

# phases RESULT_JSON: per level, the mean decode step and the mean phases of every step.
phases() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
out = []
for l in r.get("levels", []):
    s = l.get("server_steps") or {}
    p = s.get("phase_ms", {})
    ph = " / ".join(f"{p.get(k, 0):.3f}" for k in ("schedule", "forward", "sample", "emit"))
    d = s.get("decode_step_ms")
    d = f"{d:.3f} ms at batch {s.get('decode_batch', 0):.1f}" if d is not None else "none"
    out.append(f"c={l.get('concurrency')}: decode step {d}; schedule / forward / sample / emit {ph} ms")
print("; ".join(out) or "no levels")
EOF
}

has() { case ",$parts," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

if has tests; then
  t0=$(date +%s)
  mkdir -p "$out/tests"
  ok=1
  "$bin/test-cuda-kernels" --include-ignored --nocapture > "$out/tests/cuda_kernels.log" 2>&1 || ok=0
  MIGSERVE_TEST_BIN="$bin/migserve" MIGSERVE_TEST_MODEL="$model" \
    "$bin/test-gpu" --include-ignored --nocapture --test-threads 1 > "$out/tests/gpu.log" 2>&1 || ok=0
  skips=$(cat "$out/tests/"*.log | grep -c 'skipped' || true)
  # On the GPU machine a test that skips did not test the GPU.
  [ "$device" = cuda ] && [ "$skips" != 0 ] && ok=0
  passed=$(cat "$out/tests/"*.log | sed -n 's/^test result: ok. \([0-9]*\) passed.*/\1/p' | awk '{s += $1} END {print s + 0}')
  note="${passed:-0} passed, $skips printed a skip"
  [ "$ok" = 1 ] && record tests passed $(( $(date +%s) - t0 )) "$note" \
    || record tests failed $(( $(date +%s) - t0 )) "$note; see tests/*.log"
fi

if has france; then
  t0=$(date +%s)
  mkdir -p "$out/france"
  if start_worker "$model" "$out/france/worker.log"; then
    curl -sS "$url/info" > "$out/france/info.json"
    curl -sS "$url/v1/chat/completions" -H 'content-type: application/json' -d '{
      "messages": [{"role": "user", "content": "What is the capital of France? Answer in two sentences."}],
      "max_tokens": 48, "temperature": 0}' > "$out/france/answer.json"
    stop_worker
    answer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["message"]["content"])' \
      "$out/france/answer.json" 2>/dev/null)
    dev=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("model_device_type"))' \
      "$out/france/info.json" 2>/dev/null)
    case "$answer" in
      *Paris*) record france passed $(( $(date +%s) - t0 )) "on $dev: \"$answer\"" ;;
      *) record france failed $(( $(date +%s) - t0 )) "on $dev: \"$answer\"" ;;
    esac
  else
    record france failed $(( $(date +%s) - t0 )) "the worker did not start: france/worker.log"
  fi
fi

synth="$bundle/synth-smollm2-135m.gguf"
if { has throughput || has profile || has hf || has compare; } && [ ! -f "$synth" ]; then
  "$bin/migserve" synth --like smollm2-135m --tokenizer-from "$model" --out "$synth" \
    > "$out/synth.log" 2>&1 || { echo "migserve synth failed: $out/synth.log" >&2; }
fi

if has throughput; then
  t0=$(date +%s)
  mkdir -p "$out/throughput"
  if start_worker "$synth" "$out/throughput/worker.log" --max-batch-size "$full_batch" \
    --max-concurrent-requests 1024; then
    "$bin/loadtest" run --url "$url" --api tgi --concurrency "$levels" --prompt-tokens "$prompt" \
      --output-tokens "$output" --duration "$duration" --max-in-flight 1024 \
      --out "$out/throughput" --name "migserve-$device" --quiet > "$out/throughput/loadtest.log" 2>&1
    rc=$?
    stop_worker
    if [ "$rc" = 0 ]; then
      record throughput passed $(( $(date +%s) - t0 )) "$(tok_s "$out/throughput/result.json")"
    else
      record throughput failed $(( $(date +%s) - t0 )) "loadtest exit $rc: throughput/loadtest.log"
    fi
  else
    record throughput failed $(( $(date +%s) - t0 )) "the worker did not start: throughput/worker.log"
  fi
fi

if has profile; then
  t0=$(date +%s)
  mkdir -p "$out/profile"
  if start_worker "$synth" "$out/profile/worker.log" --max-batch-size "$full_batch" \
    --max-concurrent-requests 1024 --profile-steps; then
    "$bin/loadtest" run --url "$url" --api tgi --concurrency "$profile_levels" \
      --prompt-tokens "$prompt" --output-tokens "$output" --duration "$profile_duration" \
      --max-in-flight 1024 --out "$out/profile" --name "migserve-$device-profile" --quiet \
      > "$out/profile/loadtest.log" 2>&1
    rc=$?
    curl -sS "$url/metrics" > "$out/profile/metrics.txt" 2>/dev/null
    stop_worker
    if [ "$rc" = 0 ]; then
      record profile passed $(( $(date +%s) - t0 )) "$(phases "$out/profile/result.json")"
    else
      record profile failed $(( $(date +%s) - t0 )) "loadtest exit $rc: profile/loadtest.log"
    fi
  else
    record profile failed $(( $(date +%s) - t0 )) "the worker did not start: profile/worker.log"
  fi
fi

if has hf; then
  t0=$(date +%s)
  mkdir -p "$out/hf"
  if why=$(python3 -c 'import torch, transformers' 2>&1); then
    if python3 "$here/hf_throughput.py" --gguf "$synth" --device "$device" --concurrency "$levels" \
      --prompt-tokens "$prompt" --output-tokens "$output" --duration "$duration" \
      --out "$out/hf/hf.json" > "$out/hf/hf.log" 2>&1; then
      note=$(python3 - "$out/hf/hf.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
levels = ", ".join(f"c={l['concurrency']}: {l['output_tokens_per_sec']:.0f} tok/s" for l in r["levels"])
print(f"{levels} ({r['weights'].split(' (')[0]})")
EOF
)
      record hf passed $(( $(date +%s) - t0 )) "$note"
    else
      record hf failed $(( $(date +%s) - t0 )) "see hf/hf.log"
    fi
  else
    record hf skipped 0 "no torch/transformers here: $(echo "$why" | tail -n1)"
  fi
fi

if has compare; then
  t0=$(date +%s)
  mkdir -p "$out/compare"
  layout() { # NAME EMULATE REPLICAS
    cat > "$out/compare/$1.toml" <<EOF
listen = "127.0.0.1:0"
[slices]
source = "emulate"
emulate = "$2"
emulate_on = "$emulate_on"
[[models]]
name = "smollm2-135m"
path = "$synth"
replicas = $3
[models.engine]
max_batch_size = $full_batch
EOF
  }
  n_sliced=${sliced%%x*}
  layout full 7g.80gb 1
  layout sliced "$sliced" "$n_sliced"
  if "$bin/loadtest" compare --migserve "$bin/migserve" --layout "full=$out/compare/full.toml" \
    --layout "sliced=$out/compare/sliced.toml" --api tgi --concurrency "$levels" \
    --prompt-tokens "$prompt" --output-tokens "$output" --duration "$duration" \
    --max-in-flight 1024 --out "$out/compare" > "$out/compare/loadtest.log" 2>&1; then
    note=$(python3 - "$out/compare/compare.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
parts = []
for lay in r.get("layouts", []):
    levels = lay["report"].get("levels", [])
    parts.append(lay["name"] + " " + "/".join(f"{l['output_tokens_per_sec']:.0f}" for l in levels))
print("output tok/s per level: " + "; ".join(parts))
EOF
)
    record compare passed $(( $(date +%s) - t0 )) "1 worker vs $sliced: $note"
  else
    record compare failed $(( $(date +%s) - t0 )) "see compare/loadtest.log"
  fi
fi

{
  echo
  echo "total: $(( $(date +%s) - started )) s"
} >> "$summary"
cat "$summary"
if [ -n "${OUT:-}" ] && [ "$OUT" != "$out" ]; then
  mkdir -p "$OUT"
  cp "$summary" "$OUT/summary.md"
  tar -C "$out" -czf "$OUT/results.tar.gz" .
fi
exit "$failed"
