//! Port mapping glue: asks the default gateway for a public UDP port forwarded to our WireGuard
//! port (NAT-PMP, PCP or UPnP IGD, through `nat::portmap::io::PortMapper`) and offers it as an
//! `EndpointPortmapped` candidate.
//!
//! Driven by the driver: [`Driver::ensure_portmap`] after every network map while running starts
//! one mapper task for the current gateway (idempotent); the task forwards the mapper's events as
//! [`super::Side::Portmap`], which [`Driver::on_portmap_event`] turns into the candidate (and a
//! re-STUN, so control and peers hear of it). A major network change stops the mapper and starts
//! a new one on the new gateway; `agent down`, logout and daemon exit stop it with
//! [`Driver::stop_portmap`], which deletes the mapping at the gateway (bounded wait).
//!
//! Most networks have no port mapping: failures are logged at debug level only and shown by
//! `agent netcheck`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nat::portmap::io::{Options, PortMapper, RELEASE_TIMEOUT};
use nat::portmap::{Mapping, PortmapEvent, ProbeResult, Protocol};
use tokio::sync::{mpsc, oneshot};

use super::{Driver, Side};
use crate::ipn::BackendState;

/// What the mapper task reports, tagged with the generation of the mapper that sent it (events
/// from a mapper that was already replaced are ignored).
#[derive(Debug)]
pub(super) struct PortmapUpdate {
    generation: u64,
    what: Update,
}

#[derive(Debug)]
enum Update {
    /// The mapper could not start (no gateway address, socket error).
    StartFailed(String),
    Event(PortmapEvent),
}

/// The driver's port mapping state (field `portmap` of the driver).
#[derive(Debug, Default)]
pub(super) struct PortMapState {
    /// Bumped for every mapper started.
    generation: u64,
    /// The running mapper task: tell it to release and stop, and wait for it.
    running: Option<Running>,
    /// The gateway the running mapper talks to.
    gateway: Option<Ipv4Addr>,
    /// The mapping in force.
    pub mapping: Option<Mapping>,
    /// What the gateway answered when the mapper probed it.
    pub probe: Option<ProbeResult>,
    /// Why there is no mapping, for `agent netcheck --verbose` and debug logs.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs one mapper until told to stop (then deletes the mapping) or until the driver is gone.
async fn run_mapper(
    generation: u64,
    gateway: Ipv4Addr,
    port: u16,
    side: mpsc::Sender<Side>,
    mut stop: oneshot::Receiver<()>,
) {
    let send = |what: Update| {
        let side = side.clone();
        async move {
            side.send(Side::Portmap(PortmapUpdate { generation, what }))
                .await
                .is_ok()
        }
    };
    let local_ip = match nat::portmap::io::local_ip_towards(gateway) {
        Ok(ip) => ip,
        Err(e) => {
            send(Update::StartFailed(e.to_string())).await;
            return;
        }
    };
    let mut pm = match PortMapper::start_with(gateway, local_ip, port, Options::default()).await {
        Ok(pm) => pm,
        Err(e) => {
            send(Update::StartFailed(e.to_string())).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = pm.next_event() => match ev {
                Some(ev) => {
                    if !send(Update::Event(ev)).await {
                        break;
                    }
                }
                None => return,
            },
        }
    }
    // Deletes the mapping at the gateway (bounded by RELEASE_TIMEOUT).
    pm.shutdown().await;
}

impl Driver {
    /// Starts port mapping on the current default gateway unless it already runs. Called while
    /// the node is up; does nothing without an IPv4 default gateway.
    pub(super) fn ensure_portmap(&mut self) {
        if self.portmap.running.is_some() || self.backend_state != BackendState::Running {
            return;
        }
        let Some(gateway) = self.net.snapshot.gateway_v4() else {
            return;
        };
        self.portmap.generation += 1;
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run_mapper(
            self.portmap.generation,
            gateway,
            self.port,
            self.side_tx.clone(),
            stop_rx,
        ));
        tracing::debug!(%gateway, port = self.port, "port mapping: asking the gateway");
        self.portmap.running = Some(Running { stop, task });
        self.portmap.gateway = Some(gateway);
    }

    /// Stops the mapper and deletes its mapping at the gateway, waiting at most a few seconds.
    pub(super) async fn stop_portmap(&mut self) {
        let had = self.portmap.mapping.take();
        if let Some(r) = self.portmap.running.take() {
            let _ = r.stop.send(());
            let wait = RELEASE_TIMEOUT + Duration::from_secs(1);
            if tokio::time::timeout(wait, r.task).await.is_err() {
                tracing::debug!("port mapping release did not finish in time");
            }
            if let Some(m) = had {
                tracing::info!(external = %m.external, "port mapping released");
            }
        }
        self.portmap.gateway = None;
    }

    /// The network changed: the mapping belongs to the old gateway (or old local address).
    /// The old mapper releases in the background; a new one starts on the new gateway.
    pub(super) fn on_major_network_change_portmap(&mut self, _now: Instant) {
        if let Some(r) = self.portmap.running.take() {
            // Not awaited: the old gateway may be unreachable now, and the driver must not wait.
            let _ = r.stop.send(());
        }
        let had = self.portmap.mapping.take().is_some();
        self.portmap.gateway = None;
        self.portmap.probe = None;
        if had {
            tracing::debug!("port mapping dropped after a network change");
        }
        self.ensure_portmap();
    }

    /// A report from the mapper task.
    pub(super) fn on_portmap_update(&mut self, update: PortmapUpdate) {
        if update.generation != self.portmap.generation || self.portmap.running.is_none() {
            return;
        }
        match update.what {
            Update::StartFailed(reason) => {
                tracing::debug!(%reason, "port mapping unavailable");
                self.portmap.last_error = Some(reason);
                // The task has ended; a network change or the next `up` tries again.
            }
            Update::Event(ev) => self.on_portmap_event(ev),
        }
    }

    fn on_portmap_event(&mut self, ev: PortmapEvent) {
        let before = self.portmap.mapping.map(|m| m.external);
        match ev {
            PortmapEvent::Mapped(m) => {
                tracing::info!(external = %m.external, protocol = %m.protocol, "port mapping obtained");
                self.portmap.mapping = Some(m);
                self.portmap.last_error = None;
            }
            PortmapEvent::Renewed(m) => {
                tracing::debug!(external = %m.external, "port mapping renewed");
                self.portmap.mapping = Some(m);
            }
            PortmapEvent::Lost { mapping, reason } => {
                tracing::info!(external = %mapping.external, %reason, "port mapping lost");
                self.portmap.mapping = None;
                self.portmap.last_error = Some(reason.to_string());
            }
            PortmapEvent::Failed(reason) => {
                tracing::debug!(%reason, "no port mapping");
                self.portmap.mapping = None;
                self.portmap.last_error = Some(reason.to_string());
            }
            PortmapEvent::Probed(p) => self.portmap.probe = Some(p),
            _ => {}
        }
        if self.portmap.mapping.map(|m| m.external) != before {
            // A new candidate (or one gone): re-discover so control and peers hear of it.
            self.net_restun_soon();
        }
    }

    /// The current port mapping's external address, if any.
    pub(super) fn portmap_endpoint(&self) -> Option<SocketAddr> {
        self.portmap
            .mapping
            .map(|m| m.external)
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
    }
}

/// Which services are known to work: from the mapping in force and the last probe.
pub(super) fn services(
    mapping: Option<&Mapping>,
    probe: Option<&ProbeResult>,
) -> (bool, bool, bool) {
    let by = |p: Protocol| mapping.is_some_and(|m| m.protocol == p);
    let probe = probe.copied().unwrap_or_default();
    (
        probe.pmp || by(Protocol::NatPmp),
        probe.pcp || by(Protocol::Pcp),
        probe.upnp || by(Protocol::Upnp),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_combine_the_mapping_and_the_probe() {
        let m = Mapping {
            protocol: Protocol::Pcp,
            external: "198.51.100.7:41641".parse().unwrap(),
            internal_port: 41641,
            lifetime: Duration::from_secs(7200),
        };
        assert_eq!(services(None, None), (false, false, false));
        assert_eq!(services(Some(&m), None), (false, true, false));
        let p = ProbeResult {
            pmp: true,
            upnp: true,
            ..Default::default()
        };
        assert_eq!(services(Some(&m), Some(&p)), (true, true, true));
    }
}
