# shellcheck shell=bash
# The fleet part of bench/run: one hub and fifty spokes (separate `ferry
# serve` processes on loopback, each configured by its own TOML file and
# following the hub by long polling). Measures the hub's RSS and CPU while
# idle with fifty long polls waiting, and while one publish fans out; and
# publish -> served on every spoke. See bench/README.md.
# Sourced by bench/run after lib.sh and replication.sh; not meant to be run
# on its own.

FLEET_LAG_TARGET_MS=1000
FLEET_RSS_TARGET_MIB=256

fleet_settings() {
    local v
    FLEET_SPOKES=${BENCH_FLEET_SPOKES:-$([ -n "$QUICK" ] && echo 10 || echo 50)}
    FLEET_PUBLISHES=${BENCH_FLEET_PUBLISHES:-$([ -n "$QUICK" ] && echo 5 || echo 20)}
    FLEET_IDLE_S=${BENCH_FLEET_IDLE_S:-$([ -n "$QUICK" ] && echo 10 || echo 30)}
    FLEET_POLL_MS=${BENCH_FLEET_POLL_MS:-20}
    FLEET_SPACING_MS=${BENCH_FLEET_SPACING_MS:-300}
    for v in FLEET_SPOKES FLEET_PUBLISHES FLEET_IDLE_S FLEET_POLL_MS FLEET_SPACING_MS; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, not '${!v}'" >&2; return 1; }
    done
    [ "$FLEET_SPOKES" -le 200 ] || { echo "BENCH_FLEET_SPOKES is capped at 200" >&2; return 1; }
    [ "$FLEET_PUBLISHES" -le 500 ] || { echo "BENCH_FLEET_PUBLISHES is capped at 500" >&2; return 1; }
    [ "$FLEET_IDLE_S" -le 600 ] || { echo "BENCH_FLEET_IDLE_S is capped at 600" >&2; return 1; }
    [ "$FLEET_POLL_MS" -le 1000 ] || { echo "BENCH_FLEET_POLL_MS is capped at 1000" >&2; return 1; }
    [ "$FLEET_SPACING_MS" -le 10000 ] || { echo "BENCH_FLEET_SPACING_MS is capped at 10000" >&2; return 1; }
}

FLEET_PIDS=()

# fleet_ticks PID...: CPU time (user + system, clock ticks) of these
# processes, summed, read in one pass.
fleet_ticks() {
    local p files=()
    for p in "$@"; do [ -r "/proc/$p/stat" ] && files+=("/proc/$p/stat"); done
    [ ${#files[@]} -gt 0 ] || { echo 0; return; }
    awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { printf "%d\n", t }' "${files[@]}" 2>/dev/null
}

# fleet_limits: enough descriptors for the hub (a long poll and an
# execution's connections per spoke) and for the poller (one per spoke).
fleet_limits() {
    local need=$((FLEET_SPOKES * 8 + 256)) soft hard lo hi
    soft=$(ulimit -Sn)
    hard=$(ulimit -Hn)
    if [ "$soft" != unlimited ] && [ "$soft" -lt "$need" ]; then
        if [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ]; then
            ulimit -Sn "$need" || return 1
            log "fleet: raised the descriptor limit from $soft to $need"
        else
            log "fleet: the descriptor limit is $soft (hard $hard); $FLEET_SPOKES spokes need about $need"
            return 1
        fi
    fi
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    if [ $((hi - lo)) -lt $((FLEET_SPOKES * 20)) ]; then
        log "fleet: only $((hi - lo)) ephemeral ports ($lo-$hi)"
        return 1
    fi
    log "fleet: descriptors $(ulimit -Sn) (hard $hard), ephemeral ports $lo-$hi"
}

# fleet_start_spokes DIR: FLEET_SPOKES spokes, one `ferry serve --config`
# each (an assets feed and an outgoing pull replication of the hub's feed,
# following it by long polling); waits until every one listens. Writes
# "PID URL" lines to DIR/spokes.txt.
fleet_start_spokes() {
    local top=$1 i d pid addr deadline
    local -a dirs=()
    mkdir -p "$top"
    : >"$top/spokes.txt"
    for ((i = 1; i <= FLEET_SPOKES; i++)); do
        d=$top/spoke-$(printf '%03d' "$i")
        mkdir -p "$d"
        printf '%s\n' "$HUB_TOKEN" >"$d/hub.token"
        cat >"$d/spoke.toml" <<EOF
# spoke $i of the fleet section
[[feeds]]
name = "$REPL_FEED"
type = "assets"

[[replications]]
name = "from-hub"
feeds = ["$REPL_FEED"]
outgoing = "$HUB_URL"
token_file = "hub.token"
mode = "pull"
interval = 3600
EOF
        # shellcheck disable=SC2153 # FERRY_BIN is set by bench/run
        FERRY_ADMIN_KEY=$BENCH_KEY FERRY_LOG=${FERRY_LOG:-warn} FERRY_INSTANCE_NAME=fleet-spoke-$i \
            "$FERRY_BIN" serve --config "$d/spoke.toml" --data-dir "$d/data" --listen 127.0.0.1:0 \
            >"$d/stdout.log" 2>"$d/stderr.log" &
        pid=$!
        BENCH_PIDS+=("$pid")
        FLEET_PIDS+=("$pid")
        dirs+=("$d")
    done
    deadline=$(($(date +%s) + 120))
    for ((i = 0; i < FLEET_SPOKES; i++)); do
        d=${dirs[$i]} pid=${FLEET_PIDS[$i]}
        addr=
        while [ "$(date +%s)" -le "$deadline" ]; do
            addr=$(sed -n 's/^listening on \(http:\/\/.*\)$/\1/p' "$d/stdout.log" 2>/dev/null | head -n1)
            [ -n "$addr" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ -z "$addr" ]; then
            log "fleet: spoke $((i + 1)) (pid $pid) did not start:"
            tail -n 5 "$d/stderr.log" >&2
            return 1
        fi
        printf '%s %s\n' "$pid" "$addr" >>"$top/spokes.txt"
    done
    log "fleet: $FLEET_SPOKES spokes listening (pids ${FLEET_PIDS[0]}..${FLEET_PIDS[-1]})"
}

# fleet_stop_spokes: SIGTERM to every spoke at once, up to 15 s for all,
# then SIGKILL to any left; each by its PID.
fleet_stop_spokes() {
    local pid i alive
    for pid in "${FLEET_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 150; i++)); do
        alive=0
        for pid in "${FLEET_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${FLEET_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "fleet: spoke pid $pid did not stop on SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        forget_pid "$pid"
    done
    FLEET_PIDS=()
}

# fleet_peers: how many peers the hub's replication "edge" knows and how
# many of them are connected (a long poll waiting or a recent contact).
fleet_peers() {
    fcli "$HUB_URL" replication peers edge --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
if isinstance(d, dict):
    d = d.get("peers", [])
print(len(d), sum(1 for p in d if p.get("connected")))'
}

bench_fleet() {
    local rc
    fleet_inner
    rc=$?
    [ ${#FLEET_PIDS[@]} -gt 0 ] && fleet_stop_spokes
    [ -n "${HUB_PID:-}" ] && stop_ferry_now "$HUB_PID"
    rm -rf -- "$BENCH_TMP/fleet" "${HUB_DIR:-/nonexistent}"
    HUB_PID='' HUB_DIR=''
    return $rc
}

fleet_inner() {
    local top=$BENCH_TMP/fleet hz i peers t0 t1 h0 h1 s0 s1 out st result
    local idle_rss idle_hub_pct idle_spokes_pct fds threads spokes_rss
    repl_load_note fleet
    fleet_limits || { note "fleet: descriptor or port limits too low"; return 1; }
    hz=$(getconf CLK_TCK)
    repl_hub fleet-hub || { note "fleet: cannot set up the hub"; return 1; }
    log "fleet: hub RSS $(($(proc_kib "$HUB_PID" VmRSS) / 1024)) MiB before any spoke"
    fleet_start_spokes "$top" || { note "fleet: the spokes did not all start"; return 1; }

    # Every spoke has run its first execution and long-polls the hub.
    for ((i = 0; i < 600; i++)); do
        read -r peers st <<<"$(fleet_peers)"
        [ "${peers:-0}" -ge "$FLEET_SPOKES" ] && [ "${st:-0}" -ge "$FLEET_SPOKES" ] && break
        sleep 0.1
    done
    log "fleet: the hub knows ${peers:-0} peers, ${st:-0} connected"
    [ "${peers:-0}" -ge "$FLEET_SPOKES" ] ||
        { note "fleet: the hub knows ${peers:-0} of $FLEET_SPOKES spokes after 60 s"; return 1; }
    sleep 2

    # Idle: nothing published, fifty long polls waiting on the hub.
    local -a spoke_pids
    read -r -a spoke_pids <<<"$(awk '{ printf "%s ", $1 }' "$top/spokes.txt")"
    log "fleet: idle for $FLEET_IDLE_S s with $FLEET_SPOKES long polls on the hub"
    h0=$(fleet_ticks "$HUB_PID")
    s0=$(fleet_ticks "${spoke_pids[@]}")
    t0=$(now_ms)
    # in the background and waited for, so that SIGINT/SIGTERM stop the
    # fleet at once instead of after the idle window
    sleep "$FLEET_IDLE_S" &
    wait $!
    t1=$(now_ms)
    h1=$(fleet_ticks "$HUB_PID")
    s1=$(fleet_ticks "${spoke_pids[@]}")
    spokes_rss=0
    for i in "${spoke_pids[@]}"; do spokes_rss=$((spokes_rss + $(proc_kib "$i" VmRSS))); done
    idle_rss=$(proc_kib "$HUB_PID" VmRSS)
    fds=$(find "/proc/$HUB_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    threads=$(proc_kib "$HUB_PID" Threads)
    idle_hub_pct=$(awk -v t=$((h1 - h0)) -v hz="$hz" -v ms=$((t1 - t0)) 'BEGIN { print t / hz * 100000 / ms }')
    idle_spokes_pct=$(awk -v t=$((s1 - s0)) -v hz="$hz" -v ms=$((t1 - t0)) 'BEGIN { print t / hz * 100000 / ms }')
    log "fleet: idle: hub RSS $(mib $((idle_rss * 1024))) MiB, CPU $(fmt "$idle_hub_pct" 2)% of a core, $fds descriptors, $threads threads; all spokes CPU $(fmt "$idle_spokes_pct" 2)%, RSS $(mib $((spokes_rss * 1024))) MiB in all"

    # Fan-out: one publish at a time, every spoke polled until it serves it.
    log "fleet: $FLEET_PUBLISHES publishes (one warm-up first), each polled on every spoke every $FLEET_POLL_MS ms"
    timeout $((FLEET_PUBLISHES * 60 + 120)) python3 "$BENCH_DIR/fleet.py" fan-out "$HUB_URL" "$REPL_FEED" "$BENCH_KEY" \
        "$HUB_PID" "$top/spokes.txt" "$FLEET_PUBLISHES" "$FLEET_SPACING_MS" "$FLEET_POLL_MS" 30 \
        >"$BENCH_TMP/fleet-lag.json" || { note "fleet: the fan-out run failed"; return 1; }
    out=$(python3 "$BENCH_DIR/fleet.py" stats "$BENCH_TMP/fleet-lag.json") || return 1
    log "fleet: $(tr '\n' ' ' <<<"$out")"
    read -r peers st <<<"$(fleet_peers)"
    log "fleet: after the fan-out the hub knows ${peers:-0} peers, ${st:-0} connected"

    local label="$FLEET_SPOKES spokes x $FLEET_PUBLISHES publishes"
    if lt "$(kv p99 "$out")" "$FLEET_LAG_TARGET_MS"; then result=PASS; else result=FAIL; fi
    add_row "fleet publish -> served p99 ms, every spoke ($label)" "$(fmt "$(kv p99 "$out")")" "-" "-" \
        "< $FLEET_LAG_TARGET_MS ms" "$result"
    add_row "fleet publish -> served p50 ms" "$(fmt "$(kv p50 "$out")")" "-" "-" "-" "info"
    add_row "fleet publish -> last spoke served, p50 / max ms" \
        "$(fmt "$(kv last_p50 "$out")") / $(fmt "$(kv max "$out")")" "-" "-" "-" "info"
    if lt "$(mib $((idle_rss * 1024)))" "$FLEET_RSS_TARGET_MIB"; then result=PASS; else result=FAIL; fi
    add_row "fleet hub RSS MiB, idle with $FLEET_SPOKES long polls" "$(mib $((idle_rss * 1024)))" "-" "-" \
        "< $FLEET_RSS_TARGET_MIB MiB" "$result"
    st=$(kv hub_rss_kib_peak "$out")
    if lt "$(mib $((st * 1024)))" "$FLEET_RSS_TARGET_MIB"; then result=PASS; else result=FAIL; fi
    add_row "fleet hub peak RSS MiB during the fan-outs (VmHWM)" "$(mib $((st * 1024)))" "-" "-" \
        "< $FLEET_RSS_TARGET_MIB MiB" "$result"
    add_row "fleet hub CPU % of a core, idle ($FLEET_IDLE_S s)" "$(fmt "$idle_hub_pct" 2)" \
        "spokes: $(fmt "$idle_spokes_pct" 2)" "-" "-" "info"
    add_row "fleet CPU ms per publish fanned out, hub" "$(fmt "$(kv hub_cpu_ms "$out")")" \
        "spokes: $(fmt "$(kv spokes_cpu_ms "$out")")" "-" "-" "info"
    add_row "fleet hub descriptors / threads, idle" "$fds / $threads" "-" "-" "-" "info"
}
