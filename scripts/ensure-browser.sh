#!/usr/bin/env bash
# Makes sure the browser test can run: Debian's Chromium (/usr/bin/chromium,
# installed with apt if missing) and playwright-core (npm, pinned by
# harness/browser/package-lock.json; it drives Chromium, it downloads none).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing Debian's chromium for the browser test ..." >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "the browser test needs Chromium: apt install chromium (or set CHROMIUM=/path/to/chrome)" >&2
        exit 1
    fi
fi
if ! command -v node >/dev/null 2>&1; then
    echo "the browser test needs Node.js 18 or later (apt install nodejs npm)" >&2
    exit 1
fi
if [ ! -d harness/browser/node_modules/playwright-core ]; then
    echo "installing playwright-core for the browser test ..." >&2
    npm ci --prefix harness/browser --no-audit --no-fund --silent
fi
