//! DNS configuration pushed in `MapResponse.DNSConfig` (`tailcfg.DNSConfig`,
//! `dnstype.Resolver`, `tailcfg.DNSRecord`).
//!
//! Every field is `omitempty` in Go, so empty values are left out when writing and `null` or a
//! missing key reads as empty. `Proxied` is what turns MagicDNS on.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::null_as_default;
use super::wire::null_values_as_default;

/// The DNS settings a node should use. Absent in a MapResponse means "unchanged".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    /// Default upstream resolvers ("override local DNS"), in order of preference.
    #[serde(
        rename = "Resolvers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub resolvers: Vec<DnsResolver>,
    /// Split DNS: suffix (optional trailing dot, no leading dot) -> resolvers. An empty list
    /// means the suffix is answered by the built-in resolver (for `ExtraRecords`).
    #[serde(
        rename = "Routes",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_values_as_default"
    )]
    pub routes: BTreeMap<String, Vec<DnsResolver>>,
    /// Used only when split DNS is configured without default resolvers.
    #[serde(
        rename = "FallbackResolvers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub fallback_resolvers: Vec<DnsResolver>,
    /// Search domains: FQDNs without the trailing dot.
    #[serde(
        rename = "Domains",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub domains: Vec<String>,
    /// Enables MagicDNS (the name is historical).
    #[serde(rename = "Proxied", skip_serializing_if = "std::ops::Not::not")]
    pub proxied: bool,
    /// Deprecated global nameservers (capability versions 9 to 13 only).
    #[serde(
        rename = "Nameservers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub nameservers: Vec<IpAddr>,
    /// Names the server helps get TLS certificates for (no trailing dot).
    #[serde(
        rename = "CertDomains",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cert_domains: Vec<String>,
    /// Extra records served by MagicDNS.
    #[serde(
        rename = "ExtraRecords",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub extra_records: Vec<DnsRecord>,
    /// Suffixes an exit node's DNS proxy must not answer (leading dot = suffix match).
    #[serde(
        rename = "ExitNodeFilteredSet",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub exit_node_filtered_set: Vec<String>,
}

/// One upstream resolver (`dnstype.Resolver`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsResolver {
    /// `"1.1.1.1"`, `"1.1.1.1:53"`, `"[2606:4700::1111]:53"`, `"https://…"` (DoH) or
    /// `"tls://…"` (DoT).
    #[serde(rename = "Addr", skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// IPs to use for a DoH/DoT host name instead of resolving it.
    #[serde(
        rename = "BootstrapResolution",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub bootstrap_resolution: Vec<IpAddr>,
    /// Whether to keep using this resolver while an exit node is in use.
    #[serde(rename = "UseWithExitNode", skip_serializing_if = "std::ops::Not::not")]
    pub use_with_exit_node: bool,
}

impl DnsResolver {
    /// A plain resolver at `addr` (an IP, `ip:port` or URL).
    pub fn new(addr: impl Into<String>) -> Self {
        DnsResolver {
            addr: addr.into(),
            ..Default::default()
        }
    }
}

/// An extra MagicDNS record (`tailcfg.DNSRecord`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsRecord {
    /// FQDN; the trailing dot is optional.
    #[serde(rename = "Name")]
    pub name: String,
    /// `""` (A or AAAA, from the value), `"A"` or `"AAAA"`; other types are ignored by clients.
    #[serde(rename = "Type", skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    /// The IP address as text.
    #[serde(rename = "Value")]
    pub value: String,
}
