#!/usr/bin/env python3
"""Time to first token for a model that is not loaded: migserve against llama.cpp's router
mode, on the same GGUF, in one session.

Both servers get a folder with two names for the same GGUF file (`a`, `b`) and room for one
loaded model, so every request for the other name is a cold start: the loaded one leaves,
the asked-for one loads, then the prompt is prefilled and the first token streamed. A second
request to the same name right after gives the warm time to first token.

    migserve:  serve with models_dir = DIR, one emulated CPU slice with every core,
               [lifecycle] max_models_per_slice = 1
    llama.cpp: llama-server --models-dir DIR --models-max 1 (its router mode)

Standard library only. Prints a table and writes results.json to --out.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT = "The capital of France is"


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port, path, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port}{path} within {timeout} s")


def first_token(port, model, max_tokens=8):
    """Streams one completion; (seconds to the first token, seconds to the end, text)."""
    body = json.dumps(
        {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    )
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    sent = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{model}: {r.status} {r.read()[:500]!r}")
    ttft, text = None, ""
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        piece = "".join(ch.get("text") or "" for ch in event.get("choices", []))
        if piece and ttft is None:
            ttft = time.perf_counter() - sent
        text += piece
    return ttft, time.perf_counter() - sent, text


def measure(name, port, rounds):
    """Alternates the two names: a cold request, then a warm one, per round and name."""
    cold, warm, texts = [], [], set()
    # The first request of all loads into an empty slot: counted apart.
    first, _, text = first_token(port, "a")
    texts.add(text)
    for _ in range(rounds):
        for model in ("b", "a"):
            t, _, text = first_token(port, model)
            cold.append(t)
            texts.add(text)
            t, _, text = first_token(port, model)
            warm.append(t)
            texts.add(text)
    print(f"{name}: first load {first:.3f} s; cold {summary(cold)}; warm {summary(warm)}", flush=True)
    return {"first_load_ttft_s": first, "cold_ttft_s": cold, "warm_ttft_s": warm, "texts": sorted(texts)}


def summary(xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"median {statistics.median(xs):.3f} s, p90 {p90:.3f} s, min {xs[0]:.3f} s (n={len(xs)})"


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def migserve_config(models_dir, weights):
    """One emulated CPU slice with every core, one model at a time; the two names found in
    `models_dir` (default engine settings), or named with `weights`."""
    head = '[slices]\nsource = "emulate"\nemulate = "1g.10gb"\n[lifecycle]\nmax_models_per_slice = 1\n'
    if weights == "default":
        return f'models_dir = "{models_dir}"\n' + head
    for name in ("a", "b"):
        head += (
            f'[[models]]\nname = "{name}"\npath = "{models_dir}/{name}.gguf"\nreplicas = 0\n'
            f'[models.engine]\nweights = "{weights}"\n'
        )
    return head


def run_migserve(args, models_dir, weights):
    port = free_port()
    config = os.path.join(models_dir, "..", f"migserve-{weights}.toml")
    with open(config, "w") as f:
        f.write(migserve_config(models_dir, weights))
    log = open(os.path.join(args.out, f"migserve-{weights}.log"), "w")
    proc = subprocess.Popen(
        [args.migserve, "serve", "--config", config, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
        env={**os.environ, "RUST_LOG": "info"},
    )
    try:
        wait_http(port, "/v1/models", 60)
        return measure(f"migserve (weights {weights})", port, args.rounds)
    finally:
        stop(proc)


def run_llama(args, models_dir):
    port = free_port()
    cache = tempfile.mkdtemp(prefix="llama-cache-")
    log = open(os.path.join(args.out, "llama-server.log"), "w")
    proc = subprocess.Popen(
        [
            args.llama_server,
            "--host", "127.0.0.1", "--port", str(port),
            "--models-dir", models_dir, "--models-max", "1",
            "-t", str(args.threads), "-c", "4096",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "LLAMA_CACHE": cache},
    )
    try:
        wait_http(port, "/health", 60)
        return measure("llama.cpp router mode", port, args.rounds)
    finally:
        stop(proc)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--migserve", required=True)
    p.add_argument("--llama-server", required=True)
    p.add_argument("--model", required=True, help="the GGUF both load")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cold-ttft-")
    models_dir = os.path.join(work, "models")
    os.makedirs(models_dir)
    for name in ("a", "b"):
        os.symlink(os.path.abspath(args.model), os.path.join(models_dir, f"{name}.gguf"))
    # Read the file once so both find it in the page cache.
    with open(args.model, "rb") as f:
        while f.read(1 << 24):
            pass
    results = {
        "model": os.path.abspath(args.model),
        "rounds": args.rounds,
        "threads": args.threads,
        "llama.cpp": run_llama(args, models_dir),
        "migserve (q8, the CPU default)": run_migserve(args, models_dir, "default"),
        "migserve (the file's own types)": run_migserve(args, models_dir, "quantized"),
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    base = statistics.median(results["llama.cpp"]["cold_ttft_s"])
    print(f"\n| server | cold TTFT median | p90 | / llama.cpp | warm TTFT median |")
    print("|---|---:|---:|---:|---:|")
    for name in ("llama.cpp", "migserve (q8, the CPU default)", "migserve (the file's own types)"):
        r = results[name]
        cold = sorted(r["cold_ttft_s"])
        p90 = cold[min(len(cold) - 1, int(round(0.9 * (len(cold) - 1))))]
        print(
            f"| {name} | {statistics.median(cold):.3f} s | {p90:.3f} s | "
            f"{statistics.median(cold) / base:.2f}x | {statistics.median(r['warm_ttft_s']):.3f} s |"
        )


if __name__ == "__main__":
    sys.exit(main())
