//! I/O: forwarding a raw DNS query to upstream resolvers.
//!
//! [`forward`] tries each upstream in order: the query goes out over UDP from a fresh
//! ephemeral socket connected to the upstream (so only the upstream's answers are read) with a
//! random message ID (restored before the answer is returned), and is retried over TCP when the
//! answer comes back truncated. An upstream that times out or fails is skipped for the next.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer (per transport attempt).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The query is too short to be a DNS message.
    #[error("the query is not a DNS message")]
    Malformed,
    /// There was no upstream to try.
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
    /// Every upstream failed; the text names each failure.
    #[error("no upstream answered: {0}")]
    AllFailed(String),
}

/// Sends `query` (a whole DNS message) to the upstreams in order and returns the first answer
/// with the query's original ID, and which upstream gave it.
pub async fn forward(
    query: &[u8],
    upstreams: &[SocketAddr],
    timeout: Duration,
) -> Result<(Vec<u8>, SocketAddr), ForwardError> {
    if query.len() < 12 {
        return Err(ForwardError::Malformed);
    }
    if upstreams.is_empty() {
        return Err(ForwardError::NoUpstreams);
    }
    let mut failures = Vec::new();
    for upstream in upstreams {
        match exchange(query, *upstream, timeout).await {
            Ok(answer) => return Ok((answer, *upstream)),
            Err(e) => {
                tracing::debug!(%upstream, error = %e, "upstream DNS query failed");
                failures.push(format!("{upstream}: {e}"));
            }
        }
    }
    Err(ForwardError::AllFailed(failures.join("; ")))
}

/// One upstream: UDP, then TCP if the answer is truncated.
async fn exchange(query: &[u8], upstream: SocketAddr, timeout: Duration) -> io::Result<Vec<u8>> {
    let original_id = [query[0], query[1]];
    let id: u16 = rand::random();
    let mut msg = query.to_vec();
    msg[..2].copy_from_slice(&id.to_be_bytes());
    let answer = tokio::time::timeout(timeout, udp_exchange(&msg, upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out over UDP"))??;
    let mut answer = if truncated(&answer) {
        tokio::time::timeout(timeout, tcp_exchange(&msg, upstream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out over TCP"))??
    } else {
        answer
    };
    if answer.len() < 12 || answer[..2] != id.to_be_bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer does not match the query",
        ));
    }
    answer[..2].copy_from_slice(&original_id);
    Ok(answer)
}

fn truncated(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

fn is_response_to(answer: &[u8], query: &[u8]) -> bool {
    answer.len() >= 12 && answer[..2] == query[..2] && answer[2] & 0x80 != 0
}

async fn udp_exchange(msg: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(msg).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        let answer = buf.get(..n).unwrap_or_default();
        // A stray or spoofed datagram with another ID is ignored; the timeout bounds the wait.
        if is_response_to(answer, msg) {
            return Ok(answer.to_vec());
        }
    }
}

async fn tcp_exchange(msg: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too large"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await?;
    loop {
        let n = usize::from(stream.read_u16().await?);
        let mut answer = vec![0u8; n];
        stream.read_exact(&mut answer).await?;
        if is_response_to(&answer, msg) {
            return Ok(answer);
        }
    }
}
