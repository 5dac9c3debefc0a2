//! Port guessing towards a peer behind a "hard" NAT (endpoint-dependent mapping), for
//! [`super::PathManager`].
//!
//! Why: the hard side's mapping towards our stable endpoint uses a fresh random public port that
//! nobody announces, and our router's port-restricted filter drops the hard side's Pings because
//! we never sent to that port (nat-lab-notes.md: easy–hard punching fails). But once the hard
//! side has received our CallMeMaybe it keeps pinging our stable endpoint, so that mapping
//! exists: one datagram from our stable endpoint to the right port of the hard side's public IP
//! is let in by its router. We find the port by sending the same sealed disco Ping (one TxID) to
//! every port 1024–65535 of that IP; the Pong comes back from the unknown port, which opens our
//! filter for it too, and becomes a normal candidate.
//!
//! Only an endpoint-independent (easy) side can do this: from a hard side our sweep would leave
//! from new ports the peer's mapping does not expect, so hard–hard is left on DERP.
//!
//! Driven entirely by [`super::PathManager`]: a sweep is scheduled [`SWEEP_DELAY`] after a
//! CallMeMaybe went out or came in, emits [`SweepChunk`]s on its timer ([`SWEEP_CHUNK`] ports
//! every [`SWEEP_CHUNK_INTERVAL`], about 20 000 datagrams/s, never more in a burst), stops as
//! soon as a direct path is trusted, and backs off ([`SWEEP_BACKOFF`], doubling) after a sweep
//! that found nothing, at most [`MAX_FAILED_SWEEPS`] times per peer until the network changes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::disco::{self, Message, Ping, TxId};
use proto::keys::NodePublic;

use super::endpoint::{Peer, PingTarget, Purpose, canonical_addr, is_public_v4};
use super::{Ignored, PING_TIMEOUT, Shared, Source, start_ping};

/// How long a CallMeMaybe round may try plain hole punching before a sweep starts.
pub const SWEEP_DELAY: Duration = Duration::from_millis(1500);
/// Ports per [`SweepChunk`].
pub const SWEEP_CHUNK: u16 = 200;
/// Spacing of chunks: 200 ports / 10 ms = 20 000 datagrams/s.
pub const SWEEP_CHUNK_INTERVAL: Duration = Duration::from_millis(10);
/// Wait after the first sweep that found nothing; doubles after each further one.
pub const SWEEP_BACKOFF: Duration = Duration::from_secs(30);
/// Sweeps that found nothing before a peer is no longer swept (until the network changes, the
/// peer restarts or a sweep succeeds).
pub const MAX_FAILED_SWEEPS: u32 = 3;
/// The lowest port swept (NATs do not hand out ports below it).
pub const SWEEP_FIRST_PORT: u16 = 1024;

/// One paced slice of a port sweep: send `payload` from the WireGuard UDP socket to every port in
/// `ports` of `ip` (a batched send, e.g. GSO/sendmmsg, suits it: same payload, one address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepChunk {
    /// The peer being swept (for logs and metrics).
    pub peer: NodePublic,
    /// The sealed disco Ping, identical for every datagram of the sweep.
    pub payload: Arc<[u8]>,
    /// The peer's public IPv4 address.
    pub ip: IpAddr,
    /// The destination ports.
    pub ports: RangeInclusive<u16>,
}

impl SweepChunk {
    /// Every destination of this chunk.
    pub fn dests(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.ports
            .clone()
            .map(|port| SocketAddr::new(self.ip, port))
    }

    /// Number of datagrams in this chunk.
    pub fn len(&self) -> usize {
        self.ports.clone().count()
    }

    /// Whether the chunk sends nothing.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// A running sweep.
#[derive(Debug)]
pub(crate) struct Sweep {
    tx: [u8; 12],
    ip: Ipv4Addr,
    payload: Arc<[u8]>,
    /// The next port to send to; above 65535 when every port was sent.
    next_port: u32,
    next_at: Instant,
    /// When the last chunk went out; its Pong is awaited for [`PING_TIMEOUT`] more.
    finished_at: Option<Instant>,
}

/// Per-peer sweep bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct SweepState {
    pub running: Option<Sweep>,
    /// When the scheduled sweep starts (if there is still no direct path then).
    pub due: Option<Instant>,
    /// Sweeps that found nothing since the last success or reset.
    pub failed: u32,
    /// No new sweep before this (back-off).
    pub not_before: Option<Instant>,
}

/// The public IPv4 to sweep, if port guessing applies to this peer at all: we are known to be
/// behind an endpoint-independent mapping, the peer's mapping varies by destination, and the peer
/// announced a public IPv4 that is not our own (same NAT: no hairpin guessing).
pub(crate) fn target(p: &Peer, sh: &Shared) -> Option<Ipv4Addr> {
    if sh.local_nat_hard != Some(false) || !p.mapping_varies {
        return None;
    }
    let ours = |ip: Ipv4Addr| {
        sh.local_endpoints
            .iter()
            .any(|e| canonical_addr(*e).ip() == IpAddr::V4(ip))
    };
    p.endpoints
        .iter()
        .filter(|(_, st)| st.in_netmap || st.call_me_maybe)
        .find_map(|(addr, _)| match canonical_addr(*addr).ip() {
            IpAddr::V4(ip) if is_public_v4(ip) && !ours(ip) => Some(ip),
            _ => None,
        })
}

/// A CallMeMaybe went out or came in: if plain punching cannot work with this peer, plan a sweep
/// for [`SWEEP_DELAY`] from now (unless one is running, planned, or backing off past then).
pub(crate) fn maybe_schedule(p: &mut Peer, sh: &Shared, now: Instant) {
    if target(p, sh).is_none() {
        return;
    }
    let s = &mut p.sweep;
    if s.running.is_some() || s.due.is_some() || s.failed >= MAX_FAILED_SWEEPS {
        return;
    }
    let at = now + SWEEP_DELAY;
    if s.not_before.is_some_and(|t| t > at) {
        return;
    }
    s.due = Some(at);
}

/// Starts a due sweep, sends the next chunk of a running one, or ends one that found nothing.
pub(crate) fn on_timeout(key: NodePublic, p: &mut Peer, sh: &mut Shared, now: Instant) {
    let trusted = p.trusted(now);
    if p.sweep.due.is_some_and(|t| t <= now) {
        p.sweep.due = None;
        let allowed = p.sweep.failed < MAX_FAILED_SWEEPS
            && p.sweep.not_before.is_none_or(|t| t <= now)
            && p.sweep.running.is_none();
        if allowed
            && !trusted
            && let Some(ip) = target(p, sh)
        {
            start(key, p, sh, ip, now);
        }
    }
    let Some(sweep) = p.sweep.running.as_mut() else {
        return;
    };
    if trusted {
        // A direct path exists (found by this sweep or otherwise): stop guessing.
        tracing::debug!(peer = %key, "port sweep stopped: direct path trusted");
        p.sweep.running = None;
        return;
    }
    if sweep.next_port <= u32::from(u16::MAX) {
        if sweep.next_at <= now {
            emit_chunk(key, sweep, sh, now);
        }
        return;
    }
    if sweep.finished_at.is_some_and(|t| t + PING_TIMEOUT <= now) {
        p.sweep.running = None;
        p.sweep.failed += 1;
        let backoff = SWEEP_BACKOFF * 2u32.saturating_pow(p.sweep.failed.saturating_sub(1));
        p.sweep.not_before = Some(now + backoff);
        tracing::debug!(peer = %key, failed = p.sweep.failed, "port sweep found nothing");
    }
}

fn start(key: NodePublic, p: &mut Peer, sh: &mut Shared, ip: Ipv4Addr, now: Instant) {
    let tx = sh.random_tx();
    let msg = Message::Ping(Ping {
        tx_id: TxId(tx),
        node_key: Some(sh.node_key),
        padding: 0,
    });
    let payload: Arc<[u8]> = disco::seal(&sh.disco, &p.disco_key, &msg, &mut sh.rng).into();
    tracing::debug!(peer = %key, %ip, "port sweep started (peer behind a hard NAT)");
    let mut sweep = Sweep {
        tx,
        ip,
        payload,
        next_port: u32::from(SWEEP_FIRST_PORT),
        next_at: now,
        finished_at: None,
    };
    emit_chunk(key, &mut sweep, sh, now);
    p.sweep.running = Some(sweep);
}

fn emit_chunk(key: NodePublic, sweep: &mut Sweep, sh: &mut Shared, now: Instant) {
    let max = u32::from(u16::MAX);
    let first = sweep.next_port.min(max);
    let last = (first + u32::from(SWEEP_CHUNK) - 1).min(max);
    let (Ok(first16), Ok(last16)) = (u16::try_from(first), u16::try_from(last)) else {
        return;
    };
    sh.sweeps.push_back(SweepChunk {
        peer: key,
        payload: sweep.payload.clone(),
        ip: IpAddr::V4(sweep.ip),
        ports: first16..=last16,
    });
    sweep.next_port = last + 1;
    sweep.next_at = now + SWEEP_CHUNK_INTERVAL;
    if sweep.next_port > max {
        sweep.finished_at = Some(now);
    }
}

/// When [`on_timeout`] wants to run for this peer.
pub(crate) fn next_timeout(p: &Peer) -> Option<Instant> {
    let running = p.sweep.running.as_ref().and_then(|s| {
        if s.next_port <= u32::from(u16::MAX) {
            Some(s.next_at)
        } else {
            s.finished_at.map(|t| t + PING_TIMEOUT)
        }
    });
    match (p.sweep.due, running) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A Pong whose TxID matched no ordinary Ping: the sweep's, from whatever port the hard NAT
/// chose, is the success case. The address becomes a candidate and is pinged normally (the
/// sweep's send time says nothing about latency).
pub(crate) fn handle_pong(
    key: NodePublic,
    p: &mut Peer,
    sh: &mut Shared,
    source: Source,
    tx: [u8; 12],
    now: Instant,
) -> Result<(), Ignored> {
    let Some(sweep) = p.sweep.running.as_ref() else {
        return Err(Ignored::UnknownTxId);
    };
    if sweep.tx != tx {
        return Err(Ignored::UnknownTxId);
    }
    let Source::Udp(from) = source else {
        // Our sweep went over UDP only; a DERP-borne Pong with its TxID is confused or forged.
        return Err(Ignored::UnknownTxId);
    };
    let from = canonical_addr(from);
    if from.ip() != IpAddr::V4(sweep.ip) {
        return Err(Ignored::UnknownTxId);
    }
    tracing::debug!(peer = %key, addr = %from, "port sweep hit the peer's NAT mapping");
    p.sweep.running = None;
    p.sweep.failed = 0;
    // Be polite if the path found is lost again soon: no new sweep for a while.
    p.sweep.not_before = Some(now + SWEEP_BACKOFF);
    let st = p.endpoints.entry(from).or_default();
    st.swept = Some(now);
    st.last_ping = None;
    sh.by_addr.insert(from, key);
    start_ping(
        key,
        p,
        sh,
        PingTarget::Udp(from),
        now,
        Purpose::Discovery,
        None,
    );
    Ok(())
}
