//! Port mapping: ask the LAN gateway to forward a public UDP port to our WireGuard port, with
//! NAT-PMP (RFC 6886) or PCP (RFC 6887), so peers can reach us directly through the NAT. The
//! mapping becomes an `EndpointPortmapped` candidate.
//!
//! [`Client`] is a sans-IO state machine (bytes and `now` in, datagrams, events and deadlines
//! out). Drive it like every state machine in this crate:
//!
//! - inputs: [`Client::probe`], [`Client::request_mapping`], [`Client::release`],
//!   [`Client::handle_datagram`] (everything the socket receives) and [`Client::handle_timeout`]
//!   (when the deadline from [`Client::poll_timeout`] passes);
//! - after every input, drain [`Client::poll_transmit`] (send each datagram to the address it
//!   names, the gateway's port 5351), then [`Client::poll_event`], then re-arm the timer with
//!   [`Client::poll_timeout`].
//!
//! Behaviour: a probe sends a NAT-PMP external address request and a PCP ANNOUNCE together;
//! a mapping is asked with PCP when the gateway speaks it (its answer carries the external
//! address) and with NAT-PMP otherwise (plus an external address request). Requests are retried
//! after 250 ms, doubling, [`MAX_TRIES`] times (RFC 6886 §3.1). A granted mapping is renewed at
//! half its lifetime, re-checked every [`Config::check_interval`] (which also notices a changed
//! public address), and re-created at once when the gateway's epoch shows that it restarted
//! (RFC 6886 §3.6, RFC 6887 §8.5). [`Client::release`] deletes the mapping (lifetime 0).
//!
//! [`io`] (feature `portmap`) is the tokio shell that owns a socket and runs this client, finds
//! the default gateway, and falls back to UPnP IGD ([`upnp`]) when neither protocol answers.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

#[cfg(feature = "portmap")]
pub mod io;
pub mod pcp;
pub mod pmp;
#[cfg(feature = "portmap")]
pub mod upnp;

#[cfg(test)]
mod tests;

/// The lifetime asked for, as Tailscale does (2 hours).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7200);
/// How often a live mapping is re-checked against the gateway's epoch and public address.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(120);
/// The first retransmission delay; it doubles on every try (RFC 6886 §3.1).
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Requests are sent this many times before the gateway counts as silent (3.75 s in all).
pub const MAX_TRIES: u32 = 4;
/// After a round that obtained nothing, the next round starts this much later.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);
/// After a renewal that got no answer, the next renewal starts this much later.
pub const RENEW_RETRY: Duration = Duration::from_secs(30);

/// The protocol a mapping was obtained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// NAT-PMP (RFC 6886).
    NatPmp,
    /// PCP (RFC 6887).
    Pcp,
    /// UPnP IGD (only from the [`io`] shell).
    Upnp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NatPmp => "NAT-PMP",
            Self::Pcp => "PCP",
            Self::Upnp => "UPnP",
        })
    }
}

/// A mapping granted by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// How it was obtained.
    pub protocol: Protocol,
    /// The public address and port peers can send to.
    pub external: SocketAddr,
    /// Our local (WireGuard) port the gateway forwards to.
    pub internal_port: u16,
    /// How long the gateway keeps it without a renewal.
    pub lifetime: Duration,
}

/// Which port mapping services the gateway answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeResult {
    /// NAT-PMP answered with success.
    pub pmp: bool,
    /// PCP answered with success.
    pub pcp: bool,
    /// A UPnP IGD was found (only the [`io`] shell searches for one).
    pub upnp: bool,
    /// The public IPv4 address NAT-PMP (or UPnP) reported.
    pub public_ip: Option<Ipv4Addr>,
}

impl ProbeResult {
    /// Whether any service answered.
    pub fn any(&self) -> bool {
        self.pmp || self.pcp || self.upnp
    }
}

/// What the client tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortmapEvent {
    /// A probe finished.
    Probed(ProbeResult),
    /// A new mapping, or one whose external address changed: it replaces any earlier one.
    Mapped(Mapping),
    /// The mapping was renewed unchanged.
    Renewed(Mapping),
    /// The mapping is gone (expired, refused on renewal, or the gateway restarted); the client
    /// tries to get a new one by itself.
    Lost {
        /// The mapping that stopped working.
        mapping: Mapping,
        /// Why.
        reason: PortmapError,
    },
    /// No mapping could be obtained; the client tries again after [`RETRY_AFTER_FAILURE`].
    Failed(PortmapError),
    /// The deletion requested with [`Client::release`] was answered or given up on.
    Released,
}

/// Why a mapping could not be obtained or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortmapError {
    /// The gateway answered neither NAT-PMP nor PCP (nor UPnP, when searched for).
    #[error("the gateway {gateway} offers no port mapping service")]
    NoService {
        /// The gateway asked.
        gateway: Ipv4Addr,
    },
    /// The gateway stopped answering.
    #[error("the gateway {gateway} did not answer the {protocol} request after {tries} tries")]
    Timeout {
        /// The gateway asked.
        gateway: Ipv4Addr,
        /// The protocol used.
        protocol: Protocol,
        /// How many requests were sent.
        tries: u32,
    },
    /// The gateway answered NAT-PMP with an error.
    #[error("the gateway refused the NAT-PMP mapping: result {0}")]
    PmpRefused(pmp::ResultCode),
    /// The gateway answered PCP with an error.
    #[error("the gateway refused the PCP mapping: result {0}")]
    PcpRefused(pcp::ResultCode),
    /// The gateway granted a mapping that expires at once.
    #[error("the gateway granted the mapping with a zero lifetime")]
    ZeroLifetime,
    /// The renewals failed until the lifetime ran out.
    #[error("the mapping expired without a successful renewal")]
    Expired,
    /// The gateway's epoch went back: it restarted and forgot its mappings.
    #[error("the gateway restarted and forgot the mapping")]
    GatewayRestarted,
    /// UPnP IGD failed (from the [`io`] shell).
    #[error("UPnP IGD: {0}")]
    Upnp(String),
}

/// What the client needs to know about the network.
#[derive(Debug, Clone)]
pub struct Config {
    /// The default gateway (the NAT-PMP/PCP server).
    pub gateway: Ipv4Addr,
    /// Our own address on the gateway's LAN (PCP puts it in every request).
    pub local_ip: Ipv4Addr,
    /// The local UDP port to map (the WireGuard socket's port).
    pub internal_port: u16,
    /// The lifetime to ask for.
    pub lifetime: Duration,
    /// How often a live mapping is re-checked.
    pub check_interval: Duration,
    /// The PCP mapping nonce (random; renewals and the deletion repeat it).
    pub nonce: [u8; 12],
    /// Speak NAT-PMP.
    pub use_pmp: bool,
    /// Speak PCP.
    pub use_pcp: bool,
}

impl Config {
    /// A configuration with the default lifetime and check interval.
    pub fn new(gateway: Ipv4Addr, local_ip: Ipv4Addr, internal_port: u16, nonce: [u8; 12]) -> Self {
        Self {
            gateway,
            local_ip,
            internal_port,
            lifetime: DEFAULT_LIFETIME,
            check_interval: DEFAULT_CHECK_INTERVAL,
            nonce,
            use_pmp: true,
            use_pcp: true,
        }
    }
}

/// The sans-IO NAT-PMP/PCP client. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Client {
    cfg: Config,
    pmp_support: Option<bool>,
    pcp_support: Option<bool>,
    public_ip: Option<Ipv4Addr>,
    epoch_pmp: Option<Epoch>,
    epoch_pcp: Option<Epoch>,
    current: Option<Current>,
    last_external_port: Option<u16>,
    want_mapping: bool,
    probe_requested: bool,
    fallback_used: bool,
    op: Option<Pending>,
    check_at: Option<Instant>,
    retry_round_at: Option<Instant>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<PortmapEvent>,
}

/// A server epoch and when we saw it.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    server: u32,
    at: Instant,
}

/// The live mapping and its deadlines.
#[derive(Debug, Clone, Copy)]
struct Current {
    mapping: Mapping,
    renew_at: Instant,
    expires_at: Instant,
}

/// The exchange in flight: at most one at a time.
#[derive(Debug, Clone, Copy)]
struct Pending {
    op: Op,
    tries: u32,
    retry_at: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// NAT-PMP external address request and PCP ANNOUNCE; `None` until answered.
    Probe {
        pmp: Option<bool>,
        pcp: Option<bool>,
    },
    /// A mapping request. NAT-PMP needs the map answer and the external address answer.
    Map {
        protocol: Protocol,
        granted: Option<(u16, u32)>,
        have_addr: bool,
    },
    /// A liveness check of the gateway's epoch (and public address for NAT-PMP).
    Check { protocol: Protocol },
    /// Deletion of a mapping.
    Release {
        protocol: Protocol,
        external: Option<SocketAddr>,
    },
}

impl Client {
    /// A client that does nothing until asked.
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            pmp_support: None,
            pcp_support: None,
            public_ip: None,
            epoch_pmp: None,
            epoch_pcp: None,
            current: None,
            last_external_port: None,
            want_mapping: false,
            probe_requested: false,
            fallback_used: false,
            op: None,
            check_at: None,
            retry_round_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The live mapping, if any.
    pub fn mapping(&self) -> Option<Mapping> {
        self.current.map(|c| c.mapping)
    }

    /// The gateway's NAT-PMP/PCP address.
    pub fn server(&self) -> SocketAddr {
        SocketAddr::from((self.cfg.gateway, pmp::SERVER_PORT))
    }

    /// Finds out which of NAT-PMP and PCP the gateway answers; ends with
    /// [`PortmapEvent::Probed`].
    pub fn probe(&mut self, now: Instant) {
        self.probe_requested = true;
        self.schedule(now);
    }

    /// Obtains a mapping and keeps it alive until [`Client::release`]. Probes first if needed.
    pub fn request_mapping(&mut self, now: Instant) {
        self.want_mapping = true;
        self.retry_round_at = None;
        self.schedule(now);
    }

    /// Deletes the mapping (lifetime 0) and stops renewing; ends with [`PortmapEvent::Released`].
    pub fn release(&mut self, now: Instant) {
        self.want_mapping = false;
        self.retry_round_at = None;
        self.check_at = None;
        let in_flight = match self.op.map(|p| p.op) {
            // A request in flight may have created a mapping already: delete that too.
            Some(Op::Map { protocol, .. }) => Some((protocol, None)),
            Some(Op::Release { protocol, external }) => Some((protocol, external)),
            _ => None,
        };
        let target = self
            .current
            .take()
            .map(|c| (c.mapping.protocol, Some(c.mapping.external)))
            .or(in_flight);
        self.op = None;
        match target {
            Some((protocol @ (Protocol::NatPmp | Protocol::Pcp), external)) => {
                self.start(Op::Release { protocol, external }, now);
            }
            _ => self.events.push_back(PortmapEvent::Released),
        }
    }

    /// Feeds a datagram received on the mapping socket. Returns whether it came from the
    /// gateway's port 5351 (and so was meant for this client).
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> bool {
        if from != self.server() {
            return false;
        }
        match bytes.first() {
            Some(&pmp::VERSION) => match pmp::decode(bytes) {
                Ok(resp) => self.on_pmp(resp, now),
                Err(e) => tracing::debug!(error = %e, "ignoring malformed NAT-PMP datagram"),
            },
            Some(&pcp::VERSION) => match pcp::decode(bytes) {
                Ok(resp) => self.on_pcp(resp, now),
                Err(e) => tracing::debug!(error = %e, "ignoring malformed PCP datagram"),
            },
            _ => tracing::debug!(
                len = bytes.len(),
                "ignoring unknown datagram from the gateway"
            ),
        }
        self.schedule(now);
        true
    }

    /// Runs retransmissions, renewals, checks and expiry that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = self.op
            && p.retry_at <= now
        {
            if p.tries >= MAX_TRIES {
                self.op_timed_out(p.op, now);
            } else {
                self.send(now);
            }
        }
        if let Some(cur) = self.current
            && cur.expires_at <= now
        {
            self.current = None;
            self.lose(cur.mapping, PortmapError::Expired);
        }
        self.schedule(now);
    }

    /// The next deadline at which [`Client::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut add = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        add(self.op.map(|p| p.retry_at));
        add(self.current.map(|c| c.expires_at));
        // Renewals, checks and new rounds only start while nothing is in flight; arming them
        // meanwhile would wake the driver in a loop.
        if self.op.is_none() {
            if self.want_mapping {
                add(self.current.map(|c| c.renew_at));
            }
            if self.current.is_some() {
                add(self.check_at);
            } else if self.want_mapping {
                add(self.retry_round_at);
            }
        }
        t
    }

    /// The next datagram to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PortmapEvent> {
        self.events.pop_front()
    }

    /// Starts whatever is due when nothing is in flight.
    fn schedule(&mut self, now: Instant) {
        if self.op.is_some() {
            return;
        }
        if self.probe_requested {
            self.probe_requested = false;
            self.start_probe(now);
            return;
        }
        if !self.want_mapping {
            return;
        }
        if let Some(cur) = self.current {
            if cur.renew_at <= now {
                self.start_map(cur.mapping.protocol, now);
            } else if self.check_at.is_some_and(|t| t <= now) {
                self.start(
                    Op::Check {
                        protocol: cur.mapping.protocol,
                    },
                    now,
                );
            }
            return;
        }
        if self.retry_round_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_round_at = None;
        match (self.pcp_support, self.pmp_support) {
            (Some(true), _) => self.start_map(Protocol::Pcp, now),
            (_, Some(true)) => self.start_map(Protocol::NatPmp, now),
            (None, _) | (_, None) => self.start_probe(now),
            (Some(false), Some(false)) => {
                self.fail_round(
                    PortmapError::NoService {
                        gateway: self.cfg.gateway,
                    },
                    now,
                );
            }
        }
    }

    fn start_probe(&mut self, now: Instant) {
        // A protocol turned off counts as answered "no".
        let pmp = (!self.cfg.use_pmp).then_some(false);
        let pcp = (!self.cfg.use_pcp).then_some(false);
        if let (Some(a), Some(b)) = (pmp, pcp) {
            self.finish_probe(a, b);
            self.schedule(now);
            return;
        }
        self.start(Op::Probe { pmp, pcp }, now);
    }

    fn start_map(&mut self, protocol: Protocol, now: Instant) {
        let have_addr = protocol != Protocol::NatPmp;
        self.start(
            Op::Map {
                protocol,
                granted: None,
                have_addr,
            },
            now,
        );
    }

    fn start(&mut self, op: Op, now: Instant) {
        self.op = Some(Pending {
            op,
            tries: 0,
            retry_at: now,
        });
        self.send(now);
    }

    /// (Re)sends the requests of the exchange in flight and arms its retry.
    fn send(&mut self, now: Instant) {
        let Some(p) = self.op.as_mut() else { return };
        let op = p.op;
        p.retry_at = now + FIRST_RETRY * 2u32.saturating_pow(p.tries);
        p.tries += 1;
        let to = self.server();
        let cfg = &self.cfg;
        let local = IpAddr::V4(cfg.local_ip);
        let lifetime = u32::try_from(cfg.lifetime.as_secs()).unwrap_or(u32::MAX);
        let suggested_port = self
            .current
            .map(|c| c.mapping.external.port())
            .or(self.last_external_port)
            .unwrap_or(cfg.internal_port);
        let mut out: Vec<Vec<u8>> = Vec::new();
        match op {
            Op::Probe { pmp, pcp } => {
                if pmp.is_none() {
                    out.push(pmp::encode_external_address_request().to_vec());
                }
                if pcp.is_none() {
                    out.push(pcp::encode_announce(local).to_vec());
                }
            }
            Op::Map {
                protocol: Protocol::Pcp,
                ..
            } => {
                let ext_ip = self.current.map(|c| c.mapping.external.ip());
                let req = pcp::encode_map(
                    local,
                    lifetime,
                    cfg.nonce,
                    cfg.internal_port,
                    suggested_port,
                    ext_ip,
                );
                out.push(req.to_vec());
            }
            Op::Map {
                granted, have_addr, ..
            } => {
                if granted.is_none() {
                    out.push(
                        pmp::encode_map_request(cfg.internal_port, suggested_port, lifetime)
                            .to_vec(),
                    );
                }
                if !have_addr {
                    out.push(pmp::encode_external_address_request().to_vec());
                }
            }
            Op::Check {
                protocol: Protocol::Pcp,
            } => out.push(pcp::encode_announce(local).to_vec()),
            Op::Check { .. } => out.push(pmp::encode_external_address_request().to_vec()),
            Op::Release {
                protocol: Protocol::Pcp,
                external,
            } => {
                let (port, ip) = external.map_or((0, None), |e| (e.port(), Some(e.ip())));
                out.push(
                    pcp::encode_map(local, 0, cfg.nonce, cfg.internal_port, port, ip).to_vec(),
                );
            }
            Op::Release { .. } => {
                out.push(pmp::encode_map_request(cfg.internal_port, 0, 0).to_vec())
            }
        }
        self.transmits.extend(out.into_iter().map(|b| (to, b)));
    }

    fn op_timed_out(&mut self, op: Op, now: Instant) {
        self.op = None;
        match op {
            Op::Probe { pmp, pcp } => {
                self.finish_probe(pmp.unwrap_or(false), pcp.unwrap_or(false));
            }
            Op::Map { protocol, .. } => {
                let err = PortmapError::Timeout {
                    gateway: self.cfg.gateway,
                    protocol,
                    tries: MAX_TRIES,
                };
                match self.current.as_mut() {
                    // The mapping lives until it expires; try again a little later.
                    Some(cur) => {
                        tracing::debug!(%err, "port mapping renewal got no answer");
                        cur.renew_at = now + RENEW_RETRY;
                    }
                    None => self.map_failed(protocol, err, now),
                }
            }
            Op::Check { .. } => self.check_at = Some(now + self.cfg.check_interval),
            Op::Release { .. } => self.events.push_back(PortmapEvent::Released),
        }
    }

    fn finish_probe(&mut self, pmp: bool, pcp: bool) {
        self.pmp_support = Some(pmp);
        self.pcp_support = Some(pcp);
        let public_ip = if pmp { self.public_ip } else { None };
        self.events.push_back(PortmapEvent::Probed(ProbeResult {
            pmp,
            pcp,
            upnp: false,
            public_ip,
        }));
    }

    /// Records the probe answer of one protocol and finishes the probe when both are known.
    fn probe_answer(&mut self, pmp_ans: Option<bool>, pcp_ans: Option<bool>) {
        let Some(Pending {
            op: Op::Probe { pmp, pcp },
            ..
        }) = self.op.as_mut()
        else {
            // Outside a probe, a PCP "unsupported version" still says what the gateway speaks.
            if pcp_ans == Some(false) {
                self.pcp_support = Some(false);
            }
            return;
        };
        if pmp_ans.is_some() {
            *pmp = pmp_ans;
        }
        if pcp_ans.is_some() {
            *pcp = pcp_ans;
        }
        if let (Some(a), Some(b)) = (*pmp, *pcp) {
            self.op = None;
            self.finish_probe(a, b);
        }
    }

    fn on_pmp(&mut self, resp: pmp::Response, now: Instant) {
        match resp {
            pmp::Response::ExternalAddress { epoch, ip } => {
                let reset = self.note_epoch(Protocol::NatPmp, epoch, now);
                self.public_ip = Some(ip);
                match self.op.as_mut().map(|p| &mut p.op) {
                    Some(Op::Probe { .. }) => self.probe_answer(Some(true), None),
                    Some(Op::Map {
                        protocol: Protocol::NatPmp,
                        have_addr,
                        ..
                    }) => {
                        *have_addr = true;
                        self.maybe_finish_pmp_map(now);
                    }
                    Some(Op::Check {
                        protocol: Protocol::NatPmp,
                    }) => {
                        self.op = None;
                        self.check_at = Some(now + self.cfg.check_interval);
                    }
                    _ => {}
                }
                if reset {
                    self.on_reset(Protocol::NatPmp, now);
                }
                self.note_public_ip(ip);
            }
            pmp::Response::Map {
                opcode: pmp::OP_MAP_UDP,
                epoch,
                internal_port,
                external_port,
                lifetime,
            } if internal_port == self.cfg.internal_port => {
                // The answer to a mapping request is itself the re-mapping after a restart.
                self.note_epoch(Protocol::NatPmp, epoch, now);
                match self.op.as_mut().map(|p| &mut p.op) {
                    Some(Op::Release {
                        protocol: Protocol::NatPmp,
                        ..
                    }) => {
                        self.op = None;
                        self.events.push_back(PortmapEvent::Released);
                    }
                    Some(Op::Map {
                        protocol: Protocol::NatPmp,
                        granted,
                        ..
                    }) => {
                        *granted = Some((external_port, lifetime));
                        self.maybe_finish_pmp_map(now);
                    }
                    _ => tracing::debug!("ignoring an unexpected NAT-PMP map response"),
                }
            }
            pmp::Response::Map { .. } => {
                tracing::debug!("ignoring a NAT-PMP map response for another port")
            }
            pmp::Response::Error { opcode, result } => self.on_pmp_error(opcode, result, now),
        }
    }

    fn on_pmp_error(&mut self, opcode: u8, result: pmp::ResultCode, now: Instant) {
        let Some(op) = self.op.map(|p| p.op) else {
            return;
        };
        // A NAT-PMP-only gateway answers PCP (version 2) requests with "unsupported version"
        // in NAT-PMP format (RFC 6887 §9); a real NAT-PMP answer never says that.
        let pcp_rejected = result == pmp::ResultCode::UnsupportedVersion;
        match op {
            Op::Probe { .. } if pcp_rejected => self.probe_answer(None, Some(false)),
            Op::Probe { .. } if opcode == pmp::OP_EXTERNAL_ADDRESS => {
                self.probe_answer(Some(false), None)
            }
            Op::Map {
                protocol: Protocol::Pcp,
                ..
            } if pcp_rejected => {
                self.pcp_support = Some(false);
                self.map_failed(
                    Protocol::Pcp,
                    PortmapError::PcpRefused(pcp::ResultCode::UnsupportedVersion),
                    now,
                );
            }
            Op::Map {
                protocol: Protocol::NatPmp,
                ..
            } => {
                self.map_refused(Protocol::NatPmp, PortmapError::PmpRefused(result), now);
            }
            Op::Check {
                protocol: Protocol::NatPmp,
            } => {
                self.op = None;
                self.check_at = Some(now + self.cfg.check_interval);
            }
            Op::Release {
                protocol: Protocol::NatPmp,
                ..
            } => {
                self.op = None;
                tracing::debug!(%result, "NAT-PMP deletion refused");
                self.events.push_back(PortmapEvent::Released);
            }
            _ => {}
        }
    }

    fn on_pcp(&mut self, resp: pcp::Response, now: Instant) {
        match resp {
            pcp::Response::Announce { result, epoch } => {
                let reset = result == pcp::ResultCode::Success
                    && self.note_epoch(Protocol::Pcp, epoch, now);
                match self.op.map(|p| p.op) {
                    // A PCP server that does not speak NAT-PMP answers our version 0 request
                    // with UNSUPP_VERSION (RFC 6887 §9).
                    Some(Op::Probe { .. }) if result == pcp::ResultCode::UnsupportedVersion => {
                        self.probe_answer(Some(false), None);
                    }
                    Some(Op::Probe { .. }) => {
                        self.probe_answer(None, Some(result == pcp::ResultCode::Success));
                    }
                    Some(Op::Check {
                        protocol: Protocol::Pcp,
                    }) => {
                        self.op = None;
                        self.check_at = Some(now + self.cfg.check_interval);
                    }
                    _ => {}
                }
                if reset {
                    self.on_reset(Protocol::Pcp, now);
                }
            }
            pcp::Response::Map(m) => self.on_pcp_map(m, now),
            pcp::Response::Error { result, .. } => match self.op.map(|p| p.op) {
                Some(Op::Map {
                    protocol: Protocol::Pcp,
                    ..
                }) => {
                    self.map_refused(Protocol::Pcp, PortmapError::PcpRefused(result), now);
                }
                Some(Op::Release {
                    protocol: Protocol::Pcp,
                    ..
                }) => {
                    self.op = None;
                    self.events.push_back(PortmapEvent::Released);
                }
                Some(Op::Probe { .. }) if result == pcp::ResultCode::UnsupportedVersion => {
                    self.probe_answer(Some(false), None);
                }
                _ => {}
            },
        }
    }

    fn on_pcp_map(&mut self, m: pcp::MapResponse, now: Instant) {
        // Only answers to our own request count (§11.3): same nonce, protocol and port.
        if m.nonce != self.cfg.nonce
            || m.protocol != pcp::PROTO_UDP
            || m.internal_port != self.cfg.internal_port
        {
            tracing::debug!("ignoring a PCP map response that does not match our request");
            return;
        }
        let success = m.result == pcp::ResultCode::Success;
        if success {
            self.note_epoch(Protocol::Pcp, m.epoch, now);
        }
        match self.op.map(|p| p.op) {
            Some(Op::Release {
                protocol: Protocol::Pcp,
                ..
            }) => {
                self.op = None;
                self.events.push_back(PortmapEvent::Released);
            }
            Some(Op::Map {
                protocol: Protocol::Pcp,
                ..
            }) if !success => {
                self.map_refused(Protocol::Pcp, PortmapError::PcpRefused(m.result), now);
            }
            Some(Op::Map {
                protocol: Protocol::Pcp,
                ..
            }) if m.lifetime == 0 => {
                self.map_refused(Protocol::Pcp, PortmapError::ZeroLifetime, now);
            }
            Some(Op::Map {
                protocol: Protocol::Pcp,
                ..
            }) => {
                let mapping = Mapping {
                    protocol: Protocol::Pcp,
                    external: SocketAddr::new(m.external_ip, m.external_port),
                    internal_port: self.cfg.internal_port,
                    lifetime: Duration::from_secs(m.lifetime.into()),
                };
                self.grant(mapping, now);
            }
            _ => tracing::debug!("ignoring an unexpected PCP map response"),
        }
    }

    /// Completes a NAT-PMP mapping once both the map answer and the external address are in.
    fn maybe_finish_pmp_map(&mut self, now: Instant) {
        let Some(Pending {
            op:
                Op::Map {
                    granted: Some((port, lifetime)),
                    have_addr: true,
                    ..
                },
            ..
        }) = self.op
        else {
            return;
        };
        let Some(ip) = self.public_ip else { return };
        if lifetime == 0 {
            self.map_refused(Protocol::NatPmp, PortmapError::ZeroLifetime, now);
            return;
        }
        let mapping = Mapping {
            protocol: Protocol::NatPmp,
            external: SocketAddr::from((ip, port)),
            internal_port: self.cfg.internal_port,
            lifetime: Duration::from_secs(lifetime.into()),
        };
        self.grant(mapping, now);
    }

    fn grant(&mut self, mapping: Mapping, now: Instant) {
        self.op = None;
        self.fallback_used = false;
        self.retry_round_at = None;
        self.last_external_port = Some(mapping.external.port());
        self.check_at = Some(now + self.cfg.check_interval);
        let prev = self.current.replace(Current {
            mapping,
            renew_at: now + mapping.lifetime / 2,
            expires_at: now + mapping.lifetime,
        });
        let same = prev.is_some_and(|p| {
            p.mapping.external == mapping.external && p.mapping.protocol == mapping.protocol
        });
        tracing::debug!(protocol = %mapping.protocol, external = %mapping.external, renewed = same, "port mapped");
        self.events.push_back(if same {
            PortmapEvent::Renewed(mapping)
        } else {
            PortmapEvent::Mapped(mapping)
        });
        if !self.want_mapping {
            // Released while the request was in flight: delete what we just got.
            self.release(now);
        }
    }

    /// The gateway answered a mapping request with an error.
    fn map_refused(&mut self, protocol: Protocol, err: PortmapError, now: Instant) {
        match self.current.take() {
            Some(cur) => {
                self.op = None;
                self.lose(cur.mapping, err);
                self.retry_round_at = Some(now + RETRY_AFTER_FAILURE);
            }
            None => self.map_failed(protocol, err, now),
        }
    }

    /// A fresh mapping failed: try the other protocol once, else give up for a while.
    fn map_failed(&mut self, protocol: Protocol, err: PortmapError, now: Instant) {
        self.op = None;
        let other = match protocol {
            Protocol::Pcp if self.pmp_support == Some(true) => Some(Protocol::NatPmp),
            Protocol::NatPmp if self.pcp_support == Some(true) => Some(Protocol::Pcp),
            _ => None,
        };
        match other {
            Some(other) if !self.fallback_used && self.want_mapping => {
                tracing::debug!(%err, fallback = %other, "port mapping failed, trying the other protocol");
                self.fallback_used = true;
                self.start_map(other, now);
            }
            _ => self.fail_round(err, now),
        }
    }

    fn fail_round(&mut self, err: PortmapError, now: Instant) {
        self.fallback_used = false;
        // The gateway may change its mind (or be replaced): probe again next round.
        self.pmp_support = None;
        self.pcp_support = None;
        self.retry_round_at = Some(now + RETRY_AFTER_FAILURE);
        self.events.push_back(PortmapEvent::Failed(err));
    }

    fn lose(&mut self, mapping: Mapping, reason: PortmapError) {
        tracing::debug!(%reason, external = %mapping.external, "port mapping lost");
        self.events
            .push_back(PortmapEvent::Lost { mapping, reason });
    }

    /// The gateway restarted: its mappings are gone, so map again at once.
    fn on_reset(&mut self, protocol: Protocol, now: Instant) {
        let Some(cur) = self.current.filter(|c| c.mapping.protocol == protocol) else {
            return;
        };
        if matches!(
            self.op,
            Some(Pending {
                op: Op::Map { .. } | Op::Release { .. },
                ..
            })
        ) {
            return;
        }
        self.current = None;
        self.op = None;
        self.lose(cur.mapping, PortmapError::GatewayRestarted);
        if self.want_mapping {
            self.start_map(protocol, now);
        }
    }

    /// A new public address from NAT-PMP moves a NAT-PMP mapping with it.
    fn note_public_ip(&mut self, ip: Ipv4Addr) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur.mapping.protocol != Protocol::NatPmp || cur.mapping.external.ip() == IpAddr::V4(ip) {
            return;
        }
        cur.mapping.external.set_ip(IpAddr::V4(ip));
        self.events.push_back(PortmapEvent::Mapped(cur.mapping));
    }

    /// Records a server epoch; returns whether it shows that the server lost its state.
    fn note_epoch(&mut self, protocol: Protocol, server: u32, now: Instant) -> bool {
        let slot = match protocol {
            Protocol::Pcp => &mut self.epoch_pcp,
            _ => &mut self.epoch_pmp,
        };
        let lost = slot.is_some_and(|prev| epoch_lost(prev, server, now));
        *slot = Some(Epoch { server, at: now });
        lost
    }
}

/// RFC 6887 §8.5 (which refines RFC 6886 §3.6): the server lost its state if its clock went
/// back, or if its clock and ours disagree on the time since the last answer by more than
/// 2 s plus 1/16.
fn epoch_lost(prev: Epoch, server: u32, now: Instant) -> bool {
    if u64::from(server) + 1 < u64::from(prev.server) {
        return true;
    }
    let client_delta = now.saturating_duration_since(prev.at).as_secs();
    let server_delta = u64::from(server.saturating_sub(prev.server));
    client_delta + 2 < server_delta.saturating_sub(server_delta / 16)
        || server_delta + 2 < client_delta.saturating_sub(client_delta / 16)
}
