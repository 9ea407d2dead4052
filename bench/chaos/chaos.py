#!/usr/bin/env python3
"""Chaos run against a `migserve serve` front: closed-loop clients mixing streamed and
non-streamed greedy requests (TGI and OpenAI) while a random worker is SIGKILLed at a fixed
interval. Every answer is checked against the same request's answer taken before the kills:
a request is lost if it gets no 200 or its connection breaks, an error if its answer (or a
stream's event) is an error, wrong if its text or token count differ.

Standard library only. Usage:
  chaos.py --url http://127.0.0.1:8080 --model smol --clients 16 --duration 120 \
           --kill-every 10 --out DIR
"""

import argparse
import http.client
import json
import os
import random
import signal
import threading
import time
import urllib.parse

PROMPTS = [
    "Write one sentence about the sea.",
    "Name three colours and say why you like them.",
    "Explain what a lighthouse does.",
    "Describe a cat in two sentences.",
    "What is the capital of France? Answer briefly.",
    "Give a short tip for learning to cook.",
    "Tell a very short story about a robot.",
    "Why is the sky blue? Keep it short.",
]

KINDS = ["tgi", "tgi_stream", "chat", "chat_stream", "completion_stream"]


def request_for(kind, prompt, model, tokens):
    """The (path, body) of a greedy request of `kind`."""
    if kind in ("tgi", "tgi_stream"):
        body = {"inputs": prompt, "parameters": {"max_new_tokens": tokens, "details": True}}
        return ("/generate" if kind == "tgi" else "/generate_stream"), body
    if kind in ("chat", "chat_stream"):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": tokens, "temperature": 0}
    else:
        body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    if kind.endswith("_stream"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    path = "/v1/chat/completions" if kind.startswith("chat") else "/v1/completions"
    return path, body


def read_answer(kind, response):
    """(text, tokens, error) of a response."""
    raw = response.read().decode("utf-8", "replace")
    if not kind.endswith("_stream"):
        v = json.loads(raw)
        if kind == "tgi":
            return v["generated_text"], v["details"]["generated_tokens"], None
        return v["choices"][0]["message"]["content"], v["usage"]["completion_tokens"], None
    events = []
    for line in raw.split("\n"):
        if line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                break
            events.append(json.loads(data))
    if not events:
        return None, None, "empty stream"
    for e in events:
        if "error" in e:
            return None, None, "error event: " + json.dumps(e)[:200]
    last = events[-1]
    if kind == "tgi_stream":
        text = "".join(e["token"]["text"] for e in events)
        if last.get("generated_text") != text:
            return None, None, "generated_text differs from the tokens"
        return text, last["details"]["generated_tokens"], None
    text = ""
    for e in events:
        for c in e.get("choices", []):
            text += c.get("delta", {}).get("content") or c.get("text") or ""
    return text, last["usage"]["completion_tokens"], None


def call(base, kind, prompt, model, tokens, timeout=300):
    path, body = request_for(kind, prompt, model, tokens)
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return {"lost": f"status {r.status}: {r.read()[:200]!r}"}
        retries = int(r.getheader("x-router-retries") or 0)
        text, count, error = read_answer(kind, r)
        return {"text": text, "tokens": count, "error": error, "retries": retries,
                "slice": r.getheader("x-slice")}
    except Exception as e:  # a broken connection is a lost request
        return {"lost": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()


def get_json(base, path):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="smol")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--kill-every", type=float, default=10)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)

    # The answers without kills, one per (kind, prompt).
    reference = {}
    for kind in KINDS:
        for prompt in PROMPTS:
            r = call(a.url, kind, prompt, a.model, a.tokens)
            if "lost" in r or r["error"]:
                raise SystemExit(f"reference {kind} {prompt!r} failed: {r}")
            reference[(kind, prompt)] = (r["text"], r["tokens"])

    results = []
    lock = threading.Lock()
    stop_at = time.time() + a.duration

    def client(i):
        local = random.Random(a.seed * 1000 + i)
        while time.time() < stop_at:
            kind, prompt = local.choice(KINDS), local.choice(PROMPTS)
            started = time.time()
            r = call(a.url, kind, prompt, a.model, a.tokens)
            r.update(kind=kind, prompt=prompt, started=started, secs=time.time() - started)
            if "lost" not in r and not r["error"]:
                r["wrong"] = (r["text"], r["tokens"]) != reference[(kind, prompt)]
            with lock:
                results.append(r)

    kills = []

    def killer():
        next_kill = time.time() + a.kill_every
        while next_kill < stop_at:
            time.sleep(max(0.0, next_kill - time.time()))
            slices = [s for s in get_json(a.url, "/slices")
                      if s.get("state") == "ready" and s.get("pid")]
            if slices:
                victim = rng.choice(slices)
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                    kills.append({"at": time.time(), "slice": victim["id"], "pid": victim["pid"]})
                except ProcessLookupError:
                    pass
            next_kill += a.kill_every

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    threads.append(threading.Thread(target=killer))
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - started

    slices = get_json(a.url, "/slices")
    streams = [r for r in results if r["kind"].endswith("_stream")]
    summary = {
        "requests": len(results),
        "streams": len(streams),
        "kills": len(kills),
        "lost": sum("lost" in r for r in results),
        "errors": sum(bool(r.get("error")) for r in results),
        "wrong": sum(bool(r.get("wrong")) for r in results),
        "retried_before_first_byte": sum(r.get("retries", 0) > 0 for r in results),
        "streams_continued_elsewhere": sum(s.get("resumes", 0) for s in slices),
        "wall_secs": round(wall, 1),
        "clients": a.clients,
        "kill_every_secs": a.kill_every,
        "new_tokens": a.tokens,
    }
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(a.out, "kills.json"), "w") as f:
        json.dump(kills, f, indent=2)
    with open(os.path.join(a.out, "failures.json"), "w") as f:
        bad = [r for r in results if "lost" in r or r.get("error") or r.get("wrong")]
        json.dump(bad, f, indent=2)
    print(json.dumps(summary, indent=2))
    ok = summary["lost"] == 0 and summary["errors"] == 0 and summary["wrong"] == 0
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
