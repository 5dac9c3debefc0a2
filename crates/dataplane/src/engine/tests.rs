//! Two engines wired back to back in memory: handshake, data both ways, filter and
//! source-address checks, routing choices, configuration changes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use proto::keys::NodePrivate;
use proto::tailcfg::{FilterRule, NetPortRange, PortRange};
use rand_core::OsRng;

use super::*;
use crate::packet::build;

const A_IP: &str = "100.64.0.1";
const B_IP: &str = "100.64.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

struct Pair {
    a: Engine,
    b: Engine,
    now: Instant,
}

fn config(me: &str, peer: NodePublic, peer_ips: &[&str], filter: Vec<FilterRule>) -> EngineConfig {
    EngineConfig {
        addresses: vec![net(&format!("{me}/32"))],
        local_routes: Vec::new(),
        peers: vec![PeerConfig {
            key: peer,
            allowed_ips: peer_ips.iter().map(|s| net(s)).collect(),
            keepalive: None,
        }],
        filter: Some(filter),
    }
}

impl Pair {
    /// A and B are each other's peer; both allow everything unless told otherwise.
    fn new(b_filter: Vec<FilterRule>) -> Pair {
        let now = Instant::now();
        let ka = NodePrivate::generate(&mut OsRng);
        let kb = NodePrivate::generate(&mut OsRng);
        let (pa, pb) = (ka.public(), kb.public());
        let mut a = Engine::new(ka, now);
        let mut b = Engine::new(kb, now);
        assert!(
            a.set_config(
                config(A_IP, pb, &["100.64.0.2/32"], vec![FilterRule::allow_all()]),
                now
            )
            .is_empty()
        );
        assert!(
            b.set_config(config(B_IP, pa, &["100.64.0.1/32"], b_filter), now)
                .is_empty()
        );
        Pair { a, b, now }
    }

    /// Moves datagrams between the engines until both are quiet.
    fn shuttle(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                assert_eq!(t.peer, self.b.node_key());
                let _ = self
                    .b
                    .handle_network_packet(Some(self.a.node_key()), &t.payload, self.now);
                self.a.recycle(t.payload);
                moved = true;
            }
            while let Some(t) = self.b.poll_transmit() {
                assert_eq!(t.peer, self.a.node_key());
                let _ = self
                    .a
                    .handle_network_packet(Some(self.b.node_key()), &t.payload, self.now);
                self.b.recycle(t.payload);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("engines never went quiet");
    }
}

fn drain(e: &mut Engine) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(w) = e.poll_tun_write() {
        out.push(w.packet().to_vec());
        e.recycle(w.into_buf());
    }
    out
}

#[test]
fn packets_cross_after_handshake_both_ways() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    let syn = build::tcp(ip(A_IP), ip(B_IP), 40000, 22, 0x02);
    p.a.handle_tun_packet(&syn, p.now).unwrap();
    // Without a session the packet waits inside boringtun; only an initiation goes out.
    p.shuttle();
    assert_eq!(drain(&mut p.b), vec![syn.clone()]);
    assert!(drain(&mut p.a).is_empty());

    let synack = build::tcp(ip(B_IP), ip(A_IP), 22, 40000, 0x12);
    p.b.handle_tun_packet(&synack, p.now).unwrap();
    p.shuttle();
    assert_eq!(drain(&mut p.a), vec![synack]);

    // A steady stream in both directions, and the counters a user would look at.
    for i in 0..10u8 {
        let ping = build::udp(ip(A_IP), ip(B_IP), 5000, 6000, &[i; 100]);
        p.a.handle_tun_packet(&ping, p.now).unwrap();
    }
    p.shuttle();
    assert_eq!(drain(&mut p.b).len(), 10);
    let sa = p.a.peer_stats(&p.b.node_key(), p.now).unwrap();
    let sb = p.b.peer_stats(&p.a.node_key(), p.now).unwrap();
    assert!(sa.last_handshake.is_some() && sb.last_handshake.is_some());
    assert!(sa.tx_bytes > 10 * 128, "{sa:?}");
    assert_eq!(sa.tx_bytes, sb.rx_bytes);
    assert_eq!(sb.tx_bytes, sa.rx_bytes);
    assert_eq!(
        p.a.drops().total() + p.b.drops().total(),
        0,
        "{:?} {:?}",
        p.a.drops(),
        p.b.drops()
    );
}

#[test]
fn ipv6_and_returned_peer_identity() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    let (a6, b6) = ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2");
    let mut ca = config(
        A_IP,
        p.b.node_key(),
        &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
        vec![],
    );
    ca.addresses.push(net("fd7a:115c:a1e0::1/128"));
    ca.filter = None;
    p.a.set_config(ca, p.now);
    let mut cb = config(
        B_IP,
        p.a.node_key(),
        &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
        vec![],
    );
    cb.addresses.push(net("fd7a:115c:a1e0::2/128"));
    cb.filter = None;
    p.b.set_config(cb, p.now);

    let pkt = build::udp(ip(a6), ip(b6), 1, 2, b"v6");
    p.a.handle_tun_packet(&pkt, p.now).unwrap();
    // Deliver A's initiation by hand to see what B reports.
    let init = p.a.poll_transmit().unwrap();
    let who =
        p.b.handle_network_packet(None, &init.payload, p.now)
            .unwrap();
    assert_eq!(who, Some(p.a.node_key()));
    let resp = p.b.poll_transmit().unwrap();
    assert_eq!(
        p.a.handle_network_packet(None, &resp.payload, p.now)
            .unwrap(),
        Some(p.b.node_key())
    );
    p.shuttle();
    assert_eq!(drain(&mut p.b), vec![pkt]);
}

#[test]
fn filter_on_receiver_denies_port() {
    let only_ssh = FilterRule {
        src_ips: vec![A_IP.to_string()],
        dst_ports: vec![NetPortRange {
            ip: B_IP.to_string(),
            ports: PortRange::single(22),
        }],
        ip_proto: Vec::new(),
        cap_grant: Vec::new(),
    };
    let mut p = Pair::new(vec![only_ssh]);
    p.a.handle_tun_packet(&build::tcp(ip(A_IP), ip(B_IP), 40000, 80, 0x02), p.now)
        .unwrap();
    p.a.handle_tun_packet(&build::tcp(ip(A_IP), ip(B_IP), 40001, 22, 0x02), p.now)
        .unwrap();
    p.shuttle();
    let got = drain(&mut p.b);
    assert_eq!(got.len(), 1);
    assert_eq!(PacketInfo::parse(&got[0]).unwrap().dst_port(), 22);
    assert_eq!(p.b.drops().get(DropReason::FilterDenied), 1);
}

#[test]
fn receiver_denies_everything_before_first_filter() {
    let mut p = Pair::new(Vec::new());
    // B's config above installed an empty rule list; also try an engine that never got one.
    let mut cb = config(B_IP, p.a.node_key(), &["100.64.0.1/32"], Vec::new());
    cb.filter = None;
    p.b.set_config(cb, p.now);
    p.a.handle_tun_packet(&build::tcp(ip(A_IP), ip(B_IP), 1, 22, 0x02), p.now)
        .unwrap();
    p.shuttle();
    assert!(drain(&mut p.b).is_empty());
    assert_eq!(p.b.drops().get(DropReason::FilterDenied), 1);

    let fresh = Engine::new(NodePrivate::generate(&mut OsRng), p.now);
    assert!(fresh.rule_errors().is_empty());
    assert_eq!(fresh.poll_timeout(), None);
}

#[test]
fn udp_reply_passes_only_after_outbound() {
    // B allows nothing inbound, but its own outbound UDP opens the return path.
    let mut p = Pair::new(Vec::new());
    let query = build::udp(ip(B_IP), ip(A_IP), 41000, 53, b"q");
    p.b.handle_tun_packet(&query, p.now).unwrap();
    p.shuttle();
    assert_eq!(drain(&mut p.a), vec![query]);
    let answer = build::udp(ip(A_IP), ip(B_IP), 53, 41000, b"a");
    let unsolicited = build::udp(ip(A_IP), ip(B_IP), 53, 41001, b"x");
    p.a.handle_tun_packet(&answer, p.now).unwrap();
    p.a.handle_tun_packet(&unsolicited, p.now).unwrap();
    p.shuttle();
    assert_eq!(drain(&mut p.b), vec![answer]);
}

#[test]
fn spoofed_source_is_dropped() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    // A claims to be 100.64.0.77, which is not in its AllowedIPs on B. A routes it anyway
    // (outbound has no source check), so B must catch it.
    let spoof = build::tcp(ip("100.64.0.77"), ip(B_IP), 1, 22, 0x02);
    p.a.handle_tun_packet(&spoof, p.now).unwrap();
    p.shuttle();
    assert!(drain(&mut p.b).is_empty());
    assert_eq!(p.b.drops().get(DropReason::SourceNotAllowed), 1);
}

#[test]
fn routing_prefers_specific_subnet_over_exit_node() {
    let now = Instant::now();
    let mut e = Engine::new(NodePrivate::generate(&mut OsRng), now);
    let exit = NodePrivate::generate(&mut OsRng).public();
    let router = NodePrivate::generate(&mut OsRng).public();
    let cfg = EngineConfig {
        addresses: vec![net("100.64.0.1/32")],
        local_routes: Vec::new(),
        peers: vec![
            PeerConfig {
                key: exit,
                allowed_ips: vec![net("100.64.0.5/32"), net("0.0.0.0/0"), net("::/0")],
                keepalive: None,
            },
            PeerConfig {
                key: router,
                allowed_ips: vec![net("100.64.0.6/32"), net("192.168.7.0/24")],
                keepalive: Some(25),
            },
        ],
        filter: None,
    };
    e.set_config(cfg.clone(), now);
    assert_eq!(e.route(ip("8.8.8.8")), Some(exit));
    assert_eq!(e.route(ip("192.168.7.10")), Some(router));
    assert_eq!(e.route(ip("100.64.0.6")), Some(router));
    e.handle_tun_packet(
        &build::udp(ip("100.64.0.1"), ip("192.168.7.10"), 1, 2, b""),
        now,
    )
    .unwrap();
    assert_eq!(
        e.poll_transmit().unwrap().peer,
        router,
        "handshake goes to the subnet router"
    );
    e.handle_tun_packet(&build::udp(ip("100.64.0.1"), ip("1.1.1.1"), 1, 2, b""), now)
        .unwrap();
    assert_eq!(e.poll_transmit().unwrap().peer, exit);

    // Without the exit node, internet destinations have no route.
    let mut no_exit = cfg;
    no_exit.peers.remove(0);
    e.set_config(no_exit, now);
    assert_eq!(e.peers().collect::<Vec<_>>(), vec![router]);
    let err = e.handle_tun_packet(&build::udp(ip("100.64.0.1"), ip("1.1.1.1"), 1, 2, b""), now);
    assert_eq!(err, Err(EngineError::Dropped(DropReason::NoRoute)));
    assert_eq!(e.drops().get(DropReason::NoRoute), 1);
}

#[test]
fn unknown_initiator_is_reported() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    let stranger_key = NodePrivate::generate(&mut OsRng);
    let stranger_pub = stranger_key.public();
    let mut s = Engine::new(stranger_key, p.now);
    s.set_config(
        config("100.64.0.9", p.b.node_key(), &["100.64.0.2/32"], vec![]),
        p.now,
    );
    s.handle_tun_packet(&build::udp(ip("100.64.0.9"), ip(B_IP), 1, 2, b""), p.now)
        .unwrap();
    let init = s.poll_transmit().unwrap();
    let err =
        p.b.handle_network_packet(None, &init.payload, p.now)
            .unwrap_err();
    assert_eq!(err, EngineError::UnknownPeer { key: stranger_pub });
    assert!(p.b.poll_transmit().is_none());
}

#[test]
fn garbage_from_the_network_is_counted_not_fatal() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    for junk in [
        &[][..],
        &[1, 2, 3][..],
        &[4, 0, 0, 0, 9, 9, 9, 9][..],
        &[0xff; 200][..],
    ] {
        assert!(p.b.handle_network_packet(None, junk, p.now).is_err());
    }
    // A data message with an unknown index, and a handshake initiation with a bad MAC.
    let mut data = vec![4, 0, 0, 0];
    data.extend_from_slice(&0x7777_7700u32.to_le_bytes());
    data.extend_from_slice(&[0; 40]);
    assert_eq!(
        p.b.handle_network_packet(None, &data, p.now),
        Err(EngineError::Dropped(DropReason::UnknownPeer))
    );
    let mut init = vec![1, 0, 0, 0];
    init.resize(148, 0x11);
    assert_eq!(
        p.b.handle_network_packet(None, &init, p.now),
        Err(EngineError::Dropped(DropReason::BadMac))
    );
    // Oversized and malformed TUN input.
    assert!(
        p.a.handle_tun_packet(&vec![0x45; MAX_IP_PACKET + 1], p.now)
            .is_err()
    );
    assert!(p.a.handle_tun_packet(&[0x45, 0, 0], p.now).is_err());
    assert!(p.b.drops().get(DropReason::NotWireGuard) >= 3);
    assert_eq!(p.a.drops().get(DropReason::TooLarge), 1);
    assert_eq!(p.a.drops().get(DropReason::Malformed), 1);
}

#[test]
fn reconfiguring_keeps_sessions_and_removes_peers() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    p.a.handle_tun_packet(&build::udp(ip(A_IP), ip(B_IP), 1, 2, b"x"), p.now)
        .unwrap();
    p.shuttle();
    assert_eq!(drain(&mut p.b).len(), 1);
    // Same peers, new filter: the session survives, so the next packet needs no handshake.
    let cfg = config(
        A_IP,
        p.b.node_key(),
        &["100.64.0.2/32"],
        vec![FilterRule::allow_all()],
    );
    p.a.set_config(cfg.clone(), p.now);
    p.a.handle_tun_packet(&build::udp(ip(A_IP), ip(B_IP), 1, 2, b"y"), p.now)
        .unwrap();
    let t = p.a.poll_transmit().unwrap();
    assert_eq!(
        t.payload.first(),
        Some(&4),
        "a data message, not a new initiation"
    );
    // Removing the peer removes its route and session.
    let mut empty = cfg;
    empty.peers.clear();
    p.a.set_config(empty, p.now);
    assert_eq!(p.a.peers().count(), 0);
    assert!(p.a.peer_stats(&p.b.node_key(), p.now).is_none());
    assert_eq!(p.a.route(ip(B_IP)), None);
}

#[test]
fn timers_tick_on_schedule() {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    let first = p.a.poll_timeout().unwrap();
    assert!(first <= p.now);
    p.a.handle_timeout(p.now);
    assert_eq!(p.a.poll_timeout(), Some(p.now + TIMER_TICK));
    // Calling early is a no-op.
    p.a.handle_timeout(p.now + Duration::from_millis(10));
    assert_eq!(p.a.poll_timeout(), Some(p.now + TIMER_TICK));
    p.a.handle_timeout(p.now + TIMER_TICK);
    assert_eq!(p.a.poll_timeout(), Some(p.now + TIMER_TICK * 2));
    // An idle tunnel produces nothing on its timers.
    assert!(p.a.poll_transmit().is_none());
}

#[test]
fn debug_output_hides_the_private_key() {
    let key = NodePrivate::generate(&mut OsRng);
    let secret_hex = key.to_text();
    let e = Engine::new(key, Instant::now());
    let dbg = format!("{e:?}");
    assert!(!dbg.contains(secret_hex.trim_start_matches("privkey:")));
    assert!(dbg.contains("nodekey:"));
}

/// A (the laptop) and B (a subnet router or exit node): B serves `b_local` with `b_filter`; A
/// routes `a_routes_to_b` (B's AllowedIPs as A configured them) to B.
fn router_pair(b_local: Vec<IpNet>, b_filter: Vec<FilterRule>, a_routes_to_b: &[&str]) -> Pair {
    let mut p = Pair::new(vec![FilterRule::allow_all()]);
    let ca = config(
        A_IP,
        p.b.node_key(),
        a_routes_to_b,
        vec![FilterRule::allow_all()],
    );
    p.a.set_config(ca, p.now);
    let mut cb = config(B_IP, p.a.node_key(), &["100.64.0.1/32"], b_filter);
    cb.local_routes = b_local;
    p.b.set_config(cb, p.now);
    p
}

fn rule(src: &str, dst: &str, ports: PortRange) -> FilterRule {
    FilterRule {
        src_ips: vec![src.to_string()],
        dst_ports: vec![NetPortRange {
            ip: dst.to_string(),
            ports,
        }],
        ip_proto: Vec::new(),
        cap_grant: Vec::new(),
    }
}

#[test]
fn subnet_router_forwards_what_the_filter_allows() {
    const LEGACY: &str = "192.168.1.50";
    let web_only = rule(A_IP, "192.168.1.0/24", PortRange::single(80));
    let mut p = router_pair(
        vec![net("192.168.1.0/24")],
        vec![web_only],
        &["100.64.0.2/32", "192.168.1.0/24"],
    );
    assert_eq!(p.a.route(ip(LEGACY)), Some(p.b.node_key()));
    let web = build::tcp(ip(A_IP), ip(LEGACY), 40000, 80, 0x02);
    let ssh = build::tcp(ip(A_IP), ip(LEGACY), 40001, 22, 0x02);
    let elsewhere = build::tcp(ip(A_IP), ip("10.9.9.9"), 40002, 80, 0x02);
    p.a.handle_tun_packet(&web, p.now).unwrap();
    p.a.handle_tun_packet(&ssh, p.now).unwrap();
    // A has no route for 10.9.9.9: never leaves A.
    assert!(p.a.handle_tun_packet(&elsewhere, p.now).is_err());
    p.shuttle();
    // The router writes the forwarded packet to its TUN unchanged; the kernel forwards it.
    assert_eq!(drain(&mut p.b), vec![web]);
    assert_eq!(p.b.drops().get(DropReason::FilterDenied), 1);

    // The legacy host's answer comes back in through B's TUN with a non-tailnet source and is
    // routed to A by destination; A accepts it because 192.168.1.0/24 is in B's AllowedIPs.
    let answer = build::tcp(ip(LEGACY), ip(A_IP), 80, 40000, 0x12);
    p.b.handle_tun_packet(&answer, p.now).unwrap();
    p.shuttle();
    assert_eq!(drain(&mut p.a), vec![answer]);
    assert_eq!(p.a.drops().total(), 1, "{:?}", p.a.drops()); // the no-route above
}

#[test]
fn router_drops_destinations_it_does_not_serve() {
    let mut p = router_pair(
        vec![net("192.168.1.0/24")],
        vec![FilterRule::allow_all()],
        &["100.64.0.2/32", "192.168.1.0/24", "10.0.0.0/8"],
    );
    p.a.handle_tun_packet(&build::tcp(ip(A_IP), ip("10.1.1.1"), 1, 80, 0x02), p.now)
        .unwrap();
    p.shuttle();
    assert!(drain(&mut p.b).is_empty());
    assert_eq!(p.b.drops().get(DropReason::NotLocal), 1);
}

#[test]
fn without_accepted_routes_subnet_sources_are_refused() {
    // A did not accept B's subnet route: B's forwarded answer fails A's source check.
    let mut p = router_pair(
        vec![net("192.168.1.0/24")],
        vec![FilterRule::allow_all()],
        &["100.64.0.2/32"],
    );
    assert_eq!(p.a.route(ip("192.168.1.50")), None);
    let spoof = build::udp(ip("192.168.1.50"), ip(A_IP), 53, 5353, b"x");
    p.b.handle_tun_packet(&spoof, p.now).unwrap();
    p.shuttle();
    assert!(drain(&mut p.a).is_empty());
    assert_eq!(p.a.drops().get(DropReason::SourceNotAllowed), 1);
}

#[test]
fn exit_node_forwards_internet_traffic_and_routes_replies_back() {
    let internet = "198.51.100.7";
    let local =
        crate::wgcfg::local_routes(&[], true, &[net("203.0.113.0/24")], &[ip("203.0.113.2")]);
    let mut p = router_pair(
        local,
        vec![FilterRule::allow_all()],
        &["100.64.0.2/32", "0.0.0.0/0", "::/0"],
    );
    let out = build::udp(ip(A_IP), ip(internet), 5000, 443, b"hello");
    let lan = build::udp(ip(A_IP), ip("203.0.113.1"), 5000, 443, b"lan");
    let private = build::udp(ip(A_IP), ip("192.168.0.1"), 5000, 443, b"rfc1918");
    for pkt in [&out, &lan, &private] {
        p.a.handle_tun_packet(pkt, p.now).unwrap();
    }
    p.shuttle();
    assert_eq!(drain(&mut p.b), vec![out]);
    assert_eq!(p.b.drops().get(DropReason::NotLocal), 2);
    // The reply (after the kernel undid the masquerade) reaches A from an internet source.
    let reply = build::udp(ip(internet), ip(A_IP), 443, 5000, b"world");
    p.b.handle_tun_packet(&reply, p.now).unwrap();
    p.shuttle();
    assert_eq!(drain(&mut p.a), vec![reply]);
}
