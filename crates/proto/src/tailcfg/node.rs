//! A node as the control server describes it to clients (`tailcfg.Node`), plus the ID types.
//!
//! The same type serves as `MapResponse.Node` (self) and as each peer. Wire notes:
//! - keys are always written, a zero key as prefix + 64 zeros;
//! - `KeyExpiry` and `Created` are always written, `None` as `0001-01-01T00:00:00Z` (for
//!   `KeyExpiry`: never expires);
//! - `Addresses` holds single-IP prefixes (`/32`, `/128`); `AllowedIPs: null` (`None`) means
//!   "same as Addresses" for capability version 112 and later, while `[]` means "none";
//! - `Name` is the MagicDNS FQDN with a trailing dot;
//! - everything else follows Go's `omitempty`.
//!
//! `Node` implements `PartialEq` so the server can tell whether a peer changed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::dns::DnsResolver;
use super::hostinfo::Hostinfo;
use super::null_as_default;
use super::time::{go_time, go_time_ptr};
use super::wire::{go_bytes, is_zero};
use crate::keys::{DiscoPublic, MachinePublic, NodePublic};

/// A client's capability version (`tailcfg.CapabilityVersion`).
pub type CapabilityVersion = i32;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// Whether this is the zero ID ("unset").
            pub fn is_zero(&self) -> bool {
                self.0 == 0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// A node's integer ID (`tailcfg.NodeID`). Positive and below 2^53 on the wire; as a map key
    /// it is a decimal string.
    NodeId
);
id_type!(
    /// A user's integer ID (`tailcfg.UserID`).
    UserId
);
id_type!(
    /// A login's integer ID (`tailcfg.LoginID`); unused by clients.
    LoginId
);

/// Node capability names (`CapMap` keys) a server commonly sends.
pub mod node_attr {
    /// Stops the client's captive-portal probes (which otherwise reach the Internet).
    pub const DISABLE_CAPTIVE_PORTAL_DETECTION: &str = "disable-captive-portal-detection";
    /// Stops UPnP port-mapping attempts.
    pub const DEBUG_DISABLE_UPNP: &str = "debug-disable-upnp";
    /// Lets MagicDNS answer AAAA for peers that also have IPv4.
    pub const MAGICDNS_PEER_AAAA: &str = "magicdns-aaaa";
    /// Asks the client not to apply delta updates.
    pub const DISABLE_DELTA_UPDATES: &str = "disable-delta-updates";
    /// Picks a random WireGuard port instead of 41641.
    pub const RANDOMIZE_CLIENT_PORT: &str = "randomize-client-port";
    pub const CAP_FILE_SHARING: &str = "https://tailscale.com/cap/file-sharing";
    pub const CAP_IS_ADMIN: &str = "https://tailscale.com/cap/is-admin";
    pub const CAP_IS_OWNER: &str = "https://tailscale.com/cap/is-owner";
    pub const CAP_SSH: &str = "https://tailscale.com/cap/ssh";
    pub const CAP_SSH_RULE_IN: &str = "https://tailscale.com/cap/ssh-rule-in";
    pub const DEFAULT_AUTO_UPDATE: &str = "default-auto-update";
}

/// `tailcfg.NodeCapMap`: capability -> optional list of JSON arguments (`null` = no arguments).
pub type NodeCapMap = BTreeMap<String, Option<Vec<serde_json::Value>>>;

/// The legacy `Node.DERP` magic IP; the port of `"127.3.3.40:<region>"` is the region ID.
pub const DERP_MAGIC_IP: &str = "127.3.3.40";

/// A node (self or peer) as sent in a MapResponse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: NodeId,
    /// Stable string ID (the server may use the decimal ID).
    #[serde(rename = "StableID")]
    pub stable_id: String,
    /// MagicDNS FQDN with a trailing dot (`host.tail.example.`).
    #[serde(rename = "Name")]
    pub name: String,
    /// Owning user.
    #[serde(rename = "User")]
    pub user: UserId,
    /// The user who shared this node in, if any.
    #[serde(rename = "Sharer", skip_serializing_if = "is_zero")]
    pub sharer: UserId,
    /// Node key (the WireGuard public key).
    #[serde(rename = "Key")]
    pub key: NodePublic,
    /// `None` = never expires.
    #[serde(rename = "KeyExpiry", with = "go_time")]
    pub key_expiry: Option<DateTime<Utc>>,
    /// Tailnet-lock signature (base64).
    #[serde(
        rename = "KeySignature",
        skip_serializing_if = "Vec::is_empty",
        with = "go_bytes"
    )]
    pub key_signature: Vec<u8>,
    #[serde(rename = "Machine")]
    pub machine: MachinePublic,
    #[serde(rename = "DiscoKey")]
    pub disco_key: DiscoPublic,
    /// The node's own IPs as single-IP prefixes.
    #[serde(rename = "Addresses", deserialize_with = "null_as_default")]
    pub addresses: Vec<IpNet>,
    /// Routes to this node; `None` (written `null`) = same as `addresses`.
    #[serde(rename = "AllowedIPs")]
    pub allowed_ips: Option<Vec<IpNet>>,
    /// UDP endpoints to try (`ip:port`).
    #[serde(
        rename = "Endpoints",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub endpoints: Vec<SocketAddr>,
    /// Legacy home DERP as `"127.3.3.40:<region>"`.
    #[serde(rename = "DERP", skip_serializing_if = "String::is_empty")]
    pub legacy_derp: String,
    /// Home DERP region ID (0 = none).
    #[serde(rename = "HomeDERP", skip_serializing_if = "is_zero")]
    pub home_derp: i32,
    /// Always written; `null` when unknown.
    #[serde(rename = "Hostinfo")]
    pub hostinfo: Option<Hostinfo>,
    #[serde(rename = "Created", with = "go_time")]
    pub created: Option<DateTime<Utc>>,
    /// The node's capability version, if known.
    #[serde(rename = "Cap", skip_serializing_if = "is_zero")]
    pub cap: CapabilityVersion,
    /// ACL tags (`tag:x`); non-empty means the node is tagged.
    #[serde(
        rename = "Tags",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Subnet routes this node is currently primary for.
    #[serde(
        rename = "PrimaryRoutes",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub primary_routes: Vec<IpNet>,
    #[serde(
        rename = "LastSeen",
        skip_serializing_if = "Option::is_none",
        with = "go_time_ptr"
    )]
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(rename = "Online", skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Must be true for the self node or the client waits for machine approval.
    #[serde(
        rename = "MachineAuthorized",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub machine_authorized: bool,
    /// Deprecated capability list (use `cap_map`).
    #[serde(
        rename = "Capabilities",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub capabilities: Vec<String>,
    /// Node attributes and capabilities, see [`node_attr`].
    #[serde(
        rename = "CapMap",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cap_map: NodeCapMap,
    #[serde(
        rename = "UnsignedPeerAPIOnly",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub unsigned_peer_api_only: bool,
    #[serde(rename = "ComputedName", skip_serializing_if = "String::is_empty")]
    pub computed_name: String,
    #[serde(
        rename = "ComputedNameWithHost",
        skip_serializing_if = "String::is_empty"
    )]
    pub computed_name_with_host: String,
    #[serde(
        rename = "DataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub data_plane_audit_log_id: String,
    /// The key has expired (clients also work this out themselves).
    #[serde(rename = "Expired", skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    #[serde(
        rename = "SelfNodeV4MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v4_masq_addr_for_this_peer: Option<IpAddr>,
    #[serde(
        rename = "SelfNodeV6MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v6_masq_addr_for_this_peer: Option<IpAddr>,
    #[serde(rename = "IsWireGuardOnly", skip_serializing_if = "std::ops::Not::not")]
    pub is_wireguard_only: bool,
    #[serde(rename = "IsJailed", skip_serializing_if = "std::ops::Not::not")]
    pub is_jailed: bool,
    #[serde(
        rename = "ExitNodeDNSResolvers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub exit_node_dns_resolvers: Vec<DnsResolver>,
}

impl Node {
    /// Whether the node carries capability `cap` in its `CapMap` (or the legacy list).
    pub fn has_cap(&self, cap: &str) -> bool {
        self.cap_map.contains_key(cap) || self.capabilities.iter().any(|c| c == cap)
    }

    /// The home DERP region: `HomeDERP`, else the port of the legacy `DERP` string, else 0.
    pub fn home_derp_region(&self) -> i32 {
        if self.home_derp != 0 {
            return self.home_derp;
        }
        self.legacy_derp
            .strip_prefix(DERP_MAGIC_IP)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|port| port.parse().ok())
            .unwrap_or(0)
    }

    /// The routes to this node, resolving `AllowedIPs: null` to the addresses.
    pub fn effective_allowed_ips(&self) -> &[IpNet] {
        self.allowed_ips.as_deref().unwrap_or(&self.addresses)
    }
}
