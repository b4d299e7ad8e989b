# shellcheck shell=bash
# The debian part of bench/run: Ferry's debian feeds against apt-ftparchive
# (building a signed distribution from the same files) and reprepro
# (publishing one more package into a distribution until apt sees it).
# See bench/README.md. Sourced by bench/run after lib.sh. Helpers:
# bench/debian.py (generating tiny .debs, uploading them).

DEB_FEED=apt

debian_settings() {
    DEB_SIZES=${BENCH_DEB_SIZES:-$([ -n "$QUICK" ] && echo "200 1000" || echo "1000 10000")}
    DEB_LAG_N=${BENCH_DEB_LAG_PUBLISHES:-20}
    [[ $DEB_LAG_N =~ ^[1-9][0-9]*$ ]] && [ "$DEB_LAG_N" -le 1000 ] ||
        { echo "BENCH_DEB_LAG_PUBLISHES: '$DEB_LAG_N' is not a number from 1 to 1000" >&2; return 1; }
    local n
    for n in $DEB_SIZES; do
        [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 100000 ] ||
            { echo "BENCH_DEB_SIZES: '$n' is not a number from 1 to 100000" >&2; return 1; }
    done
}

deb_now_ms() { date +%s%3N; }

# deb_gpg_home DIR: a GnuPG home with one Ed25519 signing key, for
# apt-ftparchive's signatures and reprepro's SignWith (made before timing).
deb_gpg_home() {
    mkdir -p -m 700 "$1"
    GNUPGHOME=$1 gpg --batch --quiet --passphrase '' --quick-gen-key "Bench <bench@example.com>" ed25519 sign never 2>/dev/null
    GNUPGHOME=$1 gpg --batch --quiet --export >"$1/key.gpg"
}

# deb_apt_conf DIR SOURCE_LINE: an apt of its own (state, cache, sources,
# trusted keys under DIR); prints the APT_CONFIG path.
deb_apt_conf() {
    local d=$1 line=$2
    mkdir -p "$d"/{state/lists/partial,cache/archives/partial,sources.list.d,trusted.gpg.d,preferences.d,apt.conf.d,log}
    : >"$d/status"
    echo "$line" >"$d/sources.list"
    cat >"$d/apt.conf" <<EOF
Dir::State "$d/state"; Dir::State::status "$d/status"; Dir::Cache "$d/cache";
Dir::Etc::SourceList "$d/sources.list"; Dir::Etc::SourceParts "$d/sources.list.d";
Dir::Etc::Trusted "$d/trusted.gpg"; Dir::Etc::TrustedParts "$d/trusted.gpg.d";
Dir::Etc::Preferences "$d/preferences"; Dir::Etc::PreferencesParts "$d/preferences.d";
Dir::Etc::Parts "$d/apt.conf.d"; Dir::Log "$d/log";
Debug::NoLocking "true"; APT::Sandbox::User "root";
APT::Architecture "amd64"; APT::Architectures { "amd64"; }; Acquire::Languages "none";
EOF
    echo "$d/apt.conf"
}

# deb_apt_sees CONF PKG: apt-get update, then whether PKG has a candidate.
deb_apt_sees() {
    APT_CONFIG=$1 timeout 120 apt-get update -qq >/dev/null 2>&1 || return 1
    # grep without -q reads to the end: apt-cache is never cut off (SIGPIPE, and pipefail)
    APT_CONFIG=$1 apt-cache policy "$2" 2>/dev/null | grep 'Candidate: 1.0' >/dev/null
}

# deb_until_seen CONF PKG: updates until apt sees PKG (at most 60 s).
deb_until_seen() {
    local i
    for ((i = 0; i < 600; i++)); do
        deb_apt_sees "$1" "$2" && return 0
        sleep 0.1
    done
    return 1
}

# bench_debian_size N: the figures for a distribution of N packages.
bench_debian_size() {
    local n=$1 dir=$BENCH_TMP/debian-$1 t0 t1 ftp_ms ferry_ms rep_ms fone_ms rep_pub_ms fone_pub_ms conf
    mkdir -p "$dir"
    log "debian: generating $n .debs and one more"
    python3 "$BENCH_DIR/debian.py" make "$dir/debs" "$n" || return 1
    python3 "$BENCH_DIR/debian.py" make "$dir/extra" 1 bench-extra || return 1
    local extra=$dir/extra/bench-extra-000000_1.0_amd64.deb
    deb_gpg_home "$dir/gnupg" || return 1

    # apt-ftparchive: Packages (+ .gz, .xz), Release, InRelease and Release.gpg from the files.
    local ftp=$dir/ftp
    mkdir -p "$ftp/pool/main" "$ftp/dists/bookworm/main/binary-amd64"
    cp "$dir"/debs/*.deb "$ftp/pool/main/"
    sync
    t0=$(deb_now_ms)
    (
        cd "$ftp" &&
            apt-ftparchive packages pool/main >dists/bookworm/main/binary-amd64/Packages &&
            gzip -k -9 dists/bookworm/main/binary-amd64/Packages &&
            xz -k dists/bookworm/main/binary-amd64/Packages &&
            apt-ftparchive -o APT::FTPArchive::Release::Codename=bookworm -o APT::FTPArchive::Release::Suite=bookworm \
                release dists/bookworm >dists/bookworm/Release.tmp &&
            mv dists/bookworm/Release.tmp dists/bookworm/Release &&
            GNUPGHOME=$dir/gnupg gpg --batch --yes --clearsign -o dists/bookworm/InRelease dists/bookworm/Release &&
            GNUPGHOME=$dir/gnupg gpg --batch --yes -abs -o dists/bookworm/Release.gpg dists/bookworm/Release
    ) || { log "apt-ftparchive failed"; return 1; }
    t1=$(deb_now_ms)
    ftp_ms=$((t1 - t0))

    # Ferry: upload every file, until a signed InRelease listing them is served.
    start_ferry "debian-$n"
    local pid=$FERRY_PID url=$FERRY_URL last
    ferry_feed "$DEB_FEED" debian || return 1
    last=$(printf 'bench-pkg-%06d' $((n - 1)))
    bulk_prepare "$url/debian/$DEB_FEED/upload/bookworm/main" "$dir/debs" deb deb 500 || return 1
    t0=$(deb_now_ms)
    bulk_send 2 || return 1
    curl -sf "$url/debian/$DEB_FEED/dists/bookworm/InRelease" -o "$dir/InRelease" || return 1
    t1=$(deb_now_ms)
    # (into a file: grep -q may stop reading before curl is done)
    curl -sf "$url/debian/$DEB_FEED/dists/bookworm/main/binary-amd64/Packages" -o "$dir/Packages" &&
        [ "$(grep -c '^Package: ' "$dir/Packages")" -eq "$n" ] && grep -q "^Package: $last\$" "$dir/Packages" ||
        { log "Ferry's Packages lacks $last or does not list $n packages"; return 1; }
    grep -q 'BEGIN PGP SIGNATURE' "$dir/InRelease" || return 1
    ferry_ms=$((t1 - t0))

    # One more package until apt sees it: reprepro includedeb (file: repository).
    local rep=$dir/reprepro
    mkdir -p "$rep/conf"
    printf 'Codename: bookworm\nSuite: bookworm\nArchitectures: amd64\nComponents: main\nSignWith: yes\n' >"$rep/conf/distributions"
    log "debian: filling reprepro with $n packages (not timed)"
    (cd "$dir/debs" && find . -name '*.deb' -print0 | GNUPGHOME=$dir/gnupg xargs -0 -n 2000 reprepro -b "$rep" -s includedeb bookworm) >/dev/null 2>&1 ||
        { log "reprepro includedeb failed"; return 1; }
    conf=$(deb_apt_conf "$dir/apt-reprepro" "deb [signed-by=$dir/gnupg/key.gpg] file:$rep bookworm main")
    deb_apt_sees "$conf" "$last" || { log "apt does not see reprepro's repository"; return 1; }
    t0=$(deb_now_ms)
    GNUPGHOME=$dir/gnupg reprepro -b "$rep" -s includedeb bookworm "$extra" >/dev/null 2>&1 || return 1
    rep_pub_ms=$(($(deb_now_ms) - t0))
    deb_until_seen "$conf" bench-extra-000000 || { log "apt never saw reprepro's new package"; return 1; }
    t1=$(deb_now_ms)
    rep_ms=$((t1 - t0))

    # The same on Ferry: PUT, then apt-get update until it sees it.
    curl -sf "$url/debian/$DEB_FEED/key.gpg" -o "$dir/ferry-key.gpg" || return 1
    conf=$(deb_apt_conf "$dir/apt-ferry" "deb [signed-by=$dir/ferry-key.gpg] $url/debian/$DEB_FEED bookworm main")
    deb_apt_sees "$conf" "$last" || { log "apt does not see Ferry's repository"; return 1; }
    t0=$(deb_now_ms)
    # One client process, as the baseline is one: the PUT, then InRelease.
    curl --fail-early -sf -o /dev/null -u "bench:$BENCH_KEY" -T "$extra" "$url/debian/$DEB_FEED/upload/bookworm/main" \
        --next -sf -o /dev/null "$url/debian/$DEB_FEED/dists/bookworm/InRelease" || return 1
    fone_pub_ms=$(($(deb_now_ms) - t0))
    deb_until_seen "$conf" bench-extra-000000 || { log "apt never saw Ferry's new package"; return 1; }
    t1=$(deb_now_ms)
    fone_ms=$((t1 - t0))
    stop_ferry_now "$pid"

    local r
    r=$(ratio "$ferry_ms" "$ftp_ms")
    add_row "debian build $n pkgs until signed InRelease, ms (incl. HTTP upload)" "$ferry_ms" "$ftp_ms" "${r}x" "<= 1.00x" \
        "$(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 1.0) ? "ok" : "FAIL" }')"
    r=$(ratio "$fone_ms" "$rep_ms")
    add_row "debian one more into $n until apt sees it, ms" "$fone_ms" "$rep_ms" "${r}x" "<= 0.20x" \
        "$(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 0.2) ? "ok" : "FAIL" }')"
    r=$(ratio "$fone_pub_ms" "$rep_pub_ms")
    add_row "debian one more into $n, publish only (PUT + signed InRelease vs includedeb), ms" "$fone_pub_ms" "$rep_pub_ms" "${r}x" "<= 0.20x" \
        "$(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 0.2) ? "ok" : "FAIL" }')"
    DEB_ONE_MORE+=("$n:$fone_ms")
    # Left for the run's cleanup (the temp dir goes at exit): deleting
    # thousands of files here would slow the next size's file creation on
    # ext4 without a journal, which skips inodes freed in the last 60 s
    # (`recently_deleted`), and measure that instead of the next figure.
}

# bench_debian_lag: publish on a hub -> apt-get update on a spoke (pulling
# the feed from the hub) sees it; DEB_LAG_N publishes.
bench_debian_lag() {
    local dir=$BENCH_TMP/debian-lag stats conf p50 p99 result
    mkdir -p "$dir"
    python3 "$BENCH_DIR/debian.py" make "$dir/base" 1000 bench-base || return 1
    python3 "$BENCH_DIR/debian.py" make "$dir/lag" $((DEB_LAG_N + 1)) bench-lag || return 1
    start_ferry debian-hub
    HUB_URL=$FERRY_URL HUB_PID=$FERRY_PID
    start_ferry debian-spoke
    SPOKE_URL=$FERRY_URL SPOKE_PID=$FERRY_PID
    fcli "$HUB_URL" feed create "$DEB_FEED" --type debian >/dev/null &&
        fcli "$SPOKE_URL" feed create "$DEB_FEED" --type debian >/dev/null &&
        fcli "$HUB_URL" replication create edge --feed "$DEB_FEED" --incoming --mode push >/dev/null &&
        HUB_TOKEN=$(fcli "$HUB_URL" replication token edge) &&
        fcli "$SPOKE_URL" replication create from-hub --feed "$DEB_FEED" --outgoing "$HUB_URL" \
            --token "$HUB_TOKEN" --mode pull --interval 3600 >/dev/null ||
        { note "debian: cannot set up the hub and spoke"; return 1; }
    python3 "$BENCH_DIR/debian.py" bulk "$HUB_URL" "$BENCH_KEY" "$DEB_FEED" bookworm main "$dir/base" 2 500 || return 1
    repl_run_wait 300 || { note "debian: the first execution failed"; return 1; }
    sleep 1 # the long poll is in place
    curl -sf "$SPOKE_URL/debian/$DEB_FEED/key.gpg" -o "$dir/spoke-key.gpg" || return 1
    conf=$(deb_apt_conf "$dir/apt-spoke" "deb [signed-by=$dir/spoke-key.gpg] $SPOKE_URL/debian/$DEB_FEED bookworm main")
    deb_apt_sees "$conf" bench-base-000999 || { log "apt does not see the spoke's repository"; return 1; }
    log "debian: $DEB_LAG_N publishes on the hub (1,000 packages), apt-get update on the spoke until it sees each"
    timeout $((DEB_LAG_N * 60 + 120)) python3 "$BENCH_DIR/debian.py" lag "$HUB_URL" "$BENCH_KEY" "$DEB_FEED" bookworm main \
        "$dir/lag" "$conf" >"$dir/lag.json" || { note "debian: the lag run failed"; return 1; }
    stats=$(python3 "$BENCH_DIR/repl.py" stats "$dir/lag.json") || return 1
    log "debian lag: $(tr '\n' ' ' <<<"$stats")"
    p50=$(kv p50 "$stats") p99=$(kv p99 "$stats")
    if awk -v x="$p99" 'BEGIN { exit !(x < 1000) }'; then result=ok; else result=FAIL; fi
    add_row "debian publish on hub -> apt-get update on spoke sees it, p99 ms ($DEB_LAG_N publishes)" "$(fmt "$p99")" "-" "-" "< 1000 ms" "$result"
    add_row "debian publish on hub -> apt-get update on spoke sees it, p50 ms" "$(fmt "$p50")" "-" "-" "-" "info"
    stop_ferry_now "$SPOKE_PID"
    stop_ferry_now "$HUB_PID"
    # Left for the run's cleanup (the temp dir goes at exit): deleting
    # thousands of files here would slow the next size's file creation on
    # ext4 without a journal, which skips inodes freed in the last 60 s
    # (`recently_deleted`), and measure that instead of the next figure.
}

bench_debian() {
    DEB_ONE_MORE=()
    local n
    for n in $DEB_SIZES; do
        bench_debian_size "$n" || return 1
    done
    note "debian one more until apt sees it (size:ms): ${DEB_ONE_MORE[*]} (must not grow in proportion to the size)"
    bench_debian_lag || return 1
}
