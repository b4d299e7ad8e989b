# shellcheck shell=bash
# The repl-wan part of bench/run: replication over a link with a round trip
# (0, 50, 150 ms by default) added by latency_proxy.py, Ferry against
# `rsync -a` through the same proxy. See bench/README.md.
# Sourced by bench/run after lib.sh and replication.sh; not meant to be run
# on its own.

WAN_ROWS=()    # content|rtt|ferry|rsync|ratio|target|result
WAN_WIRE=()    # content|rtt|requests per item|turns per page|sequential round trips per page|connections|blob GETs
WAN_PAGE=500   # items per changes page of the current engine (crates/replication PAGE)

wan_settings() {
    WAN_RTTS=${BENCH_WAN_RTTS:-0 50 150}
    WAN_RUNS=${BENCH_WAN_RUNS:-3}
    WAN_SMALL_FILES=${BENCH_WAN_SMALL_FILES:-$([ -n "$QUICK" ] && echo 200 || echo 1000)}
    WAN_SMALL_KIB=${BENCH_WAN_SMALL_KIB:-64}
    WAN_BIG_FILES=${BENCH_WAN_BIG_FILES:-$([ -n "$QUICK" ] && echo 10 || echo 100)}
    WAN_BIG_MIB=${BENCH_WAN_BIG_MIB:-10}
    WAN_NEW_RUNS=${BENCH_WAN_NEW_RUNS:-$([ -n "$QUICK" ] && echo 3 || echo 5)}
    WAN_POLL_MS=${BENCH_WAN_POLL_MS:-5}
    local v r
    for v in WAN_RUNS WAN_SMALL_FILES WAN_SMALL_KIB WAN_BIG_FILES WAN_BIG_MIB WAN_NEW_RUNS WAN_POLL_MS; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, not '${!v}'" >&2; return 1; }
    done
    for r in $WAN_RTTS; do
        [[ $r =~ ^[0-9]+$ ]] && [ "$r" -le 2000 ] || { echo "BENCH_WAN_RTTS: '$r' is not a round trip in ms (0..2000)" >&2; return 1; }
    done
    [ "$WAN_RUNS" -le 20 ] || { echo "BENCH_WAN_RUNS is capped at 20" >&2; return 1; }
    [ "$WAN_NEW_RUNS" -le 50 ] || { echo "BENCH_WAN_NEW_RUNS is capped at 50" >&2; return 1; }
    [ "$WAN_SMALL_FILES" -le 100000 ] || { echo "BENCH_WAN_SMALL_FILES is capped at 100000" >&2; return 1; }
    [ $((WAN_SMALL_FILES * WAN_SMALL_KIB)) -le 4194304 ] || { echo "BENCH_WAN_SMALL_* is capped at 4 GiB" >&2; return 1; }
    [ $((WAN_BIG_FILES * WAN_BIG_MIB)) -le 4096 ] || { echo "BENCH_WAN_BIG_* is capped at 4 GiB" >&2; return 1; }
    [ "$WAN_POLL_MS" -le 1000 ] || { echo "BENCH_WAN_POLL_MS is capped at 1000" >&2; return 1; }
}

# start_latency_proxy TARGET_PORT RTT_MS STATS_FILE: latency_proxy.py on a
# fresh loopback port in front of 127.0.0.1:TARGET_PORT. Sets LP_PID, LP_PORT.
start_latency_proxy() {
    local out=$BENCH_TMP/latency-proxy.port i
    : >"$out"
    python3 "$BENCH_DIR/latency_proxy.py" --listen 0 --target "127.0.0.1:$1" --rtt-ms "$2" --stats "$3" \
        --max-seconds 7200 >"$out" 2>>"$BENCH_TMP/latency-proxy.log" &
    LP_PID=$!
    BENCH_PIDS+=("$LP_PID")
    for ((i = 0; i < 200; i++)); do
        [ -s "$out" ] && break
        kill -0 "$LP_PID" 2>/dev/null || break
        sleep 0.05
    done
    LP_PORT=$(head -n1 "$out")
    [[ $LP_PORT =~ ^[0-9]+$ ]] || { tail -n 5 "$BENCH_TMP/latency-proxy.log" >&2; log "latency_proxy.py did not start"; return 1; }
}

# stop_latency_proxy: SIGTERM (it writes its final stats) and forget it.
stop_latency_proxy() {
    [ -n "${LP_PID:-}" ] && stop_now "$LP_PID"
    LP_PID=''
}

port_of() { local u=${1%/}; echo "${u##*:}"; }

# wan_rsyncd: one rsync daemon serving the two hubs' blob folders read-only
# as modules "small" and "big". Sets WAN_RSYNCD_PID, WAN_RSYNCD_PORT.
wan_rsyncd() {
    local dir=$BENCH_TMP/wan-rsyncd i
    mkdir -p "$dir"
    WAN_RSYNCD_PORT=$(free_port)
    cat >"$dir/rsyncd.conf" <<EOF
pid file = $dir/rsyncd.pid
lock file = $dir/rsyncd.lock
log file = $dir/rsyncd.log
use chroot = no
max connections = 8
uid = $(id -u)
gid = $(id -g)
[small]
    path = $1
    read only = yes
[big]
    path = $2
    read only = yes
EOF
    rsync --daemon --no-detach --config="$dir/rsyncd.conf" --address=127.0.0.1 --port="$WAN_RSYNCD_PORT" \
        >"$dir/stdout.log" 2>&1 &
    WAN_RSYNCD_PID=$!
    BENCH_PIDS+=("$WAN_RSYNCD_PID")
    for ((i = 0; i < 100; i++)); do
        timeout 5 rsync --list-only "rsync://127.0.0.1:$WAN_RSYNCD_PORT/" 2>/dev/null | grep -q '^big' && break
        kill -0 "$WAN_RSYNCD_PID" 2>/dev/null || break
        sleep 0.1
    done
    timeout 5 rsync --list-only "rsync://127.0.0.1:$WAN_RSYNCD_PORT/" 2>/dev/null | grep -q '^big' || {
        cat "$dir/stdout.log" "$dir/rsyncd.log" >&2 2>/dev/null
        log "the rsync daemon did not start"
        return 1
    }
    log "rsync daemon pid $WAN_RSYNCD_PID on port $WAN_RSYNCD_PORT (modules small, big)"
}

# wan_rsync MODULE DEST RTT: `rsync -a` of the module through a fresh
# latency proxy of its own into DEST; sets WAN_RS (seconds). Leaves the
# proxy's stats in $BENCH_TMP/wan-rsync-stats.json. A proxy the caller has
# running (LP_PID) is left alone.
wan_rsync() {
    local module=$1 dest=$2 rtt=$3 t0 t1 st=$BENCH_TMP/wan-rsync-stats.json caller_lp=${LP_PID:-} rc=0
    mkdir -p "$dest"
    start_latency_proxy "$WAN_RSYNCD_PORT" "$rtt" "$st" || { LP_PID=$caller_lp; return 1; }
    sync
    t0=$(now_ms)
    timeout 1800 rsync -a "rsync://127.0.0.1:$LP_PORT/$module/" "$dest/" >"$BENCH_TMP/wan-rsync.log" 2>&1 || rc=$?
    t1=$(now_ms)
    stop_latency_proxy
    LP_PID=$caller_lp
    if [ "$rc" != 0 ]; then
        log "rsync exit $rc: $(tail -n 3 "$BENCH_TMP/wan-rsync.log" | tr '\n' ' ')"
        return 1
    fi
    WAN_RS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')
}

# wan_hub NAME FILES BYTES_EACH: a hub holding FILES random assets of
# BYTES_EACH under wan/ (uploaded directly, not through the proxy). Sets
# HUB_URL HUB_PID HUB_DIR HUB_TOKEN (repl_hub) and WAN_HUB_TREE ("files bytes"
# of its blob folder).
wan_hub() {
    local name=$1 n=$2 each=$3 src=$BENCH_TMP/wan-src-$1 out
    out=$(python3 "$BENCH_DIR/wan.py" gen-exact "$src" "$n" "$each") || return 1
    repl_hub "$name" || return 1
    out=$(timeout 1800 python3 "$BENCH_DIR/repl.py" put-files "$HUB_URL" "$REPL_FEED" "$src" wan \
        "$BENCH_KEY" 2) || { log "uploading to the hub failed"; return 1; }
    log "repl-wan: $name: $(kv items "$out") items, $(mib "$(kv bytes "$out")") MiB uploaded in $(kv seconds "$out") s"
    rm -rf -- "$src"
    WAN_HUB_TREE=$(tree_size "$HUB_DIR/data/blobs/sha256")
    [ "${WAN_HUB_TREE% *}" = "$n" ] || { log "the hub's blob folder holds ${WAN_HUB_TREE% *} files, not $n"; return 1; }
}

# wan_ferry_sync RTT ITEMS BYTES TAG: a fresh spoke pulls the current hub
# (HUB_URL, HUB_TOKEN) through a fresh latency proxy; sets WAN_SECS (the
# span of the execution(s) that pulled the items), WAN_WALL (create ->
# run --wait returned) and leaves the proxy's stats in
# $BENCH_TMP/wan-ferry-stats-TAG.json. With WAN_KEEP_SPOKE=1 the spoke and
# the proxy are left running (SPOKE_*, LP_PID).
wan_ferry_sync() {
    local rtt=$1 items=$2 bytes=$3 tag=$4 t0 t1 co st=$BENCH_TMP/wan-ferry-stats-$4.json
    start_latency_proxy "$(port_of "$HUB_URL")" "$rtt" "$st" || return 1
    repl_spoke "wan-spoke-$tag" || return 1
    sync
    t0=$(now_ms)
    repl_connect "http://127.0.0.1:$LP_PORT" || { log "cannot create the spoke's replication"; return 1; }
    repl_run_wait 1800 || { log "run --wait failed"; return 1; }
    t1=$(now_ms)
    co=$(repl_carried "$t0") || return 1
    WAN_SECS=$(awk -v ms="$(kv span_ms "$co")" 'BEGIN { printf "%.3f", ms / 1000 }')
    WAN_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')
    if [ "$(kv added "$co")" != "$items" ] || [ "$(kv bytes "$co")" != "$bytes" ]; then
        log "the spoke pulled $(kv added "$co") items / $(kv bytes "$co") bytes, expected $items / $bytes ($(kv outcomes "$co"))"
        return 1
    fi
    [ "$(kv carrying "$co")" = 1 ] || log "  (the copy took $(kv carrying "$co") executions: $(kv outcomes "$co"))"
    [ -n "${WAN_KEEP_SPOKE:-}" ] && return 0
    stop_ferry_now "$SPOKE_PID" # its long poll ends: the proxy's counts are final
    rm -rf -- "$SPOKE_DIR"
    SPOKE_PID='' SPOKE_DIR=''
    stop_latency_proxy
}

# wan_first_sync CONTENT MODULE ITEMS BYTES: for every round trip, WAN_RUNS
# alternating rsync / Ferry copies of the current hub; adds the rows.
wan_first_sync() {
    local content=$1 module=$2 items=$3 bytes=$4 rtt run rs fe dest=$BENCH_TMP/wan-rsync-dest w
    local -A fe_med=()
    for rtt in $WAN_RTTS; do
        local rs_runs=() fe_runs=() wall_runs=() req=() turns=() conns=() blobs=()
        for ((run = 1; run <= WAN_RUNS; run++)); do
            # alternate which goes first, so that a burst of noise hits both
            if ((run % 2)); then
                wan_rsync "$module" "$dest" "$rtt" || { note "repl-wan: rsync failed ($content, $rtt ms)"; return 1; }
                rs=$WAN_RS
                [ "$(tree_size "$dest")" = "$items $bytes" ] || { note "repl-wan: rsync copied $(tree_size "$dest"), not $items $bytes"; return 1; }
                rm -rf -- "$dest"
            fi
            wan_ferry_sync "$rtt" "$items" "$bytes" "$module-$rtt-$run" ||
                { note "repl-wan: Ferry's first sync failed ($content, $rtt ms)"; stop_latency_proxy; return 1; }
            fe=$WAN_SECS
            if ! ((run % 2)); then
                wan_rsync "$module" "$dest" "$rtt" || { note "repl-wan: rsync failed ($content, $rtt ms)"; return 1; }
                rs=$WAN_RS
                [ "$(tree_size "$dest")" = "$items $bytes" ] || { note "repl-wan: rsync copied $(tree_size "$dest"), not $items $bytes"; return 1; }
                rm -rf -- "$dest"
            fi
            w=$(python3 "$BENCH_DIR/wan.py" proxy-stats "$BENCH_TMP/wan-ferry-stats-$module-$rtt-$run.json" "$items" "$WAN_PAGE") || return 1
            rs_runs+=("$rs") fe_runs+=("$fe") wall_runs+=("$WAN_WALL")
            req+=("$(kv requests_per_item "$w")") turns+=("$(kv turns_per_page "$w")")
            conns+=("$(kv connections "$w")") blobs+=("$(kv blob_gets "$w")")
            log "repl-wan $content @ $rtt ms run $run/$WAN_RUNS: rsync $rs s; Ferry execution $fe s (wall $WAN_WALL s); proxy: $(kv requests "$w") requests ($(kv requests_per_item "$w")/item), $(kv turns "$w") turns ($(kv turns_per_page "$w")/page), $(kv connections "$w") connections"
            log "  requests: $(kv kinds "$w" | cut -c1-400)"
        done
        local rs_m fe_m r result
        rs_m=$(median "${rs_runs[@]}")
        fe_m=$(median "${fe_runs[@]}")
        fe_med[$rtt]=$fe_m
        r=$(ratio "$fe_m" "$rs_m")
        if awk -v r="$r" 'BEGIN { exit !(r <= 1.0) }'; then result=PASS; else result=FAIL; fi
        WAN_ROWS+=("$content first sync|$rtt|$(fmt "$fe_m" 2) s|$(fmt "$rs_m" 2) s|$r|<= 1.00x rsync|$result")
        add_row "repl-wan $content first sync s @ ${rtt} ms rtt (median of $WAN_RUNS)" "$(fmt "$fe_m" 2)" "$(fmt "$rs_m" 2)" "$r" "<= 1.00x" "$result"
        # Round trips on the critical path, from the delay: the time the
        # round trip added over the 0 ms run, in round trips, per page.
        local seq=-
        if [ "$rtt" -gt 0 ] && [ -n "${fe_med[0]:-}" ]; then
            seq=$(awk -v a="$fe_m" -v b="${fe_med[0]}" -v r="$rtt" -v n="$items" -v p="$WAN_PAGE" \
                'BEGIN { pages = n / p; if (pages < 1) pages = 1; printf "%.1f", (a - b) * 1000 / r / pages }')
        fi
        WAN_WIRE+=("$content|$rtt|$(median "${req[@]}")|$(median "${turns[@]}")|$seq|$(median "${conns[@]}")|$(median "${blobs[@]}")")
        log "repl-wan $content @ $rtt ms: rsync ${rs_runs[*]} s; Ferry ${fe_runs[*]} s (wall ${wall_runs[*]})"
    done
}

# wan_new_file: (c) for every round trip: a spoke following the small hub
# by long polling through the proxy; WAN_NEW_RUNS times, one new asset
# published on the hub (timed from its 201 until the spoke serves it), then
# one `rsync -a` of the hub's blob folder through the same kind of proxy
# into a copy that lacks just that file.
wan_new_file() {
    local each=$1 rtt i out lag rs dest=$BENCH_TMP/wan-new-dest n0 t
    mkdir -p "$dest"
    timeout 600 rsync -a "rsync://127.0.0.1:$WAN_RSYNCD_PORT/small/" "$dest/" >/dev/null 2>&1 ||
        { note "repl-wan: the untimed rsync copy for (c) failed"; return 1; }
    n0=$(tree_size "$dest")
    for rtt in $WAN_RTTS; do
        local lags=() hlags=() rs_runs=()
        # a spoke that has the tree and follows the hub (its long poll in place)
        n0=$(tree_size "$HUB_DIR/data/blobs/sha256")
        WAN_KEEP_SPOKE=1 wan_ferry_sync "$rtt" "${n0% *}" "${n0#* }" "new-$rtt" ||
            { note "repl-wan: the (c) spoke's first sync failed ($rtt ms)"; stop_latency_proxy; return 1; }
        sleep 1
        for ((i = 0; i <= WAN_NEW_RUNS; i++)); do # i = 0: a warm-up, not counted
            out=$(timeout 120 python3 "$BENCH_DIR/wan.py" publish-lag "$HUB_URL" "$SPOKE_URL" "$REPL_FEED" "$BENCH_KEY" \
                "new/$rtt-$i.bin" "$each" "$WAN_POLL_MS" 60) || { note "repl-wan: the new file was not served by the spoke ($rtt ms)"; return 1; }
            lag=$(kv lag_ms "$out")
            # rsync: the tree now has exactly one file the copy lacks
            wan_rsync small "$dest" "$rtt" || { note "repl-wan: rsync failed (new file, $rtt ms)"; return 1; }
            rs=$WAN_RS
            t=$(tree_size "$dest")
            [ "${t% *}" = $(( ${n0% *} + i + 1 )) ] || log "  (the rsync copy holds ${t% *} files, expected $(( ${n0% *} + i + 1 )))"
            log "repl-wan new file @ $rtt ms run $i/$WAN_NEW_RUNS: Ferry served after $lag ms (headers $(kv headers_lag_ms "$out") ms, $(kv polls "$out") polls); rsync -a $rs s"
            if [ "$i" -gt 0 ]; then
                lags+=("$lag") hlags+=("$(kv headers_lag_ms "$out")") rs_runs+=("$rs")
            fi
            sleep 1 # the spoke's long poll is back in place
        done
        stop_ferry_now "$SPOKE_PID"
        rm -rf -- "$SPOKE_DIR"
        SPOKE_PID='' SPOKE_DIR=''
        stop_latency_proxy
        local lag_m rs_m max target result r
        lag_m=$(median "${lags[@]}")
        max=$(printf '%s\n' "${lags[@]}" | sort -g | tail -n1)
        rs_m=$(median "${rs_runs[@]}")
        target=$((rtt + 20))
        r=$(ratio "$(awk -v l="$lag_m" 'BEGIN { print l / 1000 }')" "$rs_m")
        if awk -v l="$lag_m" -v t="$target" 'BEGIN { exit !(l <= t) }'; then result=PASS; else result=FAIL; fi
        WAN_ROWS+=("1 new file in ${n0% *}, served (max $(fmt "$max" 0) ms)|$rtt|$(fmt "$(awk -v l="$lag_m" 'BEGIN { print l / 1000 }')" 3) s|$(fmt "$rs_m" 2) s|$r|<= rtt + 20 ms ($target ms)|$result")
        add_row "repl-wan 1 new file served ms @ ${rtt} ms rtt (median of $WAN_NEW_RUNS, max $(fmt "$max" 0))" "$(fmt "$lag_m" 0)" "rsync $(fmt "$(awk -v s="$rs_m" 'BEGIN { print s * 1000 }')" 0)" "$r" "<= $target ms" "$result"
        log "repl-wan new file @ $rtt ms: Ferry ${lags[*]} ms (headers ${hlags[*]}); rsync ${rs_runs[*]} s"
    done
    rm -rf -- "$dest"
}

bench_repl_wan() {
    local rc
    repl_wan_inner
    rc=$?
    stop_latency_proxy
    [ -n "${WAN_RSYNCD_PID:-}" ] && stop_now "$WAN_RSYNCD_PID"
    WAN_RSYNCD_PID=''
    repl_stop_pair
    [ -n "${WAN_BIG_HUB_PID:-}" ] && stop_ferry_now "$WAN_BIG_HUB_PID"
    WAN_BIG_HUB_PID=''
    rm -rf -- "$BENCH_TMP"/wan-* "$BENCH_TMP"/ferry-wan-*
    return $rc
}

repl_wan_inner() {
    local small_bytes=$((WAN_SMALL_KIB * 1024)) big_bytes=$((WAN_BIG_MIB * 1048576))
    local small_label big_label
    small_label="$WAN_SMALL_FILES x $WAN_SMALL_KIB KiB"
    big_label="$WAN_BIG_FILES x $WAN_BIG_MIB MiB"
    repl_load_note repl-wan
    log "repl-wan: round trips ${WAN_RTTS// /, } ms; $WAN_RUNS runs; (a) $small_label, (b) $big_label, (c) $WAN_NEW_RUNS new files of $WAN_SMALL_KIB KiB, spoke polled every $WAN_POLL_MS ms"

    wan_hub wan-big "$WAN_BIG_FILES" "$big_bytes" || { note "repl-wan: cannot set up the big hub"; return 1; }
    local big_url=$HUB_URL big_token=$HUB_TOKEN big_dir=$HUB_DIR big_tree=$WAN_HUB_TREE
    WAN_BIG_HUB_PID=$HUB_PID
    HUB_PID='' HUB_DIR=''
    wan_hub wan-small "$WAN_SMALL_FILES" "$small_bytes" || { note "repl-wan: cannot set up the small hub"; return 1; }
    local small_tree=$WAN_HUB_TREE
    wan_rsyncd "$HUB_DIR/data/blobs/sha256" "$big_dir/data/blobs/sha256" || { note "repl-wan: the rsync daemon did not start"; return 1; }

    # (a) many small files
    wan_first_sync "$small_label" small "${small_tree% *}" "${small_tree#* }" || return 1
    # (b) fewer large files: the big hub's variables for a while
    local s_url=$HUB_URL s_token=$HUB_TOKEN
    HUB_URL=$big_url HUB_TOKEN=$big_token
    wan_first_sync "$big_label" big "${big_tree% *}" "${big_tree#* }" || return 1
    HUB_URL=$s_url HUB_TOKEN=$s_token
    stop_ferry_now "$WAN_BIG_HUB_PID"
    WAN_BIG_HUB_PID=''
    rm -rf -- "$big_dir"
    # (c) one new file, followed by long polling
    wan_new_file "$small_bytes" || return 1
}

# |-separated lines -> aligned columns
wan_columns() {
    awk -F'|' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } if (NF > nf) nf = NF; n = NR }
        END { for (r = 1; r <= n; r++) { line = " "; for (i = 1; i <= nf; i++) line = line (i < nf ? sprintf(" %-*s |", w[i], c[r, i]) : " " c[r, i]); print line } }'
}

print_wan_table() {
    [ ${#WAN_ROWS[@]} -gt 0 ] || return 0
    echo
    echo "repl-wan (Ferry spoke pulling through latency_proxy.py vs rsync -a through the same proxy; medians):"
    {
        echo "content|rtt ms|Ferry|rsync -a|ratio|target|result"
        printf '%s\n' "${WAN_ROWS[@]}"
    } | wan_columns
    if [ ${#WAN_WIRE[@]} -gt 0 ]; then
        echo
        echo "Ferry's first sync on the wire (from the proxy; medians; page = $WAN_PAGE items):"
        {
            echo "content|rtt ms|HTTP requests per item|turns per page (sum over connections)|round trips per page on the critical path ((t - t@0) / rtt)|connections|blob GETs"
            printf '%s\n' "${WAN_WIRE[@]}"
        } | wan_columns
    fi
}
