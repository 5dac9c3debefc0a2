//! The tokio shell around the port mapping [`Client`] (feature `portmap`): finds the default
//! gateway, owns a UDP socket on our LAN address, runs the sans-IO NAT-PMP/PCP client and falls
//! back to UPnP IGD ([`super::upnp`]) when neither answers.
//!
//! The agent drives it like this (no call blocks its select loop):
//!
//! ```no_run
//! # async fn demo(wg_port: u16) -> Result<(), nat::portmap::io::PortmapIoError> {
//! use nat::portmap::{PortmapEvent, io::PortMapper};
//! // When the daemon goes up (and again after a network change, after shutting the old one).
//! let mut pm = PortMapper::start(wg_port).await?;
//! loop {
//!     tokio::select! {
//!         // `next_event` is cancel-safe.
//!         Some(ev) = pm.next_event() => match ev {
//!             PortmapEvent::Mapped(m) => { /* add m.external as EndpointPortmapped, re-STUN */ }
//!             PortmapEvent::Lost { .. } | PortmapEvent::Failed(_) => { /* drop the candidate */ }
//!             _ => {}
//!         },
//!         // ... the agent's other branches; on `agent down` or exit:
//!         else => break,
//!     }
//! }
//! pm.shutdown().await; // deletes the mapping on the gateway (bounded wait)
//! # Ok(()) }
//! ```
//!
//! [`PortMapper::mapping`] gives the current mapping at any time. Renewals, retries, gateway
//! restarts and the UPnP fallback run inside the mapper's own task. Dropping a [`PortMapper`]
//! without [`PortMapper::shutdown`] also deletes the mapping, in the background. For
//! `agent netcheck`, [`probe`] reports which services the gateway answers.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::upnp::{self, UpnpGateway};
use super::{Client, Config, Mapping, PortmapError, PortmapEvent, ProbeResult};

/// How long a shutdown waits for the gateway to confirm the deletion (NAT-PMP/PCP retries take
/// 3.75 s in all).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(4);

/// What the shell can be told beyond the sans-IO [`Config`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The lifetime to ask for.
    pub lifetime: Duration,
    /// Use NAT-PMP.
    pub pmp: bool,
    /// Use PCP (preferred over NAT-PMP when the gateway speaks both).
    pub pcp: bool,
    /// Search for a UPnP IGD when NAT-PMP and PCP do not answer (or always, without them).
    pub upnp: bool,
    /// How long the UPnP SSDP search waits.
    pub upnp_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lifetime: super::DEFAULT_LIFETIME,
            pmp: true,
            pcp: true,
            upnp: true,
            upnp_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the port mapper could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortmapIoError {
    /// No IPv4 default route, so no gateway to ask.
    #[error("no IPv4 default gateway (see /proc/net/route)")]
    NoDefaultGateway,
    /// Reading the routing table failed.
    #[error("cannot read the routing table: {0}")]
    RouteTable(#[source] io::Error),
    /// No local address leads to the gateway.
    #[error("no local address towards the gateway {gateway}: {source}")]
    LocalAddress {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The mapping socket could not be bound.
    #[error("cannot bind the port mapping socket on {addr}: {source}")]
    Bind {
        /// The address tried.
        addr: Ipv4Addr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
}

/// The IPv4 default gateway from `/proc/net/route` (the lowest-metric default route).
pub fn default_gateway_v4() -> Result<Option<Ipv4Addr>, PortmapIoError> {
    let text = std::fs::read_to_string("/proc/net/route").map_err(PortmapIoError::RouteTable)?;
    Ok(parse_proc_net_route(&text))
}

/// Parses the text of `/proc/net/route`: the gateway of the up default route with the lowest
/// metric. Addresses there are the kernel's in-memory (little-endian) hex.
pub fn parse_proc_net_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, flags, metric, mask) = (
                hex(f.get(1)?)?,
                hex(f.get(2)?)?,
                hex(f.get(3)?)?,
                f.get(6)?.parse::<u32>().ok()?,
                hex(f.get(7)?)?,
            );
            let usable = dest == 0
                && mask == 0
                && gw != 0
                && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            usable.then(|| (metric, Ipv4Addr::from(gw.to_le_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

/// The source address the kernel uses towards `gateway` (a UDP connect sends no packet).
pub fn local_ip_towards(gateway: Ipv4Addr) -> Result<Ipv4Addr, PortmapIoError> {
    let err = |source| PortmapIoError::LocalAddress { gateway, source };
    let sock = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(err)?;
    sock.connect((gateway, super::pmp::SERVER_PORT))
        .map_err(err)?;
    match sock.local_addr().map_err(err)? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(err(io::Error::other(
            "the route to the gateway is not IPv4",
        ))),
    }
}

/// The default gateway and our address towards it.
pub fn discover() -> Result<(Ipv4Addr, Ipv4Addr), PortmapIoError> {
    let gateway = default_gateway_v4()?.ok_or(PortmapIoError::NoDefaultGateway)?;
    Ok((gateway, local_ip_towards(gateway)?))
}

/// One-shot probe of the default gateway for `agent netcheck`.
pub async fn probe(opts: &Options) -> Result<ProbeResult, PortmapIoError> {
    let (gateway, local_ip) = discover()?;
    probe_gateway(gateway, local_ip, opts).await
}

/// Probes `gateway` for NAT-PMP, PCP and (if `opts.upnp`) UPnP IGD, all at once.
pub async fn probe_gateway(
    gateway: Ipv4Addr,
    local_ip: Ipv4Addr,
    opts: &Options,
) -> Result<ProbeResult, PortmapIoError> {
    let sock = bind(local_ip).await?;
    let mut cfg = Config::new(gateway, local_ip, 0, [0; 12]);
    cfg.use_pmp = opts.pmp;
    cfg.use_pcp = opts.pcp;
    let mut client = Client::new(cfg);
    let pmp_pcp = async {
        if !opts.pmp && !opts.pcp {
            return ProbeResult::default();
        }
        client.probe(Instant::now());
        let mut buf = [0u8; 1100];
        loop {
            flush(&sock, &mut client).await;
            if let Some(PortmapEvent::Probed(r)) = client.poll_event() {
                return r;
            }
            let Some(deadline) = client.poll_timeout() else {
                return ProbeResult::default();
            };
            tokio::select! {
                r = sock.recv_from(&mut buf) => if let Ok((n, from)) = r {
                    client.handle_datagram(from, buf.get(..n).unwrap_or_default(), Instant::now());
                },
                _ = tokio::time::sleep_until(deadline.into()) => client.handle_timeout(Instant::now()),
            }
        }
    };
    let upnp = async {
        if !opts.upnp {
            return (false, None);
        }
        match upnp::search(local_ip, opts.upnp_timeout).await {
            Ok(gw) => (true, gw.external_ip().await.ok()),
            Err(e) => {
                tracing::debug!(error = %e, "no UPnP IGD");
                (false, None)
            }
        }
    };
    let (mut result, (upnp_found, upnp_ip)) = tokio::join!(pmp_pcp, upnp);
    result.upnp = upnp_found;
    result.public_ip = result.public_ip.or(upnp_ip);
    Ok(result)
}

/// A running port mapper: one task that obtains, renews and finally deletes one mapping.
#[derive(Debug)]
pub struct PortMapper {
    gateway: Ipv4Addr,
    local_ip: Ipv4Addr,
    events: mpsc::UnboundedReceiver<PortmapEvent>,
    mapping: watch::Receiver<Option<Mapping>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PortMapper {
    /// Starts mapping UDP `internal_port` at the default gateway, with default options.
    pub async fn start(internal_port: u16) -> Result<Self, PortmapIoError> {
        let (gateway, local_ip) = discover()?;
        Self::start_with(gateway, local_ip, internal_port, Options::default()).await
    }

    /// Starts mapping UDP `internal_port` at `gateway`, speaking from `local_ip`.
    pub async fn start_with(
        gateway: Ipv4Addr,
        local_ip: Ipv4Addr,
        internal_port: u16,
        opts: Options,
    ) -> Result<Self, PortmapIoError> {
        let sock = bind(local_ip).await?;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut cfg = Config::new(gateway, local_ip, internal_port, nonce);
        cfg.lifetime = opts.lifetime;
        cfg.use_pmp = opts.pmp;
        cfg.use_pcp = opts.pcp;
        let (ev_tx, events) = mpsc::unbounded_channel();
        let (map_tx, mapping) = watch::channel(None);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let driver = Driver {
            sock,
            client: Client::new(cfg),
            opts,
            ev_tx,
            map_tx,
            upnp: None,
        };
        let task = tokio::spawn(driver.run(shutdown_rx));
        Ok(Self {
            gateway,
            local_ip,
            events,
            mapping,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The next event; `None` once the mapper has stopped. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<PortmapEvent> {
        self.events.recv().await
    }

    /// The event channel itself, for callers that poll it directly.
    pub fn events(&mut self) -> &mut mpsc::UnboundedReceiver<PortmapEvent> {
        &mut self.events
    }

    /// The mapping in force, if any.
    pub fn mapping(&self) -> Option<Mapping> {
        *self.mapping.borrow()
    }

    /// The gateway asked.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Our address on the gateway's LAN.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local_ip
    }

    /// Deletes the mapping on the gateway and stops, waiting at most about
    /// [`RELEASE_TIMEOUT`].
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT + Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        // The task sees the closed channel and deletes the mapping by itself.
        self.shutdown.take();
    }
}

/// A UPnP mapping the shell keeps alive itself.
#[derive(Debug)]
struct UpnpMapping {
    gateway: UpnpGateway,
    mapping: Mapping,
    renew_at: Instant,
}

/// The task state: socket, sans-IO client, UPnP fallback and the channels to the agent.
struct Driver {
    sock: UdpSocket,
    client: Client,
    opts: Options,
    ev_tx: mpsc::UnboundedSender<PortmapEvent>,
    map_tx: watch::Sender<Option<Mapping>>,
    upnp: Option<UpnpMapping>,
}

impl Driver {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        if self.opts.pmp || self.opts.pcp {
            self.client.request_mapping(Instant::now());
        } else if self.opts.upnp {
            self.try_upnp().await;
        }
        let mut buf = [0u8; 1100];
        loop {
            self.drain().await;
            let deadline = [
                self.client.poll_timeout(),
                self.upnp.as_ref().map(|u| u.renew_at),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        self.client.handle_datagram(from, buf.get(..n).unwrap_or_default(), Instant::now());
                    }
                    Err(e) => tracing::debug!(error = %e, "port mapping socket receive failed"),
                },
                _ = sleep => {
                    let now = Instant::now();
                    self.client.handle_timeout(now);
                    if self.upnp.as_ref().is_some_and(|u| u.renew_at <= now) {
                        self.renew_upnp().await;
                    }
                }
            }
        }
        self.release(&mut buf).await;
    }

    /// Sends the client's datagrams and forwards its events; a failed NAT-PMP/PCP round starts
    /// the UPnP fallback.
    async fn drain(&mut self) {
        flush(&self.sock, &mut self.client).await;
        while let Some(ev) = self.client.poll_event() {
            let fallback = matches!(ev, PortmapEvent::Failed(PortmapError::NoService { .. }))
                && self.opts.upnp
                && self.upnp.is_none();
            if fallback {
                // Try UPnP; its outcome replaces this failure. The NAT-PMP/PCP client keeps its
                // own next round (in RETRY_AFTER_FAILURE), which falls back here again.
                self.try_upnp().await;
                continue;
            }
            self.emit(ev);
        }
    }

    fn emit(&mut self, ev: PortmapEvent) {
        match &ev {
            PortmapEvent::Mapped(m) | PortmapEvent::Renewed(m) => {
                self.map_tx.send_replace(Some(*m));
            }
            PortmapEvent::Lost { .. } | PortmapEvent::Released => {
                self.map_tx.send_replace(None);
            }
            _ => {}
        }
        let _ = self.ev_tx.send(ev);
    }

    async fn try_upnp(&mut self) {
        let local_ip = self.client.config().local_ip;
        let port = self.client.config().internal_port;
        let result = async {
            let gw = upnp::search(local_ip, self.opts.upnp_timeout).await?;
            let m = gw.map(port, port, self.opts.lifetime).await?;
            Ok::<_, PortmapError>((gw, m))
        }
        .await;
        match result {
            Ok((gateway, mapping)) => {
                // Park the NAT-PMP/PCP client so that it does not obtain a second mapping (it
                // holds none: releasing only stops its rounds).
                self.client.release(Instant::now());
                while self.client.poll_event().is_some() {}
                let renew_at = Instant::now() + mapping.lifetime / 2;
                self.upnp = Some(UpnpMapping {
                    gateway,
                    mapping,
                    renew_at,
                });
                self.emit(PortmapEvent::Mapped(mapping));
            }
            Err(e) => {
                tracing::debug!(error = %e, "UPnP fallback failed");
                let gateway = self.client.config().gateway;
                self.emit(PortmapEvent::Failed(PortmapError::NoService { gateway }));
            }
        }
    }

    async fn renew_upnp(&mut self) {
        let Some(u) = self.upnp.take() else { return };
        let port = u.mapping.internal_port;
        match u
            .gateway
            .map(port, u.mapping.external.port(), self.opts.lifetime)
            .await
        {
            Ok(m) => {
                let ev = if m.external == u.mapping.external {
                    PortmapEvent::Renewed(m)
                } else {
                    PortmapEvent::Mapped(m)
                };
                let renew_at = Instant::now() + m.lifetime / 2;
                self.upnp = Some(UpnpMapping {
                    gateway: u.gateway,
                    mapping: m,
                    renew_at,
                });
                self.emit(ev);
            }
            Err(reason) => {
                self.emit(PortmapEvent::Lost {
                    mapping: u.mapping,
                    reason,
                });
                self.try_upnp().await;
            }
        }
    }

    /// Deletes the mapping, waiting at most [`RELEASE_TIMEOUT`] for the gateway.
    async fn release(&mut self, buf: &mut [u8]) {
        if let Some(u) = self.upnp.take() {
            if let Err(e) = u.gateway.unmap(u.mapping.external.port()).await {
                tracing::debug!(error = %e, "UPnP deletion failed");
            }
            self.emit(PortmapEvent::Released);
            return;
        }
        self.client.release(Instant::now());
        let give_up = tokio::time::Instant::now() + RELEASE_TIMEOUT;
        loop {
            flush(&self.sock, &mut self.client).await;
            while let Some(ev) = self.client.poll_event() {
                let done = ev == PortmapEvent::Released;
                self.emit(ev);
                if done {
                    return;
                }
            }
            let deadline = self
                .client
                .poll_timeout()
                .map_or(give_up, |d| give_up.min(d.into()));
            tokio::select! {
                r = self.sock.recv_from(buf) => if let Ok((n, from)) = r {
                    self.client.handle_datagram(from, buf.get(..n).unwrap_or_default(), Instant::now());
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if tokio::time::Instant::now() >= give_up {
                        return;
                    }
                    self.client.handle_timeout(Instant::now());
                }
            }
        }
    }
}

async fn bind(local_ip: Ipv4Addr) -> Result<UdpSocket, PortmapIoError> {
    UdpSocket::bind((local_ip, 0))
        .await
        .map_err(|source| PortmapIoError::Bind {
            addr: local_ip,
            source,
        })
}

/// Sends everything the client queued; a failed send counts as a lost datagram (retries cover
/// it).
async fn flush(sock: &UdpSocket, client: &mut Client) {
    while let Some((to, bytes)) = client.poll_transmit() {
        if let Err(e) = sock.send_to(&bytes, to).await {
            tracing::debug!(error = %e, %to, "port mapping send failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_read_from_proc_net_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t014DA8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t004DA8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_net_route(text),
            Some(Ipv4Addr::new(192, 168, 77, 1))
        );
        assert_eq!(parse_proc_net_route("Iface\tDestination\n"), None);
        assert_eq!(
            parse_proc_net_route("header\nbroken line\n\u{0}\u{ffff}"),
            None
        );
        // A default route without the gateway flag (point-to-point) has no gateway to ask.
        let ptp = "h\ntun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_proc_net_route(ptp), None);
    }
}
