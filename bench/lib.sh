# shellcheck shell=bash
# Helpers for bench/run: logging, tools, processes we start and stop by PID,
# the private nginx and Ferry instances, and the summary table.
# Sourced by bench/run; not meant to be run on its own.

# ---------------------------------------------------------------- logging

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# ---------------------------------------------------------------- tools

# command -> Debian package that provides it
declare -A DEB_PACKAGE=(
    [nginx]=nginx-light
    [wrk]=wrk
    [curl]=curl
    [python3]=python3
    [npm]=npm
    [twine]=twine
    [/usr/bin/time]=time
    [apt-ftparchive]=apt-utils
    [xz]=xz-utils
)

# ensure_commands CMD...: installs the Debian packages for any missing
# command, quietly, when running as root; otherwise says what is missing.
ensure_commands() {
    local missing=() pkgs=() c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || { missing+=("$c"); pkgs+=("${DEB_PACKAGE[$c]:-$c}"); }
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "missing commands: ${missing[*]} (install Debian packages: ${pkgs[*]})"
        return 1
    fi
    log "installing Debian packages: ${pkgs[*]}"
    if [ -z "${BENCH_APT_UPDATED:-}" ]; then
        timeout 300 apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed (continuing)"
        BENCH_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
        >"$BENCH_TMP/apt.log" 2>&1 || { log "apt-get install failed; see $BENCH_TMP/apt.log"; return 1; }
    for c in "${missing[@]}"; do
        command -v "$c" >/dev/null 2>&1 || { log "still missing after install: $c"; return 1; }
    done
}

# ---------------------------------------------------------------- processes

BENCH_PIDS=()

# Stops one process we started: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop on SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Stops nginx by its master PID, then any of its workers still alive.
stop_nginx() {
    local master=$1 workers w
    workers=$(ps -o pid= --ppid "$master" 2>/dev/null || true)
    stop_pid "$master"
    for w in $workers; do
        if kill -0 "$w" 2>/dev/null; then kill -KILL "$w" 2>/dev/null || true; fi
    done
}

forget_pid() {
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    BENCH_PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${BENCH_PIDS[@]}"; do
        case "$p" in
            nginx:*) stop_nginx "${p#nginx:}" ;;
            *) stop_pid "$p" ;;
        esac
    done
    BENCH_PIDS=()
    if [ -n "${BENCH_TMP:-}" ] && [ -d "$BENCH_TMP" ]; then
        if [ -n "${BENCH_KEEP_TMP:-}" ]; then
            log "kept $BENCH_TMP"
        else
            rm -rf -- "$BENCH_TMP"
        fi
    fi
    exit "$rc"
}

# A TCP port that was free on 127.0.0.1 a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL SECONDS: until URL answers at all (any HTTP status).
wait_http() {
    local url=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    return 1
}

# RSS of a process in KiB (field VmRSS or VmHWM of /proc/PID/status).
proc_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# CPU time (user + system, in clock ticks) of the given PIDs and of their
# direct children (nginx workers), summed.
cpu_ticks() {
    local pid kids total=0 t
    for pid in "$@"; do
        kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
        for p in $pid $kids; do
            t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }')
            total=$((total + ${t:-0}))
        done
    done
    echo "$total"
}

# ---------------------------------------------------------------- nginx

# start_nginx NAME ROOT: serves ROOT on a fresh loopback port from a private
# prefix under $BENCH_TMP. Sets NGINX_PID and NGINX_URL.
start_nginx() {
    local name=$1 root=$2 prefix port
    prefix="$BENCH_TMP/nginx-$name"
    mkdir -p "$prefix/logs" "$prefix/tmp"
    port=$(free_port)
    cat >"$prefix/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 1024; }
http {
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    access_log off;
    types { application/octet-stream bin; text/plain txt; }
    default_type application/octet-stream;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $root;
    }
}
EOF
    nginx -p "$prefix" -e "$prefix/logs/error.log" -c "$prefix/nginx.conf" \
        >"$prefix/logs/stdout.log" 2>&1 &
    NGINX_PID=$!
    BENCH_PIDS+=("nginx:$NGINX_PID")
    NGINX_URL="http://127.0.0.1:$port"
    if ! wait_http "$NGINX_URL/" 15; then
        cat "$prefix/logs/error.log" "$prefix/logs/stdout.log" >&2 2>/dev/null || true
        die "nginx did not start"
    fi
    log "nginx ($name) pid $NGINX_PID at $NGINX_URL"
}

stop_nginx_now() { stop_nginx "$1"; forget_pid "nginx:$1"; }

# ---------------------------------------------------------------- ferry

BENCH_KEY=bench-admin-key-0123456789

# start_ferry NAME: a fresh instance with its own data dir on a port it
# picks itself. Sets FERRY_PID and FERRY_URL.
start_ferry() {
    local name=$1 dir i addr data dburl=
    dir="$BENCH_TMP/ferry-$name"
    mkdir -p "$dir"
    data=${BENCH_FERRY_DATA:-$dir/data}
    # With BENCH_PG_ADMIN (bench/postgres.sh), metadata in PostgreSQL: a new
    # database per instance, or BENCH_FERRY_DB_URL for nodes sharing one.
    if [ -n "${BENCH_FERRY_DB_URL:-}" ]; then
        dburl=$BENCH_FERRY_DB_URL
    elif [ -n "${BENCH_PG_ADMIN:-}" ]; then
        dburl=$(pg_new_database "$name")
    fi
    # shellcheck disable=SC2153 # FERRY_BIN is set by bench/run
    FERRY_ADMIN_KEY=$BENCH_KEY FERRY_LOG=${FERRY_LOG:-warn} FERRY_DATABASE_URL=$dburl \
        "$FERRY_BIN" serve --data-dir "$data" --listen 127.0.0.1:0 \
        >"$dir/stdout.log" 2>"$dir/stderr.log" &
    FERRY_PID=$!
    BENCH_PIDS+=("$FERRY_PID")
    addr=
    for ((i = 0; i < 300; i++)); do
        addr=$(sed -n 's/^listening on \(http:\/\/.*\)$/\1/p' "$dir/stdout.log" 2>/dev/null | head -n1)
        [ -n "$addr" ] && break
        kill -0 "$FERRY_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        cat "$dir/stderr.log" >&2 || true
        die "ferry did not start"
    fi
    FERRY_URL=$addr
    log "ferry ($name) pid $FERRY_PID at $FERRY_URL"
}

stop_ferry_now() { stop_pid "$1"; forget_pid "$1"; }

# ferry_feed NAME TYPE
ferry_feed() {
    timeout 30 "$FERRY_BIN" feed create "$1" --type "$2" --url "$FERRY_URL" --api-key "$BENCH_KEY" >/dev/null
}

# ---------------------------------------------------------------- files

# bulk_prepare URL DIR EXT FIELD BATCH: the command line of a bulk upload
# of every DIR/*.EXT to URL (a bulk upload endpoint), as multipart bodies
# of BATCH files each, one `-F FIELD=@file` part per file, authenticated
# with BENCH_KEY, into BULK_ARGS (and their count into BULK_BODIES). Not
# timed: a user's command line exists before it runs (building 20,000
# arguments in bash takes ~0.15 s here).
bulk_prepare() {
    local url=$1 dir=$2 ext=$3 field=$4 batch=$5 files b i
    BULK_ARGS=()
    BULK_BODIES=0
    mapfile -t files < <(find "$dir" -maxdepth 1 -name "*.$ext" | sort)
    [ "${#files[@]}" -gt 0 ] || { log "bulk_prepare: no *.$ext in $dir"; return 1; }
    for ((b = 0; b < ${#files[@]}; b += batch)); do
        ((b > 0)) && BULK_ARGS+=(--next)
        BULK_ARGS+=(--no-progress-meter -o /dev/null -w '%{http_code}\n' -u "bench:$BENCH_KEY")
        for ((i = b; i < b + batch && i < ${#files[@]}; i++)); do
            BULK_ARGS+=(-F "$field=@${files[i]}")
        done
        BULK_ARGS+=("$url")
        BULK_BODIES=$((BULK_BODIES + 1))
    done
}

# bulk_send CONNS: runs the upload bulk_prepare made: one curl process, the
# client the README shows, sending the bodies on CONNS connections at once
# (`--parallel`, a `--next` per body). Every body must be answered 201.
# Until 2026-12-03 (later) one curl process per body (CONNS shell loops):
# each start and the loop between bodies cost 15-20 ms of every figure;
# before that a Python client, whose start alone took 120-180 ms.
bulk_send() {
    local conns=$1 codes
    codes=$(curl --no-progress-meter --parallel --parallel-max "$conns" "${BULK_ARGS[@]}") ||
        { log "bulk_send: curl failed"; return 1; }
    if [ "$(grep -c '^201$' <<<"$codes")" -ne "$BULK_BODIES" ]; then
        log "bulk_send: answered $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
        return 1
    fi
}

# make_random_file PATH MIB
make_random_file() {
    head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$1"
}

# ---------------------------------------------------------------- numbers and the summary

fmt() { awk -v x="$1" -v p="${2:-1}" 'BEGIN { printf "%.*f", p, x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# median of the numbers given as arguments
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print 0; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

SUMMARY=()
# add_row FIGURE FERRY BASELINE RATIO TARGET RESULT
add_row() { SUMMARY+=("$1|$2|$3|$4|$5|$6"); }

print_summary() {
    local w=(6 5 8 5 6 6) row f i
    local -a cols
    for row in "figure|Ferry|baseline|ratio|target|result" "${SUMMARY[@]}"; do
        IFS='|' read -r -a cols <<<"$row"
        for i in 0 1 2 3 4 5; do
            f=${cols[$i]:-}
            [ "${#f}" -gt "${w[i]}" ] && w[i]=${#f}
        done
    done
    local sep=""
    for i in 0 1 2 3 4 5; do sep+="+$(printf '%*s' $((w[i] + 2)) '' | tr ' ' -)"; done
    sep+="+"
    echo
    echo "$sep"
    local first=1
    for row in "figure|Ferry|baseline|ratio|target|result" "${SUMMARY[@]}"; do
        IFS='|' read -r -a cols <<<"$row"
        printf '| %-*s | %*s | %*s | %*s | %-*s | %-*s |\n' \
            "${w[0]}" "${cols[0]}" "${w[1]}" "${cols[1]}" "${w[2]}" "${cols[2]}" \
            "${w[3]}" "${cols[3]}" "${w[4]}" "${cols[4]}" "${w[5]}" "${cols[5]}"
        if [ $first = 1 ]; then echo "$sep"; first=0; fi
    done
    echo "$sep"
}
