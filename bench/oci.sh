# shellcheck shell=bash
# The oci part of bench/run: Ferry's OCI feeds against Debian's
# docker-registry (distribution 2.8), with skopeo as the client.
#   - push and pull of one large image (8 x 128 MiB random layers);
#   - replication of 20 images sharing base layers, hub -> spoke, against
#     `skopeo sync` between two docker-registry instances; the bytes stored
#     on the spoke against the unique blobs; a replication with nothing new.
# See bench/README.md. Sourced by bench/run after lib.sh; not meant to be
# run on its own. Helpers for layouts and JSON: bench/oci.py.

OCI_FEED=bench-oci

# Sizes, from the environment (BENCH_QUICK=1 shrinks the defaults). Called
# by bench/run once QUICK is known; exits 2 on a bad value.
oci_settings() {
    OCI_LAYERS=${BENCH_OCI_LAYERS:-8}
    OCI_LAYER_MIB=${BENCH_OCI_LAYER_MIB:-$([ -n "$QUICK" ] && echo 8 || echo 128)}
    OCI_RUNS=${BENCH_OCI_RUNS:-$([ -n "$QUICK" ] && echo 1 || echo 3)}
    OCI_IMAGES=${BENCH_OCI_IMAGES:-20}
    OCI_BASE_MIB=${BENCH_OCI_BASE_MIB:-$([ -n "$QUICK" ] && echo 8 || echo 64)}
    OCI_RUNTIME_MIB=${BENCH_OCI_RUNTIME_MIB:-$([ -n "$QUICK" ] && echo 4 || echo 32)}
    OCI_APP_MIB=${BENCH_OCI_APP_MIB:-$([ -n "$QUICK" ] && echo 1 || echo 4)}
    OCI_NOOP_RUNS=${BENCH_OCI_NOOP_RUNS:-5}
    local v
    for v in OCI_LAYERS OCI_LAYER_MIB OCI_RUNS OCI_IMAGES OCI_BASE_MIB OCI_RUNTIME_MIB OCI_APP_MIB OCI_NOOP_RUNS; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_${v#OCI_} must be a positive integer, not '${!v}'" >&2; return 1; }
    done
    [ "$OCI_LAYERS" -le 64 ] || { echo "BENCH_OCI_LAYERS is capped at 64" >&2; return 1; }
    [ $((OCI_LAYERS * OCI_LAYER_MIB)) -le 8192 ] || { echo "the oci image is capped at 8 GiB" >&2; return 1; }
    [ "$OCI_RUNS" -le 20 ] || { echo "BENCH_OCI_RUNS is capped at 20" >&2; return 1; }
    [ "$OCI_IMAGES" -le 99 ] || { echo "BENCH_OCI_IMAGES is capped at 99" >&2; return 1; }
    [ $((OCI_BASE_MIB + 2 * OCI_RUNTIME_MIB + OCI_IMAGES * OCI_APP_MIB)) -le 8192 ] ||
        { echo "the oci image set is capped at 8 GiB" >&2; return 1; }
    [ "$OCI_NOOP_RUNS" -le 50 ] || { echo "BENCH_OCI_NOOP_RUNS is capped at 50" >&2; return 1; }
}

oci_kv() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }
oci_mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
oci_secs() { awk -v m="$1" 'BEGIN { printf "%.2f", m / 1000 }'; }

# ---------------------------------------------------------------- skopeo

# skopeo with a home of its own under $BENCH_TMP: its blob-info cache
# (which remembers where it saw each blob, and would turn later pushes into
# cross-repository mounts) and auth file start empty and stay out of /root
# and /var/lib/containers. As root, containers/image ignores XDG_DATA_HOME
# unless _CONTAINERS_ROOTLESS_UID says otherwise.
oci_skopeo() {
    local h=$BENCH_TMP/skopeo-home
    HOME=$h XDG_DATA_HOME=$h/share XDG_CONFIG_HOME=$h/config XDG_RUNTIME_DIR=$h/run TMPDIR=$h/tmp \
        _CONTAINERS_ROOTLESS_UID=65534 timeout "${OCI_TIMEOUT:-1800}" skopeo --insecure-policy "$@"
}

# Forgets everything skopeo remembered (between timed runs).
oci_skopeo_reset() {
    local h=$BENCH_TMP/skopeo-home
    rm -rf "$h"
    mkdir -p "$h/share" "$h/config" "$h/tmp"
    mkdir -m 700 "$h/run"
}

# oci_timed LOG CMD...: runs CMD with its output in LOG; prints its wall
# time in ms; fails (showing LOG's tail) when CMD does.
oci_timed() {
    local logf=$1 t0 t1 rc
    shift
    t0=$(date +%s%N)
    "$@" >"$logf" 2>&1
    rc=$?
    t1=$(date +%s%N)
    if [ "$rc" -ne 0 ]; then
        log "failed (exit $rc): $*"
        tail -n 5 "$logf" >&2
        return 1
    fi
    echo $(((t1 - t0) / 1000000))
}

# oci_served REF DIGEST [CREDS]: REF's manifest, as served, has DIGEST.
oci_served() {
    local got
    got=$(oci_skopeo inspect --raw --tls-verify=false ${3:+--creds "$3"} "docker://$1" | sha256sum | awk '{ print $1 }')
    [ "sha256:$got" = "$2" ] || { log "docker://$1 serves a manifest of digest sha256:$got, not $2"; return 1; }
}

# oci_tag_count REPO [CREDS]
oci_tag_count() {
    oci_skopeo list-tags --tls-verify=false ${2:+--creds "$2"} "docker://$1" >"$BENCH_TMP/oci-tags.json" || return 1
    python3 "$BENCH_DIR/oci.py" tags "$BENCH_TMP/oci-tags.json"
}

# ---------------------------------------------------------------- servers

# oci_start_registry NAME: docker-registry on a fresh loopback port with
# filesystem storage under $BENCH_TMP, deletes enabled, access log off.
# Sets REG_PID REG_ADDR REG_DIR REG_STORE.
oci_start_registry() {
    local dir=$BENCH_TMP/registry-$1 port
    mkdir -p "$dir/store"
    port=$(free_port)
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/store
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: ferry-bench-$$-$1
EOF
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REG_PID=$!
    BENCH_PIDS+=("$REG_PID")
    REG_ADDR=127.0.0.1:$port REG_DIR=$dir REG_STORE=$dir/store
    if ! wait_http "http://$REG_ADDR/v2/" 15; then
        tail -n 20 "$dir/registry.log" >&2
        log "docker-registry ($1) did not start"
        return 1
    fi
    log "docker-registry ($1) pid $REG_PID at http://$REG_ADDR"
}

# oci_fcli URL ARGS...: the ferry CLI against one instance, bounded.
oci_fcli() {
    local url=$1
    shift
    timeout "${OCI_TIMEOUT:-1800}" "$FERRY_BIN" "$@" --url "$url" --api-key "$BENCH_KEY"
}

# oci_start_ferry NAME: a fresh instance with the oci feed. Sets OF_PID
# OF_URL OF_ADDR OF_DIR.
oci_start_ferry() {
    start_ferry "$1"
    OF_PID=$FERRY_PID OF_URL=$FERRY_URL OF_ADDR=${FERRY_URL#http://} OF_DIR=$BENCH_TMP/ferry-$1
    ferry_feed "$OCI_FEED" oci || { log "cannot create the oci feed on $OF_URL"; return 1; }
}

oci_stop() { stop_pid "$1"; forget_pid "$1"; }

# ---------------------------------------------------------------- push / pull

bench_oci_push_pull() {
    local layout=$BENCH_TMP/oci-big out digest bytes run side ms ref creds label
    local reg_push=() fer_push=() reg_pull=() fer_pull=()
    log "oci: writing an image layout of ${OCI_LAYERS} x ${OCI_LAYER_MIB} MiB random layers"
    out=$(python3 "$BENCH_DIR/oci.py" big "$layout" big "$OCI_LAYERS" "$OCI_LAYER_MIB") || return 1
    digest=$(oci_kv manifest "$out")
    bytes=$(oci_kv bytes "$out")
    label="$(oci_mib "$bytes") MiB image"
    for ((run = 1; run <= OCI_RUNS; run++)); do
        # Fresh servers on fresh ports each run: every push starts empty.
        oci_skopeo_reset
        oci_start_registry "push-$run" || return 1
        local rpid=$REG_PID rdir=$REG_DIR rref=$REG_ADDR/bench/big:v1
        oci_start_ferry "oci-push-$run" || return 1
        local fpid=$OF_PID fdir=$OF_DIR fref=$OF_ADDR/$OCI_FEED/bench/big:v1
        local order=(registry ferry)
        ((run % 2)) || order=(ferry registry)
        for side in "${order[@]}"; do
            if [ "$side" = registry ]; then ref=$rref creds=; else ref=$fref creds=bench:$BENCH_KEY; fi
            ms=$(oci_timed "$BENCH_TMP/oci-push-$side.log" oci_skopeo copy --dest-tls-verify=false \
                ${creds:+--dest-creds "$creds"} "oci:$layout:big" "docker://$ref") ||
                { note "oci: skopeo push to $side failed (see log above)"; return 1; }
            if [ "$side" = registry ]; then reg_push+=("$ms"); else fer_push+=("$ms"); fi
            oci_served "$ref" "$digest" "$creds" || { note "oci: $side serves another manifest after the push"; return 1; }
        done
        for side in "${order[@]}"; do
            if [ "$side" = registry ]; then ref=$rref; else ref=$fref; fi
            rm -rf "$BENCH_TMP/oci-pulled"
            # Anonymous: the feed is public, the registry has no auth.
            ms=$(oci_timed "$BENCH_TMP/oci-pull-$side.log" oci_skopeo copy --src-tls-verify=false \
                "docker://$ref" "oci:$BENCH_TMP/oci-pulled:v1") ||
                { note "oci: skopeo pull from $side failed (see log above)"; return 1; }
            [ "$(python3 "$BENCH_DIR/oci.py" manifest-digest "$BENCH_TMP/oci-pulled" v1)" = "$digest" ] ||
                { note "oci: the image pulled from $side has another manifest"; return 1; }
            rm -rf "$BENCH_TMP/oci-pulled"
            if [ "$side" = registry ]; then reg_pull+=("$ms"); else fer_pull+=("$ms"); fi
        done
        log "oci run $run/$OCI_RUNS: push registry $(oci_secs "${reg_push[-1]}") s, ferry $(oci_secs "${fer_push[-1]}") s;" \
            "pull registry $(oci_secs "${reg_pull[-1]}") s, ferry $(oci_secs "${fer_pull[-1]}") s"
        oci_stop "$fpid"
        oci_stop "$rpid"
        rm -rf "$fdir" "$rdir"
    done
    rm -rf "$layout"
    local f r ratio result what
    for what in push pull; do
        if [ $what = push ]; then
            f=$(median "${fer_push[@]}") r=$(median "${reg_push[@]}")
        else
            f=$(median "${fer_pull[@]}") r=$(median "${reg_pull[@]}")
        fi
        ratio=$(ratio "$f" "$r")
        if awk -v f="$f" -v r="$r" 'BEGIN { exit !(f <= r) }'; then result=PASS; else result=FAIL; fi
        add_row "oci $what s (${label}, median of ${OCI_RUNS})" "$(oci_secs "$f")" "$(oci_secs "$r")" "$ratio" "<= 1.00x" "$result"
    done
}

# ---------------------------------------------------------------- replication

# oci_push_set LAYOUT REPO [CREDS]: pushes every tag of the set, untimed.
oci_push_set() {
    local layout=$1 repo=$2 creds=${3:-} t
    for t in $OCI_TAGS; do
        oci_skopeo copy -q --dest-tls-verify=false ${creds:+--dest-creds "$creds"} \
            "oci:$layout:$t" "docker://$repo:$t" >"$BENCH_TMP/oci-push-set.log" 2>&1 ||
            { tail -n 5 "$BENCH_TMP/oci-push-set.log" >&2; log "pushing $t to $repo failed"; return 1; }
    done
}

bench_oci_replication() {
    local set=$BENCH_TMP/oci-set out unique last_tag last_digest t0 t1 ms n i
    log "oci: writing ${OCI_IMAGES} images on shared layers (base ${OCI_BASE_MIB} MiB, 2 runtimes of ${OCI_RUNTIME_MIB} MiB, apps of ${OCI_APP_MIB} MiB)"
    out=$(python3 "$BENCH_DIR/oci.py" set "$set" "$OCI_IMAGES" "$OCI_BASE_MIB" "$OCI_RUNTIME_MIB" "$OCI_APP_MIB") || return 1
    unique=$(oci_kv unique_bytes "$out")
    OCI_TAGS=$(oci_kv tags "$out")
    last_tag=${OCI_TAGS##* }
    last_digest=$(python3 "$BENCH_DIR/oci.py" manifest-digest "$set" "$last_tag") || return 1
    log "oci: ${OCI_IMAGES} images, $(oci_kv unique_blobs "$out") unique blobs, $(oci_mib "$unique") MiB"

    # Ferry: the images on a hub; a fresh spoke pulls them.
    oci_skopeo_reset
    oci_start_ferry oci-hub || return 1
    local hpid=$OF_PID hurl=$OF_URL haddr=$OF_ADDR hdir=$OF_DIR token
    oci_fcli "$hurl" replication create edge --feed "$OCI_FEED" --incoming --mode push >/dev/null || return 1
    token=$(oci_fcli "$hurl" replication token edge) || return 1
    t0=$(date +%s%N)
    oci_push_set "$set" "$haddr/$OCI_FEED/bench/apps" "bench:$BENCH_KEY" ||
        { note "oci: pushing the image set to the Ferry hub failed"; return 1; }
    log "oci: pushed ${OCI_IMAGES} images to the hub in $(oci_secs $((($(date +%s%N) - t0) / 1000000))) s"
    oci_start_ferry oci-spoke || return 1
    local spid=$OF_PID surl=$OF_URL saddr=$OF_ADDR sdir=$OF_DIR
    t0=$(date +%s%N)
    # Its scheduler starts an execution at once; `run --wait` waits for it
    # and then runs one more (which finds nothing new).
    if ! oci_fcli "$surl" replication create from-hub --feed "$OCI_FEED" --outgoing "$hurl" --token "$token" \
        --mode pull --interval 3600 >"$BENCH_TMP/oci-run.log" 2>&1 ||
        ! oci_fcli "$surl" replication run from-hub --wait >>"$BENCH_TMP/oci-run.log" 2>&1; then
        cat "$BENCH_TMP/oci-run.log" >&2
        note "oci: the spoke's replication failed"
        return 1
    fi
    t1=$(date +%s%N)
    local ferry_ms=$(((t1 - t0) / 1000000))
    oci_fcli "$surl" replication executions from-hub --json >"$BENCH_TMP/oci-execs.json" || return 1
    out=$(python3 "$BENCH_DIR/oci.py" executions "$BENCH_TMP/oci-execs.json") || return 1
    local pulled_bytes pulled_blobs stored
    pulled_bytes=$(oci_kv bytes "$out") pulled_blobs=$(oci_kv blobs "$out")
    [ "$(oci_kv not_succeeded "$out")" = 0 ] || { note "oci: a spoke execution did not succeed"; return 1; }
    n=$(oci_tag_count "$saddr/$OCI_FEED/bench/apps") || { note "oci: cannot list the spoke's tags"; return 1; }
    [ "$n" = "$OCI_IMAGES" ] || { note "oci: the spoke lists $n tags, not $OCI_IMAGES"; return 1; }
    oci_served "$saddr/$OCI_FEED/bench/apps:$last_tag" "$last_digest" || { note "oci: the spoke serves another manifest"; return 1; }
    stored=$(oci_kv bytes "$(python3 "$BENCH_DIR/oci.py" blob-bytes "$sdir/data/blobs/sha256")")
    log "oci: ferry replicated in $(oci_secs "$ferry_ms") s: pulled $pulled_blobs blobs, $(oci_mib "$pulled_bytes") MiB; spoke stores $(oci_mib "$stored") MiB"

    # Nothing new: the execution's own duration.
    local noop=()
    for ((i = 1; i <= OCI_NOOP_RUNS; i++)); do
        oci_fcli "$surl" replication run from-hub --wait >/dev/null || { note "oci: a run with nothing new failed"; return 1; }
        oci_fcli "$surl" replication executions from-hub --json >"$BENCH_TMP/oci-execs.json" || return 1
        out=$(python3 "$BENCH_DIR/oci.py" last-execution "$BENCH_TMP/oci-execs.json") || return 1
        if [ "$(oci_kv added "$out")" != 0 ] || [ "$(oci_kv blobs "$out")" != 0 ]; then
            note "oci: a run with nothing new moved something: $(tr '\n' ' ' <<<"$out")"
            return 1
        fi
        noop+=("$(oci_kv duration_ms "$out")")
    done
    log "oci: runs with nothing new took ${noop[*]} ms"
    oci_stop "$spid"
    oci_stop "$hpid"
    rm -rf "$sdir" "$hdir"

    # docker-registry pair: skopeo sync of the whole repository.
    oci_skopeo_reset
    oci_start_registry sync-src || return 1
    local apid=$REG_PID adir=$REG_DIR aaddr=$REG_ADDR
    oci_start_registry sync-dst || return 1
    local bpid=$REG_PID bdir=$REG_DIR baddr=$REG_ADDR bstore=$REG_STORE
    oci_push_set "$set" "$aaddr/bench/apps" || { note "oci: pushing the image set to docker-registry failed"; return 1; }
    oci_skopeo_reset # a cold skopeo, like the spoke
    ms=$(oci_timed "$BENCH_TMP/oci-sync.log" oci_skopeo sync --src docker --dest docker \
        --src-tls-verify=false --dest-tls-verify=false "$aaddr/bench/apps" "$baddr/mirror") ||
        { note "oci: skopeo sync failed (see log above)"; return 1; }
    n=$(oci_tag_count "$baddr/mirror/apps") || { note "oci: cannot list the synced tags"; return 1; }
    [ "$n" = "$OCI_IMAGES" ] || { note "oci: skopeo sync left $n tags, not $OCI_IMAGES"; return 1; }
    local synced
    synced=$(oci_kv bytes "$(python3 "$BENCH_DIR/oci.py" blob-bytes "$bstore/docker/registry/v2/blobs")")
    log "oci: skopeo sync took $(oci_secs "$ms") s; the destination stores $(oci_mib "$synced") MiB of blobs"
    oci_stop "$bpid"
    oci_stop "$apid"
    rm -rf "$adir" "$bdir" "$set"

    local r result
    r=$(ratio "$ferry_ms" "$ms")
    if ge 0.2 "$r"; then result=PASS; else result=FAIL; fi
    add_row "oci replicate ${OCI_IMAGES} images s (vs skopeo sync)" "$(oci_secs "$ferry_ms")" "$(oci_secs "$ms")" "$r" "<= 0.20x" "$result"
    r=$(ratio "$pulled_bytes" "$unique")
    if [ "$pulled_bytes" -le "$unique" ]; then result=PASS; else result=FAIL; fi
    add_row "oci replication MiB pulled (vs unique blobs)" "$(oci_mib "$pulled_bytes")" "$(oci_mib "$unique")" "$r" "<= 1.00x" "$result"
    r=$(ratio "$stored" "$unique")
    if [ "$stored" -le "$unique" ]; then result=PASS; else result=FAIL; fi
    add_row "oci spoke blob folder MiB (vs unique blobs)" "$(oci_mib "$stored")" "$(oci_mib "$unique")" "$r" "<= 1.00x" "$result"
    add_row "oci skopeo sync destination blobs MiB" "-" "$(oci_mib "$synced")" "-" "-" "info"
    local m
    m=$(median "${noop[@]}")
    if lt "$m" 50; then result=PASS; else result=FAIL; fi
    add_row "oci replication with nothing new ms (median of ${OCI_NOOP_RUNS})" "$(fmt "$m" 0)" "-" "-" "< 50 ms" "$result"
}

# Stops what a failed sub-part left running and deletes the data sets
# (image layouts, pulled copies, server storage); logs stay for reading.
oci_tidy() {
    local p
    for p in "${BENCH_PIDS[@]}"; do stop_pid "$p"; done
    BENCH_PIDS=()
    rm -rf "$BENCH_TMP/oci-big" "$BENCH_TMP/oci-set" "$BENCH_TMP/oci-pulled" "$BENCH_TMP/skopeo-home" \
        "$BENCH_TMP"/registry-*/store "$BENCH_TMP"/ferry-oci-*/data
}

bench_oci() {
    local rc=0
    if ! bench_oci_push_pull; then
        add_row "oci push/pull" "-" "-" "-" "<= 1.00x" "error"
        rc=1
    fi
    oci_tidy
    if ! bench_oci_replication; then
        add_row "oci replication" "-" "-" "-" "<= 0.20x" "error"
        rc=1
    fi
    oci_tidy
    return "$rc"
}
