#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this host, no Docker: nodes wa1..wa3@localhost on AMQP
# ports 5681..5683 (distribution 25681..25683), data, logs, config and their own Erlang
# cookie under $WA_CLUSTER_DIR (default /tmp/wa-cluster). The node already running on this
# host (rabbit@localhost, 5672) is never touched: its cookie is not read, its files not used.
#
#   scripts/cluster.sh up       start the three nodes, cluster them, print the AMQP URLs
#   scripts/cluster.sh status   cluster_status and the quorum queues' leaders
#   scripts/cluster.sh urls     the AMQP URLs (one a line)
#   scripts/cluster.sh stop N   stop node N (1..3) only: a node failure
#   scripts/cluster.sh start N  start node N again (it rejoins the cluster)
#   scripts/cluster.sh down     stop every node and remove $WA_CLUSTER_DIR
#   scripts/cluster.sh run      `up`, then the daemon in the foreground against node 1
#                               with WA_QUEUE_TYPE=quorum (other WA_* as in your env)
#
# Runs as the current user with the server's own scripts (/usr/lib/rabbitmq/bin, not the
# /usr/sbin wrappers that switch to the rabbitmq user), HOME pointing at the cluster dir so
# that server and rabbitmqctl share the generated cookie.
set -euo pipefail

DIR="${WA_CLUSTER_DIR:-/tmp/wa-cluster}"
HOST="${WA_CLUSTER_HOST:-localhost}"
BIN="${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}"
[ -x "$BIN/rabbitmq-server" ] || BIN="$(dirname "$(command -v rabbitmq-server)")"
AMQP_BASE="${WA_CLUSTER_AMQP_PORT:-5680}"   # node N listens on AMQP_BASE+N
DIST_BASE="${WA_CLUSTER_DIST_PORT:-25680}"  # node N's distribution port: DIST_BASE+N
NODES=(1 2 3)

node() { echo "wa$1@$HOST"; }
url() { echo "amqp://guest:guest@127.0.0.1:$((AMQP_BASE + $1))/"; }

env_for() {  # the environment of node $1 (also what rabbitmqctl needs: HOME for the cookie)
    local n=$1 d="$DIR/wa$1"
    echo HOME="$DIR" \
        RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
        RABBITMQ_NODENAME="$(node "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$((AMQP_BASE + n))" \
        RABBITMQ_DIST_PORT="$((DIST_BASE + n))" \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
        RABBITMQ_PID_FILE="$d/pid" \
        ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() {  # ctl N args...: rabbitmqctl against node N
    local n=$1
    shift
    env $(env_for "$n") "$BIN/rabbitmqctl" -n "$(node "$n")" "$@"
}

prepare() {
    mkdir -p "$DIR"
    if [ ! -f "$DIR/.erlang.cookie" ]; then  # a cookie of the cluster's own
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie")
        chmod 400 "$DIR/.erlang.cookie"
    fi
    : >"$DIR/rabbitmq-env.conf"  # not /etc/rabbitmq/rabbitmq-env.conf (the host node's name)
    echo "[]." >"$DIR/enabled_plugins"  # no management, no prometheus: no ports to collide
    echo "[]." >"$DIR/advanced.config"
    cat >"$DIR/rabbitmq.conf" <<'EOF'
loopback_users = none
cluster_partition_handling = pause_minority
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.2
log.console = false
log.file.level = warning
EOF
    for n in "${NODES[@]}"; do mkdir -p "$DIR/wa$n/mnesia" "$DIR/wa$n/log"; done
}

start_node() {
    local n=$1
    if ctl "$n" -q ping >/dev/null 2>&1; then return 0; fi
    if epmd -names 2>/dev/null | grep -q "^name wa$n at"; then  # not ours: another cluster dir
        echo "wa$n is already registered with epmd (another WA_CLUSTER_DIR?)" >&2
        return 1
    fi
    (cd "$DIR" && env $(env_for "$n") "$BIN/rabbitmq-server" -detached) >>"$DIR/wa$n/log/start.out" 2>&1
    for _ in $(seq 120); do  # until the node is registered with epmd
        ctl "$n" -q ping >/dev/null 2>&1 && break
        sleep 0.5
    done
    ctl "$n" -q await_startup --timeout 90 >/dev/null 2>>"$DIR/wa$n/log/start.out"
}

up() {
    prepare
    local pids=()
    for n in "${NODES[@]}"; do start_node "$n" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for n in "${NODES[@]}"; do ctl "$n" -q ping >/dev/null || { echo "wa$n did not start; see $DIR/wa$n/log" >&2; exit 1; }; done
    for n in 2 3; do
        if ! ctl "$n" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node 1)\""; then
            {
                ctl "$n" -q stop_app
                ctl "$n" -q join_cluster "$(node 1)"
                ctl "$n" -q start_app
            } >>"$DIR/wa$n/log/start.out" 2>&1 || { echo "wa$n did not join; see $DIR/wa$n/log" >&2; exit 1; }
        fi
    done
    for n in "${NODES[@]}"; do ctl "$n" -q await_startup --timeout 90 >/dev/null; done
    urls
}

urls() { for n in "${NODES[@]}"; do url "$n"; done; }

status() {
    ctl 1 cluster_status || true
    for n in "${NODES[@]}"; do
        if ctl "$n" -q list_queues -p / name type leader members messages 2>/dev/null; then return 0; fi
    done
}

down() {
    for n in "${NODES[@]}"; do
        if [ -f "$DIR/wa$n/pid" ] || ctl "$n" -q ping >/dev/null 2>&1; then
            ctl "$n" -q stop --idempotent >/dev/null 2>&1 || true
        fi
    done
    for n in "${NODES[@]}"; do  # a node that would not stop: its own pid, nothing broader
        local pid
        pid="$(cat "$DIR/wa$n/pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$DIR"
}

case "${1:-}" in
    up) up ;;
    urls) urls ;;
    status) status ;;
    stop) ctl "${2:?node 1..3}" -q stop ;;
    start) start_node "${2:?node 1..3}" ;;
    down) down ;;
    run)
        up >/dev/null
        WA_AMQP_URL="$(url 1)" WA_QUEUE_TYPE=quorum exec "$(command -v wa-consumer || echo .venv/bin/wa-consumer)" run
        ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
