# shellcheck shell=bash
# bench/run section `postgres`: Ferry with its metadata in PostgreSQL and
# several nodes on one database (issue 13). Sourced by bench/run.
#
# - incremental replication in a feed of BENCH_REPL_INC_ITEMS items, on
#   SQLite and on PostgreSQL (the repl-incremental measurement, run twice;
#   target: PostgreSQL within 2x SQLite);
# - publish and download throughput through 1, 2 and 3 nodes on one
#   database and blob folder (8 clients spread over the nodes; on 2 cores
#   the point is no collapse and no errors);
# - change-log reads while 8 writers publish: a spoke long-polling the
#   cluster follows 8 concurrent writers; it must end with every file, and
#   the time from the last publish to the spoke having it is reported.

# start_pg: a throwaway PostgreSQL cluster in $BENCH_TMP (Debian's server
# binaries; as root it runs as the postgres user). Sets BENCH_PG_ADMIN.
start_pg() {
    local bin dir port i
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$bin/postgres" ] || { log "PostgreSQL server binaries not found (Debian package postgresql)"; return 1; }
    dir=$BENCH_TMP/pg
    mkdir -p "$dir"
    local as=()
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; as=(runuser -u postgres --); fi
    "${as[@]}" "$bin/initdb" -A trust -U postgres -E UTF8 -D "$dir/data" >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    port=$(free_port)
    # A server as an operator would run one: fsync and synchronous commit on.
    # BENCH_PG_OPTS adds server settings for a look inside (e.g.
    # "-c log_min_duration_statement=0 -c log_line_prefix=%m|%d|%p|" logs
    # every statement with its database); figures are taken without it.
    "${as[@]}" "$bin/postgres" -D "$dir/data" -h 127.0.0.1 -p "$port" -k "$dir" -c max_connections=300 ${BENCH_PG_OPTS:-} \
        >"$dir/server.log" 2>&1 &
    BENCH_PIDS+=("$!")
    BENCH_PG_ADMIN="postgres://postgres@127.0.0.1:$port/postgres"
    for ((i = 0; i < 100; i++)); do
        psql "$BENCH_PG_ADMIN" -qtAc 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    psql "$BENCH_PG_ADMIN" -qtAc 'SELECT 1' >/dev/null 2>&1 || { cat "$dir/server.log" >&2; return 1; }
    log "postgres at $BENCH_PG_ADMIN"
}

stop_pg() {
    local pid
    pid=$(head -1 "$BENCH_TMP/pg/data/postmaster.pid" 2>/dev/null)
    [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null
    BENCH_PG_ADMIN=
}

# pg_new_database NAME: creates a database and prints its URL.
pg_new_database() {
    local db
    db="bench_$(tr -c 'a-z0-9\n' _ <<<"$1")_$RANDOM"
    psql "$BENCH_PG_ADMIN" -qc "CREATE DATABASE $db" >/dev/null || return 1
    echo "${BENCH_PG_ADMIN%/postgres}/$db"
}

# pg_parallel_curl P FILE: runs the curl argument lines of FILE, P at a
# time; prints "SECONDS FAILURES".
pg_parallel_curl() {
    local p=$1 file=$2 t0 t1 fails
    t0=$(date +%s%N)
    fails=$(xargs -P "$p" -L 1 curl -s -o /dev/null -w '%{http_code}\n' <"$file" | grep -cv '^20[01]$')
    t1=$(date +%s%N)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') $fails"
}

# pg_nodes N: N nodes on one new database and one data directory; sets NODE_URLS.
pg_nodes() {
    local n=$1 i
    NODE_URLS=()
    BENCH_FERRY_DB_URL=$(pg_new_database "nodes$n") || return 1
    BENCH_FERRY_DATA=$BENCH_TMP/cluster$n-data
    for ((i = 1; i <= n; i++)); do
        start_ferry "cluster$n-node$i" || return 1
        NODE_URLS+=("$FERRY_URL")
    done
    unset BENCH_FERRY_DB_URL BENCH_FERRY_DATA
}

bench_postgres() {
    ensure_commands curl python3 psql || return 1
    local sqlite_ms pg_ms r result n i files up_s up_fail dn_s dn_fail nodes_pids count
    local small=${BENCH_PG_FILES:-$([ -n "$QUICK" ] && echo 100 || echo 400)}
    start_pg || return 1

    # 1. Incremental replication at INC_ITEMS items: SQLite, then PostgreSQL.
    BENCH_PG_ADMIN_SAVED=$BENCH_PG_ADMIN
    BENCH_PG_ADMIN=
    inc_part "$INC_ITEMS" inc-sqlite || return 1
    sqlite_ms=$INC_MS
    BENCH_PG_ADMIN=$BENCH_PG_ADMIN_SAVED
    inc_part "$INC_ITEMS" inc-pg || return 1
    pg_ms=$INC_MS
    r=$(ratio "$pg_ms" "$sqlite_ms")
    if lt "$r" 2.0001; then result=PASS; else result=FAIL; fi
    add_row "postgres: incremental execution ms, $INC_ITEMS items (median of $INC_RUNS)" \
        "$(fmt "$pg_ms" 0)" "SQLite: $(fmt "$sqlite_ms" 0)" "$r" "<= 2.0x" "$result"

    # 2. Publish and download through 1, 2, 3 nodes.
    head -c 65536 /dev/urandom >"$BENCH_TMP/pg-file.bin"
    for n in 1 2 3; do
        pg_nodes "$n" || return 1
        nodes_pids=("${BENCH_PIDS[@]: -$n}")
        FERRY_URL=${NODE_URLS[0]} ferry_feed files assets
        files=$BENCH_TMP/pg-up-$n.args
        : >"$files"
        for ((i = 0; i < small; i++)); do
            echo "-T $BENCH_TMP/pg-file.bin -H Authorization:\ Bearer\ $BENCH_KEY ${NODE_URLS[$((i % n))]}/assets/files/f$i-$RANDOM.bin"
        done >"$files"
        read -r up_s up_fail < <(pg_parallel_curl 8 "$files")
        : >"$BENCH_TMP/pg-dn-$n.args"
        for ((i = 0; i < small * 4; i++)); do
            sed -n "$(( (i % small) + 1 ))p" "$files" | awk -v u="${NODE_URLS[$((i % n))]}" '{ sub(/^.*\/assets\//, u "/assets/", $NF); print "-H Authorization:\\ Bearer\\ " ENVIRON["BENCH_KEY"] " " $NF }'
        done >"$BENCH_TMP/pg-dn-$n.args"
        read -r dn_s dn_fail < <(BENCH_KEY=$BENCH_KEY pg_parallel_curl 8 "$BENCH_TMP/pg-dn-$n.args")
        add_row "postgres: $n node(s): publishes/s, downloads/s (64 KiB, 8 clients)" \
            "$(awk -v k="$small" -v s="$up_s" 'BEGIN { printf "%.0f", k / s }') / $(awk -v k="$((small * 4))" -v s="$dn_s" 'BEGIN { printf "%.0f", k / s }')" \
            "errors: $up_fail publish, $dn_fail download" "-" "no errors" "$([ "$up_fail$dn_fail" = 00 ] && echo PASS || echo FAIL)"
        if [ "$n" -lt 3 ]; then
            for i in "${nodes_pids[@]}"; do stop_ferry_now "$i"; done
        fi
    done

    # 3. A spoke follows the 3-node cluster while 8 writers publish.
    local hub=${NODE_URLS[1]} token spoke t_last t_done
    token=$(timeout 30 "$FERRY_BIN" replication create to-spoke --incoming --feed files --mode push \
        --url "${NODE_URLS[0]}" --api-key "$BENCH_KEY" >/dev/null && timeout 30 "$FERRY_BIN" replication token to-spoke \
        --url "${NODE_URLS[0]}" --api-key "$BENCH_KEY")
    start_ferry pg-spoke || return 1
    spoke=$FERRY_URL
    ferry_feed files assets
    timeout 30 "$FERRY_BIN" replication create from-hub --outgoing "$hub" --token "$token" --mode pull --feed files \
        --interval 3600 --url "$spoke" --api-key "$BENCH_KEY" >/dev/null || return 1
    timeout 600 "$FERRY_BIN" replication run from-hub --wait --url "$spoke" --api-key "$BENCH_KEY" >/dev/null || return 1
    files=$BENCH_TMP/pg-follow.args
    for ((i = 0; i < small; i++)); do
        echo "-T $BENCH_TMP/pg-file.bin -H Authorization:\ Bearer\ $BENCH_KEY ${NODE_URLS[$((i % 3))]}/assets/files/live/g$i.bin"
    done >"$files"
    read -r up_s up_fail < <(pg_parallel_curl 8 "$files")
    t_last=$(date +%s%3N)
    count=0
    for ((i = 0; i < 600; i++)); do
        count=$(curl -s -H "Accept: application/json" "$spoke/assets/files/live/" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
        [ "$count" -ge "$small" ] && break
        sleep 0.05
    done
    t_done=$(date +%s%3N)
    add_row "postgres: spoke following 8 writers on 3 nodes ($small files)" \
        "$count of $small" "last publish -> spoke has all: $((t_done - t_last)) ms; publish errors $up_fail" "-" "all, none skipped" \
        "$([ "$count" -eq "$small" ] && [ "$up_fail" = 0 ] && echo PASS || echo FAIL)"
    stop_pg
}
