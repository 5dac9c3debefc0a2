//! NAT-PMP wire format (RFC 6886): the requests this client sends and the responses it accepts.
//!
//! Pure encode/decode over byte slices; [`super::Client`] drives the exchange. Every request is
//! a fixed-size array; [`decode`] never panics and rejects anything that is not a well-formed
//! server response (RFC 6886 §3.2, §3.3, §3.5).

use std::fmt;
use std::net::Ipv4Addr;

/// The NAT-PMP and PCP server port on the gateway (RFC 6886 §3.1, RFC 6887 §19.1).
pub const SERVER_PORT: u16 = 5351;
/// NAT-PMP's version number.
pub const VERSION: u8 = 0;
/// Opcode of the external address request.
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode of a UDP mapping request.
pub const OP_MAP_UDP: u8 = 1;
/// Opcode of a TCP mapping request.
pub const OP_MAP_TCP: u8 = 2;
/// Responses carry the request's opcode plus 128.
pub const OP_RESPONSE_BIT: u8 = 0x80;

/// A NAT-PMP result code (RFC 6886 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultCode {
    /// 0: the request succeeded.
    Success,
    /// 1: the gateway does not speak this protocol version.
    UnsupportedVersion,
    /// 2: the gateway supports mapping but the user turned it off.
    NotAuthorized,
    /// 3: the gateway has no working external address (e.g. no DHCP lease on its WAN).
    NetworkFailure,
    /// 4: the gateway has no room for another mapping.
    OutOfResources,
    /// 5: the gateway does not know the opcode.
    UnsupportedOpcode,
    /// A code this client does not know.
    Other(u16),
}

impl ResultCode {
    /// Maps the wire value to a code.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::NetworkFailure,
            4 => Self::OutOfResources,
            5 => Self::UnsupportedOpcode,
            other => Self::Other(other),
        }
    }

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Success => 0,
            Self::UnsupportedVersion => 1,
            Self::NotAuthorized => 2,
            Self::NetworkFailure => 3,
            Self::OutOfResources => 4,
            Self::UnsupportedOpcode => 5,
            Self::Other(v) => v,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.to_u16();
        let text = match self {
            Self::Success => "success",
            Self::UnsupportedVersion => "unsupported version",
            Self::NotAuthorized => "not authorized (port mapping is turned off on the gateway)",
            Self::NetworkFailure => "network failure (the gateway has no external address)",
            Self::OutOfResources => "out of resources (the gateway has no room for a mapping)",
            Self::UnsupportedOpcode => "unsupported opcode",
            Self::Other(_) => "unknown result code",
        };
        write!(f, "{code} ({text})")
    }
}

/// A decoded NAT-PMP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// A successful answer to the external address request (opcode 128).
    ExternalAddress {
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The gateway's public IPv4 address.
        ip: Ipv4Addr,
    },
    /// A successful answer to a mapping request (opcode 129 or 130).
    Map {
        /// The request's opcode (1 = UDP, 2 = TCP).
        opcode: u8,
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The internal port the mapping is for.
        internal_port: u16,
        /// The external port the gateway chose (0 in the answer to a deletion).
        external_port: u16,
        /// Granted lifetime in seconds (0 in the answer to a deletion).
        lifetime: u32,
    },
    /// A response with a non-zero result code; the other fields are undefined (RFC 6886 §3.5).
    Error {
        /// The request's opcode (the response's opcode minus 128).
        opcode: u8,
        /// What went wrong.
        result: ResultCode,
    },
}

/// Why bytes from the gateway are not a NAT-PMP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the message it claims to be.
    #[error("NAT-PMP response too short: {len} bytes, need {need}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes this kind of message needs.
        need: usize,
    },
    /// The version byte is not NAT-PMP's 0.
    #[error("not a NAT-PMP message (version {0})")]
    WrongVersion(u8),
    /// The opcode lacks the response bit: this is a request, not an answer.
    #[error("NAT-PMP message is a request (opcode {0}), not a response")]
    NotAResponse(u8),
    /// The opcode is one this client never sends.
    #[error("NAT-PMP response with unknown opcode {0}")]
    UnknownOpcode(u8),
}

/// The external address request: version 0, opcode 0 (RFC 6886 §3.2).
pub fn encode_external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// A UDP mapping request (RFC 6886 §3.3). A lifetime of 0 with suggested external port 0 deletes
/// the mapping of `internal_port` (§3.4).
pub fn encode_map_request(
    internal_port: u16,
    suggested_external_port: u16,
    lifetime: u32,
) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = OP_MAP_UDP;
    // b[2..4] reserved, zero.
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&suggested_external_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// Decodes a NAT-PMP response. Error responses may be as short as the common 8-byte header.
pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
    let header: &[u8; 8] =
        bytes
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::TooShort {
                len: bytes.len(),
                need: 8,
            })?;
    let [version, op, r0, r1, e0, e1, e2, e3] = *header;
    if version != VERSION {
        return Err(DecodeError::WrongVersion(version));
    }
    if op & OP_RESPONSE_BIT == 0 {
        return Err(DecodeError::NotAResponse(op));
    }
    let opcode = op & !OP_RESPONSE_BIT;
    let result = ResultCode::from_u16(u16::from_be_bytes([r0, r1]));
    let epoch = u32::from_be_bytes([e0, e1, e2, e3]);
    if result != ResultCode::Success {
        return Ok(Response::Error { opcode, result });
    }
    match opcode {
        OP_EXTERNAL_ADDRESS => {
            let ip: [u8; 4] =
                bytes
                    .get(8..12)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(DecodeError::TooShort {
                        len: bytes.len(),
                        need: 12,
                    })?;
            Ok(Response::ExternalAddress {
                epoch,
                ip: Ipv4Addr::from(ip),
            })
        }
        OP_MAP_UDP | OP_MAP_TCP => {
            let body: [u8; 8] =
                bytes
                    .get(8..16)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(DecodeError::TooShort {
                        len: bytes.len(),
                        need: 16,
                    })?;
            let [i0, i1, x0, x1, l0, l1, l2, l3] = body;
            Ok(Response::Map {
                opcode,
                epoch,
                internal_port: u16::from_be_bytes([i0, i1]),
                external_port: u16::from_be_bytes([x0, x1]),
                lifetime: u32::from_be_bytes([l0, l1, l2, l3]),
            })
        }
        other => Err(DecodeError::UnknownOpcode(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_rfc_6886_layout() {
        assert_eq!(encode_external_address_request(), [0, 0]);
        // Version 0, opcode 1 (UDP), reserved, internal 41641 (0xa2a9), suggested 41641,
        // lifetime 7200 s (0x1c20): §3.3's figure.
        assert_eq!(
            encode_map_request(41641, 41641, 7200),
            [0, 1, 0, 0, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20]
        );
        // Deletion: lifetime 0 and suggested external port 0 (§3.4).
        assert_eq!(
            encode_map_request(41641, 0, 0),
            [0, 1, 0, 0, 0xa2, 0xa9, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn decodes_responses_captured_from_miniupnpd() {
        // Bytes miniupnpd 2.3.1 sent to the requests above.
        let ext = hex::decode("00800000000000020b4d0001").unwrap();
        assert_eq!(
            decode(&ext),
            Ok(Response::ExternalAddress {
                epoch: 2,
                ip: Ipv4Addr::new(11, 77, 0, 1)
            })
        );
        let map = hex::decode("0081000000000002a2a9a2a900001c20").unwrap();
        assert_eq!(
            decode(&map),
            Ok(Response::Map {
                opcode: 1,
                epoch: 2,
                internal_port: 41641,
                external_port: 41641,
                lifetime: 7200
            })
        );
    }

    #[test]
    fn error_responses_need_only_the_header() {
        assert_eq!(
            decode(&[0, 0x81, 0, 2, 0, 0, 0, 9]),
            Ok(Response::Error {
                opcode: 1,
                result: ResultCode::NotAuthorized
            })
        );
        assert_eq!(
            decode(&[0, 0x80, 0, 1, 0, 0, 0, 0]),
            Ok(Response::Error {
                opcode: 0,
                result: ResultCode::UnsupportedVersion
            })
        );
        assert_eq!(ResultCode::from_u16(77), ResultCode::Other(77));
        assert!(
            ResultCode::OutOfResources
                .to_string()
                .contains("out of resources")
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(DecodeError::TooShort { len: 0, need: 8 }));
        assert_eq!(
            decode(&[2, 0x80, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::WrongVersion(2))
        );
        assert_eq!(
            decode(&[0, 1, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::NotAResponse(1))
        );
        assert_eq!(
            decode(&[0, 0x80, 0, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::TooShort { len: 9, need: 12 })
        );
        assert_eq!(
            decode(&[0, 0x81, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
            Err(DecodeError::TooShort { len: 12, need: 16 })
        );
        assert_eq!(
            decode(&[0, 0x85, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnknownOpcode(5))
        );
        for len in 0..40 {
            let _ = decode(&vec![0u8; len]);
            let _ = decode(&vec![0xffu8; len]);
        }
    }
}
