//! DERP connections of the agent: one task per region, opened on demand.
//!
//! The home region's connection is kept open and marked preferred; others open when a packet
//! must go there (a peer's home region) and close after 60 s without writes, as Tailscale's
//! magicsock does. Each task owns a sans-IO [`nat::derp::client::Client`] and its stream, and
//! reconnects with capped exponential backoff. Received packets go to the driver through one
//! channel, tagged with their region.
//!
//! Liveness: a connection that has heard nothing from its server for [`KEEPALIVE_IDLE`] sends a
//! DERP Ping and is dropped (and redialled) if nothing at all arrives within [`PING_TIMEOUT`].
//! That catches connections whose NAT state was flushed, or that left through an address the
//! host no longer has, in seconds rather than at the next TCP timeout. After a network change
//! the driver asks for the same check at once with a shorter deadline
//! ([`DerpManager::check_connections`]) or redials everything
//! ([`DerpManager::reconnect_all`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nat::derp::client::{ClientConfig, ClientEvent};
use nat::derp::dial::{DialOptions, TlsVerify};
use proto::keys::{NodePrivate, NodePublic};
use proto::tailcfg::{DerpMap, DerpRegion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// Close a non-home region after this long without writes.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// Outgoing queue per region; when it is full, new packets are dropped (WireGuard and disco
/// retry on their own).
const QUEUE: usize = 32;
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Ping the server after this long without hearing from it.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// A keep-alive Ping must be answered (by anything from the server) within this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the check after a network change (Tailscale's magicsock uses 3 s).
pub const NETWORK_CHANGE_PING: Duration = Duration::from_secs(3);
/// Writes that take longer than this mean the connection is stuck (a dead peer with a full
/// send buffer would otherwise block the task until TCP gives up, many minutes later).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A packet that arrived over DERP.
#[derive(Debug)]
pub struct DerpIn {
    pub region: u16,
    pub src: NodePublic,
    pub payload: Vec<u8>,
}

/// Connection state changes, for status and path decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerpState {
    Connected { region: u16 },
    Disconnected { region: u16, reason: String },
    PeerGone { region: u16, peer: NodePublic },
}

/// What the driver receives from DERP tasks.
#[derive(Debug)]
pub enum DerpEvent {
    Packet(DerpIn),
    State(DerpState),
}

enum Out {
    Packet(NodePublic, Vec<u8>),
    Preferred(bool),
    /// Ping the server now; drop the connection if nothing arrives within the duration.
    Check(Duration),
}

struct RegionConn {
    out: mpsc::Sender<Out>,
    task: tokio::task::JoinHandle<()>,
    last_write: Instant,
}

/// All DERP connections of this node.
pub struct DerpManager {
    private: NodePrivate,
    map: DerpMap,
    home: Option<u16>,
    conns: BTreeMap<u16, RegionConn>,
    events: mpsc::Sender<DerpEvent>,
    roots: Arc<rustls::RootCertStore>,
}

impl DerpManager {
    /// A manager whose tasks report to `events`.
    pub fn new(private: NodePrivate, events: mpsc::Sender<DerpEvent>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        DerpManager {
            private,
            map: DerpMap::default(),
            home: None,
            conns: BTreeMap::new(),
            events,
            roots: Arc::new(roots),
        }
    }

    /// A new DERP map: regions that vanished or changed are reconnected.
    pub fn set_map(&mut self, map: DerpMap) {
        if map == self.map {
            return;
        }
        let changed: Vec<u16> = self
            .conns
            .keys()
            .copied()
            .filter(|r| map.regions.get(&i32::from(*r)) != self.map.regions.get(&i32::from(*r)))
            .collect();
        self.map = map;
        for r in changed {
            self.close(r);
        }
        if let Some(h) = self.home {
            self.ensure(h);
        }
    }

    /// Sets the home region: connects to it and marks it preferred (and the old one not).
    pub fn set_home(&mut self, region: Option<u16>) {
        if region == self.home {
            return;
        }
        if let Some(old) = self.home.and_then(|o| self.conns.get(&o)) {
            let _ = old.out.try_send(Out::Preferred(false));
        }
        self.home = region;
        if let Some(r) = region {
            self.ensure(r);
            if let Some(c) = self.conns.get(&r) {
                let _ = c.out.try_send(Out::Preferred(true));
            }
        }
    }

    /// The home region.
    pub fn home(&self) -> Option<u16> {
        self.home
    }

    /// The region's code, for status output.
    pub fn region_code(&self, region: u16) -> String {
        self.map
            .regions
            .get(&i32::from(region))
            .map(|r| {
                if r.region_code.is_empty() {
                    r.region_name.clone()
                } else {
                    r.region_code.clone()
                }
            })
            .unwrap_or_else(|| format!("region {region}"))
    }

    /// Queues `payload` for `dst` through `region`, connecting if needed. Drops the packet when
    /// the queue is full (the sender's protocol retransmits).
    pub fn send(&mut self, region: u16, dst: NodePublic, payload: Vec<u8>, now: Instant) {
        self.ensure(region);
        if let Some(c) = self.conns.get_mut(&region) {
            c.last_write = now;
            if c.out.try_send(Out::Packet(dst, payload)).is_err() {
                tracing::trace!(region, "DERP queue full; packet dropped");
            }
        }
    }

    /// Closes idle non-home connections.
    pub fn cleanup(&mut self, now: Instant) {
        let idle: Vec<u16> = self
            .conns
            .iter()
            .filter(|(r, c)| {
                Some(**r) != self.home && now.duration_since(c.last_write) > IDLE_CLOSE
            })
            .map(|(r, _)| *r)
            .collect();
        for r in idle {
            tracing::debug!(region = r, "closing idle DERP connection");
            self.close(r);
        }
    }

    /// Pings every open connection; one that hears nothing back within `deadline` is redialled.
    pub fn check_connections(&mut self, deadline: Duration) {
        for c in self.conns.values() {
            let _ = c.out.try_send(Out::Check(deadline));
        }
    }

    /// Drops every connection and redials the home region (others reopen when a packet needs
    /// them). Used when the addresses the old connections used are gone.
    pub fn reconnect_all(&mut self) {
        self.shutdown();
        if let Some(h) = self.home {
            self.ensure(h);
        }
    }

    /// Closes everything.
    pub fn shutdown(&mut self) {
        let all: Vec<u16> = self.conns.keys().copied().collect();
        for r in all {
            self.close(r);
        }
    }

    fn close(&mut self, region: u16) {
        if let Some(c) = self.conns.remove(&region) {
            c.task.abort();
        }
    }

    fn ensure(&mut self, region: u16) {
        if self
            .conns
            .get(&region)
            .is_some_and(|c| !c.task.is_finished())
        {
            return;
        }
        let Some(def) = self.map.regions.get(&i32::from(region)).cloned() else {
            tracing::debug!(region, "no such DERP region in the map");
            return;
        };
        let (out, rx) = mpsc::channel(QUEUE);
        let preferred = self.home == Some(region);
        let task = tokio::spawn(run_region(
            region,
            def,
            NodePrivate::from_bytes(*self.private.as_bytes()),
            Arc::clone(&self.roots),
            rx,
            self.events.clone(),
            preferred,
        ));
        self.conns.insert(
            region,
            RegionConn {
                out,
                task,
                last_write: Instant::now(),
            },
        );
    }
}

impl Drop for DerpManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The dial options for each non-STUN-only node of a region, in map order.
fn dial_options(def: &DerpRegion, roots: &Arc<rustls::RootCertStore>) -> Vec<DialOptions> {
    def.nodes
        .iter()
        .filter(|n| !n.stun_only)
        .map(|n| {
            let port = if n.derp_port > 0 { n.derp_port } else { 443 };
            let host = if n.host_name.contains(':') {
                format!("[{}]", n.host_name)
            } else {
                n.host_name.clone()
            };
            let mut opts = DialOptions::new(
                format!("https://{host}:{port}/derp"),
                TlsVerify::from_cert_name(
                    Some(n.cert_name.as_str()).filter(|c| !c.is_empty()),
                    Arc::clone(roots),
                ),
            );
            let port = u16::try_from(port).unwrap_or(443);
            opts.connect_to = n
                .ipv4
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .map(|ip| std::net::SocketAddr::from((ip, port)))
                .or_else(|| {
                    n.ipv6
                        .parse::<std::net::Ipv6Addr>()
                        .ok()
                        .map(|ip| std::net::SocketAddr::from((ip, port)))
                });
            opts
        })
        .collect()
}

async fn run_region(
    region: u16,
    def: DerpRegion,
    private: NodePrivate,
    roots: Arc<rustls::RootCertStore>,
    mut rx: mpsc::Receiver<Out>,
    events: mpsc::Sender<DerpEvent>,
    mut preferred: bool,
) {
    let options = dial_options(&def, &roots);
    let mut backoff = Duration::from_millis(100);
    let mut attempt: u64 = 0;
    loop {
        let mut last_err = String::from("region has no DERP nodes");
        for opts in &options {
            attempt += 1;
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&attempt.to_le_bytes());
            seed[8..10].copy_from_slice(&region.to_le_bytes());
            let cfg = ClientConfig::new(NodePrivate::from_bytes(*private.as_bytes()), seed);
            match nat::derp::dial::connect(opts, cfg).await {
                Ok(conn) => {
                    backoff = Duration::from_millis(100);
                    let _ = events
                        .send(DerpEvent::State(DerpState::Connected { region }))
                        .await;
                    tracing::info!(region, url = %opts.url, "DERP connected");
                    let reason = serve(region, conn, &mut rx, &events, &mut preferred).await;
                    let _ = events
                        .send(DerpEvent::State(DerpState::Disconnected {
                            region,
                            reason: reason.clone(),
                        }))
                        .await;
                    tracing::info!(region, %reason, "DERP disconnected");
                    if reason == "closed by the agent" {
                        return;
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        tracing::debug!(region, error = %last_err, "DERP connect failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs one established connection until it fails; returns why.
async fn serve(
    region: u16,
    conn: nat::derp::dial::DerpConnection,
    rx: &mut mpsc::Receiver<Out>,
    events: &mpsc::Sender<DerpEvent>,
    preferred: &mut bool,
) -> String {
    let (stream, mut client) = conn.into_parts();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 64 * 1024];
    if *preferred && client.note_preferred(true).is_err() {
        return "cannot mark the home region".into();
    }
    let mut last_heard = tokio::time::Instant::now();
    // An outstanding liveness check: anything from the server before this instant clears it.
    let mut check: Option<tokio::time::Instant> = None;
    loop {
        let write = async {
            while let Some(bytes) = client.poll_transmit() {
                wr.write_all(&bytes).await?;
            }
            wr.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("write failed: {e}"),
            Err(_) => {
                return format!("write stalled for {} s", WRITE_TIMEOUT.as_secs());
            }
        }
        let wake = check.unwrap_or(last_heard + KEEPALIVE_IDLE);
        tokio::select! {
            read = rd.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return "server closed the connection".into(),
                    Ok(n) => n,
                    Err(e) => return format!("read failed: {e}"),
                };
                last_heard = tokio::time::Instant::now();
                check = None;
                if let Err(e) = client.handle_input(buf.get(..n).unwrap_or_default()) {
                    return format!("protocol error: {e}");
                }
                while let Some(ev) = client.poll_event() {
                    let msg = match ev {
                        ClientEvent::Packet { src, packet } => DerpEvent::Packet(DerpIn { region, src, payload: packet }),
                        ClientEvent::PeerGone { peer, .. } => DerpEvent::State(DerpState::PeerGone { region, peer }),
                        _ => continue,
                    };
                    if events.send(msg).await.is_err() {
                        return "closed by the agent".into();
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if check.is_some() {
                    return "no answer to a DERP ping".into();
                }
                if let Err(e) = client.send_ping(rand::random()) {
                    return format!("cannot ping the server: {e}");
                }
                check = Some(tokio::time::Instant::now() + PING_TIMEOUT);
            }
            out = rx.recv() => match out {
                None => return "closed by the agent".into(),
                Some(Out::Packet(dst, payload)) => {
                    if let Err(e) = client.send_packet(dst, &payload) {
                        tracing::debug!(region, error = %e, "DERP packet not sent");
                    }
                }
                Some(Out::Preferred(p)) => {
                    *preferred = p;
                    if client.note_preferred(p).is_err() {
                        return "cannot mark the home region".into();
                    }
                }
                Some(Out::Check(deadline)) => {
                    if let Err(e) = client.send_ping(rand::random()) {
                        return format!("cannot ping the server: {e}");
                    }
                    let until = tokio::time::Instant::now() + deadline;
                    check = Some(check.map_or(until, |c| c.min(until)));
                }
            },
        }
    }
}
