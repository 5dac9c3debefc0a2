//! Zero-copy views over IPv4/IPv6 packets and their TCP, UDP, SCTP and ICMP headers.
//!
//! Driven by the filter and the engine: [`PacketInfo::parse`] is called once per packet and
//! yields the handful of fields the inbound filter, the flow table and the router need. The views
//! validate lengths when they are built, and every accessor reads through `slice::get`, so no
//! input, however malformed, can make them panic.
//!
//! Why hand-written instead of `etherparse` or `smoltcp::wire`: we need about ten fields, no
//! checksum work and no emission, and we want Tailscale's exact classification (a truncated
//! transport header or an RFC 1858 fragment makes the protocol "unknown", a non-first fragment is
//! its own class, IPv6 extension headers are not walked). Twenty
//! lines of offsets are easier to audit against `net/packet/packet.go` than a general parser's
//! error model, and they keep the engine's dependency tree small.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IANA protocol numbers the filter distinguishes.
pub mod ip_proto {
    /// ICMP for IPv4.
    pub const ICMPV4: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// Tailscale's private "TSMP" protocol (RFC 3692 experimental number 99).
    pub const TSMP: u8 = 99;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// RFC 1858: a first fragment must hold a maximal IPv4 header plus a basic TCP header, and a
/// later one must not start inside that space (Go's `minFragBlks`, in 8-byte blocks; Go compares
/// the first fragment's transport length against this block count, and so do we).
const MIN_FRAG_BLOCKS: usize = (60 + 20) / 8;

/// TCP flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Reads a big-endian u16 at `at`; `None` when the slice is too short.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

fn byte(b: &[u8], at: usize) -> Option<u8> {
    b.get(at).copied()
}

fn addr4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(Ipv4Addr::from(s))
}

fn addr6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s: [u8; 16] = b.get(at..at.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(s))
}

/// Why bytes could not be read as an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Fewer bytes than the fixed IP header needs.
    #[error("packet too short for an IP header")]
    TooShort,
    /// The version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    /// A header length or total length field disagrees with the buffer.
    #[error("IP header length fields are inconsistent with the packet size")]
    BadLength,
}

/// A validated view of an IPv4 header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<'a> {
    /// The packet, cut to the header's total length.
    buf: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4View<'a> {
    /// Checks the version, IHL and total length, then wraps the bytes.
    pub fn new(buf: &'a [u8]) -> Result<Self, PacketError> {
        let first = byte(buf, 0).ok_or(PacketError::TooShort)?;
        if first >> 4 != 4 {
            return Err(PacketError::NotIp);
        }
        if buf.len() < 20 {
            return Err(PacketError::TooShort);
        }
        let header_len = usize::from(first & 0x0f) * 4;
        let total = usize::from(be16(buf, 2).ok_or(PacketError::TooShort)?);
        if header_len < 20 || total < header_len || total > buf.len() {
            return Err(PacketError::BadLength);
        }
        let buf = buf.get(..total).ok_or(PacketError::BadLength)?;
        Ok(Ipv4View { buf, header_len })
    }

    /// The source address.
    pub fn src(&self) -> Ipv4Addr {
        addr4(self.buf, 12).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv4Addr {
        addr4(self.buf, 16).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        byte(self.buf, 9).unwrap_or(0)
    }

    /// The fragment offset in 8-byte units; non-zero for every fragment after the first.
    pub fn fragment_offset(&self) -> u16 {
        be16(self.buf, 6).unwrap_or(0) & 0x1fff
    }

    /// The More Fragments flag.
    pub fn more_fragments(&self) -> bool {
        be16(self.buf, 6).unwrap_or(0) & 0x2000 != 0
    }

    /// The bytes after the header (options included in the header).
    pub fn payload(&self) -> &'a [u8] {
        self.buf.get(self.header_len..).unwrap_or(&[])
    }
}

/// A validated view of an IPv6 fixed header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6View<'a> {
    /// The packet, cut to 40 + payload length.
    buf: &'a [u8],
}

impl<'a> Ipv6View<'a> {
    const HEADER_LEN: usize = 40;

    /// Checks the version and payload length, then wraps the bytes.
    pub fn new(buf: &'a [u8]) -> Result<Self, PacketError> {
        let first = byte(buf, 0).ok_or(PacketError::TooShort)?;
        if first >> 4 != 6 {
            return Err(PacketError::NotIp);
        }
        if buf.len() < Self::HEADER_LEN {
            return Err(PacketError::TooShort);
        }
        let payload_len = usize::from(be16(buf, 4).ok_or(PacketError::TooShort)?);
        let total = Self::HEADER_LEN + payload_len;
        let buf = buf.get(..total).ok_or(PacketError::BadLength)?;
        Ok(Ipv6View { buf })
    }

    /// The source address.
    pub fn src(&self) -> Ipv6Addr {
        addr6(self.buf, 8).unwrap_or(Ipv6Addr::UNSPECIFIED)
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv6Addr {
        addr6(self.buf, 24).unwrap_or(Ipv6Addr::UNSPECIFIED)
    }

    /// The Next Header field of the fixed header.
    pub fn next_header(&self) -> u8 {
        byte(self.buf, 6).unwrap_or(0)
    }

    /// The bytes after the fixed header.
    pub fn payload(&self) -> &'a [u8] {
        self.buf.get(Self::HEADER_LEN..).unwrap_or(&[])
    }
}

/// What the filter needs to know about the transport layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with its ports and flag byte.
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    /// UDP with its ports.
    Udp { src_port: u16, dst_port: u16 },
    /// SCTP with its ports.
    Sctp { src_port: u16, dst_port: u16 },
    /// ICMPv4 or ICMPv6 type and code; `full` when the 8-byte header (with identifier and
    /// sequence or the unused word of an error) is present, which Go requires before it calls a
    /// message an echo reply or an error.
    Icmp { ty: u8, code: u8, full: bool },
    /// TSMP, Tailscale's in-tunnel control protocol.
    Tsmp,
    /// A fragment after the first: its transport header lives in another packet.
    LaterFragment,
    /// Another protocol number; the filter may still match it by protocol alone.
    Other,
    /// What Go's parser calls `ipproto.Unknown`, always dropped: a known transport whose header
    /// is cut short, protocol 0 (which is also IPv6 hop-by-hop: extension headers are not
    /// walked), 255, a first fragment too short to hold a transport header, or a later
    /// fragment starting inside that space (RFC 1858 overlapping-fragment attacks).
    Unknown,
}

/// The parsed summary of one IP packet (the "Repr" to the views above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// The transport-layer facts.
    pub transport: Transport,
}

impl PacketInfo {
    /// Parses an IPv4 or IPv6 packet the way Tailscale's `net/packet` `Parsed.Decode` does.
    /// Never panics.
    pub fn parse(buf: &[u8]) -> Result<PacketInfo, PacketError> {
        match byte(buf, 0).map(|b| b >> 4) {
            Some(4) => {
                let v4 = Ipv4View::new(buf)?;
                let proto = v4.protocol();
                let l4 = v4.payload();
                let transport = match v4.fragment_offset() {
                    0 if v4.more_fragments() && l4.len() < MIN_FRAG_BLOCKS => Transport::Unknown,
                    0 => transport(proto, l4),
                    off if usize::from(off) < MIN_FRAG_BLOCKS => Transport::Unknown,
                    _ => Transport::LaterFragment,
                };
                Ok(PacketInfo {
                    src: v4.src().into(),
                    dst: v4.dst().into(),
                    proto,
                    transport,
                })
            }
            Some(6) => {
                // Like Go, no extension-header walking: the transport starts at byte 40, and
                // anything else is classified by its Next Header value alone.
                let v6 = Ipv6View::new(buf)?;
                let proto = v6.next_header();
                let transport = transport(proto, v6.payload());
                Ok(PacketInfo {
                    src: v6.src().into(),
                    dst: v6.dst().into(),
                    proto,
                    transport,
                })
            }
            Some(_) => Err(PacketError::NotIp),
            None => Err(PacketError::TooShort),
        }
    }

    /// The destination port for TCP, UDP and SCTP; 0 otherwise.
    pub fn dst_port(&self) -> u16 {
        match self.transport {
            Transport::Tcp { dst_port, .. }
            | Transport::Udp { dst_port, .. }
            | Transport::Sctp { dst_port, .. } => dst_port,
            _ => 0,
        }
    }

    /// The source port for TCP, UDP and SCTP; 0 otherwise.
    pub fn src_port(&self) -> u16 {
        match self.transport {
            Transport::Tcp { src_port, .. }
            | Transport::Udp { src_port, .. }
            | Transport::Sctp { src_port, .. } => src_port,
            _ => 0,
        }
    }

    /// A TCP segment that opens a connection: SYN set, ACK clear (a SYN-ACK is a reply).
    pub fn is_tcp_syn(&self) -> bool {
        matches!(self.transport, Transport::Tcp { flags, .. } if flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }

    /// An ICMP echo reply (v4 type 0, v6 type 129, code 0, full header).
    pub fn is_icmp_echo_reply(&self) -> bool {
        matches!(
            (self.proto, self.transport),
            (
                ip_proto::ICMPV4,
                Transport::Icmp {
                    ty: 0,
                    code: 0,
                    full: true
                }
            ) | (
                ip_proto::ICMPV6,
                Transport::Icmp {
                    ty: 129,
                    code: 0,
                    full: true
                }
            )
        )
    }

    /// An ICMP error message with its full header: v4 unreachable (3), time exceeded (11),
    /// parameter problem (12); v6 unreachable (1), packet too big (2), time exceeded (3),
    /// parameter problem (4).
    pub fn is_icmp_error(&self) -> bool {
        match (self.proto, self.transport) {
            (ip_proto::ICMPV4, Transport::Icmp { ty, full: true, .. }) => matches!(ty, 3 | 11 | 12),
            (ip_proto::ICMPV6, Transport::Icmp { ty, full: true, .. }) => matches!(ty, 1..=4),
            _ => false,
        }
    }
}

/// Classifies the transport header that starts at `l4`.
fn transport(proto: u8, l4: &[u8]) -> Transport {
    let ports = |min: usize| -> Option<(u16, u16)> {
        if l4.len() < min {
            return None;
        }
        Some((be16(l4, 0)?, be16(l4, 2)?))
    };
    let parsed = match proto {
        ip_proto::TCP => ports(20).and_then(|(src_port, dst_port)| {
            Some(Transport::Tcp {
                src_port,
                dst_port,
                flags: byte(l4, 13)?,
            })
        }),
        ip_proto::UDP => ports(8).map(|(src_port, dst_port)| Transport::Udp { src_port, dst_port }),
        ip_proto::SCTP => {
            ports(12).map(|(src_port, dst_port)| Transport::Sctp { src_port, dst_port })
        }
        ip_proto::ICMPV4 | ip_proto::ICMPV6 => (l4.len() >= 4).then(|| Transport::Icmp {
            ty: byte(l4, 0).unwrap_or(0),
            code: byte(l4, 1).unwrap_or(0),
            full: l4.len() >= 8,
        }),
        // Go's `Unknown` is 0 and its internal `Fragment` marker is 255; both are dropped.
        0 | 255 => None,
        ip_proto::TSMP => Some(Transport::Tsmp),
        _ => Some(Transport::Other),
    };
    parsed.unwrap_or(Transport::Unknown)
}

/// Packet builders for tests in this crate and in the agent's tests.
#[cfg(any(test, feature = "test-util"))]
pub mod build {
    use std::net::IpAddr;

    use super::ip_proto;

    /// Builds an IPv4 or IPv6 packet with a fixed-size transport header and `body` after it.
    /// `l4` is the transport header (ports etc.) the caller wants; checksums are left zero.
    pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = 20 + l4.len();
                let mut p = vec![0u8; 20];
                p[0] = 0x45;
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                p[8] = 64;
                p[9] = protocol;
                p[12..16].copy_from_slice(&s.octets());
                p[16..20].copy_from_slice(&d.octets());
                p.extend_from_slice(l4);
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut p = vec![0u8; 40];
                p[0] = 0x60;
                p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                p[6] = protocol;
                p[7] = 64;
                p[8..24].copy_from_slice(&s.octets());
                p[24..40].copy_from_slice(&d.octets());
                p.extend_from_slice(l4);
                p
            }
            _ => panic!("mixed address families"),
        }
    }

    /// A TCP segment with the given flags (0x02 = SYN, 0x10 = ACK).
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 0x50;
        h[13] = flags;
        ip(src, dst, ip_proto::TCP, &h)
    }

    /// A UDP datagram carrying `body`.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..6].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
        h.extend_from_slice(body);
        ip(src, dst, ip_proto::UDP, &h)
    }

    /// An ICMP (v4 or v6, by address family) message with the given type and code.
    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8) -> Vec<u8> {
        let proto = if src.is_ipv4() {
            ip_proto::ICMPV4
        } else {
            ip_proto::ICMPV6
        };
        ip(src, dst, proto, &[ty, code, 0, 0, 0, 1, 0, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_tcp_v4_and_v6() {
        let p = build::tcp(a("100.64.0.1"), a("100.64.0.2"), 1234, 22, 0x02);
        let info = PacketInfo::parse(&p).unwrap();
        assert_eq!(info.src, a("100.64.0.1"));
        assert_eq!(info.dst, a("100.64.0.2"));
        assert_eq!(info.dst_port(), 22);
        assert!(info.is_tcp_syn());

        let p = build::tcp(a("fd7a::1"), a("fd7a::2"), 1234, 443, 0x12);
        let info = PacketInfo::parse(&p).unwrap();
        assert_eq!(info.proto, ip_proto::TCP);
        assert_eq!(info.src_port(), 1234);
        assert!(!info.is_tcp_syn(), "SYN-ACK is not a connection opener");
    }

    #[test]
    fn truncated_transport_is_unknown() {
        let mut p = build::tcp(a("1.1.1.1"), a("2.2.2.2"), 1, 2, 0x02);
        p.truncate(30);
        p[2..4].copy_from_slice(&30u16.to_be_bytes());
        let info = PacketInfo::parse(&p).unwrap();
        assert_eq!(info.transport, Transport::Unknown);
    }

    #[test]
    fn v4_later_fragment() {
        let mut p = build::udp(a("1.1.1.1"), a("2.2.2.2"), 1, 2, b"x");
        p[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(
            PacketInfo::parse(&p).unwrap().transport,
            Transport::LaterFragment
        );
    }

    #[test]
    fn fragments_follow_rfc1858() {
        let mut p = build::udp(a("1.1.1.1"), a("2.2.2.2"), 1, 2, b"x");
        // Offset 9 blocks (72 bytes) could overwrite a transport header: unknown.
        p[6..8].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(PacketInfo::parse(&p).unwrap().transport, Transport::Unknown);
        // A first fragment (MF set) with a 9-byte transport part: unknown.
        p[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert_eq!(PacketInfo::parse(&p).unwrap().transport, Transport::Unknown);
        // A big enough first fragment is parsed normally.
        let mut p = build::udp(a("1.1.1.1"), a("2.2.2.2"), 1, 2, b"0123456789");
        p[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert_eq!(PacketInfo::parse(&p).unwrap().dst_port(), 2);
    }

    #[test]
    fn v6_extension_headers_are_not_walked() {
        // Hop-by-hop options (8 bytes) followed by UDP: Next Header 0 is Go's "unknown".
        let mut l4 = vec![ip_proto::UDP, 0, 0, 0, 0, 0, 0, 0];
        l4.extend_from_slice(&[0, 7, 0, 53, 0, 8, 0, 0]);
        let p = build::ip(a("fd7a::1"), a("fd7a::2"), 0, &l4);
        assert_eq!(PacketInfo::parse(&p).unwrap().transport, Transport::Unknown);
        // A routing header (43) is just another protocol number.
        let p = build::ip(a("fd7a::1"), a("fd7a::2"), 43, &l4);
        assert_eq!(PacketInfo::parse(&p).unwrap().transport, Transport::Other);
    }

    #[test]
    fn icmp_classification_needs_full_header() {
        let reply = build::icmp(a("1.1.1.1"), a("2.2.2.2"), 0, 0);
        assert!(PacketInfo::parse(&reply).unwrap().is_icmp_echo_reply());
        let odd_code = build::icmp(a("1.1.1.1"), a("2.2.2.2"), 0, 1);
        assert!(!PacketInfo::parse(&odd_code).unwrap().is_icmp_echo_reply());
        let short = build::ip(a("1.1.1.1"), a("2.2.2.2"), ip_proto::ICMPV4, &[3, 1, 0, 0]);
        let info = PacketInfo::parse(&short).unwrap();
        assert!(!info.is_icmp_error());
        assert!(matches!(
            info.transport,
            Transport::Icmp { full: false, .. }
        ));
        let too_big = build::icmp(a("fd7a::1"), a("fd7a::2"), 2, 0);
        assert!(PacketInfo::parse(&too_big).unwrap().is_icmp_error());
        let nd = build::icmp(a("fd7a::1"), a("fd7a::2"), 135, 0);
        assert!(!PacketInfo::parse(&nd).unwrap().is_icmp_error());
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            for first in [0x00u8, 0x45, 0x4f, 0x60, 0x6f, 0xff] {
                let mut p = vec![0xffu8; len];
                if let Some(b) = p.first_mut() {
                    *b = first;
                }
                let _ = PacketInfo::parse(&p);
            }
        }
        assert_eq!(PacketInfo::parse(&[]), Err(PacketError::TooShort));
        assert_eq!(PacketInfo::parse(&[0x45; 10]), Err(PacketError::TooShort));
    }
}
