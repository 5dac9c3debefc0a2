//! The resolver's decision for one question, sans-IO: [`plan`] either answers from the
//! tailnet's records ([`Plan::Local`]) or says where to forward ([`Plan::Forward`]).
//!
//! Order, for a question `name`/`type`:
//! 1. a tailnet name (FQDN or short name, any case, trailing dot optional): A/AAAA/ANY with
//!    its addresses; another type, or a family it has no address of, is NOERROR with no
//!    answer (and the zone's SOA in the authority section);
//! 2. a PTR name of a known address: the node's FQDN;
//! 3. a name inside a local zone (the base domain, a split route without resolvers, or the
//!    tailnet reverse zones 64-127.100.in-addr.arpa and fd7a:115c:a1e0::/48): NXDOMAIN with
//!    the SOA, unless a longer split route with resolvers claims it;
//! 4. the longest split route with resolvers, else the global resolvers, else the OS's
//!    original upstreams, else the fallback resolvers;
//! 5. nowhere to forward: [`Plan::NoUpstream`] (the server answers SERVFAIL).

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};

use crate::config::DnsConfig;
use crate::names::{self, Reverse, normalize, parse_reverse, tailnet_reverse_zone};

/// TTL of tailnet answers. Short, so a removed node stops resolving soon even behind a cache.
pub const TTL: u32 = 60;
/// Negative-caching TTL (the SOA minimum and the SOA record's own TTL).
pub const NEGATIVE_TTL: u32 = 5;

/// Which upstream set a forwarded query goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Route {
    /// A split-DNS route (the matched suffix).
    Split { suffix: String },
    /// The global resolvers from the DNS config.
    Global,
    /// The OS's original upstream resolvers.
    Os,
    /// The fallback resolvers from the DNS config.
    Fallback,
}

/// An answer made here, from the tailnet's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The zone's SOA for negative answers.
    pub authorities: Vec<Record>,
}

/// What to do with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Local(LocalAnswer),
    Forward {
        upstreams: Vec<SocketAddr>,
        route: Route,
    },
    /// Not a tailnet name and nowhere to forward it.
    NoUpstream,
}

/// Decides how to answer `name`/`qtype`. `os_upstreams` are the OS's original resolvers.
pub fn plan(
    cfg: &DnsConfig,
    os_upstreams: &[SocketAddr],
    name: &Name,
    qtype: RecordType,
    qclass: DNSClass,
) -> Plan {
    let norm = normalize(&name.to_ascii());
    let class_ok = matches!(qclass, DNSClass::IN | DNSClass::ANY);

    if class_ok {
        if let Some(addrs) = cfg.lookup(&norm) {
            let zone = cfg.local_zone(&canonical(cfg, &norm)).map(str::to_string);
            return Plan::Local(host_answer(name, addrs, qtype, zone.as_deref()));
        }
        if let Some(Reverse::Addr(ip)) = parse_reverse(&norm)
            && let Some(host) = cfg.reverse.get(&ip)
        {
            return Plan::Local(ptr_answer(name, host, qtype, tailnet_reverse_zone(&norm)));
        }
    }
    let split = cfg.split_route(&norm);
    let zone = cfg
        .local_zone(&norm)
        .map(str::to_string)
        .or_else(|| tailnet_reverse_zone(&norm));
    if let Some(zone) = zone
        && class_ok
        && split.is_none_or(|(suffix, _)| suffix.len() <= zone.len())
    {
        return Plan::Local(negative(name, &zone, qtype, &norm));
    }
    if let Some((suffix, upstreams)) = split {
        return Plan::Forward {
            upstreams: upstreams.to_vec(),
            route: Route::Split {
                suffix: suffix.to_string(),
            },
        };
    }
    let (upstreams, route) = if !cfg.resolvers.is_empty() {
        (cfg.resolvers.clone(), Route::Global)
    } else if !os_upstreams.is_empty() {
        (os_upstreams.to_vec(), Route::Os)
    } else if !cfg.fallback_resolvers.is_empty() {
        (cfg.fallback_resolvers.clone(), Route::Fallback)
    } else {
        return Plan::NoUpstream;
    };
    Plan::Forward { upstreams, route }
}

/// The FQDN a (possibly short) name stands for.
fn canonical(cfg: &DnsConfig, norm: &str) -> String {
    cfg.short_names
        .get(norm)
        .cloned()
        .unwrap_or_else(|| norm.to_string())
}

fn host_answer(
    name: &Name,
    addrs: &[IpAddr],
    qtype: RecordType,
    zone: Option<&str>,
) -> LocalAnswer {
    let answers: Vec<Record> = addrs
        .iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(name.clone(), TTL, rdata))
        .collect();
    let authorities = if answers.is_empty() {
        zone.map(|z| vec![soa(z)]).unwrap_or_default()
    } else {
        Vec::new()
    };
    LocalAnswer {
        rcode: ResponseCode::NoError,
        answers,
        authorities,
    }
}

fn ptr_answer(name: &Name, host: &str, qtype: RecordType, zone: Option<String>) -> LocalAnswer {
    let target = Name::from_ascii(format!("{host}.")).ok();
    match target {
        Some(target) if matches!(qtype, RecordType::PTR | RecordType::ANY) => LocalAnswer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name.clone(),
                TTL,
                RData::PTR(PTR(target)),
            )],
            authorities: Vec::new(),
        },
        _ => LocalAnswer {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authorities: zone.map(|z| vec![soa(&z)]).unwrap_or_default(),
        },
    }
}

/// The answer for a name in a local zone that has no records: NXDOMAIN, except the zone apex
/// (which exists) and a SOA question for it.
fn negative(name: &Name, zone: &str, qtype: RecordType, norm: &str) -> LocalAnswer {
    if norm == zone {
        let record = soa(zone);
        if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            let mut record = record;
            record.name = name.clone();
            return LocalAnswer {
                rcode: ResponseCode::NoError,
                answers: vec![record],
                authorities: Vec::new(),
            };
        }
        return LocalAnswer {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authorities: vec![record],
        };
    }
    // An empty non-terminal (a zone-internal name with children, like a partial reverse
    // name) would be NOERROR, but clients treat both as "no such address"; keep NXDOMAIN.
    LocalAnswer {
        rcode: ResponseCode::NXDomain,
        answers: Vec::new(),
        authorities: vec![soa(zone)],
    }
}

/// The SOA record of a tailnet zone, for negative answers.
pub fn soa(zone: &str) -> Record {
    let zone_name = Name::from_ascii(format!("{zone}.")).unwrap_or_else(|_| Name::root());
    let mname = Name::from_ascii(format!("magicdns.{zone}.")).unwrap_or_else(|_| zone_name.clone());
    let rname =
        Name::from_ascii(format!("hostmaster.{zone}.")).unwrap_or_else(|_| zone_name.clone());
    let data = SOA::new(mname, rname, 1, 3600, 600, 86400, NEGATIVE_TTL);
    Record::from_rdata(zone_name, NEGATIVE_TTL, RData::SOA(data))
}

/// Whether an upstream would send queries straight back to us (the MagicDNS addresses).
pub fn is_self_upstream(addr: &SocketAddr) -> bool {
    addr.ip() == IpAddr::V4(crate::MAGIC_IPV4) || addr.ip() == IpAddr::V6(crate::MAGIC_IPV6)
}

/// Used by tests and `agent dns status`: the reverse names we answer for known addresses.
pub fn ptr_names(cfg: &DnsConfig) -> Vec<(String, String)> {
    cfg.reverse
        .iter()
        .map(|(ip, host)| (names::reverse_name(*ip), host.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample_netmap;

    fn cfg() -> DnsConfig {
        DnsConfig::from_netmap(&sample_netmap())
    }

    fn q(cfg: &DnsConfig, name: &str, t: RecordType) -> Plan {
        plan(cfg, &[], &Name::from_ascii(name).unwrap(), t, DNSClass::IN)
    }

    fn local(p: Plan) -> LocalAnswer {
        match p {
            Plan::Local(a) => a,
            other => panic!("expected a local answer, got {other:?}"),
        }
    }

    fn addrs(a: &LocalAnswer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn tailnet_names_answer_a_and_aaaa_in_any_case_and_form() {
        let cfg = cfg();
        for name in [
            "monitoring.example.ts.net.",
            "MONITORING.Example.TS.net",
            "monitoring",
            "monitoring.",
        ] {
            let a = local(q(&cfg, name, RecordType::A));
            assert_eq!(a.rcode, ResponseCode::NoError, "{name}");
            assert_eq!(addrs(&a), ["100.64.0.2"], "{name}");
            // The answer carries the name as asked.
            assert_eq!(
                a.answers[0].name.to_ascii().trim_end_matches('.'),
                name.trim_end_matches('.')
            );
            let aaaa = local(q(&cfg, name, RecordType::AAAA));
            assert_eq!(addrs(&aaaa), ["fd7a:115c:a1e0::2"], "{name}");
        }
    }

    #[test]
    fn known_name_without_that_family_is_noerror_with_soa() {
        let a = local(q(&cfg(), "db.example.ts.net", RecordType::AAAA));
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        assert_eq!(a.authorities.len(), 1);
        assert_eq!(a.authorities[0].record_type(), RecordType::SOA);
        let mx = local(q(&cfg(), "db", RecordType::MX));
        assert_eq!(mx.rcode, ResponseCode::NoError);
        assert!(mx.answers.is_empty());
    }

    #[test]
    fn unknown_names_under_the_tailnet_domain_are_nxdomain() {
        let a = local(q(&cfg(), "gone.example.ts.net.", RecordType::A));
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert_eq!(a.authorities[0].name.to_ascii(), "example.ts.net.");
        let apex = local(q(&cfg(), "example.ts.net", RecordType::A));
        assert_eq!(apex.rcode, ResponseCode::NoError);
        let soa = local(q(&cfg(), "example.ts.net", RecordType::SOA));
        assert_eq!(soa.answers.len(), 1);
        // A split route without resolvers is a local zone too.
        let internal = local(q(&cfg(), "nas.internal", RecordType::A));
        assert_eq!(internal.rcode, ResponseCode::NXDomain);
        assert_eq!(
            addrs(&local(q(&cfg(), "printer.internal", RecordType::A))),
            ["192.168.1.9"]
        );
    }

    #[test]
    fn reverse_lookups() {
        let cfg = cfg();
        let a = local(q(&cfg, "2.0.64.100.in-addr.arpa.", RecordType::PTR));
        assert_eq!(addrs(&a), ["monitoring.example.ts.net."]);
        let v6 = names::reverse_name("fd7a:115c:a1e0::1".parse().unwrap());
        let a = local(q(&cfg, &v6, RecordType::PTR));
        assert_eq!(addrs(&a), ["laptop.example.ts.net."]);
        let unknown = local(q(&cfg, "99.0.64.100.in-addr.arpa", RecordType::PTR));
        assert_eq!(unknown.rcode, ResponseCode::NXDomain);
        assert_eq!(
            unknown.authorities[0].name.to_ascii(),
            "64.100.in-addr.arpa."
        );
        // Outside the tailnet ranges, reverse lookups are forwarded.
        assert!(matches!(
            q(&cfg, "1.2.0.192.in-addr.arpa", RecordType::PTR),
            Plan::Forward { .. }
        ));
    }

    #[test]
    fn forwarding_picks_split_route_then_global_then_os() {
        let cfg = cfg();
        match q(&cfg, "git.corp.example.com", RecordType::A) {
            Plan::Forward { upstreams, route } => {
                assert_eq!(upstreams, ["10.0.0.53:53".parse().unwrap()]);
                assert_eq!(
                    route,
                    Route::Split {
                        suffix: "corp.example.com".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match q(&cfg, "example.org", RecordType::A) {
            Plan::Forward { route, upstreams } => {
                assert_eq!(route, Route::Global);
                assert_eq!(upstreams.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let mut no_global = cfg.clone();
        no_global.resolvers.clear();
        let os = ["10.9.9.9:53".parse().unwrap()];
        let name = Name::from_ascii("example.org").unwrap();
        match plan(&no_global, &os, &name, RecordType::A, DNSClass::IN) {
            Plan::Forward { route, upstreams } => {
                assert_eq!(route, Route::Os);
                assert_eq!(upstreams, os);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan(&no_global, &[], &name, RecordType::A, DNSClass::IN),
            Plan::NoUpstream
        );
    }

    #[test]
    fn a_longer_split_route_inside_the_base_domain_wins() {
        let mut cfg = cfg();
        cfg.routes.insert(
            "lab.example.ts.net".into(),
            vec!["10.1.1.1:53".parse().unwrap()],
        );
        assert!(matches!(
            q(&cfg, "x.lab.example.ts.net", RecordType::A),
            Plan::Forward { .. }
        ));
        // ...but a tailnet name is still answered here.
        cfg.hosts.insert(
            "n.lab.example.ts.net".into(),
            vec!["100.64.0.9".parse().unwrap()],
        );
        assert!(matches!(
            q(&cfg, "n.lab.example.ts.net", RecordType::A),
            Plan::Local(_)
        ));
    }

    #[test]
    fn self_upstreams_are_recognised() {
        assert!(is_self_upstream(&"100.100.100.100:53".parse().unwrap()));
        assert!(is_self_upstream(
            &"[fd7a:115c:a1e0::53]:53".parse().unwrap()
        ));
        assert!(!is_self_upstream(&"10.0.0.1:53".parse().unwrap()));
    }
}
