#!/usr/bin/env bash
# deploy/run-local.sh — the example chat as separate processes on this machine:
# its own redis-server, two chat-functions replicas (the `chat` package, functions/chat)
# and the gateway (`switchboard`), all on loopback.
#
#   redis-server   127.0.0.1:$REDIS_PORT    (default 6380; no persistence, temp dir)
#   chat replica A 127.0.0.1:$CHAT_A_PORT   (default 9101; register and cleanup)
#   chat replica B 127.0.0.1:$CHAT_B_PORT   (default 9102; transport)
#   gateway        127.0.0.1:$PUBLIC_PORT   (default 8080; the chat page and WebSocket)
#                  127.0.0.1:$SENDBACK_PORT (default 9090; the send-back API)
#
# The gateway reads deploy/redis-chat.toml; the addresses above and a random send-back
# token reach it as SWITCHBOARD_* variables, and the functions as flags and
# CHAT_SENDBACK_TOKEN. Ctrl-C (or any of them exiting) stops everything it started, the
# gateway first so that its cleanup calls still reach the functions.
#
# Installs redis-server with apt if missing (REDIS_SERVER=path uses another binary). The
# machine's own redis service is never started or touched.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REDIS_PORT="${REDIS_PORT:-6380}"
CHAT_A_PORT="${CHAT_A_PORT:-9101}"
CHAT_B_PORT="${CHAT_B_PORT:-9102}"
PUBLIC_PORT="${PUBLIC_PORT:-8080}"
SENDBACK_PORT="${SENDBACK_PORT:-9090}"
# Must match for the gateway and the functions (see store_prefix in the config).
STORE_PREFIX=chat
CONFIG=deploy/redis-chat.toml

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf '\ndeploy/run-local.sh: error: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Runs a command as root: directly, or through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo "$@" || die "'sudo $*' failed: install redis-server yourself and re-run"
    else
        die "not root and no sudo: install redis-server yourself (apt-get install redis-server) and re-run"
    fi
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for port in "$REDIS_PORT" "$CHAT_A_PORT" "$CHAT_B_PORT" "$PUBLIC_PORT" "$SENDBACK_PORT"; do
    case "$port" in
    '' | *[!0-9]*) die "'$port' is not a port number" ;;
    esac
    if listening "$port"; then
        die "127.0.0.1:$port is already in use (override with REDIS_PORT, CHAT_A_PORT, CHAT_B_PORT, PUBLIC_PORT or SENDBACK_PORT)"
    fi
done

# ------------------------------------------------------------------ redis-server
if [ -n "${REDIS_SERVER:-}" ]; then
    [ -x "$REDIS_SERVER" ] || die "REDIS_SERVER=$REDIS_SERVER is not an executable"
elif have redis-server; then
    REDIS_SERVER="$(command -v redis-server)"
elif [ -x /usr/bin/redis-server ]; then
    REDIS_SERVER=/usr/bin/redis-server
else
    step "install redis-server (apt)"
    have apt-get || die "redis-server is missing and there is no apt-get: install it yourself and re-run"
    APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    as_root "${APT[@]}" update
    as_root "${APT[@]}" install -y redis-server
    # apt may have started the system redis service: it is not ours, leave it alone.
    REDIS_SERVER=/usr/bin/redis-server
fi

# ------------------------------------------------------------------ build
step "build"
# Binary names are unique in the workspace: `switchboard` is the gateway package's,
# `chat-functions` the chat package's.
cargo build --release --bin switchboard --bin chat-functions
BIN=target/release

# ------------------------------------------------------------------ processes
TMP="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-chat.XXXXXX")"
PIDS=()
NAMES=()

# Stops what this script started, last started first, each waited for.
# shellcheck disable=SC2317  # run by the EXIT trap
stop_all() {
    local status=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            printf 'stopping %s (pid %s)\n' "${NAMES[i]}" "${PIDS[i]}" >&2
            kill -TERM "${PIDS[i]}" 2>/dev/null || true
        fi
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Each process runs in its own session (setsid), so Ctrl-C in the terminal reaches only
# this script, which then stops them in order.
SETSID=()
if have setsid; then SETSID=(setsid); fi

# Starts "$@" as process $1 with its output in file $2 (the terminal if empty); PID is set.
spawn() {
    local name="$1" log="$2"
    shift 2
    if [ -n "$log" ]; then
        "${SETSID[@]}" "$@" >"$log" 2>&1 &
    else
        "${SETSID[@]}" "$@" &
    fi
    PID=$!
    PIDS+=("$PID")
    NAMES+=("$name")
}

# Waits until process $1 (named $2, logging to file $4 if set) accepts connections on
# port $3.
wait_ready() {
    local pid="$1" name="$2" port="$3" log="${4:-}" tries=0
    until listening "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            if [ -n "$log" ]; then tail -n 20 "$log" >&2; fi
            die "$name exited before listening on 127.0.0.1:$port"
        fi
        tries=$((tries + 1))
        [ "$tries" -le 300 ] || die "$name is not listening on 127.0.0.1:$port after 30 s"
        sleep 0.1
    done
}

step "start redis-server on 127.0.0.1:$REDIS_PORT"
spawn redis-server "$TMP/redis.log" "$REDIS_SERVER" --port "$REDIS_PORT" \
    --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" --daemonize no
wait_ready "$PID" redis-server "$REDIS_PORT" "$TMP/redis.log"

# One token for both sides; "sb-" keeps it a string whatever the random part is.
TOKEN="sb-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
STORE="redis://127.0.0.1:$REDIS_PORT"

for replica in A B; do
    if [ "$replica" = A ]; then port="$CHAT_A_PORT"; else port="$CHAT_B_PORT"; fi
    log="$TMP/chat-${replica,,}.log"
    step "start chat replica $replica on 127.0.0.1:$port (log: $log)"
    spawn "chat replica $replica" "$log" env CHAT_SENDBACK_TOKEN="$TOKEN" \
        "$BIN/chat-functions" \
        --listen "127.0.0.1:$port" \
        --store "$STORE" \
        --store-prefix "$STORE_PREFIX" \
        --sendback-url "http://127.0.0.1:$SENDBACK_PORT"
    wait_ready "$PID" "chat replica $replica" "$port" "$log"
done

step "start the gateway ($CONFIG)"
spawn gateway "" env \
    SWITCHBOARD_SENDBACK__TOKEN="$TOKEN" \
    SWITCHBOARD_STORE="$STORE" \
    SWITCHBOARD_STORE_PREFIX="$STORE_PREFIX" \
    SWITCHBOARD_PUBLIC__LISTEN="127.0.0.1:$PUBLIC_PORT" \
    SWITCHBOARD_SENDBACK__LISTEN="127.0.0.1:$SENDBACK_PORT" \
    SWITCHBOARD_FUNCTIONS__REGISTER="http://127.0.0.1:$CHAT_A_PORT/" \
    SWITCHBOARD_FUNCTIONS__CLEANUP="http://127.0.0.1:$CHAT_A_PORT/" \
    SWITCHBOARD_FUNCTIONS__TRANSPORT="http://127.0.0.1:$CHAT_B_PORT/" \
    "$BIN/switchboard" --config "$CONFIG"
wait_ready "$PID" gateway "$PUBLIC_PORT"
wait_ready "$PID" gateway "$SENDBACK_PORT"

printf '\n  open http://127.0.0.1:%s/\n' "$PUBLIC_PORT"
printf '  (in two tabs; room and name: http://127.0.0.1:%s/?room=lobby&name=ann)\n' "$PUBLIC_PORT"
printf '  chat replica logs: %s/chat-a.log, %s/chat-b.log (removed at exit)\n' "$TMP" "$TMP"
printf '  Ctrl-C stops everything.\n\n'

# Runs until Ctrl-C, or until one of the processes exits.
exited=0
wait -n "${PIDS[@]}" || exited=$?
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
        printf '\n%s exited (status %s); stopping the rest\n' "${NAMES[i]}" "$exited" >&2
    fi
done
exit 1
