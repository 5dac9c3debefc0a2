//! OS DNS integration: pointing the host's resolver at 100.100.100.100, and undoing it.
//!
//! [`OsConfigurator::detect`] picks by what the host runs:
//! - [`resolved`]: systemd-resolved, when /etc/resolv.conf points at its stub and it answers on
//!   D-Bus: per-link DNS server and routing domains on the TUN link;
//! - [`direct`]: otherwise, /etc/resolv.conf itself, backed up into the state directory and
//!   restored later (also after a crash, see [`recover`]).
//!
//! [`OsDnsSettings::from_config`] (pure) turns a [`DnsConfig`] into what to set. Everything
//! here is blocking (files, `resolvectl`) and quick; the agent calls it on config changes only.

pub mod direct;
pub mod resolved;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::DnsConfig;
use crate::names::TAILNET_V6_REVERSE_ZONE;
pub use direct::{DirectManager, Restored};
pub use resolved::ResolvedManager;

/// The backup file's name in the state directory.
pub const BACKUP_FILE: &str = "resolv.conf.agent-backup";

/// How the OS's DNS is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OsMode {
    /// Per-link settings in systemd-resolved.
    Resolved,
    /// /etc/resolv.conf written by the agent.
    Direct,
    /// The OS is left alone (`--accept-dns=false`, MagicDNS off, or not connected).
    Off,
}

impl std::fmt::Display for OsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Resolved => "resolved",
            Self::Direct => "direct",
            Self::Off => "off",
        })
    }
}

/// Why the OS's DNS could not be changed or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OsError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
}

impl OsError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// What to tell the OS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsDnsSettings {
    /// Our listening addresses (100.100.100.100, and fd7a:115c:a1e0::53 when served).
    pub nameservers: Vec<IpAddr>,
    /// Search domains (base domain first).
    pub search_domains: Vec<String>,
    /// Domains routed to us without being searched (systemd-resolved only): the base domain,
    /// the tailnet reverse zones and split-DNS suffixes.
    pub match_domains: Vec<String>,
    /// Send every query to us (control set global resolvers).
    pub default_route: bool,
}

impl OsDnsSettings {
    /// The OS settings for `cfg`, or `None` when the OS should be left alone: MagicDNS is off
    /// and control set neither global resolvers nor split routes.
    pub fn from_config(cfg: &DnsConfig, nameservers: Vec<IpAddr>) -> Option<Self> {
        let wanted = cfg.magic_dns || !cfg.resolvers.is_empty() || !cfg.routes.is_empty();
        if !wanted || nameservers.is_empty() {
            return None;
        }
        let mut match_domains = Vec::new();
        if cfg.magic_dns {
            if let Some(base) = &cfg.base_domain {
                match_domains.push(base.clone());
            }
            match_domains.extend((64..128).map(|n| format!("{n}.100.in-addr.arpa")));
            match_domains.push(TAILNET_V6_REVERSE_ZONE.to_string());
        }
        match_domains.extend(cfg.routes.keys().filter(|k| !k.is_empty()).cloned());
        let default_route = !cfg.resolvers.is_empty();
        if default_route {
            match_domains.push(".".into());
        }
        Some(Self {
            nameservers,
            search_domains: cfg.search_domains.clone(),
            match_domains,
            default_route,
        })
    }
}

/// Where the OS integration reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsPaths {
    pub resolv_conf: PathBuf,
    /// The backup of the original resolv.conf (in the state directory).
    pub backup: PathBuf,
    /// systemd-resolved's list of real upstreams.
    pub resolved_upstreams: PathBuf,
}

impl OsPaths {
    /// The system's paths, with the backup in `state_dir`.
    pub fn system(state_dir: &Path) -> Self {
        Self {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            backup: state_dir.join(BACKUP_FILE),
            resolved_upstreams: PathBuf::from(resolved::RESOLVED_UPSTREAMS),
        }
    }
}

/// The chosen OS integration.
#[derive(Debug, Clone)]
pub enum OsConfigurator {
    Resolved(ResolvedManager),
    Direct(DirectManager),
}

impl OsConfigurator {
    /// Picks systemd-resolved when the host uses it, else direct resolv.conf management. A
    /// leftover backup from a crash means resolv.conf was ours: direct mode, whatever it
    /// looks like now.
    pub fn detect(paths: &OsPaths, link: &str) -> Self {
        let direct = DirectManager::new(&paths.resolv_conf, &paths.backup);
        if !direct.has_backup() && ResolvedManager::detect(&paths.resolv_conf) {
            return Self::Resolved(ResolvedManager::new(link, &paths.resolved_upstreams));
        }
        Self::Direct(direct)
    }

    pub fn mode(&self) -> OsMode {
        match self {
            Self::Resolved(_) => OsMode::Resolved,
            Self::Direct(_) => OsMode::Direct,
        }
    }

    pub fn apply(&self, s: &OsDnsSettings) -> Result<(), OsError> {
        match self {
            Self::Resolved(r) => r.apply(s),
            Self::Direct(d) => d.apply(s),
        }
    }

    /// Undoes [`Self::apply`].
    pub fn revert(&self) -> Result<(), OsError> {
        match self {
            Self::Resolved(r) => r.revert(),
            Self::Direct(d) => d.restore().map(|_| ()),
        }
    }

    /// The OS's own upstream resolvers (never the resolved stub or us).
    pub fn original_upstreams(&self) -> Vec<SocketAddr> {
        match self {
            Self::Resolved(r) => r.original_upstreams(),
            Self::Direct(d) => d.original_upstreams(),
        }
    }
}

/// Crash recovery at daemon start: if a backup exists and resolv.conf still carries our
/// marker, the original is put back.
pub fn recover(paths: &OsPaths) -> Result<Restored, OsError> {
    DirectManager::new(&paths.resolv_conf, &paths.backup).restore()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample_netmap;

    #[test]
    fn settings_follow_the_config() {
        let cfg = DnsConfig::from_netmap(&sample_netmap());
        let ns = vec![IpAddr::V4(crate::MAGIC_IPV4)];
        let s = OsDnsSettings::from_config(&cfg, ns.clone()).unwrap();
        assert_eq!(s.search_domains, ["example.ts.net", "corp.example.com"]);
        assert!(s.match_domains.contains(&"example.ts.net".to_string()));
        assert!(
            s.match_domains
                .contains(&"100.100.in-addr.arpa".to_string())
        );
        assert!(s.match_domains.contains(&"corp.example.com".to_string()));
        assert!(s.default_route);
        assert!(s.match_domains.contains(&".".to_string()));

        let mut off = cfg.clone();
        off.magic_dns = false;
        off.resolvers.clear();
        off.routes.clear();
        assert_eq!(OsDnsSettings::from_config(&off, ns), None);
    }

    #[test]
    fn a_leftover_backup_means_direct_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = OsPaths {
            resolv_conf: tmp.path().join("resolv.conf"),
            backup: tmp.path().join(BACKUP_FILE),
            resolved_upstreams: tmp.path().join("none"),
        };
        std::fs::write(&paths.resolv_conf, "nameserver 10.0.0.1\n").unwrap();
        assert_eq!(
            OsConfigurator::detect(&paths, "agent0").mode(),
            OsMode::Direct
        );
        assert_eq!(recover(&paths).unwrap(), Restored::NothingToDo);
    }
}
