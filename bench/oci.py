#!/usr/bin/env python3
"""Client-side helpers for the oci part of bench/run (stdlib only).

usage: oci.py COMMAND ARGS...

  big DIR TAG LAYERS LAYER_MIB
      writes an OCI image layout at DIR holding one linux/amd64 image tagged
      TAG: LAYERS gzip'd tar layers of LAYER_MIB MiB of random data each
      (stored deflate blocks: gzip framing without compression work, so the
      layers are as incompressible as their content), a config, a manifest
  set DIR COUNT BASE_MIB RUNTIME_MIB APP_MIB
      writes a layout with COUNT images tagged v01..vNN sharing base layers:
      every image has the same base layer (BASE_MIB), one of two runtime
      layers (RUNTIME_MIB each; odd and even images) and a layer of its own
      (APP_MIB); the layout's blobs are exactly the unique blobs
  blob-bytes DIR
      the total size of the regular files under DIR, and their count
  executions FILE
      from `ferry replication executions --json`: how many there are, how
      many did not succeed, and the sums of what they pulled
  last-execution FILE
      the newest execution: its duration (ended_at - started_at, ms), its
      outcome and what it pulled
  tags FILE
      the number of tags in a `skopeo list-tags` output
  manifest-digest DIR TAG
      the digest tag TAG names in the layout at DIR

Results go to stdout as key=value lines; progress and errors to stderr.
"""

import hashlib
import json
import os
import sys
import tarfile
import zlib

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
MIB = 1 << 20


def log(msg):
    print(f"[oci.py] {msg}", file=sys.stderr, flush=True)


def blob_path(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def init_layout(layout):
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


def put_blob(layout, media_type, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob_path(layout, digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def random_layer(layout, size, name):
    """A gzip'd tar of one file of `size` random bytes, streamed to disk.
    Returns (descriptor, diff_id)."""
    tmp = os.path.join(layout, "blobs", f".tmp-{os.getpid()}")
    gz = zlib.compressobj(0, zlib.DEFLATED, 31)  # gzip wrapper, stored blocks
    outer = hashlib.sha256()
    inner = hashlib.sha256()
    total = 0
    with open(tmp, "wb") as f:

        def emit(raw):
            nonlocal total
            inner.update(raw)
            out = gz.compress(raw)
            if out:
                outer.update(out)
                f.write(out)
                total += len(out)

        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        emit(info.tobuf(format=tarfile.USTAR_FORMAT))
        left = size
        while left:
            n = min(left, 4 * MIB)
            emit(os.urandom(n))
            left -= n
        emit(b"\0" * ((512 - size % 512) % 512 + 1024))  # padding, end of archive
        out = gz.flush()
        outer.update(out)
        f.write(out)
        total += len(out)
    digest = "sha256:" + outer.hexdigest()
    os.replace(tmp, blob_path(layout, digest))
    return {"mediaType": LAYER, "digest": digest, "size": total}, "sha256:" + inner.hexdigest()


def put_image(layout, layers):
    """layers: [(descriptor, diff_id)]. Returns the manifest descriptor."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created_by": "ferry bench"} for _ in layers],
    }
    cdesc = put_blob(layout, CONFIG, json.dumps(config, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": cdesc,
        "layers": [d for d, _ in layers],
    }
    return put_blob(layout, MANIFEST, json.dumps(manifest, indent=2).encode())


def write_index(layout, tagged):
    manifests = []
    for tag, desc in tagged:
        d = dict(desc)
        d["annotations"] = {REF_NAME: tag}
        manifests.append(d)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": manifests}, f)


def cmd_big(layout, tag, count, layer_mib):
    init_layout(layout)
    layers = []
    for i in range(int(count)):
        layers.append(random_layer(layout, int(layer_mib) * MIB, f"data/layer-{i:02d}.bin"))
        log(f"layer {i + 1}/{count}: {layers[-1][0]['digest'][:19]}")
    m = put_image(layout, layers)
    write_index(layout, [(tag, m)])
    print(f"manifest={m['digest']}")
    print(f"bytes={sum(d['size'] for d, _ in layers)}")


def cmd_set(layout, count, base_mib, runtime_mib, app_mib):
    init_layout(layout)
    base = random_layer(layout, int(base_mib) * MIB, "base/os.bin")
    runtimes = [random_layer(layout, int(runtime_mib) * MIB, f"runtime/r{i}.bin") for i in range(2)]
    tagged = []
    for i in range(1, int(count) + 1):
        app = random_layer(layout, int(app_mib) * MIB, f"app/app-{i:02d}.bin")
        tagged.append((f"v{i:02d}", put_image(layout, [base, runtimes[i % 2], app])))
    write_index(layout, tagged)
    total, files = blob_bytes(os.path.join(layout, "blobs", "sha256"))
    print(f"tags={' '.join(t for t, _ in tagged)}")
    print(f"unique_bytes={total}")
    print(f"unique_blobs={files}")


def blob_bytes(root):
    total = files = 0
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
                files += 1
    return total, files


def cmd_blob_bytes(root):
    total, files = blob_bytes(root)
    print(f"bytes={total}")
    print(f"files={files}")


def load(path):
    with open(path) as f:
        return json.load(f)


def pulled(e, field):
    return sum(fr.get("pulled", {}).get(field, 0) for fr in (e.get("report") or {}).get("feeds", []))


def cmd_executions(path):
    execs = load(path)
    print(f"count={len(execs)}")
    print(f"not_succeeded={sum(1 for e in execs if e.get('outcome') != 'succeeded')}")
    for field in ("added", "blobs", "bytes"):
        print(f"{field}={sum(pulled(e, field) for e in execs)}")
    if execs:
        print(f"span_ms={max(e['ended_at'] for e in execs) - min(e['started_at'] for e in execs)}")


def cmd_last_execution(path):
    execs = load(path)
    if not execs:
        sys.exit("no executions")
    e = execs[0]
    print(f"id={e['id']}")
    print(f"outcome={e.get('outcome')}")
    print(f"duration_ms={e['ended_at'] - e['started_at']}")
    for field in ("added", "blobs", "bytes"):
        print(f"{field}={pulled(e, field)}")


def cmd_tags(path):
    print(len(load(path).get("Tags") or []))


def cmd_manifest_digest(layout, tag):
    for d in load(os.path.join(layout, "index.json"))["manifests"]:
        if d.get("annotations", {}).get(REF_NAME) == tag:
            print(d["digest"])
            return
    sys.exit(f"no tag {tag} in {layout}")


COMMANDS = {
    "big": (cmd_big, 4),
    "set": (cmd_set, 5),
    "blob-bytes": (cmd_blob_bytes, 1),
    "executions": (cmd_executions, 1),
    "last-execution": (cmd_last_execution, 1),
    "tags": (cmd_tags, 1),
    "manifest-digest": (cmd_manifest_digest, 2),
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS or len(argv) - 2 != COMMANDS[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    COMMANDS[argv[1]][0](*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
