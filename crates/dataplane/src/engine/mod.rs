//! The sans-IO packet engine: WireGuard sessions per peer, cryptokey routing and the inbound
//! filter, driven by bytes and `now` and answering with queued actions.
//!
//! # Driving it
//!
//! One owner (the agent's event loop) calls, in any order:
//! * [`Engine::handle_tun_packet`] for each IP packet read from the TUN device,
//! * [`Engine::handle_network_packet`] for each WireGuard datagram from UDP or DERP,
//! * [`Engine::handle_timeout`] whenever [`Engine::poll_timeout`]'s deadline has passed,
//! * [`Engine::set_config`] when the netmap changes,
//!
//! and after each call drains [`Engine::poll_transmit`] (datagrams to send to a peer by whatever
//! path it chooses) and [`Engine::poll_tun_write`] (packets to write to the TUN device; each
//! carries the filter's [`Allowed`] proof), then hands the buffers back with
//! [`Engine::recycle`] so the hot path stops allocating once warm. Mutate, then drain, then sleep
//! until `poll_timeout`.
//!
//! # Time
//!
//! Every method takes `now`, and our own state (flow expiry, the timer schedule) uses only that.
//! Upstream boringtun 0.7 however reads `Instant::now()` inside its timers, rate limiter and
//! `Tunn::new` (only a fork such as `firezone/boringtun` has `update_timers_at(now)`), so
//! WireGuard's rekey, retry and keepalive decisions follow the real clock. The `now` parameters
//! stay in this API so a future fork or a boringtun release with injected time needs no caller
//! changes; tests here never need WireGuard's timers to fire.
//!
//! # Peer identification
//!
//! Each peer gets a stable 24-bit index; boringtun puts `index << 8 | session` in the receiver
//! field of every message the peer sends us, so data, responses and cookie replies find their
//! peer with one map lookup. Handshake initiations carry no receiver index: their sender's static
//! key is decrypted with `parse_handshake_anon` (one X25519 per initiation, after the MAC1 check)
//! and looked up among the configured peers.

mod peer;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use proto::keys::{NodePrivate, NodePublic};
use proto::tailcfg::FilterRule;

use crate::buf::{BufferPool, PacketBuf};
use crate::filter::{Allowed, Filter, RuleError};
use crate::packet::PacketInfo;
use crate::routing::RoutingTable;
use crate::stats::{DropCounters, DropReason, PeerStats};
use peer::{Peer, Step, classify};

/// The largest IP packet accepted from the TUN device (the IPv4/IPv6 length field's limit).
pub const MAX_IP_PACKET: usize = 65535;
/// WireGuard's data-message overhead: 16-byte header plus 16-byte tag.
pub const WG_OVERHEAD: usize = 32;
/// The largest WireGuard datagram accepted from the network.
pub const MAX_DATAGRAM: usize = MAX_IP_PACKET + WG_OVERHEAD;
/// boringtun writes handshake initiations (148 bytes) into whatever buffer it is given.
const MIN_OUT_BUF: usize = 148;
/// How often boringtun's timers run (its documentation asks for roughly every 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// Handshake messages per second before boringtun's rate limiter reports load. Every handshake
/// message passes the limiter twice (our pre-check and the session's own), so this is twice the
/// effective limit.
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// Idle buffers kept for reuse.
const POOL_SIZE: usize = 512;
/// Bound on the queue-flush loop; boringtun queues at most 256 packets per peer.
const MAX_FLUSH: usize = 300;

/// One peer in the engine's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node key, which is its WireGuard public key.
    pub key: NodePublic,
    /// Prefixes routed to this peer and accepted as inner source addresses from it.
    pub allowed_ips: Vec<IpNet>,
    /// WireGuard persistent keepalive interval in seconds.
    pub keepalive: Option<u16>,
}

/// The engine's whole configuration; replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineConfig {
    /// Our tailnet addresses (host prefixes such as `100.64.0.1/32`).
    pub addresses: Vec<IpNet>,
    /// Prefixes we accept inbound traffic for besides `addresses`: routes we serve (subnet
    /// router) or `0.0.0.0/0` + `::/0` minus local LANs (exit node).
    pub local_routes: Vec<IpNet>,
    /// All peers; anyone not listed is removed.
    pub peers: Vec<PeerConfig>,
    /// New packet filter rules, or `None` to keep the current ones.
    pub filter: Option<Vec<FilterRule>>,
}

/// A WireGuard datagram to deliver to `peer` over UDP or DERP.
#[derive(Debug)]
pub struct Transmit {
    /// The peer it is for.
    pub peer: NodePublic,
    /// The datagram; give it back with [`Engine::recycle`] after sending.
    pub payload: PacketBuf,
}

/// A decrypted, filtered packet to write to the TUN device.
///
/// Only the engine can build one, and only with the filter's [`Allowed`] proof in hand.
#[derive(Debug)]
pub struct TunWrite {
    packet: PacketBuf,
    from: NodePublic,
    _allowed: Allowed,
}

impl TunWrite {
    /// The IP packet.
    pub fn packet(&self) -> &[u8] {
        self.packet.as_slice()
    }

    /// The peer it came from.
    pub fn from(&self) -> NodePublic {
        self.from
    }

    /// Gives up the buffer (to hand back with [`Engine::recycle`]).
    pub fn into_buf(self) -> PacketBuf {
        self.packet
    }
}

/// Why the engine refused a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The packet was dropped (and counted under this reason).
    #[error("packet dropped: {0}")]
    Dropped(DropReason),
    /// A valid handshake initiation from a key that is not a configured peer; the caller may
    /// want to configure that peer just in time.
    #[error("WireGuard handshake from {key}, which is not a configured peer")]
    UnknownPeer {
        /// The initiator's static key, as decrypted from the handshake.
        key: NodePublic,
    },
}

/// The packet engine. See the module documentation for how to drive it.
pub struct Engine {
    node_key: NodePublic,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    rate_limiter: Arc<RateLimiter>,
    peers: BTreeMap<u32, Peer>,
    by_key: BTreeMap<NodePublic, u32>,
    next_index: u32,
    routes: RoutingTable<u32>,
    filter: Filter,
    rule_errors: Vec<RuleError>,
    transmits: VecDeque<Transmit>,
    tun_writes: VecDeque<TunWrite>,
    pool: BufferPool,
    /// For the rare paths (queue flush, timers) whose output size boringtun does not bound.
    scratch: Vec<u8>,
    drops: DropCounters,
    next_tick: Instant,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is deliberately absent.
        f.debug_struct("Engine")
            .field("node_key", &self.node_key)
            .field("peers", &self.by_key.keys().collect::<Vec<_>>())
            .field("routes", &self.routes.len())
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with our node key, no peers and a deny-all filter.
    pub fn new(private: NodePrivate, now: Instant) -> Self {
        let secret = private.to_static_secret();
        let public = x25519::PublicKey::from(&secret);
        Engine {
            node_key: private.public(),
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            peers: BTreeMap::new(),
            by_key: BTreeMap::new(),
            next_index: 1,
            routes: RoutingTable::new(),
            filter: Filter::deny_all(),
            rule_errors: Vec::new(),
            transmits: VecDeque::new(),
            tun_writes: VecDeque::new(),
            pool: BufferPool::new(POOL_SIZE),
            scratch: vec![0; MAX_DATAGRAM + WG_OVERHEAD],
            drops: DropCounters::default(),
            next_tick: now,
        }
    }

    /// Our node (WireGuard) public key.
    pub fn node_key(&self) -> NodePublic {
        self.node_key
    }

    /// Applies a new configuration. Peers not listed are removed; listed peers whose key and
    /// keepalive are unchanged keep their sessions. Returns the filter entries that could not
    /// be parsed (they are skipped; the rest of the filter applies).
    pub fn set_config(&mut self, config: EngineConfig, now: Instant) -> &[RuleError] {
        let EngineConfig {
            addresses,
            local_routes,
            peers,
            filter,
        } = config;
        let mut wanted: BTreeMap<NodePublic, PeerConfig> = BTreeMap::new();
        let mut order = Vec::with_capacity(peers.len());
        for p in peers {
            if p.key == self.node_key {
                tracing::debug!("ignoring ourselves in the peer list");
                continue;
            }
            order.push(p.key);
            wanted.insert(p.key, p);
        }
        self.remove_peers_not_in(&wanted);
        for (key, pc) in &wanted {
            self.upsert_peer(pc);
            tracing::trace!(peer = %key.short(), "peer configured");
        }
        self.rebuild_routes(&order, &wanted);

        let mut local = addresses;
        local.extend(local_routes);
        self.filter.set_local(local);
        if let Some(rules) = filter {
            self.rule_errors = self.filter.replace_rules(&rules);
            for e in &self.rule_errors {
                tracing::warn!(error = %e, "packet filter entry skipped");
            }
        }
        self.next_tick = self.next_tick.min(now);
        &self.rule_errors
    }

    fn remove_peers_not_in(&mut self, wanted: &BTreeMap<NodePublic, PeerConfig>) {
        let gone: Vec<NodePublic> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .copied()
            .collect();
        for key in gone {
            if let Some(index) = self.by_key.remove(&key) {
                self.peers.remove(&index);
                tracing::debug!(peer = %key.short(), "peer removed");
            }
        }
    }

    fn upsert_peer(&mut self, pc: &PeerConfig) {
        if let Some(peer) = self.by_key.get(&pc.key).and_then(|i| self.peers.get_mut(i)) {
            peer.allowed_ips.clone_from(&pc.allowed_ips);
            if peer.keepalive != pc.keepalive {
                // boringtun cannot change keepalive on a live Tunn; rebuild it (re-handshakes).
                peer.reset(&self.secret, pc.keepalive, &self.rate_limiter);
            }
            return;
        }
        let index = self.allocate_index();
        let peer = Peer::new(&self.secret, pc, index, &self.rate_limiter);
        self.peers.insert(index, peer);
        self.by_key.insert(pc.key, index);
        tracing::debug!(peer = %pc.key.short(), index, "peer added");
    }

    /// The next free 24-bit index (boringtun shifts it left by 8 for the session counter).
    fn allocate_index(&mut self) -> u32 {
        const MAX: u32 = (1 << 24) - 1;
        loop {
            let i = self.next_index;
            self.next_index = if i >= MAX { 1 } else { i + 1 };
            if !self.peers.contains_key(&i) {
                return i;
            }
        }
    }

    fn rebuild_routes(&mut self, order: &[NodePublic], wanted: &BTreeMap<NodePublic, PeerConfig>) {
        self.routes.clear();
        // Config order decides which peer owns a prefix listed twice (the later one).
        for key in order {
            let (Some(index), Some(pc)) = (self.by_key.get(key), wanted.get(key)) else {
                continue;
            };
            for net in &pc.allowed_ips {
                let prev = self.routes.insert(*net, *index);
                if prev.is_some_and(|p| p != *index) {
                    tracing::debug!(prefix = %net, "prefix claimed by two peers; last wins");
                }
            }
        }
    }

    /// Routes and encrypts one IP packet read from the TUN device. The result (a handshake
    /// initiation while no session exists, else the data message) is queued as a [`Transmit`].
    pub fn handle_tun_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), EngineError> {
        if packet.len() > MAX_IP_PACKET {
            return Err(self.drop(DropReason::TooLarge));
        }
        let info = match PacketInfo::parse(packet) {
            Ok(info) => info,
            Err(_) => return Err(self.drop(DropReason::Malformed)),
        };
        let Some(index) = self.routes.lookup(info.dst) else {
            return Err(self.drop(DropReason::NoRoute));
        };
        self.filter.record_outbound(&info, now);
        let Some(peer) = self.peers.get_mut(&index) else {
            return Err(self.drop(DropReason::NoRoute));
        };
        let mut buf = self.pool.take();
        let storage = buf.storage((packet.len() + WG_OVERHEAD).max(MIN_OUT_BUF));
        let base = storage.as_ptr() as usize;
        match classify(base, peer.tunn.encapsulate(packet, storage)) {
            Step::Network(off, len) => {
                buf.set_window(off, len);
                peer.tx_bytes += len as u64;
                self.transmits.push_back(Transmit {
                    peer: peer.key,
                    payload: buf,
                });
            }
            Step::Done => {
                // Queued inside boringtun until the handshake finishes.
                self.pool.put(buf);
            }
            Step::Tunnel(..) | Step::Err(_) => {
                self.pool.put(buf);
                return Err(self.drop(DropReason::Crypto));
            }
        }
        Ok(())
    }

    /// Decrypts one WireGuard datagram. `from` is the sender as the transport knows it (DERP
    /// source key or a UDP address already bound to a peer); it is only a hint, the datagram's
    /// own receiver index or handshake decides. Decrypted packets must come from an address
    /// inside that peer's AllowedIPs and pass the filter before they are queued as
    /// [`TunWrite`]s; dropped inner packets are counted, not returned as errors.
    ///
    /// Returns the peer WireGuard authenticated the datagram as (bind the UDP address to it), or
    /// `None` for a datagram that authenticates no one (a cookie reply).
    pub fn handle_network_packet(
        &mut self,
        from: Option<NodePublic>,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Option<NodePublic>, EngineError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(self.drop(DropReason::TooLarge));
        }
        let index = self.identify(datagram)?;
        let Some(peer) = self.peers.get_mut(&index) else {
            tracing::trace!(hint = ?from.map(|k| k.short()), index, "unknown receiver index");
            return Err(self.drop(DropReason::UnknownPeer));
        };
        let key = peer.key;
        let mut buf = self.pool.take();
        let storage = buf.storage(datagram.len().max(MIN_OUT_BUF));
        let base = storage.as_ptr() as usize;
        let step = classify(base, peer.tunn.decapsulate(None, datagram, storage));
        let authenticated = match step {
            Step::Network(off, len) => {
                buf.set_window(off, len);
                peer.tx_bytes += len as u64;
                peer.rx_bytes += datagram.len() as u64;
                self.transmits.push_back(Transmit {
                    peer: key,
                    payload: buf,
                });
                true
            }
            Step::Tunnel(off, len, src) => {
                buf.set_window(off, len);
                peer.rx_bytes += datagram.len() as u64;
                self.deliver(index, key, src, buf, now);
                true
            }
            Step::Done => {
                // A keepalive (authenticated) or a cookie reply (not tied to a session).
                self.pool.put(buf);
                let keepalive = datagram.first() == Some(&4);
                if keepalive {
                    peer.rx_bytes += datagram.len() as u64;
                }
                keepalive
            }
            Step::Err(e) => {
                self.pool.put(buf);
                tracing::trace!(peer = %key.short(), error = ?e, "WireGuard rejected datagram");
                return Err(self.drop(match e {
                    WireGuardError::UnderLoad => DropReason::UnderLoad,
                    WireGuardError::InvalidMac => DropReason::BadMac,
                    _ => DropReason::Crypto,
                }));
            }
        };
        self.flush_queued(index);
        Ok(authenticated.then_some(key))
    }

    /// Finds the peer index a datagram is for, checking MAC1 on handshake messages first.
    fn identify(&mut self, datagram: &[u8]) -> Result<u32, EngineError> {
        let mut cookie = [0u8; 64];
        let packet = match self.rate_limiter.verify_packet(None, datagram, &mut cookie) {
            Ok(p) => p,
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                return Err(self.drop(DropReason::BadMac));
            }
            Err(TunnResult::Err(WireGuardError::UnderLoad)) => {
                return Err(self.drop(DropReason::UnderLoad));
            }
            Err(TunnResult::Err(_)) => return Err(self.drop(DropReason::NotWireGuard)),
            // Only produced when a source address is given, which we never do.
            Err(_) => return Err(self.drop(DropReason::UnderLoad)),
        };
        match packet {
            Packet::HandshakeInit(init) => {
                let half = match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(h) => h,
                    Err(_) => return Err(self.drop(DropReason::Crypto)),
                };
                let key = NodePublic::from_bytes(half.peer_static_public);
                match self.by_key.get(&key) {
                    Some(i) => Ok(*i),
                    None => {
                        self.drops.add(DropReason::UnknownPeer);
                        Err(EngineError::UnknownPeer { key })
                    }
                }
            }
            Packet::HandshakeResponse(p) => Ok(p.receiver_idx >> 8),
            Packet::PacketCookieReply(p) => Ok(p.receiver_idx >> 8),
            Packet::PacketData(p) => Ok(p.receiver_idx >> 8),
        }
    }

    /// Source-address check and inbound filter for one decrypted packet.
    fn deliver(&mut self, index: u32, from: NodePublic, src: IpAddr, buf: PacketBuf, now: Instant) {
        if self.routes.lookup(src) != Some(index) {
            tracing::trace!(peer = %from.short(), %src, "source outside AllowedIPs");
            self.pool.put(buf);
            self.drops.add(DropReason::SourceNotAllowed);
            return;
        }
        match self.filter.check_inbound(buf.as_slice(), now) {
            Ok(allowed) => self.tun_writes.push_back(TunWrite {
                packet: buf,
                from,
                _allowed: allowed,
            }),
            Err(reason) => {
                tracing::trace!(peer = %from.short(), %reason, "inbound packet filtered");
                self.pool.put(buf);
                self.drops.add(reason);
            }
        }
    }

    /// Sends packets boringtun queued while it had no session (its docs: call `decapsulate`
    /// with an empty datagram until it reports `Done`).
    fn flush_queued(&mut self, index: u32) {
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        for _ in 0..MAX_FLUSH {
            let base = self.scratch.as_ptr() as usize;
            match classify(base, peer.tunn.decapsulate(None, &[], &mut self.scratch)) {
                Step::Network(off, len) => {
                    let Some(bytes) = self.scratch.get(off..off + len) else {
                        break;
                    };
                    let mut buf = self.pool.take();
                    buf.fill(bytes);
                    peer.tx_bytes += len as u64;
                    self.transmits.push_back(Transmit {
                        peer: peer.key,
                        payload: buf,
                    });
                }
                Step::Done | Step::Tunnel(..) | Step::Err(_) => break,
            }
        }
    }

    /// Runs WireGuard timers (handshake retries, rekeys, keepalives) and expires idle flows.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TIMER_TICK;
        // Resets only if a second has passed since the last reset (by boringtun's own clock).
        self.rate_limiter.reset_count();
        self.filter.expire(now);
        for peer in self.peers.values_mut() {
            let base = self.scratch.as_ptr() as usize;
            match classify(base, peer.tunn.update_timers(&mut self.scratch)) {
                Step::Network(off, len) => {
                    let Some(bytes) = self.scratch.get(off..off + len) else {
                        continue;
                    };
                    let mut buf = self.pool.take();
                    buf.fill(bytes);
                    peer.tx_bytes += len as u64;
                    self.transmits.push_back(Transmit {
                        peer: peer.key,
                        payload: buf,
                    });
                }
                // An idle peer whose session ran out: nothing to do until traffic returns.
                Step::Err(WireGuardError::ConnectionExpired) | Step::Done | Step::Tunnel(..) => {}
                Step::Err(e) => tracing::trace!(peer = %peer.key.short(), error = ?e, "timer"),
            }
        }
    }

    /// When [`Engine::handle_timeout`] wants to run next; `None` when there is nothing to time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.peers.is_empty() || self.filter.flow_count() > 0).then_some(self.next_tick)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next packet to write to the TUN device.
    pub fn poll_tun_write(&mut self) -> Option<TunWrite> {
        self.tun_writes.pop_front()
    }

    /// Hands a buffer back for reuse (from a sent [`Transmit`] or a written [`TunWrite`]).
    pub fn recycle(&mut self, buf: PacketBuf) {
        self.pool.put(buf);
    }

    /// Counters for one peer.
    pub fn peer_stats(&self, key: &NodePublic, now: Instant) -> Option<PeerStats> {
        let peer = self.by_key.get(key).and_then(|i| self.peers.get(i))?;
        let (since, ..) = peer.tunn.stats();
        Some(PeerStats {
            last_handshake: since.and_then(|d| now.checked_sub(d)),
            tx_bytes: peer.tx_bytes,
            rx_bytes: peer.rx_bytes,
        })
    }

    /// The configured peers, in key order.
    pub fn peers(&self) -> impl Iterator<Item = NodePublic> + '_ {
        self.by_key.keys().copied()
    }

    /// The peer the routing table sends `dst` to.
    pub fn route(&self, dst: IpAddr) -> Option<NodePublic> {
        let index = self.routes.lookup(dst)?;
        self.peers.get(&index).map(|p| p.key)
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Filter entries skipped by the last filter update.
    pub fn rule_errors(&self) -> &[RuleError] {
        &self.rule_errors
    }

    fn drop(&mut self, reason: DropReason) -> EngineError {
        self.drops.add(reason);
        EngineError::Dropped(reason)
    }
}
