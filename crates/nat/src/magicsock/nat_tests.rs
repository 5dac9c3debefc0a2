//! Two [`PathManager`]s behind simulated NAT routers under fake time, modelled on the NAT lab's
//! measurements (nat-lab-notes.md): "easy" is endpoint-independent mapping with port
//! preservation, "hard" maps every new destination to a fresh random port; both filter
//! address-and-port-dependently (an inbound datagram passes only if the host sent to exactly
//! that source from that public port). DERP always works. Port sweeps are routed datagram by
//! datagram so the NAT decides which one gets through.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proto::keys::{DiscoPrivate, NodePrivate, NodePublic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const REGION: u16 = 900;
const UDP_ONE_WAY: Duration = Duration::from_millis(10);
const DERP_ONE_WAY: Duration = Duration::from_millis(40);
const TRAFFIC_EVERY: Duration = Duration::from_secs(1);
const LOCAL_PORT: u16 = 41641;
/// The STUN server each host learned its public endpoint from.
const STUN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 3478);
/// Every port a sweep covers.
const SWEEP_PORTS: usize = 65536 - SWEEP_FIRST_PORT as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nat {
    Easy,
    Hard,
}

struct Host {
    pm: PathManager,
    key: NodePublic,
    disco: DiscoPrivate,
    lan: SocketAddr,
    wan: Ipv4Addr,
    nat: Nat,
    /// Hard NAT: destination → public port.
    mappings: BTreeMap<SocketAddr, u16>,
    /// Conntrack: (public port, remote) pairs an inbound datagram may match.
    allowed: HashSet<(u16, SocketAddr)>,
    /// The router drops every inbound datagram (to make sweeps fail).
    blackhole: bool,
    rng: StdRng,
    traffic: bool,
    /// Start times of this host's sweeps.
    sweeps_started: Vec<Instant>,
    /// (time, datagrams) of every sweep chunk sent.
    sweep_sends: Vec<(Instant, usize)>,
    events: Vec<PathEvent>,
}

impl Host {
    fn new(i: u8, nat: Nat) -> Host {
        let mut rng = StdRng::from_seed([i; 32]);
        let key = NodePrivate::generate(&mut rng).public();
        let disco = DiscoPrivate::generate(&mut rng);
        let pm = PathManager::new(key, disco.clone(), [i.wrapping_add(50); 32]);
        Host {
            pm,
            key,
            disco,
            lan: SocketAddr::new(Ipv4Addr::new(192, 168, i, 2).into(), LOCAL_PORT),
            wan: Ipv4Addr::new(198, 51, 100, i),
            nat,
            mappings: BTreeMap::new(),
            allowed: HashSet::new(),
            blackhole: false,
            rng: StdRng::from_seed([i.wrapping_add(200); 32]),
            traffic: true,
            sweeps_started: Vec::new(),
            sweep_sends: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The public source address of a datagram to `dest`, creating the NAT mapping and the
    /// conntrack entry that lets replies in.
    fn send(&mut self, dest: SocketAddr) -> SocketAddr {
        let port = match self.nat {
            Nat::Easy => self.lan.port(),
            Nat::Hard => {
                let rng = &mut self.rng;
                *self
                    .mappings
                    .entry(dest)
                    .or_insert_with(|| rng.gen_range(1024..=65535))
            }
        };
        self.allowed.insert((port, dest));
        SocketAddr::new(self.wan.into(), port)
    }

    fn sweep_total(&self) -> usize {
        self.sweep_sends.iter().map(|(_, n)| n).sum()
    }
}

struct Delivery {
    at: Instant,
    to: usize,
    source: Source,
    payload: Vec<u8>,
}

struct World {
    hosts: Vec<Host>,
    queue: Vec<Delivery>,
    now: Instant,
    next_traffic: Instant,
}

impl World {
    fn new(a: Nat, b: Nat) -> World {
        let now = Instant::now();
        let mut w = World {
            hosts: vec![Host::new(1, a), Host::new(2, b)],
            queue: Vec::new(),
            now,
            next_traffic: now,
        };
        for h in &mut w.hosts {
            // What a STUN report would have found: the mapping towards the STUN server.
            let stun = h.send(STUN);
            h.pm.set_local_endpoints(vec![h.lan, stun]);
            h.pm.set_local_nat_hard(h.nat == Nat::Hard);
            h.pm.set_home_derp(Some(REGION));
        }
        w.set_netmaps();
        w
    }

    fn info(&self, i: usize) -> PeerInfo {
        let h = &self.hosts[i];
        let stun = SocketAddr::new(
            h.wan.into(),
            match h.nat {
                Nat::Easy => LOCAL_PORT,
                Nat::Hard => h.mappings[&STUN],
            },
        );
        PeerInfo {
            node_key: h.key,
            disco_key: h.disco.public(),
            endpoints: vec![h.lan, stun],
            home_derp: Some(REGION),
            mapping_varies: h.nat == Nat::Hard,
        }
    }

    fn set_netmaps(&mut self) {
        let now = self.now;
        for i in 0..2 {
            let other = self.info(1 - i);
            self.hosts[i].pm.set_peers(vec![other], now);
        }
    }

    fn key(&self, i: usize) -> NodePublic {
        self.hosts[i].key
    }

    fn route_udp(&mut self, from: usize, dest: SocketAddr, payload: &[u8]) {
        let src = self.hosts[from].send(dest);
        let Some(to) = self
            .hosts
            .iter()
            .position(|h| IpAddr::V4(h.wan) == dest.ip())
        else {
            // Private addresses of another LAN are unreachable.
            return;
        };
        let h = &self.hosts[to];
        if h.blackhole || !h.allowed.contains(&(dest.port(), src)) {
            return;
        }
        self.queue.push(Delivery {
            at: self.now + UDP_ONE_WAY,
            to,
            source: Source::Udp(src),
            payload: payload.to_vec(),
        });
    }

    fn flush(&mut self) {
        let now = self.now;
        for i in 0..self.hosts.len() {
            while let Some(t) = self.hosts[i].pm.poll_transmit() {
                match t.dest {
                    Dest::Udp(addr) => self.route_udp(i, addr, &t.payload),
                    Dest::Derp { region, node_key } => {
                        assert_eq!(region, REGION);
                        let to = self.hosts.iter().position(|h| h.key == node_key).unwrap();
                        let source = Source::Derp {
                            region,
                            node_key: self.hosts[i].key,
                        };
                        self.queue.push(Delivery {
                            at: now + DERP_ONE_WAY,
                            to,
                            source,
                            payload: t.payload,
                        });
                    }
                }
            }
            while let Some(chunk) = self.hosts[i].pm.poll_sweep() {
                assert_eq!(chunk.peer, self.hosts[1 - i].key);
                if *chunk.ports.start() == SWEEP_FIRST_PORT {
                    self.hosts[i].sweeps_started.push(now);
                }
                self.hosts[i].sweep_sends.push((now, chunk.len()));
                for dest in chunk.dests() {
                    self.route_udp(i, dest, &chunk.payload);
                }
            }
            while let Some(e) = self.hosts[i].pm.poll_event() {
                self.hosts[i].events.push(e);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let mut next = end.min(self.next_traffic);
            if let Some(q) = self.queue.iter().map(|d| d.at).min() {
                next = next.min(q);
            }
            for h in &self.hosts {
                if let Some(t) = h.pm.poll_timeout() {
                    next = next.min(t.max(self.now));
                }
            }
            self.now = next;
            if let Some(pos) = self.queue.iter().position(|d| d.at <= self.now) {
                let d = self.queue.remove(pos);
                let h = &mut self.hosts[d.to];
                let _ = h.pm.handle_disco(d.source, &d.payload, self.now);
                continue;
            }
            let now = self.now;
            for h in &mut self.hosts {
                if h.pm.poll_timeout().is_some_and(|t| t <= now) {
                    h.pm.handle_timeout(now);
                }
            }
            if self.next_traffic <= now {
                for i in 0..2 {
                    if self.hosts[i].traffic {
                        let other = self.key(1 - i);
                        self.hosts[i].pm.send_path(&other, now);
                    }
                }
                self.next_traffic = now + TRAFFIC_EVERY;
            }
            if self.now >= end {
                self.flush();
                return;
            }
        }
    }

    fn path(&self, i: usize) -> PathStatus {
        self.hosts[i].pm.peer_path(&self.key(1 - i))
    }

    fn is_direct(&self, i: usize) -> bool {
        matches!(self.path(i), PathStatus::Direct(..))
    }

    /// Runs until both sides are direct (or `limit` passes); returns the time it took.
    fn time_to_direct(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            self.run_for(Duration::from_millis(50));
            if self.is_direct(0) && self.is_direct(1) {
                return Some(self.now - start);
            }
        }
        None
    }
}

#[test]
fn easy_easy_is_direct_without_sweeping() {
    let mut w = World::new(Nat::Easy, Nat::Easy);
    let t = w.time_to_direct(Duration::from_secs(10));
    assert!(t.is_some(), "{:?} / {:?}", w.path(0), w.path(1));
    assert_eq!(w.hosts[0].sweep_total() + w.hosts[1].sweep_total(), 0);
}

/// The lab's measured failure: without guessing, easy–hard never gets a direct path.
#[test]
fn easy_hard_plain_punching_fails_before_the_sweep() {
    let mut w = World::new(Nat::Easy, Nat::Hard);
    w.run_for(SWEEP_DELAY - Duration::from_millis(100));
    assert!(!w.is_direct(0) && !w.is_direct(1));
    assert_eq!(w.hosts[0].sweep_total(), 0);
}

#[test]
fn easy_hard_ends_direct_via_port_guessing() {
    for (easy, hard) in [(0, 1), (1, 0)] {
        let nats = if easy == 0 {
            (Nat::Easy, Nat::Hard)
        } else {
            (Nat::Hard, Nat::Easy)
        };
        let mut w = World::new(nats.0, nats.1);
        let t = w
            .time_to_direct(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("not direct: {:?} / {:?}", w.path(0), w.path(1)));
        // One sweep of at most 64 512 datagrams at 20k/s plus a few round trips.
        assert!(t < Duration::from_secs(10), "took {t:?}");
        let hard_wan = IpAddr::V4(w.hosts[hard].wan);
        let easy_wan = IpAddr::V4(w.hosts[easy].wan);
        let PathStatus::Direct(addr, _) = w.path(easy) else {
            unreachable!()
        };
        assert_eq!(addr.ip(), hard_wan);
        // The port the hard NAT chose towards the easy side's stable endpoint, never announced.
        let easy_stable = SocketAddr::new(easy_wan, LOCAL_PORT);
        assert_eq!(addr.port(), w.hosts[hard].mappings[&easy_stable]);
        assert!(matches!(w.path(hard), PathStatus::Direct(a, _) if a == easy_stable));
        // The hard side never sweeps; the easy side swept once and stopped when it hit.
        assert_eq!(w.hosts[hard].sweep_total(), 0);
        assert_eq!(w.hosts[easy].sweeps_started.len(), 1);
        let swept = w.hosts[easy].sweep_total();
        let hit = usize::from(addr.port() - SWEEP_FIRST_PORT) + 1;
        assert!(
            swept >= hit && swept <= hit + 5 * usize::from(SWEEP_CHUNK),
            "swept {swept} for a hit at port {}",
            addr.port()
        );
        // It stays direct, with no more sweeps.
        w.run_for(Duration::from_secs(60));
        assert!(w.is_direct(0) && w.is_direct(1));
        assert_eq!(w.hosts[easy].sweeps_started.len(), 1);
    }
}

#[test]
fn easy_hard_ends_direct_when_only_one_side_sends() {
    for sender in [0, 1] {
        let mut w = World::new(Nat::Easy, Nat::Hard);
        w.hosts[1 - sender].traffic = false;
        let start = w.now;
        while !w.is_direct(sender) && w.now < start + Duration::from_secs(20) {
            w.run_for(Duration::from_millis(50));
        }
        assert!(w.is_direct(sender), "sender {sender}: {:?}", w.path(sender));
        // Once the other side answers with traffic of its own, it is direct at once too.
        w.hosts[1 - sender].traffic = true;
        let t = w.time_to_direct(Duration::from_secs(20));
        assert!(
            t.is_some_and(|t| t <= Duration::from_secs(6)),
            "sender {sender}: {t:?} {:?} / {:?}",
            w.path(0),
            w.path(1)
        );
        assert_eq!(w.hosts[1].sweep_total(), 0);
        assert_eq!(w.hosts[0].sweeps_started.len(), 1);
    }
}

#[test]
fn hard_hard_stays_on_derp_and_never_sweeps() {
    let mut w = World::new(Nat::Hard, Nat::Hard);
    w.run_for(Duration::from_secs(180));
    for i in 0..2 {
        assert_eq!(w.path(i), PathStatus::Relay(REGION));
        assert_eq!(w.hosts[i].sweep_total(), 0);
        let other = w.key(1 - i);
        let now = w.now;
        // Traffic flows over DERP.
        assert_eq!(w.hosts[i].pm.send_path(&other, now).derp, Some(REGION));
    }
}

#[test]
fn sweep_is_paced_backs_off_and_is_capped() {
    let mut w = World::new(Nat::Easy, Nat::Hard);
    // The hard side's router drops everything: no sweep can succeed.
    w.hosts[1].blackhole = true;
    w.run_for(Duration::from_secs(15 * 60));
    let h = &w.hosts[0];
    assert!(!w.is_direct(0));
    assert_eq!(h.sweeps_started.len(), MAX_FAILED_SWEEPS as usize);
    assert_eq!(h.sweep_total(), SWEEP_PORTS * MAX_FAILED_SWEEPS as usize);
    // Pacing: count datagrams per window of fake time, never wall time.
    let max_in = |window: Duration| {
        h.sweep_sends
            .iter()
            .map(|(start, _)| {
                h.sweep_sends
                    .iter()
                    .filter(|(t, _)| *t >= *start && *t < *start + window)
                    .map(|(_, n)| n)
                    .sum::<usize>()
            })
            .max()
            .unwrap()
    };
    assert!(max_in(Duration::from_millis(100)) <= 2_200);
    assert!(max_in(Duration::from_secs(1)) <= 20_200);
    assert!(
        h.sweep_sends
            .iter()
            .all(|(_, n)| *n <= usize::from(SWEEP_CHUNK))
    );
    // Each sweep takes about 3.2 s, and sweeps back off 30 s, then 60 s.
    let s = &h.sweeps_started;
    let sweep_len = Duration::from_millis(3200);
    assert!(s[1] - s[0] >= sweep_len + SWEEP_BACKOFF);
    assert!(s[2] - s[1] >= sweep_len + SWEEP_BACKOFF * 2);
    // A network change lifts the cap.
    let now = w.now;
    w.hosts[0].pm.network_changed(now);
    w.run_for(Duration::from_secs(10));
    assert_eq!(
        w.hosts[0].sweeps_started.len(),
        MAX_FAILED_SWEEPS as usize + 1
    );
}

#[test]
fn no_sweep_without_a_known_easy_nat_or_a_public_peer_ip() {
    // Our NAT kind unknown (no STUN verdict): no guessing.
    let mut w = World::new(Nat::Easy, Nat::Hard);
    let fresh = PathManager::new(w.hosts[0].key, w.hosts[0].disco.clone(), [9; 32]);
    w.hosts[0].pm = fresh;
    let stun = SocketAddr::new(w.hosts[0].wan.into(), LOCAL_PORT);
    let lan = w.hosts[0].lan;
    w.hosts[0].pm.set_local_endpoints(vec![lan, stun]);
    w.hosts[0].pm.set_home_derp(Some(REGION));
    w.set_netmaps();
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.hosts[0].sweep_total(), 0);
    assert!(!w.is_direct(0));

    // The peer's only public IPv4 is our own (same NAT) or private: nothing to sweep.
    let mut w = World::new(Nat::Easy, Nat::Hard);
    let mut info = w.info(1);
    let our_wan = SocketAddr::new(w.hosts[0].wan.into(), 5555);
    info.endpoints = vec![
        "192.168.2.2:41641".parse().unwrap(),
        "100.64.3.4:41641".parse().unwrap(),
        our_wan,
    ];
    let now = w.now;
    w.hosts[0].pm.set_peers(vec![info], now);
    w.hosts[1].traffic = false;
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.hosts[0].sweep_total(), 0);
}

#[test]
fn sweep_pong_is_accepted_only_from_the_swept_ip_over_udp() {
    let mut w = World::new(Nat::Easy, Nat::Hard);
    w.hosts[1].blackhole = true;
    w.run_for(SWEEP_DELAY + Duration::from_millis(100));
    let chunk_payload = {
        // Catch the next chunk before the world routes it.
        let now = w.now + SWEEP_CHUNK_INTERVAL;
        w.hosts[0].pm.handle_timeout(now);
        w.hosts[0]
            .pm
            .poll_sweep()
            .expect("a sweep is running")
            .payload
    };
    let (_, msg) = proto::disco::open(&w.hosts[1].disco, &chunk_payload).unwrap();
    let proto::disco::Message::Ping(ping) = msg else {
        panic!("sweep payload is not a Ping: {msg:?}");
    };
    let mut rng = StdRng::from_seed([5; 32]);
    let pong = proto::disco::Message::Pong(proto::disco::Pong {
        tx_id: ping.tx_id,
        src: SocketAddr::new(w.hosts[0].wan.into(), LOCAL_PORT),
    });
    let pkt = proto::disco::seal(
        &w.hosts[1].disco,
        &w.hosts[0].disco.public(),
        &pong,
        &mut rng,
    );
    let now = w.now;
    let b = w.key(1);
    let pm = &mut w.hosts[0].pm;
    // From another IP, or via DERP: not the sweep's answer.
    let elsewhere: SocketAddr = "203.0.113.77:4444".parse().unwrap();
    assert_eq!(
        pm.handle_disco(Source::Udp(elsewhere), &pkt, now),
        Err(Ignored::UnknownTxId)
    );
    let via_derp = Source::Derp {
        region: REGION,
        node_key: b,
    };
    assert_eq!(
        pm.handle_disco(via_derp, &pkt, now),
        Err(Ignored::UnknownTxId)
    );
    assert!(!pm.candidates(&b).iter().any(|(a, _)| *a == elsewhere));
    // From an unannounced port of the swept IP (v4-mapped, as a dual-stack socket reports it):
    // the hit. It becomes a candidate and is pinged at once; the sweep stops.
    let hit: SocketAddr = "[::ffff:198.51.100.2]:33333".parse().unwrap();
    let hit_v4: SocketAddr = "198.51.100.2:33333".parse().unwrap();
    assert_eq!(pm.handle_disco(Source::Udp(hit), &pkt, now), Ok(()));
    assert!(pm.candidates(&b).iter().any(|(a, _)| *a == hit_v4));
    assert_eq!(pm.peer_for_addr(hit_v4), Some(b));
    let mut pinged = false;
    while let Some(t) = pm.poll_transmit() {
        pinged |= t.dest == Dest::Udp(hit_v4);
    }
    assert!(pinged);
    pm.handle_timeout(now + SWEEP_CHUNK_INTERVAL);
    assert!(pm.poll_sweep().is_none());
    // A second answer to the finished sweep is stale.
    assert_eq!(
        pm.handle_disco(Source::Udp(hit), &pkt, now),
        Err(Ignored::UnknownTxId)
    );
}
