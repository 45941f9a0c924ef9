#!/usr/bin/env bash
# Quick start, command 2: the whole test suite, against the real broker
# (started if needed), real git repositories and the real binaries.
#
# The tests that stop the broker or change its settings (the test binary
# warren-harness::broker_faults) disturb every other client of the broker,
# and the cluster tests (warren-harness::broker_cluster) own three extra
# RabbitMQ nodes and load the machine, so both run on their own, one at a
# time, after the others.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-broker.sh
# The status page's test drives Debian's Chromium with playwright-core.
# Without them every other test still runs; that one fails and says why.
if ! scripts/ensure-browser.sh; then
    echo "warning: no browser for the status page's test (see above); it will fail" >&2
fi
# The sandbox executor's tests run real bubblewrap; the container
# executor's tests start the Docker engine themselves (ensure-docker.sh).
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing bubblewrap (Debian package) for the sandbox tests ..." >&2
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null
    else
        echo "warning: no bwrap (apt-get install bubblewrap); the sandbox tests will fail" >&2
    fi
fi
# The metrics test checks /metrics with promtool (Debian's prometheus).
if ! scripts/ensure-promtool.sh; then
    echo "warning: no promtool for the metrics test (see above); it will fail" >&2
fi
export PATH="$PWD/target/tools:$PATH"

serial='binary_id(warren-harness::broker_faults) | binary_id(warren-harness::broker_cluster)'
if cargo nextest --version >/dev/null 2>&1; then
    status=0
    cargo nextest run --workspace --no-fail-fast -E "not ($serial)" "$@" || status=$?
    cargo nextest run --workspace --no-fail-fast -E "$serial" --test-threads 1 "$@" || status=$?
    # Whatever happened, leave the broker running.
    scripts/ensure-broker.sh
    exit "$status"
else
    echo "cargo-nextest not found (cargo install cargo-nextest); using cargo test," >&2
    echo "which runs one test binary at a time (broker_faults serialises itself)" >&2
    status=0
    cargo test --workspace --no-fail-fast "$@" || status=$?
    scripts/ensure-broker.sh
    exit "$status"
fi
