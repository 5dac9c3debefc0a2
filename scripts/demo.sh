#!/usr/bin/env bash
# A complete local tailnet in a network namespace: the `control` server (with its DERP relay and
# STUN), and two nodes running the official Tailscale client (tsnet, inside caddy) that reach
# each other by MagicDNS name through our control plane. Until our own `agent` lands (issue 3),
# the nodes are official clients; the demo then swaps them in.
#
# Usage: sudo scripts/demo.sh          # runs until Ctrl-C (or exits after the check without a tty)
# Nothing leaves the machine: the namespace has only loopback and a dead-end veth pair.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh needs root (it creates a network namespace); run it with sudo" >&2
    exit 1
fi

caddy=$(bash scripts/install-test-deps.sh | sed -n 's/^caddy: //p' | tail -1)
[ -x "$caddy" ] || { echo "could not install the official client (caddy)" >&2; exit 1; }
cargo build --quiet -p control
control="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/control"

ns="tsr-demo-$$"
run=$(mktemp -d /tmp/tailnet-demo.XXXXXX)
pids=()
cleanup() {
    # Everything the demo started runs inside its namespace: stop those processes, then the
    # `ip netns exec` wrappers, then delete the namespace.
    inside=$(ip netns pids "$ns" 2>/dev/null || true)
    for p in $inside "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in $inside "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    echo "stopped; logs are in $run"
}
trap cleanup EXIT

ip netns add "$ns"
inns() { ip netns exec "$ns" "$@"; }
inns ip link set lo up
inns ip link add veth0 type veth peer name veth1
inns ip addr add 10.213.0.1/24 dev veth0
inns ip link set veth0 up
inns ip link set veth1 up

echo "==> control server (HTTP 127.0.0.1:18080, DERP/TLS :18443, STUN :13478) in namespace $ns"
inns env NO_COLOR=1 "$control" serve --listen 127.0.0.1:18080 --db "$run/control.db" \
    --base-domain tail.test --derp-port 18443 --stun-port 13478 --derp-host 127.0.0.1 \
    --data-dir "$run" >"$run/control.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
    inns curl -fs 'http://127.0.0.1:18080/key?v=130' >/dev/null 2>&1 && break
    sleep 0.2
done
key=$(inns "$control" keys create --db "$run/control.db" --base-domain tail.test --reusable --ephemeral 2>/dev/null | head -1)

cat >"$run/Caddyfile" <<CADDY
{
	admin off
	auto_https off
	storage file_system $run/caddy-data
	tailscale {
		control_url http://127.0.0.1:18080
		auth_key {\$TS_AUTHKEY_DEMO}
		state_dir $run/ts-state
		ephemeral
		web {
			port 41641
		}
		laptop {
			port 41642
		}
	}
}

:80 {
	bind tailscale/web
	respond "hello from web.tail.test" 200
}

http://127.0.0.1:18081 {
	bind 127.0.0.1
	reverse_proxy http://web.tail.test:80 {
		transport tailscale laptop
	}
}
CADDY
mkdir -p "$run/home"
echo "==> two official tsnet nodes, 'web' and 'laptop', joining with an auth key"
inns env -i PATH=/usr/bin:/bin HOME="$run/home" TS_NO_LOGS_NO_SUPPORT=true TS_DISABLE_PORTMAPPER=1 \
    TS_ASSUME_NETWORK_UP_FOR_TEST=1 TS_AUTHKEY_DEMO="$key" \
    "$caddy" run --adapter caddyfile --config "$run/Caddyfile" >"$run/caddy.log" 2>&1 &
pids+=($!)

echo "==> laptop fetches http://web.tail.test/ over the tailnet"
ok=0
for _ in $(seq 1 120); do
    if out=$(inns curl -fs -m 2 http://127.0.0.1:18081/ 2>/dev/null); then
        echo "    $out"
        ok=1
        break
    fi
    sleep 0.5
done
[ "$ok" = 1 ] || { echo "no answer; see $run/*.log" >&2; exit 1; }
sleep 1
echo "==> control nodes list"
inns "$control" nodes list --db "$run/control.db" --base-domain tail.test
if [ -t 0 ]; then
    echo "tailnet running; try: sudo ip netns exec $ns curl http://127.0.0.1:18081/   (Ctrl-C stops)"
    wait
fi
