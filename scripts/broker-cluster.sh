#!/usr/bin/env bash
# A three-node RabbitMQ cluster beside the machine's own broker, for the
# cluster tests and for trying Warren against a cluster by hand.
#
#   scripts/broker-cluster.sh start          three nodes, clustered, ready
#   scripts/broker-cluster.sh stop           stop them and remove their data
#   scripts/broker-cluster.sh kill N         kill -9 node N (1..3)
#   scripts/broker-cluster.sh revive N       start node N again (it rejoins)
#   scripts/broker-cluster.sh restart N      stop node N cleanly, start it again
#   scripts/broker-cluster.sh freeze N       SIGSTOP node N: it hangs, sockets open
#   scripts/broker-cluster.sh thaw N         SIGCONT node N
#   scripts/broker-cluster.sh status         which nodes run, the cluster view
#   scripts/broker-cluster.sh leader QUEUE   the node (1..3) leading a quorum queue
#   scripts/broker-cluster.sh urls           the AMQP URLs, comma-separated
#
# Node N is rabbitN@localhost with AMQP on 127.0.0.1:568N, distribution on
# 2568N and management on 1568N; its data and logs are under
# $WARREN_CLUSTER_DIR (default /tmp/warren-cluster)/rabbitN, owned by the
# rabbitmq user. The machine's broker (rabbit@localhost, 5672) is never
# touched: every command names its node.
set -euo pipefail

base=${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}
nodes=(1 2 3)

node_name() { echo "rabbit$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }

as_rabbitmq() { runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq "$@"; }

ctl() {
    local n=$1
    shift
    as_rabbitmq rabbitmqctl -n "$(node_name "$n")" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_pid() {
    # The node writes its pid file once it runs; a stale one is ignored.
    local file="$base/rabbit$1/pid" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ]; then
        echo "$pid"
    fi
}

check_node() {
    case "${1:-}" in
        1 | 2 | 3) ;;
        *)
            echo "node must be 1, 2 or 3 (got '${1:-}')" >&2
            exit 2
            ;;
    esac
}

start_node() {
    local n=$1 dir="$base/rabbit$1"
    if [ -n "$(node_pid "$n")" ]; then
        return 0
    fi
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $((15680 + n))
loopback_users = none
cluster_partition_handling = pause_minority
EOF
    echo "[rabbitmq_management]." >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
    # The machine's rabbitmq-env.conf names its own node: every variable it
    # sets is overridden here.
    as_rabbitmq \
        RABBITMQ_NODENAME="$(node_name "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
        RABBITMQ_DIST_PORT=$((25680 + n)) \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/pid" \
        rabbitmq-server -detached 2>"$dir/log/start.err" >/dev/null
}

await_node() {
    local n=$1
    for _ in $(seq 1 90); do
        if port_open "$(amqp_port "$n")" && ctl "$n" await_startup >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    echo "node $(node_name "$n") did not start within 90 s; see $base/rabbit$n/log" >&2
    return 1
}

in_cluster() {
    # Whether node $1 already counts node $2 among its cluster's members.
    ctl "$1" cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$2")\""
}

cmd=${1:-status}
case "$cmd" in
    start)
        for n in "${nodes[@]}"; do start_node "$n"; done
        for n in "${nodes[@]}"; do await_node "$n"; done
        for n in 2 3; do
            if ! in_cluster 1 "$n"; then
                log="$base/rabbit$n/log/join.log"
                ctl "$n" stop_app >>"$log" 2>&1
                ctl "$n" reset >>"$log" 2>&1
                ctl "$n" join_cluster "$(node_name 1)" >>"$log" 2>&1
                ctl "$n" start_app >>"$log" 2>&1
                await_node "$n"
            fi
        done
        echo "cluster up: $("$0" urls)" >&2
        ;;
    stop)
        for n in "${nodes[@]}"; do
            # A frozen node would never answer the stop.
            pid=$(node_pid "$n")
            if [ -n "$pid" ]; then kill -CONT "$pid" 2>/dev/null || true; fi
        done
        for n in "${nodes[@]}"; do
            ctl "$n" stop >/dev/null 2>&1 || true
        done
        for n in "${nodes[@]}"; do
            pid=$(node_pid "$n")
            if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
        done
        rm -rf "$base"
        ;;
    kill)
        check_node "${2:-}"
        pid=$(node_pid "$2")
        if [ -z "$pid" ]; then
            echo "node $(node_name "$2") is not running" >&2
            exit 1
        fi
        kill -9 "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        ;;
    revive)
        check_node "${2:-}"
        start_node "$2"
        await_node "$2"
        ;;
    restart)
        check_node "${2:-}"
        ctl "$2" stop >/dev/null 2>&1 || true
        while [ -n "$(node_pid "$2")" ]; do sleep 0.1; done
        start_node "$2"
        await_node "$2"
        ;;
    freeze | thaw)
        check_node "${2:-}"
        pid=$(node_pid "$2")
        if [ -z "$pid" ]; then
            echo "node $(node_name "$2") is not running" >&2
            exit 1
        fi
        if [ "$1" = freeze ]; then kill -STOP "$pid"; else kill -CONT "$pid"; fi
        ;;
    status)
        for n in "${nodes[@]}"; do
            if [ -n "$(node_pid "$n")" ]; then
                echo "$(node_name "$n") running, amqp 127.0.0.1:$(amqp_port "$n")"
            else
                echo "$(node_name "$n") stopped"
            fi
        done
        for n in "${nodes[@]}"; do
            if [ -n "$(node_pid "$n")" ]; then
                ctl "$n" cluster_status --formatter json 2>/dev/null | python3 -c '
import json, sys
status = json.load(sys.stdin)
print("cluster members:", " ".join(sorted(status["disk_nodes"])))
print("running:", " ".join(sorted(status["running_nodes"])))
print("partitions:", status["partitions"] or "none")'
                break
            fi
        done
        ;;
    leader)
        # The node (1..3) that leads quorum queue $2, asked of a live node.
        queue=${2:?usage: $0 leader QUEUE}
        for n in "${nodes[@]}"; do
            [ -n "$(node_pid "$n")" ] || continue
            ctl "$n" list_queues name leader --formatter json 2>/dev/null | python3 -c '
import json, sys
queue = sys.argv[1]
for row in json.load(sys.stdin):
    if row["name"] == queue:
        print(row["leader"].split("@")[0].removeprefix("rabbit"))
        break
else:
    sys.exit(1)' "$queue" && exit 0
            break
        done
        echo "no live node knows a quorum queue named $queue" >&2
        exit 1
        ;;
    urls)
        urls=()
        for n in "${nodes[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
        (
            IFS=,
            echo "${urls[*]}"
        )
        ;;
    *)
        echo "usage: $0 start|stop|kill N|revive N|restart N|freeze N|thaw N|status|leader QUEUE|urls" >&2
        exit 2
        ;;
esac
