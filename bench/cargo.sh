# shellcheck shell=bash
# The cargo part of bench/run: a cargo feed as a sparse registry.
#   - index-file requests/s (wrk) on a crate's index file, published with
#     the real `cargo publish` in 5 versions, against nginx serving a static
#     4 KiB file (the index-rps baseline);
#   - publish on a hub -> the version's line in the index file of a spoke
#     that follows the hub (what `cargo update` reads there), p99 and p50 of
#     LAG_N publishes, then one real `cargo update` on the spoke.
# See bench/README.md. Sourced by bench/run after lib.sh and
# replication.sh; not meant to be run on its own.

CARGO_FEED=bench-cargo
CARGO_PKG=ferry-bench-pkg
CARGO_VERSIONS=(1.0.0 1.0.1 1.0.2 1.1.0 2.0.0)

# cargo_cli HOME_DIR URL ARGS...: the real cargo with its own CARGO_HOME and
# target dir, the registry `ferry` at URL's cargo feed.
cargo_cli() {
    local home=$1 url=$2
    shift 2
    CARGO_HOME=$home CARGO_TARGET_DIR=$home/target CARGO_REGISTRIES_FERRY_INDEX="sparse+$url/cargo/$CARGO_FEED/" \
        CARGO_REGISTRIES_CRATES_IO_PROTOCOL=sparse CARGO_TERM_COLOR=never CARGO_NET_RETRY=0 \
        timeout 120 cargo "$@"
}

# cargo_project DIR NAME VERSION [DEP_REQ]: a library crate (with a
# dependency on CARGO_PKG from the registry when DEP_REQ is given).
cargo_project() {
    mkdir -p "$1/src"
    printf '[package]\nname = "%s"\nversion = "%s"\nedition = "2021"\ndescription = "Ferry benchmark crate"\nlicense = "MIT"\n' \
        "$2" "$3" >"$1/Cargo.toml"
    [ -n "${4:-}" ] && printf '\n[dependencies]\n%s = { version = "%s", registry = "ferry" }\n' "$CARGO_PKG" "$4" >>"$1/Cargo.toml"
    printf 'pub const VERSION: &str = "%s";\n' "$3" >"$1/src/lib.rs"
}

populate_cargo() {
    local home=$BENCH_TMP/cargo-home v logf=$BENCH_TMP/cargo-publish.log
    mkdir -p "$home"
    printf '[registries.ferry]\ntoken = "%s"\n' "$BENCH_KEY" >"$home/credentials.toml"
    : >"$logf"
    for v in "${CARGO_VERSIONS[@]}"; do
        cargo_project "$BENCH_TMP/cargo-pkg-$v" "$CARGO_PKG" "$v"
        (cd "$BENCH_TMP/cargo-pkg-$v" && cargo_cli "$home" "$FERRY_URL" publish --registry ferry --no-verify) \
            >>"$logf" 2>&1 || {
            CARGO_REASON="cargo publish $CARGO_PKG $v failed: $(grep -m1 error "$logf")"
            return 1
        }
    done
    log "cargo: published $CARGO_PKG ${CARGO_VERSIONS[*]}"
}

bench_cargo() {
    local rc
    cargo_inner
    rc=$?
    repl_stop_pair
    return $rc
}

cargo_inner() {
    local www=$BENCH_TMP/www-cargo n r rps result why index fstats f50 f99
    index=/cargo/$CARGO_FEED/fe/rr/$CARGO_PKG
    mkdir -p "$www"
    head -c 3072 /dev/urandom | base64 -w 76 | head -c 4096 >"$www/static-4k.txt"
    chmod 755 "$www"
    chmod 644 "$www/static-4k.txt"
    start_nginx cargo "$www"
    local npid=$NGINX_PID
    start_ferry cargo
    local fpid=$FERRY_PID
    ferry_feed "$CARGO_FEED" cargo || note "cargo: cannot create the cargo feed"
    CARGO_REASON=''
    local ok=1
    populate_cargo || ok=
    if [ -n "$ok" ]; then
        why=$(check_page "$FERRY_URL$index" '"vers":"2.0.0"') || { ok=; CARGO_REASON="index file check: $why"; }
    fi
    n=$(wrk_rps "$NGINX_URL/static-4k.txt" nginx-static) || { note "cargo: wrk against nginx failed"; return 1; }
    if [ -n "$ok" ]; then
        if rps=$(wrk_rps "$FERRY_URL$index" cargo-index); then
            r=$(ratio "$rps" "$n")
            if ge "$r" 0.5; then result=PASS; else result=FAIL; fi
            add_row "cargo index file req/s ($(wc -c < "$BENCH_TMP/page.txt") B, 5 versions)" "$(fmt "$rps" 0)" "$(fmt "$n" 0)" "$r" ">= 0.50x" "$result"
        else
            add_row "cargo index file req/s" "-" "$(fmt "$n" 0)" "-" ">= 0.50x" "FAIL"
            note "cargo index file: wrk saw errors or non-2xx answers (see log above)"
        fi
    else
        add_row "cargo index file req/s" "-" "$(fmt "$n" 0)" "-" ">= 0.50x" "unavailable"
        note "cargo index file unavailable: $CARGO_REASON"
    fi
    stop_ferry_now "$fpid"
    stop_nginx_now "$npid"

    # Lag: a hub and a spoke that pulls the cargo feed and follows the hub.
    start_ferry cargo-hub
    HUB_URL=$FERRY_URL HUB_PID=$FERRY_PID HUB_DIR=$BENCH_TMP/ferry-cargo-hub
    start_ferry cargo-spoke
    SPOKE_URL=$FERRY_URL SPOKE_PID=$FERRY_PID SPOKE_DIR=$BENCH_TMP/ferry-cargo-spoke
    fcli "$HUB_URL" feed create "$CARGO_FEED" --type cargo >/dev/null &&
        fcli "$SPOKE_URL" feed create "$CARGO_FEED" --type cargo >/dev/null &&
        fcli "$HUB_URL" replication create edge --feed "$CARGO_FEED" --incoming --mode push >/dev/null &&
        HUB_TOKEN=$(fcli "$HUB_URL" replication token edge) &&
        fcli "$SPOKE_URL" replication create from-hub --feed "$CARGO_FEED" --outgoing "$HUB_URL" \
            --token "$HUB_TOKEN" --mode pull --interval 3600 >/dev/null ||
        { note "cargo: cannot set up the hub and spoke"; return 1; }
    repl_run_wait 120 || { note "cargo: the first execution failed"; return 1; }
    sleep 1 # the long poll is in place
    log "cargo: $LAG_N publishes on the hub, >= $LAG_SPACING_MS ms apart, polling the spoke's index file every $LAG_POLL_MS ms"
    timeout $((LAG_N * 40 + 120)) python3 "$BENCH_DIR/repl.py" lag-cargo "$HUB_URL" "$SPOKE_URL" "$CARGO_FEED" \
        "$BENCH_KEY" "$LAG_N" "$LAG_SPACING_MS" "$LAG_POLL_MS" 30 >"$BENCH_TMP/lag-cargo.json" ||
        { note "cargo: the lag run failed"; return 1; }
    fstats=$(python3 "$BENCH_DIR/repl.py" stats "$BENCH_TMP/lag-cargo.json") || return 1
    log "cargo lag: $(tr '\n' ' ' <<<"$fstats")"
    f50=$(kv p50 "$fstats") f99=$(kv p99 "$fstats")
    if awk -v x="$f99" 'BEGIN { exit !(x < 1000) }'; then result=PASS; else result=FAIL; fi
    add_row "cargo publish -> spoke index p99 ms ($LAG_N publishes)" "$(fmt "$f99")" "-" "-" "< 1000 ms" "$result"
    add_row "cargo publish -> spoke index p50 ms" "$(fmt "$f50")" "-" "-" "-" "info"

    # The real cargo on the spoke sees the last version.
    local home=$BENCH_TMP/cargo-spoke-home app=$BENCH_TMP/cargo-app last
    last="0.$LAG_N.0"
    mkdir -p "$home"
    CARGO_PKG=ferry-lag-probe cargo_project "$app" app 0.0.0 ">=0.0.0"
    if (cd "$app" && cargo_cli "$home" "$SPOKE_URL" update) >"$BENCH_TMP/cargo-update.log" 2>&1 &&
        grep -A1 'name = "ferry-lag-probe"' "$app/Cargo.lock" | grep -q "version = \"$last\""; then
        log "cargo update on the spoke resolved ferry-lag-probe $last"
    else
        add_row "cargo update on the spoke sees the last publish" "-" "-" "-" "$last" "FAIL"
        note "cargo update on the spoke: $(grep -m1 -E 'error|version' "$BENCH_TMP/cargo-update.log" "$app/Cargo.lock" 2>/dev/null)"
    fi
}
