#!/usr/bin/env bash
# Installs what the throughput benchmark (benches/throughput.sh) needs on a Debian 12 machine, and
# nothing more: iperf3, wireguard-go, wireguard-tools (`wg`), iproute2 (ip netns, veth, bridge),
# nftables, iputils-ping and jq (reads iperf3's JSON). The benchmark is not part of the test suite, so these packages are
# kept out of scripts/install-test-deps.sh.
#
# Idempotent: apt-get runs only when one of the commands is missing, so a second run is fast and
# touches nothing.
#
# Environment:
#   TSR_SKIP_APT=1  never call apt-get (report missing commands instead, exit 1)
set -euo pipefail

log() { printf 'install-bench-deps: %s\n' "$*" >&2; }

# command -> Debian package providing it
declare -A NEEDED=(
    [ip]=iproute2
    [nft]=nftables
    [ping]=iputils-ping
    [iperf3]=iperf3
    [wireguard-go]=wireguard-go
    [wg]=wireguard-tools
    [jq]=jq
)

missing_pkgs() {
    local cmd
    for cmd in "${!NEEDED[@]}"; do
        # /usr/sbin is not on every PATH (e.g. sudo with a minimal environment).
        if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
            printf '%s\n' "${NEEDED[$cmd]}"
        fi
    done | sort -u
}

pkgs=()
mapfile -t pkgs < <(missing_pkgs)
if [ "${#pkgs[@]}" -eq 0 ]; then
    log "all present"
    exit 0
fi
if [ "${TSR_SKIP_APT:-0}" = 1 ]; then
    log "missing packages (TSR_SKIP_APT=1, not installing): ${pkgs[*]}"
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    log "missing packages, and not root so not installing: ${pkgs[*]}"
    exit 1
fi
log "installing: ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# iperf3's postinst asks whether to start a system-wide daemon; the benchmark starts its own.
echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
still="$(missing_pkgs | tr '\n' ' ')"
if [ -n "$still" ]; then
    log "still missing after apt-get install: $still"
    exit 1
fi
log "installed"
