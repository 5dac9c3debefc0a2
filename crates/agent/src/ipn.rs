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
//! | GET | `netcheck` | | [`NetcheckReport`] |
//! | GET | `dns/status` | | [`DnsStatus`] |
//! | GET | `dns/query?name=NAME&type=TYPE` | | [`DnsQueryReply`] |
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
    /// The exit node in use (`agent up --exit-node`), if any.
    #[serde(default)]
    pub exit_node_status: Option<ExitNodeStatus>,
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
    /// Subnet routes this node currently serves for the tailnet (it is their primary router).
    #[serde(default)]
    pub primary_routes: Vec<ipnet::IpNet>,
}

/// The exit node this node sends its internet traffic through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitNodeStatus {
    /// Its stable node ID (empty if it is not in the network map).
    pub id: String,
    /// Its MagicDNS name (or the IP it was chosen by, while it is not in the map).
    pub name: String,
    /// Its tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Whether control reports it as connected.
    pub online: bool,
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
    /// Subnets to offer (`--advertise-routes`), as CIDR text; `None` keeps the saved ones, an
    /// empty list stops offering any. Checked by [`parse_advertise_routes`].
    pub advertise_routes: Option<Vec<String>>,
    /// Offer this node as an exit node (`--advertise-exit-node`); `None` keeps the saved value.
    pub advertise_exit_node: Option<bool>,
    /// Masquerade forwarded traffic behind this node's LAN address (`--snat-subnet-routes`,
    /// default on); `None` keeps the saved value.
    pub snat_subnet_routes: Option<bool>,
    /// Use the subnet routes other nodes offer (`--accept-routes`); `None` keeps the saved value.
    pub accept_routes: Option<bool>,
    /// The exit node to use, by name or tailnet IP (`--exit-node`); `Some("")` stops using one,
    /// `None` keeps the saved choice.
    pub exit_node: Option<String>,
    /// Keep the local LAN reachable while using an exit node; `None` keeps the saved value.
    pub exit_node_allow_lan_access: Option<bool>,
    /// Point the OS's DNS at MagicDNS (`--accept-dns`, default on); `None` keeps the saved
    /// value.
    pub accept_dns: Option<bool>,
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
        if let Some(routes) = &self.advertise_routes {
            parse_advertise_routes(routes)?;
        }
        let exit_node = self
            .exit_node
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        if exit_node && self.advertise_exit_node == Some(true) {
            return Err(
                "cannot advertise an exit node and use an exit node at the same time; clear one \
                 (--advertise-exit-node=false or --exit-node=)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The tailnet's own ranges: never a subnet route.
const TAILNET_RANGES: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

/// Parses `--advertise-routes` entries (commas already split; empty entries ignored) the way
/// Tailscale does: each must be a CIDR prefix without host bits (`192.168.1.1/24` is refused
/// with the prefix it probably meant); default routes are refused in favour of
/// `--advertise-exit-node`; prefixes inside the tailnet's own ranges are refused. The result is
/// sorted and free of duplicates.
pub fn parse_advertise_routes(entries: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    let tailnet: Vec<ipnet::IpNet> = TAILNET_RANGES
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut out: Vec<ipnet::IpNet> = Vec::new();
    for raw in entries.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let prefix: ipnet::IpNet = match raw.parse() {
            Ok(p) => p,
            Err(_) if raw.parse::<IpAddr>().is_ok() => {
                let bits = if raw.contains(':') { 128 } else { 32 };
                return Err(format!(
                    "route {raw:?} needs a prefix length: use {raw}/{bits} for a single host"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "route {raw:?} is not a CIDR prefix (expected e.g. 192.168.1.0/24)"
                ));
            }
        };
        if prefix.trunc() != prefix {
            return Err(format!(
                "route {raw} has non-address bits set; expected {}",
                prefix.trunc()
            ));
        }
        if prefix.prefix_len() == 0 {
            return Err(format!(
                "route {raw} is a default route: use --advertise-exit-node to offer this node \
                 as an exit node"
            ));
        }
        if tailnet.iter().any(|t| t.contains(&prefix)) {
            return Err(format!(
                "route {raw} is inside the tailnet's own address range {}",
                tailnet
                    .iter()
                    .find(|t| t.contains(&prefix))
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            ));
        }
        if !out.contains(&prefix) {
            out.push(prefix);
        }
    }
    out.sort();
    Ok(out)
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

/// `GET /localapi/v0/netcheck`: what a fresh probe of this node's network found (`agent
/// netcheck`). STUN runs from the daemon's own WireGuard socket, so the addresses shown are the
/// ones peers use.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetcheckReport {
    /// When the probe finished.
    pub time: Option<DateTime<Utc>>,
    /// A STUN reply arrived: UDP works towards the relays' STUN servers.
    pub udp: bool,
    /// A STUN reply arrived over IPv4 (or, with UDP blocked, an HTTPS probe got through).
    pub ipv4: bool,
    /// A STUN reply arrived over IPv6.
    pub ipv6: bool,
    /// Our public IPv4 `ip:port` as the first STUN server saw it.
    pub global_v4: Option<SocketAddr>,
    /// Our public IPv6 `[ip]:port`.
    pub global_v6: Option<SocketAddr>,
    /// This host can use IPv6 at all (dual-stack socket and a usable IPv6 address).
    pub os_has_ipv6: bool,
    /// `true`: two STUN servers saw different ports ("hard", endpoint-dependent NAT); `false`:
    /// the same; `null`: fewer than two IPv4 answers.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// What the gateway offers for port mapping.
    pub port_mapping: PortMappingReport,
    /// The home (nearest) DERP region's ID.
    pub preferred_derp: Option<u16>,
    /// Every region measured, fastest first; unreachable ones last.
    pub regions: Vec<RegionLatency>,
    /// Latencies were measured over HTTPS because no STUN reply arrived.
    pub https_fallback: bool,
}

/// Port mapping at the default gateway, as `agent netcheck` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PortMappingReport {
    /// The gateway answered UPnP IGD.
    pub upnp: bool,
    /// The gateway answered NAT-PMP.
    pub pmp: bool,
    /// The gateway answered PCP.
    pub pcp: bool,
    /// The public `ip:port` the agent holds a mapping for (an `EndpointPortmapped` candidate).
    pub mapping: Option<SocketAddr>,
    /// Why there is no mapping, when a mapping was tried and failed.
    pub error: Option<String>,
}

/// One DERP region's latency.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RegionLatency {
    /// The region ID.
    pub id: u16,
    /// The short code (`fra`).
    pub code: String,
    /// The display name (`Frankfurt`).
    pub name: String,
    /// Best round trip over either family, in milliseconds; `null` when it did not answer.
    pub latency_ms: Option<f64>,
    /// Best IPv4 round trip in milliseconds.
    pub latency_v4_ms: Option<f64>,
    /// Best IPv6 round trip in milliseconds.
    pub latency_v6_ms: Option<f64>,
    /// How it was measured: `stun`, `https` (UDP blocked), or empty when it did not answer.
    pub method: String,
}

/// `GET /localapi/v0/dns/status`: MagicDNS as the daemon runs it (`agent dns status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// MagicDNS is on in the tailnet's DNS config.
    pub magic_dns: bool,
    /// The MagicDNS suffix (`example.ts.net`).
    pub base_domain: Option<String>,
    /// The `--accept-dns` preference.
    pub accept_dns: bool,
    /// How the OS's DNS is managed now: `resolved`, `direct` or `off`.
    pub os_mode: dns::os::OsMode,
    /// The managed resolv.conf in `direct` mode.
    pub resolv_conf: Option<String>,
    /// Where the resolver answers (`100.100.100.100:53`, `[fd7a:115c:a1e0::53]:53`).
    pub listening: Vec<SocketAddr>,
    /// Search domains given to the OS.
    pub search_domains: Vec<String>,
    /// Global upstream resolvers from the tailnet's DNS config.
    pub resolvers: Vec<SocketAddr>,
    /// Used only when there are no global resolvers and no OS upstreams.
    pub fallback_resolvers: Vec<SocketAddr>,
    /// The OS's original upstreams, used when there are no global resolvers.
    pub os_upstreams: Vec<SocketAddr>,
    /// Split DNS: suffix → resolvers; an empty list is answered by MagicDNS itself.
    pub split_routes: std::collections::BTreeMap<String, Vec<SocketAddr>>,
    /// Resolvers skipped because their protocol (DNS-over-HTTPS/TLS) is not supported yet.
    pub unsupported_resolvers: Vec<String>,
    /// The names MagicDNS answers, sorted by name.
    pub names: Vec<DnsName>,
    /// Problems with MagicDNS, one sentence each.
    pub health: Vec<String>,
}

/// One name MagicDNS answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsName {
    /// The FQDN without the trailing dot.
    pub name: String,
    /// The short name that also resolves (the first label), if any.
    pub short: Option<String>,
    pub addresses: Vec<IpAddr>,
}

/// `GET /localapi/v0/dns/query?name=NAME&type=TYPE`: the answer section and which path
/// answered (`agent dns query`).
pub type DnsQueryReply = dns::QueryAnswer;

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
                primary_routes: vec![],
            },
            peers: vec![],
            tailnet: None,
            magic_dns_suffix: None,
            health: vec![],
            auth_url: None,
            version: "0.1.0".into(),
            exit_node_status: None,
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
    fn advertised_routes_are_checked_like_tailscale() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_advertise_routes(&list(&["10.0.0.0/16", "192.168.1.0/24", "", "10.0.0.0/16"]))
                .unwrap(),
            vec![
                "10.0.0.0/16".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap()
            ]
        );
        assert!(parse_advertise_routes(&list(&[""])).unwrap().is_empty());
        let err = parse_advertise_routes(&list(&["192.168.1.1/24"])).unwrap_err();
        assert!(
            err.contains("non-address bits") && err.contains("192.168.1.0/24"),
            "{err}"
        );
        let err = parse_advertise_routes(&list(&["192.168.1.300/24"])).unwrap_err();
        assert!(err.contains("not a CIDR prefix"), "{err}");
        let err = parse_advertise_routes(&list(&["10.1.2.3"])).unwrap_err();
        assert!(err.contains("10.1.2.3/32"), "{err}");
        let err = parse_advertise_routes(&list(&["0.0.0.0/0"])).unwrap_err();
        assert!(err.contains("--advertise-exit-node"), "{err}");
        let err = parse_advertise_routes(&list(&["100.100.0.0/16"])).unwrap_err();
        assert!(err.contains("100.64.0.0/10"), "{err}");
        assert!(parse_advertise_routes(&list(&["2001:db8::/48"])).is_ok());

        let req = UpRequest {
            advertise_routes: Some(list(&["10.0.0.1/8"])),
            ..Default::default()
        };
        assert!(req.validate().unwrap_err().contains("10.0.0.0/8"));
        let both = UpRequest {
            advertise_exit_node: Some(true),
            exit_node: Some("exit1".into()),
            ..Default::default()
        };
        assert!(both.validate().unwrap_err().contains("at the same time"));
        let clear = UpRequest {
            advertise_exit_node: Some(true),
            exit_node: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(clear.validate(), Ok(()));
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
