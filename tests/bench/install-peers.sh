#!/usr/bin/env bash
# tests/bench/install-peers.sh — installs the benchmark peers, from Debian's packages and npm
# only, for loopback use:
#   pushpin          apt package `pushpin` (its service is not started: the harness runs
#                    its own instance with a private config on free loopback ports), with
#                    `condure` (its connection manager) and `zurl` (the HTTP client its
#                    WebSocket-over-HTTP mode calls the function through), which the
#                    harness starts as services of that instance
#   nginx + nchan    apt packages `nginx` (the smallest of Debian's nginx flavours; the
#                    module needs no more) and `libnginx-mod-nchan`; the system's nginx
#                    service is kept from starting during the install and never used:
#                    the harness runs its own nginx with a private generated config
#                    (`systems/nchan.rs`) that loads the module from Debian's path
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
have nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
have node || missing+=(nodejs)
have npm || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        as_root "${APT[@]}" update
    fi
    # Debian starts a freshly installed service (nginx on port 80) unless
    # /usr/sbin/policy-rc.d says no: without one, a temporary one says no for the install.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        trap 'as_root rm -f "$policy"' EXIT
    fi
    as_root "${APT[@]}" install -y "${missing[@]}"
    if [ -n "$(trap -p EXIT)" ]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
fi

# The npm packages of the Node peer, when missing or older than the lock file.
STAMP=node-ws/node_modules/.package-lock.json
if [ ! -f "$STAMP" ] || [ node-ws/package-lock.json -nt "$STAMP" ]; then
    echo "==> npm ci (tests/bench/node-ws)"
    (cd node-ws && npm ci --no-audit --no-fund)
fi

nginx_version=$("$(command -v nginx || echo /usr/sbin/nginx)" -v 2>&1 | head -1 | sed 's/^nginx version: //')
nchan_version=$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')
echo "peers: $(pushpin --version 2>/dev/null | head -1) ($(condure --version 2>/dev/null | head -1), $(zurl --version 2>/dev/null | head -1)), $nginx_version with nchan $nchan_version, node $(node --version), ws $(node -p "require('./node-ws/node_modules/ws/package.json').version")"
