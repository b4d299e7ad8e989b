#!/usr/bin/env bash
# Runs every test of the workspace. First installs what the end-to-end tests
# drive: curl, npm, apt, gpg and sqv, and nuget (nuget.exe 2.8.7 on mono;
# Debian), chromium and chromedriver (Debian, for the web UI's browser test),
# PostgreSQL (Debian), twine and uv (PyPI, in .venv-test; pip comes with
# the virtualenv), s3s-fs (an S3-compatible server, in .tools/s3s-fs). Then
# starts one throwaway PostgreSQL cluster for the run, runs every test, and
# runs the end-to-end suite (package `ferry`) a second time with every
# instance's metadata in PostgreSQL (a database of its own in that cluster)
# and its blobs in S3 (a bucket of its own on one s3s-fs per test process,
# started and stopped by the tests; FERRY_TEST_BACKEND=postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v npm >/dev/null || need_apt+=(npm)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v nuget >/dev/null || need_apt+=(nuget mono-runtime)
# nuget.exe 5.8 (npm's nuget-exe, a v3 client) needs these mono assemblies beyond Debian's nuget.
for lib in system-net-http system-net-http-webrequest system-io-compression system-io-compression-filesystem \
    system-xml-linq system-runtime-serialization system-security system-componentmodel-composition system-data \
    system-numerics system-net; do
    dpkg -s "libmono-$lib""4.0-cil" >/dev/null 2>&1 || need_apt+=("libmono-$lib""4.0-cil")
done
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# Debian feeds: apt-get/dpkg-deb (base system), gpg for the fleet key,
# sqv (Sequoia's verifier, as Debian 13's apt uses it).
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
command -v apt-get >/dev/null || need_apt+=(apt)
command -v gpg >/dev/null || need_apt+=(gpg)
command -v sqv >/dev/null || need_apt+=(sqv)
# PostgreSQL: the store conformance suite and the e2e suite's second pass
# (PostgreSQL + S3).
command -v psql >/dev/null || need_apt+=(postgresql-client)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
# rpm feeds: dnf (and its download plugin), rpmbuild; createrepo_c for bench/rpm.sh.
command -v dnf >/dev/null || need_apt+=(dnf)
[ -e /usr/lib/python3/dist-packages/dnf-plugins/download.py ] || need_apt+=(dnf-plugins-core)
command -v rpmbuild >/dev/null || need_apt+=(rpm)
command -v createrepo_c >/dev/null || need_apt+=(createrepo-c)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -x .venv-test/bin/twine || ! -x .venv-test/bin/uv ]]; then
    echo "installing twine and uv into .venv-test" >&2
    python3 -m venv .venv-test
    .venv-test/bin/pip install -q --disable-pip-version-check "twine==7.0.0" "uv==0.13.9"
fi
export FERRY_TEST_VENV="$PWD/.venv-test"

if [[ ! -f .nuget-test/node_modules/nuget-exe/nuget-5.8.0.exe ]]; then
    echo "installing nuget.exe 5.8.0 (npm: nuget-exe) into .nuget-test" >&2
    npm install --prefix .nuget-test --no-audit --no-fund -s nuget-exe@5.8.0
fi

# An S3-compatible server for the S3 blob store's tests and the e2e suite's
# second pass: s3s-fs (the S3 API over a folder, from crates.io; MinIO is
# not reachable from here).
if [[ ! -x .tools/s3s-fs/bin/s3s-fs ]]; then
    echo "installing s3s-fs 0.14.1 into .tools/s3s-fs" >&2
    cargo install s3s-fs --version 0.14.1 --features binary --locked --root .tools/s3s-fs
fi
export FERRY_TEST_S3S="$PWD/.tools/s3s-fs/bin/s3s-fs"

