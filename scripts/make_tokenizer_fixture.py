#!/usr/bin/env python3
"""Writes models/tests/fixtures/tokenizer_reference.json: token ids of a fixed set of strings,
made by an implementation independent of ours: HF transformers' GGUF tokenizer converter,
which reads the GGUF file with its own reader and builds its own tokenizer from the metadata.

Run once after changing the strings:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install transformers gguf sentencepiece protobuf numpy
    bash scripts/fetch-model.sh
    /tmp/refenv/bin/python scripts/make_tokenizer_fixture.py
"""
import json
import os
import sys

import importlib.machinery
import types

# transformers' GGUF reader imports torch only to hold weight tensors; the tokenizer path
# never touches it. A placeholder module saves installing PyTorch for this script.
if "torch" not in sys.modules:
    try:
        import torch  # noqa: F401
    except ImportError:
        _stub = types.ModuleType("torch")
        _stub.__getattr__ = lambda name: type(name, (), {})
        _stub.__spec__ = importlib.machinery.ModuleSpec("torch", None)
        sys.modules["torch"] = _stub

import transformers
from tokenizers import pre_tokenizers
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models-data")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "models", "tests", "fixtures", "tokenizer_reference.json")

STRINGS = [
    "Hello, world!",
    "What is the capital of France? Answer in two sentences.",
    "naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji: 😀🚀👩‍👩‍👧‍👦 🇫🇷 ✨",
    "digits 1234567890 3.14159 -42 1e10 2026-11-21",
    "runs of spaces:  two   three    four     five",
    "   leading and trailing spaces   ",
    "tabs\there\t\tand\t\t\tmore",
    "windows\r\nline\r\nendings\r\n",
    "unix\nlines\n\n\nblank",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<|im_end|>",
    "def f(x):\n    return x ** 2  # comment\n",
    "He said: \"don't\", they'll, we're, I'm, you've, it's",
    "",
    " ",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "mixed: abc123def ４５６ ①②",
]


def main() -> int:
    path = os.path.join(MODEL_DIR, MODEL_FILE)
    if not os.path.exists(path):
        print(f"missing {path}: run scripts/fetch-model.sh first", file=sys.stderr)
        return 1
    architecture, tokenizer_dict, _ = get_gguf_tokenizer(path)
    tok, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    if tokenizer_dict.get("pre_tokenizer_type") == "smollm":
        # transformers has no `smollm` entry and falls back to GPT-2's split, which glues a
        # space to a following Unicode number (" ①"). SmolLM2's own tokenizer.json, and
        # llama.cpp's `smollm` pre-tokenizer, split every number character on its own first.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    cases = []
    for s in STRINGS:
        ids = tok.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids})
    doc = {
        "generator": f"transformers {transformers.__version__} integrations.gguf convert_gguf_tokenizer (its own GGUF reader and converter), encode(add_special_tokens=False); pre-tokenizer for `smollm` set to SmolLM2's own (Digits individual + ByteLevel)",
        "model_file": MODEL_FILE,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    # One case per line keeps the fixture readable and its diffs small.
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    header = {k: v for k, v in doc.items() if k != "cases"}
    head = json.dumps(header, ensure_ascii=False)[:-1]
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(head + ', "cases": [\n  ' + ",\n  ".join(lines) + "\n]}\n")
    print(f"wrote {len(cases)} cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
