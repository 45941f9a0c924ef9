#!/usr/bin/env bash
# Quick start, command 1: Warren end to end on the local broker.
# Builds the binaries, starts RabbitMQ if needed, then runs warren-demo:
# a sample repository, a dispatcher, two workers and a watcher, six commits,
# a table of verdicts; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-broker.sh
# The management UI shows the demo's queues (prefix warren-demo) while it runs.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null 2>&1 || true
fi
echo "Building Warren (the first build takes a few minutes) ..." >&2
cargo build --bins
WARREN_BIN_DIR=target/debug exec target/debug/warren-demo "$@"
