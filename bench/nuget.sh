# shellcheck shell=bash
# The nuget part of bench/run: a NuGet feed read as NuGet clients read it.
#   - v3 registration index requests/s (wrk) on
#     GET /nuget/FEED/v3/registration/ID/index.json, what dotnet and
#     nuget.exe 3+ read to resolve a package;
#   - v2 FindPackagesById() requests/s on
#     GET /nuget/FEED/FindPackagesById()?id='ID', what nuget.exe 2.x and
#     Chocolatey 1.x read;
#   each against nginx serving a saved copy of the same answer as a static
#   file (same wrk settings). The package is pushed in NUGET_VERSIONS
#   versions (curl, multipart as nuget.exe sends it; .nupkg files written
#   by nuget_pkg below).
# See bench/README.md. Sourced by bench/run after lib.sh; not meant to be
# run on its own.

NUGET_FEED=bench-nuget
NUGET_ID=Ferry.Bench.Pkg

nuget_settings() {
    NUGET_VERSIONS=${BENCH_NUGET_VERSIONS:-$([ -n "$QUICK" ] && echo 5 || echo 20)}
    [[ $NUGET_VERSIONS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_NUGET_VERSIONS must be a positive integer" >&2; return 1; }
    [ "$NUGET_VERSIONS" -le 1000 ] || { echo "BENCH_NUGET_VERSIONS is capped at 1000" >&2; return 1; }
}

# nuget_pkg FILE ID VERSION: a small .nupkg (nuspec with a dependency
# group, a DLL-sized payload, a Chocolatey-style install script).
nuget_pkg() {
    python3 - "$@" <<'PY'
import sys, zipfile
path, pid, ver = sys.argv[1:4]
nuspec = f"""<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
  <metadata>
    <id>{pid}</id><version>{ver}</version><title>Ferry benchmark package</title>
    <authors>Ferry</authors><owners>Ferry</owners>
    <description>A small package used by Ferry's benchmark, version {ver}.</description>
    <tags>ferry bench</tags><license type="expression">MIT</license>
    <projectUrl>https://example.test/ferry</projectUrl>
    <dependencies>
      <group targetFramework="net45"><dependency id="Ferry.Bench.Base" version="[1.0,2.0)" /></group>
      <group targetFramework="netstandard2.0"><dependency id="Ferry.Bench.Base" version="1.0" /></group>
    </dependencies>
  </metadata>
</package>"""
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr(f"{pid}.nuspec", nuspec)
    z.writestr("lib/net45/Ferry.Bench.dll", bytes(range(256)) * 64)
    z.writestr("tools/chocolateyInstall.ps1", "Write-Host 'ferry bench'\n")
PY
}

populate_nuget() {
    local i v file code dir=$BENCH_TMP/nupkgs
    mkdir -p "$dir"
    for ((i = 0; i < NUGET_VERSIONS; i++)); do
        v="1.$((i / 10)).$((i % 10))"
        file=$dir/$NUGET_ID.$v.nupkg
        nuget_pkg "$file" "$NUGET_ID" "$v" || { NUGET_REASON="cannot write $file"; return 1; }
        code=$(curl -s -o "$BENCH_TMP/nuget-push.txt" --max-time 30 -w '%{http_code}' -X PUT \
            -H "X-NuGet-ApiKey: $BENCH_KEY" -F "package=@$file;filename=package.nupkg" \
            "$FERRY_URL/nuget/$NUGET_FEED/api/v2/package")
        [ "$code" = 201 ] || {
            NUGET_REASON="push of $NUGET_ID $v answered HTTP $code: $(head -c 200 "$BENCH_TMP/nuget-push.txt")"
            return 1
        }
    done
    NUGET_LAST=$v
    log "nuget: pushed $NUGET_ID in $NUGET_VERSIONS versions (1.0.0 .. $v)"
}

# nuget_row LABEL PATH STATIC_NAME MUST_CONTAIN: saves Ferry's answer to
# PATH as the static file nginx serves, then measures both.
nuget_row() {
    local label=$1 path=$2 static=$3 must=$4 n rps r result why bytes
    if [ -z "$NUGET_OK" ]; then
        add_row "$label req/s" "-" "-" "-" ">= 0.50x" "unavailable"
        note "$label unavailable: $NUGET_REASON"
        return 0
    fi
    why=$(check_page "$FERRY_URL$path" "$must") || {
        add_row "$label req/s" "-" "-" "-" ">= 0.50x" "unavailable"
        note "$label unavailable: $why"
        return 0
    }
    cp "$BENCH_TMP/page.txt" "$NUGET_WWW/$static"
    chmod 644 "$NUGET_WWW/$static"
    bytes=$(wc -c <"$NUGET_WWW/$static")
    n=$(wrk_rps "$NGINX_URL/$static" "nginx-$static") || { note "nuget: wrk against nginx failed"; return 1; }
    if rps=$(wrk_rps "$FERRY_URL$path" "nuget-$static"); then
        r=$(ratio "$rps" "$n")
        if ge "$r" 0.5; then result=PASS; else result=FAIL; fi
        add_row "$label req/s ($bytes B, $NUGET_VERSIONS versions)" "$(fmt "$rps" 0)" "$(fmt "$n" 0)" "$r" ">= 0.50x" "$result"
    else
        add_row "$label req/s" "-" "$(fmt "$n" 0)" "-" ">= 0.50x" "FAIL"
        note "$label: wrk saw errors or non-2xx answers (see log above)"
    fi
}

bench_nuget() {
    local id_lower
    id_lower=$(tr '[:upper:]' '[:lower:]' <<<"$NUGET_ID")
    NUGET_WWW=$BENCH_TMP/www-nuget
    mkdir -p "$NUGET_WWW"
    chmod 755 "$NUGET_WWW"
    start_nginx nuget "$NUGET_WWW"
    local npid=$NGINX_PID
    start_ferry nuget
    local fpid=$FERRY_PID
    ferry_feed "$NUGET_FEED" nuget || note "nuget: cannot create the nuget feed"
    NUGET_OK=1 NUGET_REASON=''
    populate_nuget || NUGET_OK=
    nuget_row "nuget v3 registration index" "/nuget/$NUGET_FEED/v3/registration/$id_lower/index.json" \
        registration.json "\"$NUGET_LAST\"" || return 1
    nuget_row "nuget v2 FindPackagesById()" "/nuget/$NUGET_FEED/FindPackagesById()?id=%27$NUGET_ID%27" \
        find.xml "<d:Version>$NUGET_LAST</d:Version>" || return 1
    stop_ferry_now "$fpid"
    stop_nginx_now "$npid"
}
