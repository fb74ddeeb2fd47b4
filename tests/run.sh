#!/usr/bin/env bash
# tests/run.sh — the one command that runs every Switchboard test.
#
# Works on a fresh Debian machine that has only the Rust toolchain: installs
# whatever is missing (redis-server, nginx, prometheus, chromium, certutil, node/npm,
# systemd-analyze via apt; the browser test's npm packages; rustfmt/clippy via rustup), then
# runs, in order:
#   fmt    cargo fmt --all -- --check
#   clippy cargo clippy --workspace --all-targets -- -D warnings
#   build  cargo build --workspace --bins (also the gateway's `switchboard`, which the
#          benchmarks start)
#   test   cargo test --workspace
#   bench  the benchmarks at smoke size (tests/bench/README.md)
# and stops at the first failure.
#
# Tests start their own redis-server on a free port; the machine's redis
# service is never started or touched; likewise the nginx tests start their own nginx.
# With CI set, SWITCHBOARD_REQUIRE_ALL=1 is exported so tests needing
# redis/nginx/prometheus/chromium/certutil/node fail instead of skipping.
#
# Environment: REDIS_SERVER, NGINX, PROMETHEUS, CHROMIUM, CERTUTIL (paths of the binaries,
# optional), CI (any value but "", "0" or "false" means CI).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf '\ntests/run.sh: error: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- environment
if [ -n "${CI:-}" ] && [ "${CI}" != "0" ] && [ "${CI}" != "false" ]; then
    export SWITCHBOARD_REQUIRE_ALL=1
fi

# ------------------------------------------------------------------ tools
# Runs a command as root: directly, or through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo "$@" || die "'sudo $*' failed: install the missing packages yourself (apt-get install ${APT_MISSING[*]}) and re-run"
    else
        die "not root and no sudo: cannot run '$*'. Install the missing packages yourself (apt-get install ${APT_MISSING[*]}) and re-run."
    fi
}

APT_MISSING=()
if [ -n "${REDIS_SERVER:-}" ]; then
    [ -x "$REDIS_SERVER" ] || die "REDIS_SERVER=$REDIS_SERVER is not an executable"
elif ! have redis-server && [ ! -x /usr/bin/redis-server ]; then
    APT_MISSING+=(redis-server)
fi
# The client-address tests (tests/it/forwarded.rs) put a real nginx in front of the
# gateway: an HTTP proxy, and a TCP proxy sending the PROXY protocol with nginx's stream
# module (Debian builds it as a module of its own, libnginx-mod-stream).
if [ -n "${NGINX:-}" ]; then
    [ -x "$NGINX" ] || die "NGINX=$NGINX is not an executable"
elif ! have nginx && [ ! -x /usr/sbin/nginx ]; then
    APT_MISSING+=(nginx libnginx-mod-stream)
elif [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] &&
    ! "$(command -v nginx || echo /usr/sbin/nginx)" -V 2>&1 | grep -Eq -- '--with-stream( |$)'; then
    APT_MISSING+=(libnginx-mod-stream)
fi
# The Prometheus tests (tests/it/prometheus.rs) run a real Prometheus configured from
# deploy/prometheus.yml, scraping a gateway: Debian's prometheus.
if [ -n "${PROMETHEUS:-}" ]; then
    [ -x "$PROMETHEUS" ] || die "PROMETHEUS=$PROMETHEUS is not an executable"
elif ! have prometheus && [ ! -x /usr/bin/prometheus ]; then
    APT_MISSING+=(prometheus)
fi
if [ -n "${CHROMIUM:-}" ]; then
    [ -x "$CHROMIUM" ] || die "CHROMIUM=$CHROMIUM is not an executable"
elif ! have chromium && [ ! -x /usr/bin/chromium ]; then
    APT_MISSING+=(chromium)
fi
# The browser test over https (tests/it/browser.rs) makes Chromium trust its test CA through
# an NSS database made with certutil: Debian's libnss3-tools.
if [ -n "${CERTUTIL:-}" ]; then
    [ -x "$CERTUTIL" ] || die "CERTUTIL=$CERTUTIL is not an executable"
elif ! have certutil && [ ! -x /usr/bin/certutil ]; then
    APT_MISSING+=(libnss3-tools)
fi
# The deployment tests (tests/it/deploy.rs) check the systemd units with systemd-analyze:
# Debian's systemd package (nothing is started: it only reads the files).
if ! have systemd-analyze && [ ! -x /usr/bin/systemd-analyze ]; then
    APT_MISSING+=(systemd)
fi
have node || APT_MISSING+=(nodejs)
have npm || APT_MISSING+=(npm)
# The AWS dialect's tests (tests/it/dialect_aws.rs) run Python handlers with the AWS
# SDK: Debian's python3-boto3 (for /usr/bin/python3), unless $PYTHON3 (an interpreter
# path, optional) or the python3 on PATH already has boto3. Without it they skip, or
# fail under SWITCHBOARD_REQUIRE_ALL.
if ! "${PYTHON3:-python3}" -c 'import boto3' >/dev/null 2>&1 &&
    ! /usr/bin/python3 -c 'import boto3' >/dev/null 2>&1; then
    APT_MISSING+=(python3-boto3)
fi
# The wss tests (tests/it/tls.rs) run a Python `websockets` client: Debian's
# python3-websockets, unless the python3 found has it already.
if ! "${PYTHON3:-python3}" -c 'import websockets' >/dev/null 2>&1 &&
    ! /usr/bin/python3 -c 'import websockets' >/dev/null 2>&1; then
    APT_MISSING+=(python3-websockets)
fi

if [ "${#APT_MISSING[@]}" -gt 0 ]; then
    step "install ${APT_MISSING[*]} (apt)"
    have apt-get || die "missing ${APT_MISSING[*]} and no apt-get: install them yourself and re-run"
    # Waits for the dpkg lock instead of failing if another apt is running.
    APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    as_root "${APT[@]}" update
    as_root "${APT[@]}" install -y "${APT_MISSING[@]}"
    # apt may have started the system redis, nginx and prometheus services: they are not
    # ours, leave them alone (the tests start their own on free ports).
fi

if [ -z "${CHROMIUM:-}" ]; then
    CHROMIUM="$(command -v chromium || echo /usr/bin/chromium)"
fi
export CHROMIUM

# rustfmt and clippy are rustup components, absent from a minimal toolchain.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "install rustfmt clippy (rustup)"
    have rustup || die "cargo fmt / cargo clippy missing and no rustup to install them"
    rustup component add rustfmt clippy
fi

# npm packages of the Node tests, only when missing or stale: npm writes
# node_modules/.package-lock.json on every install, so anything newer than it
# (package.json, package-lock.json) means the install is out of date.
#   tests/browser  the headless-Chromium chat test (playwright-core)
#   tests/clients  Node WebSocket clients of tests/it (ws)
#   tests/handlers/aws-node/simple-chat  AWS's Node.js chat sample that tests/it runs
#                  under tests/handlers/aws-node/runtime.js (AWS SDK v3, redis)
npm_install() {
    local dir=$1 marker=$2
    local stamp="$dir/node_modules/.package-lock.json"
    if [ ! -f "$stamp" ] || [ ! -d "$dir/node_modules/$marker" ] ||
        [ "$dir/package.json" -nt "$stamp" ] ||
        { [ -f "$dir/package-lock.json" ] && [ "$dir/package-lock.json" -nt "$stamp" ]; }; then
        step "npm install ($dir)"
        if [ -f "$dir/package-lock.json" ]; then
            (cd "$dir" && npm ci --no-audit --no-fund)
        else
            (cd "$dir" && npm install --no-audit --no-fund)
        fi
        if [ -d "$dir/node_modules" ]; then touch "$stamp"; fi
    fi
}
# playwright-core never downloads a browser; the system chromium is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
npm_install tests/browser playwright-core
npm_install tests/clients ws
npm_install tests/handlers/aws-node/simple-chat @aws-sdk/client-apigatewaymanagementapi

# ------------------------------------------------------------------ checks
step "fmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --bins

# ------------------------------------------------------------------ tests
step "test${SWITCHBOARD_REQUIRE_ALL:+ (SWITCHBOARD_REQUIRE_ALL=1: missing tools fail)}"
cargo test --workspace

# ------------------------------------------------------------------ benchmarks
# Every scenario at smoke size (seconds), against both stores, so the harness never
# rots. It fails only when a scenario errors; timings are printed, never asserted.
# (A gateway without passthrough prints its passthrough rows as NOT MEASURED.)
# Full-size runs and the peers (Pushpin, Nchan, Node ws): tests/bench/README.md.
step "bench (smoke size)"
cargo run --quiet -p bench --bin bench -- --size smoke --store both \
    --results target/bench-smoke/results.jsonl --svg target/bench-smoke/latency.svg

step "all tests passed"
