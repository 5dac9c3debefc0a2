//! Async adapter (feature `tokio`): [`NoiseStream`] runs the ts2021 record layer over any tokio
//! `AsyncRead + AsyncWrite`, so hyper's HTTP/2 client and server can run inside Noise.
//!
//! This is an I/O module: it owns a socket-like object and, in [`server_accept`], draws the
//! server's ephemeral key from the OS RNG. All protocol logic stays in the sans-IO modules.
//!
//! Writes are sealed into an internal buffer and pushed to the inner object opportunistically;
//! `poll_flush` and `poll_shutdown` drain that buffer first, which is what hyper relies on. A
//! write accepts at most [`MAX_WRITE_CHUNK`] bytes and waits while [`WRITE_HIGH_WATER`] bytes
//! are queued, so memory stays bounded. Reads decrypt frames in place in the opener's buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::early::{self, EarlyError, EarlyParse, EarlyPayload};
use super::handshake::{self, ClientHandshake, HandshakeError};
use super::transport::{MAX_PLAINTEXT_LEN, Opener, Sealer, Transport, TransportError, sealed_len};
use crate::keys::{MachinePrivate, MachinePublic};

/// Largest plaintext a single `poll_write` accepts (16 records).
pub const MAX_WRITE_CHUNK: usize = 16 * MAX_PLAINTEXT_LEN;
/// `poll_write` waits for the inner writer while this many sealed bytes are queued.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;
/// How many ciphertext bytes one read from the inner object may bring in.
const READ_CHUNK: usize = 16 * 1024;

/// Why setting up a Noise stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Reading or writing the underlying connection failed.
    #[error("ts2021 I/O error: {0}")]
    Io(#[from] io::Error),
    /// The Noise handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The record layer failed while reading the early payload.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The early payload was malformed.
    #[error(transparent)]
    Early(#[from] EarlyError),
    /// The peer closed the connection before the handshake finished.
    #[error("connection closed during the ts2021 handshake")]
    ClosedDuringHandshake,
}

/// A ts2021 connection: plaintext in and out, Noise records on the inner object `T`.
pub struct NoiseStream<T> {
    io: T,
    sealer: Sealer,
    opener: Opener,
    peer: MachinePublic,
    version: u16,
    handshake_hash: [u8; 32],
    /// Plaintext handed back by the early-payload check; read before anything else.
    pushback: Vec<u8>,
    pushback_pos: usize,
    /// Sealed records not yet written to `io`: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    read_eof: bool,
    /// A write error hit while flushing opportunistically after data was already accepted.
    write_failed: Option<io::ErrorKind>,
}

impl<T> std::fmt::Debug for NoiseStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream")
            .field("peer", &self.peer)
            .field("version", &self.version)
            .field("queued_write", &(self.wbuf.len() - self.wpos))
            .finish_non_exhaustive()
    }
}

impl<T> NoiseStream<T> {
    /// Wraps `io` with a finished handshake. `prefix` holds ciphertext already read from `io`
    /// past the handshake (e.g. hyper's upgrade `read_buf`); it is processed first.
    pub fn new(io: T, transport: Transport, prefix: impl Into<Vec<u8>>) -> Self {
        let (peer, version, handshake_hash) = (
            transport.peer(),
            transport.version(),
            transport.handshake_hash(),
        );
        let (sealer, mut opener) = transport.into_parts();
        let prefix = prefix.into();
        if !prefix.is_empty() {
            opener.feed(&prefix);
        }
        Self {
            io,
            sealer,
            opener,
            peer,
            version,
            handshake_hash,
            pushback: Vec::new(),
            pushback_pos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            read_eof: false,
            write_failed: None,
        }
    }

    /// The peer's static key (client machine key on the server, server key on the client).
    pub fn peer(&self) -> MachinePublic {
        self.peer
    }

    /// The negotiated protocol (capability) version.
    pub fn protocol_version(&self) -> u16 {
        self.version
    }

    /// The Noise handshake hash, for binding other messages to this connection.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// The inner I/O object.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The inner I/O object. Writing to it directly corrupts the stream.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Returns plaintext to the front of the read side.
    fn push_back(&mut self, plain: &[u8]) {
        self.pushback.drain(..self.pushback_pos);
        self.pushback_pos = 0;
        self.pushback.splice(0..0, plain.iter().copied());
    }
}

fn transport_to_io(err: TransportError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<T: AsyncWrite + Unpin> NoiseStream<T> {
    /// Writes queued records to `io` until the queue is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let pending = self.wbuf.get(self.wpos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    fn check_write_failed(&self) -> io::Result<()> {
        match self.write_failed {
            Some(kind) => Err(io::Error::new(
                kind,
                "an earlier write on the Noise stream failed",
            )),
            None => Ok(()),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for NoiseStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pushback_pos < this.pushback.len() {
                let avail = this.pushback.get(this.pushback_pos..).unwrap_or_default();
                let n = avail.len().min(buf.remaining());
                buf.put_slice(avail.get(..n).unwrap_or_default());
                this.pushback_pos += n;
                return Poll::Ready(Ok(()));
            }
            let plain = this.opener.plaintext().map_err(transport_to_io)?;
            if !plain.is_empty() {
                let n = plain.len().min(buf.remaining());
                buf.put_slice(plain.get(..n).unwrap_or_default());
                this.opener.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                if this.opener.has_partial_frame() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a Noise record",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let tail = this.opener.recv_buf(READ_CHUNK);
            let mut rb = ReadBuf::new(tail);
            let res = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.opener.commit_recv(n);
            match res {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => this.read_eof = n == 0,
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for NoiseStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_write_failed()?;
        if this.wbuf.len() - this.wpos >= WRITE_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = buf
            .get(..buf.len().min(MAX_WRITE_CHUNK))
            .unwrap_or_default();
        this.wbuf.reserve(sealed_len(chunk.len()));
        this.sealer
            .seal(chunk, &mut this.wbuf)
            .map_err(transport_to_io)?;
        // Push the records out now if the writer is ready; if not, they go on the next write or
        // flush. An error here cannot undo the accepted bytes, so it is reported next time.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            this.write_failed = Some(e.kind());
        }
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_write_failed()?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_write_failed()?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Server side of ts2021 after the HTTP `101 Switching Protocols`: runs the handshake on the
/// client's initiation (from the `X-Tailscale-Handshake` header), then writes the 51-byte
/// response and the optional early payload in one write. Returns the stream, the client's
/// machine key and its protocol version.
///
/// A malformed initiation gets Tailscale's 0x03 error frame before the error is returned.
pub async fn server_accept<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    server_private: &MachinePrivate,
    init_msg: &[u8],
    early: Option<EarlyPayload>,
) -> Result<(NoiseStream<T>, MachinePublic, u16), StreamError> {
    let accepted = match handshake::accept(server_private, init_msg, &mut rand_core::OsRng) {
        Ok(a) => a,
        Err(err) => {
            if let Some(hint) = err.client_hint() {
                let mut frame = Vec::new();
                handshake::encode_error_frame(hint, &mut frame);
                // Best effort: the client only uses it as a hint, the error below is what counts.
                let _ = io.write_all(&frame).await;
                let _ = io.flush().await;
            }
            return Err(err.into());
        }
    };
    let (client, version) = (accepted.client, accepted.version);
    let mut stream = NoiseStream::new(io, accepted.transport, Vec::new());
    let mut out = Vec::from(accepted.response);
    if let Some(payload) = early {
        let mut plain = Vec::new();
        payload.encode(&mut plain)?;
        stream.sealer.seal(&plain, &mut out)?;
    }
    stream.io.write_all(&out).await?;
    stream.io.flush().await?;
    Ok((stream, client, version))
}

/// Client side of ts2021 after the server's `101 Switching Protocols`: reads the server's
/// handshake reply from `prefix` (bytes already read past the HTTP response) and then `io`,
/// completes the handshake, and consumes the optional early payload. Returns the stream, ready
/// for an HTTP/2 client, and the early payload if the server sent one.
///
/// The early-payload check waits for the server's first plaintext bytes; servers send their
/// HTTP/2 SETTINGS (or the early payload) right away, as Go's and hyper's do.
pub async fn client_finish<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    handshake: ClientHandshake,
    prefix: impl Into<Vec<u8>>,
) -> Result<(NoiseStream<T>, Option<EarlyPayload>), StreamError> {
    let mut raw = prefix.into();
    let total = loop {
        match handshake::server_reply_len(&raw)? {
            Some(total) if raw.len() >= total => break total,
            _ => {
                if io.read_buf(&mut raw).await? == 0 {
                    return Err(StreamError::ClosedDuringHandshake);
                }
            }
        }
    };
    let rest = raw.split_off(total);
    let transport = handshake.finish(&raw)?;
    let mut stream = NoiseStream::new(io, transport, rest);

    let mut plain = Vec::new();
    loop {
        match early::parse(&plain)? {
            EarlyParse::Present { payload, consumed } => {
                stream.push_back(plain.get(consumed..).unwrap_or_default());
                return Ok((stream, Some(payload)));
            }
            EarlyParse::NeedMore { total } => {
                let want = (total - plain.len()).max(1);
                let start = plain.len();
                plain.resize(start + want, 0);
                let n = stream
                    .read(plain.get_mut(start..).unwrap_or_default())
                    .await?;
                plain.truncate(start + n);
                if n == 0 {
                    // EOF before HTTP/2 began; let the HTTP/2 client report it.
                    stream.push_back(&plain);
                    return Ok((stream, None));
                }
            }
            EarlyParse::Absent => {
                stream.push_back(&plain);
                return Ok((stream, None));
            }
        }
    }
}
