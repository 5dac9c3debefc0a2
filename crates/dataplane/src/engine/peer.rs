//! Per-peer WireGuard state and the adapter from boringtun's borrowed results to offsets.
//!
//! Driven by [`super::Engine`]: one [`Peer`] per configured node key. boringtun returns slices
//! borrowed from the output buffer; [`classify`] turns them into `(offset, len)` pairs so the
//! engine can keep the buffer itself (no copy) and release the borrow at once.

use std::net::IpAddr;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use proto::keys::NodePublic;

use super::PeerConfig;

/// One peer's session and counters.
pub(super) struct Peer {
    pub(super) key: NodePublic,
    pub(super) index: u32,
    pub(super) tunn: Tunn,
    pub(super) allowed_ips: Vec<IpNet>,
    pub(super) keepalive: Option<u16>,
    pub(super) tx_bytes: u64,
    pub(super) rx_bytes: u64,
}

impl Peer {
    pub(super) fn new(
        secret: &x25519::StaticSecret,
        config: &PeerConfig,
        index: u32,
        rate_limiter: &Arc<RateLimiter>,
    ) -> Self {
        Peer {
            key: config.key,
            index,
            tunn: new_tunn(secret, config.key, config.keepalive, index, rate_limiter),
            allowed_ips: config.allowed_ips.clone(),
            keepalive: config.keepalive,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    /// Replaces the session state (keeps the index and counters).
    pub(super) fn reset(
        &mut self,
        secret: &x25519::StaticSecret,
        keepalive: Option<u16>,
        rate_limiter: &Arc<RateLimiter>,
    ) {
        self.keepalive = keepalive;
        self.tunn = new_tunn(secret, self.key, keepalive, self.index, rate_limiter);
    }
}

fn new_tunn(
    secret: &x25519::StaticSecret,
    key: NodePublic,
    keepalive: Option<u16>,
    index: u32,
    rate_limiter: &Arc<RateLimiter>,
) -> Tunn {
    let peer_public = x25519::PublicKey::from(*key.as_bytes());
    // A shared limiter: one handshake budget for the node, reset by the engine's timer.
    Tunn::new(
        secret.clone(),
        peer_public,
        None,
        keepalive,
        index,
        Some(Arc::clone(rate_limiter)),
    )
}

/// A boringtun result with the borrow replaced by a position in the output buffer.
#[derive(Debug)]
pub(super) enum Step {
    /// Send `buf[offset..offset + len]` to the peer.
    Network(usize, usize),
    /// Deliver `buf[offset..offset + len]`, an IP packet from inner source address `src`.
    Tunnel(usize, usize, IpAddr),
    Done,
    Err(WireGuardError),
}

/// Converts a result whose slices point into a buffer starting at address `base`.
pub(super) fn classify(base: usize, r: TunnResult<'_>) -> Step {
    let off = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base);
    match r {
        TunnResult::Done => Step::Done,
        TunnResult::Err(e) => Step::Err(e),
        TunnResult::WriteToNetwork(s) => Step::Network(off(s), s.len()),
        TunnResult::WriteToTunnelV4(s, src) => Step::Tunnel(off(s), s.len(), src.into()),
        TunnResult::WriteToTunnelV6(s, src) => Step::Tunnel(off(s), s.len(), src.into()),
    }
}
