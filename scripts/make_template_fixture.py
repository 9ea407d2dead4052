#!/usr/bin/env python3
"""Writes models/tests/fixtures/templates/expected.json: each chat template in
models/tests/fixtures/templates/*.jinja (the models' own `chat_template` texts, as published
with them) rendered by Python's jinja2 the way transformers' `apply_chat_template` renders them
(a sandboxed environment with trim_blocks and lstrip_blocks, loop controls, `raise_exception`,
`tojson` without ASCII escaping), for a few conversations; a template that refuses one records
its error message. Our renderer (minijinja) must give the same text or the same refusal.

Run once after changing the templates or conversations:
    pip install jinja2
    python3 scripts/make_template_fixture.py
"""
import glob
import json
import os
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "models", "tests", "fixtures", "templates")

# The special-token texts each model's tokenizer gives the template.
TOKENS = {
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B": ("", "<|im_end|>"),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>"),
}

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "Hello!"}],
    "system_and_turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "  Capital of France?  "},
    ],
    "turns": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ],
    "two_users_in_a_row": [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Hello?"},
    ],
}


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main() -> int:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    out = []
    for path in sorted(glob.glob(os.path.join(DIR, "*.jinja"))):
        name = os.path.basename(path)[: -len(".jinja")]
        bos, eos = TOKENS[name]
        template = env.from_string(open(path).read())
        for conv, messages in CONVERSATIONS.items():
            case = {"template": name, "conversation": conv, "bos_token": bos, "eos_token": eos}
            try:
                case["text"] = template.render(messages=messages, add_generation_prompt=True,
                                               bos_token=bos, eos_token=eos)
            except TemplateError as e:
                case["error"] = str(e)
            out.append(case)
    with open(os.path.join(DIR, "expected.json"), "w") as f:
        json.dump({"conversations": CONVERSATIONS, "cases": out}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(out)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
