//! PCP wire format (RFC 6887): ANNOUNCE and MAP requests and the responses to them.
//!
//! Pure encode/decode over byte slices; [`super::Client`] drives the exchange. Requests carry
//! the client's own address as an IPv4-mapped IPv6 address (§7.1) and MAP carries a 96-bit
//! nonce that renewals and the deletion must repeat (§11.1). [`decode`] never panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// PCP's version number.
pub const VERSION: u8 = 2;
/// Opcode ANNOUNCE (§14.1), used here as a probe.
pub const OP_ANNOUNCE: u8 = 0;
/// Opcode MAP (§11).
pub const OP_MAP: u8 = 1;
/// The R bit: set in responses.
pub const RESPONSE_BIT: u8 = 0x80;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// Length of the common request and response header.
pub const HEADER_LEN: usize = 24;
/// Length of a MAP request or response (header plus the 36-byte MAP payload).
pub const MAP_LEN: usize = 60;

/// A PCP result code (RFC 6887 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultCode {
    /// 0: success.
    Success,
    /// 1: the server does not speak this version.
    UnsupportedVersion,
    /// 2: the request is not allowed (mapping is turned off or restricted).
    NotAuthorized,
    /// 3: the server could not parse the request.
    MalformedRequest,
    /// 4: the server does not know the opcode.
    UnsupportedOpcode,
    /// 5: the server does not support a mandatory option.
    UnsupportedOption,
    /// 6: an option was malformed.
    MalformedOption,
    /// 7: the server has a network problem (e.g. no external address).
    NetworkFailure,
    /// 8: the server has no room for another mapping.
    NoResources,
    /// 9: the server does not map this transport protocol.
    UnsupportedProtocol,
    /// 10: this client has used up its quota of mappings.
    UserExceededQuota,
    /// 11: the suggested external address or port cannot be provided.
    CannotProvideExternal,
    /// 12: the source address of the request differs from the client address inside it (a
    /// second NAT sits between the client and the server).
    AddressMismatch,
    /// 13: too many remote peers.
    ExcessiveRemotePeers,
    /// A code this client does not know.
    Other(u8),
}

impl ResultCode {
    /// Maps the wire value to a code.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::MalformedRequest,
            4 => Self::UnsupportedOpcode,
            5 => Self::UnsupportedOption,
            6 => Self::MalformedOption,
            7 => Self::NetworkFailure,
            8 => Self::NoResources,
            9 => Self::UnsupportedProtocol,
            10 => Self::UserExceededQuota,
            11 => Self::CannotProvideExternal,
            12 => Self::AddressMismatch,
            13 => Self::ExcessiveRemotePeers,
            other => Self::Other(other),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedVersion => 1,
            Self::NotAuthorized => 2,
            Self::MalformedRequest => 3,
            Self::UnsupportedOpcode => 4,
            Self::UnsupportedOption => 5,
            Self::MalformedOption => 6,
            Self::NetworkFailure => 7,
            Self::NoResources => 8,
            Self::UnsupportedProtocol => 9,
            Self::UserExceededQuota => 10,
            Self::CannotProvideExternal => 11,
            Self::AddressMismatch => 12,
            Self::ExcessiveRemotePeers => 13,
            Self::Other(v) => v,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Success => "success",
            Self::UnsupportedVersion => "unsupported version",
            Self::NotAuthorized => "not authorized (port mapping is turned off on the gateway)",
            Self::MalformedRequest => "malformed request",
            Self::UnsupportedOpcode => "unsupported opcode",
            Self::UnsupportedOption => "unsupported option",
            Self::MalformedOption => "malformed option",
            Self::NetworkFailure => "network failure (the gateway has no external address)",
            Self::NoResources => "no resources (the gateway has no room for a mapping)",
            Self::UnsupportedProtocol => "unsupported protocol",
            Self::UserExceededQuota => "user exceeded quota",
            Self::CannotProvideExternal => "cannot provide the suggested external address",
            Self::AddressMismatch => "address mismatch (another NAT sits before the gateway)",
            Self::ExcessiveRemotePeers => "excessive remote peers",
            Self::Other(_) => "unknown result code",
        };
        write!(f, "{} ({text})", self.to_u8())
    }
}

/// A decoded PCP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// An answer to ANNOUNCE (or to a request the server did not understand at all).
    Announce {
        /// The result code.
        result: ResultCode,
        /// Seconds since the server's mapping state was (re)started.
        epoch: u32,
    },
    /// An answer to MAP.
    Map(MapResponse),
    /// An error answer without the opcode's payload (e.g. UNSUPP_VERSION to a MAP request).
    Error {
        /// The request's opcode.
        opcode: u8,
        /// What went wrong.
        result: ResultCode,
    },
}

/// The fields of a MAP response (§11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    /// The result code; on errors the lifetime says how long the error holds.
    pub result: ResultCode,
    /// Granted lifetime in seconds.
    pub lifetime: u32,
    /// Seconds since the server's mapping state was (re)started.
    pub epoch: u32,
    /// Must echo the request's nonce.
    pub nonce: [u8; 12],
    /// Transport protocol (17 = UDP).
    pub protocol: u8,
    /// The internal port the mapping is for.
    pub internal_port: u16,
    /// The external port the server assigned.
    pub external_port: u16,
    /// The external address the server assigned (IPv4-mapped addresses unmapped).
    pub external_ip: IpAddr,
}

/// Why bytes from the gateway are not a PCP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the message it claims to be.
    #[error("PCP response too short: {len} bytes, need {need}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes this kind of message needs.
        need: usize,
    },
    /// The version byte is not PCP's 2.
    #[error("not a PCP message (version {0})")]
    WrongVersion(u8),
    /// The R bit is clear: this is a request, not an answer.
    #[error("PCP message is a request (opcode {0}), not a response")]
    NotAResponse(u8),
    /// The opcode is one this client never sends.
    #[error("PCP response with unknown opcode {0}")]
    UnknownOpcode(u8),
}

/// The 24-byte common request header (§7.1).
fn header(opcode: u8, lifetime: u32, client_ip: IpAddr) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0] = VERSION;
    b[1] = opcode;
    // b[2..4] reserved, zero.
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&to_v6(client_ip).octets());
    b
}

/// IPv4 addresses travel as IPv4-mapped IPv6 addresses (§5).
fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An ANNOUNCE request (§14.1): the probe for a PCP server.
pub fn encode_announce(client_ip: IpAddr) -> [u8; HEADER_LEN] {
    header(OP_ANNOUNCE, 0, client_ip)
}

/// A UDP MAP request (§11.1). `suggested_external_ip` of `None` asks for any IPv4 address
/// (`::ffff:0.0.0.0`). A lifetime of 0 with the mapping's nonce deletes it (§15).
pub fn encode_map(
    client_ip: IpAddr,
    lifetime: u32,
    nonce: [u8; 12],
    internal_port: u16,
    suggested_external_port: u16,
    suggested_external_ip: Option<IpAddr>,
) -> [u8; MAP_LEN] {
    let mut b = [0u8; MAP_LEN];
    b[..HEADER_LEN].copy_from_slice(&header(OP_MAP, lifetime, client_ip));
    b[24..36].copy_from_slice(&nonce);
    b[36] = PROTO_UDP;
    // b[37..40] reserved, zero.
    b[40..42].copy_from_slice(&internal_port.to_be_bytes());
    b[42..44].copy_from_slice(&suggested_external_port.to_be_bytes());
    let ext = suggested_external_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    b[44..60].copy_from_slice(&to_v6(ext).octets());
    b
}

/// Decodes a PCP response (§7.2, §11.2).
pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
    let head: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::TooShort {
            len: bytes.len(),
            need: HEADER_LEN,
        })?;
    let version = head[0];
    if version != VERSION {
        return Err(DecodeError::WrongVersion(version));
    }
    let op = head[1];
    if op & RESPONSE_BIT == 0 {
        return Err(DecodeError::NotAResponse(op));
    }
    let opcode = op & !RESPONSE_BIT;
    let result = ResultCode::from_u8(head[3]);
    let lifetime = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let epoch = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    match opcode {
        OP_ANNOUNCE => Ok(Response::Announce { result, epoch }),
        // An error answer to MAP may come without the payload (e.g. UNSUPP_VERSION).
        OP_MAP if result != ResultCode::Success && bytes.len() < MAP_LEN => {
            Ok(Response::Error { opcode, result })
        }
        OP_MAP => {
            let body: &[u8; 36] = bytes
                .get(HEADER_LEN..MAP_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(DecodeError::TooShort {
                    len: bytes.len(),
                    need: MAP_LEN,
                })?;
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&body[..12]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&body[20..36]);
            let ip = Ipv6Addr::from(ip);
            let external_ip = match ip.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(ip),
            };
            Ok(Response::Map(MapResponse {
                result,
                lifetime,
                epoch,
                nonce,
                protocol: body[12],
                internal_port: u16::from_be_bytes([body[16], body[17]]),
                external_port: u16::from_be_bytes([body[18], body[19]]),
                external_ip,
            }))
        }
        other => Err(DecodeError::UnknownOpcode(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2));
    const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn announce_matches_rfc_6887_header_layout() {
        // Version 2, opcode 0, reserved, lifetime 0, client ::ffff:192.168.77.2 (§7.1).
        let want = hex::decode("020000000000000000000000000000000000ffffc0a84d02").unwrap();
        assert_eq!(encode_announce(CLIENT).to_vec(), want);
    }

    #[test]
    fn map_request_matches_rfc_6887_layout() {
        let got = encode_map(CLIENT, 7200, NONCE, 41641, 41641, None);
        let want = hex::decode(concat!(
            "02010000",                         // version 2, MAP, reserved
            "00001c20",                         // lifetime 7200
            "00000000000000000000ffffc0a84d02", // client IP, IPv4-mapped
            "0102030405060708090a0b0c",         // nonce
            "11000000",                         // UDP, reserved
            "a2a9a2a9",                         // internal and suggested external port
            "00000000000000000000ffff00000000", // any external IPv4 address
        ))
        .unwrap();
        assert_eq!(got.to_vec(), want);
    }

    #[test]
    fn decodes_a_map_response() {
        let mut resp = [0u8; MAP_LEN];
        resp[0] = 2;
        resp[1] = 0x81;
        resp[4..8].copy_from_slice(&3600u32.to_be_bytes());
        resp[8..12].copy_from_slice(&99u32.to_be_bytes());
        resp[24..36].copy_from_slice(&NONCE);
        resp[36] = 17;
        resp[40..42].copy_from_slice(&41641u16.to_be_bytes());
        resp[42..44].copy_from_slice(&50000u16.to_be_bytes());
        resp[44..60].copy_from_slice(&Ipv4Addr::new(11, 77, 0, 1).to_ipv6_mapped().octets());
        assert_eq!(
            decode(&resp),
            Ok(Response::Map(MapResponse {
                result: ResultCode::Success,
                lifetime: 3600,
                epoch: 99,
                nonce: NONCE,
                protocol: 17,
                internal_port: 41641,
                external_port: 50000,
                external_ip: IpAddr::V4(Ipv4Addr::new(11, 77, 0, 1)),
            }))
        );
        resp[3] = 2;
        let Ok(Response::Map(m)) = decode(&resp) else {
            panic!("not a map response")
        };
        assert_eq!(m.result, ResultCode::NotAuthorized);
    }

    #[test]
    fn decodes_announce_and_short_errors() {
        let mut resp = [0u8; HEADER_LEN];
        resp[0] = 2;
        resp[1] = 0x80;
        resp[11] = 5;
        assert_eq!(
            decode(&resp),
            Ok(Response::Announce {
                result: ResultCode::Success,
                epoch: 5
            })
        );
        resp[1] = 0x81;
        resp[3] = 1;
        assert_eq!(
            decode(&resp),
            Ok(Response::Error {
                opcode: OP_MAP,
                result: ResultCode::UnsupportedVersion
            })
        );
        assert_eq!(ResultCode::from_u8(200), ResultCode::Other(200));
        assert!(ResultCode::AddressMismatch.to_string().starts_with("12 "));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(
            decode(&[2, 0x80]),
            Err(DecodeError::TooShort { len: 2, need: 24 })
        );
        let mut resp = [0u8; HEADER_LEN];
        assert_eq!(decode(&resp), Err(DecodeError::WrongVersion(0)));
        resp[0] = 2;
        resp[1] = 1;
        assert_eq!(decode(&resp), Err(DecodeError::NotAResponse(1)));
        resp[1] = 0x81;
        assert_eq!(
            decode(&resp),
            Err(DecodeError::TooShort { len: 24, need: 60 })
        );
        resp[1] = 0x82;
        assert_eq!(decode(&resp), Err(DecodeError::UnknownOpcode(2)));
        for len in 0..80 {
            let mut v = vec![0xffu8; len];
            let _ = decode(&v);
            if let Some(b) = v.get_mut(0) {
                *b = 2;
            }
            let _ = decode(&v);
        }
    }
}
