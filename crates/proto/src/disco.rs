//! Disco: the sealed path-discovery messages peers exchange over UDP and DERP, and the
//! classification of datagrams arriving on the shared UDP socket.
//!
//! Sans-IO. [`seal`] turns a [`Message`] into the bytes to send; [`sender_key`] reads the
//! sender's disco key from a received packet (so the caller can drop unknown senders before any
//! crypto), and [`open`] authenticates and parses it. [`classify`] says whether a UDP datagram is
//! STUN, disco, Geneve (peer relay, unsupported) or WireGuard.
//!
//! Outer packet (reference §2.1, Tailscale `disco/disco.go`):
//!
//! ```text
//! "TS💬" (6) | sender disco public key (32) | nonce (24) | tag (16) | ciphertext
//! ```
//!
//! The box is NaCl `crypto_box` between the two disco keys. The inner message is
//! `type (1) | version (1, always 0) | body`:
//!
//! - Ping `0x01`: TxID (12) | sender node key (32, optional for very old clients) | zero padding.
//! - Pong `0x02`: TxID (12) | observed source IP (16, IPv4 v4-mapped) | port (2, big-endian).
//! - CallMeMaybe `0x03`: n × (16-byte IP + 2-byte port). A body that is empty, not a multiple of
//!   18 bytes or has a non-zero version is read as an empty list, as Go does.
//!
//! Parsing never panics. Ping and Pong tolerate trailing bytes (forward compatibility), and
//! unknown message types are reported as [`DiscoError::UnknownType`], which receivers ignore.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rand_core::CryptoRngCore;

use crate::derp::{KEY_LEN, NONCE_LEN, TAG_LEN, naclbox_open, naclbox_seal};
use crate::keys::{DiscoPrivate, DiscoPublic, NodePublic};
pub use crate::stun::TxId;

/// The 6-byte magic that opens every disco packet: "TS" and the speech-balloon emoji.
pub const MAGIC: [u8; 6] = crate::derp::DISCO_MAGIC;
/// Bytes before the box: magic, sender disco key and nonce.
pub const HEADER_LEN: usize = MAGIC.len() + KEY_LEN + NONCE_LEN;
/// The smallest packet that can carry a box (header plus tag, empty plaintext).
pub const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;
/// Bytes in one CallMeMaybe endpoint record (16-byte IP + 2-byte port).
pub const ENDPOINT_LEN: usize = 18;
/// Bytes in a transaction ID.
pub const TX_ID_LEN: usize = 12;
/// The IP magicsock uses to stand for "via DERP": `127.3.3.40:<region>` ("3.3.40" spells DERP
/// on a number row). A Pong answering a DERP-borne Ping carries it as the observed source.
pub const DERP_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const VERSION: u8 = 0;
const PONG_BODY_LEN: usize = TX_ID_LEN + ENDPOINT_LEN;

/// Why a packet could not be opened or parsed. Receivers drop such packets silently; the variants
/// exist for tests and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoError {
    /// No disco magic, or too short to hold a sender key, nonce and tag.
    #[error("not a disco packet (missing \"TS💬\" magic or too short)")]
    NotDisco,
    /// The box did not authenticate with the sender's key (wrong keys or corrupted packet).
    #[error("disco packet failed authentication")]
    BadBox,
    /// The inner message is shorter than its type requires.
    #[error("disco message is too short")]
    Short,
    /// A message type this implementation does not handle (newer peers, peer relays).
    #[error("unsupported disco message type 0x{0:02x}")]
    UnknownType(u8),
}

/// A disco Ping: "are you there on this path?".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ping {
    /// Random per-ping transaction ID, echoed by the Pong.
    pub tx_id: TxId,
    /// The sender's node key; absent only from very old clients.
    pub node_key: Option<NodePublic>,
    /// Zero bytes appended after the node key (path MTU probing). Zero for ordinary pings.
    pub padding: usize,
}

/// A disco Pong: the answer to a Ping, carrying where the Ping appeared to come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Pong {
    /// The TxID of the Ping being answered.
    pub tx_id: TxId,
    /// The Ping's observed source address (`127.3.3.40:<region>` for Pings that came via DERP).
    pub src: SocketAddr,
}

/// CallMeMaybe: "I just sent you pings from these endpoints; ping me back". Only valid via DERP.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CallMeMaybe {
    /// The sender's own endpoints.
    pub endpoints: Vec<SocketAddr>,
}

/// An inner disco message.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Message {
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`CallMeMaybe`].
    CallMeMaybe(CallMeMaybe),
}

impl Message {
    /// The plaintext encoding (`type | version | body`) that goes inside the box.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Ping(p) => {
                let key_len = if p.node_key.is_some() { KEY_LEN } else { 0 };
                let mut out = Vec::with_capacity(2 + TX_ID_LEN + key_len + p.padding);
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(&p.tx_id.0);
                if let Some(k) = &p.node_key {
                    out.extend_from_slice(k.as_bytes());
                }
                out.resize(out.len() + p.padding, 0);
                out
            }
            Message::Pong(p) => {
                let mut out = Vec::with_capacity(2 + PONG_BODY_LEN);
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(&p.tx_id.0);
                put_endpoint(&mut out, p.src);
                out
            }
            Message::CallMeMaybe(c) => {
                let mut out = Vec::with_capacity(2 + ENDPOINT_LEN * c.endpoints.len());
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for ep in &c.endpoints {
                    put_endpoint(&mut out, *ep);
                }
                out
            }
        }
    }

    /// Parses a plaintext inner message. Never panics; unknown types are an error to ignore.
    pub fn parse(b: &[u8]) -> Result<Message, DiscoError> {
        let (&ty, rest) = b.split_first().ok_or(DiscoError::Short)?;
        let (&version, body) = rest.split_first().ok_or(DiscoError::Short)?;
        match ty {
            TYPE_PING => {
                let tx = body.get(..TX_ID_LEN).ok_or(DiscoError::Short)?;
                let after = body.get(TX_ID_LEN..).unwrap_or_default();
                let (node_key, padding) = match after.get(..KEY_LEN) {
                    Some(k) => {
                        let mut raw = [0u8; KEY_LEN];
                        raw.copy_from_slice(k);
                        (Some(NodePublic::from_bytes(raw)), after.len() - KEY_LEN)
                    }
                    // Old clients omit the key; a partial key is padding we cannot interpret.
                    None => (None, 0),
                };
                Ok(Message::Ping(Ping {
                    tx_id: tx_id(tx),
                    node_key,
                    padding,
                }))
            }
            TYPE_PONG => {
                let body = body.get(..PONG_BODY_LEN).ok_or(DiscoError::Short)?;
                let (tx, ep) = body.split_at(TX_ID_LEN);
                let src = get_endpoint(ep).ok_or(DiscoError::Short)?;
                Ok(Message::Pong(Pong {
                    tx_id: tx_id(tx),
                    src,
                }))
            }
            TYPE_CALL_ME_MAYBE => {
                if version != VERSION || body.is_empty() || body.len() % ENDPOINT_LEN != 0 {
                    return Ok(Message::CallMeMaybe(CallMeMaybe::default()));
                }
                let endpoints = body
                    .chunks_exact(ENDPOINT_LEN)
                    .filter_map(get_endpoint)
                    .collect();
                Ok(Message::CallMeMaybe(CallMeMaybe { endpoints }))
            }
            other => Err(DiscoError::UnknownType(other)),
        }
    }
}

/// Whether `packet` looks like a sealed disco message: the magic and at least a sender key and
/// nonce (62 bytes), the same test as Go's `LooksLikeDiscoWrapper` and the DERP server's.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    crate::derp::packet_looks_like_disco(packet)
}

/// The sender's disco key, if `packet` looks like disco. Unauthenticated: use it only to find
/// the key to [`open`] with (and to drop packets from senders not in the netmap).
pub fn sender_key(packet: &[u8]) -> Option<DiscoPublic> {
    if !looks_like_disco(packet) {
        return None;
    }
    let raw: [u8; KEY_LEN] = packet
        .get(MAGIC.len()..MAGIC.len() + KEY_LEN)?
        .try_into()
        .ok()?;
    Some(DiscoPublic::from_bytes(raw))
}

/// Seals `message` from `me` to `peer`: magic, our public key, then the box.
pub fn seal(
    me: &DiscoPrivate,
    peer: &DiscoPublic,
    message: &Message,
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let sealed = naclbox_seal(me.as_bytes(), peer.as_bytes(), &message.encode(), rng);
    let mut out = Vec::with_capacity(MAGIC.len() + KEY_LEN + sealed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(me.public().as_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// Authenticates `packet` (addressed to `me`) and parses the message inside. Returns the sender's
/// disco key with the message. The caller decides whether that sender is acceptable.
pub fn open(me: &DiscoPrivate, packet: &[u8]) -> Result<(DiscoPublic, Message), DiscoError> {
    let sender = sender_key(packet).ok_or(DiscoError::NotDisco)?;
    let sealed = packet
        .get(MAGIC.len() + KEY_LEN..)
        .ok_or(DiscoError::NotDisco)?;
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(DiscoError::NotDisco);
    }
    let plain = naclbox_open(me.as_bytes(), sender.as_bytes(), sealed).ok_or(DiscoError::BadBox)?;
    Ok((sender, Message::parse(&plain)?))
}

/// What a datagram received on the shared UDP socket is (reference §2.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum PacketKind {
    /// A STUN Binding request or response: route to the STUN client by TxID.
    Stun,
    /// A sealed disco message.
    Disco,
    /// A Geneve-encapsulated peer-relay packet (disco or WireGuard). Not supported here; drop.
    Geneve,
    /// Anything else: hand to WireGuard.
    WireGuard,
}

const GENEVE_HEADER_LEN: usize = 8;
const GENEVE_PROTO_DISCO: [u8; 2] = [0x7A, 0x11];
const GENEVE_PROTO_WIREGUARD: [u8; 2] = [0x7A, 0x12];

/// Classifies a UDP datagram in the order magicsock uses: STUN, Geneve, disco, WireGuard. The
/// order matters: a Geneve header's first bytes could otherwise pass for other kinds.
pub fn classify(datagram: &[u8]) -> PacketKind {
    if crate::stun::looks_like_binding(datagram) {
        return PacketKind::Stun;
    }
    if looks_like_geneve(datagram) {
        return PacketKind::Geneve;
    }
    if looks_like_disco(datagram) {
        return PacketKind::Disco;
    }
    PacketKind::WireGuard
}

fn looks_like_geneve(b: &[u8]) -> bool {
    let Some(h) = b.get(..GENEVE_HEADER_LEN) else {
        return false;
    };
    // Version 0 with no options, only the control bit may be set in byte 1, reserved byte zero.
    if h[0] & 0xC0 != 0 || h[1] & 0x3F != 0 || h[7] != 0 {
        return false;
    }
    let proto = [h[2], h[3]];
    if proto == GENEVE_PROTO_DISCO {
        return b
            .get(GENEVE_HEADER_LEN..)
            .is_some_and(|rest| rest.starts_with(&MAGIC));
    }
    proto == GENEVE_PROTO_WIREGUARD
}

fn tx_id(b: &[u8]) -> TxId {
    let mut raw = [0u8; TX_ID_LEN];
    raw.copy_from_slice(b);
    TxId(raw)
}

fn put_endpoint(out: &mut Vec<u8>, ep: SocketAddr) {
    let ip16 = match ep.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip16.octets());
    out.extend_from_slice(&ep.port().to_be_bytes());
}

fn get_endpoint(b: &[u8]) -> Option<SocketAddr> {
    let ip: [u8; 16] = b.get(..16)?.try_into().ok()?;
    let port: [u8; 2] = b.get(16..18)?.try_into().ok()?;
    let ip = Ipv6Addr::from(ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestRng(u64);
    impl rand_core::RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            // xorshift64: deterministic and good enough for nonces in tests.
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for TestRng {}

    fn keys() -> (DiscoPrivate, DiscoPrivate, TestRng) {
        let mut rng = TestRng(0x9E37_79B9_7F4A_7C15);
        let a = DiscoPrivate::generate(&mut rng);
        let b = DiscoPrivate::generate(&mut rng);
        (a, b, rng)
    }

    #[test]
    fn ping_round_trip_and_wire_size() {
        let (a, b, mut rng) = keys();
        let msg = Message::Ping(Ping {
            tx_id: TxId([7; 12]),
            node_key: Some(NodePublic::from_bytes([9; 32])),
            padding: 0,
        });
        let pkt = seal(&a, &b.public(), &msg, &mut rng);
        // 6 + 32 + 24 + 16 + 46: the size the reference gives for an unpadded Ping.
        assert_eq!(pkt.len(), 124);
        assert!(pkt.starts_with("TS💬".as_bytes()));
        assert_eq!(sender_key(&pkt), Some(a.public()));
        assert_eq!(classify(&pkt), PacketKind::Disco);
        let (sender, got) = open(&b, &pkt).unwrap();
        assert_eq!(sender, a.public());
        assert_eq!(got, msg);
    }

    #[test]
    fn padded_ping_keeps_padding() {
        let msg = Message::Ping(Ping {
            tx_id: TxId([1; 12]),
            node_key: Some(NodePublic::from_bytes([2; 32])),
            padding: 100,
        });
        let enc = msg.encode();
        assert_eq!(enc.len(), 2 + 12 + 32 + 100);
        assert_eq!(Message::parse(&enc).unwrap(), msg);
    }

    #[test]
    fn old_ping_without_node_key() {
        let mut enc = vec![1, 0];
        enc.extend_from_slice(&[3; 12]);
        let got = Message::parse(&enc).unwrap();
        assert_eq!(
            got,
            Message::Ping(Ping {
                tx_id: TxId([3; 12]),
                node_key: None,
                padding: 0
            })
        );
    }

    #[test]
    fn pong_round_trip_v4_and_v6() {
        let (a, b, mut rng) = keys();
        for src in ["192.0.2.7:41641", "[2001:db8::1]:443", "127.3.3.40:900"] {
            let msg = Message::Pong(Pong {
                tx_id: TxId([5; 12]),
                src: src.parse().unwrap(),
            });
            let enc = msg.encode();
            assert_eq!(enc.len(), 2 + 30);
            let pkt = seal(&b, &a.public(), &msg, &mut rng);
            assert_eq!(pkt.len(), 110);
            assert_eq!(open(&a, &pkt).unwrap().1, msg);
        }
        // The IPv4 address travels v4-mapped.
        let enc = Message::Pong(Pong {
            tx_id: TxId([0; 12]),
            src: "1.2.3.4:5".parse().unwrap(),
        })
        .encode();
        assert_eq!(
            &enc[14..30],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]
        );
        assert_eq!(&enc[30..], &[0, 5]);
    }

    #[test]
    fn call_me_maybe_round_trip_and_lax_parsing() {
        let msg = Message::CallMeMaybe(CallMeMaybe {
            endpoints: vec![
                "198.51.100.1:41641".parse().unwrap(),
                "[2001:db8::2]:1".parse().unwrap(),
            ],
        });
        let enc = msg.encode();
        assert_eq!(enc.len(), 2 + 36);
        assert_eq!(Message::parse(&enc).unwrap(), msg);

        let empty = Message::CallMeMaybe(CallMeMaybe::default());
        // Bad length, non-zero version or empty body: an empty list, not an error.
        assert_eq!(Message::parse(&enc[..enc.len() - 1]).unwrap(), empty);
        let mut v1 = enc.clone();
        v1[1] = 1;
        assert_eq!(Message::parse(&v1).unwrap(), empty);
        assert_eq!(Message::parse(&[3, 0]).unwrap(), empty);
    }

    #[test]
    fn malformed_inner_messages() {
        assert_eq!(Message::parse(&[]), Err(DiscoError::Short));
        assert_eq!(Message::parse(&[1]), Err(DiscoError::Short));
        assert_eq!(Message::parse(&[1, 0, 1, 2, 3]), Err(DiscoError::Short));
        assert_eq!(Message::parse(&[2, 0, 1, 2, 3]), Err(DiscoError::Short));
        assert_eq!(
            Message::parse(&[0x04, 0, 0, 0]),
            Err(DiscoError::UnknownType(4))
        );
        assert_eq!(
            Message::parse(&[0xff, 0]),
            Err(DiscoError::UnknownType(0xff))
        );
    }

    #[test]
    fn open_rejects_wrong_key_tampering_and_truncation() {
        let (a, b, mut rng) = keys();
        let c = DiscoPrivate::generate(&mut rng);
        let msg = Message::Pong(Pong {
            tx_id: TxId([5; 12]),
            src: "1.2.3.4:5".parse().unwrap(),
        });
        let pkt = seal(&a, &b.public(), &msg, &mut rng);
        assert_eq!(open(&c, &pkt), Err(DiscoError::BadBox));
        let mut bad = pkt.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open(&b, &bad), Err(DiscoError::BadBox));
        assert_eq!(open(&b, &pkt[..HEADER_LEN + 3]), Err(DiscoError::NotDisco));
        assert_eq!(open(&b, b"hello"), Err(DiscoError::NotDisco));
        // A box holding an unknown type authenticates but is reported as unknown.
        let sealed = naclbox_seal(a.as_bytes(), b.public().as_bytes(), &[9, 0, 1], &mut rng);
        let mut unk = MAGIC.to_vec();
        unk.extend_from_slice(a.public().as_bytes());
        unk.extend_from_slice(&sealed);
        assert_eq!(open(&b, &unk), Err(DiscoError::UnknownType(9)));
    }

    #[test]
    fn classify_follows_magicsock_order() {
        let stun = crate::stun::binding_request(TxId([1; 12]));
        assert_eq!(classify(&stun), PacketKind::Stun);
        // WireGuard handshake initiation: type 1, three zero bytes.
        let mut wg = vec![1, 0, 0, 0];
        wg.extend_from_slice(&[0xAA; 144]);
        assert_eq!(classify(&wg), PacketKind::WireGuard);
        // Geneve carrying WireGuard.
        let mut gen_wg = vec![0, 0, 0x7A, 0x12, 0, 0, 1, 0];
        gen_wg.extend_from_slice(&wg);
        assert_eq!(classify(&gen_wg), PacketKind::Geneve);
        // Geneve carrying disco, with the control bit.
        let mut gen_disco = vec![0, 0x80, 0x7A, 0x11, 0, 0, 1, 0];
        gen_disco.extend_from_slice(&MAGIC);
        gen_disco.extend_from_slice(&[0; 80]);
        assert_eq!(classify(&gen_disco), PacketKind::Geneve);
        // 0x7A11 without disco magic after the header is not Geneve.
        let not_gen = [0u8, 0, 0x7A, 0x11, 0, 0, 1, 0, 1, 2, 3];
        assert_eq!(classify(&not_gen), PacketKind::WireGuard);
        // Short magic-only packet is not disco.
        assert_eq!(classify(&MAGIC), PacketKind::WireGuard);
        assert!(!looks_like_disco(&[0; 100]));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = Message::parse(&b);
                let _ = classify(&b);
                let _ = sender_key(&b);
                let me = DiscoPrivate::from_bytes([7; 32]);
                let _ = open(&me, &b);
            }

            #[test]
            fn parse_never_panics_with_magic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
                let mut p = MAGIC.to_vec();
                p.extend_from_slice(&b);
                let me = DiscoPrivate::from_bytes([7; 32]);
                let _ = open(&me, &p);
                let _ = classify(&p);
            }

            #[test]
            fn endpoints_round_trip(ips in proptest::collection::vec((any::<[u8; 16]>(), any::<u16>()), 1..8)) {
                let endpoints: Vec<SocketAddr> = ips
                    .iter()
                    .map(|(ip, port)| {
                        let ip = Ipv6Addr::from(*ip);
                        let ip = ip.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(ip));
                        SocketAddr::new(ip, *port)
                    })
                    .collect();
                let msg = Message::CallMeMaybe(CallMeMaybe { endpoints });
                prop_assert_eq!(Message::parse(&msg.encode()).unwrap(), msg);
            }
        }
    }
}
