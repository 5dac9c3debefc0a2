//! The netcheck report: what `agent netcheck` prints (and `--json` dumps) and what goes to
//! control as `Hostinfo.NetInfo` (reference §6).
//!
//! Sans-IO assembly: build a [`Report`] from a finished STUN round
//! ([`Report::from_stun`], with the DERP map for region names), add HTTPS latencies where UDP is
//! blocked ([`Report::add_https_latencies`], measured by [`probe::https_latencies`] with feature
//! `derp-client`), fill in the port-mapping probe and [`probe::os_has_ipv6`], then print it or
//! turn it into [`NetInfo`] with [`Report::to_net_info`].
//!
//! [`probe`] is the one I/O part: TLS connects and timed `GET /derp/latency-check` requests to
//! each region's DERP node, and the OS IPv6 check.

#[cfg(feature = "derp-client")]
pub mod probe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use proto::tailcfg::{DerpMap, NetInfo};
use serde::{Serialize, Serializer};

use crate::stun_client;

/// How a region's latency was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyMethod {
    /// A STUN round trip over UDP (the normal case).
    Stun,
    /// A `GET /derp/latency-check` over an established TLS connection (UDP blocked).
    Https,
}

/// Latency to one DERP region.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionLatency {
    /// The region's name from the DERP map (`RegionName`, else `RegionCode`; empty if unknown).
    pub name: String,
    /// Best IPv4 round trip.
    #[serde(rename = "latency_v4_ms", serialize_with = "ser_ms")]
    pub latency_v4: Option<Duration>,
    /// Best IPv6 round trip.
    #[serde(rename = "latency_v6_ms", serialize_with = "ser_ms")]
    pub latency_v6: Option<Duration>,
    /// How it was measured.
    pub method: LatencyMethod,
}

impl RegionLatency {
    /// The better of the two families.
    pub fn best(&self) -> Option<Duration> {
        match (self.latency_v4, self.latency_v6) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the gateway offers for port mapping (filled by the agent from the port-mapping probe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// UPnP IGD answered.
    pub upnp: bool,
    /// NAT-PMP answered.
    pub pmp: bool,
    /// PCP answered.
    pub pcp: bool,
    /// We currently hold a mapping (`NetInfo.HavePortMap`).
    pub have_mapping: bool,
}

/// One HTTPS latency measurement (from [`probe::https_latencies`] or any other prober).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpsLatency {
    /// The DERP region.
    pub region_id: u16,
    /// Time from sending the request on an established TLS connection to the response head.
    pub latency: Duration,
    /// The node address connected to (its family says which latency this is).
    pub addr: SocketAddr,
}

/// A netcheck result.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Any STUN reply arrived: UDP works.
    pub udp: bool,
    /// IPv4 works (a STUN reply over IPv4, or an HTTPS probe connected over IPv4).
    pub ipv4: bool,
    /// IPv6 works (likewise over IPv6).
    pub ipv6: bool,
    /// The OS can use IPv6 at all (a socket bound to `[::1]:0`).
    pub os_has_ipv6: bool,
    /// Our public IPv4 ip:port as the first STUN server saw it.
    pub global_v4: Option<SocketAddr>,
    /// Our public IPv6 ip:port.
    pub global_v6: Option<SocketAddr>,
    /// `Some(true)`: the NAT maps each destination to a new port ("hard" NAT). `None` when fewer
    /// than two IPv4 STUN servers answered.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Port-mapping services on the gateway; `None` when not probed.
    pub port_mapping: Option<PortMapping>,
    /// Latency per DERP region ID.
    pub regions: BTreeMap<u16, RegionLatency>,
    /// The chosen home region.
    pub preferred_derp: Option<u16>,
}

impl Report {
    /// The report for a finished STUN round. `derp_map` supplies region names and, for the
    /// HTTPS fallback, home-region scores.
    pub fn from_stun(stun: &stun_client::Report, derp_map: Option<&DerpMap>) -> Report {
        let mut regions: BTreeMap<u16, RegionLatency> = BTreeMap::new();
        let ids = stun
            .region_latency
            .keys()
            .chain(stun.region_v4_latency.keys())
            .chain(stun.region_v6_latency.keys());
        for id in ids {
            regions.entry(*id).or_insert_with(|| RegionLatency {
                name: region_name(derp_map, *id),
                latency_v4: stun.region_v4_latency.get(id).copied(),
                latency_v6: stun.region_v6_latency.get(id).copied(),
                method: LatencyMethod::Stun,
            });
        }
        Report {
            udp: stun.udp,
            ipv4: stun.ipv4,
            ipv6: stun.ipv6,
            os_has_ipv6: false,
            global_v4: stun.global_v4,
            global_v6: stun.global_v6,
            mapping_varies_by_dest_ip: stun.mapping_varies_by_dest_ip,
            port_mapping: None,
            regions,
            preferred_derp: stun.preferred_derp,
        }
    }

    /// Adds HTTPS latencies (the fallback when UDP is blocked): each fills the region's latency
    /// for its family where STUN measured nothing, and proves that family works. Without a STUN
    /// home region, the fastest region by HTTPS (scaled by the DERP map's `RegionScore`, never an
    /// `Avoid` region) becomes the preferred one.
    pub fn add_https_latencies(&mut self, results: &[HttpsLatency], derp_map: Option<&DerpMap>) {
        for r in results {
            let v6 = crate::magicsock::canonical_addr(r.addr).is_ipv6();
            if v6 {
                self.ipv6 = true;
            } else {
                self.ipv4 = true;
            }
            let entry = self
                .regions
                .entry(r.region_id)
                .or_insert_with(|| RegionLatency {
                    name: region_name(derp_map, r.region_id),
                    latency_v4: None,
                    latency_v6: None,
                    method: LatencyMethod::Https,
                });
            if entry.method != LatencyMethod::Https {
                // STUN measured this region already: UDP numbers are the ones that matter.
                continue;
            }
            let slot = if v6 {
                &mut entry.latency_v6
            } else {
                &mut entry.latency_v4
            };
            *slot = Some(slot.map_or(r.latency, |d| d.min(r.latency)));
        }
        if self.preferred_derp.is_none() {
            self.preferred_derp = self
                .regions
                .iter()
                .filter(|(id, _)| !region_avoided(derp_map, **id))
                .filter_map(|(id, r)| {
                    r.best()
                        .map(|d| (d.mul_f64(region_score(derp_map, *id)), *id))
                })
                .min()
                .map(|(_, id)| id);
        }
    }

    /// `DERPLatency` for NetInfo: `"<id>-v4"` / `"<id>-v6"` → seconds.
    pub fn derp_latency(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (id, r) in &self.regions {
            if let Some(d) = r.latency_v4 {
                out.insert(format!("{id}-v4"), d.as_secs_f64());
            }
            if let Some(d) = r.latency_v6 {
                out.insert(format!("{id}-v6"), d.as_secs_f64());
            }
        }
        out
    }

    /// `Hostinfo.NetInfo` for control. `PreferredDERP` is this report's choice (0 if none);
    /// a caller that keeps its current home when the report has none overrides it.
    pub fn to_net_info(&self) -> NetInfo {
        let pm = self.port_mapping;
        NetInfo {
            mapping_varies_by_dest_ip: self.mapping_varies_by_dest_ip,
            working_ipv6: Some(self.ipv6),
            os_has_ipv6: Some(self.os_has_ipv6),
            working_udp: Some(self.udp),
            have_port_map: pm.is_some_and(|p| p.have_mapping),
            upnp: pm.map(|p| p.upnp),
            pmp: pm.map(|p| p.pmp),
            pcp: pm.map(|p| p.pcp),
            preferred_derp: self.preferred_derp.map_or(0, i32::from),
            derp_latency: self.derp_latency(),
            ..NetInfo::default()
        }
    }
}

fn find_region(map: Option<&DerpMap>, id: u16) -> Option<&proto::tailcfg::DerpRegion> {
    map?.regions.get(&i32::from(id))
}

fn region_name(map: Option<&DerpMap>, id: u16) -> String {
    find_region(map, id)
        .map(|r| {
            if r.region_name.is_empty() {
                r.region_code.clone()
            } else {
                r.region_name.clone()
            }
        })
        .unwrap_or_default()
}

fn region_avoided(map: Option<&DerpMap>, id: u16) -> bool {
    find_region(map, id).is_some_and(|r| r.avoid || r.no_measure_no_home)
}

fn region_score(map: Option<&DerpMap>, id: u16) -> f64 {
    crate::stun_client::region_score(
        map.and_then(|m| m.home_params.as_ref())
            .and_then(|h| h.region_score.get(&i32::from(id)))
            .copied(),
    )
}

/// Durations as fractional milliseconds in JSON (`null` when absent).
fn ser_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn map() -> DerpMap {
        serde_json::from_str(
            r#"{"Regions":{
                "900":{"RegionID":900,"RegionCode":"lab","RegionName":"Lab One","Nodes":[]},
                "901":{"RegionID":901,"RegionCode":"two","Nodes":[]},
                "902":{"RegionID":902,"RegionCode":"avoid","Avoid":true,"Nodes":[]}},
              "HomeParams":{"RegionScore":{"901":0.5}}}"#,
        )
        .unwrap()
    }

    fn stun_report() -> stun_client::Report {
        stun_client::Report {
            udp: true,
            ipv4: true,
            ipv6: true,
            global_v4: Some("198.51.100.3:55433".parse().unwrap()),
            global_v6: Some("[2001:db8::3]:41641".parse().unwrap()),
            mapping_varies_by_dest_ip: Some(true),
            region_latency: [(900, ms(10)), (901, ms(30))].into(),
            region_v4_latency: [(900, ms(12)), (901, ms(30))].into(),
            region_v6_latency: [(900, ms(10))].into(),
            mapped: BTreeMap::new(),
            preferred_derp: Some(900),
        }
    }

    #[test]
    fn stun_report_becomes_netcheck_and_netinfo() {
        let mut r = Report::from_stun(&stun_report(), Some(&map()));
        r.os_has_ipv6 = true;
        r.port_mapping = Some(PortMapping {
            pmp: true,
            ..PortMapping::default()
        });
        assert!(r.udp && r.ipv4 && r.ipv6);
        assert_eq!(r.mapping_varies_by_dest_ip, Some(true));
        let lab = &r.regions[&900];
        assert_eq!(lab.name, "Lab One");
        assert_eq!(
            (lab.latency_v4, lab.latency_v6),
            (Some(ms(12)), Some(ms(10)))
        );
        assert_eq!(lab.method, LatencyMethod::Stun);
        assert_eq!(r.regions[&901].name, "two");

        let ni = r.to_net_info();
        assert_eq!(ni.mapping_varies_by_dest_ip, Some(true));
        assert_eq!(ni.working_udp, Some(true));
        assert_eq!(ni.working_ipv6, Some(true));
        assert_eq!(ni.os_has_ipv6, Some(true));
        assert_eq!(
            (ni.upnp, ni.pmp, ni.pcp),
            (Some(false), Some(true), Some(false))
        );
        assert!(!ni.have_port_map);
        assert_eq!(ni.preferred_derp, 900);
        let want: BTreeMap<String, f64> = [
            ("900-v4".to_owned(), 0.012),
            ("900-v6".to_owned(), 0.010),
            ("901-v4".to_owned(), 0.030),
        ]
        .into();
        assert_eq!(ni.derp_latency, want);
        // On the wire the way Tailscale writes it.
        let json = serde_json::to_value(&ni).unwrap();
        assert_eq!(json["DERPLatency"]["900-v6"], 0.01);
        assert_eq!(json["MappingVariesByDestIP"], true);
    }

    #[test]
    fn json_output_is_readable() {
        let r = Report::from_stun(&stun_report(), Some(&map()));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["udp"], true);
        assert_eq!(v["global_v4"], "198.51.100.3:55433");
        assert_eq!(v["mapping_varies_by_dest_ip"], true);
        assert_eq!(v["port_mapping"], serde_json::Value::Null);
        assert_eq!(v["preferred_derp"], 900);
        let lab = &v["regions"]["900"];
        assert_eq!(lab["name"], "Lab One");
        assert_eq!(lab["latency_v4_ms"], 12.0);
        assert_eq!(lab["method"], "stun");
        assert_eq!(
            v["regions"]["901"]["latency_v6_ms"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn udp_blocked_uses_https_latencies() {
        let stun = stun_client::Report::default();
        let mut r = Report::from_stun(&stun, Some(&map()));
        assert!(!r.udp && !r.ipv4 && r.regions.is_empty());
        let at = |region_id, latency, addr: &str| HttpsLatency {
            region_id,
            latency,
            addr: addr.parse().unwrap(),
        };
        r.add_https_latencies(
            &[
                at(900, ms(40), "127.0.0.1:443"),
                at(901, ms(60), "127.0.0.2:443"),
                // Fastest, but the region is marked Avoid.
                at(902, ms(5), "127.0.0.3:443"),
            ],
            Some(&map()),
        );
        assert!(!r.udp && r.ipv4 && !r.ipv6);
        assert_eq!(r.regions[&900].method, LatencyMethod::Https);
        assert_eq!(r.regions[&900].latency_v4, Some(ms(40)));
        // 901 scores 0.5: 30 ms effective beats 900's 40 ms.
        assert_eq!(r.preferred_derp, Some(901));
        let ni = r.to_net_info();
        assert_eq!(ni.working_udp, Some(false));
        assert_eq!(ni.derp_latency["900-v4"], 0.04);
        assert_eq!(ni.preferred_derp, 901);

        // STUN numbers are never overwritten by HTTPS ones.
        let mut r = Report::from_stun(&stun_report(), Some(&map()));
        r.add_https_latencies(&[at(900, ms(1), "127.0.0.1:443")], None);
        assert_eq!(r.regions[&900].latency_v4, Some(ms(12)));
        assert_eq!(r.preferred_derp, Some(900));
    }
}
