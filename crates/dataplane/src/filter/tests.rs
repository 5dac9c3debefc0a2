//! Filter semantics, one test per bullet of the reference (§6) with fake time.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use proto::tailcfg::{FilterRule, NetPortRange, PortRange};

use super::*;
use crate::packet::build;

const ME: &str = "100.64.0.1";
const PEER: &str = "100.64.0.2";
const OTHER: &str = "100.70.0.9";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule(srcs: &[&str], dst: &str, ports: PortRange, protos: &[i32]) -> FilterRule {
    FilterRule {
        src_ips: srcs.iter().map(|s| s.to_string()).collect(),
        dst_ports: vec![NetPortRange {
            ip: dst.to_string(),
            ports,
        }],
        ip_proto: protos.to_vec(),
        cap_grant: Vec::new(),
    }
}

fn local() -> Vec<IpNet> {
    vec![
        "100.64.0.1/32".parse().unwrap(),
        "fd7a:115c:a1e0::1/128".parse().unwrap(),
        "10.1.0.0/16".parse().unwrap(), // a subnet we route for
    ]
}

fn filter(rules: &[FilterRule]) -> Filter {
    let (f, errors) = Filter::compile(rules, local());
    assert!(errors.is_empty(), "{errors:?}");
    f
}

fn ssh_from_peer() -> Filter {
    filter(&[rule(&[PEER], ME, PortRange::single(22), &[])])
}

fn allowed(f: &mut Filter, p: &[u8]) -> bool {
    f.check_inbound(p, Instant::now()).is_ok()
}

fn reason(f: &mut Filter, p: &[u8]) -> DropReason {
    f.check_inbound(p, Instant::now()).unwrap_err()
}

#[test]
fn default_deny_before_first_filter() {
    let mut f = Filter::deny_all();
    assert!(!f.has_rules());
    let syn = build::tcp(ip(PEER), ip(ME), 40000, 22, 0x02);
    let udp = build::udp(ip(PEER), ip(ME), 40000, 53, b"q");
    let ping = build::icmp(ip(PEER), ip(ME), 8, 0);
    // Nothing is local yet either, so even replies have nowhere to go.
    assert_eq!(reason(&mut f, &syn), DropReason::NotLocal);
    assert_eq!(reason(&mut f, &udp), DropReason::NotLocal);
    assert_eq!(reason(&mut f, &ping), DropReason::NotLocal);
    // With local addresses but still no rules: default deny.
    f.set_local(local());
    assert_eq!(reason(&mut f, &syn), DropReason::FilterDenied);
    assert_eq!(reason(&mut f, &udp), DropReason::FilterDenied);
    assert_eq!(reason(&mut f, &ping), DropReason::FilterDenied);
}

#[test]
fn short_unknown_multicast_and_link_local_are_dropped() {
    let mut f = filter(&[FilterRule::allow_all()]);
    assert_eq!(reason(&mut f, &[0x45; 19]), DropReason::TooShort);
    // A TCP header cut short makes the protocol unknown.
    let mut cut = build::tcp(ip(PEER), ip(ME), 1, 22, 0x02);
    cut.truncate(30);
    cut[2..4].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(reason(&mut f, &cut), DropReason::UnknownProtocol);
    // IPv6 extension headers are not walked: hop-by-hop (Next Header 0) is "unknown".
    let hbh = build::ip(
        ip("fd7a:115c:a1e0::2"),
        ip("fd7a:115c:a1e0::1"),
        0,
        &[17, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(reason(&mut f, &hbh), DropReason::UnknownProtocol);
    let mdns = build::udp(ip(PEER), ip("224.0.0.251"), 5353, 5353, b"");
    assert_eq!(reason(&mut f, &mdns), DropReason::Multicast);
    let v6mc = build::udp(ip("fd7a:115c:a1e0::2"), ip("ff02::fb"), 5353, 5353, b"");
    assert_eq!(reason(&mut f, &v6mc), DropReason::Multicast);
    let ll = build::udp(ip(PEER), ip("169.254.1.1"), 1, 2, b"");
    assert_eq!(reason(&mut f, &ll), DropReason::LinkLocal);
    let ll6 = build::udp(ip("fd7a:115c:a1e0::2"), ip("fe80::1"), 1, 2, b"");
    assert_eq!(reason(&mut f, &ll6), DropReason::LinkLocal);
    // The metadata address is exempt from the link-local rule (but must still be local).
    let meta = build::tcp(ip(PEER), ip("169.254.169.254"), 1, 80, 0x02);
    assert_eq!(reason(&mut f, &meta), DropReason::NotLocal);
    f.set_local(vec!["169.254.169.254/32".parse().unwrap()]);
    assert!(allowed(&mut f, &meta));
}

#[test]
fn later_fragments_pass() {
    let mut f = Filter::deny_all();
    f.set_local(local());
    let mut frag = build::udp(ip(PEER), ip(ME), 1, 9999, b"tail");
    frag[6..8].copy_from_slice(&0x00b9u16.to_be_bytes());
    assert!(allowed(&mut f, &frag));
}

#[test]
fn destination_must_be_local() {
    let mut f = filter(&[FilterRule::allow_all()]);
    // Allowed by the rule but not addressed to us or a route we serve.
    let p = build::tcp(ip(PEER), ip(OTHER), 1, 22, 0x02);
    assert_eq!(reason(&mut f, &p), DropReason::NotLocal);
    // A served subnet is local.
    let p = build::tcp(ip(PEER), ip("10.1.2.3"), 1, 22, 0x02);
    assert!(allowed(&mut f, &p));
}

#[test]
fn tcp_syn_needs_rule_non_syn_passes() {
    let mut f = ssh_from_peer();
    assert!(allowed(
        &mut f,
        &build::tcp(ip(PEER), ip(ME), 40000, 22, 0x02)
    ));
    // Wrong port, wrong source: SYN dropped.
    assert_eq!(
        reason(&mut f, &build::tcp(ip(PEER), ip(ME), 40000, 23, 0x02)),
        DropReason::FilterDenied
    );
    assert_eq!(
        reason(&mut f, &build::tcp(ip(OTHER), ip(ME), 40000, 22, 0x02)),
        DropReason::FilterDenied
    );
    // Any non-SYN segment (ACK, SYN-ACK, RST, FIN) is accepted as return traffic.
    for flags in [0x10, 0x12, 0x04, 0x11, 0x18] {
        assert!(
            allowed(&mut f, &build::tcp(ip(OTHER), ip(ME), 443, 50000, flags)),
            "{flags:#x}"
        );
    }
}

#[test]
fn udp_needs_rule_or_outbound_flow() {
    let now = Instant::now();
    let mut f = filter(&[rule(&[PEER], ME, PortRange::single(53), &[17])]);
    assert!(
        f.check_inbound(&build::udp(ip(PEER), ip(ME), 5000, 53, b"q"), now)
            .is_ok()
    );
    let reply = build::udp(ip(OTHER), ip(ME), 3478, 41000, b"r");
    assert_eq!(
        f.check_inbound(&reply, now).unwrap_err(),
        DropReason::FilterDenied
    );

    // We send to OTHER:3478 from 41000; the reply is now accepted.
    let out = build::udp(ip(ME), ip(OTHER), 41000, 3478, b"q");
    f.record_outbound(&PacketInfo::parse(&out).unwrap(), now);
    assert!(
        f.check_inbound(&reply, now + Duration::from_secs(1))
            .is_ok()
    );
    // Only the exact reverse 5-tuple.
    let other_port = build::udp(ip(OTHER), ip(ME), 3479, 41000, b"r");
    assert!(f.check_inbound(&other_port, now).is_err());
    // A flow idle past the timeout is forgotten.
    let later = now + Duration::from_secs(1) + FLOW_IDLE_TIMEOUT;
    assert!(f.check_inbound(&reply, later).is_err());
}

#[test]
fn flows_survive_rule_updates_and_expire_by_timer() {
    let now = Instant::now();
    let mut f = filter(&[]);
    let out = build::udp(ip(ME), ip(OTHER), 41000, 3478, b"q");
    f.record_outbound(&PacketInfo::parse(&out).unwrap(), now);
    f.replace_rules(&[FilterRule::allow_all()]);
    assert_eq!(f.flow_count(), 1);
    f.expire(now + FLOW_IDLE_TIMEOUT);
    assert_eq!(f.flow_count(), 0);
}

#[test]
fn flow_table_is_bounded() {
    let now = Instant::now();
    let mut f = filter(&[]);
    for port in 0..(MAX_FLOWS as u16 + 100) {
        let out = build::udp(ip(ME), ip(OTHER), 10000 + port, 53, b"q");
        f.record_outbound(&PacketInfo::parse(&out).unwrap(), now);
    }
    assert_eq!(f.flow_count(), MAX_FLOWS);
    // The oldest flows were evicted, the newest kept.
    let oldest = build::udp(ip(OTHER), ip(ME), 53, 10000, b"r");
    let newest = build::udp(ip(OTHER), ip(ME), 53, 10000 + MAX_FLOWS as u16 + 99, b"r");
    assert!(f.check_inbound(&oldest, now).is_err());
    assert!(f.check_inbound(&newest, now).is_ok());
}

#[test]
fn icmp_replies_and_errors_pass_others_need_any_rule_to_the_ip() {
    let mut f = filter(&[]);
    assert!(allowed(&mut f, &build::icmp(ip(OTHER), ip(ME), 0, 0))); // echo reply
    assert!(allowed(&mut f, &build::icmp(ip(OTHER), ip(ME), 3, 1))); // unreachable
    assert!(allowed(&mut f, &build::icmp(ip(OTHER), ip(ME), 11, 0))); // time exceeded
    assert!(allowed(
        &mut f,
        &build::icmp(ip("fd7a::9"), ip("fd7a:115c:a1e0::1"), 129, 0)
    ));
    assert!(allowed(
        &mut f,
        &build::icmp(ip("fd7a::9"), ip("fd7a:115c:a1e0::1"), 2, 0)
    ));
    let ping = build::icmp(ip(PEER), ip(ME), 8, 0);
    assert_eq!(reason(&mut f, &ping), DropReason::FilterDenied);

    // A TCP-only rule to port 22 still lets the source ping that IP: ports and protocols are
    // not consulted for ICMP.
    let mut f = filter(&[rule(&[PEER], ME, PortRange::single(22), &[6])]);
    assert!(allowed(&mut f, &ping));
    assert!(!allowed(&mut f, &build::icmp(ip(OTHER), ip(ME), 8, 0)));
    let ping6 = build::icmp(ip("fd7a:115c:a1e0::2"), ip("fd7a:115c:a1e0::1"), 128, 0);
    assert!(!allowed(&mut f, &ping6));
}

#[test]
fn other_protocols_need_proto_and_all_ports() {
    let gre = build::ip(ip(PEER), ip(ME), 47, &[0u8; 8]);
    let tsmp = build::ip(ip(PEER), ip(ME), 99, &[0u8; 8]);
    let mut f = filter(&[]);
    assert_eq!(reason(&mut f, &gre), DropReason::FilterDenied);
    assert!(allowed(&mut f, &tsmp), "TSMP is always accepted");
    // Listing the protocol with a port range is not enough.
    let mut f = filter(&[rule(&[PEER], ME, PortRange::single(1), &[47])]);
    assert!(!allowed(&mut f, &gre));
    let mut f = filter(&[rule(&[PEER], ME, PortRange::ANY, &[47])]);
    assert!(allowed(&mut f, &gre));
    // Default protocols (empty IPProto) do not include GRE.
    let mut f = filter(&[rule(&[PEER], ME, PortRange::ANY, &[])]);
    assert!(!allowed(&mut f, &gre));
}

#[test]
fn ip_proto_restricts_tcp_and_udp() {
    let mut f = filter(&[rule(&["*"], ME, PortRange::ANY, &[17])]);
    assert!(!allowed(&mut f, &build::tcp(ip(PEER), ip(ME), 1, 22, 0x02)));
    assert!(allowed(&mut f, &build::udp(ip(PEER), ip(ME), 1, 22, b"")));
    let mut f = filter(&[rule(&["*"], ME, PortRange::ANY, &[132])]);
    let sctp = build::ip(ip(PEER), ip(ME), 132, &[0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(allowed(&mut f, &sctp));
}

#[test]
fn source_forms_star_cidr_range_and_cap() {
    let syn = |src: &str| build::tcp(ip(src), ip(ME), 1, 22, 0x02);
    let mut f = filter(&[rule(&["*"], ME, PortRange::single(22), &[])]);
    assert!(allowed(&mut f, &syn("8.8.8.8")));

    let mut f = filter(&[rule(&["100.64.0.0/16"], ME, PortRange::single(22), &[])]);
    assert!(allowed(&mut f, &syn("100.64.200.1")));
    assert!(!allowed(&mut f, &syn("100.65.0.1")));

    let mut f = filter(&[rule(
        &["100.64.0.0-100.115.91.255"],
        ME,
        PortRange::single(22),
        &[],
    )]);
    assert!(allowed(&mut f, &syn("100.115.91.255")));
    assert!(!allowed(&mut f, &syn("100.115.92.0")));

    // `cap:` sources match nothing here; the rest of the rule still works.
    let mut f = filter(&[rule(&["cap:ssh", PEER], ME, PortRange::single(22), &[])]);
    assert!(allowed(&mut f, &syn(PEER)));
    assert!(!allowed(&mut f, &syn(OTHER)));
}

#[test]
fn destination_forms_and_port_ranges() {
    let syn = |dst: &str, port: u16| build::tcp(ip(PEER), ip(dst), 1, port, 0x02);
    let mut f = filter(&[
        rule(
            &[PEER],
            "10.1.0.0/24",
            PortRange {
                first: 8000,
                last: 8080,
            },
            &[],
        ),
        rule(&[PEER], "10.1.5.1-10.1.5.3", PortRange::single(443), &[]),
    ]);
    assert!(allowed(&mut f, &syn("10.1.0.7", 8000)));
    assert!(allowed(&mut f, &syn("10.1.0.7", 8080)));
    assert!(!allowed(&mut f, &syn("10.1.0.7", 8081)));
    assert!(!allowed(&mut f, &syn("10.1.1.7", 8000)));
    assert!(allowed(&mut f, &syn("10.1.5.3", 443)));
    assert!(!allowed(&mut f, &syn("10.1.5.4", 443)));
    let mut f = filter(&[rule(&[PEER], "*", PortRange::ANY, &[])]);
    assert!(allowed(&mut f, &syn(ME, 1)));
    assert!(allowed(&mut f, &syn("10.1.200.1", 65535)));
}

#[test]
fn bad_entries_are_skipped_and_reported() {
    let rules = [
        rule(&["10.0.0.1/8", PEER], ME, PortRange::single(22), &[]),
        rule(&["bogus"], ME, PortRange::single(80), &[]),
        rule(&[PEER], ME, PortRange { first: 10, last: 5 }, &[]),
    ];
    let (mut f, errors) = Filter::compile(&rules, local());
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(matches!(errors[0], RuleError::HostBitsSet { rule: 0, .. }));
    assert!(matches!(errors[1], RuleError::BadAddress { rule: 1, .. }));
    assert!(matches!(errors[2], RuleError::BadPorts { rule: 2, .. }));
    assert!(errors[0].to_string().contains("10.0.0.1/8"));
    // The good source of rule 0 still applies.
    assert!(allowed(&mut f, &build::tcp(ip(PEER), ip(ME), 1, 22, 0x02)));
}

#[test]
fn ipv6_rules() {
    let me6 = "fd7a:115c:a1e0::1";
    let mut f = filter(&[rule(
        &["fd7a:115c:a1e0::/48"],
        me6,
        PortRange::single(22),
        &[],
    )]);
    assert!(allowed(
        &mut f,
        &build::tcp(ip("fd7a:115c:a1e0::2"), ip(me6), 1, 22, 0x02)
    ));
    assert!(!allowed(
        &mut f,
        &build::tcp(ip("fd7a:115c:a1e1::2"), ip(me6), 1, 22, 0x02)
    ));
}
