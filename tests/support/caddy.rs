//! Configuring the official client: `caddy` with the caddy-tailscale plugin (tailscale.com
//! v1.90.9), set up as in official-client-interop.md §8.
//!
//! [`caddy_env`] is the environment every caddy process gets (started from an empty environment,
//! like `env -i`): logs upload and port mapping off, network assumed up, and `HOME`/XDG dirs in
//! the run directory, DEBUG logging; `E2E_CADDY_DEBUG=1` adds the client's register/map/noise
//! dumps. [`Caddyfile`] renders a config with tsnet nodes, a site served on a node, and a loopback
//! site that reverse-proxies over the tailnet. The auth key is passed as
//! `TS_TEST_AUTHKEY` in the environment, never written into the config file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Environment for a caddy process whose scratch space is `run_dir`.
pub fn caddy_env(run_dir: &Path) -> Vec<(String, String)> {
    let home = run_dir.join("home");
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), s(home.clone())),
        ("XDG_CONFIG_HOME".into(), s(home.join(".config"))),
        ("XDG_DATA_HOME".into(), s(home.join(".local/share"))),
        // No log upload to log.tailscale.com, not even DNS for it.
        ("TS_NO_LOGS_NO_SUPPORT".into(), "true".into()),
        // No UPnP/NAT-PMP/PCP probes to a gateway.
        ("TS_DISABLE_PORTMAPPER".into(), "1".into()),
        // Only lo and a dead-end veth are up; don't pause the control client.
        ("TS_ASSUME_NETWORK_UP_FOR_TEST".into(), "1".into()),
    ];
    // E2E_CADDY_DEBUG=1: the client's own protocol dumps (register and map JSON, noise dials).
    if std::env::var_os("E2E_CADDY_DEBUG").is_some_and(|v| v == "1") {
        for var in ["TS_DEBUG_REGISTER", "TS_DEBUG_MAP", "TS_DEBUG_NOISE_DIAL"] {
            env.push((var.into(), "1".into()));
        }
    }
    // DEBUG is where tsnet reports control errors ("fetch control key", noise dial failures);
    // the logs only go to files, and a failure prints their tails.
    env.push(("TS_LOG_LEVEL".into(), "DEBUG".into()));
    env
}

/// A tsnet node in a Caddyfile's `tailscale` block.
#[derive(Debug, Clone)]
pub struct CaddyNode {
    pub name: String,
    /// magicsock UDP port; fixed ports keep logs readable (the namespace is fresh).
    pub port: u16,
}

/// A Caddyfile for `caddy run --adapter caddyfile`.
#[derive(Debug, Clone)]
pub struct Caddyfile {
    pub control_url: String,
    /// Caddy storage (certificates etc.); must differ between processes.
    pub storage_dir: PathBuf,
    /// tsnet state; each node gets `<state_dir>/<node>`. Use a fresh one per run.
    pub state_dir: PathBuf,
    pub nodes: Vec<CaddyNode>,
    /// `(node, body)`: serve `respond "<body>" 200` on port 80 of that node.
    pub serve: Option<(String, String)>,
    /// `(listen port, upstream, via node)`: `http://127.0.0.1:<port>` reverse-proxies to
    /// `http://<upstream>` using the tailscale transport of `via node`.
    pub proxy: Option<(u16, String, String)>,
}

impl Caddyfile {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{{");
        let _ = writeln!(s, "\tadmin off");
        let _ = writeln!(s, "\tauto_https off");
        let _ = writeln!(s, "\tstorage file_system {}", self.storage_dir.display());
        // The default logger; an extra named one would print every line twice.
        let _ = writeln!(
            s,
            "\tlog {{\n\t\toutput stderr\n\t\tlevel {{$TS_LOG_LEVEL:INFO}}\n\t}}"
        );
        let _ = writeln!(s, "\ttailscale {{");
        let _ = writeln!(s, "\t\tcontrol_url {}", self.control_url);
        let _ = writeln!(s, "\t\tauth_key {{$TS_TEST_AUTHKEY}}");
        let _ = writeln!(s, "\t\tstate_dir {}", self.state_dir.display());
        let _ = writeln!(s, "\t\tephemeral");
        for node in &self.nodes {
            let _ = writeln!(s, "\t\t{} {{\n\t\t\tport {}\n\t\t}}", node.name, node.port);
        }
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "}}");
        if let Some((node, body)) = &self.serve {
            let _ = writeln!(
                s,
                "\n:80 {{\n\tbind tailscale/{node}\n\trespond \"{body}\" 200\n}}"
            );
        }
        if let Some((port, upstream, via)) = &self.proxy {
            let _ = writeln!(
                s,
                "\nhttp://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n\treverse_proxy http://{upstream} {{\n\t\ttransport tailscale {via}\n\t}}\n}}"
            );
        }
        s
    }
}

/// Log fragments that mean the client tried to reach something off this machine. The namespace
/// has no route out, so such attempts fail locally, but they point at a server-side mistake
/// (official-client-interop.md §6: empty or public DERP map, no STUN answer, missing
/// `disable-captive-portal-detection`).
const EGRESS_MARKERS: &[&str] = &[
    "network is unreachable",
    "no route to host",
    "tailscale.com",
    "generate_204",
];

/// Lines of a client log that show an attempt to leave the machine (at most 5).
pub fn egress_attempts(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            EGRESS_MARKERS.iter().any(|m| l.contains(m))
        })
        .take(5)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spots_egress_attempts() {
        let log = "ok line\ndial tcp 1.2.3.4:443: connect: network is unreachable\nfine";
        assert_eq!(egress_attempts(log).len(), 1);
        assert!(egress_attempts("canceling captive portal context").is_empty());
    }

    #[test]
    fn renders_the_two_node_recipe() {
        let cf = Caddyfile {
            control_url: "http://127.0.0.1:18080".into(),
            storage_dir: "/run/caddy-data".into(),
            state_dir: "/run/ts-state".into(),
            nodes: vec![
                CaddyNode {
                    name: "nodea".into(),
                    port: 41641,
                },
                CaddyNode {
                    name: "nodeb".into(),
                    port: 41642,
                },
            ],
            serve: Some(("nodea".into(), "hello from A".into())),
            proxy: Some((18081, "nodea:80".into(), "nodeb".into())),
        };
        let text = cf.render();
        assert!(text.contains("control_url http://127.0.0.1:18080"));
        assert!(text.contains("auth_key {$TS_TEST_AUTHKEY}"));
        assert!(text.contains("nodeb {\n\t\t\tport 41642\n\t\t}"));
        assert!(text.contains("bind tailscale/nodea\n\trespond \"hello from A\" 200"));
        assert!(text.contains("reverse_proxy http://nodea:80 {\n\t\ttransport tailscale nodeb"));
    }
}
