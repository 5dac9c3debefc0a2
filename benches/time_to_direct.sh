#!/usr/bin/env bash
# Time to a direct path (and to the first answered ping) in the NAT lab: our agent vs the
# official client (tsnet in caddy, tailscale.com v1.90.9) as the peer of our agent, with the
# peer behind easy and behind hard NAT. Prints a table of medians and the ratio.
#
# It is an ignored test in tests/nat_lab.rs (`bench_time_to_direct`) so that it reuses the lab
# (tests/support/natlab.rs); it is not part of CI. Needs root, nft, conntrack, miniupnpd and
# caddy (scripts/install-test-deps.sh).
#
#   bash benches/time_to_direct.sh            # 5 runs per cell
#   BENCH_RUNS=9 bash benches/time_to_direct.sh
#   BENCH_ONLY=hard-official bash benches/time_to_direct.sh   # one cell (easy|hard - ours|official)
#
# The agent and control binaries are built first (debug, like the e2e tests); set AGENT_BIN /
# CONTROL_BIN to measure other builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "time_to_direct: needs root (network namespaces)" >&2
    exit 1
fi
if [ -z "${AGENT_BIN:-}" ] || [ -z "${CONTROL_BIN:-}" ]; then
    cargo build -p agent -p control
fi
export E2E_STRICT=1 BENCH_RUNS="${BENCH_RUNS:-5}"
exec cargo test -p e2e --test nat_lab bench_time_to_direct -- --ignored --exact \
    --test-threads=1 --nocapture
