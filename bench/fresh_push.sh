#!/usr/bin/env bash
# bench/fresh_push.sh FERRY_BIN [OTHER_FERRY_BIN]: issue 16's "fresh content
# pulled right after a push". For each binary (alternating, BENCH_FRESH_RUNS
# runs, default 3): a fresh instance takes a PUT of BENCH_FRESH_MIB (512) MiB
# of random bytes, then says how much of the stored blob file is still in the
# page cache (fincore) and how long the first GET of it takes. A writer that
# drops what it wrote from the cache makes that first pull read the disk.
set -euo pipefail
runs=${BENCH_FRESH_RUNS:-3} mib=${BENCH_FRESH_MIB:-512}
bins=("$@")
[ ${#bins[@]} -ge 1 ] || { echo "usage: $0 FERRY_BIN [OTHER_FERRY_BIN]" >&2; exit 2; }
command -v fincore >/dev/null || { echo "fincore (util-linux) is needed" >&2; exit 2; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-fresh.XXXXXX")
pid=''
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf -- "$tmp"; }
trap cleanup EXIT
head -c $((mib << 20)) /dev/urandom >"$tmp/big.bin"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
one() {
    local bin=$1 p d t0 t1 t2 t3 f res
    p=$(port) d=$tmp/run
    rm -rf -- "$d"
    FERRY_ADMIN_KEY=fresh-push-admin-key "$bin" serve --data-dir "$d" --listen "127.0.0.1:$p" >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/ready" >/dev/null && break; sleep 0.1; done
    FERRY_URL=http://127.0.0.1:$p FERRY_API_KEY=fresh-push-admin-key "$bin" feed create files --type assets >/dev/null
    t0=$(now)
    curl -fs -H "Authorization: Bearer fresh-push-admin-key" -T "$tmp/big.bin" "http://127.0.0.1:$p/assets/files/big.bin" -o /dev/null
    t1=$(now)
    f=$(find "$d" -path '*sha256*' -type f -size +1M | head -1)
    res=$(fincore -b -n -o RES "$f" | tr -d ' ')
    t2=$(now)
    curl -fs "http://127.0.0.1:$p/assets/files/big.bin" -o /dev/null
    t3=$(now)
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=''
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v e="$t3" -v r="$res" -v m="$mib" -v n="$bin" \
        'BEGIN { printf "%s: push %.2f s; in the page cache after the push %d of %d MiB; first pull %.2f s\n", n, b - a, r / 1048576, m, e - c }'
}
for ((i = 1; i <= runs; i++)); do
    for b in "${bins[@]}"; do one "$b"; done
done
