# shellcheck shell=bash
# The replication parts of bench/run: repl-full (a 1 GiB feed to a fresh
# spoke, against rsync), repl-incremental (one new item into a feed of
# 100,000, with the bytes on the wire) and repl-lag (publish -> served on the
# spoke, against a devpi primary/replica pair). See bench/README.md.
# Sourced by bench/run after lib.sh; not meant to be run on its own.

REPL_FEED=files

now_ms() { date +%s%3N; }
# stop_now PID: stops a process we started (by its PID) and forgets it.
stop_now() { stop_pid "$1"; forget_pid "$1"; }
kv() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# fcli URL ARGS...: the ferry CLI against one instance, bounded by
# FCLI_TIMEOUT seconds (default 120).
fcli() {
    local url=$1
    shift
    timeout "${FCLI_TIMEOUT:-120}" "$FERRY_BIN" "$@" --url "$url" --api-key "$BENCH_KEY"
}

repl_load_note() {
    local l
    read -r l _ </proc/loadavg
    log "$1: load average $l at the start"
    if awk -v l="$l" 'BEGIN { exit !(l > 0.5) }'; then
        note "$1: load average $l at the start of the part: figures may be noisy"
    fi
}

# repl_hub NAME: a fresh hub with the assets feed and an incoming push
# replication "edge". Sets HUB_URL HUB_PID HUB_DIR HUB_TOKEN.
repl_hub() {
    start_ferry "$1"
    HUB_URL=$FERRY_URL HUB_PID=$FERRY_PID HUB_DIR=$BENCH_TMP/ferry-$1
    fcli "$HUB_URL" feed create "$REPL_FEED" --type assets >/dev/null || return 1
    fcli "$HUB_URL" replication create edge --feed "$REPL_FEED" --incoming --mode push >/dev/null || return 1
    HUB_TOKEN=$(fcli "$HUB_URL" replication token edge) || return 1
    [[ $HUB_TOKEN == fst_* ]] || { log "not a sync token: $HUB_TOKEN"; return 1; }
}

# repl_spoke NAME: a fresh spoke with the assets feed, not yet connected.
# Sets SPOKE_URL SPOKE_PID SPOKE_DIR.
repl_spoke() {
    start_ferry "$1"
    SPOKE_URL=$FERRY_URL SPOKE_PID=$FERRY_PID SPOKE_DIR=$BENCH_TMP/ferry-$1
    fcli "$SPOKE_URL" feed create "$REPL_FEED" --type assets >/dev/null
}

# repl_connect URL: the spoke's outgoing pull replication "from-hub" to URL,
# with a long interval (its scheduler runs one execution at once, and then
# whenever the long poll of the hub's change log sees a change).
repl_connect() {
    fcli "$SPOKE_URL" replication create from-hub --feed "$REPL_FEED" --outgoing "$1" \
        --token "$HUB_TOKEN" --mode pull --interval 3600 >/dev/null
}

# repl_run_wait SECONDS: `run --wait` (it waits for a running execution
# first, then runs one more).
repl_run_wait() {
    FCLI_TIMEOUT=$1 fcli "$SPOKE_URL" replication run from-hub --wait >"$BENCH_TMP/run-wait.log" 2>&1 || {
        tail -n 5 "$BENCH_TMP/run-wait.log" >&2
        return 1
    }
}

# repl_carried AFTER_MS: the executions of from-hub since AFTER_MS that pulled something.
repl_carried() {
    fcli "$SPOKE_URL" replication executions from-hub --json >"$BENCH_TMP/execs.json" || return 1
    python3 "$BENCH_DIR/repl.py" carried "$BENCH_TMP/execs.json" "$1"
}

repl_verified() {
    fcli "$SPOKE_URL" replication verify from-hub >"$BENCH_TMP/verify.log" 2>&1 || {
        log "replication verify from-hub: $(tr '\n' ' ' <"$BENCH_TMP/verify.log" | cut -c1-200)"
        return 1
    }
}

# repl_stop_pair: stops hub and spoke and removes their data.
repl_stop_pair() {
    [ -n "${SPOKE_PID:-}" ] && stop_ferry_now "$SPOKE_PID"
    [ -n "${HUB_PID:-}" ] && stop_ferry_now "$HUB_PID"
    rm -rf -- "${SPOKE_DIR:-/nonexistent}" "${HUB_DIR:-/nonexistent}"
    SPOKE_PID='' HUB_PID='' SPOKE_DIR='' HUB_DIR=''
}

# proc_cpu_ms PID [children]: CPU time (user + system) of a running
# process, in ms; with "children", that of its children already reaped.
proc_cpu_ms() {
    local tick
    tick=$(getconf CLK_TCK)
    if [ "${2:-}" = children ]; then
        awk -v t="$tick" '{ sub(/^.*\) /, ""); printf "%d", ($14 + $15) * 1000 / t }' "/proc/$1/stat"
    else
        awk -v t="$tick" '{ sub(/^.*\) /, ""); printf "%d", ($12 + $13) * 1000 / t }' "/proc/$1/stat"
    fi
}

# files and bytes under a folder
tree_size() { find "$1" -type f -printf '%s\n' | awk '{ n++; b += $1 } END { printf "%d %d\n", n, b }'; }

# settle_cache DIR: the same page cache before every run of a copy. What
# earlier runs wrote stays on disk (see repl_full_inner) but its pages are
# dropped, so that a run neither finds memory full of the last run's copy
# (reclaiming it is the receiver's cost) nor takes pages a VM guest never
# touched (each one a fault in the host); DIR, the source, and both
# programs are read back in.
# Needs root for /proc/sys/vm/drop_caches; without it the caches stay as
# they are and a note says so once.
settle_cache() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then
        echo 1 >/proc/sys/vm/drop_caches
    elif [ -z "${SETTLE_NOTED:-}" ]; then
        SETTLE_NOTED=1
        note "page cache not dropped between runs (not root): runs may differ in the memory they find free"
    fi
    find "$1" -type f -exec cat {} + >/dev/null
    cat -- "$FERRY_BIN" "$(command -v rsync)" >/dev/null
}

# ---------------------------------------------------------------- repl-full

# start_rsyncd DIR: an rsync daemon serving DIR read-only as module "blobs"
# on a fresh loopback port. Sets RSYNCD_PID and RSYNCD_URL.
start_rsyncd() {
    local dir=$BENCH_TMP/rsyncd port i
    mkdir -p "$dir"
    port=$(free_port)
    cat >"$dir/rsyncd.conf" <<EOF
pid file = $dir/rsyncd.pid
lock file = $dir/rsyncd.lock
log file = $dir/rsyncd.log
use chroot = no
max connections = 4
uid = $(id -u)
gid = $(id -g)
[blobs]
    path = $1
    read only = yes
EOF
    rsync --daemon --no-detach --config="$dir/rsyncd.conf" --address=127.0.0.1 --port="$port" \
        >"$dir/stdout.log" 2>&1 &
    RSYNCD_PID=$!
    BENCH_PIDS+=("$RSYNCD_PID")
    RSYNCD_URL=rsync://127.0.0.1:$port/blobs/
    for ((i = 0; i < 100; i++)); do
        timeout 5 rsync --list-only "rsync://127.0.0.1:$port/" >/dev/null 2>&1 && break
        kill -0 "$RSYNCD_PID" 2>/dev/null || break
        sleep 0.1
    done
    timeout 5 rsync --list-only "rsync://127.0.0.1:$port/" 2>/dev/null | grep -q '^blobs' || {
        cat "$dir/stdout.log" "$dir/rsyncd.log" >&2 2>/dev/null
        log "the rsync daemon did not start"
        return 1
    }
    log "rsync daemon pid $RSYNCD_PID at $RSYNCD_URL"
}

# rsync_timed DEST [OPTS...]: copies the module to DEST; prints seconds.
rsync_timed() {
    local dest=$1 t0 t1
    shift
    mkdir -p "$dest"
    sync
    t0=$(now_ms)
    timeout 1800 /usr/bin/time -f '%e %U %S' -o "$BENCH_TMP/rsync.time" \
        rsync -a "$@" "$RSYNCD_URL" "$dest/" >"$BENCH_TMP/rsync.log" 2>&1 || {
        tail -n 5 "$BENCH_TMP/rsync.log" >&2
        return 1
    }
    t1=$(now_ms)
    awk '{ printf "%d", ($2 + $3) * 1000 }' "$BENCH_TMP/rsync.time" >"$BENCH_TMP/rsync.cpu_ms"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }'
}

# sha256_s_per_gib: seconds of one core to SHA-256 one GiB on this CPU,
# from `openssl speed -evp sha256` (its 16384-byte block figure).
sha256_s_per_gib() {
    timeout 120 openssl speed -seconds 2 -mr -evp sha256 2>/dev/null | awk -F: '
        $1 == "+H" { for (i = 2; i <= NF; i++) if ($i == 16384) c = i }
        $1 == "+F" && c { v = $(c + 2) }
        END { if (v > 0) printf "%.4f\n", 1073741824 / v; else exit 1 }'
}

bench_repl_full() {
    local rc
    repl_full_inner
    rc=$?
    [ -n "${RSYNCD_PID:-}" ] && stop_now "$RSYNCD_PID"
    RSYNCD_PID=''
    repl_stop_pair
    rm -rf -- "$BENCH_TMP/full-src" "$BENCH_TMP"/full-rsync-* "$BENCH_TMP"/ferry-full-spoke-*
    return $rc
}

repl_full_inner() {
    local src=$BENCH_TMP/full-src out total items secs blobdir hub_tree dest rs
    repl_load_note repl-full
    log "repl-full: writing $RF_ITEMS random files, $RF_MIB MiB in all"
    out=$(python3 "$BENCH_DIR/repl.py" gen-files "$src" "$RF_ITEMS" $((RF_MIB * 1048576)) 42) || return 1
    total=$(kv bytes "$out")
    log "repl-full: files of $(kv min_bytes "$out")..$(kv max_bytes "$out") bytes, $total in all"

    repl_hub full-hub || { note "repl-full: cannot set up the hub"; return 1; }
    log "repl-full: uploading them to the hub (2 keep-alive connections)"
    out=$(timeout 1800 python3 "$BENCH_DIR/repl.py" put-files "$HUB_URL" "$REPL_FEED" "$src" full \
        "$BENCH_KEY" 2) || { note "repl-full: uploading to the hub failed"; return 1; }
    items=$(kv items "$out")
    secs=$(kv seconds "$out")
    log "repl-full: uploaded $items items in $secs s ($(awk -v b="$total" -v s="$secs" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s)"
    # Nothing is deleted until the part ends: on ext4 without a journal,
    # creating a file skips every inode of its group freed in the last
    # minutes (recently_deleted), and a thousand files removed just before
    # a run made that run's creates cost as much as a third of its CPU.
    # Each run writes into a folder of its own instead.

    blobdir=$HUB_DIR/data/blobs/sha256
    [ -d "$blobdir" ] || { note "repl-full: no blob folder at $blobdir"; return 1; }
    hub_tree=$(tree_size "$blobdir")
    log "repl-full: hub blob folder: ${hub_tree% *} files, ${hub_tree#* } bytes"

    # Baseline: rsync -a through a daemon on loopback, into an empty folder.
    # The two alternate, RF_RUNS times each, so that a burst of noise from
    # elsewhere on the machine hits both; medians are compared.
    start_rsyncd "$blobdir" || { note "repl-full: the rsync daemon did not start"; return 1; }
    local run rs_runs=() rs_cpu_runs=() fe_runs=() fe_cpu_runs=() wall_runs=()
    local rs_cli_runs=() rs_srv_runs=() fe_hub_runs=() fe_spoke_runs=()
    local t0 t1 carried_out added bytes exec_s d0 d1 h0 h1 s0 s1 cpu sha
    if command -v openssl >/dev/null 2>&1 && sha=$(sha256_s_per_gib); then
        log "repl-full: sha256 costs $sha s of CPU per GiB here (openssl speed -evp sha256, 16 KiB blocks)"
    else
        sha=
        note "repl-full: openssl speed -evp sha256 gave no figure: the CPU-per-GiB target is not checked"
    fi
    for ((run = 1; run <= RF_RUNS; run++)); do
        dest=$BENCH_TMP/full-rsync-$run
        settle_cache "$blobdir"
        d0=$(proc_cpu_ms "$RSYNCD_PID" children)
        rs=$(rsync_timed "$dest") || { note "repl-full: rsync failed"; return 1; }
        [ "$(tree_size "$dest")" = "$hub_tree" ] ||
            { note "repl-full: rsync copied $(tree_size "$dest"), not $hub_tree"; return 1; }
        d1=$(proc_cpu_ms "$RSYNCD_PID" children)
        cpu=$(( $(cat "$BENCH_TMP/rsync.cpu_ms") + d1 - d0 ))
        rs_runs+=("$rs") rs_cpu_runs+=("$cpu")
        rs_cli_runs+=("$(cat "$BENCH_TMP/rsync.cpu_ms")") rs_srv_runs+=("$((d1 - d0))")
        log "repl-full run $run: rsync -a: $rs s ($(awk -v b="${hub_tree#* }" -v s="$rs" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s), CPU $cpu ms (client and daemon)"

        # Ferry: a fresh spoke pulls the whole feed.
        settle_cache "$blobdir"
        repl_spoke "full-spoke-$run" || { note "repl-full: cannot set up the spoke"; return 1; }
        h0=$(proc_cpu_ms "$HUB_PID")
        s0=$(proc_cpu_ms "$SPOKE_PID")
        local perf_pid=
        if [ -n "${BENCH_PERF:-}" ]; then
            # Where the CPU goes on both ends: a call-graph profile of the
            # hub and the spoke during the copy (`perf report -i FILE`).
            mkdir -p "$BENCH_PERF"
            # System-wide (-a): the threads either end starts during the
            # copy are sampled too; `perf report --pid` picks one end.
            perf record -q -F 1999 -a -o "$BENCH_PERF/repl-full-$run.data" \
                >"$BENCH_TMP/perf.log" 2>&1 &
            perf_pid=$!
            sleep 0.5
        fi
        t0=$(now_ms)
        repl_connect "$HUB_URL" || { note "repl-full: cannot create the spoke's replication"; return 1; }
        repl_run_wait 1800 || { note "repl-full: run --wait failed"; return 1; }
        t1=$(now_ms)
        if [ -n "$perf_pid" ]; then
            kill -INT "$perf_pid" 2>/dev/null
            wait "$perf_pid" 2>/dev/null
            log "repl-full run $run: profile in $BENCH_PERF/repl-full-$run.data"
        fi
        h1=$(proc_cpu_ms "$HUB_PID")
        s1=$(proc_cpu_ms "$SPOKE_PID")
        cpu=$((s1 - s0 + h1 - h0))
        fe_hub_runs+=("$((h1 - h0))") fe_spoke_runs+=("$((s1 - s0))")
        wall_runs+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')")
        carried_out=$(repl_carried "$t0") || { note "repl-full: cannot read the executions"; return 1; }
        added=$(kv added "$carried_out")
        bytes=$(kv bytes "$carried_out")
        exec_s=$(awk -v ms="$(kv span_ms "$carried_out")" 'BEGIN { printf "%.3f", ms / 1000 }')
        fe_runs+=("$exec_s") fe_cpu_runs+=("$cpu")
        log "repl-full run $run: ferry execution $exec_s s, wall (create -> run --wait returned) ${wall_runs[-1]} s, CPU $cpu ms (spoke $((s1 - s0)), hub $((h1 - h0))); $(kv outcomes "$carried_out"); $(kv carrying "$carried_out") carried $added items, $(kv blobs "$carried_out") blobs, $bytes bytes"
        if [ "$added" != "$RF_ITEMS" ] || [ "$bytes" != "${hub_tree#* }" ]; then
            note "repl-full: the spoke pulled $added items / $bytes bytes, expected $RF_ITEMS / ${hub_tree#* }"
            add_row "repl-full time s" "-" "$(fmt "$rs" 2)" "-" "<= 1.00x" "FAIL"
            return 1
        fi
        [ "$run" = 1 ] && { repl_verified || note "repl-full: replication verify from-hub did not pass"; }
        [ "$(kv carrying "$carried_out")" = 1 ] ||
            note "repl-full: the copy took $(kv carrying "$carried_out") executions; the time is from the first start to the last end"
        stop_ferry_now "$SPOKE_PID"
        SPOKE_PID='' SPOKE_DIR=''
        sync
    done
    local rs_fsync= rs_fsync_cpu=
    if [[ $(rsync --help 2>/dev/null) == *--fsync* ]]; then
        dest=$BENCH_TMP/full-rsync-fsync
        settle_cache "$blobdir"
        d0=$(proc_cpu_ms "$RSYNCD_PID" children)
        rs_fsync=$(rsync_timed "$dest" --fsync) || rs_fsync=
        d1=$(proc_cpu_ms "$RSYNCD_PID" children)
        if [ -n "$rs_fsync" ]; then
            rs_fsync_cpu=$(($(cat "$BENCH_TMP/rsync.cpu_ms") + d1 - d0))
            log "repl-full: rsync -a --fsync: $rs_fsync s, CPU $rs_fsync_cpu ms (client and daemon)"
        fi
    fi
    stop_now "$RSYNCD_PID"
    RSYNCD_PID=''
    # What the device itself needs to make the same bytes durable: every
    # hub blob written in one stream past the page cache (`dd` in 4 MiB
    # writes, `oflag=direct`), then flushed (`sync -f`). No copy that waits
    # for its bytes to be on stable storage can end before this.
    local floor= ft0 ft1
    settle_cache "$blobdir"
    ft0=$(now_ms)
    if find "$blobdir" -type f -exec cat {} + |
        dd of="$BENCH_TMP/durable-floor" bs=4M iflag=fullblock oflag=direct status=none &&
        sync -f "$BENCH_TMP/durable-floor"; then
        ft1=$(now_ms)
        floor=$(awk -v a="$ft0" -v b="$ft1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')
        log "repl-full: durable write floor (dd oflag=direct + sync -f of the same bytes): $floor s"
    fi
    rm -f "$BENCH_TMP/durable-floor"

    local r result label rs_m fe_m
    rs_m=$(median "${rs_runs[@]}")
    fe_m=$(median "${fe_runs[@]}")
    label="${RF_ITEMS} items, $(mib "$total") MiB, median of $RF_RUNS"
    r=$(ratio "$fe_m" "$rs_m")
    if awk -v r="$r" 'BEGIN { exit !(r <= 1.0) }'; then result=PASS; else result=FAIL; fi
    add_row "repl-full time s ($label; execution)" "$(fmt "$fe_m" 2)" "$(fmt "$rs_m" 2)" "$r" "<= 1.00x" "$result"
    r=$(ratio "$(median "${wall_runs[@]}")" "$rs_m")
    if awk -v r="$r" 'BEGIN { exit !(r <= 1.0) }'; then result=PASS; else result=FAIL; fi
    add_row "repl-full time s ($label; wall, create -> run --wait)" "$(fmt "$(median "${wall_runs[@]}")" 2)" "$(fmt "$rs_m" 2)" "$r" "<= 1.00x" "$result"
    add_row "repl-full CPU s, both ends (median)" "$(fmt "$(awk -v m="$(median "${fe_cpu_runs[@]}")" 'BEGIN { print m / 1000 }')" 2)" \
        "$(fmt "$(awk -v m="$(median "${rs_cpu_runs[@]}")" 'BEGIN { print m / 1000 }')" 2)" \
        "$(ratio "$(median "${fe_cpu_runs[@]}")" "$(median "${rs_cpu_runs[@]}")")" "-" "info"
    # CPU per GiB copied, both ends, against issue 16's reading: "within
    # the sha256 cost of rsync's", one SHA-256 pass over the data on top of
    # rsync's CPU (the spoke's check of what it receives; the hub does not
    # hash again a blob it verified in the last minutes, and rsync -a
    # computes its own, cheaper, whole-file checksum). Until 2026-12-05 the
    # harness allowed two passes (the hub used to hash every read too).
    local gib fe_g rs_g lim
    gib=$(awk -v b="${hub_tree#* }" 'BEGIN { print b / 1073741824 }')
    fe_g=$(awk -v m="$(median "${fe_cpu_runs[@]}")" -v g="$gib" 'BEGIN { print m / 1000 / g }')
    rs_g=$(awk -v m="$(median "${rs_cpu_runs[@]}")" -v g="$gib" 'BEGIN { print m / 1000 / g }')
    if [ -n "$sha" ]; then
        lim=$(awk -v r="$rs_g" -v s="$sha" 'BEGIN { print r + s }')
        if awk -v f="$fe_g" -v l="$lim" 'BEGIN { exit !(f <= l) }'; then result=PASS; else result=FAIL; fi
        add_row "repl-full CPU s per GiB, hub + spoke (median)" "$(fmt "$fe_g" 2)" "$(fmt "$rs_g" 2)" "$(ratio "$fe_g" "$rs_g")" \
            "<= rsync + sha256 = $(fmt "$lim" 2)" "$result"
        add_row "repl-full sha256 CPU s per GiB (openssl speed, 16 KiB)" "$(fmt "$sha" 2)" "-" "-" "-" "info"
    else
        add_row "repl-full CPU s per GiB, hub + spoke (median)" "$(fmt "$fe_g" 2)" "$(fmt "$rs_g" 2)" "$(ratio "$fe_g" "$rs_g")" \
            "<= rsync + sha256" "unavailable"
    fi
    add_row "repl-full CPU s per GiB: hub / spoke (rsync: daemon / client)" \
        "$(fmt "$(awk -v m="$(median "${fe_hub_runs[@]}")" -v g="$gib" 'BEGIN { print m / 1000 / g }')" 2) / $(fmt "$(awk -v m="$(median "${fe_spoke_runs[@]}")" -v g="$gib" 'BEGIN { print m / 1000 / g }')" 2)" \
        "$(fmt "$(awk -v m="$(median "${rs_srv_runs[@]}")" -v g="$gib" 'BEGIN { print m / 1000 / g }')" 2) / $(fmt "$(awk -v m="$(median "${rs_cli_runs[@]}")" -v g="$gib" 'BEGIN { print m / 1000 / g }')" 2)" \
        "-" "-" "info"
    if [ -n "$floor" ]; then
        add_row "repl-full vs the device's durable write floor (dd direct + sync), s" "$(fmt "$fe_m" 2)" "$(fmt "$floor" 2)" \
            "$(ratio "$fe_m" "$floor")" "-" "info"
    fi
    if [ -n "$rs_fsync" ]; then
        add_row "repl-full vs rsync -a --fsync, s" "$(fmt "$fe_m" 2)" "$(fmt "$rs_fsync" 2)" "$(ratio "$fe_m" "$rs_fsync")" "-" "info"
        rs_fsync_cpu=$(awk -v m="$rs_fsync_cpu" -v g="$gib" 'BEGIN { print m / 1000 / g }')
        add_row "repl-full CPU s per GiB vs rsync -a --fsync (one run)" "$(fmt "$fe_g" 2)" "$(fmt "$rs_fsync_cpu" 2)" \
            "$(ratio "$fe_g" "$rs_fsync_cpu")" "-" "info"
    fi
}

# ---------------------------------------------------------------- repl-incremental

# start_countproxy TARGET_URL: countproxy.py in front of TARGET_URL. Sets
# PROXY_PID, PROXY_URL and PROXY_CTL (its control port).
start_countproxy() {
    local hostport=${1#http://} pf=$BENCH_TMP/countproxy.ports i
    rm -f "$pf"
    python3 "$BENCH_DIR/countproxy.py" "${hostport%:*}" "${hostport##*:}" "$pf" 14400 \
        >"$BENCH_TMP/countproxy.log" 2>&1 &
    PROXY_PID=$!
    BENCH_PIDS+=("$PROXY_PID")
    for ((i = 0; i < 100; i++)); do
        [ -s "$pf" ] && break
        sleep 0.1
    done
    [ -s "$pf" ] || { cat "$BENCH_TMP/countproxy.log" >&2; log "countproxy did not start"; return 1; }
    read -r i PROXY_CTL <"$pf"
    PROXY_URL=http://127.0.0.1:$i
    log "countproxy pid $PROXY_PID at $PROXY_URL -> $1 (control port $PROXY_CTL)"
}

# inc_measure ITEMS LABEL: a hub of ITEMS small assets, a spoke pulling it
# through countproxy, then INC_RUNS single publishes. Sets INC_MS (median
# execution ms), INC_MAX_MS, INC_UP, INC_DOWN (median bytes of the execution),
# INC_POLL (median bytes of the long poll that woke it, both ways),
# INC_SYNC_RATE (items/s of the initial sync).
inc_measure() {
    local n=$1 name=$2 out t0 t1 carried_out r execf ms wire_out
    local durs=() ups=() downs=() polls=()
    repl_hub "$name-hub" || { note "repl-incremental: cannot set up the hub"; return 1; }
    log "repl-incremental: publishing $n small assets on the hub (4 keep-alive connections)"
    out=$(timeout 3600 python3 "$BENCH_DIR/repl.py" put-small "$HUB_URL" "$REPL_FEED" bulk 0 "$n" "$BENCH_KEY" 4) ||
        { note "repl-incremental: populating the hub failed"; return 1; }
    log "repl-incremental: $(kv items "$out") items in $(kv seconds "$out") s ($(kv per_second "$out")/s)"
    start_countproxy "$HUB_URL" || { note "repl-incremental: the counting proxy did not start"; return 1; }
    repl_spoke "$name-spoke" || { note "repl-incremental: cannot set up the spoke"; return 1; }
    log "repl-incremental: initial sync of $n items through the proxy"
    t0=$(now_ms)
    repl_connect "$PROXY_URL" || { note "repl-incremental: cannot create the spoke's replication"; return 1; }
    repl_run_wait 3600 || { note "repl-incremental: the initial sync failed"; return 1; }
    t1=$(now_ms)
    carried_out=$(repl_carried "$t0") || return 1
    [ "$(kv added "$carried_out")" = "$n" ] || {
        note "repl-incremental: the initial sync pulled $(kv added "$carried_out") items, not $n"
        return 1
    }
    repl_verified || { note "repl-incremental: the spoke does not hold the hub's state after the initial sync"; return 1; }
    INC_SYNC_RATE=$(awk -v n="$n" -v ms="$(kv span_ms "$carried_out")" 'BEGIN { r = 0; if (ms > 0) r = n * 1000 / ms; printf "%.0f", r }')
    log "repl-incremental: initial sync: execution(s) $(kv span_ms "$carried_out") ms ($INC_SYNC_RATE items/s), wall $((t1 - t0)) ms"
    sleep 1 # the long poll is back in place
    execf=$BENCH_TMP/inc-exec.json
    for ((r = 1; r <= INC_RUNS; r++)); do
        python3 "$BENCH_DIR/repl.py" proxy-ctl "$PROXY_CTL" reset >/dev/null || return 1
        t0=$(now_ms)
        out=$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" \
            -X PUT --data-binary "one more item, run $r of $name $(date +%s%N)" \
            "$HUB_URL/assets/$REPL_FEED/inc/$name-$r.txt")
        [ "$out" = 201 ] || { note "repl-incremental: publishing one asset answered HTTP $out"; return 1; }
        python3 "$BENCH_DIR/repl.py" wait-exec "$SPOKE_URL" "$BENCH_KEY" from-hub "$t0" 60 >"$execf" ||
            { note "repl-incremental: no execution carried the new asset within 60 s"; return 1; }
        ms=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print(e["ended_at"]-e["started_at"], e["trigger"], e["pulled_total"]["added"], e["pulled_total"]["bytes"])' "$execf")
        wire_out=$(python3 "$BENCH_DIR/repl.py" wire "$PROXY_CTL" "$execf") || return 1
        log "repl-incremental @$n run $r: execution ${ms%% *} ms (trigger, added, blob bytes: ${ms#* }); wire: execution $(kv exec_requests "$wire_out") requests, $(kv exec_up "$wire_out") B up, $(kv exec_down "$wire_out") B down; long poll $(kv poll_up "$wire_out") B up, $(kv poll_down "$wire_out") B down; other $(kv other_up "$wire_out")/$(kv other_down "$wire_out") B"
        log "  requests: $(kv exec_detail "$wire_out")"
        durs+=("${ms%% *}")
        ups+=("$(kv exec_up "$wire_out")")
        downs+=("$(kv exec_down "$wire_out")")
        polls+=("$(($(kv poll_up "$wire_out") + $(kv poll_down "$wire_out")))")
        sleep 0.5
    done
    INC_MS=$(median "${durs[@]}")
    INC_MAX_MS=$(printf '%s\n' "${durs[@]}" | sort -g | tail -n1)
    INC_UP=$(median "${ups[@]}")
    INC_DOWN=$(median "${downs[@]}")
    INC_POLL=$(median "${polls[@]}")
    log "repl-incremental @$n: execution ms ${durs[*]} (median $INC_MS); bytes up ${ups[*]}, down ${downs[*]}"
}

# inc_measure with its clean-up, whatever happened
inc_part() {
    local rc
    inc_measure "$@"
    rc=$?
    [ -n "${PROXY_PID:-}" ] && stop_now "$PROXY_PID"
    PROXY_PID=''
    repl_stop_pair
    return $rc
}

bench_repl_incremental() {
    local s_ms s_max s_up s_down s_poll s_rate result r
    repl_load_note repl-incremental
    inc_part "$INC_SMALL_ITEMS" inc-small || return 1
    s_ms=$INC_MS s_max=$INC_MAX_MS s_up=$INC_UP s_down=$INC_DOWN s_poll=$INC_POLL s_rate=$INC_SYNC_RATE
    inc_part "$INC_ITEMS" inc-big || return 1
    r=$(ratio "$INC_MS" "$s_ms")
    if awk -v r="$r" -v t="$INC_TARGET_RATIO" 'BEGIN { exit !(r <= t) }'; then result=PASS; else result=FAIL; fi
    add_row "repl-incremental execution ms ($INC_ITEMS items; median of $INC_RUNS, max $(fmt "$INC_MAX_MS" 0))" \
        "$(fmt "$INC_MS" 0)" "$INC_SMALL_ITEMS items: $(fmt "$s_ms" 0) (max $(fmt "$s_max" 0))" "$r" "<= ${INC_TARGET_RATIO}x" "$result"
    add_row "repl-incremental execution bytes up/down ($INC_ITEMS items)" \
        "$(fmt "$INC_UP" 0)/$(fmt "$INC_DOWN" 0)" "$INC_SMALL_ITEMS items: $(fmt "$s_up" 0)/$(fmt "$s_down" 0)" \
        "$(ratio "$((${INC_UP%.*} + ${INC_DOWN%.*}))" "$((${s_up%.*} + ${s_down%.*}))")" "-" "info"
    add_row "repl-incremental long-poll wake-up bytes ($INC_ITEMS items)" "$(fmt "$INC_POLL" 0)" \
        "$INC_SMALL_ITEMS items: $(fmt "$s_poll" 0)" "$(ratio "$INC_POLL" "$s_poll")" "-" "info"
    add_row "repl-incremental initial sync items/s ($INC_ITEMS items)" "$INC_SYNC_RATE" \
        "$INC_SMALL_ITEMS items: $s_rate" "-" "-" "info"
}

# ---------------------------------------------------------------- repl-lag

# devpi-server and devpi-client from a venv under bench/.venv.
find_devpi() {
    local venv=$BENCH_DIR/.venv
    if [ ! -x "$venv/bin/devpi-server" ] || [ ! -x "$venv/bin/devpi" ]; then
        log "installing devpi-server and devpi-client into $venv"
        { [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"; } >&2 || return 1
        timeout 600 "$venv/bin/pip" install -q devpi-server devpi-client >&2 || return 1
    fi
    DEVPI_BIN=$venv/bin
}

# start_devpi NAME SERVERDIR ARGS...: sets DEVPI_PID and DEVPI_URL once /+api answers.
start_devpi() {
    local name=$1 dir=$2 port i
    shift 2
    port=$(free_port)
    "$DEVPI_BIN/devpi-server" --serverdir "$dir" --host 127.0.0.1 --port "$port" "$@" \
        >"$BENCH_TMP/devpi-$name.log" 2>&1 &
    DEVPI_PID=$!
    BENCH_PIDS+=("$DEVPI_PID")
    DEVPI_URL=http://127.0.0.1:$port
    for ((i = 0; i < 1800; i++)); do # up to 180 s: it starts slowly
        curl -s -o /dev/null --max-time 1 "$DEVPI_URL/+api" && break
        kill -0 "$DEVPI_PID" 2>/dev/null || break
        sleep 0.1
    done
    curl -s -o /dev/null --max-time 5 "$DEVPI_URL/+api" || {
        tail -n 20 "$BENCH_TMP/devpi-$name.log" >&2
        log "devpi-server ($name) did not start"
        return 1
    }
    log "devpi-server ($name) pid $DEVPI_PID at $DEVPI_URL, up after $((i / 10)) s"
}

devpi_serial() {
    curl -s --max-time 5 "$1/+status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["serial"])' 2>/dev/null
}

# devpi_pair: a primary with user bench and index bench/dev, and a replica
# in sync with it. Sets DEVPI_PRIMARY, DEVPI_REPLICA (and their PIDs).
DEVPI_PASSWORD=bench-devpi-password
devpi_pair() {
    local d=$BENCH_TMP/devpi i ps rs c
    find_devpi || { DEVPI_REASON="cannot install devpi-server/devpi-client"; return 1; }
    mkdir -p "$d"
    c=("$DEVPI_BIN/devpi" --clientdir "$d/client")
    {
        timeout 60 "$DEVPI_BIN/devpi-gen-secret" --secretfile "$d/secret" &&
            timeout 120 "$DEVPI_BIN/devpi-init" --serverdir "$d/primary" --no-root-pypi --root-passwd "$DEVPI_PASSWORD"
    } >"$BENCH_TMP/devpi-init.log" 2>&1 || { DEVPI_REASON="devpi-init failed"; return 1; }
    # the replication protocol is off unless the role is primary; offline: no PyPI
    start_devpi primary "$d/primary" --role primary --secretfile "$d/secret" --offline-mode ||
        { DEVPI_REASON="the devpi primary did not start"; return 1; }
    DEVPI_PRIMARY=$DEVPI_URL DEVPI_PRIMARY_PID=$DEVPI_PID
    {
        timeout 60 "${c[@]}" use "$DEVPI_PRIMARY" &&
            timeout 60 "${c[@]}" login root --password "$DEVPI_PASSWORD" &&
            timeout 60 "${c[@]}" user -c bench "password=$DEVPI_PASSWORD" &&
            timeout 60 "${c[@]}" login bench --password "$DEVPI_PASSWORD" &&
            timeout 60 "${c[@]}" index -c dev bases= volatile=True
    } >"$BENCH_TMP/devpi-client.log" 2>&1 || { DEVPI_REASON="creating bench/dev with devpi-client failed"; return 1; }
    timeout 120 "$DEVPI_BIN/devpi-init" --serverdir "$d/replica" --role replica --primary-url "$DEVPI_PRIMARY" \
        >>"$BENCH_TMP/devpi-init.log" 2>&1 || { DEVPI_REASON="devpi-init of the replica failed"; return 1; }
    # no --offline-mode here: it would keep the replica from its primary too
    start_devpi replica "$d/replica" --role replica --primary-url "$DEVPI_PRIMARY" --secretfile "$d/secret" ||
        { DEVPI_REASON="the devpi replica did not start"; return 1; }
    DEVPI_REPLICA=$DEVPI_URL DEVPI_REPLICA_PID=$DEVPI_PID
    ps=$(devpi_serial "$DEVPI_PRIMARY")
    for ((i = 0; i < 1200; i++)); do
        rs=$(devpi_serial "$DEVPI_REPLICA")
        [ -n "$rs" ] && [ "$rs" = "$ps" ] && break
        sleep 0.1
    done
    [ "$rs" = "$ps" ] || { DEVPI_REASON="the devpi replica did not catch up (serial $rs of $ps)"; return 1; }
    log "devpi: replica in sync at serial $rs"
}

bench_repl_lag() {
    local rc
    repl_lag_inner
    rc=$?
    [ -n "${DEVPI_REPLICA_PID:-}" ] && stop_now "$DEVPI_REPLICA_PID"
    [ -n "${DEVPI_PRIMARY_PID:-}" ] && stop_now "$DEVPI_PRIMARY_PID"
    DEVPI_REPLICA_PID='' DEVPI_PRIMARY_PID=''
    repl_stop_pair
    rm -rf -- "$BENCH_TMP/devpi" "$BENCH_TMP/lag-wheels"
    return $rc
}

repl_lag_inner() {
    local out fstats dstats f50 f99 d50 d99 r result
    repl_load_note repl-lag
    repl_hub lag-hub || { note "repl-lag: cannot set up the hub"; return 1; }
    repl_spoke lag-spoke || { note "repl-lag: cannot set up the spoke"; return 1; }
    repl_connect "$HUB_URL" || { note "repl-lag: cannot create the spoke's replication"; return 1; }
    repl_run_wait 120 || { note "repl-lag: the first execution failed"; return 1; }
    sleep 1 # the long poll is in place
    log "repl-lag: ferry: $LAG_N publishes, >= $LAG_SPACING_MS ms apart, polling the spoke every $LAG_POLL_MS ms"
    timeout $((LAG_N * 40 + 120)) python3 "$BENCH_DIR/repl.py" lag-ferry "$HUB_URL" "$SPOKE_URL" "$REPL_FEED" \
        "$BENCH_KEY" "$LAG_N" "$LAG_SPACING_MS" "$LAG_POLL_MS" 30 >"$BENCH_TMP/lag-ferry.json" ||
        { note "repl-lag: the ferry lag run failed"; return 1; }
    fstats=$(python3 "$BENCH_DIR/repl.py" stats "$BENCH_TMP/lag-ferry.json") || return 1
    log "repl-lag: ferry: $(tr '\n' ' ' <<<"$fstats")"
    repl_stop_pair
    f50=$(kv p50 "$fstats") f99=$(kv p99 "$fstats")

    DEVPI_REASON=''
    if [ -n "${BENCH_NO_DEVPI:-}" ]; then
        DEVPI_REASON="skipped (BENCH_NO_DEVPI)"
    elif devpi_pair; then
        local wheels=$BENCH_TMP/lag-wheels i
        for ((i = 0; i <= LAG_N; i++)); do # wheel 0: the warm-up upload
            python3 "$BENCH_DIR/mkwheel.py" "$wheels" "$(printf 'ferry-lag-%04d' "$i")" 1.0.0 >/dev/null ||
                { DEVPI_REASON="cannot build the wheels"; break; }
        done
        if [ -z "$DEVPI_REASON" ]; then
            log "repl-lag: devpi: $LAG_N uploads, >= $LAG_SPACING_MS ms apart, polling the replica every $LAG_POLL_MS ms"
            if timeout $((LAG_N * 40 + 120)) python3 "$BENCH_DIR/repl.py" lag-devpi "$DEVPI_PRIMARY" "$DEVPI_REPLICA" \
                bench/dev bench "$DEVPI_PASSWORD" "$LAG_SPACING_MS" "$LAG_POLL_MS" 30 "$wheels"/*.whl \
                >"$BENCH_TMP/lag-devpi.json"; then
                dstats=$(python3 "$BENCH_DIR/repl.py" stats "$BENCH_TMP/lag-devpi.json") || DEVPI_REASON="no devpi figures"
                log "repl-lag: devpi: $(tr '\n' ' ' <<<"$dstats")"
            else
                DEVPI_REASON="the devpi lag run failed (see log above)"
            fi
        fi
    fi
    [ -n "${DEVPI_REPLICA_PID:-}" ] && stop_now "$DEVPI_REPLICA_PID"
    [ -n "${DEVPI_PRIMARY_PID:-}" ] && stop_now "$DEVPI_PRIMARY_PID"
    DEVPI_REPLICA_PID='' DEVPI_PRIMARY_PID=''

    if [ -z "$DEVPI_REASON" ]; then
        d50=$(kv p50 "$dstats") d99=$(kv p99 "$dstats")
        r=$(ratio "$f99" "$d99")
        if awk -v r="$r" 'BEGIN { exit !(r <= 0.25) }'; then result=PASS; else result=FAIL; fi
        add_row "repl-lag publish -> served p99 ms ($LAG_N publishes)" "$(fmt "$f99")" "$(fmt "$d99")" "$r" "<= 0.25x" "$result"
        add_row "repl-lag publish -> served p50 ms" "$(fmt "$f50")" "$(fmt "$d50")" "$(ratio "$f50" "$d50")" "-" "info"
        add_row "repl-lag p99 ms to the 200's headers (body not waited for)" "$(fmt "$(kv headers_p99 "$fstats")")" \
            "$(fmt "$(kv headers_p99 "$dstats")")" "$(ratio "$(kv headers_p99 "$fstats")" "$(kv headers_p99 "$dstats")")" "-" "info"
    else
        add_row "repl-lag publish -> served p99 ms ($LAG_N publishes)" "$(fmt "$f99")" "-" "-" "<= 0.25x" "unavailable"
        add_row "repl-lag publish -> served p50 ms" "$(fmt "$f50")" "-" "-" "-" "info"
        add_row "repl-lag p99 ms to the 200's headers (body not waited for)" "$(fmt "$(kv headers_p99 "$fstats")")" "-" "-" "-" "info"
        note "repl-lag: devpi baseline unavailable: $DEVPI_REASON"
    fi
}
