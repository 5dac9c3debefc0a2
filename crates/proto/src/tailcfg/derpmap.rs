//! The DERP relay map pushed in `MapResponse.DERPMap` (`tailcfg.DERPMap`, `DERPRegion`,
//! `DERPNode`).
//!
//! Wire notes: `Regions` and `HomeParams.RegionScore` are Go `map[int]…`, so their JSON keys are
//! decimal strings (`"900"`); `omitDefaultRegions` is the one lowercase key. A `null` region is
//! dropped when reading, as the client does. Region IDs 900-999 are for self-hosted regions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::null_as_default;
use super::wire::{is_zero, null_values_dropped};

/// The set of DERP regions a node may use. Absent in a MapResponse means "unchanged".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpMap {
    /// Server-side tuning of home-region selection.
    #[serde(rename = "HomeParams", skip_serializing_if = "Option::is_none")]
    pub home_params: Option<DerpHomeParams>,
    /// Regions by region ID.
    #[serde(rename = "Regions", deserialize_with = "null_values_dropped")]
    pub regions: BTreeMap<i32, DerpRegion>,
    /// Whether the client should drop Tailscale's built-in default regions.
    #[serde(
        rename = "omitDefaultRegions",
        alias = "OmitDefaultRegions",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub omit_default_regions: bool,
}

/// Home-region selection parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpHomeParams {
    /// Region ID -> latency multiplier (below 1 prefers the region, above 1 avoids it).
    #[serde(
        rename = "RegionScore",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub region_score: BTreeMap<i32, f64>,
}

/// A geographic region of equivalent DERP servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpRegion {
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// Short code such as `"nyc"`.
    #[serde(rename = "RegionCode")]
    pub region_code: String,
    /// Long name such as `"New York City"`.
    #[serde(rename = "RegionName")]
    pub region_name: String,
    #[serde(rename = "Latitude", skip_serializing_if = "is_zero")]
    pub latitude: f64,
    #[serde(rename = "Longitude", skip_serializing_if = "is_zero")]
    pub longitude: f64,
    /// Deprecated: do not pick this region as home.
    #[serde(rename = "Avoid", skip_serializing_if = "std::ops::Not::not")]
    pub avoid: bool,
    /// Never measure latency to or pick as home; reachable only as a peer's home.
    #[serde(rename = "NoMeasureNoHome", skip_serializing_if = "std::ops::Not::not")]
    pub no_measure_no_home: bool,
    /// Servers in preference order.
    #[serde(rename = "Nodes", deserialize_with = "null_as_default")]
    pub nodes: Vec<DerpNode>,
}

/// One DERP (and/or STUN) server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpNode {
    /// Unique name within the map, conventionally `"<region><letter>"` (`"900a"`).
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// Host name used for TLS (`https://<HostName>/derp`) and, without IPv4/IPv6, DNS.
    #[serde(rename = "HostName")]
    pub host_name: String,
    /// Expected TLS name, or `sha256-raw:<hex>` to pin a self-signed certificate.
    #[serde(rename = "CertName", skip_serializing_if = "String::is_empty")]
    pub cert_name: String,
    /// Forced IPv4 address, or `"none"` to disable IPv4.
    #[serde(rename = "IPv4", skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// Forced IPv6 address, or `"none"` to disable IPv6.
    #[serde(rename = "IPv6", skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// STUN port; 0 means 3478 and -1 disables STUN.
    #[serde(rename = "STUNPort", skip_serializing_if = "is_zero")]
    pub stun_port: i32,
    /// Only STUN is served here, no DERP.
    #[serde(rename = "STUNOnly", skip_serializing_if = "std::ops::Not::not")]
    pub stun_only: bool,
    /// DERP (HTTPS) port; 0 means 443.
    #[serde(rename = "DERPPort", skip_serializing_if = "is_zero")]
    pub derp_port: i32,
    /// Skip TLS certificate verification (tests only).
    #[serde(
        rename = "InsecureForTests",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub insecure_for_tests: bool,
    /// STUN target IP override for tests.
    #[serde(rename = "STUNTestIP", skip_serializing_if = "String::is_empty")]
    pub stun_test_ip: String,
    /// Whether the captive-portal probe may use plain HTTP on port 80 here.
    #[serde(rename = "CanPort80", skip_serializing_if = "std::ops::Not::not")]
    pub can_port80: bool,
}
