#!/usr/bin/env bash
# Throughput benchmark: TCP throughput (iperf3) and ping latency between two network namespaces,
# measured in one run over three paths:
#
#   (a) plain veth through a bridge, no tunnel: the baseline the kernel can do;
#   (b) wireguard-go (Debian's userspace WireGuard), one instance per namespace, MTU 1280;
#   (c) two of our `agent`s (release build) registered with our `control`, which runs in a hub
#       namespace on the same bridge.
#
# It prints a markdown table with absolute numbers and ratios against (a) and (b). It measures and
# prints; it never asserts, and it is not part of the test suite (see benches/README.md).
#
# Topology (every namespace name starts with a per-run prefix, so runs never collide):
#
#   <P>-hub: br0 10.99.0.254/24, `control serve`
#   <P>-h1:  eth0 10.99.0.1/24 --veth-- br0;  wireguard-go 10.200.0.1;  agent 100.64.0.x
#   <P>-h2:  eth0 10.99.0.2/24 --veth-- br0;  wireguard-go 10.200.0.2;  agent 100.64.0.y
#
# iperf3's client runs in h1 and sends to the server in h2. "tunnel CPU" is the user+system CPU
# time the two tunnel processes (both wireguard-go or both agents) used during the 1-stream run,
# as a percentage of one core; 200% would be both cores of a 2-core machine.
#
# Needs root (namespaces, TUN) and the tools from scripts/install-bench-deps.sh. Every process it
# starts is killed by PID, and every namespace deleted, on exit, including on failure or Ctrl-C.
#
# Usage: sudo benches/throughput.sh [--bin-dir DIR] [--time SECS] [--pings N] [--streams "1 4"]
#                                   [--rounds N] [--keep-logs] [--perf]
#   --bin-dir DIR  where `agent` and `control` are; without it the script runs
#                  `cargo build --release -p agent -p control` and uses
#                  ${CARGO_TARGET_DIR:-<repo>/target}/release
#   --time SECS    seconds per iperf3 run (default 10)
#   --pings N      pings per path, 0.05 s apart (default 50)
#   --streams LIST parallel-stream counts to run (default "1 4")
#   --rounds N     repeat the whole a, b, c sequence N times (default 1) and report the median of
#                  each iperf3 figure and the ping statistics over all rounds' replies together;
#                  interleaving the paths spreads the noise of a shared machine over all three
#   --keep-logs    keep the work directory (logs) instead of deleting it
#   --perf         profile both agents with `perf record -g` during round 1's first (c) iperf3
#                  run; the report is written to perf-agent.txt in the (kept) work directory
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR=""
SECS=10
PINGS=50
STREAMS="1 4"
KEEP_LOGS=0
ROUNDS=1
PERF=0

while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --time) SECS="$2"; shift 2 ;;
        --pings) PINGS="$2"; shift 2 ;;
        --streams) STREAMS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --perf) PERF=1; KEEP_LOGS=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "throughput: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

log() { printf 'throughput: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, TUN devices)"
for cmd in ip iperf3 ping wireguard-go wg jq awk $([ "$PERF" = 1 ] && echo perf); do
    command -v "$cmd" >/dev/null 2>&1 ||
        die "$cmd not found; run scripts/install-bench-deps.sh"
done
[ -c /dev/net/tun ] || die "/dev/net/tun is missing"

if [ -z "$BIN_DIR" ]; then
    log "building agent and control (release)"
    (cd "$REPO_ROOT" && cargo build --release --quiet -p agent -p control)
    BIN_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
fi
AGENT="$BIN_DIR/agent"
CONTROL="$BIN_DIR/control"
[ -x "$AGENT" ] && [ -x "$CONTROL" ] || die "no agent/control binaries in $BIN_DIR"

# Short prefix: interface names are limited to 15 bytes and carry it too.
P="tp$$"
NS_HUB="$P-hub"
NS_H1="$P-h1"
NS_H2="$P-h2"
WORK="$(mktemp -d "/tmp/throughput.$P.XXXXXX")"
PIDS=()

cleanup() {
    local rc=$? pid ns
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    # Anything else still living in our namespaces (e.g. a child a tool forked) goes too.
    for ns in "$NS_HUB" "$NS_H1" "$NS_H2"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "/var/run/wireguard/${P}w1.sock" "/var/run/wireguard/${P}w2.sock"
    if [ "$KEEP_LOGS" = 1 ] || [ "$rc" -ne 0 ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in namespace $1 in the background, logging to $2, and records its PID. `ip netns
# exec` execs the command, so the PID is the command's own.
spawn() {
    local ns="$1" logfile="$2"
    shift 2
    ip netns exec "$ns" "$@" >"$logfile" 2>&1 &
    PIDS+=("$!")
}

# Retries "$@" once a second until it succeeds or $1 seconds pass.
retry() {
    local secs="$1" i
    shift
    for ((i = 0; i < secs; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# --- topology ---------------------------------------------------------------------------------

log "namespaces $P-{hub,h1,h2}, work dir $WORK"
ip netns add "$NS_HUB"
ip -n "$NS_HUB" link set lo up
ip -n "$NS_HUB" link add br0 type bridge
ip -n "$NS_HUB" addr add 10.99.0.254/24 dev br0
ip -n "$NS_HUB" link set br0 up
i=1
for ns in "$NS_H1" "$NS_H2"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Created inside the hub namespace so nothing ever appears in the caller's namespace.
    ip -n "$NS_HUB" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$NS_HUB" link set "v$i" master br0 up
    ip -n "$ns" addr add "10.99.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    i=$((i + 1))
done
retry 5 ip netns exec "$NS_H1" ping -c 1 -W 1 10.99.0.2 || die "veth path does not work"

# --- (b) wireguard-go -------------------------------------------------------------------------

# wireguard-go's control socket is /var/run/wireguard/<ifname>.sock, shared by all namespaces, so
# each instance needs a name unique on the machine.
WG1="${P}w1"
WG2="${P}w2"
umask 077
wg genkey >"$WORK/wg1.key"
wg genkey >"$WORK/wg2.key"
umask 022
WG1_PUB="$(wg pubkey <"$WORK/wg1.key")"
WG2_PUB="$(wg pubkey <"$WORK/wg2.key")"
spawn "$NS_H1" "$WORK/wg1.log" env LOG_LEVEL=error wireguard-go -f "$WG1"
WG1_PID="${PIDS[-1]}"
spawn "$NS_H2" "$WORK/wg2.log" env LOG_LEVEL=error wireguard-go -f "$WG2"
WG2_PID="${PIDS[-1]}"
retry 10 ip -n "$NS_H1" link show "$WG1" || die "wireguard-go did not create $WG1 (see $WORK/wg1.log)"
retry 10 ip -n "$NS_H2" link show "$WG2" || die "wireguard-go did not create $WG2 (see $WORK/wg2.log)"
retry 10 test -S "/var/run/wireguard/$WG1.sock" || die "no UAPI socket for $WG1"
retry 10 test -S "/var/run/wireguard/$WG2.sock" || die "no UAPI socket for $WG2"
ip netns exec "$NS_H1" wg set "$WG1" listen-port 51820 private-key "$WORK/wg1.key" \
    peer "$WG2_PUB" allowed-ips 10.200.0.2/32 endpoint 10.99.0.2:51820
ip netns exec "$NS_H2" wg set "$WG2" listen-port 51820 private-key "$WORK/wg2.key" \
    peer "$WG1_PUB" allowed-ips 10.200.0.1/32 endpoint 10.99.0.1:51820
ip -n "$NS_H1" addr add 10.200.0.1/24 dev "$WG1"
ip -n "$NS_H2" addr add 10.200.0.2/24 dev "$WG2"
ip -n "$NS_H1" link set "$WG1" mtu 1280 up
ip -n "$NS_H2" link set "$WG2" mtu 1280 up
retry 10 ip netns exec "$NS_H1" ping -c 1 -W 1 10.200.0.2 || die "wireguard-go tunnel does not work"

# --- (c) our control and agents ---------------------------------------------------------------

spawn "$NS_HUB" "$WORK/control.log" env NO_COLOR=1 "$CONTROL" serve \
    --listen 10.99.0.254:8080 --db "$WORK/control.db" --base-domain tail.test \
    --derp-port 8443 --stun-port 3478 --derp-host 10.99.0.254 --data-dir "$WORK"
retry 10 ip netns exec "$NS_HUB" bash -c 'exec 3<>/dev/tcp/10.99.0.254/8080' ||
    die "control did not start listening (see $WORK/control.log)"
KEY="$(ip netns exec "$NS_HUB" "$CONTROL" keys create --db "$WORK/control.db" \
    --base-domain tail.test --reusable 2>/dev/null | head -1)"
[ -n "$KEY" ] || die "could not create an auth key"
AGENT_PIDS=()
for h in h1 h2; do
    # info, not debug: per-packet debug logging would be measured along with the data path.
    spawn "$P-$h" "$WORK/agent-$h.log" env NO_COLOR=1 RUST_LOG=info "$AGENT" daemon \
        --state-dir "$WORK/$h" --socket "$WORK/$h.sock" --tun agent0 --port 41641
    AGENT_PIDS+=("${PIDS[-1]}")
done
for h in h1 h2; do
    retry 10 test -S "$WORK/$h.sock" || die "agent in $h did not start (see $WORK/agent-$h.log)"
    ip netns exec "$P-$h" "$AGENT" up --socket "$WORK/$h.sock" --authkey "$KEY" \
        --login-server http://10.99.0.254:8080 --hostname "$h" >>"$WORK/agent-$h.up" 2>&1 ||
        die "agent up in $h failed (see $WORK/agent-$h.up)"
done
tailnet_ip() {
    ip -n "$1" -4 -o addr show dev agent0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'
}
has_tailnet_ip() { [ -n "$(tailnet_ip "$1")" ]; }
retry 15 has_tailnet_ip "$NS_H2" || die "agent in h2 got no tailnet address"
AGENT_H2_IP="$(tailnet_ip "$NS_H2")"
retry 20 ip netns exec "$NS_H1" ping -c 1 -W 1 "$AGENT_H2_IP" ||
    die "agents cannot reach each other (see $WORK/agent-h1.log)"
# Measure the direct path, not the DERP relay: `agent ping` reports once a pong came back direct.
direct_path() {
    ip netns exec "$NS_H1" "$AGENT" ping --socket "$WORK/h1.sock" -c 10 h2 2>&1 |
        grep -q "direct connection established"
}
if ! retry 20 direct_path; then
    log "warning: no direct path between the agents; (c) is measured over whatever path exists"
fi
ip netns exec "$NS_H1" "$AGENT" status --socket "$WORK/h1.sock" >"$WORK/agent-status.txt" 2>&1 || true

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- measurements -----------------------------------------------------------------------------

# CPU ticks (user + system) used so far by the given PIDs.
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}
HZ="$(getconf CLK_TCK)"

# iperf3 <case> <dst> <streams> <tunnel pids...>: prints "Mbit/s retransmits cpu%".
run_iperf() {
    local case="$1" dst="$2" streams="$3"
    shift 3
    local json="$WORK/iperf-$case-$streams.json" t0 t1 c0 c1 mbps retr cpu
    c0="$(cpu_ticks "$@")"
    t0="$(date +%s%N)"
    ip netns exec "$NS_H1" iperf3 -c "$dst" -t "$SECS" -P "$streams" -J >"$json" 2>&1 ||
        { log "iperf3 failed for ($case), $streams streams (see $json)"; echo "- - -"; return; }
    t1="$(date +%s%N)"
    c1="$(cpu_ticks "$@")"
    mbps="$(jq -r '.end.sum_received.bits_per_second / 1e6' "$json")"
    retr="$(jq -r '.end.sum_sent.retransmits // "-"' "$json")"
    if [ $# -gt 0 ]; then
        cpu="$(awk -v c="$((c1 - c0))" -v hz="$HZ" -v ns="$((t1 - t0))" \
            'BEGIN { printf "%.0f", 100 * (c / hz) / (ns / 1e9) }')"
    else
        cpu="-"
    fi
    echo "$mbps $retr $cpu"
}

# run_ping <case> <dst>: prints each reply's round-trip time in ms, one a line.
run_ping() {
    local out="$WORK/ping-$1.txt"
    ip netns exec "$NS_H1" ping -c "$PINGS" -i 0.05 -W 1 "$2" >"$out" 2>&1 || true
    grep -o 'time=[0-9.]*' "$out" | cut -d= -f2
}

# ping_stats <sent> < times: prints "min avg p99 lost" in ms. p99 is nearest-rank, so with fewer
# than 100 replies it is the maximum.
ping_stats() {
    sort -g | awk -v sent="$1" '
        { v[NR] = $1; sum += $1 }
        END {
            if (NR == 0) { print "- - - " sent; exit }
            r = int(0.99 * NR); if (r < 0.99 * NR) r++; if (r < 1) r = 1
            printf "%.3f %.3f %.3f %d\n", v[1], sum / NR, v[r], sent - NR
        }'
}

# One iperf3 server, in h2, listening on every address (veth, wireguard-go, agent).
spawn "$NS_H2" "$WORK/iperf3-server.log" iperf3 -s
retry 10 ip netns exec "$NS_H1" bash -c 'exec 3<>/dev/tcp/10.99.0.2/5201' ||
    die "iperf3 server did not start"

declare -A DST=([a]=10.99.0.2 [b]=10.200.0.2 [c]="$AGENT_H2_IP")
declare -A TUNNEL_PIDS=([a]="" [b]="$WG1_PID $WG2_PID" [c]="${AGENT_PIDS[*]}")
declare -A NAME=(
    [a]="(a) veth, no tunnel"
    [b]="(b) wireguard-go"
    [c]="(c) our agent"
)
declare -A R
for ((round = 1; round <= ROUNDS; round++)); do
    for c in a b c; do
        # Warm up: a fresh handshake or path change must not be in the figures.
        ip netns exec "$NS_H1" ping -c 3 -i 0.2 -W 1 "${DST[$c]}" >/dev/null 2>&1 || true
        for s in $STREAMS; do
            log "round $round/$ROUNDS, ${NAME[$c]}: iperf3, $s stream(s), $SECS s"
            perf_pid=""
            if [ "$PERF" = 1 ] && [ "$c" = c ] && [ "$round" = 1 ] && [ "$s" = "${STREAMS%% *}" ]; then
                perf record -q -F 499 -g -o "$WORK/perf-agent.data" \
                    -p "$(IFS=,; echo "${AGENT_PIDS[*]}")" -- sleep "$((SECS > 2 ? SECS - 1 : 1))" \
                    >"$WORK/perf-record.log" 2>&1 &
                perf_pid="$!"
                PIDS+=("$perf_pid")
            fi
            # shellcheck disable=SC2086 # the PID list is meant to split
            read -r "R[$c,$s,$round,mbps]" "R[$c,$s,$round,retr]" "R[$c,$s,$round,cpu]" \
                <<<"$(run_iperf "$c-$round" "${DST[$c]}" "$s" ${TUNNEL_PIDS[$c]})"
            if [ -n "$perf_pid" ]; then
                wait "$perf_pid" || log "perf record failed (see $WORK/perf-record.log)"
                perf report -i "$WORK/perf-agent.data" --no-children --percent-limit 0.5 \
                    --stdio -g none --sort comm,dso,symbol >"$WORK/perf-agent.txt" 2>/dev/null ||
                    log "perf report failed"
            fi
            sleep 1
        done
        log "round $round/$ROUNDS, ${NAME[$c]}: $PINGS pings"
        run_ping "$c-$round" "${DST[$c]}" >>"$WORK/ping-$c.ms"
    done
done

# The median over rounds of one figure: median <case> <streams> <field>.
median() {
    local round
    for ((round = 1; round <= ROUNDS; round++)); do echo "${R[$1,$2,$round,$3]}"; done |
        { grep -v '^-$' || true; } | sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) print "-"
            else if (NR % 2) print v[(NR + 1) / 2]
            else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
for c in a b c; do
    for s in $STREAMS; do
        for f in mbps retr cpu; do R[$c,$s,$f]="$(median "$c" "$s" "$f")"; done
    done
    read -r "R[$c,pmin]" "R[$c,pavg]" "R[$c,p99]" "R[$c,lost]" \
        <<<"$(ping_stats "$((PINGS * ROUNDS))" <"$WORK/ping-$c.ms")"
done

# --- report -----------------------------------------------------------------------------------

ratio() { # ratio X Y -> X/Y with 2 decimals, or "-" when either is missing or Y is 0
    awk -v x="$1" -v y="$2" 'BEGIN {
        if (x == "-" || y == "-" || y + 0 == 0) print "-"; else printf "%.2f\n", x / y }'
}
# fmt_mbps X: X rounded to a whole number; "-" stays "-".
fmt_mbps() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.0f\n", x }'; }

FIRST="${STREAMS%% *}"
{
    echo
    cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "Throughput benchmark, $(date -u +%Y-%m-%d), $(nproc) cores (${cpu_model:-unknown CPU})," \
        "Linux $(uname -r); iperf3 ${SECS} s h1 -> h2, median of $ROUNDS round(s);" \
        "$((PINGS * ROUNDS)) pings at 0.05 s; load average before $LOAD_BEFORE," \
        "after $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    header="| path |"
    rule="|---|"
    for s in $STREAMS; do
        header+=" TCP $s stream(s) Mbit/s | ×(a) | ×(b) |"
        rule+="---|---|---|"
    done
    header+=" retransmits ($FIRST) | tunnel CPU ($FIRST) | cores per Gbit/s ($FIRST) | ping min / avg / p99 ms | avg ×(a) | avg ×(b) | lost |"
    rule+="---|---|---|---|---|---|---|"
    echo "$header"
    echo "$rule"
    for c in a b c; do
        row="| ${NAME[$c]} |"
        for s in $STREAMS; do
            row+=" $(fmt_mbps "${R[$c,$s,mbps]}") | $(ratio "${R[$c,$s,mbps]}" "${R[a,$s,mbps]}")"
            row+=" | $(ratio "${R[$c,$s,mbps]}" "${R[b,$s,mbps]}") |"
        done
        cpu="${R[$c,$FIRST,cpu]}"
        [ "$cpu" = "-" ] || cpu="$(fmt_mbps "$cpu")%"
        row+=" $(fmt_mbps "${R[$c,$FIRST,retr]}") | $cpu |"
        # CPU cost per unit of throughput: fairer than raw CPU when the machine is saturated.
        row+=" $(awk -v c="${R[$c,$FIRST,cpu]}" -v m="${R[$c,$FIRST,mbps]}" 'BEGIN {
            if (c == "-" || m == "-" || m + 0 == 0) print "-"; else printf "%.2f\n", (c / 100) / (m / 1000) }') |"
        row+=" ${R[$c,pmin]} / ${R[$c,pavg]} / ${R[$c,p99]} |"
        row+=" $(ratio "${R[$c,pavg]}" "${R[a,pavg]}") | $(ratio "${R[$c,pavg]}" "${R[b,pavg]}") |"
        row+=" ${R[$c,lost]}/$((PINGS * ROUNDS)) |"
        echo "$row"
    done
    echo
    echo "agent path: $(grep -o 'direct [0-9.:]*\|relay "[^"]*"' "$WORK/agent-status.txt" | head -1)"
} | tee "$WORK/result.md"
