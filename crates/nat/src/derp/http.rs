//! Tiny HTTP/1.1 helpers shared by the DERP listener and dialer: read one message head and keep
//! whatever bytes followed it.
//!
//! The DERP upgrade is hand-parsed (with `httparse`) instead of going through hyper because
//! derper's fast-start mode must answer an upgrade with *no* HTTP response at all, and because
//! the DERP frames that follow the head (possibly in the same TCP segment) must be handed to the
//! sans-IO codec byte-exactly; a raw stream makes both trivial.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request or response head accepted.
pub(crate) const MAX_HEAD: usize = 16 << 10;

/// Reads until the blank line that ends an HTTP head. Returns the head (including the blank
/// line) and any bytes already read past it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP head larger than 16 KiB",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the HTTP head ended",
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_bytes_after_the_head() {
        let mut input: &[u8] = b"GET /derp HTTP/1.1\r\nUpgrade: DERP\r\n\r\n\x02\x00\x00";
        let (head, rest) = read_head(&mut input).await.unwrap();
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(rest, b"\x02\x00\x00");
        let mut short: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_head(&mut short).await.is_err());
    }
}
