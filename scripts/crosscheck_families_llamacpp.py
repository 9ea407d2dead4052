#!/usr/bin/env python3
"""Cross-checks every family's forward pass against llama.cpp: for each family, a synthetic
model of the real dimensions (`migserve synth --layers 2 --matrix-type f32`, random weights,
SmolLM2's tokenizer fitted to the vocabulary) is run greedily by llama.cpp's server (f32
weights, f32 KV cache) and by `migserve generate --weights f32`, and the two texts compared.
Both compute in f32 from the same weights, so the texts agree unless a step is a near-tie.
Our per-family tests hold our logits to candle-transformers' implementations; this shows
those references (and we) agree with llama.cpp too.

    python3 scripts/crosscheck_families_llamacpp.py LLAMA_CPP_BIN_DIR [MIGSERVE_BINARY]
    (SEED=N for other random weights, ONLY=shape,... for some of the shapes)
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.environ.get(
    "ONLY", "tinyllama-1.1b,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m,phi3-mini").split(",")


def hide_phi3_name(path):
    """llama.cpp sets token attributes for files whose `general.name` says Phi-3, looking up
    Phi-3's own special tokens (`</s>`, `<unk>`) by text, and refuses a file with SmolLM2's
    tokenizer. The name is only a label: rename it in place (same length)."""
    with open(path, "r+b") as f:
        head = f.read(1 << 16)
        at = head.find(b"synthetic phi3-mini")
        if at >= 0:
            f.seek(at)
            f.write(b"synthetic phi_3mini")
SEED = os.environ.get("SEED", "1")
PROMPT = "The history of astronomy is long. People have watched the sky"
N = 32
PORT = 18934


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def llama_cpp(server, model):
    proc = subprocess.Popen([server, "-m", model, "--port", str(PORT), "-c", "512", "-np", "1",
                             "-t", "2", "-ctk", "f32", "-ctv", "f32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
                break
            except Exception:
                time.sleep(0.5)
        out = post("/completion", {"prompt": PROMPT, "n_predict": N, "temperature": 0,
                                   "top_k": 1, "cache_prompt": False})
        return out["content"]
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    bin_dir = sys.argv[1]
    migserve = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target/release/migserve")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for like in SHAPES:
            path = os.path.join(tmp, f"{like}.gguf")
            subprocess.run([migserve, "synth", "--like", like, "--layers", "2", "--matrix-type",
                            "f32", "--seed", SEED, "--out", path], check=True,
                           stderr=subprocess.DEVNULL)
            hide_phi3_name(path)
            theirs = llama_cpp(os.path.join(bin_dir, "llama-server"), path)
            ours = subprocess.run([migserve, "generate", "--model", path, "--weights", "f32",
                                   "--temperature", "0", "--max-new-tokens", str(N),
                                   "--prompt", PROMPT], check=True, capture_output=True,
                                  text=True).stdout.removesuffix("\n")
            same = 0
            while same < min(len(ours), len(theirs)) and ours[same] == theirs[same]:
                same += 1
            rows.append((like, same, len(theirs), ours == theirs))
            print(f"{like}: equal={ours == theirs}, first {same} of {len(theirs)} characters agree")
            print(f"  llama.cpp: {theirs!r}\n  migserve:  {ours!r}")
            os.remove(path)
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
