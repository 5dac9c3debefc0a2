//! A tokio UDP STUN responder, as derper runs on port 3478.
//!
//! [`spawn_stun_server`] binds the socket and spawns one task that answers every well-formed
//! Tailscale Binding Request (SOFTWARE `tailnode`, trailing FINGERPRINT; see [`proto::stun`])
//! with a Binding Success carrying only XOR-MAPPED-ADDRESS, and silently ignores everything else.
//! A client seen as `::ffff:a.b.c.d` on a dual-stack socket is reported as plain IPv4.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A running STUN responder.
#[derive(Debug)]
pub struct StunServerHandle {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StunServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the responder and waits for its task to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Binds `addr` and starts answering STUN Binding Requests.
pub async fn spawn_stun_server(addr: SocketAddr) -> io::Result<StunServerHandle> {
    let socket = UdpSocket::bind(addr).await?;
    let local_addr = socket.local_addr()?;
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, peer) = tokio::select! {
                _ = shutdown_rx.changed() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(err) => {
                        // Per-datagram errors (e.g. ICMP-triggered) must not stop the responder.
                        tracing::debug!(%err, "stun: receive failed");
                        continue;
                    }
                },
            };
            let Ok(tx) = proto::stun::parse_binding_request(buf.get(..n).unwrap_or_default())
            else {
                continue;
            };
            let seen = SocketAddr::new(unmap(peer.ip()), peer.port());
            let reply = proto::stun::binding_response(tx, seen);
            if let Err(err) = socket.send_to(&reply, peer).await {
                tracing::debug!(%err, %peer, "stun: reply failed");
            }
        }
    });
    tracing::info!(%local_addr, "stun: responder listening");
    Ok(StunServerHandle {
        local_addr,
        shutdown,
        task,
    })
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
