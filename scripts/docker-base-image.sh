#!/usr/bin/env bash
# Makes the base image the containers here need, once: a minimal Debian
# bookworm root file system (debootstrap --variant=minbase) imported as
# `debian:bookworm-slim`, the tag docker/Dockerfile's runtime stage starts
# FROM. No image registry is reachable from our machines and CI; Debian's
# package mirror is. On a machine that can pull images, skip this: docker
# pulls the real debian:bookworm-slim.
#
#   scripts/docker-base-image.sh          # make it unless it exists
#   scripts/docker-base-image.sh --force  # make it again
#
# Prints the tag. About 30-60 s the first time, nothing after.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${WARREN_BASE_IMAGE:-debian:bookworm-slim}

scripts/ensure-docker.sh
if [ "${1:-}" != --force ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi
root=$(mktemp -d /tmp/warren-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "making $TAG with debootstrap (minbase, bookworm) in $root ..." >&2
# The machine's own Debian mirror (its apt sources), unless DEBIAN_MIRROR
# names one; with neither, debootstrap's default.
mirror=${DEBIAN_MIRROR:-$(grep -rhE '^[^#]*https?://' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | grep -E '/debian/?$' | head -n 1 || true)}
debootstrap --variant=minbase bookworm "$root" ${mirror:+"$mirror"} >/tmp/warren-debootstrap.log 2>&1 || {
    echo "debootstrap failed; its log:" >&2
    tail -n 30 /tmp/warren-debootstrap.log >&2
    exit 1
}
# What a slim image leaves out: the package lists and caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$TAG" >/dev/null
echo "$TAG"
