//! What a client reports about itself (`tailcfg.Hostinfo`, `NetInfo`, `Service`, `Location`).
//!
//! The server stores a client's Hostinfo and echoes it to peers, so it must not lose fields it
//! does not know (newer clients add fields often). Both [`Hostinfo`] and [`NetInfo`] therefore
//! keep every key they do not model in `extra` and write it back unchanged. All Hostinfo fields
//! are `omitempty` in Go; `opt.Bool` fields are a JSON bool or `null` (unset) and are modelled as
//! `Option<bool>`. A JSON string such as `"false"` in an `opt.Bool` field is rejected, as Go does.
//!
//! Do not put a modelled key into `extra` by hand: it would be written twice.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::null_as_default;
use super::wire::is_zero;

/// Service protocol names used in [`Service::proto`].
pub mod service_proto {
    pub const TCP: &str = "tcp";
    pub const UDP: &str = "udp";
    pub const PEERAPI4: &str = "peerapi4";
    pub const PEERAPI6: &str = "peerapi6";
    pub const PEERAPI_DNS: &str = "peerapi-dns-proxy";
}

/// A client's description of itself, sent in RegisterRequest and MapRequest and echoed in
/// `Node.Hostinfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hostinfo {
    /// Client version (`1.90.9-t…`).
    #[serde(rename = "IPNVersion", skip_serializing_if = "String::is_empty")]
    pub ipn_version: String,
    #[serde(rename = "FrontendLogID", skip_serializing_if = "String::is_empty")]
    pub frontend_log_id: String,
    /// Logtail ID of the backend; the client refuses to send a MapRequest without it.
    #[serde(rename = "BackendLogID", skip_serializing_if = "String::is_empty")]
    pub backend_log_id: String,
    /// `linux`, `windows`, `macOS`, `iOS`, `android`, …
    #[serde(rename = "OS", skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(rename = "OSVersion", skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    #[serde(rename = "Container", skip_serializing_if = "Option::is_none")]
    pub container: Option<bool>,
    #[serde(rename = "Env", skip_serializing_if = "String::is_empty")]
    pub env: String,
    #[serde(rename = "Distro", skip_serializing_if = "String::is_empty")]
    pub distro: String,
    #[serde(rename = "DistroVersion", skip_serializing_if = "String::is_empty")]
    pub distro_version: String,
    #[serde(rename = "DistroCodeName", skip_serializing_if = "String::is_empty")]
    pub distro_code_name: String,
    /// Embedding application (`tsnet`, `k8s-operator`, …).
    #[serde(rename = "App", skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(rename = "Desktop", skip_serializing_if = "Option::is_none")]
    pub desktop: Option<bool>,
    #[serde(rename = "Package", skip_serializing_if = "String::is_empty")]
    pub package: String,
    #[serde(rename = "DeviceModel", skip_serializing_if = "String::is_empty")]
    pub device_model: String,
    #[serde(rename = "PushDeviceToken", skip_serializing_if = "String::is_empty")]
    pub push_device_token: String,
    /// The host name the client runs on (source of the MagicDNS name).
    #[serde(rename = "Hostname", skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// The host blocks all incoming connections.
    #[serde(rename = "ShieldsUp", skip_serializing_if = "std::ops::Not::not")]
    pub shields_up: bool,
    #[serde(rename = "ShareeNode", skip_serializing_if = "std::ops::Not::not")]
    pub sharee_node: bool,
    #[serde(rename = "NoLogsNoSupport", skip_serializing_if = "std::ops::Not::not")]
    pub no_logs_no_support: bool,
    #[serde(rename = "WireIngress", skip_serializing_if = "std::ops::Not::not")]
    pub wire_ingress: bool,
    #[serde(rename = "IngressEnabled", skip_serializing_if = "std::ops::Not::not")]
    pub ingress_enabled: bool,
    #[serde(rename = "AllowsUpdate", skip_serializing_if = "std::ops::Not::not")]
    pub allows_update: bool,
    /// `uname -m`.
    #[serde(rename = "Machine", skip_serializing_if = "String::is_empty")]
    pub machine: String,
    #[serde(rename = "GoArch", skip_serializing_if = "String::is_empty")]
    pub go_arch: String,
    #[serde(rename = "GoArchVar", skip_serializing_if = "String::is_empty")]
    pub go_arch_var: String,
    #[serde(rename = "GoVersion", skip_serializing_if = "String::is_empty")]
    pub go_version: String,
    /// Advertised subnet routes; an exit node advertises `0.0.0.0/0` and `::/0`.
    #[serde(
        rename = "RoutableIPs",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub routable_ips: Vec<IpNet>,
    /// ACL tags the node asks for (`tag:server`).
    #[serde(
        rename = "RequestTags",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub request_tags: Vec<String>,
    #[serde(
        rename = "WoLMACs",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub wol_macs: Vec<String>,
    /// Services listening on the node (peerapi ports among them).
    #[serde(
        rename = "Services",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub services: Vec<Service>,
    /// Network conditions; since v1.66 omitted when unchanged, so keep the previous one.
    #[serde(rename = "NetInfo", skip_serializing_if = "Option::is_none")]
    pub net_info: Option<NetInfo>,
    /// SSH host keys, advertised when Tailscale SSH runs.
    #[serde(
        rename = "sshHostKeys",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ssh_host_keys: Vec<String>,
    #[serde(rename = "Cloud", skip_serializing_if = "String::is_empty")]
    pub cloud: String,
    /// Running in userspace (netstack) mode.
    #[serde(rename = "Userspace", skip_serializing_if = "Option::is_none")]
    pub userspace: Option<bool>,
    #[serde(rename = "UserspaceRouter", skip_serializing_if = "Option::is_none")]
    pub userspace_router: Option<bool>,
    #[serde(rename = "AppConnector", skip_serializing_if = "Option::is_none")]
    pub app_connector: Option<bool>,
    #[serde(rename = "ServicesHash", skip_serializing_if = "String::is_empty")]
    pub services_hash: String,
    /// StableID of the selected exit node; empty when none.
    #[serde(rename = "ExitNodeID", skip_serializing_if = "String::is_empty")]
    pub exit_node_id: String,
    #[serde(rename = "Location", skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(rename = "StateEncrypted", skip_serializing_if = "Option::is_none")]
    pub state_encrypted: Option<bool>,
    /// Every other key, kept verbatim (e.g. `TPM`, fields of newer clients).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An advertised service (`tailcfg.Service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    /// See [`service_proto`].
    #[serde(rename = "Proto")]
    pub proto: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Description", skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A node's declared location (`tailcfg.Location`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Location {
    #[serde(rename = "Country", skip_serializing_if = "String::is_empty")]
    pub country: String,
    #[serde(rename = "CountryCode", skip_serializing_if = "String::is_empty")]
    pub country_code: String,
    #[serde(rename = "City", skip_serializing_if = "String::is_empty")]
    pub city: String,
    #[serde(rename = "CityCode", skip_serializing_if = "String::is_empty")]
    pub city_code: String,
    #[serde(rename = "Latitude", skip_serializing_if = "is_zero")]
    pub latitude: f64,
    #[serde(rename = "Longitude", skip_serializing_if = "is_zero")]
    pub longitude: f64,
    #[serde(rename = "Priority", skip_serializing_if = "is_zero")]
    pub priority: i64,
}

/// Network conditions measured by the client's netcheck (`tailcfg.NetInfo`).
///
/// Unlike Hostinfo, the `opt.Bool` fields here have no `omitempty`: unset ones are written as
/// `null`, and `PreferredDERP` is always written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetInfo {
    #[serde(rename = "MappingVariesByDestIP")]
    pub mapping_varies_by_dest_ip: Option<bool>,
    #[serde(rename = "HairPinning")]
    pub hair_pinning: Option<bool>,
    #[serde(rename = "WorkingIPv6")]
    pub working_ipv6: Option<bool>,
    #[serde(rename = "OSHasIPv6")]
    pub os_has_ipv6: Option<bool>,
    #[serde(rename = "WorkingUDP")]
    pub working_udp: Option<bool>,
    #[serde(rename = "WorkingICMPv4")]
    pub working_icmpv4: Option<bool>,
    #[serde(rename = "HavePortMap", skip_serializing_if = "std::ops::Not::not")]
    pub have_port_map: bool,
    #[serde(rename = "UPnP")]
    pub upnp: Option<bool>,
    #[serde(rename = "PMP")]
    pub pmp: Option<bool>,
    #[serde(rename = "PCP")]
    pub pcp: Option<bool>,
    /// The client's home DERP region (0 = none yet).
    #[serde(rename = "PreferredDERP")]
    pub preferred_derp: i32,
    /// `wired`, `wifi` or `mobile`.
    #[serde(rename = "LinkType", skip_serializing_if = "String::is_empty")]
    pub link_type: String,
    /// Region (as `"<id>-v4"`/`"<id>-v6"` or region code) -> latency in seconds.
    #[serde(
        rename = "DERPLatency",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub derp_latency: BTreeMap<String, f64>,
    #[serde(rename = "FirewallMode", skip_serializing_if = "String::is_empty")]
    pub firewall_mode: String,
    /// Every other key, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}
