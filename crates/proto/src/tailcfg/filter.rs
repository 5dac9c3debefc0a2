//! Packet filter rules (`tailcfg.FilterRule`) as the control server sends them.
//!
//! Wire notes: `SrcIPs`/`DstPorts[].IP` entries are strings in one of the forms `"*"`, a single
//! IP, a masked CIDR, an inclusive range `a-b`, or (sources only) `cap:<capability>`. The legacy
//! `SrcBits`/`Bits` fields are never emitted; a client rejects filters that carry them.

use serde::{Deserialize, Serialize};

/// An inclusive port range. `0..=65535` means every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    #[serde(rename = "First")]
    pub first: u16,
    #[serde(rename = "Last")]
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: 65535,
    };

    /// A single port.
    pub const fn single(p: u16) -> Self {
        PortRange { first: p, last: p }
    }
}

/// A destination: an IP-ish string plus a port range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetPortRange {
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "Ports")]
    pub ports: PortRange,
}

/// Application capabilities granted to sources on destinations (WhoIs), not packet permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapGrant {
    #[serde(rename = "Dsts", default)]
    pub dsts: Vec<String>,
    #[serde(rename = "CapMap", default, skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<std::collections::BTreeMap<String, Option<Vec<serde_json::Value>>>>,
}

/// One allow rule. Rules form an unordered allow-list; anything unmatched is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    #[serde(
        rename = "SrcIPs",
        default,
        deserialize_with = "super::null_as_default"
    )]
    pub src_ips: Vec<String>,
    #[serde(
        rename = "DstPorts",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub dst_ports: Vec<NetPortRange>,
    /// IANA protocol numbers; empty means TCP, UDP, ICMPv4 and ICMPv6.
    #[serde(
        rename = "IPProto",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub ip_proto: Vec<i32>,
    #[serde(
        rename = "CapGrant",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub cap_grant: Vec<CapGrant>,
}

impl FilterRule {
    /// The rule a tailnet without a policy gets: everyone may reach everything.
    pub fn allow_all() -> Self {
        FilterRule {
            src_ips: vec!["*".to_string()],
            dst_ports: vec![NetPortRange {
                ip: "*".to_string(),
                ports: PortRange::ANY,
            }],
            ip_proto: Vec::new(),
            cap_grant: Vec::new(),
        }
    }
}
