#!/usr/bin/env python3
"""Client-side helpers for the replication parts of bench/run (stdlib only).

usage: repl.py COMMAND ARGS...

  gen-files DIR COUNT TOTAL_BYTES SEED
      writes COUNT random (incompressible) files into DIR, of random sizes
      (uniform around the mean) adding up to TOTAL_BYTES exactly
  put-files BASE FEED DIR PREFIX KEY CONNS
      PUTs every file of DIR as asset FEED/PREFIX/NAME over CONNS keep-alive
      connections (the body streamed from disk)
  put-small BASE FEED PREFIX START COUNT KEY CONNS
      PUTs COUNT small assets FEED/PREFIX/NNN/item-NNNNNN.txt (a unique
      body of ~40 bytes each, so one blob per item) over CONNS connections
  wait-exec BASE KEY NAME AFTER_MS TIMEOUT_S
      polls replication NAME's executions until one that started at or after
      AFTER_MS (epoch ms) has ended having pulled at least one item; prints it
  lag-ferry HUB SPOKE FEED KEY COUNT SPACING_MS POLL_MS TIMEOUT_S
      publishes COUNT assets on HUB one at a time (after one warm-up publish,
      not counted; each PUT starts at least SPACING_MS after the previous one)
      and, right after each PUT returns, polls SPOKE every POLL_MS on a
      keep-alive connection until it serves the asset; prints as JSON, in ms
      from the PUT's return: when the whole body was in (lag_ms) and when the
      200's headers were in (headers_lag_ms)
  lag-devpi PRIMARY REPLICA INDEX USER PASSWORD SPACING_MS POLL_MS TIMEOUT_S WHEEL...
      the same for devpi: uploads each wheel to PRIMARY/INDEX/ as twine does
      and polls REPLICA for the file's URL
  lag-cargo HUB SPOKE FEED KEY COUNT SPACING_MS POLL_MS TIMEOUT_S
      the same for a cargo feed: publishes COUNT versions of one crate on HUB
      (PUT /cargo/FEED/api/v1/crates/new, the body cargo sends, with a .crate
      made here) and polls the crate's index file on SPOKE until it has the
      version's line (what `cargo update` reads)
  stats FILE
      p50/p99/max of the lags in a lag-* output
  carried FILE AFTER_MS
      from a `ferry replication executions --json` output: the executions that
      started at or after AFTER_MS and pulled something; prints their count,
      the items and bytes they pulled, their summed durations and their span
      (first start to last end), and the outcomes of all
  proxy-ctl CONTROL_PORT reset|dump|totals
      sends one command to countproxy.py and prints its answer
  wire CONTROL_PORT EXEC_JSON_FILE
      the requests countproxy.py saw since its last reset, split into those
      of the execution in EXEC_JSON_FILE (a wait-exec output: requests that
      started between its started_at and ended_at, long polls excluded) and
      the long polls (changes?...&wait=N with N > 0); prints key=value

Every network call is bounded by a timeout; every loop by a count or a
deadline. Only http:// URLs are used, and bench/run passes 127.0.0.1 only.
Progress and errors go to stderr; results to stdout (key=value or JSON).
"""

import base64
import hashlib
import http.client
import json
import math
import os
import random
import sys
import threading
import time
import urllib.parse

HTTP_TIMEOUT = 120.0


def err(msg):
    print(f"[repl.py] {msg}", file=sys.stderr, flush=True)


def split_base(base):
    u = urllib.parse.urlsplit(base)
    if u.scheme != "http" or not u.hostname:
        raise SystemExit(f"not an http:// URL: {base}")
    return u.hostname, u.port or 80, u.path.rstrip("/")


class Conn:
    """One keep-alive HTTP/1.1 connection that reconnects once if the
    server closed it between two requests."""

    def __init__(self, base, timeout=HTTP_TIMEOUT, blocksize=256 * 1024):
        self.host, self.port, self.prefix = split_base(base)
        self.timeout = timeout
        self.blocksize = blocksize
        self.c = None
        self.t_headers = 0.0  # when the last response's headers were in

    def _open(self):
        self.c = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout, blocksize=self.blocksize
        )

    def request(self, method, path, body=None, headers=None):
        """Returns (status, body bytes)."""
        for attempt in (0, 1):
            if self.c is None:
                self._open()
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                self.c.request(method, self.prefix + path, body=body, headers=headers or {})
                r = self.c.getresponse()
                self.t_headers = time.perf_counter()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def run_parallel(n_workers, work):
    """Runs work(worker_index) in n_workers threads; re-raises the first error."""
    errors = []

    def wrap(i):
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- data

def gen_files(outdir, count, total, seed):
    rng = random.Random(seed)
    raw = [rng.uniform(0.25, 1.75) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    sizes[-1] += total - sum(sizes)
    if sizes[-1] < 1:
        raise SystemExit("sizes do not add up; use more bytes per file")
    os.makedirs(outdir, exist_ok=True)
    width = max(5, len(str(count)))
    chunk = 1 << 20
    for i, size in enumerate(sizes):
        with open(os.path.join(outdir, f"asset-{i:0{width}d}.bin"), "wb") as f:
            left = size
            while left > 0:
                n = min(chunk, left)
                f.write(os.urandom(n))
                left -= n
    print(f"files={count}")
    print(f"bytes={sum(sizes)}")
    print(f"min_bytes={min(sizes)}")
    print(f"max_bytes={max(sizes)}")


def put_files(base, feed, srcdir, prefix, key, conns):
    names = sorted(os.listdir(srcdir))
    done = [0, 0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def work(w):
        c = Conn(base, blocksize=1 << 20)
        try:
            for name in names[w::conns]:
                path = os.path.join(srcdir, name)
                size = os.path.getsize(path)
                with open(path, "rb") as f:
                    hdr = dict(auth(key))
                    hdr["Content-Length"] = str(size)
                    hdr["Content-Type"] = "application/octet-stream"
                    st, body = c.request("PUT", f"/assets/{feed}/{prefix}/{name}", body=f, headers=hdr)
                if st != 201:
                    raise SystemExit(f"PUT {name}: HTTP {st}: {body[:200]!r}")
                with lock:
                    done[0] += 1
                    done[1] += size
        finally:
            c.close()

    run_parallel(conns, work)
    secs = time.monotonic() - t0
    print(f"items={done[0]}")
    print(f"bytes={done[1]}")
    print(f"seconds={secs:.3f}")


def small_key(prefix, i):
    return f"{prefix}/{i // 1000:03d}/item-{i:06d}.txt"


def put_small(base, feed, prefix, start, count, key, conns):
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()
    last_report = [t0]
    salt = os.urandom(6).hex()  # bodies differ from one run to the next

    def work(w):
        c = Conn(base)
        hdr = dict(auth(key))
        hdr["Content-Type"] = "text/plain"
        try:
            for i in range(start + w, start + count, conns):
                body = f"ferry bench item {i} {salt}\n".encode()
                st, resp = c.request("PUT", f"/assets/{feed}/{small_key(prefix, i)}", body=body, headers=hdr)
                if st != 201:
                    raise SystemExit(f"PUT item {i}: HTTP {st}: {resp[:200]!r}")
                with lock:
                    done[0] += 1
                    now = time.monotonic()
                    if now - last_report[0] >= 15:
                        last_report[0] = now
                        err(f"put-small: {done[0]}/{count} items, {done[0] / (now - t0):.0f}/s")
        finally:
            c.close()

    run_parallel(conns, work)
    secs = time.monotonic() - t0
    print(f"items={done[0]}")
    print(f"seconds={secs:.3f}")
    print(f"per_second={done[0] / secs if secs > 0 else 0:.1f}")


# ---------------------------------------------------------------- executions

def pulled(ex):
    tot = {"added": 0, "updated": 0, "deleted": 0, "blobs": 0, "bytes": 0}
    for f in (ex.get("report") or {}).get("feeds") or []:
        for k in tot:
            tot[k] += int((f.get("pulled") or {}).get(k) or 0)
    return tot


def wait_exec(base, key, name, after_ms, timeout):
    c = Conn(base, timeout=30)
    deadline = time.monotonic() + timeout
    path = f"/api/v1/replications/{urllib.parse.quote(name)}/executions?limit=20"
    try:
        while time.monotonic() < deadline:
            st, body = c.request("GET", path, headers=auth(key))
            if st != 200:
                raise SystemExit(f"GET executions: HTTP {st}: {body[:200]!r}")
            for ex in json.loads(body):
                if ex["started_at"] < after_ms or ex.get("ended_at") is None:
                    continue
                if pulled(ex)["added"] + pulled(ex)["updated"] >= 1:
                    ex["pulled_total"] = pulled(ex)
                    print(json.dumps(ex))
                    return 0
            time.sleep(0.01)
    finally:
        c.close()
    err(f"no finished execution of {name} carrying an item within {timeout} s")
    return 1


def carried(path, after_ms):
    with open(path) as f:
        execs = [e for e in json.load(f) if e["started_at"] >= after_ms]
    moving = [e for e in execs if e.get("ended_at") is not None and sum(pulled(e).values()) > 0]
    tot = {"added": 0, "updated": 0, "deleted": 0, "blobs": 0, "bytes": 0}
    for e in moving:
        for k, v in pulled(e).items():
            tot[k] += v
    print(f"executions={len(execs)}")
    print(f"carrying={len(moving)}")
    for k, v in tot.items():
        print(f"{k}={v}")
    print(f"duration_ms={sum(e['ended_at'] - e['started_at'] for e in moving)}")
    if moving:
        print(f"span_ms={max(e['ended_at'] for e in moving) - min(e['started_at'] for e in moving)}")
    else:
        print("span_ms=0")
    print("outcomes=" + ",".join(f"{e['id']}:{e['trigger']}:{e.get('outcome') or 'running'}" for e in execs))


# ---------------------------------------------------------------- lag

def percentile(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(v)))
    return v[k - 1]


def poll_until(conn, path, check, poll_s, deadline):
    """GETs path on conn every poll_s until check(status, body). Returns
    (when the whole body was in, when its headers were in, number of GETs)
    as perf_counter times; (None, None, n) on time-out."""
    n = 0
    while True:
        st, body = conn.request("GET", path)
        n += 1
        if check(st, body):
            return time.perf_counter(), conn.t_headers, n
        if time.perf_counter() > deadline:
            return None, None, n
        time.sleep(poll_s)


def pace(prev_start, spacing_s):
    if prev_start is not None:
        wait = prev_start + spacing_s - time.perf_counter()
        if wait > 0:
            time.sleep(wait)


def cargo_publish_body(name, vers):
    """cargo's publish body: u32-LE length + JSON, u32-LE length + .crate."""
    import gzip
    import io
    import tarfile

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        for path, data in (
            ("Cargo.toml", f'[package]\nname = "{name}"\nversion = "{vers}"\nedition = "2021"\n'.encode()),
            ("src/lib.rs", f"pub const VERSION: &str = {vers!r};\n".replace("'", '"').encode()),
        ):
            info = tarfile.TarInfo(f"{name}-{vers}/{path}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    krate = gzip.compress(tar.getvalue())
    meta = json.dumps(
        {"name": name, "vers": vers, "deps": [], "features": {}, "description": "lag probe", "links": None}
    ).encode()
    return len(meta).to_bytes(4, "little") + meta + len(krate).to_bytes(4, "little") + krate


def cargo_index_path(name):
    n = name.lower()
    if len(n) <= 2:
        return f"{len(n)}/{n}"
    if len(n) == 3:
        return f"3/{n[0]}/{n}"
    return f"{n[:2]}/{n[2:4]}/{n}"


def lag_cargo(hub, spoke, feed, key, count, spacing_ms, poll_ms, timeout):
    pub, look = Conn(hub, timeout=30), Conn(spoke, timeout=30)
    headers = {"Authorization": key}  # as cargo sends it
    name = "ferry-lag-probe"
    index = f"/cargo/{feed}/{cargo_index_path(name)}"
    lags, from_start, polls = [], [], []
    prev = None
    try:
        for i in range(-1, count):  # -1: a warm-up publish, not counted
            pace(prev, spacing_ms / 1000.0)
            vers = f"0.{i + 1}.0"
            body = cargo_publish_body(name, vers)
            prev = t_start = time.perf_counter()
            st, resp = pub.request("PUT", f"/cargo/{feed}/api/v1/crates/new", body=body, headers=headers)
            t_done = time.perf_counter()
            if st != 200:
                raise SystemExit(f"publish {name} {vers}: HTTP {st}: {resp[:200]!r}")
            needle = f'"vers":"{vers}"'.encode()
            seen, _, n = poll_until(
                look, index, lambda s, b: s == 200 and needle in b, poll_ms / 1000.0, t_done + timeout
            )
            if seen is None:
                raise SystemExit(f"{name} {vers} not in the spoke's index within {timeout} s")
            if i >= 0:
                lags.append((seen - t_done) * 1000.0)
                from_start.append((seen - t_start) * 1000.0)
                polls.append(n)
    finally:
        pub.close()
        look.close()
    # The index file is small: headers and body arrive together.
    print(json.dumps({"lag_ms": lags, "headers_lag_ms": lags, "from_put_start_ms": from_start, "polls": polls}))


def lag_ferry(hub, spoke, feed, key, count, spacing_ms, poll_ms, timeout):
    pub, look = Conn(hub, timeout=30), Conn(spoke, timeout=30)
    put_headers = dict(auth(key))
    put_headers["Content-Type"] = "application/octet-stream"
    lags, hdr_lags, from_start, polls = [], [], [], []
    salt = os.urandom(6).hex()
    prev = None
    try:
        for i in range(-1, count):  # -1: a warm-up publish, not counted
            pace(prev, spacing_ms / 1000.0)
            body = f"lag probe {i} {salt}\n".encode() + os.urandom(1000)
            path = f"/assets/{feed}/lag/{i + 1:04d}.bin"
            prev = t_start = time.perf_counter()
            st, resp = pub.request("PUT", path, body=body, headers=put_headers)
            t_done = time.perf_counter()
            if st != 201:
                raise SystemExit(f"PUT {path}: HTTP {st}: {resp[:200]!r}")
            seen, hdr, n = poll_until(
                look, path, lambda s, b: s == 200 and b == body, poll_ms / 1000.0, t_done + timeout
            )
            if seen is None:
                raise SystemExit(f"{path} not served by the spoke within {timeout} s")
            if i >= 0:
                lags.append((seen - t_done) * 1000.0)
                hdr_lags.append((hdr - t_done) * 1000.0)
                from_start.append((seen - t_start) * 1000.0)
                polls.append(n)
    finally:
        pub.close()
        look.close()
    print(json.dumps({"lag_ms": lags, "headers_lag_ms": hdr_lags, "from_put_start_ms": from_start, "polls": polls}))


def multipart(fields, file_field, filename, content):
    boundary = "ferrybench" + os.urandom(12).hex()
    out = []
    for k, v in fields:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        )
    out.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    out.append(content)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def wheel_meta(path):
    """(name, version) from a wheel's file name NAME-VERSION-py3-none-any.whl."""
    base = os.path.basename(path)
    parts = base[: -len(".whl")].split("-")
    return parts[0].replace("_", "-"), parts[1]


def devpi_upload_request(path, user, password):
    with open(path, "rb") as f:
        content = f.read()
    name, version = wheel_meta(path)
    sha = hashlib.sha256(content).hexdigest()
    fields = [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("metadata_version", "2.1"),
        ("name", name),
        ("version", version),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
        ("summary", "A tiny package used by Ferry's benchmark"),
        ("md5_digest", hashlib.md5(content).hexdigest()),
        ("sha256_digest", sha),
    ]
    body, ctype = multipart(fields, "content", os.path.basename(path), content)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Content-Type": ctype, "Authorization": f"Basic {token}"}
    return body, headers, content, sha


def lag_devpi(primary, replica, index, user, password, spacing_ms, poll_ms, timeout, wheels):
    pub, look = Conn(primary, timeout=60), Conn(replica, timeout=30)
    index = index.strip("/")
    lags, hdr_lags, from_start, polls = [], [], [], []
    prev = None
    try:
        for i, whl in enumerate(wheels):  # the first one is a warm-up, not counted
            body, headers, content, sha = devpi_upload_request(whl, user, password)
            # devpi stores a release file under +f/SHA[:3]/SHA[3:16]/FILENAME
            file_path = f"/{index}/+f/{sha[:3]}/{sha[3:16]}/{os.path.basename(whl)}"
            pace(prev, spacing_ms / 1000.0)
            prev = t_start = time.perf_counter()
            st, resp = pub.request("POST", f"/{index}/", body=body, headers=headers)
            t_done = time.perf_counter()
            if st != 200:
                raise SystemExit(f"upload {os.path.basename(whl)}: HTTP {st}: {resp[:300]!r}")
            if i == 0:
                # the file URL we poll must be the one the primary serves
                st, got = Conn(primary, timeout=30).request("GET", file_path)
                if st != 200 or got != content:
                    raise SystemExit(f"the primary does not serve {file_path} (HTTP {st})")
            seen, hdr, n = poll_until(
                look, file_path, lambda s, b: s == 200 and b == content, poll_ms / 1000.0, t_done + timeout
            )
            if seen is None:
                raise SystemExit(f"{file_path} not served by the replica within {timeout} s")
            if i > 0:
                lags.append((seen - t_done) * 1000.0)
                hdr_lags.append((hdr - t_done) * 1000.0)
                from_start.append((seen - t_start) * 1000.0)
                polls.append(n)
    finally:
        pub.close()
        look.close()
    print(json.dumps({"lag_ms": lags, "headers_lag_ms": hdr_lags, "from_put_start_ms": from_start, "polls": polls}))


def stats(path):
    with open(path) as f:
        d = json.load(f)
    lags = d["lag_ms"]
    print(f"n={len(lags)}")
    print(f"p50={percentile(lags, 50):.2f}")
    print(f"p99={percentile(lags, 99):.2f}")
    print(f"max={max(lags):.2f}")
    print(f"mean={sum(lags) / len(lags):.2f}")
    print(f"p99_from_put_start={percentile(d['from_put_start_ms'], 99):.2f}")
    print(f"headers_p50={percentile(d['headers_lag_ms'], 50):.2f}")
    print(f"headers_p99={percentile(d['headers_lag_ms'], 99):.2f}")
    print(f"polls_max={max(d['polls'])}")


# ---------------------------------------------------------------- proxy

def proxy_ctl(port, command):
    import socket

    with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as s:
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks).decode()


def is_long_poll(req):
    q = urllib.parse.urlsplit(req.split(" ", 1)[-1]).query
    wait = urllib.parse.parse_qs(q).get("wait", ["0"])[0]
    return "/changes" in req and wait not in ("", "0")


def wire(port, exec_file):
    with open(exec_file) as f:
        ex = json.load(f)
    recs = json.loads(proxy_ctl(port, "dump"))
    lo, hi = ex["started_at"] - 2, ex["ended_at"] + 2
    e_up = e_down = e_n = p_up = p_down = p_n = o_up = o_down = 0
    lines = []
    for r in recs:
        if is_long_poll(r["req"]):
            p_up += r["up"]
            p_down += r["down"]
            p_n += 1
        elif lo <= r["t"] <= hi:
            e_up += r["up"]
            e_down += r["down"]
            e_n += 1
            lines.append(f"{r['req'].split('?')[0]} up={r['up']} down={r['down']}")
        else:
            o_up += r["up"]
            o_down += r["down"]
    print(f"exec_up={e_up}")
    print(f"exec_down={e_down}")
    print(f"exec_requests={e_n}")
    print(f"poll_up={p_up}")
    print(f"poll_down={p_down}")
    print(f"poll_requests={p_n}")
    print(f"other_up={o_up}")
    print(f"other_down={o_down}")
    print("exec_detail=" + "; ".join(lines))


# ---------------------------------------------------------------- main

def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, a = argv[1], argv[2:]
    if cmd == "gen-files":
        gen_files(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif cmd == "put-files":
        put_files(a[0], a[1], a[2], a[3], a[4], int(a[5]))
    elif cmd == "put-small":
        put_small(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], int(a[6]))
    elif cmd == "wait-exec":
        return wait_exec(a[0], a[1], a[2], int(a[3]), float(a[4]))
    elif cmd == "lag-ferry":
        lag_ferry(a[0], a[1], a[2], a[3], int(a[4]), float(a[5]), float(a[6]), float(a[7]))
    elif cmd == "lag-cargo":
        lag_cargo(a[0], a[1], a[2], a[3], int(a[4]), float(a[5]), float(a[6]), float(a[7]))
    elif cmd == "lag-devpi":
        lag_devpi(a[0], a[1], a[2], a[3], a[4], float(a[5]), float(a[6]), float(a[7]), a[8:])
    elif cmd == "stats":
        stats(a[0])
    elif cmd == "carried":
        carried(a[0], int(a[1]))
    elif cmd == "proxy-ctl":
        sys.stdout.write(proxy_ctl(a[0], a[1]))
    elif cmd == "wire":
        wire(a[0], a[1])
    else:
        print(f"unknown command {cmd}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
