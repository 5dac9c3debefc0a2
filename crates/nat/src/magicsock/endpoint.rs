//! Per-peer path state for [`super::PathManager`]: candidate endpoints with their ping/pong
//! history, the best UDP address and how long it is trusted, outstanding pings, and the
//! `betterAddr` rule that decides when a new path replaces the current one.
//!
//! Mirrors Tailscale's `wgengine/magicsock/endpoint.go` (v1.90); everything is driven by the
//! `now` its caller passes in.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proto::disco::TxId;
use proto::keys::DiscoPublic;

use super::sweep::SweepState;
use super::{DISCO_PING_INTERVAL, PONG_HISTORY, SESSION_ACTIVE_TIMEOUT};

/// A UDP path and its most recent round-trip time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrQuality {
    /// The peer's address on this path.
    pub addr: SocketAddr,
    /// Round-trip time of the last Pong on it.
    pub latency: Duration,
}

/// Whether `a` should replace `b` as the best address (Go `betterAddr`, reference §4.6).
///
/// Each side scores `100 − 100·fast/slow` for being faster, +50 for loopback, else +30 for
/// link-local, else +20 for private addresses, and +10 for IPv6. `a` wins only with more points,
/// and never on a ≤ 1 % latency edge alone (hysteresis against flapping). The same address is
/// never "better" (Go compares path MTU there, which this implementation does not probe).
pub fn better_addr(a: &AddrQuality, b: Option<&AddrQuality>) -> bool {
    let Some(b) = b else {
        return true;
    };
    if a.addr == b.addr {
        return false;
    }
    let (mut a_points, mut b_points) = (0u128, 0u128);
    let (la, lb) = (a.latency.as_nanos(), b.latency.as_nanos());
    // The faster side scores its percentage improvement over the slower one (zero latencies
    // score nothing, as in Go).
    if la > lb {
        b_points = (lb * 100)
            .checked_div(la)
            .map_or(0, |r| 100u128.saturating_sub(r));
    } else {
        a_points = (la * 100)
            .checked_div(lb)
            .map_or(0, |r| 100u128.saturating_sub(r));
    }
    a_points += addr_points(a.addr.ip());
    b_points += addr_points(b.addr.ip());
    if a_points <= 1 && b_points == 0 {
        return false;
    }
    a_points > b_points
}

fn addr_points(ip: IpAddr) -> u128 {
    let kind = if ip.is_loopback() {
        50
    } else if is_link_local_unicast(ip) {
        30
    } else if is_private(ip) {
        20
    } else {
        0
    };
    kind + if ip.is_ipv6() { 10 } else { 0 }
}

/// 169.254.0.0/16 or fe80::/10.
pub(crate) fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// RFC 1918 or fc00::/7 (Go `netip.Addr.IsPrivate`).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// One result in an endpoint's pong history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PongReply {
    pub latency: Duration,
    #[allow(dead_code)] // Kept for status/debug output, like Go's pongReply.
    pub at: Instant,
    /// Where the peer saw our Ping come from.
    #[allow(dead_code)]
    pub pong_src: SocketAddr,
}

/// A candidate UDP endpoint of a peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct EndpointState {
    /// Listed in the peer's netmap `Endpoints`.
    pub in_netmap: bool,
    /// Listed in the peer's latest CallMeMaybe.
    pub call_me_maybe: bool,
    /// When the peer last pinged us from here (for addresses learned from inbound Pings).
    pub last_got_ping: Option<Instant>,
    /// TxID of that Ping, to drop duplicates.
    pub last_got_ping_tx: Option<TxId>,
    /// When we last sent a discovery/heartbeat Ping here.
    pub last_ping: Option<Instant>,
    /// The last [`PONG_HISTORY`] Pong results.
    pub pongs: VecDeque<PongReply>,
    /// Found by a port sweep (a Pong to the sweep's Ping came from here), or last answered a
    /// Ping since: such an address is kept while it keeps answering.
    pub swept: Option<Instant>,
}

impl EndpointState {
    /// Netmap and CallMeMaybe endpoints stay while listed; learned ones expire 45 s after the
    /// last Ping from them.
    pub fn should_delete(&self, now: Instant) -> bool {
        if self.in_netmap || self.call_me_maybe {
            return false;
        }
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) <= SESSION_ACTIVE_TIMEOUT)
        {
            return false;
        }
        match self.last_got_ping {
            Some(t) => now.saturating_duration_since(t) > SESSION_ACTIVE_TIMEOUT,
            None => true,
        }
    }

    /// Whether a new discovery Ping may go out (none in the last 5 s).
    pub fn may_ping(&self, now: Instant) -> bool {
        self.last_ping
            .is_none_or(|t| now.saturating_duration_since(t) >= DISCO_PING_INTERVAL)
    }

    pub fn add_pong(&mut self, r: PongReply) {
        if self.pongs.len() >= PONG_HISTORY {
            self.pongs.pop_front();
        }
        self.pongs.push_back(r);
    }

    /// The most recent latency measured on this endpoint.
    pub fn latency(&self) -> Option<Duration> {
        self.pongs.back().map(|p| p.latency)
    }
}

/// Where a Ping was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PingTarget {
    Udp(SocketAddr),
    Derp(u16),
}

/// Why a Ping was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Checking whether a candidate path works.
    Discovery,
    /// Keeping the best path trusted.
    Heartbeat,
    /// `agent ping`.
    Cli,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SentPing {
    pub to: PingTarget,
    pub at: Instant,
    #[allow(dead_code)] // Recorded for debugging; Go logs heartbeats more quietly.
    pub purpose: Purpose,
    /// The `agent ping` request this belongs to, if any.
    pub cli: Option<[u8; 12]>,
}

/// Everything known about one peer's paths.
#[derive(Debug)]
pub(crate) struct Peer {
    pub disco_key: DiscoPublic,
    /// The peer's home region from the netmap.
    pub home_derp: Option<u16>,
    /// The region a disco message from this peer last arrived on (fallback route).
    pub last_derp_region: Option<u16>,
    pub endpoints: BTreeMap<SocketAddr, EndpointState>,
    pub best: Option<AddrQuality>,
    pub trust_until: Option<Instant>,
    /// Trust in `best` lapsed and `FellBackToDerp` was reported.
    pub fell_back: bool,
    /// Last outbound activity (WireGuard send or `agent ping`): heartbeats run while recent.
    pub last_send: Option<Instant>,
    pub last_full_ping: Option<Instant>,
    pub next_heartbeat: Option<Instant>,
    pub sent: BTreeMap<[u8; 12], SentPing>,
    /// Open `agent ping` requests and how many of their Pings are still outstanding.
    pub cli: BTreeMap<[u8; 12], usize>,
    /// The peer's NAT maps each destination to a new port (`NetInfo.MappingVariesByDestIP`).
    pub mapping_varies: bool,
    /// Port guessing towards this peer (running sweep, schedule, back-off).
    pub sweep: SweepState,
}

impl Peer {
    pub fn new(disco_key: DiscoPublic, home_derp: Option<u16>) -> Self {
        Self {
            disco_key,
            home_derp,
            last_derp_region: None,
            endpoints: BTreeMap::new(),
            best: None,
            trust_until: None,
            fell_back: false,
            last_send: None,
            last_full_ping: None,
            next_heartbeat: None,
            sent: BTreeMap::new(),
            cli: BTreeMap::new(),
            mapping_varies: false,
            sweep: SweepState::default(),
        }
    }

    /// Whether `best` may carry traffic alone at `now`.
    pub fn trusted(&self, now: Instant) -> bool {
        self.best.is_some() && self.trust_until.is_some_and(|t| now < t)
    }

    /// Go `wantFullPingLocked`: run a full discovery round without a direct path, when trust
    /// lapsed, or (if the path is slower than 5 ms) once a minute to look for a better one.
    pub fn want_full_ping(&self, now: Instant) -> bool {
        let (Some(best), Some(last_full)) = (self.best, self.last_full_ping) else {
            return true;
        };
        if !self.trusted(now) {
            return true;
        }
        if best.latency <= super::GOOD_ENOUGH_LATENCY {
            return false;
        }
        now.saturating_duration_since(last_full) >= super::UPGRADE_UDP_DIRECT_INTERVAL
    }

    /// Whether we sent the peer traffic (or an `agent ping`) in the last 45 s.
    pub fn is_active(&self, now: Instant) -> bool {
        self.last_send
            .is_some_and(|t| now.saturating_duration_since(t) <= SESSION_ACTIVE_TIMEOUT)
    }

    /// The region to reach this peer over DERP: its home, else where we last heard from it.
    pub fn derp_region(&self) -> Option<u16> {
        self.home_derp.or(self.last_derp_region)
    }
}

/// The canonical form of a UDP address: an IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]:p`, as a
/// dual-stack socket reports IPv4 peers) becomes plain IPv4, so one path has one key.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// An IPv4 address that may be a NAT's public side: not private, loopback, link-local, CGNAT
/// (100.64.0.0/10, also the tailnet's own range), multicast, broadcast or reserved.
/// Documentation ranges count as public (the NAT lab uses them for its "internet").
pub(crate) fn is_public_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let cgnat = a == 100 && (b & 0xc0) == 64;
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || cgnat
        || a == 0
        || a >= 240)
}
