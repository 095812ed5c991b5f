# Shared by e2e/up and e2e/down: paths, logging, the env file, ports, processes.
# shellcheck shell=bash

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SLUICE_E2E_STATE:-$E2E_DIR/.state}
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
LOGS=$STATE/logs
PIDS=$STATE/pids
BIN=$STATE/bin
ENV_FILE=$STATE/env
# shellcheck source=versions.sh
. "$E2E_DIR/lib/versions.sh"

START_TIME=${START_TIME:-$(date +%s)}

# A progress line with the seconds since start.
say() { printf '[e2e %4ss] %s\n' "$(($(date +%s) - START_TIME))" "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

# Writes KEY=VALUE into the env file, replacing an earlier value; readers never see a half file.
set_env() {
    local key=$1 value=$2 tmp
    mkdir -p "$STATE"
    tmp=$(mktemp "$STATE/.env.XXXXXX")
    if [ -f "$ENV_FILE" ]; then grep -v "^$key=" "$ENV_FILE" >"$tmp" || true; fi
    printf '%s=%s\n' "$key" "$value" >>"$tmp"
    mv -f "$tmp" "$ENV_FILE"
}

# The value of KEY in the env file, or nothing.
get_env() {
    [ -f "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n1
}

# A port nobody listens on now (the kernel picks it), on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Whether something listens on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# port_for NAME [OWNER]: the port a component used before (kept in $STATE/ports/NAME), or a
# new free one when there is none or another program took it while OWNER (default NAME)
# was not running.
port_for() {
    local name=$1 owner=${2:-$1} file=$STATE/ports/$1 port
    mkdir -p "$STATE/ports"
    if [ -s "$file" ]; then
        port=$(cat "$file")
        if running "$owner" || ! port_in_use "$port"; then
            echo "$port"
            return
        fi
    fi
    # A port handed out earlier may not be bound yet (Kafka Connect's JVM takes seconds):
    # never hand it out twice.
    port=$(free_port)
    while grep -qxs -- "$port" "$STATE"/ports/*; do
        port=$(free_port)
    done
    echo "$port" >"$file"
    echo "$port"
}

# Whether the process recorded under NAME is alive.
running() {
    local pid
    [ -s "$PIDS/$1" ] || return 1
    pid=$(cat "$PIDS/$1")
    kill -0 "$pid" 2>/dev/null
}

# start NAME CMD...: runs CMD in the background in its own session, output to $LOGS/NAME.log.
start() {
    local name=$1
    shift
    mkdir -p "$PIDS" "$LOGS"
    echo "=== $(date -u +%FT%TZ) starting: $*" >>"$LOGS/$name.log"
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/$name"
}

# wait_until NAME SECONDS CMD...: retries CMD (quietly) until it succeeds, the process
# NAME dies, or SECONDS pass.
wait_until() {
    local name=$1 limit=$2 deadline
    shift 2
    deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        if ! running "$name"; then
            say "$name exited; last lines of $LOGS/$name.log:"
            tail -n 30 "$LOGS/$name.log" >&2
            return 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "$name not ready after ${limit}s; last lines of $LOGS/$name.log:"
            tail -n 30 "$LOGS/$name.log" >&2
            return 1
        fi
        sleep 0.5
    done
}

# stop NAME: SIGTERM to the process group, then SIGKILL after a grace period.
stop() {
    local name=$1 pid i
    [ -s "$PIDS/$name" ] || return 0
    pid=$(cat "$PIDS/$name")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop on SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name"
    fi
    rm -f "$PIDS/$name"
}

# Installs Debian packages that are missing.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    say "installing Debian packages: ${missing[*]}"
    # The background Go build installs packages too (runc's libseccomp): wait for the
    # other's dpkg lock rather than fail on it.
    local wait=(-o DPkg::Lock::Timeout=600)
    $sudo apt-get "${wait[@]}" update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
