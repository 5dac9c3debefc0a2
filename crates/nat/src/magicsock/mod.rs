//! magicsock's brain: per-peer path discovery and selection with disco (reference §4).
//!
//! [`PathManager`] decides, for every WireGuard packet to a peer, whether it goes over a direct
//! UDP path, over DERP, or both; it runs the disco Ping/Pong/CallMeMaybe exchange that finds and
//! keeps direct paths; and it remembers which UDP address belongs to which node key so inbound
//! WireGuard can be attributed.
//!
//! Sans-IO. Inputs:
//! - [`PathManager::set_peers`] from every netmap, [`PathManager::set_local_endpoints`] and
//!   [`PathManager::set_local_nat_hard`] after every STUN report, [`PathManager::set_home_derp`]
//!   when our home region changes, [`PathManager::network_changed`] on a major link change;
//! - [`PathManager::send_path`] before sending each WireGuard packet (this is also the activity
//!   signal that starts discovery and heartbeats);
//! - [`PathManager::handle_disco`] with every datagram [`proto::disco::classify`] calls disco
//!   (from UDP or from a DERP RecvPacket);
//! - [`PathManager::handle_timeout`] at [`PathManager::poll_timeout`];
//! - [`PathManager::ping`] for `agent ping`.
//!
//! After each input, drain [`PathManager::poll_transmit`] (send each [`DiscoTransmit`] over the
//! agent's UDP socket or as a DERP SendPacket on the region's connection) and
//! [`PathManager::poll_sweep`] (a [`SweepChunk`]: one payload to a range of ports), then
//! [`PathManager::poll_event`], then re-read [`PathManager::poll_timeout`].
//!
//! Hard NAT: when we are behind an endpoint-independent mapping and the peer's mapping varies by
//! destination, plain punching cannot work (the peer's port towards us is unknown and our filter
//! drops it); a paced port sweep of the peer's public IPv4 finds it (see `sweep.rs`). Both sides
//! hard stays on DERP.
//!
//! Addresses are canonical: IPv4-mapped IPv6 (from a dual-stack socket) is treated as IPv4
//! everywhere, and IPv4 destinations are emitted as plain IPv4 (a dual-stack driver maps them).
//!
//! Timing (Tailscale v1.90 constants): heartbeat Pings every 3 s on the best path while the
//! peer had outbound traffic in the last 45 s; a best path is trusted for 6.5 s after its last
//! Pong, then traffic is duplicated onto DERP until a Pong arrives again; Pings are forgotten
//! after 5 s; a candidate is pinged at most every 5 s (CallMeMaybe resets that); a path slower
//! than 5 ms is re-probed for something better every minute.

mod endpoint;
#[cfg(test)]
mod nat_tests;
mod sweep;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use endpoint::canonical_addr;
pub use sweep::{
    MAX_FAILED_SWEEPS, SWEEP_BACKOFF, SWEEP_CHUNK, SWEEP_CHUNK_INTERVAL, SWEEP_DELAY,
    SWEEP_FIRST_PORT, SweepChunk,
};

use proto::disco::{self, CallMeMaybe, DERP_MAGIC_IP, DiscoError, Message, Ping, Pong, TxId};
use proto::keys::{DiscoPrivate, DiscoPublic, NodePublic};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub use endpoint::{AddrQuality, better_addr};
use endpoint::{EndpointState, Peer, PingTarget, PongReply, Purpose, SentPing};

/// Interval between heartbeat Pings on the best path of an active peer.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How long a best UDP path is used alone after its last Pong.
pub const TRUST_UDP_ADDR_DURATION: Duration = Duration::from_millis(6500);
/// An unanswered Ping is forgotten after this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Minimum spacing of discovery Pings to one candidate.
pub const DISCO_PING_INTERVAL: Duration = Duration::from_secs(5);
/// A peer without outbound traffic for this long is idle: heartbeats stop, learned endpoints
/// expire.
pub const SESSION_ACTIVE_TIMEOUT: Duration = Duration::from_secs(45);
/// Re-probe all candidates this often even with a working direct path (unless it is fast).
pub const UPGRADE_UDP_DIRECT_INTERVAL: Duration = Duration::from_secs(60);
/// A direct path at or below this latency is never re-probed for something better.
pub const GOOD_ENOUGH_LATENCY: Duration = Duration::from_millis(5);
/// Pong results kept per candidate.
pub const PONG_HISTORY: usize = 64;
/// Minimum spacing of the Ping we send back to an address that just pinged us over UDP.
const PING_BACK_SPACING: Duration = Duration::from_millis(500);
/// Prune expired candidates of a peer once it has more than this many.
const MAX_CANDIDATES: usize = 100;

/// A peer as the netmap describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node (WireGuard) key: its identity here and its DERP address.
    pub node_key: NodePublic,
    /// The peer's current disco key. A change means the peer restarted: its path state resets.
    pub disco_key: DiscoPublic,
    /// The peer's advertised UDP endpoints (`Node.Endpoints`).
    pub endpoints: Vec<SocketAddr>,
    /// The peer's home DERP region (`Node.HomeDERP`).
    pub home_derp: Option<u16>,
    /// The peer's NAT maps each destination to a new port
    /// (`Hostinfo.NetInfo.MappingVariesByDestIP == Some(true)`): plain hole punching towards it
    /// fails, and port guessing is tried when we are behind an easy NAT.
    pub mapping_varies: bool,
}

/// Where a disco packet came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Our UDP socket, from this address.
    Udp(SocketAddr),
    /// A DERP RecvPacket on `region`'s connection, sent by `node_key`.
    Derp {
        /// The region whose connection delivered it.
        region: u16,
        /// The DERP-level source key (authenticated by the relay).
        node_key: NodePublic,
    },
}

/// Where a disco packet must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Send from our UDP socket to this address.
    Udp(SocketAddr),
    /// SendPacket to `node_key` on `region`'s DERP connection (opening it if needed).
    Derp {
        /// The DERP region.
        region: u16,
        /// The destination node key.
        node_key: NodePublic,
    },
}

/// A sealed disco packet to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoTransmit {
    /// Where to send it.
    pub dest: Dest,
    /// The complete disco packet (magic, key, box).
    pub payload: Vec<u8>,
}

/// How to send the next WireGuard packet to a peer: via UDP, via DERP, both, or neither (the
/// peer is unreachable for now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendPath {
    /// Send to this UDP address.
    pub udp: Option<SocketAddr>,
    /// Send via this DERP region.
    pub derp: Option<u16>,
}

/// The path traffic to a peer currently takes, for `agent status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathStatus {
    /// A trusted direct UDP path and its last round-trip time.
    Direct(SocketAddr, Duration),
    /// Relayed through this DERP region.
    Relay(u16),
    /// No way to reach the peer yet (no trusted path, no known region).
    None,
}

/// The path an `agent ping` answer came back on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingPath {
    /// Directly, from this address.
    Direct(SocketAddr),
    /// Through this DERP region.
    Derp(u16),
}

/// Something worth telling the user or the status page about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEvent {
    /// Traffic to `peer` now goes directly to `addr` (a new best path, or the old one trusted
    /// again after a fallback).
    BestAddrChanged {
        /// The peer.
        peer: NodePublic,
        /// Its direct address.
        addr: SocketAddr,
        /// The measured round-trip time.
        latency: Duration,
    },
    /// The direct path to `peer` stopped answering (or was dropped): traffic goes via DERP too.
    FellBackToDerp {
        /// The peer.
        peer: NodePublic,
    },
    /// An `agent ping` was answered.
    PingResult {
        /// The peer pinged.
        peer: NodePublic,
        /// The id [`PathManager::ping`] returned.
        id: TxId,
        /// Round-trip time.
        latency: Duration,
        /// The path the answer took.
        path: PingPath,
    },
    /// No answer to an `agent ping` within 5 s.
    PingTimedOut {
        /// The peer pinged.
        peer: NodePublic,
        /// The id [`PathManager::ping`] returned.
        id: TxId,
    },
    /// A trusted direct path to `peer` stopped answering (its trust lapsed without Pongs).
    /// Comes right after [`PathEvent::FellBackToDerp`]. Our NAT state may have been flushed or
    /// our address changed: re-STUN now rather than at the next periodic report.
    DirectPathLost {
        /// The peer.
        peer: NodePublic,
    },
}

/// Why [`PathManager::handle_disco`] dropped a packet. Dropping is always silent on the wire;
/// this is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// Not a disco packet at all.
    #[error("not a disco packet")]
    NotDisco,
    /// The sender's disco key belongs to no peer in the netmap.
    #[error("disco packet from a disco key that is not in the netmap")]
    UnknownSender,
    /// A DERP-borne packet whose sender node key has a different disco key in the netmap.
    #[error("disco key does not match the netmap entry of the DERP sender's node key")]
    SenderMismatch,
    /// Failed authentication or could not be parsed.
    #[error("unusable disco packet: {0}")]
    Malformed(DiscoError),
    /// CallMeMaybe is only accepted via DERP.
    #[error("CallMeMaybe arrived over UDP; it is only accepted via DERP")]
    CallMeMaybeNotViaDerp,
    /// A Ping we already answered (same TxID from the same address).
    #[error("duplicate disco ping")]
    DuplicatePing,
    /// A Pong for no Ping we have outstanding (late, or not ours).
    #[error("disco pong for an unknown or expired transaction")]
    UnknownTxId,
    /// A message type this implementation does not act on.
    #[error("unsupported disco message")]
    Unsupported,
}

/// State shared by all peers: our keys, RNG, output queues and the address → node key map.
struct Shared {
    node_key: NodePublic,
    disco: DiscoPrivate,
    rng: StdRng,
    local_endpoints: Vec<SocketAddr>,
    /// Whether our NAT's mapping varies by destination: `None` until told (no port guessing).
    local_nat_hard: Option<bool>,
    /// Our endpoints changed: tell active peers (CallMeMaybe) at the next timer.
    endpoints_changed: bool,
    /// The latest `now` any input carried, to fire "as soon as possible" timers.
    last_now: Option<Instant>,
    home_derp: Option<u16>,
    by_addr: BTreeMap<SocketAddr, NodePublic>,
    transmits: VecDeque<DiscoTransmit>,
    sweeps: VecDeque<SweepChunk>,
    events: VecDeque<PathEvent>,
}

impl Shared {
    fn random_tx(&mut self) -> [u8; 12] {
        let mut tx = [0u8; 12];
        self.rng.fill_bytes(&mut tx);
        tx
    }

    fn send(&mut self, peer_disco: &DiscoPublic, dest: Dest, msg: &Message) {
        let payload = disco::seal(&self.disco, peer_disco, msg, &mut self.rng);
        self.transmits.push_back(DiscoTransmit { dest, payload });
    }
}

/// Per-peer path discovery and selection. See the module documentation for the driving loop.
pub struct PathManager {
    peers: BTreeMap<NodePublic, Peer>,
    by_disco: BTreeMap<DiscoPublic, NodePublic>,
    sh: Shared,
}

impl fmt::Debug for PathManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately omits the disco private key and RNG state.
        f.debug_struct("PathManager")
            .field("node_key", &self.sh.node_key)
            .field("disco_key", &self.sh.disco.public())
            .field("peers", &self.peers.len())
            .field("home_derp", &self.sh.home_derp)
            .finish_non_exhaustive()
    }
}

impl PathManager {
    /// A manager for the node `node_key` using the disco key `disco` (fresh each process start).
    /// `rng_seed` feeds TxIDs and box nonces: 32 bytes from the OS RNG in production.
    pub fn new(node_key: NodePublic, disco: DiscoPrivate, rng_seed: [u8; 32]) -> Self {
        Self {
            peers: BTreeMap::new(),
            by_disco: BTreeMap::new(),
            sh: Shared {
                node_key,
                disco,
                rng: StdRng::from_seed(rng_seed),
                local_endpoints: Vec::new(),
                local_nat_hard: None,
                endpoints_changed: false,
                last_now: None,
                home_derp: None,
                by_addr: BTreeMap::new(),
                transmits: VecDeque::new(),
                sweeps: VecDeque::new(),
                events: VecDeque::new(),
            },
        }
    }

    /// Our disco public key (announced to control in `MapRequest.DiscoKey`).
    pub fn disco_public(&self) -> DiscoPublic {
        self.sh.disco.public()
    }

    /// Replaces the peer set from a netmap. Peers not listed are forgotten; a peer whose disco key
    /// changed has its path state reset (it restarted); endpoints no longer listed are dropped
    /// unless learned from recent Pings or a CallMeMaybe.
    pub fn set_peers(&mut self, peers: Vec<PeerInfo>, now: Instant) {
        self.sh.last_now = Some(now);
        let mut old = std::mem::take(&mut self.peers);
        for info in peers {
            let key = info.node_key;
            let mut peer = match old.remove(&key) {
                Some(mut p) => {
                    if p.disco_key != info.disco_key {
                        reset_peer(key, &mut p, &mut self.sh);
                        p.disco_key = info.disco_key;
                    }
                    p.home_derp = info.home_derp;
                    p
                }
                None => Peer::new(info.disco_key, info.home_derp),
            };
            if peer.mapping_varies != info.mapping_varies {
                // A different NAT kind on the peer: earlier sweep outcomes say nothing now.
                peer.sweep = sweep::SweepState::default();
            }
            peer.mapping_varies = info.mapping_varies;
            for st in peer.endpoints.values_mut() {
                st.in_netmap = false;
            }
            let mut new_endpoint = false;
            for ep in info.endpoints {
                let ep = canonical_addr(ep);
                if ep.port() == 0 || ep.ip().is_unspecified() {
                    continue;
                }
                new_endpoint |= !peer.endpoints.contains_key(&ep);
                peer.endpoints.entry(ep).or_default().in_netmap = true;
            }
            prune_endpoints(key, &mut peer, &mut self.sh, now);
            // A peer we are talking to (typically one that just joined and has now reported its
            // STUN endpoints) gets pinged at once rather than at the next heartbeat, 3 s away.
            let active = peer
                .last_send
                .is_some_and(|t| now.saturating_duration_since(t) < SESSION_ACTIVE_TIMEOUT);
            if new_endpoint && active && !peer.trusted(now) {
                send_disco_pings(key, &mut peer, &mut self.sh, now, true);
            }
            self.peers.insert(key, peer);
        }
        self.sh.by_addr.retain(|_, k| self.peers.contains_key(k));
        self.by_disco = self.peers.iter().map(|(k, p)| (p.disco_key, *k)).collect();
    }

    /// Our own endpoints (local interfaces and STUN results), sent in CallMeMaybe. When the set
    /// differs from the previous one (roaming, NAT rebinding, a new port mapping), every peer
    /// with traffic in the last 45 s gets a discovery round with a CallMeMaybe at the next
    /// [`Self::handle_timeout`] ([`Self::poll_timeout`] asks for it at once), so it re-punches
    /// towards our new address instead of waiting for its heartbeat to fail.
    pub fn set_local_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        let set = |v: &[SocketAddr]| {
            let mut v: Vec<SocketAddr> = v.iter().map(|a| canonical_addr(*a)).collect();
            v.sort();
            v.dedup();
            v
        };
        if set(&endpoints) != set(&self.sh.local_endpoints) {
            self.sh.endpoints_changed = true;
        }
        self.sh.local_endpoints = endpoints;
    }

    /// Whether our own NAT maps each destination to a new port: the STUN report's
    /// `mapping_varies_by_dest_ip` (pass `Some(true)`/`Some(false)` as `true`/`false`). Until
    /// this is called with `false` we do not guess ports: from behind a hard NAT a sweep cannot
    /// work (hard–hard stays on DERP), and an unknown NAT is treated the same way.
    pub fn set_local_nat_hard(&mut self, hard: bool) {
        self.sh.local_nat_hard = Some(hard);
        if hard {
            for p in self.peers.values_mut() {
                p.sweep.running = None;
                p.sweep.due = None;
            }
        }
    }

    /// A major network change (reference §4.7: new interface or address, default route change,
    /// wake from sleep): every peer's best address, trust, probe history and port-sweep state is
    /// forgotten (traffic goes via DERP until re-proven) and discovery restarts with the next
    /// [`Self::send_path`]. Call after rebinding the UDP socket, together with a re-STUN.
    pub fn network_changed(&mut self, now: Instant) {
        self.sh.last_now = Some(now);
        for (key, p) in self.peers.iter_mut() {
            reset_peer(*key, p, &mut self.sh);
        }
    }

    /// The next paced slice of a port sweep to send (see [`SweepChunk`]). Drain it with
    /// [`Self::poll_transmit`] after every input.
    pub fn poll_sweep(&mut self) -> Option<SweepChunk> {
        self.sh.sweeps.pop_front()
    }

    /// Our home DERP region. Used as the last-resort route to a peer with no known home region
    /// that we have never heard from (it works when both sides share a region).
    pub fn set_home_derp(&mut self, region: Option<u16>) {
        self.sh.home_derp = region;
    }

    /// How to send a WireGuard packet to `peer` now (reference §4.3): UDP alone while the best
    /// path is trusted; UDP and DERP once trust lapsed; DERP alone without a best path. Also
    /// records activity, which starts heartbeats, and kicks off discovery when the path is not a
    /// trusted direct one.
    pub fn send_path(&mut self, peer: &NodePublic, now: Instant) -> SendPath {
        self.sh.last_now = Some(now);
        let Some(p) = self.peers.get_mut(peer) else {
            return SendPath::default();
        };
        check_trust(*peer, p, &mut self.sh, now);
        let trusted = p.trusted(now);
        let udp = p.best.map(|b| b.addr);
        let derp = if trusted {
            None
        } else {
            p.home_derp.or_else(|| match udp {
                Some(_) => None,
                None => p.last_derp_region.or(self.sh.home_derp),
            })
        };
        if !trusted {
            send_disco_pings(*peer, p, &mut self.sh, now, true);
        }
        note_tx_activity(p, now);
        SendPath { udp, derp }
    }

    /// Whether `key` is one of the peers from the last [`PathManager::set_peers`].
    pub fn has_peer(&self, key: &NodePublic) -> bool {
        self.peers.contains_key(key)
    }

    /// The node key that owns UDP address `addr` (bound when it pinged us or ponged our Ping),
    /// for attributing inbound WireGuard packets.
    pub fn peer_for_addr(&self, addr: SocketAddr) -> Option<NodePublic> {
        self.sh.by_addr.get(&canonical_addr(addr)).copied()
    }

    /// The candidate endpoints of `peer` with their last measured latency, for debug output.
    pub fn candidates(&self, peer: &NodePublic) -> Vec<(SocketAddr, Option<Duration>)> {
        self.peers
            .get(peer)
            .map(|p| {
                p.endpoints
                    .iter()
                    .map(|(a, st)| (*a, st.latency()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The path to `peer` for status output.
    pub fn peer_path(&self, peer: &NodePublic) -> PathStatus {
        let Some(p) = self.peers.get(peer) else {
            return PathStatus::None;
        };
        match p.best {
            Some(b) if !p.fell_back => PathStatus::Direct(b.addr, b.latency),
            _ => match p.derp_region().or(self.sh.home_derp) {
                Some(r) => PathStatus::Relay(r),
                None => PathStatus::None,
            },
        }
    }

    /// Starts an `agent ping` to `peer`: over DERP when there is no trusted direct path, and to
    /// the trusted path or else every candidate. The answer (the first Pong) arrives as
    /// [`PathEvent::PingResult`] with the returned id, or [`PathEvent::PingTimedOut`] after 5 s.
    /// `None` if the peer is unknown or has no path at all.
    pub fn ping(&mut self, peer: &NodePublic, now: Instant) -> Option<TxId> {
        self.sh.last_now = Some(now);
        let key = *peer;
        let p = self.peers.get_mut(peer)?;
        check_trust(key, p, &mut self.sh, now);
        let id = self.sh.random_tx();
        let mut targets = Vec::new();
        let trusted = p.trusted(now);
        if !trusted && let Some(region) = p.derp_region().or(self.sh.home_derp) {
            targets.push(PingTarget::Derp(region));
        }
        match p.best {
            Some(b) if trusted => targets.push(PingTarget::Udp(b.addr)),
            _ => targets.extend(p.endpoints.keys().map(|a| PingTarget::Udp(*a))),
        }
        if targets.is_empty() {
            return None;
        }
        p.cli.insert(id, targets.len());
        for t in targets {
            start_ping(key, p, &mut self.sh, t, now, Purpose::Cli, Some(id));
        }
        note_tx_activity(p, now);
        Some(TxId(id))
    }

    /// Handles a disco packet from UDP or DERP. Unknown senders, bad boxes, CallMeMaybe over UDP
    /// and stray Pongs are dropped (the reason is returned for logging).
    pub fn handle_disco(
        &mut self,
        source: Source,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), Ignored> {
        self.sh.last_now = Some(now);
        let source = match source {
            Source::Udp(addr) => Source::Udp(canonical_addr(addr)),
            derp => derp,
        };
        let sender = disco::sender_key(packet).ok_or(Ignored::NotDisco)?;
        let mut key = match source {
            Source::Derp { node_key, .. } => {
                let p = self.peers.get(&node_key).ok_or(Ignored::UnknownSender)?;
                if p.disco_key != sender {
                    return Err(Ignored::SenderMismatch);
                }
                node_key
            }
            Source::Udp(_) => *self.by_disco.get(&sender).ok_or(Ignored::UnknownSender)?,
        };
        let (_, msg) = disco::open(&self.sh.disco, packet).map_err(Ignored::Malformed)?;
        // Two netmap peers should never share a disco key, but if they do the Ping's node key
        // (checked against the netmap) disambiguates, as in Go.
        if let (
            Source::Udp(_),
            Message::Ping(Ping {
                node_key: Some(claimed),
                ..
            }),
        ) = (source, &msg)
            && *claimed != key
            && self
                .peers
                .get(claimed)
                .is_some_and(|p| p.disco_key == sender)
        {
            key = *claimed;
        }
        let Some(p) = self.peers.get_mut(&key) else {
            return Err(Ignored::UnknownSender);
        };
        if let Source::Derp { region, .. } = source {
            p.last_derp_region = Some(region);
        }
        match msg {
            Message::Ping(ping) => handle_ping(key, p, &mut self.sh, source, ping, now),
            Message::Pong(pong) => handle_pong(key, p, &mut self.sh, source, pong, now),
            Message::CallMeMaybe(cmm) => match source {
                Source::Udp(_) => Err(Ignored::CallMeMaybeNotViaDerp),
                Source::Derp { .. } => {
                    handle_call_me_maybe(key, p, &mut self.sh, cmm, now);
                    Ok(())
                }
            },
            _ => Err(Ignored::Unsupported),
        }
    }

    /// Runs due timers: forgets unanswered Pings, notices lapsed trust, sends heartbeats and
    /// discovery rounds.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sh.last_now = Some(now);
        let endpoints_changed = std::mem::take(&mut self.sh.endpoints_changed);
        for (key, p) in self.peers.iter_mut() {
            expire_pings(*key, p, &mut self.sh, now);
            check_trust(*key, p, &mut self.sh, now);
            if endpoints_changed && p.is_active(now) {
                // Tell the peer where we are now, and open our side towards it again.
                for st in p.endpoints.values_mut() {
                    st.last_ping = None;
                }
                send_disco_pings(*key, p, &mut self.sh, now, false);
                send_call_me_maybe(*key, p, &mut self.sh, now);
            }
            if p.next_heartbeat.is_some_and(|t| t <= now) {
                heartbeat(*key, p, &mut self.sh, now);
            }
            sweep::on_timeout(*key, p, &mut self.sh, now);
        }
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.sh.endpoints_changed
            && let Some(t) = self.sh.last_now
        {
            consider(t);
        }
        for p in self.peers.values() {
            if let Some(t) = sweep::next_timeout(p) {
                consider(t);
            }
            if let Some(t) = p.next_heartbeat {
                consider(t);
            }
            for s in p.sent.values() {
                consider(s.at + PING_TIMEOUT);
            }
            if p.best.is_some()
                && !p.fell_back
                && let Some(t) = p.trust_until
            {
                consider(t);
            }
        }
        next
    }

    /// The next disco packet to send.
    pub fn poll_transmit(&mut self) -> Option<DiscoTransmit> {
        self.sh.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.sh.events.pop_front()
    }
}

/// Go `resetLocked`: the peer restarted (new disco key), so nothing we knew about its paths
/// holds. Candidates stay, but must be re-proven.
fn reset_peer(key: NodePublic, p: &mut Peer, sh: &mut Shared) {
    clear_best(key, p, sh);
    p.last_send = None;
    p.last_full_ping = None;
    p.next_heartbeat = None;
    p.sent.clear();
    for id in std::mem::take(&mut p.cli).into_keys() {
        sh.events.push_back(PathEvent::PingTimedOut {
            peer: key,
            id: TxId(id),
        });
    }
    for st in p.endpoints.values_mut() {
        st.last_ping = None;
        st.pongs.clear();
    }
    p.sweep = sweep::SweepState::default();
}

fn clear_best(key: NodePublic, p: &mut Peer, sh: &mut Shared) {
    if p.best.is_some() && !p.fell_back {
        sh.events.push_back(PathEvent::FellBackToDerp { peer: key });
    }
    p.best = None;
    p.trust_until = None;
    p.fell_back = false;
}

fn prune_endpoints(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant) {
    let dead: Vec<SocketAddr> = p
        .endpoints
        .iter()
        .filter(|(_, st)| st.should_delete(now))
        .map(|(a, _)| *a)
        .collect();
    for addr in dead {
        p.endpoints.remove(&addr);
        // The address-to-peer index only covers live candidates (it would grow with every
        // roam and NAT rebinding otherwise).
        if sh.by_addr.get(&addr) == Some(&key) {
            sh.by_addr.remove(&addr);
        }
        if p.best.is_some_and(|b| b.addr == addr) {
            clear_best(key, p, sh);
        }
    }
}

/// Once trust in the best path lapses, report the fallback (once).
fn check_trust(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant) {
    if p.best.is_some() && !p.fell_back && !p.trusted(now) {
        p.fell_back = true;
        sh.events.push_back(PathEvent::FellBackToDerp { peer: key });
        sh.events.push_back(PathEvent::DirectPathLost { peer: key });
    }
}

fn note_tx_activity(p: &mut Peer, now: Instant) {
    p.last_send = Some(now);
    if p.next_heartbeat.is_none() {
        p.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
    }
}

#[allow(clippy::too_many_arguments)]
fn start_ping(
    key: NodePublic,
    p: &mut Peer,
    sh: &mut Shared,
    to: PingTarget,
    now: Instant,
    purpose: Purpose,
    cli: Option<[u8; 12]>,
) {
    let dest = match to {
        PingTarget::Udp(addr) => {
            if purpose != Purpose::Cli {
                // Only ping endpoints we still consider live (Go logs this as unexpected).
                let Some(st) = p.endpoints.get_mut(&addr) else {
                    return;
                };
                st.last_ping = Some(now);
            }
            Dest::Udp(addr)
        }
        PingTarget::Derp(region) => Dest::Derp {
            region,
            node_key: key,
        },
    };
    let tx = sh.random_tx();
    p.sent.insert(
        tx,
        SentPing {
            to,
            at: now,
            purpose,
            cli,
        },
    );
    let msg = Message::Ping(Ping {
        tx_id: TxId(tx),
        node_key: Some(sh.node_key),
        padding: 0,
    });
    sh.send(&p.disco_key, dest, &msg);
}

/// A discovery round (reference §4.4): ping every live candidate not pinged in the last 5 s and,
/// if any Ping went out, tell the peer via DERP to ping us back.
fn send_disco_pings(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant, cmm: bool) {
    p.last_full_ping = Some(now);
    prune_endpoints(key, p, sh, now);
    let due: Vec<SocketAddr> = p
        .endpoints
        .iter()
        .filter(|(_, st)| st.may_ping(now))
        .map(|(a, _)| *a)
        .collect();
    for addr in &due {
        start_ping(
            key,
            p,
            sh,
            PingTarget::Udp(*addr),
            now,
            Purpose::Discovery,
            None,
        );
    }
    if due.is_empty() || !cmm {
        return;
    }
    send_call_me_maybe(key, p, sh, now);
}

/// Sends CallMeMaybe with all our endpoints via the peer's home region, and plans a port sweep
/// if the peer is behind a hard NAT (it will now ping us, creating the mapping we guess).
fn send_call_me_maybe(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant) {
    let Some(region) = p.home_derp else {
        return;
    };
    let msg = Message::CallMeMaybe(CallMeMaybe {
        endpoints: sh.local_endpoints.clone(),
    });
    sh.send(
        &p.disco_key,
        Dest::Derp {
            region,
            node_key: key,
        },
        &msg,
    );
    sweep::maybe_schedule(p, sh, now);
}

/// Go `heartbeat`: while the peer is active, ping the best path every 3 s and run a full round
/// when there is no trusted direct path or it is time to look for a better one.
fn heartbeat(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant) {
    p.next_heartbeat = None;
    let Some(last_send) = p.last_send else {
        return;
    };
    if now.saturating_duration_since(last_send) > SESSION_ACTIVE_TIMEOUT {
        // Idle: stop heartbeating until the next send_path.
        return;
    }
    if let Some(best) = p.best {
        start_ping(
            key,
            p,
            sh,
            PingTarget::Udp(best.addr),
            now,
            Purpose::Heartbeat,
            None,
        );
    }
    if p.want_full_ping(now) {
        send_disco_pings(key, p, sh, now, true);
    }
    p.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
}

fn expire_pings(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant) {
    let expired: Vec<[u8; 12]> = p
        .sent
        .iter()
        .filter(|(_, s)| s.at + PING_TIMEOUT <= now)
        .map(|(tx, _)| *tx)
        .collect();
    for tx in expired {
        let Some(sent) = p.sent.remove(&tx) else {
            continue;
        };
        let Some(id) = sent.cli else {
            continue;
        };
        if let Some(left) = p.cli.get_mut(&id) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                p.cli.remove(&id);
                sh.events.push_back(PathEvent::PingTimedOut {
                    peer: key,
                    id: TxId(id),
                });
            }
        }
    }
}

/// Answers a Ping with a Pong the way it came, learning the sender's address (reference §4.4
/// step 4). DERP-borne Pings are answered with the DERP magic address as the observed source.
fn handle_ping(
    key: NodePublic,
    p: &mut Peer,
    sh: &mut Shared,
    source: Source,
    ping: Ping,
    now: Instant,
) -> Result<(), Ignored> {
    let (dest, observed) = match source {
        Source::Udp(addr) => {
            let st = p.endpoints.entry(addr).or_insert_with(|| EndpointState {
                last_got_ping: Some(now),
                ..EndpointState::default()
            });
            if st.last_got_ping_tx == Some(ping.tx_id) {
                return Err(Ignored::DuplicatePing);
            }
            st.last_got_ping_tx = Some(ping.tx_id);
            if !st.in_netmap {
                st.last_got_ping = Some(now);
            }
            if p.endpoints.len() > MAX_CANDIDATES {
                prune_endpoints(key, p, sh, now);
            }
            sh.by_addr.insert(addr, key);
            (Dest::Udp(addr), addr)
        }
        Source::Derp { region, node_key } => (
            Dest::Derp { region, node_key },
            SocketAddr::new(DERP_MAGIC_IP.into(), region),
        ),
    };
    let msg = Message::Pong(Pong {
        tx_id: ping.tx_id,
        src: observed,
    });
    sh.send(&p.disco_key, dest, &msg);
    // A Ping that arrived over UDP proves the path from that address is open right now (its
    // NAT admitted our reply), while our own earlier Ping to it may have been dropped before
    // the peer opened its side. Ping it back at once instead of waiting out the 5 s spacing, so
    // both sides go direct together. Rate-limited so a chatty peer cannot make us flood.
    if let Source::Udp(addr) = source
        && !p.trusted(now)
        && p.endpoints.get(&addr).is_some_and(|st| {
            st.last_ping
                .is_none_or(|t| now.saturating_duration_since(t) >= PING_BACK_SPACING)
        })
    {
        start_ping(
            key,
            p,
            sh,
            PingTarget::Udp(addr),
            now,
            Purpose::Discovery,
            None,
        );
    }
    Ok(())
}

/// Matches a Pong to our Ping, records the latency and promotes the pinged address if it is
/// better than the current best; a Pong on the best path renews its trust for 6.5 s.
fn handle_pong(
    key: NodePublic,
    p: &mut Peer,
    sh: &mut Shared,
    source: Source,
    pong: Pong,
    now: Instant,
) -> Result<(), Ignored> {
    let Some(sent) = p.sent.remove(&pong.tx_id.0) else {
        return sweep::handle_pong(key, p, sh, source, pong.tx_id.0, now);
    };
    let latency = now.saturating_duration_since(sent.at);
    if let Some(id) = sent.cli
        && p.cli.remove(&id).is_some()
    {
        let path = match (sent.to, source) {
            (PingTarget::Udp(addr), Source::Udp(_)) => PingPath::Direct(addr),
            (_, Source::Derp { region, .. }) | (PingTarget::Derp(region), _) => {
                PingPath::Derp(region)
            }
        };
        sh.events.push_back(PathEvent::PingResult {
            peer: key,
            id: TxId(id),
            latency,
            path,
        });
    }
    let (PingTarget::Udp(addr), Source::Udp(from)) = (sent.to, source) else {
        return Ok(());
    };
    let Some(st) = p.endpoints.get_mut(&addr) else {
        // No longer a candidate we care about.
        return Ok(());
    };
    st.add_pong(PongReply {
        latency,
        at: now,
        pong_src: pong.src,
    });
    if st.swept.is_some() {
        st.swept = Some(now);
    }
    sh.by_addr.insert(from, key);
    let this = AddrQuality { addr, latency };
    let mut announced = false;
    // A best path whose trust lapsed is not answering: any candidate that does answer takes
    // over (otherwise an equally good new address, e.g. after the peer roamed, would never
    // replace the dead one).
    let best_dead = p.best.is_some_and(|b| b.addr != addr) && !p.trusted(now);
    if best_dead || better_addr(&this, p.best.as_ref()) {
        p.best = Some(this);
        announced = true;
        sh.events.push_back(PathEvent::BestAddrChanged {
            peer: key,
            addr,
            latency,
        });
    }
    if let Some(best) = p.best.as_mut()
        && best.addr == addr
    {
        best.latency = latency;
        p.trust_until = Some(now + TRUST_UDP_ADDR_DURATION);
        if p.fell_back && !announced {
            sh.events.push_back(PathEvent::BestAddrChanged {
                peer: key,
                addr,
                latency,
            });
        }
        p.fell_back = false;
    }
    Ok(())
}

/// CallMeMaybe (reference §4.4 step 3): replace the CallMeMaybe candidates with the new list
/// (IPv6 link-local excluded), forget when we last pinged anything, and ping everything now.
fn handle_call_me_maybe(
    key: NodePublic,
    p: &mut Peer,
    sh: &mut Shared,
    cmm: CallMeMaybe,
    now: Instant,
) {
    let best_was_announced = p
        .best
        .and_then(|b| p.endpoints.get(&b.addr))
        .is_some_and(|st| st.call_me_maybe);
    for st in p.endpoints.values_mut() {
        st.call_me_maybe = false;
    }
    for ep in cmm.endpoints {
        let ep = canonical_addr(ep);
        let link_local_v6 = ep.is_ipv6() && endpoint::is_link_local_unicast(ep.ip());
        if link_local_v6 || ep.port() == 0 || ep.ip().is_unspecified() {
            continue;
        }
        p.endpoints.entry(ep).or_default().call_me_maybe = true;
    }
    // The peer no longer lists the address we use (it roamed): stop sending into the void and
    // let the Pings below find where it is now.
    if best_was_announced
        && let Some(best) = p.best
        && p.endpoints
            .get(&best.addr)
            .is_some_and(|st| !st.call_me_maybe && !st.in_netmap)
    {
        clear_best(key, p, sh);
    }
    prune_endpoints(key, p, sh, now);
    for st in p.endpoints.values_mut() {
        st.last_ping = None;
    }
    send_disco_pings(key, p, sh, now, false);
    // The peer pings our endpoints now; if it is behind a hard NAT, guess its port.
    sweep::maybe_schedule(p, sh, now);
}
