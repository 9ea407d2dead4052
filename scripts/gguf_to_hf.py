#!/usr/bin/env python3
"""Writes a Hugging Face model directory from a GGUF file: config.json, safetensors weights
(one file, or shards with model.safetensors.index.json), tokenizer.json, tokenizer_config.json
(with the file's chat template) and generation_config.json.

Needs the PyPI packages gguf, safetensors and numpy (no PyTorch). For the families migserve
runs: llama (written as LlamaForCausalLM, or MistralForCausalLM when the file has a sliding
window), qwen2, qwen3, gemma3, phi3.

    python3 scripts/gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bf16|f16|f32] [--shards N]

Quantized GGUF tensors are dequantized (the directory holds what the GGUF computes with).
What changes on the way, as transformers expects it:
  - llama: Q and K rows are un-permuted (llama.cpp permutes them for its interleaved RoPE);
    a `rope_freqs` tensor becomes `rope_scaling` {"rope_type": "llama3", ...}, checked to
    reproduce the tensor;
  - gemma3: norm weights are stored as w where GGUF stores 1 + w;
  - the tokenizer (GPT-2 byte-level BPE or SentencePiece BPE) is written as tokenizer.json,
    built as migserve builds it from the GGUF metadata (SentencePiece merges ranked by the
    scores of the joined pieces).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors import TensorSpec, serialize_file

SPACE = "\u2581"
CONTROL, USER_DEFINED = 3, 4
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

HF_ARCH = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
}


def die(msg):
    sys.exit(f"error: {msg}")


class Meta:
    def __init__(self, reader):
        self.fields = reader.fields

    def get(self, key, default=None):
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def need(self, key):
        v = self.get(key)
        if v is None:
            die(f"GGUF metadata key {key} is missing")
        return v


def layer_name(base, family):
    gemma = family == "gemma3"
    return {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_qkv": "self_attn.qkv_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "ffn_norm": "pre_feedforward_layernorm" if gemma else "post_attention_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.gate_up_proj" if family == "phi3" else "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }.get(base)


def hf_name(name, family):
    top = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if name in top:
        return top[name]
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blk":
        return None
    part = layer_name(parts[2], family)
    if part is None:
        return None
    return f"model.layers.{parts[1]}.{part}.{parts[3]}"


def unpermute(w, n_head):
    """Inverse of llama.cpp's Q/K permutation for interleaved RoPE."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama3_scaling(factors, head_dim, theta):
    """rope_scaling parameters that reproduce `factors` (transformers' llama3 formula)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    factor = float(np.max(factors))
    for original in (8192, 4096, 2048, 16384, 32768, 65536):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0)):
            low_w, high_w = original / low, original / high
            scaled = np.where(wavelen > low_w, inv_freq / factor, inv_freq)
            smooth = (original / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelen >= high_w) & (wavelen <= low_w)
            scaled = np.where(medium, smoothed, scaled)
            if np.allclose(inv_freq / scaled, factors, rtol=1e-4):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": original,
                }
    die("rope_freqs.weight does not match Llama 3 RoPE scaling with usual parameters")


def to_dtype(a, dtype):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return a, "float32"
    if dtype == "f16":
        return a.astype(np.float16), "float16"
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded, "bfloat16"


def read_tensors(reader, meta, family):
    heads = int(meta.need(f"{family}.attention.head_count"))
    kv_heads = int(meta.get(f"{family}.attention.head_count_kv", heads))
    out = {}
    rope_freqs = None
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape.tolist())]
        values = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if t.name == "rope_freqs.weight":
            rope_freqs = values
            continue
        name = hf_name(t.name, family)
        if name is None:
            die(f"tensor {t.name} has no Hugging Face name here")
        if family == "llama" and ".attn_q." in t.name:
            values = unpermute(values, heads)
        elif family == "llama" and ".attn_k." in t.name:
            values = unpermute(values, kv_heads)
        if family == "gemma3" and t.name.endswith("norm.weight"):
            values = values - 1.0
        out[name] = values
    return out, rope_freqs


def config_json(meta, family, tensors, rope_freqs):
    k = lambda key, default=None: meta.get(f"{family}.{key}", default)  # noqa: E731
    hidden = int(k("embedding_length"))
    heads = int(k("attention.head_count"))
    layers = int(k("block_count"))
    head_dim = int(k("attention.key_length", hidden // heads))
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    window = k("attention.sliding_window")
    arch, model_type = HF_ARCH[family]
    if family == "llama" and window:
        arch, model_type = "MistralForCausalLM", "mistral"
    cfg = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(k("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(k("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(k("context_length")),
        "rms_norm_eps": float(k("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(k("rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "torch_dtype": None,
    }
    name = meta.get("general.name")
    if name:
        cfg["_name_or_path"] = name
    if k("rope.scaling.type") == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(k("rope.scaling.factor"))}
    if rope_freqs is not None:
        cfg["rope_scaling"] = llama3_scaling(rope_freqs, head_dim, cfg["rope_theta"])
    if family == "gemma3":
        pattern = k("attention.sliding_window_pattern", k("attention.sliding_window_type", 6))
        local = k("rope.freq_base_swa", k("rope.local_freq_base", 10000.0))
        cfg.update({
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
            "sliding_window": int(window) if window else None,
            "sliding_window_pattern": int(pattern),
            "rope_local_base_freq": float(local),
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
        })
    else:
        cfg["hidden_act"] = "silu"
        if window:
            cfg["sliding_window"] = int(window)
            if family in ("qwen2", "qwen3"):
                cfg["use_sliding_window"] = True
                cfg["max_window_layers"] = 0
    return cfg


def merges_by_score(tokens, scores):
    """SentencePiece BPE as BPE merges: every split of every piece, best joined piece first."""
    index = {t: i for i, t in enumerate(tokens)}
    merges = []
    for joined, piece in enumerate(tokens):
        mine = []
        for cut in range(1, len(piece)):
            left, right = index.get(piece[:cut]), index.get(piece[cut:])
            if left is not None and right is not None:
                mine.append((joined, left, right))
        mine.sort(key=lambda m: (scores[m[1]], scores[m[2]]), reverse=True)
        merges.extend(mine)
    merges.sort(key=lambda m: scores[m[0]], reverse=True)
    return [[tokens[left], tokens[right]] for _, left, right in merges]


def split(pattern):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def tokenizer_files(meta, context):
    model = meta.need("tokenizer.ggml.model")
    tokens = list(meta.need("tokenizer.ggml.tokens"))
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": ty != CONTROL, "special": ty == CONTROL}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)
    ]
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
           "ignore_merges": False, "vocab": vocab}
    if model == "gpt2":
        bpe["merges"] = [m.split(" ", 1) for m in meta.need("tokenizer.ggml.merges")]
        pre = meta.get("tokenizer.ggml.pre", "gpt2")
        pre_tokenizer = {
            "gpt2": byte_level(True),
            "default": byte_level(True),
            "smollm": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True}, byte_level(True)]},
            "llama-bpe": {"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(False)]},
            "llama3": {"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(False)]},
            "qwen2": {"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(False)]},
        }.get(pre)
        if pre_tokenizer is None:
            die(f"pre-tokenizer {pre} is not supported")
        normalizer, decoder = None, {"type": "ByteLevel", "add_prefix_space": True,
                                     "trim_offsets": True, "use_regex": True}
    elif model == "llama":
        scores = list(meta.need("tokenizer.ggml.scores"))
        bpe["merges"] = merges_by_score(tokens, scores)
        bpe.update({"byte_fallback": True, "fuse_unk": True})
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        if unk is not None:
            bpe["unk_token"] = tokens[unk]
        norms = []
        if meta.get("tokenizer.ggml.add_space_prefix", True):
            norms.append({"type": "Prepend", "prepend": SPACE})
        norms.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
        normalizer = {"type": "Sequence", "normalizers": norms}
        pre_tokenizer = None
        decoder = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
    else:
        die(f"tokenizer model {model} is not supported (gpt2, llama)")

    single, specials = [], {}
    if add_bos and bos is not None:
        single.append({"SpecialToken": {"id": tokens[bos], "type_id": 0}})
        specials[tokens[bos]] = {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    if add_eos and eos is not None:
        single.append({"SpecialToken": {"id": tokens[eos], "type_id": 0}})
        specials[tokens[eos]] = {"id": tokens[eos], "ids": [eos], "tokens": [tokens[eos]]}
    pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": specials},
        "decoder": decoder, "model": bpe,
    }
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": context,
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        tok_config["chat_template"] = template
    eos_ids = [meta.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                     "tokenizer.ggml.eom_token_id")]
    if "<end_of_turn>" in vocab:
        eos_ids.append(vocab["<end_of_turn>"])
    eos_ids = sorted({int(i) for i in eos_ids if i is not None})
    generation = {"bos_token_id": bos, "eos_token_id": eos_ids}
    return tokenizer, tok_config, generation


def write_weights(out, tensors, dtype, shards):
    names = list(tensors)
    converted = {n: to_dtype(tensors[n], dtype) for n in names}
    total = sum(a.nbytes for a, _ in converted.values())
    groups, current, size = [], [], 0
    for n in names:
        current.append(n)
        size += converted[n][0].nbytes
        if size >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(current)
            current = []
    groups.append(current)
    groups = [g for g in groups if g]
    weight_map = {}
    for i, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        specs = {}
        for n in group:
            a, dt = converted[n]
            specs[n] = TensorSpec(dtype=dt, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
            weight_map[n] = fname
        serialize_file(specs, os.path.join(out, fname), {"format": "pt"})
    if shards > 1:
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    if args.shards < 1:
        die("--shards must be at least 1")
    reader = GGUFReader(args.gguf)
    meta = Meta(reader)
    family = meta.need("general.architecture")
    if family not in HF_ARCH:
        die(f"architecture {family} is not supported ({', '.join(HF_ARCH)})")
    tensors, rope_freqs = read_tensors(reader, meta, family)
    cfg = config_json(meta, family, tensors, rope_freqs)
    cfg["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[args.dtype]
    tokenizer, tok_config, generation = tokenizer_files(meta, cfg["max_position_embeddings"])
    cfg["bos_token_id"] = generation["bos_token_id"]
    cfg["eos_token_id"] = generation["eos_token_id"]
    os.makedirs(args.out, exist_ok=True)
    for fname, value in (("config.json", cfg), ("tokenizer.json", tokenizer),
                         ("tokenizer_config.json", tok_config),
                         ("generation_config.json", generation)):
        with open(os.path.join(args.out, fname), "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=None if fname == "tokenizer.json" else 2)
    total = write_weights(args.out, tensors, args.dtype, args.shards)
    print(f"wrote {args.out}: {cfg['architectures'][0]}, {len(tensors)} tensors, "
          f"{total / 1e6:.1f} MB {args.dtype} in {args.shards} file(s)")


if __name__ == "__main__":
    main()
