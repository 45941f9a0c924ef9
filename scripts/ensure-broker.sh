#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672, starting the local broker
# (rabbitmq-server -detached) if it does not. Used by the demo, the tests and CI.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
    exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed." >&2
    echo "Install RabbitMQ 3.10 or later (Debian: apt install rabbitmq-server) and run this again." >&2
    exit 1
fi
echo "RabbitMQ is not running; starting it with 'rabbitmq-server -detached' ..." >&2
rabbitmq-server -detached
for _ in $(seq 1 90); do
    if port_open && rabbitmqctl await_startup >/dev/null 2>&1; then
        echo "RabbitMQ is up." >&2
        exit 0
    fi
    sleep 1
done
echo "RabbitMQ did not start within 90 s; see its logs in /var/log/rabbitmq." >&2
exit 1
