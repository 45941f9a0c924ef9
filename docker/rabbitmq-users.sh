#!/bin/sh
# Least-privilege RabbitMQ users for one Warren installation: one user per
# component, each allowed exactly what it does. Run it where rabbitmqctl
# reaches the broker (on the broker's host, or `docker compose exec rabbitmq`).
#
#   DISPATCHER_PASSWORD=... WATCHER_PASSWORD=... WORKER_PASSWORD=... \
#     docker/rabbitmq-users.sh [PREFIX [VHOST [USER_PREFIX]]]
#
# PREFIX is broker.prefix (default warren), VHOST the virtual host (default /),
# USER_PREFIX starts the user names (default "warren-": warren-dispatcher,
# warren-watcher, warren-worker). Passwords come from the environment so that
# they appear neither in the process list nor in shell history.
#
# | user       | configure     | write (publish, bind)              | read (consume, bind)                 |
# | dispatcher | ^P\.          | ^P\.                               | ^P\.                                 |
# | watcher    | (nothing)     | ^P\.commits$                       | (nothing)                            |
# | worker     | ^amq\.gen-.*  | ^P\.(results|events|dead|logs)$|^amq\.gen-.* | ^P\.(jobs|control)$|^amq\.gen-.*  |
#
# The dispatcher owns the prefix: it declares the exchanges and queues (and
# the bindings, which need write on queues and read on exchanges). The
# worker's `amq.gen-*` permissions cover the private, server-named queue it
# binds to the P.control fanout exchange to hear cancellations (superseded
# jobs). The watcher and the workers must run with broker.declare = false
# (WARREN_BROKER__DECLARE=false): they only check, with passive declares,
# that the topology exists, and wait (with backoff) until the dispatcher has
# created it. A worker can then neither publish commits nor read results; a
# watcher can only publish commit events. None of them may use the
# management UI (no tags); give people a user with the `monitoring` tag.
set -eu

prefix="${1:-warren}"
vhost="${2:-/}"
user_prefix="${3:-warren-}"

case "$prefix" in
    *[!A-Za-z0-9._-]* | "") echo "invalid prefix: $prefix" >&2; exit 2 ;;
esac
# The prefix in a regular expression: dots are literal.
p=$(printf '%s' "$prefix" | sed 's/\./\\./g')

for name in DISPATCHER_PASSWORD WATCHER_PASSWORD WORKER_PASSWORD; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "set $name (the password of that component's user)" >&2
        exit 2
    fi
done

ensure_user() { # user password
    if rabbitmqctl -q list_users | cut -f1 | grep -qx "$1"; then
        rabbitmqctl -q change_password "$1" "$2" >/dev/null
    else
        rabbitmqctl -q add_user "$1" "$2" >/dev/null
    fi
    rabbitmqctl -q set_user_tags "$1" >/dev/null
}

ensure_user "${user_prefix}dispatcher" "$DISPATCHER_PASSWORD"
rabbitmqctl -q set_permissions -p "$vhost" "${user_prefix}dispatcher" "^$p\\." "^$p\\." "^$p\\." >/dev/null

ensure_user "${user_prefix}watcher" "$WATCHER_PASSWORD"
rabbitmqctl -q set_permissions -p "$vhost" "${user_prefix}watcher" '^$' "^$p\\.commits\$" '^$' >/dev/null

ensure_user "${user_prefix}worker" "$WORKER_PASSWORD"
rabbitmqctl -q set_permissions -p "$vhost" "${user_prefix}worker" \
    '^amq\.gen-.*' "^$p\\.(results|events|dead|logs)\$|^amq\\.gen-.*" "^$p\\.(jobs|control)\$|^amq\\.gen-.*" >/dev/null

echo "users ${user_prefix}dispatcher, ${user_prefix}watcher, ${user_prefix}worker ready for prefix $prefix on vhost $vhost"
