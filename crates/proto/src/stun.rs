//! The STUN (RFC 5389) Binding subset Tailscale uses for endpoint discovery.
//!
//! Sans-IO: build a request with [`binding_request`], hand the 40 bytes to a UDP socket, and feed
//! any datagram that comes back to [`parse_binding_response`]. A server feeds datagrams to
//! [`parse_binding_request`] and answers with [`binding_response`].
//!
//! Tailscale's requests are always exactly 40 bytes: the 20-byte header, SOFTWARE = `tailnode`
//! and a trailing FINGERPRINT. derper ignores anything else, and so does
//! [`parse_binding_request`]. Responses carry only XOR-MAPPED-ADDRESS.
//!
//! This is hand-rolled rather than built on `stun_codec`: the formats are fixed byte layouts of a
//! few dozen bytes, the server side must be exactly as strict as derper (SOFTWARE value,
//! FINGERPRINT last and correct) which `stun_codec`'s generic decoder does not express, and the
//! client side must accept the non-standard v4-mapped family-0x02 answers derper sends from
//! dual-stack sockets. Reference: tailscale `net/stun/stun.go` (v1.90).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The STUN magic cookie (RFC 5389 §6).
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// The SOFTWARE value Tailscale clients send and derper requires.
pub const SOFTWARE: &[u8; 8] = b"tailnode";
/// Length of a Tailscale Binding Request.
pub const REQUEST_LEN: usize = 40;

const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Pre-RFC 5389 servers used this number for XOR-MAPPED-ADDRESS.
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const FINGERPRINT_ATTR_LEN: usize = 8;

/// A 96-bit STUN transaction ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TxId(pub [u8; 12]);

/// Why a datagram is not an acceptable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Too short, wrong leading bits or no magic cookie.
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message, but not a Binding Request.
    #[error("STUN message is not a Binding Request")]
    NotBindingRequest,
    /// A STUN message, but not a Binding Success response.
    #[error("STUN message is not a Binding Success response")]
    NotSuccessResponse,
    /// An attribute overruns the message.
    #[error("STUN message has malformed attributes")]
    MalformedAttributes,
    /// SOFTWARE is missing or not `tailnode`.
    #[error("STUN request did not come from Tailscale software (SOFTWARE is not \"tailnode\")")]
    WrongSoftware,
    /// The last attribute is not FINGERPRINT.
    #[error("STUN request does not end in a FINGERPRINT attribute")]
    NoFingerprint,
    /// FINGERPRINT does not match the message.
    #[error("STUN request has a wrong FINGERPRINT")]
    WrongFingerprint,
    /// The response has no usable (XOR-)MAPPED-ADDRESS.
    #[error("STUN response carries no usable mapped address")]
    NoAddress,
}

/// Whether `b` looks like STUN: at least a header, top two bits zero and the magic cookie.
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN
        && b.first().is_some_and(|b0| b0 & 0xC0 == 0)
        && b.get(4..8) == Some(&MAGIC_COOKIE[..])
}

/// Whether `b` is a STUN Binding request or response: the test magicsock uses to route a UDP
/// datagram to netcheck rather than to disco or WireGuard.
pub fn looks_like_binding(b: &[u8]) -> bool {
    is_stun(b) && b.get(1) == Some(&0x01)
}

/// The 40-byte Tailscale Binding Request for `tx`.
pub fn binding_request(tx: TxId) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    let body_len = (4 + SOFTWARE.len() + FINGERPRINT_ATTR_LEN) as u16;
    let mut w = Writer { buf: &mut b, at: 0 };
    w.put(&BINDING_REQUEST);
    w.put(&body_len.to_be_bytes());
    w.put(&MAGIC_COOKIE);
    w.put(&tx.0);
    w.put(&ATTR_SOFTWARE.to_be_bytes());
    w.put(&(SOFTWARE.len() as u16).to_be_bytes());
    w.put(SOFTWARE);
    let fp = fingerprint(w.written());
    w.put(&ATTR_FINGERPRINT.to_be_bytes());
    w.put(&4u16.to_be_bytes());
    w.put(&fp.to_be_bytes());
    b
}

/// Parses a Binding Request as strictly as derper: SOFTWARE must be `tailnode`, FINGERPRINT must
/// be the last attribute and correct. Returns the transaction ID to answer.
pub fn parse_binding_request(b: &[u8]) -> Result<TxId, StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    if b.get(..2) != Some(&BINDING_REQUEST[..]) {
        return Err(StunError::NotBindingRequest);
    }
    let tx = tx_id(b)?;
    let mut software_ok = false;
    let mut last_attr = None;
    let mut got_fp = None;
    for attr in Attributes::new(b.get(HEADER_LEN..).unwrap_or_default()) {
        let (ty, value) = attr?;
        last_attr = Some(ty);
        if ty == ATTR_SOFTWARE && value == SOFTWARE {
            software_ok = true;
        }
        if ty == ATTR_FINGERPRINT {
            got_fp = value.try_into().ok().map(u32::from_be_bytes);
        }
    }
    if !software_ok {
        return Err(StunError::WrongSoftware);
    }
    if last_attr != Some(ATTR_FINGERPRINT) {
        return Err(StunError::NoFingerprint);
    }
    // The fingerprint covers everything before the fingerprint attribute itself.
    let covered = b
        .len()
        .checked_sub(FINGERPRINT_ATTR_LEN)
        .and_then(|n| b.get(..n))
        .ok_or(StunError::NoFingerprint)?;
    if got_fp != Some(fingerprint(covered)) {
        return Err(StunError::WrongFingerprint);
    }
    Ok(tx)
}

/// A Binding Success response telling the client it was seen from `addr`, with a single
/// XOR-MAPPED-ADDRESS. IPv4 uses family 0x01; IPv6 (including v4-mapped, as derper sends from a
/// dual-stack socket) family 0x02. Servers should pass unmapped addresses.
pub fn binding_response(tx: TxId, addr: SocketAddr) -> Vec<u8> {
    let (family, ip_bytes): (u8, Vec<u8>) = match addr.ip() {
        IpAddr::V4(v4) => (0x01, v4.octets().to_vec()),
        IpAddr::V6(v6) => (0x02, v6.octets().to_vec()),
    };
    let attr_len = 4 + ip_bytes.len();
    let mut b = Vec::with_capacity(HEADER_LEN + 4 + attr_len);
    b.extend_from_slice(&BINDING_SUCCESS);
    b.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&tx.0);
    b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    b.extend_from_slice(&(attr_len as u16).to_be_bytes());
    b.push(0);
    b.push(family);
    b.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
    let mask = xor_mask(tx);
    b.extend(ip_bytes.iter().zip(mask.iter()).map(|(a, m)| a ^ m));
    b
}

/// Parses a Binding Success response: the transaction ID and the mapped address, taken from
/// XOR-MAPPED-ADDRESS (0x0020 or the legacy 0x8020), else from MAPPED-ADDRESS. A v4-mapped IPv6
/// result is returned as plain IPv4.
pub fn parse_binding_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    let tx = tx_id(b)?;
    if b.get(..2) != Some(&BINDING_SUCCESS[..]) {
        return Err(StunError::NotSuccessResponse);
    }
    let attrs_len = b
        .get(2..4)
        .and_then(|l| l.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or(StunError::NotStun)?;
    let body = b.get(HEADER_LEN..).unwrap_or_default();
    // Trailing bytes past the announced length are ignored, as in Go.
    let body = body
        .get(..usize::from(attrs_len))
        .ok_or(StunError::MalformedAttributes)?;
    let mut xor_addr = None;
    let mut plain_addr = None;
    for attr in Attributes::new(body) {
        let (ty, value) = attr?;
        match ty {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                xor_addr = Some(decode_address(value, Some(tx))?)
            }
            ATTR_MAPPED_ADDRESS => plain_addr = Some(decode_address(value, None)?),
            _ => {}
        }
    }
    xor_addr
        .or(plain_addr)
        .map(|a| (tx, a))
        .ok_or(StunError::NoAddress)
}

fn tx_id(b: &[u8]) -> Result<TxId, StunError> {
    b.get(8..20)
        .and_then(|t| t.try_into().ok())
        .map(TxId)
        .ok_or(StunError::NotStun)
}

/// The XOR mask for addresses: magic cookie then transaction ID.
fn xor_mask(tx: TxId) -> [u8; 16] {
    let mut m = [0u8; 16];
    for (dst, src) in m.iter_mut().zip(MAGIC_COOKIE.iter().chain(tx.0.iter())) {
        *dst = *src;
    }
    m
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `tx` is `Some` for the XOR form.
fn decode_address(v: &[u8], tx: Option<TxId>) -> Result<SocketAddr, StunError> {
    let (&[_, family, p0, p1], rest) = v
        .split_first_chunk::<4>()
        .ok_or(StunError::MalformedAttributes)?;
    let mut port = u16::from_be_bytes([p0, p1]);
    let mask = tx.map(xor_mask).unwrap_or([0; 16]);
    if tx.is_some() {
        port ^= 0x2112;
    }
    let ip = match family {
        0x01 => {
            let raw: [u8; 4] = rest
                .get(..4)
                .and_then(|r| r.try_into().ok())
                .ok_or(StunError::MalformedAttributes)?;
            IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|i| {
                raw[i] ^ mask[i]
            })))
        }
        0x02 => {
            let raw: [u8; 16] = rest
                .get(..16)
                .and_then(|r| r.try_into().ok())
                .ok_or(StunError::MalformedAttributes)?;
            let v6 = Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| raw[i] ^ mask[i]));
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return Err(StunError::MalformedAttributes),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Iterates `(type, value)` over STUN attributes (values without their 4-byte padding).
struct Attributes<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Attributes<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self {
            rest,
            failed: false,
        }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let (&[t0, t1, l0, l1], after) = self.rest.split_first_chunk::<4>()?;
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            let padded = (len + 3) & !3;
            let value = after.get(..len)?;
            // A final attribute may omit its padding only if the declared padding still fits;
            // Go demands the padded length, and so do we.
            let next = after.get(padded..)?;
            Some((u16::from_be_bytes([t0, t1]), value, next))
        })();
        match parsed {
            Some((ty, value, next)) => {
                self.rest = next;
                Some(Ok((ty, value)))
            }
            None => {
                self.failed = true;
                Some(Err(StunError::MalformedAttributes))
            }
        }
    }
}

/// STUN FINGERPRINT: CRC-32 (IEEE) of the message so far, XORed with 0x5354554E.
fn fingerprint(b: &[u8]) -> u32 {
    crc32_ieee(b) ^ FINGERPRINT_XOR
}

/// Bitwise CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320). STUN messages are 32 bytes
/// here, so a table buys nothing.
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A cursor over a fixed-size buffer whose total size is known at compile time.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        // Only called with the constant layout of `binding_request`, which fits exactly.
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }

    fn written(&self) -> &[u8] {
        self.buf.get(..self.at).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TX: TxId = TxId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn request_layout_matches_tailscale() {
        let r = binding_request(TX);
        assert_eq!(&r[..4], &[0x00, 0x01, 0x00, 0x14]);
        assert_eq!(&r[4..8], &MAGIC_COOKIE);
        assert_eq!(&r[8..20], &TX.0);
        assert_eq!(&r[20..24], &[0x80, 0x22, 0x00, 0x08]);
        assert_eq!(&r[24..32], b"tailnode");
        assert_eq!(&r[32..36], &[0x80, 0x28, 0x00, 0x04]);
        let fp = u32::from_be_bytes([r[36], r[37], r[38], r[39]]);
        assert_eq!(fp, crc32_ieee(&r[..32]) ^ 0x5354_554E);
        assert_eq!(parse_binding_request(&r), Ok(TX));
        assert!(looks_like_binding(&r));
    }

    /// The request for TxID 0x01..0x0c, with the FINGERPRINT computed independently (Python's
    /// `zlib.crc32`, the same IEEE CRC as Go's `crc32.ChecksumIEEE`).
    #[test]
    fn request_matches_reference_bytes() {
        let want = hex_bytes(
            "000100142112a4420102030405060708090a0b0c802200087461696c6e6f646580280004b32c370f",
        );
        assert_eq!(binding_request(TX).to_vec(), want);
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn strict_request_checks() {
        let good = binding_request(TX);
        let mut bad_fp = good;
        bad_fp[39] ^= 1;
        assert_eq!(
            parse_binding_request(&bad_fp),
            Err(StunError::WrongFingerprint)
        );
        let mut bad_sw = good;
        bad_sw[24] = b'X';
        assert_eq!(
            parse_binding_request(&bad_sw),
            Err(StunError::WrongSoftware)
        );
        let mut not_req = good;
        not_req[1] = 0x11;
        assert_eq!(
            parse_binding_request(&not_req),
            Err(StunError::NotBindingRequest)
        );
        let mut no_cookie = good;
        no_cookie[4] = 0;
        assert_eq!(parse_binding_request(&no_cookie), Err(StunError::NotStun));
        // No fingerprint at all.
        let mut short = good[..32].to_vec();
        short[3] = 12;
        assert_eq!(parse_binding_request(&short), Err(StunError::NoFingerprint));
        assert_eq!(
            parse_binding_request(&good[..38]),
            Err(StunError::MalformedAttributes)
        );
        assert_eq!(parse_binding_request(&[]), Err(StunError::NotStun));
    }

    #[test]
    fn response_round_trips_v4_and_v6() {
        for addr in ["192.0.2.7:41641", "[2001:db8::1]:3478", "127.0.0.1:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let resp = binding_response(TX, addr);
            assert!(looks_like_binding(&resp));
            assert_eq!(parse_binding_response(&resp), Ok((TX, addr)));
        }
    }

    #[test]
    fn response_unmaps_v4_mapped() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:41641".parse().unwrap();
        let resp = binding_response(TX, mapped);
        assert_eq!(resp[25], 0x02, "family 2 on the wire, as derper sends");
        assert_eq!(
            parse_binding_response(&resp),
            Ok((TX, "192.0.2.7:41641".parse().unwrap()))
        );
    }

    #[test]
    fn response_xor_bytes_match_rfc_layout() {
        let resp = binding_response(TX, "192.0.2.1:32853".parse().unwrap());
        assert_eq!(&resp[..4], &[0x01, 0x01, 0x00, 0x0c]);
        assert_eq!(&resp[20..24], &[0x00, 0x20, 0x00, 0x08]);
        // RFC 5769 §2.2 style: port 32853 ^ 0x2112 = 0xa147; 192.0.2.1 ^ cookie = e1 12 a6 43.
        assert_eq!(&resp[26..32], &[0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
    }

    #[test]
    fn response_falls_back_to_mapped_address() {
        let mut b = vec![0x01, 0x01, 0x00, 0x0c];
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&TX.0);
        b.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x12, 0x34, 10, 0, 0, 1]);
        assert_eq!(
            parse_binding_response(&b),
            Ok((TX, "10.0.0.1:4660".parse().unwrap()))
        );
        b[1] = 0x11;
        assert_eq!(
            parse_binding_response(&b),
            Err(StunError::NotSuccessResponse)
        );
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..120), cookie in any::<bool>()) {
                if cookie && b.len() >= 8 {
                    b[0] &= 0x3f;
                    b[4..8].copy_from_slice(&MAGIC_COOKIE);
                }
                let _ = parse_binding_request(&b);
                let _ = parse_binding_response(&b);
            }
        }
    }
}
