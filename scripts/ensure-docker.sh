#!/usr/bin/env bash
# Makes sure a Docker engine answers, installing Debian's docker.io (and
# debootstrap, for scripts/docker-base-image.sh) when missing and starting
# dockerd when it is not running. Used by the container tests and CI.
#
# The engine is started with no bridge network and without touching
# iptables: Warren's containers run with host networking, so nothing here
# ever gets a private-range address (README, "Containers").
set -euo pipefail

LOG=/var/log/warren-dockerd.log

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ((${#need[@]})); then
    echo "installing ${need[*]} (Debian packages) ..." >&2
    if [ "$(id -u)" != 0 ]; then
        echo "not root: install ${need[*]} yourself (apt-get install ${need[*]})" >&2
        exit 1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "the Docker engine is not running and only root can start it here (dockerd)" >&2
    exit 1
fi
echo "starting dockerd (--bridge=none --iptables=false, log in $LOG) ..." >&2
# containerd comes with docker.io; dockerd starts its own when none runs.
nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$LOG" 2>&1 &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "dockerd is up." >&2
        exit 0
    fi
    sleep 1
done
echo "dockerd did not answer within 60 s; its log:" >&2
tail -n 30 "$LOG" >&2
exit 1
