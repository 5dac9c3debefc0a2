//! `POST /machine/map` bodies (`tailcfg.MapRequest`, `MapResponse`, `PeerChange`,
//! `UserProfile`, …) and `POST /machine/update-health` (`HealthChangeRequest`).
//!
//! A MapResponse is a delta: every field is optional and an unset field means "unchanged", so
//! unset fields are left out when writing to keep deltas small. Two fields need "empty" to be
//! distinct from "unset" and are therefore `Option<Vec<_>>`: `PacketFilter` (`Some(vec![])` =
//! deny all) and `Health` (`Some(vec![])` = healthy). `Peers` is honoured only when non-empty;
//! the only way to drop every peer is `PeersRemoved`. The first non-keep-alive response of a
//! stream must carry `Node`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::derpmap::DerpMap;
use super::dns::DnsConfig;
use super::filter::FilterRule;
use super::hostinfo::Hostinfo;
use super::node::{CapabilityVersion, Node, NodeCapMap, NodeId, UserId};
use super::null_as_default;
use super::ssh::SshPolicy;
use super::time::{go_time_patch, go_time_ptr};
use super::wire::{go_bytes, is_zero, opt_addr};
use crate::keys::{DiscoPublic, NodePublic};

/// The kind of a reported endpoint (`tailcfg.EndpointType`), parallel to `Endpoints`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EndpointType(pub i32);

impl EndpointType {
    pub const UNKNOWN: EndpointType = EndpointType(0);
    /// A local interface address.
    pub const LOCAL: EndpointType = EndpointType(1);
    /// The public address learned via STUN.
    pub const STUN: EndpointType = EndpointType(2);
    /// A UPnP/NAT-PMP/PCP mapping.
    pub const PORTMAPPED: EndpointType = EndpointType(3);
    /// Hard NAT guess: STUN IPv4 address plus the local port.
    pub const STUN4_LOCAL_PORT: EndpointType = EndpointType(4);
    /// Explicitly configured.
    pub const EXPLICIT_CONF: EndpointType = EndpointType(5);
}

/// A client's map request: a long poll (`Stream`), a "lite" update (`OmitPeers` without
/// `Stream`) or a one-shot fetch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapRequest {
    #[serde(rename = "Version")]
    pub version: CapabilityVersion,
    /// `"zstd"` (always, for v1.90) or `""`.
    #[serde(rename = "Compress")]
    pub compress: String,
    /// The client wants keep-alive messages.
    #[serde(rename = "KeepAlive")]
    pub keep_alive: bool,
    /// The node's current key; must belong to the Noise session's machine key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    #[serde(rename = "DiscoKey")]
    pub disco_key: DiscoPublic,
    /// Hardware attestation public key text (`hwattestpub:…`), if any.
    #[serde(
        rename = "HardwareAttestationKey",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_attestation_key: Option<String>,
    #[serde(
        rename = "HardwareAttestationKeySignature",
        skip_serializing_if = "Vec::is_empty",
        with = "go_bytes"
    )]
    pub hardware_attestation_key_signature: Vec<u8>,
    #[serde(
        rename = "HardwareAttestationKeySignatureTimestamp",
        skip_serializing_if = "Option::is_none",
        with = "go_time_ptr"
    )]
    pub hardware_attestation_key_signature_timestamp: Option<DateTime<Utc>>,
    /// Long poll: the server streams MapResponses.
    #[serde(rename = "Stream")]
    pub stream: bool,
    #[serde(rename = "Hostinfo")]
    pub hostinfo: Option<Hostinfo>,
    #[serde(rename = "MapSessionHandle", skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    #[serde(rename = "MapSessionSeq", skip_serializing_if = "is_zero")]
    pub map_session_seq: i64,
    /// UDP endpoints (`ip:port`).
    #[serde(
        rename = "Endpoints",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub endpoints: Vec<SocketAddr>,
    /// One type per entry of `endpoints`.
    #[serde(
        rename = "EndpointTypes",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub endpoint_types: Vec<EndpointType>,
    #[serde(rename = "TKAHead", skip_serializing_if = "String::is_empty")]
    pub tka_head: String,
    /// Deprecated, always false since capability version 68.
    #[serde(rename = "ReadOnly", skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// With `stream == false`: a lite update whose response body the client ignores.
    #[serde(rename = "OmitPeers", skip_serializing_if = "std::ops::Not::not")]
    pub omit_peers: bool,
    /// Free-form debug flags (`netstack`, `warn-ip-forwarding-off`, …).
    #[serde(
        rename = "DebugFlags",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub debug_flags: Vec<String>,
    #[serde(
        rename = "ConnectionHandleForTest",
        skip_serializing_if = "String::is_empty"
    )]
    pub connection_handle_for_test: String,
}

/// One map-stream message. `Default` is the empty delta; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapResponse {
    #[serde(rename = "MapSessionHandle", skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    #[serde(rename = "Seq", skip_serializing_if = "is_zero")]
    pub seq: i64,
    /// A keep-alive; clients then only look at `PingRequest`, `ControlTime`, `PopBrowserURL`.
    #[serde(rename = "KeepAlive", skip_serializing_if = "std::ops::Not::not")]
    pub keep_alive: bool,
    #[serde(rename = "PingRequest", skip_serializing_if = "Option::is_none")]
    pub ping_request: Option<PingRequest>,
    #[serde(rename = "PopBrowserURL", skip_serializing_if = "String::is_empty")]
    pub pop_browser_url: String,
    /// The self node.
    #[serde(rename = "Node", skip_serializing_if = "Option::is_none")]
    pub node: Option<Box<Node>>,
    #[serde(rename = "DERPMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<DerpMap>,
    /// The complete peer list, sorted by ID (only honoured when non-empty).
    #[serde(
        rename = "Peers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub peers: Vec<Node>,
    /// Added or replaced peers, sorted by ID.
    #[serde(
        rename = "PeersChanged",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub peers_changed: Vec<Node>,
    #[serde(
        rename = "PeersRemoved",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub peers_removed: Vec<NodeId>,
    /// Small per-peer field updates.
    #[serde(
        rename = "PeersChangedPatch",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub peers_changed_patch: Vec<PeerChange>,
    /// Peer -> true (LastSeen = now) / false (clear LastSeen).
    #[serde(
        rename = "PeerSeenChange",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub peer_seen_change: BTreeMap<NodeId, bool>,
    /// Peer -> new `Online` value.
    #[serde(
        rename = "OnlineChange",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub online_change: BTreeMap<NodeId, bool>,
    #[serde(rename = "DNSConfig", skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// Tailnet name; empty = unchanged.
    #[serde(rename = "Domain", skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// opt.Bool: must be a JSON bool, never the string `"false"`.
    #[serde(rename = "CollectServices", skip_serializing_if = "Option::is_none")]
    pub collect_services: Option<bool>,
    /// `None` = unchanged; `Some(vec![])` = deny all. Same as named filter `"base"`.
    #[serde(rename = "PacketFilter", skip_serializing_if = "Option::is_none")]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// Named filters: `Some(rules)` sets a name, `None` (null) deletes it; `"*": null` clears
    /// all names first. The client concatenates the rules by sorted name.
    #[serde(
        rename = "PacketFilters",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub packet_filters: BTreeMap<String, Option<Vec<FilterRule>>>,
    /// New or changed user profiles.
    #[serde(
        rename = "UserProfiles",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub user_profiles: Vec<UserProfile>,
    /// `None` = unchanged; `Some(vec![])` = healthy; else the problems seen by control.
    #[serde(rename = "Health", skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// Patch of display messages by ID; `None` deletes, `"*": null` clears all first.
    #[serde(
        rename = "DisplayMessages",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub display_messages: BTreeMap<String, Option<DisplayMessage>>,
    #[serde(rename = "SSHPolicy", skip_serializing_if = "Option::is_none")]
    pub ssh_policy: Option<SshPolicy>,
    /// The server's clock, for the client's skew correction.
    #[serde(
        rename = "ControlTime",
        skip_serializing_if = "Option::is_none",
        with = "go_time_ptr"
    )]
    pub control_time: Option<DateTime<Utc>>,
    #[serde(rename = "TKAInfo", skip_serializing_if = "Option::is_none")]
    pub tka_info: Option<TkaInfo>,
    #[serde(
        rename = "DomainDataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub domain_data_plane_audit_log_id: String,
    #[serde(rename = "Debug", skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugSettings>,
    #[serde(rename = "ControlDialPlan", skip_serializing_if = "Option::is_none")]
    pub control_dial_plan: Option<ControlDialPlan>,
    #[serde(rename = "ClientVersion", skip_serializing_if = "Option::is_none")]
    pub client_version: Option<ClientVersion>,
    /// opt.Bool, used only on the first response of a node.
    #[serde(rename = "DefaultAutoUpdate", skip_serializing_if = "Option::is_none")]
    pub default_auto_update: Option<bool>,
}

impl MapResponse {
    /// The keep-alive message `{"KeepAlive":true}`.
    pub fn keep_alive() -> Self {
        MapResponse {
            keep_alive: true,
            ..Default::default()
        }
    }
}

/// A small update to one peer (`tailcfg.PeerChange`). Unset fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerChange {
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// New home DERP region (0 = unchanged).
    #[serde(rename = "DERPRegion", skip_serializing_if = "is_zero")]
    pub derp_region: i32,
    #[serde(rename = "Cap", skip_serializing_if = "is_zero")]
    pub cap: CapabilityVersion,
    /// New capability map; `Some` (even empty) replaces it.
    #[serde(rename = "CapMap", skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<NodeCapMap>,
    /// New endpoints (empty = unchanged).
    #[serde(
        rename = "Endpoints",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub endpoints: Vec<SocketAddr>,
    #[serde(rename = "Key", skip_serializing_if = "Option::is_none")]
    pub key: Option<NodePublic>,
    #[serde(
        rename = "KeySignature",
        skip_serializing_if = "Vec::is_empty",
        with = "go_bytes"
    )]
    pub key_signature: Vec<u8>,
    #[serde(rename = "DiscoKey", skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<DiscoPublic>,
    #[serde(rename = "Online", skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    #[serde(
        rename = "LastSeen",
        skip_serializing_if = "Option::is_none",
        with = "go_time_ptr"
    )]
    pub last_seen: Option<DateTime<Utc>>,
    /// `None` = unchanged, `Some(None)` = never expires, `Some(Some(t))` = expires at `t`.
    #[serde(
        rename = "KeyExpiry",
        skip_serializing_if = "Option::is_none",
        with = "go_time_patch"
    )]
    pub key_expiry: Option<Option<DateTime<Utc>>>,
}

impl PeerChange {
    /// Whether the patch changes nothing beyond naming the node.
    pub fn is_empty(&self) -> bool {
        *self
            == PeerChange {
                node_id: self.node_id,
                ..Default::default()
            }
    }
}

/// Display information for a user referenced by nodes (`tailcfg.UserProfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserProfile {
    #[serde(rename = "ID")]
    pub id: UserId,
    #[serde(rename = "LoginName")]
    pub login_name: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
}

/// A request for the client to prove liveness or run a probe (`tailcfg.PingRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PingRequest {
    /// Where to answer (HEAD without `types`, POST with a PingResponse otherwise).
    #[serde(rename = "URL")]
    pub url: String,
    /// Answer over the Noise connection instead of TLS.
    #[serde(rename = "URLIsNoise", skip_serializing_if = "std::ops::Not::not")]
    pub url_is_noise: bool,
    #[serde(rename = "Log", skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
    /// Comma-separated `disco`, `TSMP`, `ICMP`, `peerapi`, or `c2n`.
    #[serde(rename = "Types", skip_serializing_if = "String::is_empty")]
    pub types: String,
    /// Ping target; written as `""` when unset.
    #[serde(rename = "IP", with = "opt_addr")]
    pub ip: Option<IpAddr>,
    /// For c2n: the HTTP request to run.
    #[serde(
        rename = "Payload",
        skip_serializing_if = "Vec::is_empty",
        with = "go_bytes"
    )]
    pub payload: Vec<u8>,
}

/// Tailnet-lock state as control sees it (`tailcfg.TKAInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaInfo {
    #[serde(rename = "Head", skip_serializing_if = "String::is_empty")]
    pub head: String,
    #[serde(rename = "Disabled", skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// `MapResponse.Debug` (`tailcfg.Debug`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DebugSettings {
    /// Ask the client to sleep (a brake for spinning clients).
    #[serde(rename = "SleepSeconds", skip_serializing_if = "is_zero")]
    pub sleep_seconds: f64,
    /// Turn off log upload for the life of the process.
    #[serde(rename = "DisableLogTail", skip_serializing_if = "std::ops::Not::not")]
    pub disable_log_tail: bool,
    /// Ask the client to exit with this code.
    #[serde(rename = "Exit", skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// How the client should reach control (`tailcfg.ControlDialPlan`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlDialPlan {
    #[serde(rename = "Candidates", deserialize_with = "null_as_default")]
    pub candidates: Vec<ControlIpCandidate>,
}

/// One way to reach control (`tailcfg.ControlIPCandidate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlIpCandidate {
    #[serde(
        rename = "IP",
        skip_serializing_if = "Option::is_none",
        with = "opt_addr"
    )]
    pub ip: Option<IpAddr>,
    #[serde(rename = "ACEHost", skip_serializing_if = "String::is_empty")]
    pub ace_host: String,
    #[serde(rename = "DialStartDelaySec", skip_serializing_if = "is_zero")]
    pub dial_start_delay_sec: f64,
    #[serde(rename = "DialTimeoutSec", skip_serializing_if = "is_zero")]
    pub dial_timeout_sec: f64,
    #[serde(rename = "Priority", skip_serializing_if = "is_zero")]
    pub priority: i64,
}

/// Latest client version information (`tailcfg.ClientVersion`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientVersion {
    #[serde(rename = "RunningLatest", skip_serializing_if = "std::ops::Not::not")]
    pub running_latest: bool,
    #[serde(rename = "LatestVersion", skip_serializing_if = "String::is_empty")]
    pub latest_version: String,
    #[serde(
        rename = "UrgentSecurityUpdate",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub urgent_security_update: bool,
    #[serde(rename = "Notify", skip_serializing_if = "std::ops::Not::not")]
    pub notify: bool,
    #[serde(rename = "NotifyURL", skip_serializing_if = "String::is_empty")]
    pub notify_url: String,
    #[serde(rename = "NotifyText", skip_serializing_if = "String::is_empty")]
    pub notify_text: String,
}

/// A control-side health message (`tailcfg.DisplayMessage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DisplayMessage {
    #[serde(rename = "Title")]
    pub title: String,
    #[serde(rename = "Text")]
    pub text: String,
    /// `high`, `medium` or `low`.
    #[serde(rename = "Severity")]
    pub severity: String,
    #[serde(
        rename = "ImpactsConnectivity",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub impacts_connectivity: bool,
    #[serde(rename = "PrimaryAction", skip_serializing_if = "Option::is_none")]
    pub primary_action: Option<DisplayMessageAction>,
}

/// A link attached to a [`DisplayMessage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DisplayMessageAction {
    #[serde(rename = "URL")]
    pub url: String,
    #[serde(rename = "Label")]
    pub label: String,
}

/// Body of `POST /machine/update-health` (`tailcfg.HealthChangeRequest`). Answer 200.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthChangeRequest {
    /// A health subsystem name.
    #[serde(rename = "Subsys")]
    pub subsys: String,
    /// The problem, or empty when cleared.
    #[serde(rename = "Error")]
    pub error: String,
    /// The client's node key (zero from clients up to 1.62).
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
}
