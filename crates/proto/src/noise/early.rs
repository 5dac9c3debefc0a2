//! The ts2021 "early payload" (Go's `tailcfg.EarlyNoise`), sans-IO.
//!
//! The first plaintext bytes the server sends inside Noise are either an HTTP/2 frame header
//! (9 bytes) or this optional block, followed by HTTP/2:
//!
//! ```text
//! FF FF FF 'T' 'S' | u32 BE JSON length (≤ 10 MiB) | {"nodeKeyChallenge":"chalpub:<hex>"}
//! ```
//!
//! The server appends [`EarlyPayload::encode`]'s bytes to its first write. The client calls
//! [`parse`] on the plaintext received so far: [`EarlyParse::NeedMore`] says how much to wait
//! for, [`EarlyParse::Present`] says how many bytes to drop, and [`EarlyParse::Absent`] means
//! the bytes are HTTP/2 and must all be handed (pushed back) to the HTTP/2 client.

use serde::{Deserialize, Serialize};

use crate::keys::ChallengePublic;

/// The 5-byte magic that starts an early payload; no HTTP/2 frame header can begin with it.
pub const MAGIC: [u8; 5] = *b"\xff\xff\xffTS";
/// Magic plus the u32 length; the same size as an HTTP/2 frame header.
pub const HEADER_LEN: usize = 9;
/// The largest JSON body a client accepts (Go's limit).
pub const MAX_JSON_LEN: usize = 10 << 20;

/// The early payload's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EarlyPayload {
    /// A fresh per-connection challenge key. Go decodes a missing key as zero; so do we.
    #[serde(rename = "nodeKeyChallenge", default)]
    pub node_key_challenge: ChallengePublic,
}

/// Why an early payload was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EarlyError {
    /// The announced JSON length is over [`MAX_JSON_LEN`].
    #[error("invalid early payload length {len}: the limit is {MAX_JSON_LEN} bytes")]
    TooLarge { len: u64 },
    /// The JSON does not decode as an early payload.
    #[error("early payload is not valid JSON: {0}")]
    BadJson(#[from] serde_json::Error),
}

impl EarlyPayload {
    /// A payload carrying `challenge`.
    pub fn new(challenge: ChallengePublic) -> Self {
        Self {
            node_key_challenge: challenge,
        }
    }

    /// Appends magic, length and JSON to `out` (plaintext, to be sealed).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EarlyError> {
        let json = serde_json::to_vec(self)?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|&n| n as usize <= MAX_JSON_LEN)
            .ok_or(EarlyError::TooLarge {
                len: json.len() as u64,
            })?;
        out.reserve(HEADER_LEN + json.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&json);
        Ok(())
    }
}

/// What the first server plaintext bytes say about an early payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EarlyParse {
    /// Not decidable yet: wait until at least `total` bytes have arrived.
    NeedMore { total: usize },
    /// An early payload occupying the first `consumed` bytes; HTTP/2 starts after them.
    Present {
        payload: EarlyPayload,
        consumed: usize,
    },
    /// No early payload: every byte received so far belongs to HTTP/2.
    Absent,
}

/// Client side: inspects the plaintext received so far (from its very first byte).
///
/// Decides "absent" as soon as a byte differs from the magic, so it never waits for more than
/// the server has to send.
pub fn parse(received: &[u8]) -> Result<EarlyParse, EarlyError> {
    let prefix = received.len().min(MAGIC.len());
    if received.get(..prefix) != MAGIC.get(..prefix) {
        return Ok(EarlyParse::Absent);
    }
    let Some((header, rest)) = received.split_first_chunk::<HEADER_LEN>() else {
        return Ok(EarlyParse::NeedMore { total: HEADER_LEN });
    };
    let [.., a, b, c, d] = *header;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > MAX_JSON_LEN {
        return Err(EarlyError::TooLarge { len: len as u64 });
    }
    let Some(json) = rest.get(..len) else {
        return Ok(EarlyParse::NeedMore {
            total: HEADER_LEN + len,
        });
    };
    let payload = serde_json::from_slice(json)?;
    Ok(EarlyParse::Present {
        payload,
        consumed: HEADER_LEN + len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> ChallengePublic {
        ChallengePublic::from_bytes([0xab; 32])
    }

    #[test]
    fn encodes_magic_length_and_exact_json() {
        let mut out = Vec::new();
        EarlyPayload::new(challenge()).encode(&mut out).unwrap();
        assert_eq!(out[..5], *b"\xff\xff\xffTS");
        let len = u32::from_be_bytes(out[5..9].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 9);
        let json = format!(r#"{{"nodeKeyChallenge":"chalpub:{}"}}"#, "ab".repeat(32));
        assert_eq!(&out[9..], json.as_bytes());
    }

    #[test]
    fn present_payload_followed_by_http2() {
        let mut out = Vec::new();
        EarlyPayload::new(challenge()).encode(&mut out).unwrap();
        let consumed = out.len();
        let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        out.extend_from_slice(&settings);
        assert_eq!(
            parse(&out).unwrap(),
            EarlyParse::Present {
                payload: EarlyPayload::new(challenge()),
                consumed
            }
        );
        // Every shorter prefix asks for more, with the right target.
        assert_eq!(parse(&out[..3]).unwrap(), EarlyParse::NeedMore { total: 9 });
        assert_eq!(
            parse(&out[..9]).unwrap(),
            EarlyParse::NeedMore { total: consumed }
        );
        assert_eq!(
            parse(&out[..consumed - 1]).unwrap(),
            EarlyParse::NeedMore { total: consumed }
        );
    }

    #[test]
    fn absent_when_bytes_are_an_http2_frame_header() {
        // A SETTINGS frame header: length 18, type 4, flags 0, stream 0.
        let settings = [0x00, 0x00, 0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(parse(&settings).unwrap(), EarlyParse::Absent);
        assert_eq!(parse(&settings[..1]).unwrap(), EarlyParse::Absent);
        assert_eq!(parse(&[]).unwrap(), EarlyParse::NeedMore { total: 9 });
        assert_eq!(parse(b"\xff\xff\xffTX").unwrap(), EarlyParse::Absent);
    }

    #[test]
    fn rejects_oversize_and_bad_json() {
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&((10u32 << 20) + 1).to_be_bytes());
        assert!(matches!(parse(&big), Err(EarlyError::TooLarge { len }) if len == (10 << 20) + 1));
        let mut at_limit = MAGIC.to_vec();
        at_limit.extend_from_slice(&(10u32 << 20).to_be_bytes());
        assert_eq!(
            parse(&at_limit).unwrap(),
            EarlyParse::NeedMore {
                total: 9 + (10 << 20)
            }
        );

        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&3u32.to_be_bytes());
        bad.extend_from_slice(b"{x}");
        assert!(matches!(parse(&bad), Err(EarlyError::BadJson(_))));

        let mut wrong_key = MAGIC.to_vec();
        let json = br#"{"nodeKeyChallenge":"nodekey:00"}"#;
        wrong_key.extend_from_slice(&(json.len() as u32).to_be_bytes());
        wrong_key.extend_from_slice(json);
        assert!(matches!(parse(&wrong_key), Err(EarlyError::BadJson(_))));
    }

    #[test]
    fn missing_challenge_decodes_as_zero_like_go() {
        let mut msg = MAGIC.to_vec();
        msg.extend_from_slice(&2u32.to_be_bytes());
        msg.extend_from_slice(b"{}");
        assert_eq!(
            parse(&msg).unwrap(),
            EarlyParse::Present {
                payload: EarlyPayload::default(),
                consumed: 11
            }
        );
    }
}
