//! `control serve` settings: command-line flags over an optional TOML file over defaults.
//!
//! Every setting has a default that works for a local trial on one machine. The TOML file uses
//! the same names as the flags, with `_` for `-` (`base_domain = "example.ts"`), plus tables
//! that are awkward as flags: `[dns.split]` and `[[dns.extra_records]]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::Duration;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Flags of `control serve`. Every one can also be set in the TOML file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML settings file; flags override its values.
    #[arg(long, short = 'c', env = "CONTROL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address for the control protocol and admin API (HTTP) [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// URL clients use to reach this server [default: http://<listen>].
    #[arg(long)]
    pub server_url: Option<String>,
    /// SQLite database file [default: /var/lib/control/control.db].
    #[arg(long, env = "CONTROL_DB")]
    pub db: Option<PathBuf>,
    /// Directory for generated certificates [default: the database's directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// MagicDNS suffix for node names [default: tailnet.internal].
    #[arg(long)]
    pub base_domain: Option<String>,
    /// IPv4 pool, inside 100.64.0.0/10 [default: 100.64.0.0/10].
    #[arg(long)]
    pub ipv4_prefix: Option<Ipv4Net>,
    /// IPv6 pool, inside fd7a:115c:a1e0::/48 [default: fd7a:115c:a1e0::/48].
    #[arg(long)]
    pub ipv6_prefix: Option<Ipv6Net>,
    /// Node key lifetime such as 180d, 12h; `never` disables expiry [default: 180d].
    #[arg(long)]
    pub node_key_expiry: Option<String>,
    /// How long a disconnected ephemeral node is kept [default: 2m].
    #[arg(long)]
    pub ephemeral_grace: Option<String>,
    /// New devices need `control nodes approve` unless their key is pre-approved.
    #[arg(long)]
    pub device_approval: Option<bool>,
    /// Port of the embedded DERP relay (TLS); 0 disables it [default: 8443].
    #[arg(long)]
    pub derp_port: Option<u16>,
    /// Host name or IP clients dial for DERP and STUN [default: the server URL's host].
    #[arg(long)]
    pub derp_host: Option<String>,
    /// Address the DERP and STUN listeners bind to [default: the listen address's IP].
    #[arg(long)]
    pub derp_bind: Option<std::net::IpAddr>,
    /// Port of the embedded STUN server; 0 disables it [default: 3478].
    #[arg(long)]
    pub stun_port: Option<u16>,
    /// DERP region id of the embedded relay [default: 999].
    #[arg(long)]
    pub derp_region_id: Option<u16>,
    /// PEM certificate for DERP TLS; without one a self-signed certificate is made and pinned.
    #[arg(long, requires = "derp_key")]
    pub derp_cert: Option<PathBuf>,
    /// PEM private key for --derp-cert.
    #[arg(long)]
    pub derp_key: Option<PathBuf>,
    /// JSON file with extra DERP regions (tailcfg.DERPMap shape) merged into the map.
    #[arg(long)]
    pub derp_map: Option<PathBuf>,
    /// Serve MagicDNS config to clients [default: true].
    #[arg(long)]
    pub magic_dns: Option<bool>,
    /// Global nameservers (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub nameservers: Option<Vec<String>>,
    /// Extra search domains (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub search_domains: Option<Vec<String>>,
    /// Split DNS, `suffix=resolver[;resolver]` (repeat).
    #[arg(long = "split-dns")]
    #[serde(skip)]
    pub split_dns_flags: Vec<String>,
    /// DNS tables from the file only.
    #[arg(skip)]
    pub dns: Option<DnsFile>,
}

/// `[dns]` in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    #[serde(default)]
    pub split: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub extra_records: Vec<ExtraRecord>,
}

/// One extra DNS record served by MagicDNS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraRecord {
    pub name: String,
    #[serde(default, rename = "type")]
    pub record_type: String,
    pub value: String,
}

/// Final settings of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub server_url: String,
    pub db: PathBuf,
    pub data_dir: PathBuf,
    pub tailnet: crate::state::TailnetConfig,
    pub derp: Option<DerpSettings>,
    pub stun_port: u16,
    pub derp_map_file: Option<PathBuf>,
    pub dns: DnsSettings,
}

/// The embedded relay.
#[derive(Debug, Clone)]
pub struct DerpSettings {
    pub port: u16,
    pub host: String,
    pub bind: std::net::IpAddr,
    pub region_id: u16,
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// MagicDNS and resolver settings sent to clients.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    pub magic_dns: bool,
    pub nameservers: Vec<String>,
    pub search_domains: Vec<String>,
    pub split: BTreeMap<String, Vec<String>>,
    pub extra_records: Vec<ExtraRecord>,
}

impl ServeArgs {
    /// Merges flags over the file (if any) over defaults and validates the result.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(p) => Some(read_file(p)?),
            None => None,
        };
        let merged = match file {
            Some(f) => self.over(f),
            None => self,
        };
        merged.finish()
    }

    fn over(self, f: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            listen: self.listen.or(f.listen),
            server_url: self.server_url.or(f.server_url),
            db: self.db.or(f.db),
            data_dir: self.data_dir.or(f.data_dir),
            base_domain: self.base_domain.or(f.base_domain),
            ipv4_prefix: self.ipv4_prefix.or(f.ipv4_prefix),
            ipv6_prefix: self.ipv6_prefix.or(f.ipv6_prefix),
            node_key_expiry: self.node_key_expiry.or(f.node_key_expiry),
            ephemeral_grace: self.ephemeral_grace.or(f.ephemeral_grace),
            device_approval: self.device_approval.or(f.device_approval),
            derp_port: self.derp_port.or(f.derp_port),
            derp_host: self.derp_host.or(f.derp_host),
            derp_bind: self.derp_bind.or(f.derp_bind),
            stun_port: self.stun_port.or(f.stun_port),
            derp_region_id: self.derp_region_id.or(f.derp_region_id),
            derp_cert: self.derp_cert.or(f.derp_cert),
            derp_key: self.derp_key.or(f.derp_key),
            derp_map: self.derp_map.or(f.derp_map),
            magic_dns: self.magic_dns.or(f.magic_dns),
            nameservers: self.nameservers.or(f.nameservers),
            search_domains: self.search_domains.or(f.search_domains),
            split_dns_flags: self.split_dns_flags,
            dns: f.dns,
        }
    }

    fn finish(self) -> Result<Settings, ConfigError> {
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let server_url = self
            .server_url
            .unwrap_or_else(|| format!("http://{listen}"));
        let url_host = url_host(&server_url).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--server-url {server_url:?} is not an http:// or https:// URL"
            ))
        })?;
        let db = self
            .db
            .unwrap_or_else(|| PathBuf::from("/var/lib/control/control.db"));
        let data_dir = self.data_dir.unwrap_or_else(|| {
            db.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        });
        let base_domain = self
            .base_domain
            .unwrap_or_else(|| "tailnet.internal".to_string());
        let base_domain = base_domain.trim_matches('.').to_ascii_lowercase();
        if base_domain.is_empty() || base_domain.eq_ignore_ascii_case(&url_host) {
            return Err(ConfigError::Invalid(format!(
                "--base-domain {base_domain:?} must be a DNS suffix different from the server's host name"
            )));
        }
        let defaults = crate::state::TailnetConfig::default();
        let ipv4_pool = self.ipv4_prefix.unwrap_or(defaults.ipv4_pool).trunc();
        if !defaults.ipv4_pool.contains(&ipv4_pool) {
            return Err(ConfigError::Invalid(format!(
                "--ipv4-prefix {ipv4_pool} must be inside 100.64.0.0/10"
            )));
        }
        let ipv6_pool = self.ipv6_prefix.unwrap_or(defaults.ipv6_pool).trunc();
        if !defaults.ipv6_pool.contains(&ipv6_pool) {
            return Err(ConfigError::Invalid(format!(
                "--ipv6-prefix {ipv6_pool} must be inside fd7a:115c:a1e0::/48"
            )));
        }
        let node_key_expiry = match self.node_key_expiry.as_deref() {
            None => defaults.node_key_expiry,
            Some("never" | "0") => None,
            Some(s) => Some(
                parse_duration(s)
                    .map_err(|e| ConfigError::Invalid(format!("--node-key-expiry: {e}")))?,
            ),
        };
        let ephemeral_grace = match self.ephemeral_grace.as_deref() {
            None => defaults.ephemeral_grace,
            Some(s) => parse_duration(s)
                .map_err(|e| ConfigError::Invalid(format!("--ephemeral-grace: {e}")))?,
        };
        let derp_port = self.derp_port.unwrap_or(8443);
        let derp = (derp_port != 0).then(|| DerpSettings {
            port: derp_port,
            host: self.derp_host.clone().unwrap_or_else(|| url_host.clone()),
            bind: self.derp_bind.unwrap_or(listen.ip()),
            region_id: self.derp_region_id.unwrap_or(999),
            cert: self.derp_cert.clone().zip(self.derp_key.clone()),
        });
        let mut split = self
            .dns
            .as_ref()
            .map(|d| d.split.clone())
            .unwrap_or_default();
        for f in &self.split_dns_flags {
            let (suffix, resolvers) = f.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--split-dns {f:?}: use suffix=resolver[;resolver]"))
            })?;
            split.insert(
                suffix.trim_matches('.').to_string(),
                resolvers.split(';').map(str::to_string).collect(),
            );
        }
        Ok(Settings {
            listen,
            server_url: server_url.trim_end_matches('/').to_string(),
            db,
            data_dir,
            tailnet: crate::state::TailnetConfig {
                base_domain,
                ipv4_pool,
                ipv6_pool,
                node_key_expiry,
                device_approval: self.device_approval.unwrap_or(false),
                ephemeral_grace,
                server_url: String::new(),
            },
            derp,
            stun_port: self.stun_port.unwrap_or(3478),
            derp_map_file: self.derp_map,
            dns: DnsSettings {
                magic_dns: self.magic_dns.unwrap_or(true),
                nameservers: self.nameservers.unwrap_or_default(),
                search_domains: self.search_domains.unwrap_or_default(),
                split,
                extra_records: self.dns.map(|d| d.extra_records).unwrap_or_default(),
            },
        })
        .map(|mut s| {
            s.tailnet.server_url = s.server_url.clone();
            s
        })
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The host part of an http(s) URL (without port or brackets).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Parses `90s`, `15m`, `12h`, `180d` (and combinations like `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::zero();
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 12h or 180d"))?;
        num.clear();
        total += match c {
            's' => Duration::seconds(n),
            'm' => Duration::minutes(n),
            'h' => Duration::hours(n),
            'd' => Duration::days(n),
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
    }
    if !num.is_empty() {
        return Err(format!("{s:?} needs a unit (s, m, h or d)"));
    }
    if total <= Duration::zero() {
        return Err(format!("{s:?} must be positive"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("180d"), Ok(Duration::days(180)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(
            url_host("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            url_host("https://ctl.example.com/").as_deref(),
            Some("ctl.example.com")
        );
        assert_eq!(url_host("http://[::1]:80").as_deref(), Some("::1"));
        assert_eq!(url_host("ftp://x"), None);
    }

    #[test]
    fn defaults_and_file_merge() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "base_domain = \"corp.ts\"\nderp_port = 0\n[dns.split]\n\"corp.example\" = [\"10.0.0.53\"]\n").unwrap();
        let args = ServeArgs {
            config: Some(f),
            stun_port: Some(3479),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.tailnet.base_domain, "corp.ts");
        assert!(s.derp.is_none());
        assert_eq!(s.stun_port, 3479);
        assert_eq!(s.dns.split.get("corp.example").map(Vec::len), Some(1));
        assert_eq!(s.server_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn example_config_file_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("control.toml");
        std::fs::write(&f, include_str!("../../../systemd/control.toml.example")).unwrap();
        let s = ServeArgs {
            config: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.tailnet.base_domain, "corp.example");
        assert_eq!(s.dns.extra_records.len(), 1);
        assert_eq!(s.dns.split.len(), 1);
        assert_eq!(s.derp.map(|d| d.port), Some(443));
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = ServeArgs {
            ipv4_prefix: Some("10.0.0.0/8".parse().unwrap()),
            ..Default::default()
        };
        assert!(
            bad.resolve()
                .unwrap_err()
                .to_string()
                .contains("100.64.0.0/10")
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "nonsense = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }
}
