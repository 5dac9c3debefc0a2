//! The engine driver: one task that owns the packet engine, path selection, STUN, the DERP
//! connections, the UDP socket, the TUN device and the control client, and the
//! [`EngineBackend`] handle through which the local API talks to it.
//!
//! ```text
//!   local API ──Cmd──▶ ┌──────────────────────── Driver (one task) ─────────────────────────┐
//!   control ──event──▶ │ NetMap → Engine::set_config, PathManager::set_peers, DERP map     │
//!   TUN read ────────▶ │ Engine::handle_tun_packet ─▶ Transmit ─▶ send_path ─▶ UDP / DERP   │
//!   UDP read ────────▶ │ classify: STUN → StunClient, disco → PathManager, WG → Engine      │
//!   DERP read ───────▶ │ disco → PathManager, WG → Engine (peer known from the DERP key)    │
//!   timer ───────────▶ │ handle_timeout of Engine, PathManager, StunClient; DERP idle close │
//!                      └── after every input: drain transmits, TUN writes and events ───────┘
//! ```
//!
//! House style practice 5: one owner, no locks on the packet path; the protocol state machines
//! are sans-IO and this module is their only shell. Time is read here (`Instant::now()`) and
//! passed down.

pub mod derp;
mod dns;
mod netcheck;
mod netmon;
mod portmap;
mod router;
mod status;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Engine, EngineConfig, EngineError, PeerConfig};
use ipnet::IpNet;
use nat::magicsock::{Dest, PathEvent, PathManager, PeerInfo, PingPath, Source};
use nat::stun_client::{StunClient, StunEvent};
use proto::disco::PacketKind;
use proto::keys::{DiscoPrivate, NodePublic};
use proto::netmap::NetMap;
use proto::tailcfg::Hostinfo;
use tokio::sync::{mpsc, oneshot};

use crate::controlclient::{AuthKey, Client, ClientConfig, ClientEvent, ClientHandle};
use crate::daemon::backend::{Backend, BackendError, BackendFuture};
use crate::daemon::state::{Keys, Prefs, StateDir};
use crate::ipn::{BackendState, PingReply, Status, UpReply, UpRequest, WhoIs};
use derp::{DerpEvent, DerpManager};
use udp::{BatchSocket, RecvBatch, SendBatch};

/// TUN MTU (Tailscale's default).
const MTU: u16 = 1280;
/// How long `up` waits for control to accept or refuse the login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Re-STUN period (Tailscale uses a random 20-26 s).
const RESTUN: Duration = Duration::from_secs(23);
/// Consecutive TUN read errors after which the reader gives up on the device.
const TUN_READ_MAX_FAILURES: u32 = 10;
/// At most this many peers' packets wait for a first path (see `Driver::parked`).
const MAX_PARKED: usize = 1024;
/// Spacing of `agent ping` probes.
const PING_SPACING: Duration = Duration::from_millis(500);

/// What the local API asks of the driver.
enum Cmd {
    Up(UpRequest, oneshot::Sender<Result<UpReply, BackendError>>),
    Down(oneshot::Sender<Result<(), BackendError>>),
    Logout(oneshot::Sender<Result<(), BackendError>>),
    Status(oneshot::Sender<Status>),
    Ping(
        String,
        u32,
        oneshot::Sender<Result<Vec<PingReply>, BackendError>>,
    ),
    Whois(IpAddr, oneshot::Sender<Result<WhoIs, BackendError>>),
    /// `agent dns status` / `agent dns query` (runtime/dns.rs).
    Dns(dns::DnsCmd),
    /// `agent netcheck` (runtime/netcheck.rs).
    Netcheck(oneshot::Sender<Result<crate::ipn::NetcheckReport, BackendError>>),
    Shutdown(oneshot::Sender<()>),
}

/// Settings of the driver from the daemon's flags.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub tun: String,
    pub port: u16,
}

/// The local API's handle on the driver task.
pub struct EngineBackend {
    cmds: mpsc::Sender<Cmd>,
}

impl EngineBackend {
    /// Binds the UDP socket and starts the driver task. Reconnects to the tailnet at once when
    /// the saved preferences say the node was up.
    pub async fn start(
        cfg: RuntimeConfig,
        state: StateDir,
        prefs: Prefs,
        keys: Keys,
    ) -> std::io::Result<Self> {
        // The agent's own sockets carry the bypass mark so policy routing (exit nodes, subnet
        // routes covering the underlay) never sends them into the tunnel.
        let mark = router::usable_mark();
        if mark.is_some() {
            nat::derp::dial::set_socket_hook(router::mark_tcp);
        }
        let udp_opts = udp::SocketOptions { mark };
        let mut router = router::Router::new(&cfg.tun, state.path(), mark.is_some());
        router.cleanup_stale().await;
        let udp = BatchSocket::bind(cfg.port, &udp_opts)?;
        let port = udp.local_addr()?.port();
        let net = netmon::NetState::new(&cfg.tun);
        let families = net.stun_families(&udp);
        let (side_tx, side_rx) = mpsc::channel(64);
        let (tx, rx) = mpsc::channel(64);
        let (derp_tx, derp_rx) = mpsc::channel(1024);
        let disco = DiscoPrivate::generate(&mut rand_core::OsRng);
        let node_pub = keys.node_private.public();
        let now = Instant::now();
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        // MagicDNS; restores a resolv.conf a crashed run left pointing at us.
        let dns = dns::DnsManager::new(&cfg.tun, state.path());
        let mut driver = Driver {
            cfg,
            state,
            prefs,
            engine: Engine::new(keys.node_private.clone(), now),
            paths: PathManager::new(node_pub, disco, seed),
            parked: std::collections::HashMap::new(),
            stun: StunClient::new(seed, families),
            derp: DerpManager::new(keys.node_private.clone(), derp_tx),
            keys,
            udp: Arc::new(udp),
            udp_out: SendBatch::new(),
            port,
            tun: None,
            control: None,
            netmap: None,
            backend_state: BackendState::NoState,
            health: Vec::new(),
            pending_up: None,
            pings: Vec::new(),
            next_stun: now,
            configured_addrs: Vec::new(),
            dns,
            router,
            udp_opts,
            net,
            side_tx,
            portmap: portmap::PortMapState::default(),
            netcheck: netcheck::NetcheckState::default(),
        };
        if driver.prefs.want_running && driver.prefs.logged_in {
            driver.start_control(None);
        } else if driver.prefs.logged_in {
            driver.backend_state = BackendState::Stopped;
        } else {
            driver.backend_state = BackendState::NeedsLogin;
        }
        tokio::spawn(driver.run(rx, derp_rx, side_rx));
        Ok(EngineBackend { cmds: tx })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(make(tx)).await.ok()?;
        rx.await.ok()
    }
}

fn gone() -> BackendError {
    BackendError::Internal("the engine task stopped".into())
}

impl Backend for EngineBackend {
    fn status(&self) -> BackendFuture<'_, Status> {
        Box::pin(async move { self.ask(Cmd::Status).await.unwrap_or_else(status::stopped) })
    }

    fn up(&self, req: UpRequest) -> BackendFuture<'_, Result<UpReply, BackendError>> {
        Box::pin(async move {
            self.ask(|tx| Cmd::Up(req, tx))
                .await
                .unwrap_or_else(|| Err(gone()))
        })
    }

    fn down(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.ask(Cmd::Down).await.unwrap_or_else(|| Err(gone())) })
    }

    fn logout(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.ask(Cmd::Logout).await.unwrap_or_else(|| Err(gone())) })
    }

    fn ping(
        &self,
        target: String,
        count: u32,
    ) -> BackendFuture<'_, Result<Vec<PingReply>, BackendError>> {
        Box::pin(async move {
            self.ask(|tx| Cmd::Ping(target, count, tx))
                .await
                .unwrap_or_else(|| Err(gone()))
        })
    }

    fn whois(&self, addr: IpAddr) -> BackendFuture<'_, Result<WhoIs, BackendError>> {
        Box::pin(async move {
            self.ask(|tx| Cmd::Whois(addr, tx))
                .await
                .unwrap_or_else(|| Err(gone()))
        })
    }

    fn shutdown(&self) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.ask(Cmd::Shutdown).await;
        })
    }

    fn netcheck(&self) -> BackendFuture<'_, Result<crate::ipn::NetcheckReport, BackendError>> {
        Box::pin(async move { self.ask(Cmd::Netcheck).await.unwrap_or_else(|| Err(gone())) })
    }

    fn dns_status(&self) -> BackendFuture<'_, Result<crate::ipn::DnsStatus, BackendError>> {
        Box::pin(async move {
            self.ask(|tx| Cmd::Dns(dns::DnsCmd::Status(tx)))
                .await
                .ok_or_else(gone)
        })
    }

    fn dns_query(
        &self,
        name: String,
        qtype: String,
    ) -> BackendFuture<'_, Result<crate::ipn::DnsQueryReply, BackendError>> {
        Box::pin(async move {
            self.ask(|tx| Cmd::Dns(dns::DnsCmd::Query(name, qtype, tx)))
                .await
                .unwrap_or_else(|| Err(gone()))
        })
    }
}

/// An `agent ping` in progress.
struct PendingPing {
    peer: NodePublic,
    name: String,
    ip: IpAddr,
    count: u32,
    sent: u32,
    outstanding: Vec<(u32, proto::stun::TxId)>,
    replies: Vec<PingReply>,
    next_send: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<PingReply>, BackendError>>,
}

/// The TUN device and the reader task feeding it to the driver.
struct Tun {
    device: Arc<dataplane::tun::TunDevice>,
    reader: tokio::task::JoinHandle<()>,
    /// Packet buffers returned to the reader after the driver used them.
    spare: mpsc::Sender<Vec<u8>>,
}

/// A packet read from the TUN device: a full-size reusable buffer and the packet's length.
struct TunPacket {
    buf: Vec<u8>,
    len: usize,
}

impl TunPacket {
    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// Buffers in flight between the TUN reader and the driver.
const TUN_BUFFERS: usize = 256;
/// Largest packet read from the TUN device.
const TUN_READ: usize = 65535;
/// Further TUN packets taken per wakeup, so one drain pass encrypts and sends them together.
const TUN_BUDGET: usize = 64;

struct Driver {
    cfg: RuntimeConfig,
    state: StateDir,
    prefs: Prefs,
    keys: Keys,
    engine: Engine,
    paths: PathManager,
    stun: StunClient,
    derp: DerpManager,
    udp: Arc<BatchSocket>,
    /// Outgoing datagrams of the current drain pass, sent together at its end.
    udp_out: SendBatch,
    /// The last WireGuard packet for each peer that had no path at all when it was sent (a new
    /// peer whose home region and endpoints control has not announced yet). It goes out as soon
    /// as a netmap gives the peer a path, instead of waiting for WireGuard's 5 s handshake retry.
    parked: std::collections::HashMap<NodePublic, Vec<u8>>,
    port: u16,
    tun: Option<Tun>,
    control: Option<(ClientHandle, mpsc::Receiver<ClientEvent>)>,
    netmap: Option<Arc<NetMap>>,
    backend_state: BackendState,
    health: Vec<String>,
    pending_up: Option<(oneshot::Sender<Result<UpReply, BackendError>>, Instant)>,
    pings: Vec<PendingPing>,
    next_stun: Instant,
    configured_addrs: Vec<IpNet>,
    /// MagicDNS: resolver, server on the TUN, OS integration (runtime/dns.rs).
    dns: dns::DnsManager,
    /// OS routing for subnet routes and exit nodes (table 52, rules, nftables, forwarding).
    router: router::Router,
    /// Options for every UDP socket the driver binds (first bind and rebinds).
    udp_opts: udp::SocketOptions,
    /// The network as the monitor last saw it, and roaming bookkeeping (`netmon.rs`).
    net: netmon::NetState,
    /// Where helper tasks (network monitor, port mapping, netcheck probes) report.
    side_tx: mpsc::Sender<Side>,
    /// Port mapping at the gateway (`portmap.rs`).
    portmap: portmap::PortMapState,
    /// A running `agent netcheck` (`netcheck.rs`).
    netcheck: netcheck::NetcheckState,
}

/// What the driver's helper tasks report.
enum Side {
    /// The network monitor saw a change.
    Net(netmon::NetChange),
    /// The port mapper reported.
    Portmap(portmap::PortmapUpdate),
    /// The `agent netcheck` port mapping probe finished.
    NetcheckProbe(Result<nat::portmap::ProbeResult, String>),
    /// The `agent netcheck` HTTPS latencies (UDP blocked) are in.
    NetcheckHttps(Vec<nat::netcheck::HttpsLatency>),
}

/// What woke the driver.
enum Input {
    Cmd(Option<Cmd>),
    Control(Option<ClientEvent>),
    Derp(Option<DerpEvent>),
    Tun(Option<TunPacket>),
    /// The number of datagrams read into the receive batch.
    Udp(std::io::Result<usize>),
    Side(Option<Side>),
    Timer,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut derp_rx: mpsc::Receiver<DerpEvent>,
        mut side_rx: mpsc::Receiver<Side>,
    ) {
        let (tun_tx, mut tun_rx) = mpsc::channel::<TunPacket>(256);
        // Reused for every receive: batched reads do not allocate.
        let mut udp_in = RecvBatch::new();
        self.start_netmon();
        loop {
            // Rebinding needs the only reference to the old socket, which is here.
            self.rebind_if_due();
            let deadline = self.next_deadline();
            let udp = Arc::clone(&self.udp);
            let input = tokio::select! {
                c = cmds.recv() => Input::Cmd(c),
                e = async { match &mut self.control { Some((_, rx)) => rx.recv().await, None => std::future::pending().await } } => Input::Control(e),
                d = derp_rx.recv() => Input::Derp(d),
                p = tun_rx.recv() => Input::Tun(p),
                r = udp.recv(&mut udp_in) => Input::Udp(r),
                s = side_rx.recv() => Input::Side(s),
                _ = tokio::time::sleep_until(deadline.into()) => Input::Timer,
            };
            let now = Instant::now();
            match input {
                Input::Cmd(None) => break,
                Input::Cmd(Some(Cmd::Shutdown(done))) => {
                    self.stop_all().await;
                    let _ = done.send(());
                    break;
                }
                Input::Cmd(Some(c)) => self.handle_cmd(c, now).await,
                Input::Control(None) => self.control = None,
                Input::Control(Some(ev)) => self.handle_control(ev, &tun_tx, now).await,
                Input::Derp(Some(DerpEvent::Packet(p))) => {
                    self.stun.note_derp_heard(p.region, now);
                    if proto::disco::looks_like_disco(&p.payload) {
                        let _ = self.paths.handle_disco(
                            Source::Derp {
                                region: p.region,
                                node_key: p.src,
                            },
                            &p.payload,
                            now,
                        );
                    } else {
                        self.network_packet(Some(p.src), &p.payload, now);
                    }
                }
                Input::Derp(Some(DerpEvent::State(s))) => tracing::debug!(?s, "DERP state"),
                Input::Derp(None) => {}
                Input::Tun(Some(packet)) => self.tun_packet(packet, now),
                Input::Tun(None) => {}
                Input::Udp(Ok(_)) => {
                    for (data, from) in udp_in.datagrams() {
                        self.udp_packet(data, from, now);
                    }
                }
                Input::Udp(Err(e)) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                }
                Input::Side(Some(s)) => self.handle_side(s, now),
                Input::Side(None) => {}
                Input::Timer => self.handle_timeout(now),
            }
            // Take whatever else the TUN reader has queued, so one drain pass encrypts and
            // sends a whole burst instead of one packet per wakeup.
            for _ in 0..TUN_BUDGET {
                match tun_rx.try_recv() {
                    Ok(packet) => self.tun_packet(packet, now),
                    Err(_) => break,
                }
            }
            self.drain(now).await;
        }
        tracing::info!("engine stopped");
    }

    fn next_deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_secs(1);
        for t in [
            self.engine.poll_timeout(),
            self.paths.poll_timeout(),
            self.stun.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        {
            d = d.min(t);
        }
        if self.control.is_some() {
            d = d.min(self.next_stun);
        }
        for p in &self.pings {
            d = d.min(p.next_send).min(p.deadline);
        }
        d
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.paths.handle_timeout(now);
        self.stun.handle_timeout(now);
        self.derp.cleanup(now);
        self.router.check_forwarding(now);
        // STUN servers come from the DERP map: without one there is nothing to measure.
        let have_servers = self.netmap.as_ref().is_some_and(|m| m.derp_map.is_some());
        if self.control.is_some()
            && have_servers
            && now >= self.next_stun
            && !self.stun.is_running()
        {
            self.stun.start_report(now);
            self.next_stun = now + RESTUN;
        }
        if let Some((_, since)) = &self.pending_up
            && now.duration_since(*since) > LOGIN_TIMEOUT
            && let Some((tx, _)) = self.pending_up.take()
        {
            let reason = self
                .health
                .last()
                .cloned()
                .unwrap_or_else(|| "no answer from the control server".into());
            let _ = tx.send(Err(BackendError::Control(format!(
                "login timed out after {}s: {reason}",
                LOGIN_TIMEOUT.as_secs()
            ))));
        }
        self.advance_pings(now);
        self.netcheck_timeout(now);
    }

    /// An IP packet read from the TUN device: encrypt it for its peer.
    fn tun_packet(&mut self, packet: TunPacket, now: Instant) {
        if let Err(e) = self.engine.handle_tun_packet(packet.bytes(), now) {
            tracing::trace!(error = ?e, "outbound packet dropped");
        }
        // Hand the buffer back to the reader so TUN reads do not allocate.
        if let Some(tun) = &self.tun {
            let _ = tun.spare.try_send(packet.buf);
        }
    }

    fn udp_packet(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        match proto::disco::classify(data) {
            PacketKind::Stun => {
                self.stun.handle_datagram(data, from, now);
            }
            PacketKind::Disco => {
                let _ = self.paths.handle_disco(Source::Udp(from), data, now);
            }
            PacketKind::WireGuard => {
                // The engine finds the peer from the receiver index (or the handshake's static
                // key) itself, so no per-packet address lookup here.
                self.network_packet(None, data, now);
            }
            _ => {}
        }
    }

    fn network_packet(&mut self, from: Option<NodePublic>, data: &[u8], now: Instant) {
        match self.engine.handle_network_packet(from, data, now) {
            Ok(_) => {}
            Err(EngineError::UnknownPeer { key }) => {
                tracing::debug!(peer = %key.short(), "handshake from a node not in our map")
            }
            Err(e) => tracing::trace!(error = ?e, "inbound packet dropped"),
        }
    }

    /// Sends each parked packet whose peer now has a path (see [`Driver::parked`]); forgets
    /// those of peers that left the map.
    fn send_parked(&mut self, now: Instant) {
        if self.parked.is_empty() {
            return;
        }
        for (peer, packet) in std::mem::take(&mut self.parked) {
            if !self.paths.has_peer(&peer) {
                continue;
            }
            let path = self.paths.send_path(&peer, now);
            if let Some(addr) = path.udp {
                self.udp_out.push(&self.udp, addr, &packet);
            }
            if let Some(region) = path.derp {
                self.derp.send(region, peer, packet, now);
            } else if path.udp.is_none() {
                self.parked.insert(peer, packet);
            }
        }
        self.udp_out.flush(&self.udp);
    }

    /// Sends everything the state machines queued. UDP datagrams are collected into
    /// `udp_out` and leave in as few syscalls as possible (GSO runs) at the end of the pass.
    async fn drain(&mut self, now: Instant) {
        while let Some(t) = self.engine.poll_transmit() {
            let path = self.paths.send_path(&t.peer, now);
            if let Some(addr) = path.udp {
                self.udp_out.push(&self.udp, addr, t.payload.as_slice());
            }
            if let Some(region) = path.derp {
                self.derp
                    .send(region, t.peer, t.payload.as_slice().to_vec(), now);
            }
            if path.udp.is_none() && path.derp.is_none() {
                if self.parked.len() < MAX_PARKED {
                    self.parked.insert(t.peer, t.payload.as_slice().to_vec());
                }
            } else if !self.parked.is_empty() {
                // A newer packet got through: the parked one is stale.
                self.parked.remove(&t.peer);
            }
            self.engine.recycle(t.payload);
        }
        while let Some(d) = self.paths.poll_transmit() {
            match d.dest {
                Dest::Udp(addr) => self.udp_out.push(&self.udp, addr, &d.payload),
                Dest::Derp { region, node_key } => self.derp.send(region, node_key, d.payload, now),
            }
        }
        while let Some(s) = self.stun.poll_transmit() {
            self.udp_out.push(&self.udp, s.dest, &s.payload);
        }
        self.udp_out.flush(&self.udp);
        while let Some(chunk) = self.paths.poll_sweep() {
            self.udp.send_fanout(&chunk.payload, chunk.dests());
        }
        while let Some(w) = self.engine.poll_tun_write() {
            if let Some(tun) = &self.tun
                && let Err(e) = tun.device.write(&w).await
            {
                tracing::debug!(error = %e, "TUN write failed");
            }
            self.engine.recycle(w.into_buf());
        }
        while let Some(ev) = self.paths.poll_event() {
            self.handle_path_event(ev);
        }
        while let Some(ev) = self.stun.poll_event() {
            if let StunEvent::ReportReady(report) = ev {
                self.handle_report(&report);
            }
        }
    }

    fn handle_path_event(&mut self, ev: PathEvent) {
        match ev {
            PathEvent::BestAddrChanged {
                peer,
                addr,
                latency,
            } => {
                tracing::info!(peer = %peer.short(), %addr, latency_ms = latency.as_secs_f64() * 1e3, "direct path");
            }
            PathEvent::FellBackToDerp { peer } => {
                tracing::info!(peer = %peer.short(), "direct path lost; using DERP")
            }
            PathEvent::DirectPathLost { .. } => self.on_direct_path_lost(),
            PathEvent::PingResult {
                id, latency, path, ..
            } => {
                let path = match path {
                    PingPath::Direct(addr) => crate::ipn::Path::Direct { addr },
                    PingPath::Derp(region) => crate::ipn::Path::Relay {
                        region_code: self.derp.region_code(region),
                    },
                };
                for p in &mut self.pings {
                    if let Some(i) = p.outstanding.iter().position(|(_, t)| *t == id) {
                        let (seq, _) = p.outstanding.remove(i);
                        p.replies.push(PingReply {
                            seq,
                            from: p.name.clone(),
                            ip: p.ip,
                            path: path.clone(),
                            latency_ms: latency.as_secs_f64() * 1e3,
                        });
                    }
                }
            }
            PathEvent::PingTimedOut { id, .. } => {
                for p in &mut self.pings {
                    p.outstanding.retain(|(_, t)| *t != id);
                }
            }
            _ => {}
        }
    }

    /// A helper task reported.
    fn handle_side(&mut self, side: Side, now: Instant) {
        match side {
            Side::Net(change) => self.on_network_change(change, now),
            Side::Portmap(update) => self.on_portmap_update(update),
            Side::NetcheckProbe(result) => self.netcheck_on_probe(result),
            Side::NetcheckHttps(results) => self.netcheck_on_https(results),
        }
    }

    fn handle_report(&mut self, report: &nat::stun_client::Report) {
        tracing::debug!(udp = report.udp, global_v4 = ?report.global_v4, home = ?report.preferred_derp, "STUN report");
        let endpoints = self.endpoint_candidates(report);
        if let Some(hard) = report.mapping_varies_by_dest_ip {
            self.paths.set_local_nat_hard(hard);
        }
        self.paths
            .set_local_endpoints(endpoints.iter().map(|(a, _)| *a).collect());
        let home = report.preferred_derp.or(self.derp.home());
        self.paths.set_home_derp(home);
        self.derp.set_home(home);
        if let Some((control, _)) = &self.control {
            control.update_endpoints(endpoints);
            control.update_netinfo(self.net_info(report, home));
        }
        self.netcheck_on_stun(report);
    }

    async fn handle_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Status(tx) => {
                let _ = tx.send(self.status(now));
            }
            Cmd::Up(req, tx) => {
                self.up(req, tx, now);
                // New routing preferences take effect at once on a running node.
                self.apply_routing(now).await;
                // So does a new --accept-dns.
                self.sync_dns().await;
            }
            Cmd::Down(tx) => {
                let res = self.save_prefs(|p| p.want_running = false);
                self.stop_all().await;
                self.backend_state = BackendState::Stopped;
                let _ = tx.send(res);
            }
            Cmd::Logout(tx) => {
                let res = match &self.control {
                    Some((c, _)) => c
                        .logout()
                        .await
                        .map_err(|e| BackendError::Control(e.to_string())),
                    None => Ok(()),
                };
                let saved = self.save_prefs(|p| {
                    p.want_running = false;
                    p.logged_in = false;
                });
                self.stop_all().await;
                self.backend_state = BackendState::NeedsLogin;
                let _ = tx.send(res.and(saved));
            }
            Cmd::Ping(target, count, tx) => self.start_ping(&target, count, tx, now),
            Cmd::Netcheck(tx) => self.start_netcheck(tx, now),
            Cmd::Whois(ip, tx) => {
                let _ = tx.send(self.whois(ip));
            }
            Cmd::Dns(c) => self.handle_dns_cmd(c),
            Cmd::Shutdown(_) => {}
        }
    }

    fn save_prefs(&mut self, change: impl FnOnce(&mut Prefs)) -> Result<(), BackendError> {
        let mut prefs = self.prefs.clone();
        change(&mut prefs);
        if prefs == self.prefs {
            // Nothing to persist: skip the fsync'd write on the driver task.
            return Ok(());
        }
        self.state.save_prefs(&prefs)?;
        self.prefs = prefs;
        Ok(())
    }

    fn up(
        &mut self,
        req: UpRequest,
        tx: oneshot::Sender<Result<UpReply, BackendError>>,
        now: Instant,
    ) {
        let routing =
            match router::routing_from_up(&self.prefs.routing, &req, self.netmap.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(BackendError::InvalidRequest(e)));
                    return;
                }
            };
        let routable_changed = routing.routable_ips() != self.prefs.routing.routable_ips();
        let url_changed = req.login_server.is_some() && req.login_server != self.prefs.control_url;
        let saved = self.save_prefs(|p| {
            if req.login_server.is_some() {
                p.control_url = req.login_server.clone();
            }
            if req.hostname.is_some() {
                p.hostname = req.hostname.clone();
            }
            p.advertise_tags = req.advertise_tags.clone();
            p.ephemeral = req.ephemeral;
            p.routing = routing;
            if let Some(accept) = req.accept_dns {
                p.no_accept_dns = !accept;
            }
            p.want_running = true;
        });
        if let Err(e) = saved {
            let _ = tx.send(Err(e));
            return;
        }
        if routable_changed && let Some((c, _)) = &self.control {
            c.update_hostinfo(self.hostinfo());
        }
        if self.prefs.control_url.is_none() {
            let _ = tx.send(Err(BackendError::InvalidRequest(
                "no control server: pass --login-server URL".into(),
            )));
            return;
        }
        let auth = req.auth_key.map(|k| AuthKey::new(k.expose().to_string()));
        if auth.is_none() && !self.prefs.logged_in {
            let _ = tx.send(Err(BackendError::InvalidRequest(
                "this node is not logged in: pass --authkey KEY".into(),
            )));
            return;
        }
        if url_changed || self.control.is_none() {
            if let Some((c, _)) = self.control.take() {
                tokio::spawn(async move { c.shutdown().await });
            }
            self.start_control(auth);
        } else if let Some((c, _)) = &self.control {
            if auth.is_some() || self.backend_state != BackendState::Running {
                c.login(auth);
            } else {
                let _ = tx.send(Ok(UpReply {
                    backend_state: self.backend_state,
                    auth_url: None,
                }));
                return;
            }
        }
        if let Some((earlier, _)) = self.pending_up.replace((tx, now)) {
            let _ = earlier.send(Err(BackendError::InvalidRequest(
                "superseded by a newer `agent up` before the login finished".into(),
            )));
        }
    }

    /// What this node tells control about itself (besides NetInfo, which STUN fills in).
    fn hostinfo(&self) -> Hostinfo {
        Hostinfo {
            hostname: self
                .prefs
                .hostname
                .clone()
                .unwrap_or_else(crate::daemon::backend::os_hostname),
            os: std::env::consts::OS.to_string(),
            ipn_version: env!("CARGO_PKG_VERSION").to_string(),
            backend_log_id: hex_id(self.keys.node_private.public().as_bytes()),
            request_tags: self.prefs.advertise_tags.clone(),
            routable_ips: self.prefs.routing.routable_ips(),
            ..Default::default()
        }
    }

    fn start_control(&mut self, auth: Option<AuthKey>) {
        let Some(url) = self.prefs.control_url.clone() else {
            return;
        };
        let hostname = self
            .prefs
            .hostname
            .clone()
            .unwrap_or_else(crate::daemon::backend::os_hostname);
        let mut cfg = ClientConfig::new(
            url,
            self.keys.machine_private.clone(),
            self.keys.node_private.public(),
            self.paths.disco_public(),
            hostname.clone(),
        );
        cfg.auth_key = auth;
        cfg.ephemeral = self.prefs.ephemeral;
        cfg.hostinfo = Hostinfo {
            hostname,
            ..self.hostinfo()
        };
        cfg.dial.socket_mark = self.udp_opts.mark;
        self.backend_state = BackendState::Starting;
        self.control = Some(Client::start(cfg));
        self.next_stun = Instant::now();
    }

    async fn handle_control(
        &mut self,
        ev: ClientEvent,
        tun_tx: &mpsc::Sender<TunPacket>,
        now: Instant,
    ) {
        match ev {
            ClientEvent::LoggedIn {
                machine_authorized, ..
            } => {
                let _ = self.save_prefs(|p| p.logged_in = true);
                self.health.clear();
                self.backend_state = if machine_authorized {
                    BackendState::Starting
                } else {
                    BackendState::NeedsMachineAuth
                };
                if let Some((tx, _)) = self.pending_up.take() {
                    let _ = tx.send(Ok(UpReply {
                        backend_state: self.backend_state,
                        auth_url: None,
                    }));
                }
            }
            ClientEvent::LoginFailed(reason) => {
                self.backend_state = BackendState::NeedsLogin;
                self.health = vec![reason.clone()];
                if let Some((tx, _)) = self.pending_up.take() {
                    let _ = tx.send(Err(BackendError::Control(reason)));
                }
            }
            ClientEvent::NodeKeyExpired => {
                self.backend_state = BackendState::NeedsLogin;
                self.health =
                    vec!["node key expired: run `agent up --authkey KEY` to log in again".into()];
                let _ = self.save_prefs(|p| p.logged_in = false);
                self.teardown_dataplane().await;
                if let Some((tx, _)) = self.pending_up.take() {
                    let _ = tx.send(Err(BackendError::Control(
                        "node key expired: log in again with an auth key".into(),
                    )));
                }
            }
            ClientEvent::NeedsMachineAuth => self.backend_state = BackendState::NeedsMachineAuth,
            ClientEvent::Disconnected(reason) => {
                tracing::info!(%reason, "control connection lost; the data plane keeps running");
                self.health = vec![format!("control: {reason}")];
                // A user waiting on `up` hears at once why; the client keeps retrying.
                if let Some((tx, _)) = self.pending_up.take() {
                    let _ = tx.send(Err(BackendError::Control(format!(
                        "{reason} (the agent keeps retrying)"
                    ))));
                }
            }
            ClientEvent::NetMap(nm, _changes) => self.apply_netmap(nm, tun_tx, now).await,
            _ => {}
        }
    }

    async fn apply_netmap(
        &mut self,
        nm: Arc<NetMap>,
        tun_tx: &mpsc::Sender<TunPacket>,
        now: Instant,
    ) {
        let Some(me) = nm.self_node.clone() else {
            return;
        };
        if me.key_expiry.is_some_and(|e| e <= chrono::Utc::now()) {
            self.backend_state = BackendState::NeedsLogin;
            self.health =
                vec!["node key expired: run `agent up --authkey KEY` to log in again".into()];
            self.teardown_dataplane().await;
            self.netmap = Some(nm);
            return;
        }
        if !me.machine_authorized {
            self.backend_state = BackendState::NeedsMachineAuth;
            self.netmap = Some(nm);
            return;
        }
        let addresses: Vec<IpNet> = me.addresses.clone();
        if (self.tun.is_none() || self.configured_addrs != addresses)
            && let Err(e) = self.setup_tun(&addresses, tun_tx).await
        {
            self.health = vec![format!(
                "cannot set up the TUN device {}: {e}",
                self.cfg.tun
            )];
            tracing::error!(error = %e, "TUN setup failed");
        }
        let expired_peer = |n: &proto::tailcfg::Node| {
            n.expired || n.key_expiry.is_some_and(|e| e <= chrono::Utc::now())
        };
        self.configure_engine(&nm, &addresses, now).await;
        self.paths.set_peers(
            nm.peers
                .values()
                .filter(|p| !expired_peer(p) && !p.disco_key.is_zero())
                .map(|p| PeerInfo {
                    node_key: p.key,
                    disco_key: p.disco_key,
                    endpoints: p.endpoints.clone(),
                    home_derp: u16::try_from(p.home_derp_region()).ok().filter(|r| *r > 0),
                    mapping_varies: netmon::mapping_varies(p),
                })
                .collect(),
            now,
        );
        self.send_parked(now);
        let derp_map_changed = self.netmap.as_ref().map(|old| &old.derp_map) != Some(&nm.derp_map);
        if let Some(map) = &nm.derp_map {
            self.derp.set_map(map.clone());
            self.stun
                .set_regions(nat::stun_client::regions_from_derp_map(map));
            // New STUN servers: measure now (as Tailscale does on a DERP map change) rather than
            // at the next periodic re-STUN.
            if derp_map_changed {
                self.next_stun = now;
            }
            // Until STUN has measured, home on the first relay region so DERP works at once.
            if self.derp.home().is_none() {
                let first = map
                    .regions
                    .values()
                    .find(|r| r.nodes.iter().any(|n| !n.stun_only))
                    .map(|r| r.region_id);
                let home = first.and_then(|r| u16::try_from(r).ok());
                self.derp.set_home(home);
                self.paths.set_home_derp(home);
            }
        }
        self.backend_state = BackendState::Running;
        self.netmap = Some(nm);
        self.ensure_portmap();
        self.sync_dns().await;
    }

    /// Configures the engine (peers with their AllowedIPs, served routes, filter) and the OS
    /// routing for `nm`, following the routing preferences.
    async fn configure_engine(&mut self, nm: &NetMap, addresses: &[IpNet], now: Instant) {
        let local = router::LocalNets::read(&self.cfg.tun);
        let c = router::compose(
            &self.cfg.tun,
            &self.prefs.routing,
            nm,
            &local,
            chrono::Utc::now(),
        );
        let peers: Vec<PeerConfig> = c
            .peers
            .iter()
            .map(|(key, allowed)| PeerConfig {
                key: *key,
                allowed_ips: allowed.clone(),
                keepalive: None,
            })
            .collect();
        let cfg = EngineConfig {
            addresses: addresses.to_vec(),
            local_routes: c.local_routes,
            peers,
            filter: nm.packet_filter.clone(),
        };
        let errors = self.engine.set_config(cfg, now);
        if !errors.is_empty() {
            tracing::warn!(
                count = errors.len(),
                "some filter rules were not understood and are ignored"
            );
        }
        for w in &c.warnings {
            tracing::warn!("{w}");
        }
        self.router.set_warnings(c.warnings);
        self.router.apply(&c.plan).await;
    }

    /// Re-applies routing after a preference change, when the node is connected.
    async fn apply_routing(&mut self, now: Instant) {
        if self.backend_state != BackendState::Running || self.tun.is_none() {
            return;
        }
        let Some(nm) = self.netmap.clone() else {
            return;
        };
        let Some(addresses) = nm.self_node.as_ref().map(|me| me.addresses.clone()) else {
            return;
        };
        self.configure_engine(&nm, &addresses, now).await;
    }

    async fn setup_tun(
        &mut self,
        addresses: &[IpNet],
        tun_tx: &mpsc::Sender<TunPacket>,
    ) -> Result<(), dataplane::tun::TunError> {
        // A reader that gave up (the device failed underneath us) means the device is gone for
        // good: drop it so it is created afresh below.
        if self.tun.as_ref().is_some_and(|t| t.reader.is_finished()) {
            tracing::warn!("TUN reader stopped; recreating the device");
            self.tun = None;
        }
        if self.tun.is_none() {
            let device = Arc::new(dataplane::tun::TunDevice::create(
                &dataplane::tun::TunConfig {
                    name: self.cfg.tun.clone(),
                    mtu: MTU,
                },
            )?);
            let reader_dev = Arc::clone(&device);
            let tx = tun_tx.clone();
            let (spare, mut spares) = mpsc::channel::<Vec<u8>>(TUN_BUFFERS);
            let reader = tokio::spawn(async move {
                // Transient read errors are retried with a short backoff; a device that keeps
                // failing ends the reader, and the next netmap recreates it (`setup_tun`).
                let mut failures = 0u32;
                loop {
                    // Recycled buffers keep their full length, so nothing is zeroed per read.
                    let mut buf = spares.try_recv().unwrap_or_else(|_| vec![0u8; TUN_READ]);
                    match reader_dev.recv(&mut buf).await {
                        Ok(len) => {
                            failures = 0;
                            if tx.send(TunPacket { buf, len }).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, failures, "TUN read failed");
                            if failures >= TUN_READ_MAX_FAILURES {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50 << failures.min(4))).await;
                        }
                    }
                }
            });
            self.tun = Some(Tun {
                device,
                reader,
                spare,
            });
            self.configured_addrs.clear();
        }
        let name = self.cfg.tun.clone();
        let new: Vec<IpNet> = addresses
            .iter()
            .filter(|a| !self.configured_addrs.contains(a))
            .copied()
            .collect();
        // No routes here: the tailnet routes are the router's (table 52 behind policy rules,
        // or the main table when policy routing is unavailable).
        dataplane::tun::configure(&name, MTU, &new, &[]).await?;
        self.configured_addrs = addresses.to_vec();
        tracing::info!(tun = %name, addresses = ?addresses, "TUN device configured");
        Ok(())
    }

    /// Removes the TUN device (its addresses and routes go with it).
    async fn teardown_dataplane(&mut self) {
        // DNS first: the OS must stop sending queries to an address about to disappear.
        self.dns.stop().await;
        self.router.teardown().await;
        if let Some(tun) = self.tun.take() {
            tun.reader.abort();
            drop(tun.device);
            tracing::info!(tun = %self.cfg.tun, "TUN device removed");
        }
        self.configured_addrs.clear();
        let now = Instant::now();
        self.engine.set_config(
            EngineConfig {
                filter: Some(Vec::new()),
                ..Default::default()
            },
            now,
        );
        self.paths.set_peers(Vec::new(), now);
    }

    async fn stop_all(&mut self) {
        if let Some((c, _)) = self.control.take() {
            c.shutdown().await;
        }
        self.stop_portmap().await;
        self.teardown_dataplane().await;
        self.derp.shutdown();
        self.netmap = None;
        for p in self.pings.drain(..) {
            let _ = p.reply.send(Err(BackendError::NotRunning {
                state: BackendState::Stopped,
            }));
        }
    }

    fn start_ping(
        &mut self,
        target: &str,
        count: u32,
        tx: oneshot::Sender<Result<Vec<PingReply>, BackendError>>,
        now: Instant,
    ) {
        let Some(nm) = self
            .netmap
            .clone()
            .filter(|_| self.backend_state == BackendState::Running)
        else {
            let _ = tx.send(Err(BackendError::NotRunning {
                state: self.backend_state,
            }));
            return;
        };
        let Some(peer) = status::find_peer(&nm, target) else {
            let _ = tx.send(Err(BackendError::NotFound(format!(
                "no peer named or addressed {target:?}; see `agent status`"
            ))));
            return;
        };
        let ip = peer
            .addresses
            .first()
            .map(|a| a.addr())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.pings.push(PendingPing {
            peer: peer.key,
            name: peer.name.trim_end_matches('.').to_string(),
            ip,
            count: count.max(1),
            sent: 0,
            outstanding: Vec::new(),
            replies: Vec::new(),
            next_send: now,
            deadline: now + PING_SPACING * count.max(1) + Duration::from_secs(5),
            reply: tx,
        });
        self.advance_pings(now);
    }

    /// Sends due pings and finishes pings that are done: `count` answers, a direct answer, or
    /// the deadline.
    fn advance_pings(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pings.len() {
            let p = &mut self.pings[i];
            let direct = p
                .replies
                .iter()
                .any(|r| matches!(r.path, crate::ipn::Path::Direct { .. }));
            let done = direct
                || p.replies.len() as u32 >= p.count
                || now >= p.deadline
                || (p.sent >= p.count && p.outstanding.is_empty());
            if done {
                let p = self.pings.swap_remove(i);
                let _ = p.reply.send(Ok(p.replies));
                continue;
            }
            if p.sent < p.count && now >= p.next_send {
                let peer = p.peer;
                let seq = p.sent;
                if let Some(id) = self.paths.ping(&peer, now) {
                    let p = &mut self.pings[i];
                    p.outstanding.push((seq, id));
                }
                let p = &mut self.pings[i];
                p.sent += 1;
                p.next_send = now + PING_SPACING;
            }
            i += 1;
        }
    }

    fn whois(&self, ip: IpAddr) -> Result<WhoIs, BackendError> {
        let nm = self.netmap.as_ref().ok_or(BackendError::NotRunning {
            state: self.backend_state,
        })?;
        status::whois(nm, ip)
            .ok_or_else(|| BackendError::NotFound(format!("no node has the address {ip}")))
    }

    fn status(&self, now: Instant) -> Status {
        status::build(self, now)
    }
}

fn hex_id(bytes: &[u8; 32]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
