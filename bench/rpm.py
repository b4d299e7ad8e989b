#!/usr/bin/env python3
"""Helper of the rpm bench section (stdlib only).

  rpm.py upload URL KEY FEED DIR [CONNS]
        PUT every .rpm of DIR to URL/rpm/FEED/upload over CONNS keep-alive
        connections (default 2); exits 1 on any non-201
  rpm.py bulk URL KEY FEED DIR [CONNS [BATCH]]
        POST the .rpms of DIR to URL/rpm/FEED/upload as multipart/form-data,
        BATCH files per request (default 500), over CONNS keep-alive
        connections (default 2); exits 1 on any non-201
"""
import base64
import http.client
import os
import sys
import threading
import urllib.parse


def upload(url, key, feed, d, conns=2):
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".rpm"))
    u = urllib.parse.urlsplit(url)
    auth = "Basic " + base64.b64encode(f"bench:{key}".encode()).decode()
    failed = []
    lock = threading.Lock()
    share = [files[i::conns] for i in range(conns)]

    def work(mine):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        for path in mine:
            with open(path, "rb") as f:
                body = f.read()
            c.request("PUT", f"/rpm/{feed}/upload", body=body,
                      headers={"Authorization": auth, "Content-Type": "application/x-rpm"})
            r = c.getresponse()
            text = r.read()
            if r.status != 201:
                with lock:
                    failed.append(f"{path}: {r.status} {text[:200]!r}")

    threads = [threading.Thread(target=work, args=(s,)) for s in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in failed[:5]:
        print(f, file=sys.stderr)
    return 1 if failed else 0


def bulk(url, key, feed, d, conns=2, batch=500):
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".rpm"))
    u = urllib.parse.urlsplit(url)
    auth = "Basic " + base64.b64encode(f"bench:{key}".encode()).decode()
    batches = [files[i:i + batch] for i in range(0, len(files), batch)]
    failed = []
    lock = threading.Lock()
    boundary = "ferrybenchrpm" + os.urandom(8).hex()

    def body_of(paths):
        out = []
        for path in paths:
            out.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="rpm"; '
                f'filename="{os.path.basename(path)}"\r\n\r\n'.encode()
            )
            with open(path, "rb") as f:
                out.append(f.read())
            out.append(b"\r\n")
        out.append(f"--{boundary}--\r\n".encode())
        return b"".join(out)

    def work(mine):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        for paths in mine:
            body = body_of(paths)
            c.request("POST", f"/rpm/{feed}/upload", body=body,
                      headers={"Authorization": auth, "Content-Length": str(len(body)),
                               "Content-Type": f"multipart/form-data; boundary={boundary}"})
            r = c.getresponse()
            text = r.read()
            if r.status != 201:
                with lock:
                    failed.append(f"{paths[0]}...: {r.status} {text[:200]!r}")
                return

    threads = [threading.Thread(target=work, args=(batches[i::conns],)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in failed[:5]:
        print(f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "bulk":
        conns = int(sys.argv[6]) if len(sys.argv) > 6 else 2
        batch = int(sys.argv[7]) if len(sys.argv) > 7 else 500
        sys.exit(bulk(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], conns, batch))
    if len(sys.argv) >= 6 and sys.argv[1] == "upload":
        conns = int(sys.argv[6]) if len(sys.argv) > 6 else 2
        sys.exit(upload(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], conns))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
