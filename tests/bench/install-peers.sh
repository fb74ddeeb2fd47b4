#!/usr/bin/env bash
# tests/bench/install-peers.sh — installs the benchmark peers, from Debian's packages and npm
# only, for loopback use:
#   pushpin          apt package `pushpin` (its service is not started: the harness runs
#                    its own instance with a private config on free loopback ports), with
#                    `condure` (its connection manager) and `zurl` (the HTTP client its
#                    WebSocket-over-HTTP mode calls the function through), which the
#                    harness starts as services of that instance
#   node + ws        apt `nodejs`/`npm` if missing, then `npm ci` in tests/bench/node-ws
# Idempotent: skips what is already there. Needs root (or sudo) for apt.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

have() { command -v "$1" >/dev/null 2>&1; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
have pushpin || missing+=(pushpin)
have condure || missing+=(condure)
have zurl || missing+=(zurl)
have node || missing+=(nodejs)
have npm || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        as_root "${APT[@]}" update
    fi
    as_root "${APT[@]}" install -y "${missing[@]}"
fi

# The npm packages of the Node peer, when missing or older than the lock file.
STAMP=node-ws/node_modules/.package-lock.json
if [ ! -f "$STAMP" ] || [ node-ws/package-lock.json -nt "$STAMP" ]; then
    echo "==> npm ci (tests/bench/node-ws)"
    (cd node-ws && npm ci --no-audit --no-fund)
fi

echo "peers: $(pushpin --version 2>/dev/null | head -1) ($(condure --version 2>/dev/null | head -1), $(zurl --version 2>/dev/null | head -1)), node $(node --version), ws $(node -p "require('./node-ws/node_modules/ws/package.json').version")"
