#!/usr/bin/env bash
# Quick start, command 2: the whole test suite, against the real broker
# (started if needed), real git repositories and the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-broker.sh
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found (cargo install cargo-nextest); using cargo test" >&2
    exec cargo test --workspace --no-fail-fast "$@"
fi
