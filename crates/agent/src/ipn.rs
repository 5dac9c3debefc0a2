//! The local API's JSON types, shared by the daemon (which serves them on its Unix socket) and
//! the CLI (which decodes them). Nothing here does I/O: these are plain serde types plus the
//! validation the daemon applies to requests before a backend sees them.
//!
//! The endpoints, all under `/localapi/v0/` (see `docs/design/agent.md`):
//!
//! | method | path | request | answer |
//! |---|---|---|---|
//! | GET | `status` | | [`Status`] |
//! | POST | `up` | [`UpRequest`] | [`UpReply`] |
//! | POST | `down` | | [`OkReply`] |
//! | POST | `logout` | | [`OkReply`] |
//! | GET | `ping?target=NAME_OR_IP&count=N` | | `Vec<`[`PingReply`]`>` |
//! | GET | `whois?addr=IP[:PORT]` | | [`WhoIs`] |
//! | GET | `version` | | [`VersionInfo`] |
//!
//! Every failure is an HTTP error status with an [`ApiError`] body, `{"error": "..."}`, whose
//! text is written for the person at the terminal; the CLI prints it verbatim.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use proto::keys::NodePublic;
use serde::{Deserialize, Serialize};

/// The URL prefix of every local API endpoint.
pub const API_PREFIX: &str = "/localapi/v0/";

/// The most pings one request may ask for; keeps a request from tying up the daemon for long.
pub const MAX_PING_COUNT: u32 = 100;

/// Where the node is in its life cycle. The names match Tailscale's `ipn.State`, so scripts
/// written against `tailscale status --json` find the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BackendState {
    /// The daemon has just started and has not looked at its state yet.
    NoState,
    /// The node has no valid login: run `agent up` with an auth key.
    NeedsLogin,
    /// Logged in, but an admin must approve the machine before it may join.
    NeedsMachineAuth,
    /// Logged in and connecting: waiting for the first network map.
    Starting,
    /// Connected to the tailnet.
    Running,
    /// Logged in, but the user ran `agent down`.
    Stopped,
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::NoState => "NoState",
            Self::NeedsLogin => "NeedsLogin",
            Self::NeedsMachineAuth => "NeedsMachineAuth",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Stopped => "Stopped",
        };
        f.write_str(s)
    }
}

/// The daemon's whole view of the tailnet, as `agent status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub backend_state: BackendState,
    /// This node. Its addresses are empty until control assigns them.
    #[serde(rename = "self")]
    pub self_: PeerStatus,
    /// The other nodes this node may see, sorted by name.
    pub peers: Vec<PeerStatus>,
    /// The tailnet's name (e.g. `example.com`), once logged in.
    pub tailnet: Option<String>,
    /// The MagicDNS suffix (e.g. `example.ts.net`), once logged in.
    pub magic_dns_suffix: Option<String>,
    /// Problems a user should know about, one sentence each (e.g. "no DERP relay reachable").
    pub health: Vec<String>,
    /// For interactive login: the URL to open in a browser.
    pub auth_url: Option<String>,
    /// The daemon's version.
    pub version: String,
}

/// One node of the tailnet (this one or a peer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The stable node ID control assigned; empty until registered.
    pub id: String,
    /// The node's WireGuard public key.
    pub public_key: NodePublic,
    /// The MagicDNS name, fully qualified (`laptop.example.ts.net.`); empty when unknown.
    pub name: String,
    /// The OS hostname the node reported.
    pub hostname: String,
    /// `linux`, `windows`, `macOS`, … as the node reported it.
    pub os: String,
    /// Tailnet addresses (100.x.y.z and fd7a:115c:a1e0::…), IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// Whether control reports the node as connected.
    pub online: bool,
    /// How packets to this node travel right now.
    pub path: Path,
    /// When the last WireGuard handshake with this node completed.
    pub last_handshake: Option<DateTime<Utc>>,
    /// Bytes received from this node since the daemon started.
    pub rx_bytes: u64,
    /// Bytes sent to this node since the daemon started.
    pub tx_bytes: u64,
    /// The node's ACL tags (`tag:server`); empty for user-owned nodes.
    pub tags: Vec<String>,
    /// Whether this node currently routes our internet traffic.
    pub exit_node: bool,
    /// Whether this node offers itself as an exit node.
    pub exit_node_option: bool,
}

/// How packets reach a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Path {
    /// Straight over UDP to this address.
    Direct { addr: SocketAddr },
    /// Through a DERP relay in this region (e.g. `fra`).
    Relay { region_code: String },
    /// No path yet (no handshake, or the peer is this node).
    None,
}

impl fmt::Display for Path {
    /// `direct 192.0.2.1:41641`, `relay "fra"` or `-`, as in the status table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { addr } => write!(f, "direct {addr}"),
            Self::Relay { region_code } => write!(f, "relay {region_code:?}"),
            Self::None => f.write_str("-"),
        }
    }
}

/// An auth key. Secret: its `Debug` never shows the key, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthKey(String);

impl AuthKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the one place that sends it to control.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// `POST /localapi/v0/up`: log in (if needed) and connect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpRequest {
    /// A pre-authorized key; without one, a node that needs login gets an auth URL.
    pub auth_key: Option<AuthKey>,
    /// The control server URL; without one, the saved one is used.
    pub login_server: Option<String>,
    /// Overrides the OS hostname in the tailnet.
    pub hostname: Option<String>,
    /// ACL tags to request (`tag:server`); control checks the auth key may use them.
    pub advertise_tags: Vec<String>,
    /// The node is removed from the tailnet soon after it goes offline.
    pub ephemeral: bool,
}

impl UpRequest {
    /// Checks what can be checked without talking to control, so that a typo gets an
    /// immediate, specific error rather than a refusal from the server.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.login_server {
            validate_login_server(url)?;
        }
        if let Some(name) = &self.hostname {
            validate_hostname(name)?;
        }
        for tag in &self.advertise_tags {
            validate_tag(tag)?;
        }
        if self
            .auth_key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            return Err("the auth key is empty".to_owned());
        }
        Ok(())
    }
}

fn validate_login_server(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("login server {url:?} must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!(
            "login server {url:?} is not a valid URL (expected https://HOST[:PORT])"
        ));
    }
    Ok(())
}

fn validate_hostname(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "hostname {name:?} is not a valid DNS label (1-63 letters, digits or '-', \
             not starting or ending with '-')"
        ));
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let Some(name) = tag.strip_prefix("tag:") else {
        return Err(format!(
            "tag {tag:?} must start with \"tag:\" (e.g. tag:server)"
        ));
    };
    let ok = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(format!(
            "tag {tag:?} is invalid: after \"tag:\" use a letter, then letters, digits or '-'"
        ));
    }
    Ok(())
}

/// The answer to `up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpReply {
    pub backend_state: BackendState,
    /// For interactive login: the URL to open in a browser.
    pub auth_url: Option<String>,
}

/// One pong answering `agent ping`. Pings that got no answer have no entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    /// Which ping (0-based) this answers.
    pub seq: u32,
    /// The answering node's name (FQDN, or hostname when it has none).
    pub from: String,
    /// The answering node's tailnet address.
    pub ip: IpAddr,
    /// The path the pong came back on.
    pub path: Path,
    /// Round-trip time in milliseconds.
    pub latency_ms: f64,
}

/// `GET /localapi/v0/whois?addr=IP`: the node (and its owner) behind a tailnet address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhoIs {
    pub node: PeerStatus,
    /// The owning user; `None` for tagged nodes, which belong to no user.
    pub user: Option<UserProfile>,
}

/// A tailnet user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    pub id: u64,
    /// `alice@example.com`
    pub login_name: String,
    /// `Alice Example`
    pub display_name: String,
}

/// `GET /localapi/v0/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    /// `linux`, `macos`, … (Rust's `std::env::consts::OS`).
    pub os: String,
    pub arch: String,
}

impl VersionInfo {
    /// The version of this binary.
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

/// The body of a successful request that has nothing else to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkReply {
    pub ok: bool,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Parses a whois `addr`: an IP, or an `IP:PORT` / `[IPv6]:PORT` socket address (whose port
/// is ignored, so a log line's peer address can be pasted as is).
pub fn parse_whois_addr(s: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    s.parse::<SocketAddr>()
        .map(|sa| sa.ip())
        .map_err(|_| format!("{s:?} is not an IP address (expected e.g. 100.64.0.1 or fd7a::1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_uses_self_and_state_names() {
        let status = Status {
            backend_state: BackendState::NeedsLogin,
            self_: PeerStatus {
                id: String::new(),
                public_key: NodePublic::zero(),
                name: String::new(),
                hostname: "box".into(),
                os: "linux".into(),
                addresses: vec![],
                online: false,
                path: Path::None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                tags: vec![],
                exit_node: false,
                exit_node_option: false,
            },
            peers: vec![],
            tailnet: None,
            magic_dns_suffix: None,
            health: vec![],
            auth_url: None,
            version: "0.1.0".into(),
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["backend_state"], "NeedsLogin");
        assert_eq!(v["self"]["hostname"], "box");
        assert_eq!(v["self"]["path"]["kind"], "none");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn path_json_and_display() {
        let direct = Path::Direct {
            addr: "192.0.2.1:41641".parse().unwrap(),
        };
        let relay = Path::Relay {
            region_code: "fra".into(),
        };
        assert_eq!(
            serde_json::to_string(&direct).unwrap(),
            r#"{"kind":"direct","addr":"192.0.2.1:41641"}"#
        );
        assert_eq!(
            serde_json::to_string(&relay).unwrap(),
            r#"{"kind":"relay","region_code":"fra"}"#
        );
        assert_eq!(direct.to_string(), "direct 192.0.2.1:41641");
        assert_eq!(relay.to_string(), "relay \"fra\"");
        assert_eq!(Path::None.to_string(), "-");
    }

    #[test]
    fn auth_key_debug_is_redacted() {
        let req = UpRequest {
            auth_key: Some(AuthKey::new("tskey-secret")),
            ..Default::default()
        };
        assert!(!format!("{req:?}").contains("tskey-secret"));
        assert!(
            serde_json::to_string(&req)
                .unwrap()
                .contains("tskey-secret")
        );
    }

    #[test]
    fn up_request_validation_names_the_problem() {
        let ok = UpRequest {
            login_server: Some("https://control.example.com:8443".into()),
            hostname: Some("web-1".into()),
            advertise_tags: vec!["tag:server".into()],
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));

        let bad_url = UpRequest {
            login_server: Some("control.example.com".into()),
            ..ok.clone()
        };
        assert!(bad_url.validate().unwrap_err().contains("https://"));
        let bad_tag = UpRequest {
            advertise_tags: vec!["server".into()],
            ..ok.clone()
        };
        assert!(bad_tag.validate().unwrap_err().contains("tag:"));
        let bad_host = UpRequest {
            hostname: Some("web_1".into()),
            ..ok.clone()
        };
        assert!(bad_host.validate().unwrap_err().contains("DNS label"));
        let empty_key = UpRequest {
            auth_key: Some(AuthKey::new(" ")),
            ..ok
        };
        assert!(empty_key.validate().unwrap_err().contains("empty"));
    }

    #[test]
    fn whois_addr_accepts_ip_and_socket_addr() {
        assert_eq!(
            parse_whois_addr("100.64.0.1"),
            Ok("100.64.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_whois_addr("100.64.0.1:22"),
            Ok("100.64.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_whois_addr("[fd7a::1]:22"),
            Ok("fd7a::1".parse().unwrap())
        );
        assert!(parse_whois_addr("laptop").is_err());
    }
}
