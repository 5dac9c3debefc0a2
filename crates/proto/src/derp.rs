//! DERP (Designated Encrypted Relay for Packets) protocol version 2: frames, the incremental frame
//! decoder and the NaCl-boxed handshake messages.
//!
//! Sans-IO: feed received bytes to a [`FrameDecoder`] in chunks of any size and pull parsed
//! [`Frame`]s out of it; build outgoing bytes with [`Frame::encode`]. The handshake messages
//! ([`ClientInfo`], [`ServerInfo`]) are sealed and opened with the node keys through
//! [`ClientInfo::seal`]/[`ClientInfo::open`] and the [`ServerInfo`] equivalents; the caller passes
//! the random number generator, so nothing here touches the OS.
//!
//! Wire format (all integers big-endian): `type (u8) | length (u32) | payload (length bytes)`. The
//! length counts only the payload. Every sealed blob is `nonce (24) | Poly1305 tag (16) |
//! XSalsa20 ciphertext`, i.e. NaCl `crypto_box` in libsodium's "easy" layout.
//!
//! Reference: tailscale `derp/derp.go`, `derp/derp_client.go`, `derp/derpserver/derpserver.go`
//! (v1.90). Malformed input yields a [`DerpError`], never a panic.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crypto_box::aead::Aead;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{NodePrivate, NodePublic};

/// The 8-byte magic that opens a ServerKey frame: "DERP" followed by the UTF-8 key emoji.
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xF0, 0x9F, 0x94, 0x91];
/// The DERP protocol version this module speaks (RecvPacket carries the source key).
pub const PROTOCOL_VERSION: u32 = 2;
/// Bytes in a frame header: one type byte plus a u32 length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Bytes in a raw node key.
pub const KEY_LEN: usize = 32;
/// Bytes in a NaCl box nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes in a NaCl box authentication tag.
pub const TAG_LEN: usize = 16;
/// Largest data packet a SendPacket/ForwardPacket/RecvPacket may carry (64 KiB).
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest frame payload either side accepts (1 MiB; the Go client's receive limit).
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Largest ClientInfo payload a server accepts (256 KiB), to bound JSON work before auth.
pub const MAX_CLIENT_INFO_LEN: usize = 256 << 10;
/// Largest ServerInfo payload (nonce plus 1 MiB).
pub const MAX_SERVER_INFO_LEN: usize = NONCE_LEN + (1 << 20);
/// Largest Ping payload a server accepts; only the first 8 bytes matter.
pub const MAX_PING_LEN: usize = 1000;
/// Base interval between server KeepAlive frames (a random jitter of up to 5 s is added).
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// The 6-byte magic that opens every disco packet ("TS" + speech-balloon emoji).
pub const DISCO_MAGIC: [u8; 6] = [0x54, 0x53, 0xF0, 0x9F, 0x92, 0xAC];
/// Disco packets are at least magic + sender key + nonce long.
const DISCO_MIN_LEN: usize = DISCO_MAGIC.len() + KEY_LEN + NONCE_LEN;

/// Whether `packet` looks like a sealed disco message (magic and at least 62 bytes), the test the
/// DERP server uses to pick the disco queue and to decide whether to answer PeerGone(NotHere).
pub fn packet_looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= DISCO_MIN_LEN && packet.starts_with(&DISCO_MAGIC)
}

/// A DERP frame type byte. Unknown values are legal on the wire and must be skipped, so this is an
/// open newtype rather than a closed enum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(pub u8);

impl FrameType {
    /// S→C: magic + server public key.
    pub const SERVER_KEY: Self = Self(0x01);
    /// C→S: client public key + sealed ClientInfo JSON.
    pub const CLIENT_INFO: Self = Self(0x02);
    /// S→C: sealed ServerInfo JSON.
    pub const SERVER_INFO: Self = Self(0x03);
    /// C→S: destination key + packet.
    pub const SEND_PACKET: Self = Self(0x04);
    /// S→C: source key + packet.
    pub const RECV_PACKET: Self = Self(0x05);
    /// S→C: empty keepalive.
    pub const KEEP_ALIVE: Self = Self(0x06);
    /// C→S: one byte, whether this server is the client's home.
    pub const NOTE_PREFERRED: Self = Self(0x07);
    /// S→C: key of a departed peer + reason byte.
    pub const PEER_GONE: Self = Self(0x08);
    /// S→C (mesh watchers): key [+ ip:port [+ flags]].
    pub const PEER_PRESENT: Self = Self(0x09);
    /// Mesh→S: source key + destination key + packet.
    pub const FORWARD_PACKET: Self = Self(0x0a);
    /// Mesh→S: subscribe to presence changes (empty).
    pub const WATCH_CONNS: Self = Self(0x10);
    /// Mesh→S: close the connections of one key.
    pub const CLOSE_PEER: Self = Self(0x11);
    /// Either way: 8 opaque bytes to echo.
    pub const PING: Self = Self(0x12);
    /// Either way: the 8 bytes of the Ping being answered.
    pub const PONG: Self = Self(0x13);
    /// S→C: UTF-8 problem text; empty means healthy.
    pub const HEALTH: Self = Self(0x14);
    /// S→C: u32 ms reconnect-in + u32 ms try-for.
    pub const RESTARTING: Self = Self(0x15);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SERVER_KEY => "ServerKey",
            Self::CLIENT_INFO => "ClientInfo",
            Self::SERVER_INFO => "ServerInfo",
            Self::SEND_PACKET => "SendPacket",
            Self::RECV_PACKET => "RecvPacket",
            Self::KEEP_ALIVE => "KeepAlive",
            Self::NOTE_PREFERRED => "NotePreferred",
            Self::PEER_GONE => "PeerGone",
            Self::PEER_PRESENT => "PeerPresent",
            Self::FORWARD_PACKET => "ForwardPacket",
            Self::WATCH_CONNS => "WatchConns",
            Self::CLOSE_PEER => "ClosePeer",
            Self::PING => "Ping",
            Self::PONG => "Pong",
            Self::HEALTH => "Health",
            Self::RESTARTING => "Restarting",
            _ => return None,
        })
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}(0x{:02x})", self.0),
            None => write!(f, "unknown(0x{:02x})", self.0),
        }
    }
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a PeerGone frame was sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PeerGoneReason(pub u8);

impl PeerGoneReason {
    /// The peer disconnected from this server (region). Also assumed when the byte is absent.
    pub const DISCONNECTED: Self = Self(0x00);
    /// The server has no connection for that key (sent only in reply to disco packets).
    pub const NOT_HERE: Self = Self(0x01);
}

/// Why DERP bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DerpError {
    /// A frame header announced more bytes than the reader allows; the stream cannot continue.
    #[error("DERP {frame_type} frame announces {len} bytes, over the {max}-byte limit")]
    FrameTooLarge {
        frame_type: FrameType,
        len: u32,
        max: u32,
    },
    /// A data packet is larger than the protocol's 64 KiB packet limit.
    #[error("DERP data packet of {len} bytes exceeds the {max}-byte limit")]
    PacketTooLarge { len: usize, max: usize },
    /// A frame's payload has the wrong size or shape for its type.
    #[error("malformed DERP {frame_type} frame ({len} bytes): {reason}")]
    BadPayload {
        frame_type: FrameType,
        len: usize,
        reason: &'static str,
    },
    /// The ServerKey frame does not start with the DERP magic: not a DERP server.
    #[error("the server greeting does not start with the DERP magic; is this a DERP server?")]
    BadMagic,
    /// A different frame arrived where the handshake needs a specific one.
    #[error("expected a DERP {want} frame, got {got}")]
    UnexpectedFrame { want: FrameType, got: FrameType },
    /// A sealed handshake message failed authentication: wrong keys or tampered bytes.
    #[error("the DERP handshake box from {peer} does not open; wrong key or corrupted data")]
    BoxOpen { peer: NodePublic },
    /// A handshake message opened but its JSON is unusable.
    #[error("DERP handshake JSON is invalid: {0}")]
    BadJson(String),
}

/// One parsed DERP frame. Payload-carrying variants own their bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Frame {
    /// The server's public key, sent first by the server.
    ServerKey { key: NodePublic },
    /// The client's key and its sealed [`ClientInfo`] (`nonce | tag | ciphertext`).
    ClientInfo { key: NodePublic, sealed: Vec<u8> },
    /// The sealed [`ServerInfo`] (`nonce | tag | ciphertext`).
    ServerInfo { sealed: Vec<u8> },
    /// A client asks the server to relay `packet` to `dst`.
    SendPacket { dst: NodePublic, packet: Vec<u8> },
    /// The server delivers `packet` that `src` sent.
    RecvPacket { src: NodePublic, packet: Vec<u8> },
    /// Server keepalive.
    KeepAlive,
    /// Whether this server is the client's home (statistics only).
    NotePreferred { preferred: bool },
    /// `peer` is gone (or was never here).
    PeerGone {
        peer: NodePublic,
        reason: PeerGoneReason,
    },
    /// Mesh watchers: `key` connected, optionally from `addr` with presence `flags`.
    PeerPresent {
        key: NodePublic,
        addr: Option<SocketAddr>,
        flags: Option<u8>,
    },
    /// Mesh peer relays a packet with its original source.
    ForwardPacket {
        src: NodePublic,
        dst: NodePublic,
        packet: Vec<u8>,
    },
    /// Mesh peer subscribes to presence changes.
    WatchConns,
    /// Mesh peer asks to close every connection of `key`.
    ClosePeer { key: NodePublic },
    /// Liveness probe; answer with a Pong carrying the same bytes.
    Ping { data: [u8; 8] },
    /// Answer to a Ping.
    Pong { data: [u8; 8] },
    /// Server health text; empty means healthy again.
    Health { problem: String },
    /// The server is restarting: reconnect after `reconnect_in`, keep trying for `try_for`.
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
    /// A frame type this implementation does not know; skip it.
    Unknown {
        frame_type: FrameType,
        payload: Vec<u8>,
    },
}

fn key_at(b: &[u8], at: usize) -> Option<NodePublic> {
    let bytes: [u8; KEY_LEN] = b.get(at..at + KEY_LEN)?.try_into().ok()?;
    Some(NodePublic::from_bytes(bytes))
}

fn eight_at(b: &[u8], at: usize) -> Option<[u8; 8]> {
    b.get(at..at + 8)?.try_into().ok()
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

impl Frame {
    /// The type byte this frame is written with.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::ServerKey { .. } => FrameType::SERVER_KEY,
            Self::ClientInfo { .. } => FrameType::CLIENT_INFO,
            Self::ServerInfo { .. } => FrameType::SERVER_INFO,
            Self::SendPacket { .. } => FrameType::SEND_PACKET,
            Self::RecvPacket { .. } => FrameType::RECV_PACKET,
            Self::KeepAlive => FrameType::KEEP_ALIVE,
            Self::NotePreferred { .. } => FrameType::NOTE_PREFERRED,
            Self::PeerGone { .. } => FrameType::PEER_GONE,
            Self::PeerPresent { .. } => FrameType::PEER_PRESENT,
            Self::ForwardPacket { .. } => FrameType::FORWARD_PACKET,
            Self::WatchConns => FrameType::WATCH_CONNS,
            Self::ClosePeer { .. } => FrameType::CLOSE_PEER,
            Self::Ping { .. } => FrameType::PING,
            Self::Pong { .. } => FrameType::PONG,
            Self::Health { .. } => FrameType::HEALTH,
            Self::Restarting { .. } => FrameType::RESTARTING,
            Self::Unknown { frame_type, .. } => *frame_type,
        }
    }

    /// Parses one frame's payload. Sizes are checked the way the Go implementation checks them;
    /// anything malformed is a [`DerpError::BadPayload`].
    pub fn parse(frame_type: FrameType, payload: &[u8]) -> Result<Self, DerpError> {
        let len = payload.len();
        let bad = |reason| DerpError::BadPayload {
            frame_type,
            len,
            reason,
        };
        let packet_limit = |packet: &[u8]| {
            if packet.len() > MAX_PACKET_SIZE {
                Err(DerpError::PacketTooLarge {
                    len: packet.len(),
                    max: MAX_PACKET_SIZE,
                })
            } else {
                Ok(packet.to_vec())
            }
        };
        Ok(match frame_type {
            FrameType::SERVER_KEY => {
                if len < MAGIC.len() + KEY_LEN {
                    return Err(bad("shorter than magic + key"));
                }
                if !payload.starts_with(&MAGIC) {
                    return Err(DerpError::BadMagic);
                }
                let key = key_at(payload, MAGIC.len()).ok_or_else(|| bad("missing key"))?;
                Self::ServerKey { key }
            }
            FrameType::CLIENT_INFO => {
                if len < KEY_LEN + NONCE_LEN {
                    return Err(bad("shorter than key + nonce"));
                }
                if len > MAX_CLIENT_INFO_LEN {
                    return Err(bad("longer than the 256 KiB ClientInfo limit"));
                }
                let key = key_at(payload, 0).ok_or_else(|| bad("missing key"))?;
                Self::ClientInfo {
                    key,
                    sealed: payload.get(KEY_LEN..).unwrap_or_default().to_vec(),
                }
            }
            FrameType::SERVER_INFO => {
                if len < NONCE_LEN {
                    return Err(bad("shorter than a nonce"));
                }
                if len > MAX_SERVER_INFO_LEN {
                    return Err(bad("longer than the ServerInfo limit"));
                }
                Self::ServerInfo {
                    sealed: payload.to_vec(),
                }
            }
            FrameType::SEND_PACKET => {
                let dst = key_at(payload, 0).ok_or_else(|| bad("shorter than a key"))?;
                let packet = packet_limit(payload.get(KEY_LEN..).unwrap_or_default())?;
                Self::SendPacket { dst, packet }
            }
            FrameType::RECV_PACKET => {
                let src = key_at(payload, 0).ok_or_else(|| bad("shorter than a key"))?;
                Self::RecvPacket {
                    src,
                    packet: payload.get(KEY_LEN..).unwrap_or_default().to_vec(),
                }
            }
            FrameType::KEEP_ALIVE => Self::KeepAlive,
            FrameType::NOTE_PREFERRED => match payload {
                [b] => Self::NotePreferred { preferred: *b != 0 },
                _ => return Err(bad("must be exactly 1 byte")),
            },
            FrameType::PEER_GONE => {
                let peer = key_at(payload, 0).ok_or_else(|| bad("shorter than a key"))?;
                // Older servers omit the reason byte; that means "disconnected".
                let reason = payload
                    .get(KEY_LEN)
                    .map_or(PeerGoneReason::DISCONNECTED, |b| PeerGoneReason(*b));
                Self::PeerGone { peer, reason }
            }
            FrameType::PEER_PRESENT => {
                let key = key_at(payload, 0).ok_or_else(|| bad("shorter than a key"))?;
                let addr = payload.get(KEY_LEN..KEY_LEN + 18).and_then(|b| {
                    let ip: [u8; 16] = b.get(..16)?.try_into().ok()?;
                    let port = u16::from_be_bytes(b.get(16..18)?.try_into().ok()?);
                    let ip = Ipv6Addr::from(ip);
                    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                    Some(SocketAddr::new(ip, port))
                });
                let flags = addr.and(payload.get(KEY_LEN + 18).copied());
                Self::PeerPresent { key, addr, flags }
            }
            FrameType::FORWARD_PACKET => {
                let src = key_at(payload, 0).ok_or_else(|| bad("shorter than two keys"))?;
                let dst = key_at(payload, KEY_LEN).ok_or_else(|| bad("shorter than two keys"))?;
                let packet = packet_limit(payload.get(2 * KEY_LEN..).unwrap_or_default())?;
                Self::ForwardPacket { src, dst, packet }
            }
            FrameType::WATCH_CONNS => {
                if len != 0 {
                    return Err(bad("must be empty"));
                }
                Self::WatchConns
            }
            FrameType::CLOSE_PEER => {
                if len != KEY_LEN {
                    return Err(bad("must be exactly one key"));
                }
                Self::ClosePeer {
                    key: key_at(payload, 0).ok_or_else(|| bad("missing key"))?,
                }
            }
            FrameType::PING => {
                if len > MAX_PING_LEN {
                    return Err(bad("longer than 1000 bytes"));
                }
                Self::Ping {
                    data: eight_at(payload, 0).ok_or_else(|| bad("shorter than 8 bytes"))?,
                }
            }
            FrameType::PONG => Self::Pong {
                data: eight_at(payload, 0).ok_or_else(|| bad("shorter than 8 bytes"))?,
            },
            FrameType::HEALTH => Self::Health {
                problem: String::from_utf8_lossy(payload).into_owned(),
            },
            FrameType::RESTARTING => {
                let reconnect = u32_at(payload, 0).ok_or_else(|| bad("shorter than 8 bytes"))?;
                let try_for = u32_at(payload, 4).ok_or_else(|| bad("shorter than 8 bytes"))?;
                Self::Restarting {
                    reconnect_in: Duration::from_millis(reconnect.into()),
                    try_for: Duration::from_millis(try_for.into()),
                }
            }
            other => Self::Unknown {
                frame_type: other,
                payload: payload.to_vec(),
            },
        })
    }

    /// Appends the framed bytes (header and payload) to `out`. Fails only when a packet exceeds
    /// [`MAX_PACKET_SIZE`] or a payload exceeds [`MAX_FRAME_LEN`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DerpError> {
        let check_packet = |p: &[u8]| {
            if p.len() > MAX_PACKET_SIZE {
                Err(DerpError::PacketTooLarge {
                    len: p.len(),
                    max: MAX_PACKET_SIZE,
                })
            } else {
                Ok(())
            }
        };
        let ty = self.frame_type();
        match self {
            Self::ServerKey { key } => {
                write_header(out, ty, MAGIC.len() + KEY_LEN)?;
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(key.as_bytes());
            }
            Self::ClientInfo { key, sealed } => {
                write_header(out, ty, KEY_LEN + sealed.len())?;
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(sealed);
            }
            Self::ServerInfo { sealed } => {
                write_header(out, ty, sealed.len())?;
                out.extend_from_slice(sealed);
            }
            Self::SendPacket { dst: key, packet } | Self::RecvPacket { src: key, packet } => {
                check_packet(packet)?;
                write_header(out, ty, KEY_LEN + packet.len())?;
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(packet);
            }
            Self::KeepAlive | Self::WatchConns => write_header(out, ty, 0)?,
            Self::NotePreferred { preferred } => {
                write_header(out, ty, 1)?;
                out.push(u8::from(*preferred));
            }
            Self::PeerGone { peer, reason } => {
                write_header(out, ty, KEY_LEN + 1)?;
                out.extend_from_slice(peer.as_bytes());
                out.push(reason.0);
            }
            Self::PeerPresent { key, addr, flags } => {
                let len = KEY_LEN + addr.map_or(0, |_| 18 + flags.map_or(0, |_| 1));
                write_header(out, ty, len)?;
                out.extend_from_slice(key.as_bytes());
                if let Some(addr) = addr {
                    let ip = match addr.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    out.extend_from_slice(&ip.octets());
                    out.extend_from_slice(&addr.port().to_be_bytes());
                    if let Some(flags) = flags {
                        out.push(*flags);
                    }
                }
            }
            Self::ForwardPacket { src, dst, packet } => {
                check_packet(packet)?;
                write_header(out, ty, 2 * KEY_LEN + packet.len())?;
                out.extend_from_slice(src.as_bytes());
                out.extend_from_slice(dst.as_bytes());
                out.extend_from_slice(packet);
            }
            Self::ClosePeer { key } => {
                write_header(out, ty, KEY_LEN)?;
                out.extend_from_slice(key.as_bytes());
            }
            Self::Ping { data } | Self::Pong { data } => {
                write_header(out, ty, 8)?;
                out.extend_from_slice(data);
            }
            Self::Health { problem } => {
                write_header(out, ty, problem.len())?;
                out.extend_from_slice(problem.as_bytes());
            }
            Self::Restarting {
                reconnect_in,
                try_for,
            } => {
                write_header(out, ty, 8)?;
                let ms = |d: &Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
                out.extend_from_slice(&ms(reconnect_in).to_be_bytes());
                out.extend_from_slice(&ms(try_for).to_be_bytes());
            }
            Self::Unknown { payload, .. } => {
                write_header(out, ty, payload.len())?;
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    /// The encoded bytes of this frame as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DerpError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }
}

/// Appends a frame header for a payload of `len` bytes.
pub fn write_header(out: &mut Vec<u8>, frame_type: FrameType, len: usize) -> Result<(), DerpError> {
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(DerpError::FrameTooLarge {
            frame_type,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            max: MAX_FRAME_LEN,
        })?;
    out.push(frame_type.0);
    out.extend_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// A complete frame as it came off the wire, before its payload is interpreted.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RawFrame {
    /// The type byte.
    pub frame_type: FrameType,
    /// The payload, without the 5-byte header.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Interprets the payload; see [`Frame::parse`].
    pub fn parse(&self) -> Result<Frame, DerpError> {
        Frame::parse(self.frame_type, &self.payload)
    }
}

/// Reassembles frames from a byte stream delivered in arbitrary chunks.
///
/// Drive it with [`push`](Self::push) for every chunk read, then call
/// [`next_raw`](Self::next_raw) (or [`next_frame`](Self::next_frame)) until it returns `Ok(None)`.
/// A header announcing more than the configured limit is fatal: it is returned now and on every
/// later call, because the stream cannot be re-synchronised. A complete frame whose payload is
/// malformed is consumed, so `next_frame` can be called again after such an error.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame_len: u32,
    fatal: Option<DerpError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder that accepts frames up to [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A decoder with a custom per-frame payload limit.
    pub fn with_max_frame_len(max_frame_len: u32) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame_len,
            fatal: None,
        }
    }

    /// Changes the per-frame payload limit (a server raises it once the client is authenticated).
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        // Reclaim consumed space before growing, so a long-lived stream does not keep every byte.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 64 << 10) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes everything buffered but not yet decoded (e.g. when handing the stream to other code).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let rest = self.buf.get(self.start..).unwrap_or_default().to_vec();
        self.buf.clear();
        self.start = 0;
        rest
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_raw(&mut self) -> Result<Option<RawFrame>, DerpError> {
        if let Some(err) = &self.fatal {
            return Err(err.clone());
        }
        let avail = self.buf.get(self.start..).unwrap_or_default();
        let Some(&[ty, l0, l1, l2, l3]) = avail.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let frame_type = FrameType(ty);
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        if len > self.max_frame_len {
            let err = DerpError::FrameTooLarge {
                frame_type,
                len,
                max: self.max_frame_len,
            };
            self.fatal = Some(err.clone());
            return Err(err);
        }
        // `len` is bounded by max_frame_len (u32), so the sum cannot overflow usize on 32/64-bit.
        let end = FRAME_HEADER_LEN + len as usize;
        let Some(payload) = avail.get(FRAME_HEADER_LEN..end) else {
            return Ok(None);
        };
        let frame = RawFrame {
            frame_type,
            payload: payload.to_vec(),
        };
        self.start += end;
        Ok(Some(frame))
    }

    /// The next complete frame, parsed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DerpError> {
        match self.next_raw()? {
            Some(raw) => raw.parse().map(Some),
            None => Ok(None),
        }
    }
}

/// Seals `plaintext` with NaCl `crypto_box` from `my_secret` to `peer_public`, returning
/// `nonce (24) | tag (16) | ciphertext`. The nonce is random from `rng`.
pub fn naclbox_seal(
    my_secret: &[u8; 32],
    peer_public: &[u8; 32],
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let sbox = crypto_box::SalsaBox::new(
        &crypto_box::PublicKey::from(*peer_public),
        &crypto_box::SecretKey::from(*my_secret),
    );
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    // Encryption without associated data cannot fail for in-memory buffers; fall back to an
    // empty box (which will never open) rather than panic if the library ever disagrees.
    let sealed = sbox
        .encrypt(&crypto_box::Nonce::from(nonce), plaintext)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a `nonce | tag | ciphertext` box sealed by `peer_public` to `my_secret`. `None` if it
/// is too short or fails authentication.
pub fn naclbox_open(
    my_secret: &[u8; 32],
    peer_public: &[u8; 32],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = sealed.get(..NONCE_LEN)?.try_into().ok()?;
    let body = sealed.get(NONCE_LEN..)?;
    if body.len() < TAG_LEN {
        return None;
    }
    let sbox = crypto_box::SalsaBox::new(
        &crypto_box::PublicKey::from(*peer_public),
        &crypto_box::SecretKey::from(*my_secret),
    );
    sbox.decrypt(&crypto_box::Nonce::from(nonce), body).ok()
}

/// The shared secret of a DERP region's mesh. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey([u8; 32]);

impl MeshKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).ok()?;
        Some(Self(b))
    }
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshKey(<redacted>)")
    }
}

impl Serialize for MeshKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

fn de_mesh_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MeshKey>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => MeshKey::from_hex(text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("meshKey must be 64 hex characters")),
    }
}

/// The JSON a client seals into its ClientInfo frame. Keys are spelled exactly as Go emits them;
/// the aliases accept other spellings because Go's decoder is case-insensitive.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Mesh key, presented only by the DERP servers of one region to each other.
    #[serde(
        rename = "meshKey",
        alias = "MeshKey",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_mesh_key"
    )]
    pub mesh_key: Option<MeshKey>,
    /// Protocol version (2).
    #[serde(rename = "version", alias = "Version", default)]
    pub version: u32,
    /// Whether the client answers server Pings.
    #[serde(rename = "CanAckPings", alias = "canAckPings", default)]
    pub can_ack_pings: bool,
    /// Whether the client is a monitoring prober.
    #[serde(
        rename = "IsProber",
        alias = "isProber",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_prober: bool,
}

impl Default for ClientInfo {
    /// What a normal Tailscale client sends: `{"version":2,"CanAckPings":true}`.
    fn default() -> Self {
        Self {
            mesh_key: None,
            version: PROTOCOL_VERSION,
            can_ack_pings: true,
            is_prober: false,
        }
    }
}

impl ClientInfo {
    /// Builds the ClientInfo frame: the client's public key and this JSON sealed to the server.
    pub fn seal(
        &self,
        client: &NodePrivate,
        server: &NodePublic,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Frame, DerpError> {
        let json = serde_json::to_vec(self).map_err(|e| DerpError::BadJson(e.to_string()))?;
        let sealed = naclbox_seal(client.as_bytes(), server.as_bytes(), &json, rng);
        Ok(Frame::ClientInfo {
            key: client.public(),
            sealed,
        })
    }

    /// Opens the sealed part of a ClientInfo frame that claims to come from `client`. Success
    /// proves the sender holds `client`'s private key.
    pub fn open(
        server: &NodePrivate,
        client: &NodePublic,
        sealed: &[u8],
    ) -> Result<Self, DerpError> {
        let json = naclbox_open(server.as_bytes(), client.as_bytes(), sealed)
            .ok_or(DerpError::BoxOpen { peer: *client })?;
        serde_json::from_slice(&json).map_err(|e| DerpError::BadJson(e.to_string()))
    }
}

/// The JSON a server seals into its ServerInfo frame.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol version (2).
    #[serde(rename = "version", alias = "Version", default)]
    pub version: u32,
    /// If non-zero, clients rate-limit their sends to this many bytes per second.
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        alias = "tokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_per_second: i64,
    /// Burst size for the above.
    #[serde(
        rename = "TokenBucketBytesBurst",
        alias = "tokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_burst: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ServerInfo {
    /// What stock derper sends: `{"version":2}`.
    pub fn current() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ..Self::default()
        }
    }

    /// Builds the ServerInfo frame sealed from the server to `client`.
    pub fn seal(
        &self,
        server: &NodePrivate,
        client: &NodePublic,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Frame, DerpError> {
        let json = serde_json::to_vec(self).map_err(|e| DerpError::BadJson(e.to_string()))?;
        Ok(Frame::ServerInfo {
            sealed: naclbox_seal(server.as_bytes(), client.as_bytes(), &json, rng),
        })
    }

    /// Opens a ServerInfo frame's payload that `server` sealed to this client.
    pub fn open(
        client: &NodePrivate,
        server: &NodePublic,
        sealed: &[u8],
    ) -> Result<Self, DerpError> {
        let json = naclbox_open(client.as_bytes(), server.as_bytes(), sealed)
            .ok_or(DerpError::BoxOpen { peer: *server })?;
        serde_json::from_slice(&json).map_err(|e| DerpError::BadJson(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Deterministic RNG for tests (not cryptographically meaningful).
    struct TestRng(u64);
    impl rand_core::RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
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

    fn key(n: u8) -> NodePublic {
        NodePublic::from_bytes([n; 32])
    }

    #[test]
    fn magic_is_derp_key_emoji() {
        assert_eq!(&MAGIC, "DERP🔑".as_bytes());
        assert_eq!(&DISCO_MAGIC, "TS💬".as_bytes());
    }

    #[test]
    fn server_key_frame_bytes() {
        let bytes = Frame::ServerKey { key: key(7) }.to_bytes().unwrap();
        assert_eq!(&bytes[..5], &[0x01, 0, 0, 0, 40]);
        assert_eq!(&bytes[5..13], &MAGIC);
        assert_eq!(&bytes[13..], &[7u8; 32]);
        // Trailing bytes after the key are allowed (reserved for future use).
        let mut payload = bytes[5..].to_vec();
        payload.extend_from_slice(b"future");
        assert_eq!(
            Frame::parse(FrameType::SERVER_KEY, &payload).unwrap(),
            Frame::ServerKey { key: key(7) }
        );
        payload[0] = b'X';
        assert_eq!(
            Frame::parse(FrameType::SERVER_KEY, &payload),
            Err(DerpError::BadMagic)
        );
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            Frame::ServerKey { key: key(1) },
            Frame::ClientInfo {
                key: key(2),
                sealed: vec![9; 60],
            },
            Frame::ServerInfo {
                sealed: vec![8; 40],
            },
            Frame::SendPacket {
                dst: key(3),
                packet: b"hello".to_vec(),
            },
            Frame::RecvPacket {
                src: key(4),
                packet: vec![],
            },
            Frame::KeepAlive,
            Frame::NotePreferred { preferred: true },
            Frame::PeerGone {
                peer: key(5),
                reason: PeerGoneReason::NOT_HERE,
            },
            Frame::PeerPresent {
                key: key(6),
                addr: Some("10.1.2.3:41641".parse().unwrap()),
                flags: Some(1),
            },
            Frame::PeerPresent {
                key: key(6),
                addr: None,
                flags: None,
            },
            Frame::ForwardPacket {
                src: key(7),
                dst: key(8),
                packet: vec![1, 2, 3],
            },
            Frame::WatchConns,
            Frame::ClosePeer { key: key(9) },
            Frame::Ping { data: *b"12345678" },
            Frame::Pong { data: *b"87654321" },
            Frame::Health {
                problem: "disk full".into(),
            },
            Frame::Restarting {
                reconnect_in: Duration::from_millis(1500),
                try_for: Duration::from_secs(30),
            },
            Frame::Unknown {
                frame_type: FrameType(0x7f),
                payload: vec![1, 2],
            },
        ];
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        // Feed one byte at a time: the decoder must cope with any chunking.
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn peer_gone_without_reason_means_disconnected() {
        let f = Frame::parse(FrameType::PEER_GONE, &[3u8; 32]).unwrap();
        assert_eq!(
            f,
            Frame::PeerGone {
                peer: key(3),
                reason: PeerGoneReason::DISCONNECTED
            }
        );
    }

    #[test]
    fn size_limits_are_enforced() {
        let big = vec![0u8; MAX_PACKET_SIZE + 1];
        assert!(matches!(
            Frame::SendPacket {
                dst: key(1),
                packet: big.clone()
            }
            .to_bytes(),
            Err(DerpError::PacketTooLarge { .. })
        ));
        let mut payload = vec![1u8; 32];
        payload.extend_from_slice(&big);
        assert!(matches!(
            Frame::parse(FrameType::SEND_PACKET, &payload),
            Err(DerpError::PacketTooLarge { .. })
        ));
        assert!(Frame::parse(FrameType::SEND_PACKET, &payload[..32 + MAX_PACKET_SIZE]).is_ok());
        let ci = vec![0u8; MAX_CLIENT_INFO_LEN + 1];
        assert!(matches!(
            Frame::parse(FrameType::CLIENT_INFO, &ci),
            Err(DerpError::BadPayload { .. })
        ));

        let mut dec = FrameDecoder::new();
        dec.push(&[0x04, 0x00, 0x10, 0x00, 0x01]);
        assert!(
            matches!(dec.next_raw(), Err(DerpError::FrameTooLarge { len, .. }) if len == (1 << 20) + 1)
        );
        // Fatal errors are sticky.
        dec.push(&[0x06, 0, 0, 0, 0]);
        assert!(dec.next_raw().is_err());
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for (ty, payload) in [
            (FrameType::NOTE_PREFERRED, &[][..]),
            (FrameType::NOTE_PREFERRED, &[1, 1][..]),
            (FrameType::PEER_GONE, &[0; 31][..]),
            (FrameType::PING, &[0; 7][..]),
            (FrameType::PONG, &[0; 7][..]),
            (FrameType::WATCH_CONNS, &[0][..]),
            (FrameType::CLOSE_PEER, &[0; 33][..]),
            (FrameType::RESTARTING, &[0; 7][..]),
            (FrameType::CLIENT_INFO, &[0; 55][..]),
            (FrameType::SERVER_INFO, &[0; 23][..]),
            (FrameType::FORWARD_PACKET, &[0; 63][..]),
        ] {
            assert!(Frame::parse(ty, payload).is_err(), "{ty} {payload:?}");
        }
        assert!(Frame::parse(FrameType::PING, &[0; 1001]).is_err());
        assert_eq!(
            Frame::parse(FrameType::PING, &[5; 1000]).unwrap(),
            Frame::Ping { data: [5; 8] }
        );
    }

    #[test]
    fn malformed_frame_is_skipped_and_stream_continues() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0x07, 0, 0, 0, 2, 1, 1]); // NotePreferred with 2 bytes
        dec.push(&[0x06, 0, 0, 0, 0]);
        assert!(dec.next_frame().is_err());
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::KeepAlive));
    }

    #[test]
    fn client_info_json_matches_go() {
        let json = serde_json::to_string(&ClientInfo::default()).unwrap();
        assert_eq!(json, r#"{"version":2,"CanAckPings":true}"#);
        let mesh = ClientInfo {
            mesh_key: Some(MeshKey::from_bytes([0xab; 32])),
            is_prober: true,
            ..ClientInfo::default()
        };
        let json = serde_json::to_string(&mesh).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"meshKey":"{}","version":2,"CanAckPings":true,"IsProber":true}}"#,
                "ab".repeat(32)
            )
        );
        assert!(!format!("{mesh:?}").contains("abab"));
        let parsed: ClientInfo = serde_json::from_str(r#"{"version":2}"#).unwrap();
        assert_eq!(parsed.version, 2);
        assert!(!parsed.can_ack_pings);
        let parsed: ClientInfo =
            serde_json::from_str(r#"{"meshKey":"","Version":2,"canAckPings":true,"x":1}"#).unwrap();
        assert_eq!(parsed, ClientInfo::default());
        assert_eq!(
            serde_json::to_string(&ServerInfo::current()).unwrap(),
            r#"{"version":2}"#
        );
    }

    #[test]
    fn handshake_boxes_open_only_with_the_right_keys() {
        let mut rng = TestRng(42);
        let server = NodePrivate::generate(&mut rng);
        let client = NodePrivate::generate(&mut rng);
        let Frame::ClientInfo { key, sealed } = ClientInfo::default()
            .seal(&client, &server.public(), &mut rng)
            .unwrap()
        else {
            panic!("not a ClientInfo frame");
        };
        assert_eq!(key, client.public());
        // nonce | tag | ciphertext of {"version":2,"CanAckPings":true}
        assert_eq!(sealed.len(), NONCE_LEN + TAG_LEN + 32);
        assert_eq!(
            ClientInfo::open(&server, &key, &sealed).unwrap(),
            ClientInfo::default()
        );

        let impostor = NodePrivate::generate(&mut rng).public();
        assert_eq!(
            ClientInfo::open(&server, &impostor, &sealed),
            Err(DerpError::BoxOpen { peer: impostor })
        );
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(ClientInfo::open(&server, &key, &tampered).is_err());
        assert!(ClientInfo::open(&server, &key, &sealed[..30]).is_err());

        let Frame::ServerInfo { sealed } = ServerInfo::current()
            .seal(&server, &client.public(), &mut rng)
            .unwrap()
        else {
            panic!("not a ServerInfo frame");
        };
        assert_eq!(
            ServerInfo::open(&client, &server.public(), &sealed).unwrap(),
            ServerInfo::current()
        );
    }

    #[test]
    fn disco_detection() {
        let mut p = DISCO_MAGIC.to_vec();
        p.resize(61, 0);
        assert!(!packet_looks_like_disco(&p));
        p.push(0);
        assert!(packet_looks_like_disco(&p));
        p[0] = 0;
        assert!(!packet_looks_like_disco(&p));
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
                let mut dec = FrameDecoder::with_max_frame_len(4096);
                for c in &chunks {
                    dec.push(c);
                    while let Ok(Some(raw)) = dec.next_raw() {
                        let _ = raw.parse();
                    }
                }
            }

            #[test]
            fn parse_never_panics(ty in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Ok(f) = Frame::parse(FrameType(ty), &payload) {
                    // Whatever parses must re-encode.
                    prop_assert!(f.to_bytes().is_ok());
                }
            }

            #[test]
            fn open_never_panics(sealed in proptest::collection::vec(any::<u8>(), 0..200)) {
                let k = NodePrivate::from_bytes([3; 32]);
                prop_assert!(ClientInfo::open(&k, &k.public(), &sealed).is_err());
            }
        }
    }
}
