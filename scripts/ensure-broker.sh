#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672, starting the local broker
# (rabbitmq-server -detached) if it does not. Used by the demo, the tests and CI.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

# A test that raised the memory alarm (threshold 0) restores it when it
# ends; if it was killed first, publishing stays blocked: undo that here.
clear_memory_alarm() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    local threshold
    threshold=$(rabbitmqctl eval 'vm_memory_monitor:get_vm_memory_high_watermark().' 2>/dev/null || true)
    case "$threshold" in
        0|0.0|"{absolute,0}")
            echo "RabbitMQ's memory threshold is 0 (left by a killed test); setting it back to 0.4" >&2
            rabbitmqctl set_vm_memory_high_watermark 0.4 >/dev/null
            ;;
    esac
}

if port_open; then
    clear_memory_alarm
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
