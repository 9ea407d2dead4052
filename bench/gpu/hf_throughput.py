#!/usr/bin/env python3
"""Baseline for issue 6's GPU table: output tokens/s of the same model in HF transformers on
the same GPU, at the concurrencies migserve is measured at (1, 16, 64, 256).

"The same way" as `loadtest run --concurrency C --prompt-tokens P --output-tokens N`: C
requests at once, each with a P-token prompt and exactly N new tokens (greedy, eos ignored),
repeated for at least --duration seconds; output tok/s = generated tokens / wall time.
transformers has no continuous batching in `generate`: C concurrent requests are one batch of
C, which is what a client sending C at once gets from it.

The model: the GGUF file through transformers' GGUF loader when the `gguf` package is
installed, else a Llama with the same configuration read from the GGUF header and random
weights (a forward pass costs the same whatever the weights are); the JSON says which.

Usage (on the GPU machine): python3 hf_throughput.py --gguf model.gguf --out hf.json
"""
import argparse
import json
import struct
import time

import torch
import transformers


def gguf_metadata(path):
    """The GGUF header's key/value metadata (scalars and strings; arrays skipped)."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out = {}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF", "not a GGUF file"
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def read_str():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def read_value(t):
            if t in scalar:
                fmt = "<" + scalar[t]
                return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            if t == 8:
                return read_str()
            if t == 9:
                (et,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                items = [read_value(et) for _ in range(n)]
                return items if et != 8 and n < 4096 else len(items)
            raise ValueError(f"GGUF value type {t}")

        for _ in range(n_kv):
            key = read_str()
            (t,) = struct.unpack("<I", f.read(4))
            out[key] = read_value(t)
    return out


def random_llama(path, device):
    m = gguf_metadata(path)
    arch = m["general.architecture"]
    g = lambda k, d=None: m.get(f"{arch}.{k}", d)
    vocab = g("vocab_size") or m.get("tokenizer.ggml.tokens")
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=g("embedding_length"),
        intermediate_size=g("feed_forward_length"),
        num_hidden_layers=g("block_count"),
        num_attention_heads=g("attention.head_count"),
        num_key_value_heads=g("attention.head_count_kv"),
        max_position_embeddings=g("context_length"),
        rms_norm_eps=g("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=g("rope.freq_base", 10000.0),
        tie_word_embeddings=True,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype)
    return model, config.vocab_size


def load(path, device):
    try:
        import os

        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(path)),
            gguf_file=os.path.basename(path),
            torch_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        ).to(device)
        return model, model.config.vocab_size, "gguf weights"
    except Exception as e:  # no `gguf` package, or an unsupported file
        model, vocab = random_llama(path, device)
        return model, vocab, f"random weights, same config ({type(e).__name__}: {e})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = p.parse_args()
    device = a.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model, vocab, weights = load(a.gguf, device)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    results = []
    for c in [int(x) for x in a.concurrency.split(",")]:
        ids = torch.randint(100, vocab - 1, (c, a.prompt_tokens), generator=gen).to(device)
        kwargs = dict(
            max_new_tokens=a.output_tokens,
            min_new_tokens=a.output_tokens,
            do_sample=False,
            attention_mask=torch.ones_like(ids),
            pad_token_id=0,
        )
        with torch.inference_mode():
            model.generate(ids, **kwargs)  # warm-up
            sync()
            start, rounds = time.perf_counter(), 0
            while time.perf_counter() - start < a.duration:
                out = model.generate(ids, **kwargs)
                rounds += 1
            sync()
            wall = time.perf_counter() - start
        new = (out.shape[1] - a.prompt_tokens) * c * rounds
        row = {"concurrency": c, "output_tokens_per_sec": new / wall, "rounds": rounds, "wall_s": wall}
        print(json.dumps(row), flush=True)
        results.append(row)
    with open(a.out, "w") as f:
        json.dump(
            {
                "tool": "HF transformers generate (static batch of C)",
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                "weights": weights,
                "prompt_tokens": a.prompt_tokens,
                "output_tokens": a.output_tokens,
                "levels": results,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
