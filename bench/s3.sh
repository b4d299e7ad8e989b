# shellcheck shell=bash
# The `s3` section: a large upload and download through the S3 blob store
# (on s3s-fs, the S3 API over a folder, on this machine) against the same
# through the filesystem store. Sourced by bench/run.

# s3_transfer NAME FILE: uploads FILE as an asset to the running instance,
# then downloads it twice; sets S3_UP and S3_DOWN (MiB/s; the download
# figure is the second, warm run).
s3_transfer() {
    local name=$1 file=$2 out code speed url
    url="$FERRY_URL/assets/bench-s3/big.bin"
    out=$(timeout 900 curl -s -o /dev/null -w '%{http_code} %{speed_upload}' -T "$file" \
        -H "Authorization: Bearer $BENCH_KEY" "$url") || return 1
    read -r code speed <<<"$out"
    [ "$code" = 201 ] || { note "s3: the $name upload answered HTTP $code"; return 1; }
    S3_UP=$(awk -v x="$speed" 'BEGIN { print x / 1048576 }')
    for _ in 1 2; do
        out=$(timeout 900 curl -s -o /dev/null -w '%{http_code} %{speed_download}' "$url") || return 1
        read -r code speed <<<"$out"
        [ "$code" = 200 ] || { note "s3: the $name download answered HTTP $code"; return 1; }
    done
    S3_DOWN=$(awk -v x="$speed" 'BEGIN { print x / 1048576 }')
    log "s3: $name: upload $(fmt "$S3_UP") MiB/s, download $(fmt "$S3_DOWN") MiB/s"
}

bench_s3() {
    S3_MIB=${BENCH_S3_MIB:-$([ -n "$QUICK" ] && echo 64 || echo 1024)}
    local s3s=${FERRY_TEST_S3S:-$REPO/.tools/s3s-fs/bin/s3s-fs}
    local file=$BENCH_TMP/s3.bin root=$BENCH_TMP/s3s-root conf=$BENCH_TMP/s3.toml port spid
    local fs_up fs_down
    if [ ! -x "$s3s" ]; then
        note "s3: no s3s-fs (run scripts/test, which installs it, or set FERRY_TEST_S3S)"
        add_row "s3 upload MiB/s" "-" "-" "-" "-" "unavailable"
        return 0
    fi
    log "s3: writing a ${S3_MIB} MiB random file"
    make_random_file "$file" "$S3_MIB"

    start_ferry s3-fs
    ferry_feed bench-s3 assets || { note "s3: cannot create the feed"; return 1; }
    s3_transfer filesystem "$file" || return 1
    fs_up=$S3_UP fs_down=$S3_DOWN
    stop_ferry_now "$FERRY_PID"
    rm -rf "$BENCH_TMP/ferry-s3-fs"

    mkdir -p "$root/bench"
    port=$(free_port)
    "$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret-key "$root" \
        >"$BENCH_TMP/s3s.log" 2>&1 &
    spid=$!
    BENCH_PIDS+=("$spid")
    wait_http "http://127.0.0.1:$port/" 10 || { note "s3: s3s-fs did not start"; return 1; }
    printf '[blob_store]\ntype = "s3"\nendpoint = "http://127.0.0.1:%s"\nbucket = "bench"\npath_style = true\nallow_http = true\n' \
        "$port" >"$conf"
    FERRY_CONFIG=$conf AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key start_ferry s3
    ferry_feed bench-s3 assets || { note "s3: cannot create the feed"; return 1; }
    s3_transfer s3 "$file" || return 1
    stop_ferry_now "$FERRY_PID"
    stop_pid "$spid"
    forget_pid "$spid"
    add_row "s3 upload MiB/s (${S3_MIB} MiB; baseline: filesystem)" "$(fmt "$S3_UP")" "$(fmt "$fs_up")" "$(ratio "$S3_UP" "$fs_up")" "-" "info"
    add_row "s3 download MiB/s (${S3_MIB} MiB; baseline: filesystem)" "$(fmt "$S3_DOWN")" "$(fmt "$fs_down")" "$(ratio "$S3_DOWN" "$fs_down")" "-" "info"
    rm -rf "$file" "$root" "$BENCH_TMP/ferry-s3"
}
