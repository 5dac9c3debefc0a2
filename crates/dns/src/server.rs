//! I/O: the DNS server. [`DnsServer::bind`] opens a UDP socket and a TCP listener on each given
//! address and serves them with hickory-server, answering every request through the shared
//! [`Resolver`]. Sockets are bound with `IP_FREEBIND`, so the agent can bind 100.100.100.100
//! and fd7a:115c:a1e0::53 before (or while) those addresses are added to the TUN device and
//! keep serving across a TUN re-creation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::DnsError;
use crate::resolver::Resolver;

/// How long a TCP client may stay idle between queries.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`DnsServer::shutdown`] waits for tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running DNS server.
pub struct DnsServer {
    server: Server<Handler>,
    local: Vec<SocketAddr>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local", &self.local)
            .finish()
    }
}

impl DnsServer {
    /// Serves `resolver` over UDP and TCP on each address (port 0 picks a free port, the same
    /// for UDP and TCP where possible). Must be called inside a tokio runtime.
    pub fn bind(resolver: Arc<Resolver>, addrs: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut server = Server::new(Handler { resolver });
        let mut local = Vec::new();
        for addr in addrs {
            let bind_err = |source| DnsError::Bind {
                addr: *addr,
                source,
            };
            let udp = socket(*addr, Type::DGRAM, Protocol::UDP).map_err(bind_err)?;
            let udp_addr = udp
                .local_addr()
                .and_then(|a| {
                    a.as_socket()
                        .ok_or_else(|| std::io::Error::other("not an IP socket"))
                })
                .map_err(bind_err)?;
            // TCP on the same port as UDP, so a client falling back to TCP finds us.
            let tcp_addr = SocketAddr::new(addr.ip(), udp_addr.port());
            let tcp = socket(tcp_addr, Type::STREAM, Protocol::TCP).map_err(bind_err)?;
            tcp.listen(128).map_err(bind_err)?;
            let udp = tokio::net::UdpSocket::from_std(udp.into()).map_err(bind_err)?;
            let tcp = tokio::net::TcpListener::from_std(tcp.into()).map_err(bind_err)?;
            server.register_socket(udp);
            server.register_listener(tcp, TCP_TIMEOUT, 64 * 1024);
            local.push(udp_addr);
        }
        tracing::info!(addrs = ?local, "DNS server listening");
        Ok(Self { server, local })
    }

    /// The addresses served (with the ports actually bound).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Stops accepting queries and waits briefly for the tasks to end.
    pub async fn shutdown(mut self) {
        let done = tokio::time::timeout(SHUTDOWN_GRACE, self.server.shutdown_gracefully()).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::debug!("DNS server did not stop cleanly");
        }
    }
}

/// A non-blocking socket bound to `addr`, with `IP_FREEBIND` so the address need not exist
/// yet, and IPv6 sockets limited to IPv6.
fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        sock.set_freebind_v6(true)?;
    } else {
        sock.set_freebind_v4(true)?;
    }
    // Lets a restarted agent rebind at once (TCP TIME_WAIT) and coexist with a local DNS
    // server bound to the wildcard address with SO_REUSEADDR.
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// hickory's request handler: parses the request, asks the resolver, sends the answer.
struct Handler {
    resolver: Arc<Resolver>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let parsed = match Message::from_vec(request.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, src = %request.src(), "unreadable DNS request");
                let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return send(&mut response_handle, resp, request).await;
            }
        };
        let res = self.resolver.resolve(&parsed, request.as_slice()).await;
        tracing::trace!(src = %request.src(), path = ?res.path, "DNS answer");
        let msg = res.message;
        // The client's EDNS decides the UDP size of our answer, not the upstream's.
        let edns: Option<Edns> = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_dnssec_ok(req.flags().dnssec_ok);
            e
        });
        let mut builder = builder;
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut metadata = msg.metadata;
        metadata.id = request.metadata.id;
        let resp = builder.build(
            metadata,
            msg.answers.iter(),
            msg.authorities.iter(),
            std::iter::empty(),
            msg.additionals.iter(),
        );
        send(&mut response_handle, resp, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    resp: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(resp).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, src = %request.src(), "cannot send DNS answer");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            Header {
                metadata,
                counts: HeaderCounts::default(),
            }
            .into()
        }
    }
}
