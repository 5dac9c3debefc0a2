//! Two [`PathManager`]s wired through a tiny fake network under fake time: UDP with stateful
//! firewalls that can be cut entirely, and a DERP relay that always works.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::disco::{self, CallMeMaybe, Message, Ping, TxId};
use proto::keys::{DiscoPrivate, DiscoPublic, NodePrivate, NodePublic};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

const REGION: u16 = 900;
const UDP_ONE_WAY: Duration = Duration::from_millis(10);
const DERP_ONE_WAY: Duration = Duration::from_millis(40);
/// How often the fake WireGuard sends a packet to the other peer while traffic is on.
const TRAFFIC_EVERY: Duration = Duration::from_secs(1);

struct Node {
    pm: PathManager,
    key: NodePublic,
    disco: DiscoPrivate,
    addr: SocketAddr,
    /// Addresses this node has sent UDP to: a stateful firewall admits only replies from them.
    opened: BTreeSet<SocketAddr>,
    events: Vec<PathEvent>,
    ignored: Vec<Ignored>,
}

struct Delivery {
    at: Instant,
    to: usize,
    source: Source,
    payload: Vec<u8>,
}

struct Net {
    nodes: Vec<Node>,
    queue: Vec<Delivery>,
    now: Instant,
    udp_blocked: bool,
    traffic: bool,
    next_traffic: Instant,
    /// CallMeMaybe messages delivered, per receiving node.
    cmm_delivered: [usize; 2],
}

fn node(seed: u8, addr: &str) -> Node {
    let mut rng = StdRng::from_seed([seed; 32]);
    let key = NodePrivate::generate(&mut rng).public();
    let disco = DiscoPrivate::generate(&mut rng);
    let mut pm = PathManager::new(key, disco.clone(), [seed.wrapping_add(100); 32]);
    let addr: SocketAddr = addr.parse().unwrap();
    pm.set_local_endpoints(vec![addr]);
    pm.set_home_derp(Some(REGION));
    Node {
        pm,
        key,
        disco,
        addr,
        opened: BTreeSet::new(),
        events: Vec::new(),
        ignored: Vec::new(),
    }
}

impl Net {
    /// Two peers on region 900. Only A's netmap lists B's endpoint; B learns A's endpoint from
    /// A's CallMeMaybe, and B's firewall drops A's first unsolicited Pings.
    fn new() -> Self {
        let now = Instant::now();
        let a = node(1, "127.0.0.1:41641");
        let b = node(2, "127.0.0.2:41642");
        let mut net = Net {
            nodes: vec![a, b],
            queue: Vec::new(),
            now,
            udp_blocked: false,
            traffic: true,
            next_traffic: now,
            cmm_delivered: [0; 2],
        };
        let b_addr = net.nodes[1].addr;
        net.set_netmap(0, vec![b_addr]);
        net.set_netmap(1, vec![]);
        net
    }

    fn info(&self, i: usize, endpoints: Vec<SocketAddr>) -> PeerInfo {
        PeerInfo {
            node_key: self.nodes[i].key,
            disco_key: self.nodes[i].disco.public(),
            endpoints,
            home_derp: Some(REGION),
            mapping_varies: false,
        }
    }

    /// Gives node `i` a netmap listing the other node with `endpoints`.
    fn set_netmap(&mut self, i: usize, endpoints: Vec<SocketAddr>) {
        let other = self.info(1 - i, endpoints);
        let now = self.now;
        self.nodes[i].pm.set_peers(vec![other], now);
    }

    fn key(&self, i: usize) -> NodePublic {
        self.nodes[i].key
    }

    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].pm.poll_transmit() {
                self.route(i, t);
            }
            while let Some(e) = self.nodes[i].pm.poll_event() {
                self.nodes[i].events.push(e);
            }
        }
    }

    fn route(&mut self, from: usize, t: DiscoTransmit) {
        match t.dest {
            Dest::Udp(addr) => {
                self.nodes[from].opened.insert(addr);
                if self.udp_blocked {
                    return;
                }
                let Some(to) = self.nodes.iter().position(|n| n.addr == addr) else {
                    return;
                };
                let source = Source::Udp(self.nodes[from].addr);
                let at = self.now + UDP_ONE_WAY;
                self.queue.push(Delivery {
                    at,
                    to,
                    source,
                    payload: t.payload,
                });
            }
            Dest::Derp { region, node_key } => {
                assert_eq!(region, REGION, "disco must go via the peer's home region");
                let to = self.nodes.iter().position(|n| n.key == node_key).unwrap();
                let source = Source::Derp {
                    region,
                    node_key: self.nodes[from].key,
                };
                let at = self.now + DERP_ONE_WAY;
                self.queue.push(Delivery {
                    at,
                    to,
                    source,
                    payload: t.payload,
                });
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let n = &mut self.nodes[d.to];
        if let Source::Udp(from) = d.source
            && (self.udp_blocked || !n.opened.contains(&from))
        {
            return;
        }
        if let Ok((_, Message::CallMeMaybe(_))) = disco::open(&n.disco, &d.payload) {
            self.cmm_delivered[d.to] += 1;
        }
        let n = &mut self.nodes[d.to];
        if let Err(e) = n.pm.handle_disco(d.source, &d.payload, self.now) {
            n.ignored.push(e);
        }
    }

    /// Advances fake time to `end`, delivering packets, firing timers and sending traffic.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let mut next = end;
            if let Some(q) = self.queue.iter().map(|d| d.at).min() {
                next = next.min(q);
            }
            for n in &self.nodes {
                if let Some(t) = n.pm.poll_timeout() {
                    next = next.min(t.max(self.now));
                }
            }
            if self.traffic {
                next = next.min(self.next_traffic);
            }
            self.now = next;
            if let Some(pos) = self.queue.iter().position(|d| d.at <= self.now) {
                let d = self.queue.remove(pos);
                self.deliver(d);
                continue;
            }
            let now = self.now;
            for n in &mut self.nodes {
                if n.pm.poll_timeout().is_some_and(|t| t <= now) {
                    n.pm.handle_timeout(now);
                }
            }
            if self.traffic && self.next_traffic <= now {
                self.send_traffic();
                self.next_traffic = now + TRAFFIC_EVERY;
            }
            if self.now >= end {
                self.flush();
                return;
            }
        }
    }

    fn send_traffic(&mut self) {
        let now = self.now;
        for i in 0..2 {
            let other = self.key(1 - i);
            self.nodes[i].pm.send_path(&other, now);
        }
    }

    fn path(&self, i: usize) -> PathStatus {
        self.nodes[i].pm.peer_path(&self.key(1 - i))
    }

    fn send_path(&mut self, i: usize) -> SendPath {
        let now = self.now;
        let other = self.key(1 - i);
        let p = self.nodes[i].pm.send_path(&other, now);
        self.flush();
        p
    }

    fn is_direct(&self, i: usize) -> bool {
        matches!(self.path(i), PathStatus::Direct(..))
    }
}

#[test]
fn peers_start_on_derp_and_move_to_direct() {
    let mut net = Net::new();
    net.traffic = false;
    let a_addr = net.nodes[0].addr;
    let b_addr = net.nodes[1].addr;
    // Traffic always starts on DERP.
    assert_eq!(
        net.send_path(0),
        SendPath {
            udp: None,
            derp: Some(REGION)
        }
    );
    assert_eq!(net.path(0), PathStatus::Relay(REGION));
    assert_eq!(net.path(1), PathStatus::Relay(REGION));

    net.traffic = true;
    net.run_for(Duration::from_secs(10));

    // B could only have learned A's address from A's CallMeMaybe.
    assert!(net.cmm_delivered[1] >= 1);
    let PathStatus::Direct(addr, latency) = net.path(0) else {
        panic!("A is not direct: {:?}", net.path(0));
    };
    assert_eq!(addr, b_addr);
    assert_eq!(latency, UDP_ONE_WAY * 2);
    assert!(matches!(net.path(1), PathStatus::Direct(a, _) if a == a_addr));
    assert_eq!(
        net.send_path(0),
        SendPath {
            udp: Some(b_addr),
            derp: None
        }
    );
    assert_eq!(
        net.send_path(1),
        SendPath {
            udp: Some(a_addr),
            derp: None
        }
    );
    assert_eq!(net.nodes[0].pm.peer_for_addr(b_addr), Some(net.key(1)));
    assert_eq!(net.nodes[1].pm.peer_for_addr(a_addr), Some(net.key(0)));
    assert!(
        net.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, PathEvent::BestAddrChanged { addr, .. } if *addr == a_addr))
    );
}

#[test]
fn falls_back_to_derp_when_udp_dies_and_upgrades_when_it_returns() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(0) && net.is_direct(1));
    for n in &mut net.nodes {
        n.events.clear();
    }

    net.udp_blocked = true;
    let blocked_at = net.now;
    let mut fell_back_after = None;
    while net.now < blocked_at + Duration::from_secs(10) {
        net.run_for(Duration::from_millis(100));
        if !net.is_direct(0) {
            fell_back_after = Some(net.now - blocked_at);
            break;
        }
    }
    let after = fell_back_after.expect("A never fell back to DERP");
    // Trust lasts 6.5 s after the last Pong, which came at most one heartbeat before the cut.
    assert!(
        after <= Duration::from_millis(6600),
        "fell back only after {after:?}"
    );
    assert_eq!(net.path(0), PathStatus::Relay(REGION));
    let sp = net.send_path(0);
    assert_eq!(
        sp.derp,
        Some(REGION),
        "traffic must be duplicated onto DERP"
    );
    net.run_for(Duration::from_secs(1));
    assert!(!net.is_direct(1));
    assert!(
        net.nodes[0]
            .events
            .contains(&PathEvent::FellBackToDerp { peer: net.key(1) })
    );

    // Still relayed while UDP stays down.
    net.run_for(Duration::from_secs(20));
    assert_eq!(net.path(0), PathStatus::Relay(REGION));

    net.udp_blocked = false;
    net.run_for(Duration::from_secs(10));
    assert!(
        net.is_direct(0) && net.is_direct(1),
        "{:?} / {:?}",
        net.path(0),
        net.path(1)
    );
    assert_eq!(net.send_path(0).derp, None);
    assert!(
        net.nodes[0]
            .events
            .iter()
            .any(|e| matches!(e, PathEvent::BestAddrChanged { .. }))
    );
}

#[test]
fn heartbeats_stop_when_idle() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(0));
    net.traffic = false;
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.nodes[0].pm.poll_timeout(), None);
    assert_eq!(net.nodes[1].pm.poll_timeout(), None);
}

#[test]
fn agent_ping_reports_path_and_latency() {
    let mut net = Net::new();
    net.traffic = false;
    let b = net.key(1);
    let now = net.now;
    // No direct path yet: the ping goes via DERP (and to B's netmap endpoint).
    let id = net.nodes[0].pm.ping(&b, now).unwrap();
    net.run_for(Duration::from_secs(1));
    let result = net.nodes[0]
        .events
        .iter()
        .find_map(|e| match e {
            PathEvent::PingResult {
                id: got,
                latency,
                path,
                ..
            } if *got == id => Some((*latency, *path)),
            _ => None,
        })
        .expect("ping answered");
    assert_eq!(result, (DERP_ONE_WAY * 2, PingPath::Derp(REGION)));

    net.traffic = true;
    net.run_for(Duration::from_secs(10));
    let now = net.now;
    let id = net.nodes[0].pm.ping(&b, now).unwrap();
    net.run_for(Duration::from_millis(500));
    let b_addr = net.nodes[1].addr;
    assert!(net.nodes[0].events.contains(&PathEvent::PingResult {
        peer: b,
        id,
        latency: UDP_ONE_WAY * 2,
        path: PingPath::Direct(b_addr),
    }));

    // Unknown peer: nothing to ping.
    assert_eq!(
        net.nodes[0].pm.ping(&NodePublic::from_bytes([9; 32]), now),
        None
    );
}

#[test]
fn agent_ping_times_out() {
    let mut net = Net::new();
    net.traffic = false;
    net.udp_blocked = true;
    // Make DERP useless too: the peer has no home region and we have none.
    let mut info = net.info(1, vec![net.nodes[1].addr]);
    info.home_derp = None;
    let now = net.now;
    net.nodes[0].pm.set_home_derp(None);
    net.nodes[0].pm.set_peers(vec![info], now);
    let b = net.key(1);
    let id = net.nodes[0].pm.ping(&b, now).unwrap();
    net.run_for(Duration::from_secs(6));
    assert!(
        net.nodes[0]
            .events
            .contains(&PathEvent::PingTimedOut { peer: b, id })
    );
}

#[test]
fn derp_ping_is_answered_via_derp_with_magic_source() {
    let mut net = Net::new();
    let mut rng = StdRng::from_seed([42; 32]);
    let (a_key, b_key) = (net.key(0), net.key(1));
    let ping = Message::Ping(Ping {
        tx_id: TxId([4; 12]),
        node_key: Some(b_key),
        padding: 0,
    });
    let pkt = disco::seal(
        &net.nodes[1].disco,
        &net.nodes[0].disco.public(),
        &ping,
        &mut rng,
    );
    let now = net.now;
    let src = Source::Derp {
        region: 901,
        node_key: b_key,
    };
    net.nodes[0].pm.handle_disco(src, &pkt, now).unwrap();
    let t = net.nodes[0].pm.poll_transmit().unwrap();
    assert_eq!(
        t.dest,
        Dest::Derp {
            region: 901,
            node_key: b_key
        }
    );
    let (sender, msg) = disco::open(&net.nodes[1].disco, &t.payload).unwrap();
    assert_eq!(sender, net.nodes[0].disco.public());
    let Message::Pong(pong) = msg else {
        panic!("expected pong, got {msg:?}")
    };
    assert_eq!(pong.tx_id, TxId([4; 12]));
    assert_eq!(pong.src, "127.3.3.40:901".parse().unwrap());
    // A DERP-borne Ping does not bind any UDP address.
    assert_eq!(
        net.nodes[0]
            .pm
            .peer_for_addr("127.3.3.40:901".parse().unwrap()),
        None
    );
    let _ = a_key;

    // A UDP Ping binds its source address, and a duplicate (same TxID) is not answered twice.
    let from: SocketAddr = "127.0.0.7:5555".parse().unwrap();
    net.nodes[0]
        .pm
        .handle_disco(Source::Udp(from), &pkt, now)
        .unwrap();
    assert_eq!(net.nodes[0].pm.peer_for_addr(from), Some(b_key));
    // The Pong, then a Ping back to the address that proved open (no path is trusted yet).
    let sent: Vec<_> = std::iter::from_fn(|| net.nodes[0].pm.poll_transmit()).collect();
    let kinds: Vec<_> = sent
        .into_iter()
        .map(|t| {
            assert_eq!(t.dest, Dest::Udp(from));
            let (_, msg) = disco::open(&net.nodes[1].disco, &t.payload).unwrap();
            matches!(msg, Message::Ping(_))
        })
        .collect();
    assert_eq!(kinds, [false, true], "expected a Pong then a Ping back");
    assert_eq!(
        net.nodes[0].pm.handle_disco(Source::Udp(from), &pkt, now),
        Err(Ignored::DuplicatePing)
    );
    assert!(net.nodes[0].pm.poll_transmit().is_none());
}

#[test]
fn disco_from_unknown_keys_is_ignored() {
    let mut net = Net::new();
    let mut rng = StdRng::from_seed([7; 32]);
    let stranger = DiscoPrivate::generate(&mut rng);
    let a_disco = net.nodes[0].disco.public();
    let ping = Message::Ping(Ping {
        tx_id: TxId([1; 12]),
        node_key: None,
        padding: 0,
    });
    let pkt = disco::seal(&stranger, &a_disco, &ping, &mut rng);
    let now = net.now;
    let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
    let b_key = net.nodes[1].key;
    let pm = &mut net.nodes[0].pm;
    assert_eq!(
        pm.handle_disco(Source::Udp(from), &pkt, now),
        Err(Ignored::UnknownSender)
    );
    // Via DERP from B's node key but with a disco key that is not B's.
    let src = Source::Derp {
        region: REGION,
        node_key: b_key,
    };
    assert_eq!(
        pm.handle_disco(src, &pkt, now),
        Err(Ignored::SenderMismatch)
    );
    // Via DERP from a node key that is not a peer.
    let src = Source::Derp {
        region: REGION,
        node_key: NodePublic::from_bytes([3; 32]),
    };
    assert_eq!(pm.handle_disco(src, &pkt, now), Err(Ignored::UnknownSender));
    // B's disco key in the header but sealed by someone else: authentication fails.
    let mut forged = pkt.clone();
    forged[6..38].copy_from_slice(net.nodes[1].disco.public().as_bytes());
    let pm = &mut net.nodes[0].pm;
    assert!(matches!(
        pm.handle_disco(Source::Udp(from), &forged, now),
        Err(Ignored::Malformed(_))
    ));
    assert_eq!(
        pm.handle_disco(Source::Udp(from), b"not disco", now),
        Err(Ignored::NotDisco)
    );
    assert!(pm.poll_transmit().is_none());
    assert_eq!(pm.peer_for_addr(from), None);
}

#[test]
fn call_me_maybe_over_udp_is_ignored() {
    let mut net = Net::new();
    let mut rng = StdRng::from_seed([8; 32]);
    let cmm_ep: SocketAddr = "127.0.0.5:7777".parse().unwrap();
    let cmm = Message::CallMeMaybe(CallMeMaybe {
        endpoints: vec![cmm_ep],
    });
    let pkt = disco::seal(
        &net.nodes[1].disco,
        &net.nodes[0].disco.public(),
        &cmm,
        &mut rng,
    );
    let now = net.now;
    let b = net.key(1);
    let from = net.nodes[1].addr;
    let pm = &mut net.nodes[0].pm;
    assert_eq!(
        pm.handle_disco(Source::Udp(from), &pkt, now),
        Err(Ignored::CallMeMaybeNotViaDerp)
    );
    assert!(pm.poll_transmit().is_none());
    assert!(!pm.candidates(&b).iter().any(|(a, _)| *a == cmm_ep));

    // The same message via DERP from B is accepted: the endpoint becomes a candidate and is
    // pinged at once.
    let src = Source::Derp {
        region: REGION,
        node_key: b,
    };
    pm.handle_disco(src, &pkt, now).unwrap();
    assert!(pm.candidates(&b).iter().any(|(a, _)| *a == cmm_ep));
    let mut pinged = Vec::new();
    while let Some(t) = pm.poll_transmit() {
        pinged.push(t.dest);
    }
    assert!(pinged.contains(&Dest::Udp(cmm_ep)));
    // It does not answer with a CallMeMaybe of its own.
    assert!(pinged.iter().all(|d| matches!(d, Dest::Udp(_))));
}

#[test]
fn disco_key_change_resets_the_path() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(0));
    // B restarts with a new disco key.
    let mut rng = StdRng::from_seed([77; 32]);
    let new_disco = DiscoPrivate::generate(&mut rng);
    let mut info = net.info(1, vec![net.nodes[1].addr]);
    info.disco_key = new_disco.public();
    let now = net.now;
    net.nodes[0].pm.set_peers(vec![info], now);
    assert_eq!(net.path(0), PathStatus::Relay(REGION));
    assert!(net.nodes[0].pm.poll_event().is_some_and(|e| e
        == PathEvent::FellBackToDerp {
            peer: net.nodes[1].key
        }));
    // Old-key disco from B is now ignored.
    let ping = Message::Ping(Ping {
        tx_id: TxId([1; 12]),
        node_key: None,
        padding: 0,
    });
    let old: DiscoPublic = net.nodes[0].disco.public();
    let pkt = disco::seal(&net.nodes[1].disco, &old, &ping, &mut rng);
    let from = net.nodes[1].addr;
    assert_eq!(
        net.nodes[0].pm.handle_disco(Source::Udp(from), &pkt, now),
        Err(Ignored::UnknownSender)
    );
}

#[test]
fn removed_peer_is_forgotten() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    let b_addr = net.nodes[1].addr;
    assert!(net.nodes[0].pm.peer_for_addr(b_addr).is_some());
    let now = net.now;
    net.nodes[0].pm.set_peers(vec![], now);
    assert_eq!(net.nodes[0].pm.peer_for_addr(b_addr), None);
    assert_eq!(net.path(0), PathStatus::None);
    assert_eq!(net.send_path(0), SendPath::default());
}

fn q(addr: &str, ms: u64) -> AddrQuality {
    AddrQuality {
        addr: addr.parse().unwrap(),
        latency: Duration::from_millis(ms),
    }
}

#[test]
fn better_addr_prefers_ipv6_and_lan_on_near_ties() {
    // Anything beats nothing; the same address is never "better".
    assert!(better_addr(&q("203.0.113.1:1", 50), None));
    assert!(!better_addr(
        &q("203.0.113.1:1", 5),
        Some(&q("203.0.113.1:1", 50))
    ));
    // IPv6 wins a near tie against IPv4, and IPv4 must be >~10 % faster to take over.
    assert!(better_addr(
        &q("[2001:db8::1]:1", 21),
        Some(&q("203.0.113.1:1", 20))
    ));
    assert!(!better_addr(
        &q("203.0.113.1:1", 20),
        Some(&q("[2001:db8::1]:1", 21))
    ));
    assert!(better_addr(
        &q("203.0.113.1:1", 10),
        Some(&q("[2001:db8::1]:1", 20))
    ));
    // A LAN (private) address wins a near tie against a public one.
    assert!(better_addr(
        &q("192.168.1.5:1", 11),
        Some(&q("203.0.113.1:1", 10))
    ));
    assert!(!better_addr(
        &q("203.0.113.1:1", 10),
        Some(&q("192.168.1.5:1", 11))
    ));
    // Link-local beats private, loopback beats everything on a tie.
    assert!(better_addr(
        &q("169.254.1.1:1", 10),
        Some(&q("10.0.0.1:1", 10))
    ));
    assert!(better_addr(
        &q("127.0.0.1:1", 10),
        Some(&q("169.254.1.1:1", 10))
    ));
    // Hysteresis: a 1 % improvement between equal kinds is not enough.
    assert!(!better_addr(
        &q("203.0.113.2:1", 99),
        Some(&q("203.0.113.1:1", 100))
    ));
    assert!(better_addr(
        &q("203.0.113.2:1", 90),
        Some(&q("203.0.113.1:1", 100))
    ));
}

#[test]
fn better_path_replaces_a_worse_one() {
    // A's netmap lists a slow public address and the LAN address for B: the LAN one wins.
    let mut net = Net::new();
    let lan = net.nodes[1].addr;
    // An address nobody answers on: it stays a candidate but never becomes best.
    let dead: SocketAddr = "127.0.0.99:1".parse().unwrap();
    net.set_netmap(0, vec![dead, lan]);
    net.run_for(Duration::from_secs(10));
    assert!(matches!(net.path(0), PathStatus::Direct(a, _) if a == lan));
    assert!(
        net.nodes[0]
            .pm
            .candidates(&net.key(1))
            .iter()
            .any(|(a, l)| *a == dead && l.is_none())
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Garbage that carries a known peer's disco key in the header (so it reaches the box
        /// and, via DERP, the peer lookup) never panics and never produces output.
        #[test]
        fn garbage_disco_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut net = Net::new();
            let mut pkt = disco::MAGIC.to_vec();
            pkt.extend_from_slice(net.nodes[1].disco.public().as_bytes());
            pkt.extend_from_slice(&body);
            let now = net.now;
            let b = net.key(1);
            let from = net.nodes[1].addr;
            let pm = &mut net.nodes[0].pm;
            prop_assert!(pm.handle_disco(Source::Udp(from), &pkt, now).is_err());
            let src = Source::Derp { region: REGION, node_key: b };
            prop_assert!(pm.handle_disco(src, &pkt, now).is_err());
            prop_assert!(pm.handle_disco(Source::Udp(from), &body, now).is_err());
            prop_assert!(pm.poll_transmit().is_none());
        }
    }
}

#[test]
fn lost_direct_path_is_reported_once_for_a_re_stun() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(0));
    net.udp_blocked = true;
    net.run_for(Duration::from_secs(30));
    let b = net.key(1);
    let lost: Vec<usize> = net.nodes[0]
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| **e == PathEvent::DirectPathLost { peer: b })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", net.nodes[0].events);
    // It follows the fallback notice.
    assert_eq!(
        net.nodes[0].events[lost[0] - 1],
        PathEvent::FellBackToDerp { peer: b }
    );
}

#[test]
fn network_change_forgets_paths_and_rediscovers() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(0));
    let b = net.key(1);
    net.nodes[0].events.clear();
    let now = net.now;
    net.nodes[0].pm.network_changed(now);
    assert_eq!(net.path(0), PathStatus::Relay(REGION));
    assert!(
        net.nodes[0]
            .pm
            .candidates(&b)
            .iter()
            .all(|(_, latency)| latency.is_none())
    );
    assert_eq!(
        net.nodes[0].pm.poll_event(),
        Some(PathEvent::FellBackToDerp { peer: b })
    );
    // A network change is not a lost path to re-STUN for: the agent already knows.
    assert_eq!(net.nodes[0].pm.poll_event(), None);
    // The next packet goes via DERP and starts a discovery round with a CallMeMaybe.
    let cmm_before = net.cmm_delivered[1];
    let sp = net.send_path(0);
    assert_eq!(sp.derp, Some(REGION));
    net.run_for(Duration::from_secs(2));
    assert!(net.cmm_delivered[1] > cmm_before);
    assert!(net.is_direct(0) && net.is_direct(1));
}

#[test]
fn new_local_endpoints_are_announced_to_active_peers() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(0) && net.is_direct(1));
    // The same set in another order is no change.
    let a_addr = net.nodes[0].addr;
    let extra: SocketAddr = "127.0.0.1:9".parse().unwrap();
    net.nodes[0].pm.set_local_endpoints(vec![a_addr]);
    let now = net.now;
    assert!(net.nodes[0].pm.poll_timeout().is_none_or(|t| t > now));
    // A new endpoint is a change (one CallMeMaybe); the same set reordered is not.
    let cmm_before = net.cmm_delivered[1];
    net.nodes[0].pm.set_local_endpoints(vec![extra, a_addr]);
    net.run_for(Duration::from_secs(1));
    net.nodes[0].pm.set_local_endpoints(vec![a_addr, extra]);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.cmm_delivered[1], cmm_before + 1);
    let cmm_before = net.cmm_delivered[1];

    // A roams: new address. B must not wait for its path to A to time out.
    let new_addr: SocketAddr = "127.0.0.11:41641".parse().unwrap();
    net.nodes[0].addr = new_addr;
    net.nodes[0].pm.set_local_endpoints(vec![new_addr]);
    let now = net.now;
    // Due at once.
    assert!(net.nodes[0].pm.poll_timeout().is_some_and(|t| t <= now));
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.cmm_delivered[1], cmm_before + 1);
    assert!(
        matches!(net.path(1), PathStatus::Direct(a, _) if a == new_addr),
        "{:?}",
        net.path(1)
    );
    assert!(net.is_direct(0));
}

/// Answers every UDP Ping `from` sent to B's `reply_from` address with a Pong from B after
/// `rtt`, delivered with `source` (as a dual-stack socket would report it).
fn pong_back(
    net: &mut Net,
    pings: &[DiscoTransmit],
    to: SocketAddr,
    source: SocketAddr,
    rtt: Duration,
) {
    let mut rng = StdRng::from_seed([3; 32]);
    let a_disco = net.nodes[0].disco.public();
    for t in pings {
        if t.dest != Dest::Udp(to) {
            continue;
        }
        let (_, Message::Ping(ping)) = disco::open(&net.nodes[1].disco, &t.payload).unwrap() else {
            panic!("not a ping");
        };
        let pong = Message::Pong(disco::Pong {
            tx_id: ping.tx_id,
            src: "198.51.100.1:41641".parse().unwrap(),
        });
        let pkt = disco::seal(&net.nodes[1].disco, &a_disco, &pong, &mut rng);
        net.nodes[0]
            .pm
            .handle_disco(Source::Udp(source), &pkt, net.now + rtt)
            .unwrap();
    }
}

#[test]
fn dual_stack_candidates_prefer_ipv6_and_canonicalise_v4_mapped() {
    for (v4_rtt, v6_rtt, want_v6) in [(20, 20, true), (20, 21, true), (10, 30, false)] {
        let mut net = Net::new();
        let v4: SocketAddr = "198.51.100.2:41641".parse().unwrap();
        let v4_mapped: SocketAddr = "[::ffff:198.51.100.2]:41641".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:41641".parse().unwrap();
        net.set_netmap(0, vec![v4_mapped, v6, v4]);
        let b = net.key(1);
        // The v4-mapped and plain forms are one candidate.
        let cands: Vec<SocketAddr> = net.nodes[0]
            .pm
            .candidates(&b)
            .iter()
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(cands, vec![v4, v6]);
        let now = net.now;
        net.nodes[0].pm.send_path(&b, now);
        let mut sent = Vec::new();
        while let Some(t) = net.nodes[0].pm.poll_transmit() {
            sent.push(t);
        }
        // Both families are pinged.
        assert!(sent.iter().any(|t| t.dest == Dest::Udp(v4)));
        assert!(sent.iter().any(|t| t.dest == Dest::Udp(v6)));
        // The IPv4 answer arrives first, reported in v4-mapped form by a dual-stack socket.
        pong_back(
            &mut net,
            &sent,
            v4,
            v4_mapped,
            Duration::from_millis(v4_rtt),
        );
        pong_back(&mut net, &sent, v6, v6, Duration::from_millis(v6_rtt));
        let want = if want_v6 { v6 } else { v4 };
        assert!(
            matches!(net.path(0), PathStatus::Direct(a, _) if a == want),
            "v4 {v4_rtt} ms, v6 {v6_rtt} ms: {:?}",
            net.path(0)
        );
        assert_eq!(net.nodes[0].pm.peer_for_addr(v4_mapped), Some(b));
        assert_eq!(net.nodes[0].pm.peer_for_addr(v4), Some(b));
        assert_eq!(net.nodes[0].pm.peer_for_addr(v6), Some(b));
    }
}

#[test]
fn dead_best_path_is_replaced_by_an_equally_good_new_one() {
    let mut net = Net::new();
    net.run_for(Duration::from_secs(10));
    assert!(net.is_direct(1));
    // A moves without telling anyone itself; B only learns the new address from its netmap.
    let new_addr: SocketAddr = "127.0.0.12:41641".parse().unwrap();
    net.nodes[0].addr = new_addr;
    net.set_netmap(1, vec![new_addr]);
    net.run_for(Duration::from_secs(10));
    assert!(
        matches!(net.path(1), PathStatus::Direct(a, _) if a == new_addr),
        "{:?}",
        net.path(1)
    );
}

#[test]
fn endpoints_of_an_active_peer_are_pinged_as_soon_as_the_netmap_brings_them() {
    // A peer that just joined: B is in A's netmap without endpoints while A already sends to
    // it (over DERP). When control announces B's endpoint, A pings it at once instead of at
    // the next heartbeat.
    let mut net = Net::new();
    net.traffic = false;
    net.set_netmap(0, vec![]);
    let _ = net.send_path(0);
    net.flush();
    net.queue.clear();
    net.now += Duration::from_millis(500);
    let b_addr = net.nodes[1].addr;
    net.set_netmap(0, vec![b_addr]);
    let sent: Vec<_> = std::iter::from_fn(|| net.nodes[0].pm.poll_transmit()).collect();
    assert!(
        sent.iter().any(|t| t.dest == Dest::Udp(b_addr)),
        "no immediate Ping to the new endpoint: {:?}",
        sent.iter().map(|t| t.dest).collect::<Vec<_>>()
    );

    // An idle peer's new endpoints wait until traffic needs them.
    let mut idle = Net::new();
    idle.traffic = false;
    idle.set_netmap(0, vec![]);
    idle.set_netmap(0, vec![b_addr]);
    assert!(idle.nodes[0].pm.poll_transmit().is_none());
}
