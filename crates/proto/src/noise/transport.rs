//! The ts2021 record layer, sans-IO: frames of `0x04 | u16 BE length | ciphertext`.
//!
//! Each frame is at most [`MAX_FRAME_LEN`] (4096) bytes including its 3-byte header, so it holds
//! at most [`MAX_PLAINTEXT_LEN`] (4077) plaintext bytes. Records are ChaCha20-Poly1305 with empty
//! associated data and the nonce `4 zero bytes ‖ u64 BIG-endian counter`, counting from 0 per
//! direction. The byte order differs from the Noise spec (little-endian), which is why a stock
//! Noise transport cannot interoperate with Tailscale.
//!
//! Drive it with bytes: [`Sealer::seal`] appends frames for any amount of plaintext to a caller
//! buffer; [`Opener::feed`] takes ciphertext in arbitrary chunks and [`Opener::read`] (or
//! [`Opener::plaintext`] + [`Opener::consume`]) drains the plaintext. Any frame type other than
//! 4, a length over the maximum or an authentication failure is fatal: the opener keeps
//! returning that error, because the two sides' counters can no longer agree.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag};

use super::handshake::MSG_TYPE_RECORD;
use super::symmetric::TAG_LEN;
use crate::keys::MachinePublic;

/// Largest frame on the wire, header included.
pub const MAX_FRAME_LEN: usize = 4096;
/// The record header: type and u16 BE ciphertext length.
pub const FRAME_HEADER_LEN: usize = 3;
/// Largest ciphertext (plaintext + tag) in one frame.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_FRAME_LEN - FRAME_HEADER_LEN;
/// Largest plaintext in one frame.
pub const MAX_PLAINTEXT_LEN: usize = MAX_CIPHERTEXT_LEN - TAG_LEN;

/// Why the record layer failed. All of these end the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer sent a frame that is not a transport record.
    #[error("received Noise frame of type {got}, want {MSG_TYPE_RECORD} (record)")]
    UnexpectedFrameType { got: u8 },
    /// The peer announced a frame larger than the protocol allows.
    #[error("Noise frame of {len} bytes exceeds the maximum of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge { len: usize },
    /// The peer sent a record too short to even hold the authentication tag.
    #[error("Noise record of {len} bytes is shorter than its {TAG_LEN}-byte tag")]
    FrameTooShort { len: usize },
    /// A record failed authentication: tampered, corrupted, or out of sequence.
    #[error("Noise record failed authentication (tampered, corrupted or out of sequence)")]
    Decrypt,
    /// 2^64-1 records went over one key; the connection cannot continue safely.
    #[error("Noise cipher exhausted: no more nonces available on this key")]
    NonceExhausted,
    /// API misuse: [`Sealer::seal_frame`] was given more than one frame's worth of plaintext.
    #[error("one Noise record holds at most {MAX_PLAINTEXT_LEN} plaintext bytes, got {len}")]
    PlaintextTooLarge { len: usize },
}

/// The 12-byte ts2021 nonce for `counter`: 4 zero bytes then the counter big-endian.
pub fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// The number of wire bytes [`Sealer::seal`] produces for `plaintext_len` bytes.
pub fn sealed_len(plaintext_len: usize) -> usize {
    let frames = plaintext_len.div_ceil(MAX_PLAINTEXT_LEN);
    plaintext_len + frames * (FRAME_HEADER_LEN + TAG_LEN)
}

/// The result of a finished handshake: a sealer, an opener, and who is on the other side.
pub struct Transport {
    sealer: Sealer,
    opener: Opener,
    peer: MachinePublic,
    version: u16,
    handshake_hash: [u8; 32],
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.peer)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Builds a transport from raw split keys. `tx_key` seals what we send, `rx_key` opens what
    /// we receive. The handshake fills in the rest; tests and benches may build one directly.
    pub fn new(
        tx_key: [u8; 32],
        rx_key: [u8; 32],
        peer: MachinePublic,
        version: u16,
        handshake_hash: [u8; 32],
    ) -> Self {
        Self {
            sealer: Sealer::new(tx_key),
            opener: Opener::new(rx_key),
            peer,
            version,
            handshake_hash,
        }
    }

    /// The peer's static key: the client's machine key on the server, the server key on the
    /// client.
    pub fn peer(&self) -> MachinePublic {
        self.peer
    }

    /// The protocol (capability) version from the initiation header.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The final Noise handshake hash, which binds other messages to this connection.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// The sending half.
    pub fn sealer_mut(&mut self) -> &mut Sealer {
        &mut self.sealer
    }

    /// The receiving half.
    pub fn opener_mut(&mut self) -> &mut Opener {
        &mut self.opener
    }

    /// Splits into the sending and receiving halves.
    pub fn into_parts(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

/// Seals plaintext into records. The key is wiped when dropped (by chacha20poly1305).
pub struct Sealer {
    aead: ChaCha20Poly1305,
    counter: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer starting at counter 0.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(&key.into()),
            counter: 0,
        }
    }

    /// The counter the next record will use.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Appends `plaintext` to `out` as records of at most [`MAX_PLAINTEXT_LEN`] bytes each.
    /// Empty plaintext produces nothing. Encrypts in place in `out`; the only allocation is
    /// `out` growing.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        out.reserve(sealed_len(plaintext.len()));
        for chunk in plaintext.chunks(MAX_PLAINTEXT_LEN) {
            self.seal_frame(chunk, out)?;
        }
        Ok(())
    }

    /// Appends exactly one record holding `chunk` (which may be empty) to `out`.
    pub fn seal_frame(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        if chunk.len() > MAX_PLAINTEXT_LEN {
            return Err(TransportError::PlaintextTooLarge { len: chunk.len() });
        }
        // Go treats counter 2^64-1 as invalid, so the last usable one is 2^64-2.
        if self.counter == u64::MAX {
            return Err(TransportError::NonceExhausted);
        }
        let start = out.len();
        out.push(MSG_TYPE_RECORD);
        out.extend_from_slice(&((chunk.len() + TAG_LEN) as u16).to_be_bytes());
        out.extend_from_slice(chunk);
        let body = out.get_mut(start + FRAME_HEADER_LEN..).unwrap_or_default();
        let sealed = self
            .aead
            .encrypt_in_place_detached(&nonce(self.counter).into(), &[], body);
        let Ok(tag) = sealed else {
            out.truncate(start);
            return Err(TransportError::PlaintextTooLarge { len: chunk.len() });
        };
        out.extend_from_slice(&tag);
        self.counter += 1;
        Ok(())
    }
}

/// Opens records fed in arbitrary chunks and hands out their plaintext. Zero-length records are
/// skipped. Buffers whatever it is fed; callers bound memory by not feeding more while
/// plaintext is waiting to be read.
pub struct Opener {
    aead: ChaCha20Poly1305,
    counter: u64,
    /// Received bytes; `buf[..filled]` is valid, the rest is scratch for [`Self::recv_buf`].
    buf: Vec<u8>,
    filled: usize,
    /// Start of the first frame not yet decrypted.
    pos: usize,
    /// Decrypted plaintext not yet consumed: `buf[plain_start..plain_end]`.
    plain_start: usize,
    plain_end: usize,
    failed: Option<TransportError>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("counter", &self.counter)
            .field("buffered", &self.buffered_len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener expecting counter 0 next.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(&key.into()),
            counter: 0,
            buf: Vec::new(),
            filled: 0,
            pos: 0,
            plain_start: 0,
            plain_end: 0,
            failed: None,
        }
    }

    /// The counter the next record must carry.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Bytes held: undelivered plaintext plus ciphertext of incomplete frames.
    pub fn buffered_len(&self) -> usize {
        (self.plain_end - self.plain_start) + (self.filled - self.pos)
    }

    /// Whether ciphertext of a frame that has not fully arrived is buffered (an EOF now would
    /// cut a record in half).
    pub fn has_partial_frame(&self) -> bool {
        self.filled > self.pos
    }

    /// Appends received ciphertext.
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.truncate(self.filled);
        self.buf.extend_from_slice(data);
        self.filled = self.buf.len();
    }

    /// A writable buffer of `len` bytes for reading ciphertext straight from a socket; follow it
    /// with [`Self::commit_recv`] saying how many bytes were written.
    pub fn recv_buf(&mut self, len: usize) -> &mut [u8] {
        self.compact();
        self.buf.resize(self.filled + len, 0);
        let filled = self.filled;
        self.buf.get_mut(filled..).unwrap_or_default()
    }

    /// Marks `n` bytes of the last [`Self::recv_buf`] as received.
    pub fn commit_recv(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Copies available plaintext into `dst`, decrypting buffered records as needed. Returns 0
    /// when more ciphertext is needed (or `dst` is empty).
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, TransportError> {
        let plain = self.plaintext()?;
        let n = plain.len().min(dst.len());
        dst[..n].copy_from_slice(&plain[..n]);
        self.consume(n);
        Ok(n)
    }

    /// The decrypted plaintext available now (empty when more ciphertext is needed). Decrypts
    /// buffered records until some plaintext is available; does not consume it.
    pub fn plaintext(&mut self) -> Result<&[u8], TransportError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        while self.plain_start == self.plain_end {
            match self.open_next() {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => {
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
        }
        Ok(self
            .buf
            .get(self.plain_start..self.plain_end)
            .unwrap_or_default())
    }

    /// Marks `n` plaintext bytes (from [`Self::plaintext`]) as consumed.
    pub fn consume(&mut self, n: usize) {
        self.plain_start = (self.plain_start + n).min(self.plain_end);
    }

    /// Decrypts the next whole frame in place. `Ok(false)` when no whole frame is buffered.
    fn open_next(&mut self) -> Result<bool, TransportError> {
        let avail = self.buf.get(self.pos..self.filled).unwrap_or_default();
        let Some(&[ty, hi, lo]) = avail.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(false);
        };
        if ty != MSG_TYPE_RECORD {
            return Err(TransportError::UnexpectedFrameType { got: ty });
        }
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let total = FRAME_HEADER_LEN + len;
        if total > MAX_FRAME_LEN {
            return Err(TransportError::FrameTooLarge { len: total });
        }
        if len < TAG_LEN {
            return Err(TransportError::FrameTooShort { len });
        }
        if avail.len() < total {
            return Ok(false);
        }
        if self.counter == u64::MAX {
            return Err(TransportError::NonceExhausted);
        }
        let body_start = self.pos + FRAME_HEADER_LEN;
        let tag_start = self.pos + total - TAG_LEN;
        let Some(frame) = self.buf.get_mut(body_start..self.pos + total) else {
            return Ok(false);
        };
        let (body, tag) = frame.split_at_mut(tag_start - body_start);
        let tag = Tag::clone_from_slice(tag);
        self.aead
            .decrypt_in_place_detached(&nonce(self.counter).into(), &[], body, &tag)
            .map_err(|_| TransportError::Decrypt)?;
        self.counter += 1;
        self.pos += total;
        self.plain_start = body_start;
        self.plain_end = tag_start;
        Ok(true)
    }

    /// Moves unconsumed bytes to the front of the buffer so it does not grow without bound.
    fn compact(&mut self) {
        let keep_from = if self.plain_start < self.plain_end {
            self.plain_start
        } else {
            self.pos
        };
        if keep_from == 0 {
            return;
        }
        self.buf.copy_within(keep_from..self.filled, 0);
        self.filled -= keep_from;
        self.pos -= keep_from;
        self.plain_start = self.plain_start.saturating_sub(keep_from);
        self.plain_end = self.plain_end.saturating_sub(keep_from);
        self.buf.truncate(self.filled);
    }
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::aead::Aead;
    use proptest::prelude::*;

    use super::*;

    const K: [u8; 32] = [7; 32];

    fn open_all(opener: &mut Opener) -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = opener.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Splits a wire buffer into frames by their headers.
    fn frames(wire: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = wire;
        while !rest.is_empty() {
            let len = 3 + usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn nonce_is_big_endian_known_answer() {
        assert_eq!(nonce(1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(nonce(0x0102), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);

        let mut sealer = Sealer::new(K);
        let mut wire = Vec::new();
        sealer.seal_frame(b"counter zero", &mut wire).unwrap();
        wire.clear();
        sealer.seal_frame(b"counter one", &mut wire).unwrap();
        let direct = ChaCha20Poly1305::new(&K.into())
            .encrypt(
                &[
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
                ]
                .into(),
                &b"counter one"[..],
            )
            .unwrap();
        assert_eq!(wire[0], 0x04);
        assert_eq!(
            u16::from_be_bytes([wire[1], wire[2]]) as usize,
            direct.len()
        );
        assert_eq!(&wire[3..], &direct[..]);
    }

    #[test]
    fn large_writes_split_into_max_size_frames() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut sealer = Sealer::new(K);
        let mut wire = Vec::new();
        sealer.seal(&data, &mut wire).unwrap();
        assert_eq!(wire.len(), sealed_len(data.len()));
        let sizes: Vec<usize> = frames(&wire).iter().map(|f| f.len()).collect();
        assert_eq!(sizes, vec![4096, 4096, 10_000 - 2 * 4077 + 19]);
        assert!(frames(&wire).iter().all(|f| f[0] == 0x04));
        assert_eq!(sealer.counter(), 3);

        let mut opener = Opener::new(K);
        opener.feed(&wire);
        assert_eq!(open_all(&mut opener).unwrap(), data);
        assert_eq!(opener.counter(), 3);
    }

    #[test]
    fn one_frame_holds_at_most_4077_bytes() {
        let mut sealer = Sealer::new(K);
        let mut wire = Vec::new();
        sealer
            .seal_frame(&[0u8; MAX_PLAINTEXT_LEN], &mut wire)
            .unwrap();
        assert_eq!(wire.len(), MAX_FRAME_LEN);
        assert_eq!(
            sealer.seal_frame(&[0u8; MAX_PLAINTEXT_LEN + 1], &mut wire),
            Err(TransportError::PlaintextTooLarge { len: 4078 })
        );
        assert_eq!(
            wire.len(),
            MAX_FRAME_LEN,
            "a refused frame leaves no bytes behind"
        );
    }

    #[test]
    fn empty_frames_are_legal_and_skipped() {
        let mut sealer = Sealer::new(K);
        let mut wire = Vec::new();
        sealer.seal_frame(&[], &mut wire).unwrap();
        sealer.seal_frame(&[], &mut wire).unwrap();
        sealer.seal(b"after two empty frames", &mut wire).unwrap();
        sealer.seal(b"", &mut wire).unwrap(); // `seal` with nothing writes nothing
        assert_eq!(sealer.counter(), 3);
        let mut opener = Opener::new(K);
        opener.feed(&wire);
        assert_eq!(opener.plaintext().unwrap(), b"after two empty frames");
        opener.consume(6);
        assert_eq!(open_all(&mut opener).unwrap(), b"two empty frames");
    }

    #[test]
    fn byte_at_a_time_feeding() {
        let mut sealer = Sealer::new(K);
        let mut wire = Vec::new();
        let data = vec![0xabu8; 9000];
        sealer.seal(&data, &mut wire).unwrap();
        let mut opener = Opener::new(K);
        let mut got = Vec::new();
        for b in &wire {
            opener.feed(std::slice::from_ref(b));
            got.extend(open_all(&mut opener).unwrap());
        }
        assert_eq!(got, data);
        assert!(!opener.has_partial_frame());
    }

    #[test]
    fn tampered_frames_are_fatal() {
        let mut wire = Vec::new();
        Sealer::new(K).seal(b"do not touch", &mut wire).unwrap();
        for i in 3..wire.len() {
            let mut t = wire.clone();
            t[i] ^= 0x40;
            let mut opener = Opener::new(K);
            opener.feed(&t);
            assert_eq!(opener.plaintext().unwrap_err(), TransportError::Decrypt);
            // The connection stays dead even if good bytes follow.
            opener.feed(&wire);
            assert_eq!(opener.plaintext().unwrap_err(), TransportError::Decrypt);
        }
    }

    #[test]
    fn replayed_or_reordered_frames_fail() {
        let mut sealer = Sealer::new(K);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sealer.seal(b"one", &mut a).unwrap();
        sealer.seal(b"two", &mut b).unwrap();
        let mut opener = Opener::new(K);
        opener.feed(&b);
        assert_eq!(opener.plaintext().unwrap_err(), TransportError::Decrypt);
        let mut opener = Opener::new(K);
        opener.feed(&a);
        opener.feed(&a);
        assert_eq!(opener.plaintext().unwrap(), b"one");
        opener.consume(3);
        assert_eq!(opener.plaintext().unwrap_err(), TransportError::Decrypt);
    }

    #[test]
    fn wrong_frame_types_and_sizes_are_fatal() {
        for ty in [0x00, 0x01, 0x02, 0x03, 0x05, 0xff] {
            let mut opener = Opener::new(K);
            opener.feed(&[ty, 0x00, 0x20]);
            assert_eq!(
                opener.plaintext().unwrap_err(),
                TransportError::UnexpectedFrameType { got: ty }
            );
        }
        // Oversize is caught from the header alone, before the body arrives.
        let mut opener = Opener::new(K);
        opener.feed(&[0x04, 0x10, 0x00]);
        assert_eq!(
            opener.plaintext().unwrap_err(),
            TransportError::FrameTooLarge { len: 4099 }
        );
        let mut opener = Opener::new(K);
        opener.feed(&[0x04, 0x0f, 0xfd]);
        assert_eq!(
            opener.plaintext().unwrap(),
            b"",
            "4093-byte ciphertext is allowed; waiting"
        );
        let mut opener = Opener::new(K);
        opener.feed(&[0x04, 0x00, 0x0f]);
        assert_eq!(
            opener.plaintext().unwrap_err(),
            TransportError::FrameTooShort { len: 15 }
        );
    }

    #[test]
    fn recv_buf_and_commit() {
        let mut wire = Vec::new();
        Sealer::new(K).seal(b"direct read", &mut wire).unwrap();
        let mut opener = Opener::new(K);
        let buf = opener.recv_buf(100);
        buf[..wire.len()].copy_from_slice(&wire);
        opener.commit_recv(wire.len());
        assert_eq!(opener.plaintext().unwrap(), b"direct read");
    }

    proptest! {
        #[test]
        fn opener_never_panics_on_arbitrary_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            frame_prefix in any::<bool>(),
        ) {
            let mut opener = Opener::new(K);
            for chunk in &chunks {
                let mut chunk = chunk.clone();
                if frame_prefix && chunk.len() >= 3 {
                    chunk[0] = 0x04; // reach the length and AEAD checks
                }
                opener.feed(&chunk);
                let mut buf = [0u8; 64];
                while let Ok(n) = opener.read(&mut buf) {
                    if n == 0 { break; }
                }
            }
        }

        #[test]
        fn seal_open_round_trip(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            cut in 1usize..5000,
        ) {
            let mut wire = Vec::new();
            Sealer::new(K).seal(&data, &mut wire).unwrap();
            prop_assert!(frames(&wire).iter().all(|f| f.len() <= MAX_FRAME_LEN));
            let mut opener = Opener::new(K);
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                opener.feed(chunk);
                got.extend(open_all(&mut opener).unwrap());
            }
            prop_assert_eq!(got, data);
        }
    }
}
