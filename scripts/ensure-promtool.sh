#!/usr/bin/env bash
# Makes sure the metrics test can run `promtool check metrics`: promtool on
# the PATH, or else taken from Debian's `prometheus` package into
# target/tools/ (apt-get download and dpkg-deb -x: only the one program,
# no Prometheus server installed or started). scripts/test.sh puts
# target/tools on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null 2>&1 || [ -x target/tools/promtool ]; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download() { (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); }
if ! download; then
    # No package lists yet (a fresh container): fetch them, as root.
    if [ "$(id -u)" = 0 ] && apt-get update -qq && download; then
        :
    else
        echo "the metrics test needs promtool: apt install prometheus (or put promtool on the PATH)" >&2
        exit 1
    fi
fi
echo "taking promtool from Debian's prometheus package for the metrics test ..." >&2
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
mkdir -p target/tools
cp "$tmp/root/usr/bin/promtool" target/tools/promtool
