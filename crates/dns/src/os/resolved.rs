//! I/O: DNS through systemd-resolved, per link.
//!
//! The TUN link gets DNS server 100.100.100.100 and routing domains (`~example.ts.net`, the
//! tailnet reverse zones, split-DNS suffixes; `~.` plus default-route when control sets global
//! resolvers) and the search domains; `resolvectl revert` undoes it all, and the settings also
//! vanish with the link itself when the TUN device is removed, so a crash leaves nothing behind.
//!
//! This drives `resolvectl` (std::process) rather than D-Bus through zbus on purpose: the
//! calls are rare (a DNS config change), `resolvectl` ships with systemd-resolved wherever it
//! runs and speaks the same D-Bus API (`SetLinkDNS`, `SetLinkDomains`, `RevertLink`), and it
//! keeps an async D-Bus stack and its dependency tree out of the agent. Every call is bounded by
//! a timeout so a wedged bus cannot hang the agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{OsDnsSettings, OsError};
use crate::resolv_conf;

/// How long one `resolvectl` call may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Where resolved lists its real upstreams (not the stub).
pub const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// Configures one link through systemd-resolved.
#[derive(Debug, Clone)]
pub struct ResolvedManager {
    link: String,
    upstreams_file: PathBuf,
}

impl ResolvedManager {
    pub fn new(link: impl Into<String>, upstreams_file: impl Into<PathBuf>) -> Self {
        Self {
            link: link.into(),
            upstreams_file: upstreams_file.into(),
        }
    }

    /// Whether the host uses systemd-resolved: /etc/resolv.conf sends queries to its stub
    /// (`nameserver 127.0.0.53`) and resolved answers on D-Bus. The content decides, not where
    /// a symlink points: under `ip netns exec` the link may still point at the stub while the
    /// namespace's own file is mounted on top, and that namespace must be managed directly.
    pub fn detect(resolv_conf: &Path) -> bool {
        let uses_stub = std::fs::read_to_string(resolv_conf)
            .map(|t| resolv_conf::nameservers(&t).contains(&resolv_conf::RESOLVED_STUB))
            .unwrap_or(false);
        uses_stub && run(&["status", "--no-pager"]).is_ok()
    }

    /// Sets the link's DNS servers and domains.
    pub fn apply(&self, s: &OsDnsSettings) -> Result<(), OsError> {
        let servers: Vec<String> = s.nameservers.iter().map(ToString::to_string).collect();
        let mut args = vec!["dns", self.link.as_str()];
        args.extend(servers.iter().map(String::as_str));
        run(&args)?;
        let mut domains: Vec<String> = s.search_domains.clone();
        for m in &s.match_domains {
            let routed = format!("~{m}");
            if !s.search_domains.contains(m) && !domains.contains(&routed) {
                domains.push(routed);
            }
        }
        let mut args = vec!["domain", self.link.as_str()];
        args.extend(domains.iter().map(String::as_str));
        run(&args)?;
        let default_route = if s.default_route { "yes" } else { "no" };
        run(&["default-route", self.link.as_str(), default_route])?;
        tracing::info!(link = %self.link, ?domains, "DNS configured (systemd-resolved)");
        Ok(())
    }

    /// Drops everything set on the link.
    pub fn revert(&self) -> Result<(), OsError> {
        run(&["revert", self.link.as_str()])
    }

    /// The upstreams resolved itself uses (never its stub or us).
    pub fn original_upstreams(&self) -> Vec<SocketAddr> {
        std::fs::read_to_string(&self.upstreams_file)
            .map(|t| resolv_conf::upstreams(&t))
            .unwrap_or_default()
    }
}

/// Runs `resolvectl ARGS` with a timeout; a non-zero exit is an error carrying its stderr.
fn run(args: &[&str]) -> Result<(), OsError> {
    let command = format!("resolvectl {}", args.join(" "));
    let fail = |reason: String| OsError::Command {
        command: command.clone(),
        reason,
    };
    let mut child = Command::new("resolvectl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(fail(format!("{status}: {}", err.trim())));
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {}s", TIMEOUT.as_secs())));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
}
