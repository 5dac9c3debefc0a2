//! Drop reasons and the counters the engine keeps for diagnostics.
//!
//! Driven by the engine: every packet it discards is counted under exactly one [`DropReason`].
//! Counters are plain `u64`s in a fixed array; reading them never allocates.

use std::fmt;
use std::time::Instant;

/// Why the engine discarded a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than a minimal IPv4 header (20 bytes).
    TooShort,
    /// Bigger than an IP packet (or a WireGuard datagram carrying one) can be.
    TooLarge,
    /// Not a well-formed IPv4/IPv6 packet.
    Malformed,
    /// A known transport whose header is truncated.
    UnknownProtocol,
    /// Multicast destination.
    Multicast,
    /// Link-local destination (other than 169.254.169.254).
    LinkLocal,
    /// Destination is neither one of our addresses nor a route we serve.
    NotLocal,
    /// No filter rule allows it (default deny).
    FilterDenied,
    /// Outbound: no peer's AllowedIPs cover the destination.
    NoRoute,
    /// Inbound: the inner source address is not routed to the peer that sent it (spoofing).
    SourceNotAllowed,
    /// Not a WireGuard message (bad type or size).
    NotWireGuard,
    /// A handshake message with a bad MAC1.
    BadMac,
    /// The handshake rate limit is exceeded.
    UnderLoad,
    /// A receiver index or static key that belongs to no configured peer.
    UnknownPeer,
    /// WireGuard refused it: bad tag, replayed counter, no session, stale handshake, …
    Crypto,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 15] = [
        DropReason::TooShort,
        DropReason::TooLarge,
        DropReason::Malformed,
        DropReason::UnknownProtocol,
        DropReason::Multicast,
        DropReason::LinkLocal,
        DropReason::NotLocal,
        DropReason::FilterDenied,
        DropReason::NoRoute,
        DropReason::SourceNotAllowed,
        DropReason::NotWireGuard,
        DropReason::BadMac,
        DropReason::UnderLoad,
        DropReason::UnknownPeer,
        DropReason::Crypto,
    ];

    /// A short stable name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::TooLarge => "too_large",
            DropReason::Malformed => "malformed",
            DropReason::UnknownProtocol => "unknown_protocol",
            DropReason::Multicast => "multicast",
            DropReason::LinkLocal => "link_local",
            DropReason::NotLocal => "not_local",
            DropReason::FilterDenied => "filter_denied",
            DropReason::NoRoute => "no_route",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::NotWireGuard => "not_wireguard",
            DropReason::BadMac => "bad_mac",
            DropReason::UnderLoad => "under_load",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Crypto => "crypto",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DropReason::TooShort => "packet shorter than an IP header",
            DropReason::TooLarge => "packet larger than the maximum IP packet size",
            DropReason::Malformed => "malformed IP packet",
            DropReason::UnknownProtocol => "truncated or unknown transport header",
            DropReason::Multicast => "multicast destination",
            DropReason::LinkLocal => "link-local destination",
            DropReason::NotLocal => "destination is not an address or route of this node",
            DropReason::FilterDenied => "no packet filter rule allows it",
            DropReason::NoRoute => "no peer has a route to the destination",
            DropReason::SourceNotAllowed => {
                "source address is outside the sending peer's AllowedIPs"
            }
            DropReason::NotWireGuard => "not a WireGuard message",
            DropReason::BadMac => "WireGuard handshake with a bad MAC",
            DropReason::UnderLoad => "WireGuard handshake rate limit exceeded",
            DropReason::UnknownPeer => "WireGuard message from an unknown peer",
            DropReason::Crypto => "WireGuard could not authenticate or decrypt it",
        };
        f.write_str(s)
    }
}

/// Drop counters by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        if let Some(c) = self.0.get_mut(reason.index()) {
            *c = c.saturating_add(1);
        }
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0.get(reason.index()).copied().unwrap_or(0)
    }

    /// All non-zero counters.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .zip(self.0.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (*r, *n))
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// Per-peer counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// When the current WireGuard session was established, if there is one.
    pub last_handshake: Option<Instant>,
    /// WireGuard bytes sent to the peer (datagram sizes, handshakes and keepalives included).
    pub tx_bytes: u64,
    /// WireGuard bytes received from the peer and accepted by WireGuard.
    pub rx_bytes: u64,
}
