#!/usr/bin/env bash
# A complete local tailnet in network namespaces: the `control` server (with its DERP relay and
# STUN) in a "hub" namespace with a bridge, and three hosts, each running `agent daemon`, that
# join with an auth key and reach each other over WireGuard: plain `ping db` and `curl` by
# MagicDNS name (the agent's resolver at 100.100.100.100, wired into each namespace's own
# resolv.conf), `agent ping` by FQDN, and `agent status` showing direct paths.
#
# Usage: sudo scripts/demo.sh        # runs until Ctrl-C (or exits after the checks without a tty)
# Nothing leaves the machine: the namespaces have no route to anything but their own bridge.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh needs root (it creates network namespaces); run it with sudo" >&2
    exit 1
fi
command -v ip >/dev/null || { echo "demo.sh needs iproute2 (apt-get install iproute2)" >&2; exit 1; }

echo "==> building control and agent"
cargo build --quiet -p control -p agent
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

p="tsd$$"
run=$(mktemp -d /tmp/tailnet-demo.XXXXXX)
hosts=(web db laptop)
cleanup() {
    for n in hub "${hosts[@]}"; do
        for pid in $(ip netns pids "$p-$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    sleep 1
    for n in hub "${hosts[@]}"; do
        for pid in $(ip netns pids "$p-$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$p-$n" 2>/dev/null || true
        rm -rf "/etc/netns/$p-$n"
    done
    echo "stopped; logs are in $run"
}
trap cleanup EXIT

# `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: each host's
# agent manages its own namespace's copy, never the machine's.
for n in hub "${hosts[@]}"; do
    mkdir -p "/etc/netns/$p-$n"
    echo "nameserver 127.0.0.1" >"/etc/netns/$p-$n/resolv.conf"
done
ip netns add "$p-hub"
ip -n "$p-hub" link set lo up
ip -n "$p-hub" link add br0 type bridge
ip -n "$p-hub" addr add 10.99.0.254/24 dev br0
ip -n "$p-hub" link set br0 up
i=1
for h in "${hosts[@]}"; do
    ip netns add "$p-$h"
    ip -n "$p-$h" link set lo up
    ip link add "v$i$p" type veth peer name eth0 netns "$p-$h"
    ip link set "v$i$p" netns "$p-hub"
    ip -n "$p-hub" link set "v$i$p" master br0 up
    ip -n "$p-$h" addr add "10.99.0.$i/24" dev eth0
    ip -n "$p-$h" link set eth0 up
    i=$((i + 1))
done

echo "==> control server on 10.99.0.254 (HTTP :8080, DERP/TLS :8443, STUN :3478)"
ip netns exec "$p-hub" env NO_COLOR=1 "$bin/control" serve --listen 10.99.0.254:8080 \
    --db "$run/control.db" --base-domain tail.test --derp-port 8443 --stun-port 3478 \
    --derp-host 10.99.0.254 --data-dir "$run" >"$run/control.log" 2>&1 &
for _ in $(seq 1 50); do
    ip netns exec "$p-hub" "$bin/control" nodes list --db "$run/control.db" >/dev/null 2>&1 && break
    sleep 0.2
done
key=$(ip netns exec "$p-hub" "$bin/control" keys create --db "$run/control.db" \
    --base-domain tail.test --reusable 2>/dev/null | head -1)

for h in "${hosts[@]}"; do
    ip netns exec "$p-$h" env NO_COLOR=1 "$bin/agent" daemon --state-dir "$run/$h" \
        --socket "$run/$h.sock" --tun agent0 --port 41641 >"$run/$h.log" 2>&1 &
done
sleep 1
for h in "${hosts[@]}"; do
    echo "==> $h: agent up"
    AGENT_AUTHKEY="$key" ip netns exec "$p-$h" "$bin/agent" up --socket "$run/$h.sock" \
        --login-server http://10.99.0.254:8080 --hostname "$h"
done
sleep 2
echo "==> laptop: agent ping web.tail.test (by MagicDNS name)"
ip netns exec "$p-laptop" "$bin/agent" ping --socket "$run/laptop.sock" web.tail.test
echo "==> laptop: ping db (MagicDNS short name, through the OS resolver)"
ip netns exec "$p-laptop" cat /etc/resolv.conf
ip netns exec "$p-laptop" ping -c 3 -W 2 db
echo "==> laptop: HTTP to web.tail.test:8000 by name"
ip netns exec "$p-web" python3 -m http.server 8000 --bind :: >"$run/web-http.log" 2>&1 &
sleep 1
ip netns exec "$p-laptop" curl -sS -o /dev/null -w "HTTP %{http_code} from %{remote_ip}\n" \
    --max-time 10 http://web.tail.test:8000/
echo "==> laptop: agent dns query db"
ip netns exec "$p-laptop" "$bin/agent" dns query --socket "$run/laptop.sock" db
echo "==> laptop: agent status"
ip netns exec "$p-laptop" "$bin/agent" status --socket "$run/laptop.sock"
echo "==> control nodes list"
ip netns exec "$p-hub" "$bin/control" nodes list --db "$run/control.db" --base-domain tail.test
if [ -t 0 ]; then
    echo "tailnet running; try: sudo ip netns exec $p-laptop $bin/agent status --socket $run/laptop.sock   (Ctrl-C stops)"
    wait
fi
