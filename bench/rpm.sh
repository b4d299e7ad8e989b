# shellcheck shell=bash
# The rpm part of bench/run: Ferry's rpm feeds against createrepo_c
# (repodata for the same files, signed like Ferry's) and createrepo_c
# --update (one more package until dnf makecache sees it). See
# bench/README.md. Sourced by bench/run after lib.sh. Helpers:
# ferry-gen-rpms (crates/testkit, writes valid RPMs fast) and bench/rpm.py.

RPM_FEED=yum

rpm_settings() {
    RPM_SIZES=${BENCH_RPM_SIZES:-$([ -n "$QUICK" ] && echo "200 1000" || echo "1000 10000")}
    local n
    for n in $RPM_SIZES; do
        [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 100000 ] ||
            { echo "BENCH_RPM_SIZES: '$n' is not a number from 1 to 100000" >&2; return 1; }
    done
}

rpm_now_ms() { date +%s%3N; }

# rpm_gen DIR N PREFIX: N generated packages (the generator is built once).
rpm_gen() {
    if [ -z "${RPM_GEN:-}" ]; then
        (cd "$REPO" && cargo build --release -q -p ferry-testkit --bin ferry-gen-rpms) || return 1
        RPM_GEN="${CARGO_TARGET_DIR:-$REPO/target}/release/ferry-gen-rpms"
    fi
    "$RPM_GEN" "$1" "$2" "$3"
}

# rpm_dnf_conf DIR BASEURL KEY: a dnf of its own under DIR (config, repos,
# cache, install root); prints the options to pass.
rpm_dnf_conf() {
    local d=$1
    mkdir -p "$d"/{repos,cache,root,log}
    printf '[bench]\nname=bench\nbaseurl=%s\nenabled=1\ngpgcheck=0\nrepo_gpgcheck=1\ngpgkey=file://%s\nmetadata_expire=0\n' \
        "$2" "$3" >"$d/repos/bench.repo"
    printf '[main]\nreposdir=%s/repos\ncachedir=%s/cache\n' "$d" "$d" >"$d/dnf.conf"
    # (no plugins: Debian's write outside the install root)
    echo "-y -q --config=$d/dnf.conf --installroot=$d/root --releasever=12 --setopt=reposdir=$d/repos --setopt=cachedir=$d/cache --setopt=logdir=$d/log --noplugins"
}

# rpm_dnf_sees OPTS PKG: makecache --refresh, then whether PKG is available.
rpm_dnf_sees() {
    # shellcheck disable=SC2086 # OPTS are words
    timeout 120 dnf $1 makecache --refresh >/dev/null 2>&1 || return 1
    # shellcheck disable=SC2086
    dnf $1 -C repoquery --available "$2" 2>/dev/null | grep "^$2-" >/dev/null
}

# rpm_until_seen OPTS PKG: makecache until dnf sees PKG (at most 60 s).
rpm_until_seen() {
    local i
    for ((i = 0; i < 600; i++)); do
        rpm_dnf_sees "$1" "$2" && return 0
        sleep 0.1
    done
    return 1
}

# bench_rpm_size N: the figures for a feed of N packages.
bench_rpm_size() {
    local n=$1 dir=$BENCH_TMP/rpm-$1 t0 t1 cr_ms ferry_ms ferry_render_ms up_ms fone_ms cr_one_ms fone_pub_ms cr_pub_ms opts last
    mkdir -p "$dir"
    log "rpm: generating $n .rpms and one more"
    rpm_gen "$dir/rpms" "$n" bench-pkg || return 1
    rpm_gen "$dir/extra" 1 bench-extra || return 1
    local extra=$dir/extra/bench-extra-000000-1.0-1.noarch.rpm
    last=$(printf 'bench-pkg-%06d' $((n - 1)))
    deb_gpg_home "$dir/gnupg" || return 1
    GNUPGHOME=$dir/gnupg gpg --batch --quiet --armor --export >"$dir/gnupg/key.asc"

    # createrepo_c: repodata for the files, then repomd.xml signed (detached, armored).
    local cr=$dir/cr
    mkdir -p "$cr"
    cp "$dir"/rpms/*.rpm "$cr/"
    sync
    t0=$(rpm_now_ms)
    createrepo_c -q --general-compress-type=gz "$cr" &&
        GNUPGHOME=$dir/gnupg gpg --batch --yes -a --detach-sign -o "$cr/repodata/repomd.xml.asc" "$cr/repodata/repomd.xml" ||
        { log "createrepo_c failed"; return 1; }
    t1=$(rpm_now_ms)
    cr_ms=$((t1 - t0))

    # Ferry: upload every file (bulk uploads of 500), then a signed repomd.xml listing them.
    start_ferry "rpm-$n"
    local pid=$FERRY_PID url=$FERRY_URL
    ferry_feed "$RPM_FEED" rpm || return 1
    bulk_prepare "$url/rpm/$RPM_FEED/upload" "$dir/rpms" rpm rpm 500 || return 1
    t0=$(rpm_now_ms)
    bulk_send 2 || return 1
    t1=$(rpm_now_ms)
    up_ms=$((t1 - t0))
    curl -sf "$url/rpm/$RPM_FEED/repodata/repomd.xml.asc" -o "$dir/repomd.xml.asc" || return 1
    ferry_render_ms=$(($(rpm_now_ms) - t1))
    ferry_ms=$(($(rpm_now_ms) - t0))
    grep -q 'BEGIN PGP SIGNATURE' "$dir/repomd.xml.asc" || return 1
    curl -sf "$url/rpm/$RPM_FEED/key.asc" -o "$dir/ferry-key.asc" || return 1
    opts=$(rpm_dnf_conf "$dir/dnf-ferry" "$url/rpm/$RPM_FEED/" "$dir/ferry-key.asc")
    rpm_dnf_sees "$opts" "$last" || { log "dnf does not see Ferry's $last"; return 1; }

    # One more package until dnf sees it: createrepo_c --update (file: repository).
    local copts
    copts=$(rpm_dnf_conf "$dir/dnf-cr" "file://$cr/" "$dir/gnupg/key.asc")
    rpm_dnf_sees "$copts" "$last" || { log "dnf does not see createrepo_c's repository"; return 1; }
    t0=$(rpm_now_ms)
    cp "$extra" "$cr/" &&
        createrepo_c -q --update --general-compress-type=gz "$cr" &&
        GNUPGHOME=$dir/gnupg gpg --batch --yes -a --detach-sign -o "$cr/repodata/repomd.xml.asc" "$cr/repodata/repomd.xml" ||
        { log "createrepo_c --update failed"; return 1; }
    cr_pub_ms=$(($(rpm_now_ms) - t0))
    rpm_until_seen "$copts" bench-extra-000000 || { log "dnf never saw createrepo_c's new package"; return 1; }
    cr_one_ms=$(($(rpm_now_ms) - t0))

    # The same on Ferry: PUT, then makecache until dnf sees it.
    t0=$(rpm_now_ms)
    # One client process, as the baseline is one: the PUT, then the signature.
    curl --fail-early -sf -o /dev/null -u "bench:$BENCH_KEY" -T "$extra" "$url/rpm/$RPM_FEED/upload" \
        --next -sf -o /dev/null "$url/rpm/$RPM_FEED/repodata/repomd.xml.asc" || return 1
    fone_pub_ms=$(($(rpm_now_ms) - t0))
    rpm_until_seen "$opts" bench-extra-000000 || { log "dnf never saw Ferry's new package"; return 1; }
    fone_ms=$(($(rpm_now_ms) - t0))
    stop_ferry_now "$pid"

    local r
    r=$(ratio "$ferry_ms" "$cr_ms")
    add_row "rpm repodata for $n pkgs until signed repomd.xml, ms (incl. HTTP bulk upload, 500 per POST)" "$ferry_ms" "$cr_ms" "${r}x" "<= 1.00x" \
        "$(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 1.0) ? "ok" : "FAIL" }')"
    add_row "rpm of which: $n uploads (bulk, 500 per POST), ms" "$up_ms" "-" "-" "-" "info"
    r=$(ratio "$ferry_render_ms" "$cr_ms")
    add_row "rpm of which: repodata after the uploads (first signed repomd.xml), ms" "$ferry_render_ms" "$cr_ms" "${r}x" "-" "info"
    r=$(ratio "$fone_ms" "$cr_one_ms")
    add_row "rpm one more into $n until dnf makecache sees it, ms" "$fone_ms" "$cr_one_ms" "${r}x" "<= 0.20x" \
        "$(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 0.2) ? "ok" : "FAIL" }')"
    r=$(ratio "$fone_pub_ms" "$cr_pub_ms")
    add_row "rpm one more into $n, publish only (PUT + signed repomd vs createrepo_c --update + sign), ms" "$fone_pub_ms" "$cr_pub_ms" "${r}x" "<= 0.20x" \
        "$(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 0.2) ? "ok" : "FAIL" }')"
    RPM_ONE_MORE+=("$n:$fone_ms/$fone_pub_ms")
    # Left for the run's cleanup (the temp dir goes at exit): deleting
    # thousands of files here would slow the next size's file creation on
    # ext4 without a journal, which skips inodes freed in the last 60 s
    # (`recently_deleted`), and measure that instead of the next figure.
}

bench_rpm() {
    RPM_ONE_MORE=()
    local n
    for n in $RPM_SIZES; do
        bench_rpm_size "$n" || return 1
    done
    note "rpm one more until dnf sees it / publish only (size:ms/ms): ${RPM_ONE_MORE[*]} (must not grow in proportion to the size)"
}
