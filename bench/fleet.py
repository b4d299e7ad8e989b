#!/usr/bin/env python3
"""Client side of bench/run's fleet section (stdlib only).

usage: fleet.py COMMAND ARGS...

  fan-out HUB FEED KEY HUB_PID SPOKES_FILE COUNT SPACING_MS POLL_MS TIMEOUT_S
      SPOKES_FILE has one line per spoke: "PID URL". Publishes COUNT assets
      of 1 KiB on HUB one at a time (after one warm-up publish, not counted;
      each PUT starts at least SPACING_MS after the previous fan-out ended)
      and, right after each PUT returns 201, GETs the asset from every spoke
      every POLL_MS (one keep-alive connection per spoke, all driven from one
      thread with non-blocking sockets) until each answers 200 with the same
      body. Per publish it reads the CPU time (utime + stime of
      /proc/PID/stat) of the hub and of all spokes from just before the PUT
      to when the last spoke served it, and samples the hub's VmRSS every
      50 ms; the hub's VmHWM is reset (/proc/PID/clear_refs) first and read
      at the end. Prints JSON: lag_ms (every spoke of every publish, ms from
      the PUT's return to the whole body in), last_ms (per publish, the
      slowest spoke), hub_cpu_ms and spokes_cpu_ms (per publish), window_ms
      (per publish, PUT start to last spoke served), hub_rss_kib_before,
      hub_rss_kib_peak, polls (GETs sent in all)
  stats FILE
      p50/p99/max of a fan-out output, key=value

Every network call is bounded by a timeout and every loop by a deadline.
Only http:// URLs on 127.0.0.1 are used. Progress and errors go to stderr.
"""

import http.client
import json
import math
import os
import selectors
import socket
import sys
import time
import urllib.parse

HZ = os.sysconf("SC_CLK_TCK")


def err(msg):
    print(f"[fleet.py] {msg}", file=sys.stderr, flush=True)


def host_port(base):
    u = urllib.parse.urlsplit(base)
    if u.scheme != "http" or not u.hostname:
        raise SystemExit(f"not an http:// URL: {base}")
    return u.hostname, u.port or 80


def cpu_ms(pids):
    """utime + stime of the given processes, in ms (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total * 1000.0 / HZ


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def parse_response(buf):
    """(status, body, bytes consumed, server closes) of the first complete
    HTTP/1.1 response in buf, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    pos = end + 4
    close = headers.get("connection", "").lower() == "close"
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(buf) < pos + n:
            return None
        return status, bytes(buf[pos : pos + n]), pos + n, close
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
            if size == 0:
                return status, bytes(body), pos, close
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", pos, close
    raise SystemExit("a response without Content-Length or chunked body; not supported here")


class Poller:
    """One keep-alive connection per spoke, driven from one thread."""

    def __init__(self, urls):
        self.addrs = [host_port(u) for u in urls]
        self.socks = [None] * len(urls)
        self.bufs = [bytearray() for _ in urls]
        self.sel = selectors.DefaultSelector()
        self.polls = 0
        self.rss_pid = None  # a process whose VmRSS is sampled while polling
        self.rss_peak = 0

    def _connect(self, i):
        s = socket.create_connection(self.addrs[i], timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.socks[i] = s
        self.bufs[i] = bytearray()
        self.sel.register(s, selectors.EVENT_READ, i)

    def _drop(self, i):
        s = self.socks[i]
        if s is not None:
            self.sel.unregister(s)
            s.close()
            self.socks[i] = None

    def _send(self, i, path):
        host, port = self.addrs[i]
        req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        for attempt in (0, 1):
            if self.socks[i] is None:
                self._connect(i)
            try:
                self.socks[i].sendall(req)
                self.polls += 1
                return
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                self._drop(i)
                if attempt:
                    raise

    def wait_all(self, path, body, poll_s, deadline):
        """GETs path from every spoke every poll_s until each serves body.
        Returns per spoke the perf_counter time its matching answer was in."""
        n = len(self.addrs)
        seen = [None] * n
        due = [0.0] * n  # when to send the next GET (0: at once)
        busy = [False] * n
        rss_peak = 0
        next_rss = 0.0
        left = n
        while left:
            now = time.perf_counter()
            if now > deadline:
                missing = [i for i in range(n) if seen[i] is None]
                raise SystemExit(f"{path}: {len(missing)} spokes did not serve it in time (first: #{missing[0]})")
            for i in range(n):
                if seen[i] is None and not busy[i] and due[i] <= now:
                    self._send(i, path)
                    busy[i] = True
                    due[i] = now + poll_s
            if now >= next_rss and self.rss_pid:
                rss_peak = max(rss_peak, status_kib(self.rss_pid, "VmRSS"))
                next_rss = now + 0.05
            wake = [due[i] for i in range(n) if seen[i] is None and not busy[i]]
            timeout = max(0.0, min(wake) - time.perf_counter()) if wake else 0.05
            for key, _ in self.sel.select(min(timeout, 0.05)):
                i = key.data
                try:
                    data = self.socks[i].recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:  # closed between two requests: ask again
                    self._drop(i)
                    busy[i] = False
                    due[i] = 0.0
                    continue
                self.bufs[i] += data
                r = parse_response(self.bufs[i])
                if r is None:
                    continue
                t = time.perf_counter()
                status, got, used, close = r
                del self.bufs[i][:used]
                busy[i] = False
                if close:
                    self._drop(i)
                if status == 200 and got == body:
                    seen[i] = t
                    left -= 1
                elif status not in (200, 404):
                    err(f"spoke #{i}: GET {path}: HTTP {status}")
        self.rss_peak = max(self.rss_peak, rss_peak)
        return seen

    def close(self):
        for i in range(len(self.socks)):
            self._drop(i)
        self.sel.close()


def percentile(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(v)))
    return v[k - 1]


def fan_out(hub, feed, key, hub_pid, spokes_file, count, spacing_ms, poll_ms, timeout):
    spokes = []
    with open(spokes_file) as f:
        for line in f:
            if line.strip():
                pid, url = line.split()
                spokes.append((int(pid), url))
    spoke_pids = [p for p, _ in spokes]
    host, port = host_port(hub)
    pub = http.client.HTTPConnection(host, port, timeout=30)
    poller = Poller([u for _, u in spokes])
    poller.rss_pid = hub_pid
    try:
        with open(f"/proc/{hub_pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError as e:
        err(f"cannot reset the hub's VmHWM: {e}")
    rss_before = status_kib(hub_pid, "VmRSS")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
    salt = os.urandom(6).hex()
    out = {"lag_ms": [], "last_ms": [], "hub_cpu_ms": [], "spokes_cpu_ms": [], "window_ms": []}
    prev_end = None
    try:
        for i in range(-1, count):  # -1: a warm-up publish, not counted
            if prev_end is not None:
                wait = prev_end + spacing_ms / 1000.0 - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            body = f"fleet probe {i} {salt}\n".encode() + os.urandom(1000)
            path = f"/assets/{feed}/fleet/{i + 1:04d}.bin"
            h0, s0 = cpu_ms([hub_pid]), cpu_ms(spoke_pids)
            t_start = time.perf_counter()
            pub.request("PUT", path, body=body, headers=headers)
            r = pub.getresponse()
            resp = r.read()
            t_done = time.perf_counter()
            if r.status != 201:
                raise SystemExit(f"PUT {path}: HTTP {r.status}: {resp[:200]!r}")
            seen = poller.wait_all(path, body, poll_ms / 1000.0, t_done + timeout)
            prev_end = max(seen)
            h1, s1 = cpu_ms([hub_pid]), cpu_ms(spoke_pids)
            lags = [(t - t_done) * 1000.0 for t in seen]
            if i >= 0:
                out["lag_ms"].extend(lags)
                out["last_ms"].append(max(lags))
                out["hub_cpu_ms"].append(h1 - h0)
                out["spokes_cpu_ms"].append(s1 - s0)
                out["window_ms"].append((prev_end - t_start) * 1000.0)
            err(
                f"publish {i + 1}/{count}{' (warm-up)' if i < 0 else ''}: served on {len(seen)} spokes, "
                f"p50 {percentile(lags, 50):.1f} ms, slowest {max(lags):.1f} ms; "
                f"CPU hub {h1 - h0:.0f} ms, spokes {s1 - s0:.0f} ms"
            )
    finally:
        pub.close()
        poller.close()
    out["hub_rss_kib_before"] = rss_before
    out["hub_rss_kib_peak"] = max(poller.rss_peak, status_kib(hub_pid, "VmHWM"))
    out["polls"] = poller.polls
    out["spokes"] = len(spokes)
    print(json.dumps(out))


def stats(path):
    with open(path) as f:
        d = json.load(f)
    lags = d["lag_ms"]
    print(f"n={len(lags)}")
    print(f"p50={percentile(lags, 50):.2f}")
    print(f"p99={percentile(lags, 99):.2f}")
    print(f"max={max(lags):.2f}")
    print(f"last_p50={percentile(d['last_ms'], 50):.2f}")
    print(f"last_p99={percentile(d['last_ms'], 99):.2f}")
    n = len(d["hub_cpu_ms"])
    print(f"hub_cpu_ms={sum(d['hub_cpu_ms']) / n:.1f}")
    print(f"spokes_cpu_ms={sum(d['spokes_cpu_ms']) / n:.1f}")
    print(f"window_ms={sum(d['window_ms']) / n:.1f}")
    print(f"hub_rss_kib_before={d['hub_rss_kib_before']}")
    print(f"hub_rss_kib_peak={d['hub_rss_kib_peak']}")
    print(f"polls={d['polls']}")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "fan-out" and len(args) == 9:
        hub, feed, key, hub_pid, spokes_file, count, spacing, poll, timeout = args
        fan_out(hub, feed, key, int(hub_pid), spokes_file, int(count), int(spacing), int(poll), float(timeout))
    elif cmd == "stats" and len(args) == 1:
        stats(args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
