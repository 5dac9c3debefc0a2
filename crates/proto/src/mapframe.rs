//! The map stream's framing, sans-IO: each message is a u32 LITTLE-endian length followed by
//! that many bytes of a zstd frame whose content is one JSON `MapResponse`.
//!
//! The server encodes with [`encode`] (or a reusable [`MapFrameEncoder`]) and flushes after
//! each message. The client feeds body bytes in whatever chunks HTTP/2 delivers them to
//! [`MapFrameDecoder::feed`] and pulls whole JSON messages from
//! [`MapFrameDecoder::next_message`]. The decoder refuses frames and decompressed messages over
//! its limits with an error before allocating for them, so a hostile or broken peer cannot make
//! it run out of memory. The v1.90 Go client always zstd-decodes, so plain JSON is never sent.

use std::io::Read;

use zstd::zstd_safe;

/// The zstd level [`encode`] uses: fast, as Tailscale's and Headscale's servers use.
pub const DEFAULT_LEVEL: i32 = 1;
/// Default cap on one compressed frame.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 << 20;
/// Default cap on one decompressed JSON message.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 << 20;
/// The length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a map frame could not be encoded or decoded. Decoding errors are sticky: after one, the
/// stream is out of sync and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapFrameError {
    /// A frame's length prefix is over the decoder's limit.
    #[error("map frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// A frame decompresses to more than the decoder's limit.
    #[error("map message decompresses to more than the limit of {max} bytes")]
    MessageTooLarge { max: usize },
    /// A frame has length zero, which no zstd frame can have.
    #[error("empty map frame (length 0)")]
    EmptyFrame,
    /// The frame is not valid zstd.
    #[error("map frame is not valid zstd: {0}")]
    Decompress(String),
    /// Compression failed.
    #[error("zstd compression of a map message failed: {0}")]
    Compress(String),
    /// The compressed message does not fit the u32 length prefix.
    #[error("map message of {len} compressed bytes does not fit a u32 length")]
    TooLargeToEncode { len: usize },
}

/// Appends one framed message (`u32 LE length | zstd(json)`) to `out` at [`DEFAULT_LEVEL`].
pub fn encode(json: &[u8], out: &mut Vec<u8>) -> Result<(), MapFrameError> {
    MapFrameEncoder::new()?.encode(json, out)
}

/// A zstd compressor kept across messages, so a long map stream reuses one context.
pub struct MapFrameEncoder {
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for MapFrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapFrameEncoder").finish_non_exhaustive()
    }
}

impl MapFrameEncoder {
    /// An encoder at [`DEFAULT_LEVEL`].
    pub fn new() -> Result<Self, MapFrameError> {
        Self::with_level(DEFAULT_LEVEL)
    }

    /// An encoder at zstd `level` (1 = fastest of the normal levels, 3 = zstd's default).
    pub fn with_level(level: i32) -> Result<Self, MapFrameError> {
        let compressor = zstd::bulk::Compressor::new(level)
            .map_err(|e| MapFrameError::Compress(e.to_string()))?;
        Ok(Self { compressor })
    }

    /// Appends one framed message to `out`.
    pub fn encode(&mut self, json: &[u8], out: &mut Vec<u8>) -> Result<(), MapFrameError> {
        let start = out.len();
        let body_start = start + LEN_PREFIX;
        out.resize(body_start + zstd_safe::compress_bound(json.len()), 0);
        let dst = out.get_mut(body_start..).unwrap_or_default();
        let written = match self.compressor.compress_to_buffer(json, dst) {
            Ok(n) => n,
            Err(e) => {
                out.truncate(start);
                return Err(MapFrameError::Compress(e.to_string()));
            }
        };
        let Ok(len) = u32::try_from(written) else {
            out.truncate(start);
            return Err(MapFrameError::TooLargeToEncode { len: written });
        };
        out.truncate(body_start + written);
        if let Some(prefix) = out.get_mut(start..body_start) {
            prefix.copy_from_slice(&len.to_le_bytes());
        }
        Ok(())
    }
}

/// Incremental decoder of a map stream body.
pub struct MapFrameDecoder {
    buf: Vec<u8>,
    /// Start of the first undecoded frame in `buf`.
    pos: usize,
    max_frame_len: usize,
    max_message_len: usize,
    dctx: zstd_safe::DCtx<'static>,
    failed: Option<MapFrameError>,
}

impl std::fmt::Debug for MapFrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapFrameDecoder")
            .field("buffered", &self.buffered_len())
            .field("max_frame_len", &self.max_frame_len)
            .field("max_message_len", &self.max_message_len)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Default for MapFrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MapFrameDecoder {
    /// A decoder with [`DEFAULT_MAX_FRAME_LEN`] and [`DEFAULT_MAX_MESSAGE_LEN`].
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_MESSAGE_LEN)
    }

    /// A decoder refusing compressed frames over `max_frame_len` and messages that decompress
    /// to more than `max_message_len` bytes.
    pub fn with_limits(max_frame_len: usize, max_message_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max_frame_len,
            max_message_len,
            dctx: zstd_safe::DCtx::create(),
            failed: None,
        }
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends received body bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole message's JSON, `Ok(None)` if more bytes are needed. Oversize frames are
    /// refused as soon as their length prefix arrives.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, MapFrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.decode_one() {
            Ok(msg) => Ok(msg),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn decode_one(&mut self) -> Result<Option<Vec<u8>>, MapFrameError> {
        let avail = self.buf.get(self.pos..).unwrap_or_default();
        let Some((len, rest)) = avail.split_first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > self.max_frame_len {
            return Err(MapFrameError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if len == 0 {
            return Err(MapFrameError::EmptyFrame);
        }
        let Some(frame) = rest.get(..len) else {
            return Ok(None);
        };
        let decoder = zstd::stream::read::Decoder::with_context(frame, &mut self.dctx);
        let mut json = Vec::new();
        // Read one byte past the limit to tell "exactly at the limit" from "over it".
        let limit = self.max_message_len as u64 + 1;
        decoder
            .take(limit)
            .read_to_end(&mut json)
            .map_err(|e| MapFrameError::Decompress(e.to_string()))?;
        if json.len() > self.max_message_len {
            return Err(MapFrameError::MessageTooLarge {
                max: self.max_message_len,
            });
        }
        self.pos += LEN_PREFIX + len;
        Ok(Some(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> Vec<u8> {
        format!(
            r#"{{"KeepAlive":false,"Seq":{i},"Peers":[{}]}}"#,
            "{\"ID\":1},".repeat(i) + "{}"
        )
        .into_bytes()
    }

    #[test]
    fn round_trip_several_messages() {
        let mut wire = Vec::new();
        let mut enc = MapFrameEncoder::new().unwrap();
        for i in 0..5 {
            enc.encode(&sample(i * 100), &mut wire).unwrap();
        }
        let mut dec = MapFrameDecoder::new();
        dec.feed(&wire);
        for i in 0..5 {
            assert_eq!(dec.next_message().unwrap(), Some(sample(i * 100)));
        }
        assert_eq!(dec.next_message().unwrap(), None);
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn length_prefix_is_little_endian_and_body_is_zstd() {
        let json = br#"{"KeepAlive":true}"#;
        let mut wire = Vec::new();
        encode(json, &mut wire).unwrap();
        let len = u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 4);
        assert_eq!(&wire[4..8], &[0x28, 0xb5, 0x2f, 0xfd], "zstd frame magic");
        assert_eq!(zstd::decode_all(&wire[4..]).unwrap(), json);
    }

    #[test]
    fn chunked_feeding_byte_by_byte() {
        let mut wire = Vec::new();
        encode(&sample(50), &mut wire).unwrap();
        encode(&sample(3), &mut wire).unwrap();
        let mut dec = MapFrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            dec.feed(std::slice::from_ref(b));
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![sample(50), sample(3)]);
    }

    #[test]
    fn oversize_frame_rejected_from_its_prefix() {
        let mut dec = MapFrameDecoder::with_limits(1000, 1 << 20);
        dec.feed(&5000u32.to_le_bytes());
        assert_eq!(
            dec.next_message(),
            Err(MapFrameError::FrameTooLarge {
                len: 5000,
                max: 1000
            })
        );
        // Sticky: the stream is out of sync now.
        dec.feed(b"more");
        assert!(dec.next_message().is_err());
    }

    #[test]
    fn decompression_bomb_rejected() {
        let json = vec![b' '; 1 << 20];
        let mut wire = Vec::new();
        encode(&json, &mut wire).unwrap();
        assert!(wire.len() < 1000, "a megabyte of spaces compresses well");
        let mut dec = MapFrameDecoder::with_limits(1 << 20, 64 * 1024);
        dec.feed(&wire);
        assert_eq!(
            dec.next_message(),
            Err(MapFrameError::MessageTooLarge { max: 64 * 1024 })
        );
    }

    #[test]
    fn message_exactly_at_limit_is_fine() {
        let json = vec![b'x'; 4096];
        let mut wire = Vec::new();
        encode(&json, &mut wire).unwrap();
        let mut dec = MapFrameDecoder::with_limits(1 << 20, 4096);
        dec.feed(&wire);
        assert_eq!(dec.next_message().unwrap(), Some(json));
    }

    #[test]
    fn garbage_and_truncated_frames_are_errors() {
        let mut dec = MapFrameDecoder::new();
        dec.feed(&8u32.to_le_bytes());
        dec.feed(b"notzstd!");
        assert!(matches!(
            dec.next_message(),
            Err(MapFrameError::Decompress(_))
        ));

        // A length prefix that cuts a real zstd frame short.
        let mut wire = Vec::new();
        encode(&sample(20), &mut wire).unwrap();
        let short = (wire.len() - 4 - 5) as u32;
        let mut cut = short.to_le_bytes().to_vec();
        cut.extend_from_slice(&wire[4..4 + short as usize]);
        let mut dec = MapFrameDecoder::new();
        dec.feed(&cut);
        assert!(matches!(
            dec.next_message(),
            Err(MapFrameError::Decompress(_))
        ));

        let mut dec = MapFrameDecoder::new();
        dec.feed(&[0, 0, 0, 0]);
        assert_eq!(dec.next_message(), Err(MapFrameError::EmptyFrame));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..200 {
            let mut bytes = Vec::new();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                bytes.push(seed as u8);
            }
            let mut dec = MapFrameDecoder::with_limits(1 << 16, 1 << 16);
            dec.feed(&bytes);
            let _ = dec.next_message();
        }
    }
}
