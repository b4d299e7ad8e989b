#!/usr/bin/env python3
"""Helpers for bench/run repl-wan (stdlib only).

usage: wan.py COMMAND ARGS...

  gen-exact DIR COUNT BYTES
      writes COUNT random (incompressible) files of exactly BYTES bytes each
      into DIR (file-NNNNN.bin)
  publish-lag HUB SPOKE FEED KEY PATH BYTES POLL_MS TIMEOUT_S
      PUTs a new random asset of BYTES bytes at FEED/PATH on HUB, then, from
      the moment the PUT returned 201, GETs it from SPOKE every POLL_MS on a
      keep-alive connection until the spoke answers 200 with the same body;
      prints lag_ms (body in), headers_lag_ms (the 200's headers in), polls
  proxy-stats FILE ITEMS PAGE
      reads a latency_proxy.py stats file; prints key=value: connections,
      requests, requests_per_item, turns, turns_per_page (ITEMS / PAGE
      pages), bytes up/down, blob_gets, and the request kinds
  median V...
      the median of the numbers

Every network call is bounded by a timeout and every loop by a deadline.
Only http:// URLs on 127.0.0.1 are used (bench/run passes no others).
"""

import http.client
import json
import os
import statistics
import sys
import time
import urllib.parse


def split_base(base):
    u = urllib.parse.urlsplit(base)
    if u.scheme != "http" or not u.hostname:
        raise SystemExit(f"not an http:// URL: {base}")
    return u.hostname, u.port or 80


def gen_exact(outdir, count, size):
    os.makedirs(outdir, exist_ok=True)
    for i in range(count):
        with open(os.path.join(outdir, f"file-{i:05d}.bin"), "wb") as f:
            left = size
            while left > 0:
                n = min(1 << 20, left)
                f.write(os.urandom(n))
                left -= n
    print(f"files={count}")
    print(f"bytes={count * size}")


def publish_lag(hub, spoke, feed, key, path, size, poll_ms, timeout):
    body = os.urandom(size)
    hh, hp = split_base(hub)
    sh, sp = split_base(spoke)
    url = f"/assets/{feed}/{path}"
    look = http.client.HTTPConnection(sh, sp, timeout=30)
    look.connect()  # opened before the publish: the lag has no connect in it
    pub = http.client.HTTPConnection(hh, hp, timeout=60)
    try:
        pub.request("PUT", url, body=body, headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/octet-stream",
        })
        r = pub.getresponse()
        r.read()
        t_done = time.perf_counter()
        if r.status != 201:
            raise SystemExit(f"PUT {url}: HTTP {r.status}")
        deadline = t_done + timeout
        polls = 0
        while True:
            look.request("GET", url)
            r = look.getresponse()
            t_hdr = time.perf_counter()
            data = r.read()
            polls += 1
            if r.status == 200 and data == body:
                t_in = time.perf_counter()
                break
            if r.getheader("connection", "").lower() == "close":
                look.close()
                look = http.client.HTTPConnection(sh, sp, timeout=30)
            if time.perf_counter() > deadline:
                raise SystemExit(f"{url} not served by the spoke within {timeout} s")
            time.sleep(poll_ms / 1000.0)
    finally:
        pub.close()
        look.close()
    print(f"lag_ms={(t_in - t_done) * 1000:.2f}")
    print(f"headers_lag_ms={(t_hdr - t_done) * 1000:.2f}")
    print(f"polls={polls}")


def proxy_stats(path, items, page):
    with open(path) as f:
        d = json.load(f)
    pages = max(1.0, items / page)
    kinds = d.get("requests_by_kind") or {}
    blob_gets = sum(v for k, v in kinds.items() if k.startswith("GET ") and "/blobs/" in k)
    print(f"connections={d['connections']}")
    print(f"requests={d['http_requests']}")
    print(f"http2_connections={d['http2_connections']}")
    print(f"requests_per_item={d['http_requests'] / items if items else 0:.3f}")
    print(f"turns={d['turns']}")
    print(f"turns_per_page={d['turns'] / pages:.1f}")
    print(f"bytes_up={d['bytes_up']}")
    print(f"bytes_down={d['bytes_down']}")
    print(f"blob_gets={blob_gets}")
    print("kinds=" + "; ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, a = argv[1], argv[2:]
    if cmd == "gen-exact":
        gen_exact(a[0], int(a[1]), int(a[2]))
    elif cmd == "publish-lag":
        publish_lag(a[0], a[1], a[2], a[3], a[4], int(a[5]), float(a[6]), float(a[7]))
    elif cmd == "proxy-stats":
        proxy_stats(a[0], int(a[1]), int(a[2]))
    elif cmd == "median":
        print(statistics.median(float(x) for x in a))
    else:
        print(f"unknown command {cmd}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
