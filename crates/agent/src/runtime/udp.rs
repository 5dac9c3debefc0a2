//! Batched UDP I/O for the engine driver: many datagrams per syscall in both directions.
//!
//! The socket is dual-stack: [`BatchSocket::bind`] binds `[::]:port` with `IPV6_V6ONLY` off, so one
//! socket (and one port) carries IPv4 and IPv6, and falls back to `0.0.0.0:port` on hosts without
//! IPv6. The kernel reports IPv4 senders on a dual-stack socket as v4-mapped IPv6 addresses
//! (`::ffff:192.0.2.1`), and quinn-udp passes addresses through unchanged, so this module is the
//! one place that converts: received addresses are made canonical ([`canonical`]: plain IPv4),
//! and IPv4 destinations are mapped before `sendmsg`. Everything above sees plain addresses. GRO
//! and GSO are UDP-level options and work for both families on a dual-stack socket.
//!
//! Receiving uses quinn-udp's `recvmmsg` with UDP GRO into preallocated buffers
//! ([`RecvBatch`]); a GRO buffer holds several datagrams of one sender, split at `stride`.
//! Sending collects one drain pass of datagrams ([`SendBatch`]) and hands each run of equal-size
//! datagrams to the same destination to the kernel as one GSO `sendmsg`. Both are driven by the
//! driver task in `super`: [`BatchSocket::recv`] is awaited in its `select!` (cancel-safe: data
//! is only taken from the kernel inside a synchronous `try_io`), and [`SendBatch::flush`] ends
//! each drain pass. Sends never wait: like `try_send_to`, a full socket buffer drops the datagrams
//! and the protocols above recover.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd as _;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagram buffers filled per receive syscall.
pub(super) const RECV_BATCH: usize = 32;
/// Bytes per receive buffer: one GRO super-datagram is at most 64 KiB.
const RECV_SLOT: usize = 65536;
/// Largest payload handed to one GSO `sendmsg`: below the IPv4 UDP limit of 65507 bytes.
const MAX_SEND_BYTES: usize = 65000;
/// Datagrams per `sendmmsg` when one payload goes to many destinations (a port sweep).
const FANOUT_BATCH: usize = 256;

/// Options applied to every UDP socket the driver creates (the first bind and every rebind after
/// a network change), before it is bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SocketOptions {
    /// `SO_MARK` (needs `CAP_NET_ADMIN`): lets policy routing send the tunnel's own UDP traffic
    /// around the tunnel (exit nodes, subnet routes that cover the underlay).
    pub mark: Option<u32>,
}

/// Applies [`SocketOptions`] to a socket that is not bound yet. Every socket the driver uses goes
/// through here.
fn configure(sock: &Socket, opts: &SocketOptions) -> io::Result<()> {
    if let Some(mark) = opts.mark {
        sock.set_mark(mark)?;
    }
    Ok(())
}

/// A non-blocking UDP socket of `domain` bound to the wildcard address and `port`; IPv6 sockets
/// are dual-stack.
fn bind_socket(domain: Domain, port: u16, opts: &SocketOptions) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    let addr = if domain == Domain::IPV6 {
        sock.set_only_v6(false)?;
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
    };
    configure(&sock, opts)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// The plain form of an address (v4-mapped IPv6 becomes IPv4): the one magicsock uses.
pub(super) use nat::magicsock::canonical_addr as canonical;

/// The destination to hand the kernel: IPv4 becomes v4-mapped on a dual-stack socket; IPv6
/// cannot be reached from an IPv4-only socket (`None`).
fn socket_dest(dest: SocketAddr, dual_stack: bool) -> Option<SocketAddr> {
    match (canonical(dest), dual_stack) {
        (SocketAddr::V4(v4), true) => Some(SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        (SocketAddr::V6(_), false) => None,
        (d, _) => Some(d),
    }
}

/// The driver's UDP socket with quinn-udp's batching state.
pub(super) struct BatchSocket {
    sock: UdpSocket,
    state: UdpSocketState,
    /// An IPv6 socket that also carries IPv4 (as v4-mapped addresses).
    dual_stack: bool,
}

impl BatchSocket {
    /// Binds the driver's socket on `port` (0: any free port): dual-stack `[::]:port`, or
    /// `0.0.0.0:port` when the host cannot open IPv6 sockets. Must run inside the tokio runtime.
    pub(super) fn bind(port: u16, opts: &SocketOptions) -> io::Result<Self> {
        match bind_socket(Domain::IPV6, port, opts) {
            Ok(sock) => Self::new(UdpSocket::from_std(sock)?),
            Err(e) => {
                tracing::debug!(error = %e, port, "no dual-stack UDP socket; using IPv4 only");
                Self::new(UdpSocket::from_std(bind_socket(Domain::IPV4, port, opts)?)?)
            }
        }
    }

    /// Wraps a bound socket and turns on what the kernel offers (GRO, GSO detection).
    pub(super) fn new(sock: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&sock).into())?;
        let dual_stack = match sock.local_addr()? {
            SocketAddr::V6(_) => !socket2::SockRef::from(&sock).only_v6()?,
            SocketAddr::V4(_) => false,
        };
        Ok(BatchSocket {
            sock,
            state,
            dual_stack,
        })
    }

    /// Whether the socket can send to and receive from IPv6 addresses.
    pub(super) fn has_ipv6(&self) -> bool {
        matches!(self.sock.local_addr(), Ok(SocketAddr::V6(_)))
    }

    /// Whether `dest` is reachable from this socket's address family.
    pub(super) fn can_send_to(&self, dest: SocketAddr) -> bool {
        socket_dest(dest, self.dual_stack).is_some()
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
        let Some(destination) = socket_dest(destination, self.dual_stack) else {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "an IPv6 destination on an IPv4-only socket",
            ));
        };
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

    /// Sends the same `payload` to every destination (a hard-NAT port sweep: one sealed disco
    /// Ping to many ports of one IP) with `sendmmsg`, [`FANOUT_BATCH`] datagrams per syscall. GSO
    /// cannot help here (it needs one destination). Never waits: when the socket buffer is full
    /// the rest is dropped, as a sweep is best effort. Returns whether everything was handed to
    /// the kernel.
    pub(super) fn send_fanout(
        &self,
        payload: &[u8],
        dests: impl Iterator<Item = SocketAddr>,
    ) -> bool {
        use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
        let addrs: Vec<Option<SockaddrStorage>> = dests
            .filter_map(|d| socket_dest(d, self.dual_stack))
            .map(|d| Some(SockaddrStorage::from(d)))
            .collect();
        let iov = [IoSlice::new(payload)];
        for chunk in addrs.chunks(FANOUT_BATCH) {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
            let res = self.sock.try_io(Interest::WRITABLE, || {
                let no_cmsgs: [ControlMessage<'_>; 0] = [];
                // The result is not iterated: for sends its per-message view is meaningless.
                sendmmsg(
                    self.sock.as_raw_fd(),
                    &mut headers,
                    std::iter::repeat_n(&iov, chunk.len()),
                    chunk,
                    no_cmsgs,
                    MsgFlags::empty(),
                )
                .map(drop)
                .map_err(io::Error::from)
            });
            if let Err(e) = res {
                tracing::trace!(error = %e, "fan-out send stopped");
                return false;
            }
        }
        true
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

    /// The datagrams of the last receive with their senders (canonical: IPv4 senders as plain
    /// IPv4), GRO buffers split into segments.
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
                let from = canonical(m.addr);
                data.chunks(stride.max(1)).map(move |d| (d, from))
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

    #[test]
    fn v4_mapped_addresses_become_plain_ipv4_and_back() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:41641".parse().unwrap();
        let plain: SocketAddr = "192.0.2.1:41641".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:41641".parse().unwrap();
        assert_eq!(canonical(mapped), plain);
        assert_eq!(canonical(plain), plain);
        assert_eq!(canonical(v6), v6);
        assert_eq!(socket_dest(plain, true), Some(mapped));
        assert_eq!(socket_dest(mapped, false), Some(plain));
        assert_eq!(socket_dest(v6, true), Some(v6));
        assert_eq!(socket_dest(v6, false), None);
    }

    #[tokio::test]
    async fn dual_stack_socket_talks_plain_ipv4_both_ways() {
        let a = BatchSocket::bind(0, &SocketOptions::default()).unwrap();
        a.sock.writable().await.unwrap();
        let b = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        b.sock.writable().await.unwrap();
        let a_port = a.local_addr().unwrap().port();
        let a_v4 = SocketAddr::from(([127, 0, 0, 1], a_port));
        let b_addr = b.local_addr().unwrap();
        // A GSO run from the dual-stack socket to an IPv4 peer, given as plain IPv4.
        let mut tx = SendBatch::new();
        for i in 0..4u8 {
            tx.push(&a, b_addr, &[i; 1000]);
        }
        tx.flush(&a);
        let mut rx = RecvBatch::new();
        let got = collect(&b, &mut rx, 4).await;
        assert_eq!(got, (0..4u8).map(|i| vec![i; 1000]).collect::<Vec<_>>());
        // And back: the IPv4 sender shows up as plain IPv4, not ::ffff:127.0.0.1.
        b.send_one(a_v4, b"hello").unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), a.recv(&mut rx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
        let (data, from) = rx.datagrams().next().unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(from, b_addr);
    }

    #[tokio::test]
    async fn dual_stack_socket_reaches_ipv6_loopback() {
        let a = BatchSocket::bind(0, &SocketOptions::default()).unwrap();
        let Ok(b) = UdpSocket::bind("[::1]:0").await else {
            // No IPv6 on this host: the socket is IPv4-only and says so.
            assert!(!a.can_send_to("[::1]:1".parse().unwrap()) || a.has_ipv6());
            return;
        };
        a.sock.writable().await.unwrap();
        let b = BatchSocket::new(b).unwrap();
        let to = b.local_addr().unwrap();
        assert!(a.can_send_to(to));
        a.send_one(to, b"v6").unwrap();
        let mut rx = RecvBatch::new();
        assert_eq!(collect(&b, &mut rx, 1).await, vec![b"v6".to_vec()]);
    }

    #[tokio::test]
    async fn fanout_sends_one_payload_to_every_destination() {
        let a = BatchSocket::bind(0, &SocketOptions::default()).unwrap();
        a.sock.writable().await.unwrap();
        let b = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let c = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let dests = [b.local_addr().unwrap(), c.local_addr().unwrap()];
        assert!(a.send_fanout(b"ping", dests.into_iter()));
        let mut rx = RecvBatch::new();
        assert_eq!(collect(&b, &mut rx, 1).await, vec![b"ping".to_vec()]);
        assert_eq!(collect(&c, &mut rx, 1).await, vec![b"ping".to_vec()]);
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
