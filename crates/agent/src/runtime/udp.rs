//! Batched UDP I/O for the engine driver: many datagrams per syscall in both directions.
//!
//! Receiving uses quinn-udp's `recvmmsg` with UDP GRO into preallocated buffers
//! ([`RecvBatch`]); a GRO buffer holds several datagrams of one sender, split at `stride`.
//! Sending collects one drain pass of datagrams ([`SendBatch`]) and hands each run of equal-size
//! datagrams to the same destination to the kernel as one GSO `sendmsg`. Both are driven by the
//! driver task in `super`: [`BatchSocket::recv`] is awaited in its `select!` (cancel-safe: data
//! is only taken from the kernel inside a synchronous `try_io`), and [`SendBatch::flush`] ends
//! each drain pass. Sends never wait: like `try_send_to`, a full socket buffer drops the datagrams
//! and the protocols above recover.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagram buffers filled per receive syscall.
pub(super) const RECV_BATCH: usize = 32;
/// Bytes per receive buffer: one GRO super-datagram is at most 64 KiB.
const RECV_SLOT: usize = 65536;
/// Largest payload handed to one GSO `sendmsg`: below the IPv4 UDP limit of 65507 bytes.
const MAX_SEND_BYTES: usize = 65000;

/// The driver's UDP socket with quinn-udp's batching state.
pub(super) struct BatchSocket {
    sock: UdpSocket,
    state: UdpSocketState,
}

impl BatchSocket {
    /// Wraps a bound socket and turns on what the kernel offers (GRO, GSO detection).
    pub(super) fn new(sock: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&sock).into())?;
        Ok(BatchSocket { sock, state })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Waits for datagrams and reads as many as are ready (up to [`RECV_BATCH`] buffers) into
    /// `rx`. Returns the number of datagrams, counting each GRO segment.
    pub(super) async fn recv(&self, rx: &mut RecvBatch) -> io::Result<usize> {
        loop {
            self.sock.readable().await?;
            match self
                .sock
                .try_io(Interest::READABLE, || rx.fill(&self.state, &self.sock))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Sends one datagram, or with `segment` several of that size (the last may be shorter) in
    /// one GSO `sendmsg`. Does not wait for buffer space.
    fn try_send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let t = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        self.sock.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.sock).into(), &t)
        })
    }

    /// Sends one datagram at once, outside any batch.
    pub(super) fn send_one(&self, destination: SocketAddr, contents: &[u8]) -> io::Result<()> {
        self.try_send(destination, contents, None)
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }
}

/// Preallocated receive buffers and their metadata, reused for every receive.
pub(super) struct RecvBatch {
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
    filled: usize,
}

impl RecvBatch {
    pub(super) fn new() -> Self {
        RecvBatch {
            storage: vec![0u8; RECV_BATCH * RECV_SLOT],
            meta: [RecvMeta::default(); RECV_BATCH],
            filled: 0,
        }
    }

    /// One `recvmmsg` into the buffers. Returns the number of datagrams.
    fn fill(&mut self, state: &UdpSocketState, sock: &UdpSocket) -> io::Result<usize> {
        self.filled = 0;
        let mut chunks = self.storage.chunks_mut(RECV_SLOT);
        // Built on the stack each call: the slices borrow `storage`, so they cannot be kept.
        let mut slices: [IoSliceMut<'_>; RECV_BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let n = state.recv(sock.into(), &mut slices, &mut self.meta)?;
        self.filled = n.min(RECV_BATCH);
        Ok(self.datagrams().count())
    }

    /// The datagrams of the last receive with their senders, GRO buffers split into segments.
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.meta
            .iter()
            .take(self.filled)
            .enumerate()
            .flat_map(|(i, m)| {
                let start = i * RECV_SLOT;
                let data = self
                    .storage
                    .get(start..start + m.len.min(RECV_SLOT))
                    .unwrap_or_default();
                // A zero stride would mean "no GRO"; treat the buffer as one datagram then.
                let stride = if m.stride == 0 { data.len() } else { m.stride };
                data.chunks(stride.max(1)).map(move |d| (d, m.addr))
            })
    }
}

/// The outgoing datagrams of one drain pass, packed for GSO. Reused across passes so sending
/// does not allocate.
pub(super) struct SendBatch {
    /// Segments of the current run, back to back.
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    /// Size of every segment but the last in the current run.
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run: GSO allows only the last segment to be short.
    closed: bool,
}

impl SendBatch {
    pub(super) fn new() -> Self {
        SendBatch {
            buf: Vec::with_capacity(MAX_SEND_BYTES),
            dest: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// Queues a datagram, sending the current run first when this one cannot join it.
    pub(super) fn push(&mut self, sock: &BatchSocket, dest: SocketAddr, payload: &[u8]) {
        if payload.is_empty() {
            self.flush(sock);
            let _ = sock.send_one(dest, payload);
            return;
        }
        let joins = self.dest == Some(dest)
            && !self.closed
            && payload.len() <= self.segment
            && self.count < sock.max_segments()
            && self.buf.len() + payload.len() <= MAX_SEND_BYTES;
        if !joins {
            self.flush(sock);
            self.dest = Some(dest);
            self.segment = payload.len();
        }
        self.buf.extend_from_slice(payload);
        self.count += 1;
        if payload.len() < self.segment {
            self.closed = true;
        }
    }

    /// Sends the current run: one `sendmsg`, with GSO when it holds several datagrams.
    pub(super) fn flush(&mut self, sock: &BatchSocket) {
        let Some(dest) = self.dest.take() else {
            return;
        };
        if self.count > 1 {
            match sock.try_send(dest, &self.buf, Some(self.segment)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tracing::trace!(
                        count = self.count,
                        "UDP send buffer full; datagrams dropped"
                    );
                }
                Err(e) => {
                    // GSO refused (e.g. an old kernel or a NIC without checksum offload): quinn-udp
                    // then stops offering GSO, and these go out one by one.
                    tracing::debug!(error = %e, %dest, "GSO send failed; sending one by one");
                    for d in self.buf.chunks(self.segment.max(1)) {
                        let _ = sock.send_one(dest, d);
                    }
                }
            }
        } else {
            let _ = sock.send_one(dest, &self.buf);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (BatchSocket, BatchSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = BatchSocket::new(a).unwrap();
        // Sends never wait, so let the reactor first report the fresh socket writable.
        a.sock.writable().await.unwrap();
        (a, BatchSocket::new(b).unwrap())
    }

    async fn collect(sock: &BatchSocket, rx: &mut RecvBatch, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < want {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv(rx))
                .await
                .expect("datagrams arrive")
                .unwrap();
            assert!(n > 0);
            let from = sock.local_addr().unwrap();
            for (d, src) in rx.datagrams() {
                assert_ne!(src, from);
                got.push(d.to_vec());
            }
        }
        got
    }

    #[tokio::test]
    async fn a_batch_of_datagrams_arrives_intact_and_in_order() {
        let (a, b) = pair().await;
        let to = b.local_addr().unwrap();
        let mut tx = SendBatch::new();
        // Equal sizes (one GSO run), a short tail, then a different size and a lone datagram.
        let mut sent: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1200]).collect();
        sent.push(vec![10; 300]);
        sent.push(vec![11; 1200]);
        sent.push(vec![12; 80]);
        for d in &sent {
            tx.push(&a, to, d);
        }
        tx.flush(&a);
        let mut rx = RecvBatch::new();
        let got = collect(&b, &mut rx, sent.len()).await;
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn runs_to_different_destinations_go_to_each() {
        let (a, b) = pair().await;
        let c = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let mut tx = SendBatch::new();
        for i in 0..6u8 {
            let to = if i % 2 == 0 { &b } else { &c };
            tx.push(&a, to.local_addr().unwrap(), &[i; 500]);
        }
        tx.flush(&a);
        let mut rx = RecvBatch::new();
        assert_eq!(
            collect(&b, &mut rx, 3).await,
            vec![vec![0; 500], vec![2; 500], vec![4; 500]]
        );
        assert_eq!(
            collect(&c, &mut rx, 3).await,
            vec![vec![1; 500], vec![3; 500], vec![5; 500]]
        );
    }

    #[tokio::test]
    async fn flushing_an_empty_batch_sends_nothing() {
        let (a, _b) = pair().await;
        let mut tx = SendBatch::new();
        tx.flush(&a);
        tx.flush(&a);
        assert!(tx.buf.is_empty());
    }
}
