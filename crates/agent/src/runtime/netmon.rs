//! The network monitor: notices when this host's network changes (an address added or removed, an
//! interface going up or down, a new default route) and tells the driver how much changed.
//!
//! Driven by [`spawn`] (the driver calls it through `Driver::start_netmon`): a task subscribes to rtnetlink's link, address and route multicast groups,
//! waits until events stop for [`DEBOUNCE`] (a DHCP renewal or a Wi-Fi roam is a burst of
//! messages), then takes a [`Snapshot`] of the interfaces and default routes and compares it with
//! the previous one ([`classify`]). The driver gets a [`NetChange`] only when something it cares
//! about moved. The comparison is pure, so it is tested without netlink. A slow poll backs up the
//! subscription (missed messages, or no netlink at all).
//!
//! Classification follows Tailscale's netmon (reference `tailscale-derp-disco-nat.md` §4.7):
//! - **major**: a usable address (not loopback, not link-local) appeared on or vanished from an up
//!   interface, or the default route moved to another interface or gateway. Sockets, DERP
//!   connections, NAT mappings and the control connection may all be stale: the driver rebinds,
//!   re-checks DERP, resets paths and re-discovers endpoints.
//! - **minor**: anything else that differs (link-local addresses, interfaces without usable
//!   addresses going up or down): re-STUN only.
//!
//! Our own TUN device is left out of every snapshot, so configuring it (or routes through it) is
//! never a network change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use ipnet::IpNet;
use nat::stun_client::Families;
use proto::tailcfg::EndpointType;
use tokio::sync::mpsc;

use super::udp::BatchSocket;
use super::{Driver, Side};
use crate::ipn::BackendState;

/// Quiet time after the last netlink message before the network is looked at.
pub(super) const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest a burst of messages may delay the look.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Without netlink messages, look anyway this often (missed or unavailable notifications).
const POLL: Duration = Duration::from_secs(15);

/// The tailnet's address ranges: never endpoint candidates, even on another interface.
const TAILNET: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

/// One network interface as the monitor sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Interface {
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Every address, link-local included.
    pub addrs: BTreeSet<IpAddr>,
}

/// The default route of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DefaultRoute {
    /// The interface it leaves through.
    pub interface: String,
    /// The next hop, when the route has one (not on point-to-point links).
    pub gateway: Option<IpAddr>,
}

/// The host's network state at one moment (without loopback and our TUN device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub interfaces: BTreeMap<String, Interface>,
    pub default_v4: Option<DefaultRoute>,
    pub default_v6: Option<DefaultRoute>,
}

/// How much the network changed between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ChangeKind {
    None,
    Minor,
    Major,
}

/// A change worth acting on, as sent to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NetChange {
    pub kind: ChangeKind,
    /// Usable addresses that are gone: connections bound to them are dead.
    pub removed: Vec<IpAddr>,
    /// Usable addresses that are new.
    pub added: Vec<IpAddr>,
    /// The default route (either family) moved to another interface or gateway.
    pub default_route_changed: bool,
    /// The state after the change.
    pub snapshot: Snapshot,
}

impl NetChange {
    /// Whether connections made before the change (to control, to DERP) are probably dead: an
    /// address they may have used is gone, or traffic now leaves another way.
    pub fn connections_stale(&self) -> bool {
        self.kind == ChangeKind::Major && (!self.removed.is_empty() || self.default_route_changed)
    }
}

/// An address peers may reach us at: not loopback, link-local, multicast, unspecified or in the
/// tailnet's own ranges.
pub(super) fn usable(ip: &IpAddr) -> bool {
    let tailnet = TAILNET
        .iter()
        .filter_map(|r| r.parse::<IpNet>().ok())
        .any(|n| n.contains(ip));
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !(ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() || link_local || tailnet)
}

impl Snapshot {
    /// Usable addresses of up interfaces, sorted (IPv4 first): our local endpoint candidates.
    pub fn usable_addrs(&self) -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = self
            .interfaces
            .values()
            .filter(|i| i.up)
            .flat_map(|i| i.addrs.iter().copied())
            .filter(usable)
            .collect();
        set.into_iter().collect()
    }

    /// The IPv4 default gateway (the router to ask for port mappings).
    pub fn gateway_v4(&self) -> Option<Ipv4Addr> {
        match self.default_v4.as_ref()?.gateway? {
            IpAddr::V4(g) => Some(g),
            IpAddr::V6(_) => None,
        }
    }

    /// Whether IPv6 can plausibly reach the internet: a usable IPv6 address on an up interface.
    pub fn has_ipv6(&self) -> bool {
        self.usable_addrs().iter().any(IpAddr::is_ipv6)
    }

    /// Reads the current state: interfaces from `getifaddrs`, default routes from
    /// `/proc/net/route` and `/proc/net/ipv6_route` (all of this network namespace).
    /// `ignore` is our TUN device's name.
    pub fn take(ignore: &str) -> Snapshot {
        let mut interfaces: BTreeMap<String, Interface> = BTreeMap::new();
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                if a.interface_name == ignore
                    || a.flags
                        .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
                {
                    continue;
                }
                let entry = interfaces.entry(a.interface_name.clone()).or_default();
                entry.up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
                let ip = a.address.as_ref().and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                if let Some(ip) = ip {
                    entry.addrs.insert(ip);
                }
            }
        }
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Snapshot {
            interfaces,
            default_v4: default_route_v4(&read("/proc/net/route"), ignore),
            default_v6: default_route_v6(&read("/proc/net/ipv6_route"), ignore),
        }
    }
}

/// Compares two snapshots. See the module documentation for what counts as major.
pub(super) fn classify(old: &Snapshot, new: &Snapshot) -> NetChange {
    let before: BTreeSet<IpAddr> = old.usable_addrs().into_iter().collect();
    let after: BTreeSet<IpAddr> = new.usable_addrs().into_iter().collect();
    let removed: Vec<IpAddr> = before.difference(&after).copied().collect();
    let added: Vec<IpAddr> = after.difference(&before).copied().collect();
    let default_route_changed =
        old.default_v4 != new.default_v4 || old.default_v6 != new.default_v6;
    let kind = if !removed.is_empty() || !added.is_empty() || default_route_changed {
        ChangeKind::Major
    } else if old != new {
        ChangeKind::Minor
    } else {
        ChangeKind::None
    };
    NetChange {
        kind,
        removed,
        added,
        default_route_changed,
        snapshot: new.clone(),
    }
}

/// The best (lowest-metric) IPv4 default route in `/proc/net/route` text, not via `ignore`.
///
/// Lines look like `eth0 00000000 0100A8C0 0003 0 0 100 00000000 0 0 0`: addresses are the
/// kernel's in-memory `__be32` printed as a native-endian integer.
pub(super) fn default_route_v4(text: &str, ignore: &str) -> Option<DefaultRoute> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut best: Option<(u32, DefaultRoute)> = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [iface, dest, gw, flags, _, _, metric, mask, ..] = f.as_slice() else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(mask)) =
            (hex(dest), hex(gw), hex(flags), hex(mask))
        else {
            continue;
        };
        let metric = metric.parse::<u32>().unwrap_or(u32::MAX);
        if dest != 0 || mask != 0 || flags & RTF_UP == 0 || *iface == ignore || *iface == "lo" {
            continue;
        }
        let gateway = (flags & RTF_GATEWAY != 0 && gw != 0)
            .then(|| IpAddr::V4(Ipv4Addr::from(gw.to_ne_bytes())));
        if best.as_ref().is_none_or(|(m, _)| metric < *m) {
            best = Some((
                metric,
                DefaultRoute {
                    interface: (*iface).to_string(),
                    gateway,
                },
            ));
        }
    }
    best.map(|(_, r)| r)
}

/// The best IPv6 default route in `/proc/net/ipv6_route` text, not via `ignore`.
///
/// Lines: `dest plen src plen next_hop metric refcnt use flags iface`, addresses as 32 hex digits.
/// Unreachable defaults (`RTF_REJECT`, on `lo`) are skipped.
pub(super) fn default_route_v6(text: &str, ignore: &str) -> Option<DefaultRoute> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    let mut best: Option<(u32, DefaultRoute)> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dest, plen, _, _, hop, metric, _, _, flags, iface] = f.as_slice() else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(plen), Some(hop), Some(metric), Some(flags)) = (
            parse_v6(dest),
            hex(plen),
            parse_v6(hop),
            hex(metric),
            hex(flags),
        ) else {
            continue;
        };
        if !dest.is_unspecified()
            || plen != 0
            || flags & RTF_UP == 0
            || flags & RTF_REJECT != 0
            || *iface == ignore
            || *iface == "lo"
        {
            continue;
        }
        let gateway = (!hop.is_unspecified()).then_some(IpAddr::V6(hop));
        if best.as_ref().is_none_or(|(m, _)| metric < *m) {
            best = Some((
                metric,
                DefaultRoute {
                    interface: (*iface).to_string(),
                    gateway,
                },
            ));
        }
    }
    best.map(|(_, r)| r)
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// What ended a wait of the monitor task.
enum Woke {
    Message,
    Poll,
    Closed,
}

/// Starts the monitor task. It compares against `initial` first and sends every change that is
/// not [`ChangeKind::None`] to `tx`; it ends when the receiver is dropped.
pub(super) fn spawn(
    tun: String,
    initial: Snapshot,
    tx: mpsc::Sender<Side>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let groups = [
            rtnetlink::MulticastGroup::Link,
            rtnetlink::MulticastGroup::Ipv4Ifaddr,
            rtnetlink::MulticastGroup::Ipv6Ifaddr,
            rtnetlink::MulticastGroup::Ipv4Route,
            rtnetlink::MulticastGroup::Ipv6Route,
        ];
        let mut messages = match rtnetlink::new_multicast_connection(&groups) {
            Ok((conn, _handle, messages)) => {
                tokio::spawn(conn);
                Some(messages)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no netlink notifications; checking the network every {}s", POLL.as_secs());
                None
            }
        };
        let mut last = initial;
        loop {
            // Wait for the first message of a burst (or the poll interval).
            let woke = match &mut messages {
                Some(m) => match tokio::time::timeout(POLL, m.next()).await {
                    Ok(Some(_)) => Woke::Message,
                    Ok(None) => Woke::Closed,
                    Err(_) => Woke::Poll,
                },
                None => {
                    tokio::time::sleep(POLL).await;
                    Woke::Poll
                }
            };
            match (woke, &mut messages) {
                (Woke::Closed, _) => {
                    tracing::warn!("netlink notifications ended; polling instead");
                    messages = None;
                }
                (Woke::Message, Some(m)) => {
                    // Debounce: wait until the burst is over, but not forever.
                    let until = tokio::time::Instant::now() + MAX_DELAY;
                    loop {
                        let quiet = tokio::time::Instant::now() + DEBOUNCE;
                        match tokio::time::timeout_at(quiet.min(until), m.next()).await {
                            Ok(Some(_)) if tokio::time::Instant::now() < until => continue,
                            _ => break,
                        }
                    }
                }
                _ => {}
            }
            let tun = tun.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || Snapshot::take(&tun)).await else {
                return;
            };
            let change = classify(&last, &now);
            if change.kind == ChangeKind::None {
                continue;
            }
            last = now;
            if tx.send(Side::Net(change)).await.is_err() {
                return;
            }
        }
    })
}

/// Roaming bookkeeping the driver keeps (field `net` of the driver).
pub(super) struct NetState {
    tun: String,
    /// The network as last seen.
    pub snapshot: Snapshot,
    /// A major change happened: rebind the UDP socket at the top of the next loop turn.
    rebind_due: bool,
    /// After a failed rebind, the next attempt waits until then (no retry storm per loop turn).
    rebind_not_before: Option<Instant>,
    /// Re-STUN at the top of the next loop turn (after any rebind, so the probes leave from the
    /// socket peers will use).
    restun_due: bool,
    /// Last re-STUN/DERP check caused by a lost direct path, to rate-limit them.
    last_path_lost_kick: Option<Instant>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Lost direct paths (often several peers at once) trigger at most one re-STUN this often.
const PATH_LOST_KICK_SPACING: Duration = Duration::from_secs(2);

impl NetState {
    pub fn new(tun: &str) -> Self {
        NetState {
            tun: tun.to_string(),
            snapshot: Snapshot::take(tun),
            rebind_due: false,
            rebind_not_before: None,
            restun_due: false,
            last_path_lost_kick: None,
            task: None,
        }
    }

    /// STUN families to probe: IPv6 only when the socket is dual-stack and the host has a usable
    /// IPv6 address (so IPv4-only hosts send no doomed IPv6 probes).
    pub fn stun_families(&self, udp: &BatchSocket) -> Families {
        Families {
            ipv4: true,
            ipv6: udp.has_ipv6() && self.snapshot.has_ipv6(),
        }
    }
}

impl Drop for NetState {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Whether a peer's NAT maps each destination to a new port, as it reported in its Hostinfo.
pub(super) fn mapping_varies(node: &proto::tailcfg::Node) -> bool {
    node.hostinfo
        .as_ref()
        .and_then(|h| h.net_info.as_ref())
        .and_then(|n| n.mapping_varies_by_dest_ip)
        == Some(true)
}

impl Driver {
    /// Starts the network monitor task (once).
    pub(super) fn start_netmon(&mut self) {
        if self.net.task.is_none() {
            self.net.task = Some(spawn(
                self.net.tun.clone(),
                self.net.snapshot.clone(),
                self.side_tx.clone(),
            ));
        }
    }

    /// Acts on a network change (reference §4.7).
    pub(super) fn on_network_change(&mut self, change: NetChange, now: Instant) {
        tracing::info!(
            kind = ?change.kind,
            added = ?change.added,
            removed = ?change.removed,
            default_route_changed = change.default_route_changed,
            "network changed"
        );
        self.net.snapshot = change.snapshot.clone();
        self.stun.set_families(self.net.stun_families(&self.udp));
        self.net.restun_due = true;
        if change.kind != ChangeKind::Major {
            return;
        }
        self.net.rebind_due = true;
        // Every direct path may be gone: forget them and re-prove (traffic rides DERP meanwhile).
        self.paths.network_changed(now);
        if change.connections_stale() {
            // Connections that left through a vanished address or the old route are dead
            // even if no error has surfaced yet: redial DERP, and restart the control session
            // now rather than after its 120 s watchdog.
            self.derp.reconnect_all();
            let session = matches!(
                self.backend_state,
                BackendState::Running | BackendState::Starting | BackendState::NeedsMachineAuth
            );
            if session && let Some((c, _)) = &self.control {
                tracing::info!("restarting the control session after the network change");
                c.login(None);
            }
        } else {
            self.derp
                .check_connections(super::derp::NETWORK_CHANGE_PING);
        }
        self.on_major_network_change_portmap(now);
    }

    /// A trusted direct path stopped answering: our NAT may have dropped its mapping (state
    /// flushed, router restart). Re-discover our endpoints and check DERP at once.
    pub(super) fn on_direct_path_lost(&mut self) {
        let now = Instant::now();
        if self
            .net
            .last_path_lost_kick
            .is_some_and(|t| now.duration_since(t) < PATH_LOST_KICK_SPACING)
        {
            return;
        }
        self.net.last_path_lost_kick = Some(now);
        tracing::debug!("a direct path was lost; re-STUN and DERP check");
        self.net.restun_due = true;
        self.derp
            .check_connections(super::derp::NETWORK_CHANGE_PING);
    }

    /// Re-STUN at the top of the next loop turn.
    pub(super) fn net_restun_soon(&mut self) {
        self.net.restun_due = true;
    }

    /// Runs at the top of each loop turn, when no other reference to the UDP socket exists:
    /// rebinds after a major change (same port if possible) and starts a re-STUN if one is due.
    pub(super) fn rebind_if_due(&mut self) {
        let now = Instant::now();
        if self.net.rebind_due && self.net.rebind_not_before.is_none_or(|t| now >= t) {
            self.net.rebind_due = false;
            self.rebind_udp();
        }
        if std::mem::take(&mut self.net.restun_due) {
            self.restun_now(now);
        }
    }

    fn rebind_udp(&mut self) {
        // The new socket wants the old one's port, so the old one must close first; a throwaway
        // loopback socket holds its place for that moment.
        let placeholder = match std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)
            })
            .and_then(BatchSocket::new)
        {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebind the UDP socket");
                return;
            }
        };
        let old = std::mem::replace(&mut self.udp, placeholder);
        if Arc::strong_count(&old) > 1 {
            // Still in use somewhere: keep it rather than lose the port.
            self.udp = old;
            return;
        }
        drop(old);
        let rebound = BatchSocket::bind(self.port, &self.udp_opts).or_else(|e| {
            tracing::warn!(error = %e, port = self.port, "port taken on rebind; using a new one");
            BatchSocket::bind(0, &self.udp_opts)
        });
        match rebound {
            Ok(sock) => {
                let old_port = self.port;
                if let Ok(addr) = sock.local_addr() {
                    self.port = addr.port();
                }
                if self.port != old_port {
                    // The gateway forwards the old port: map the new one.
                    self.on_major_network_change_portmap(Instant::now());
                }
                tracing::info!(
                    port = self.port,
                    ipv6 = sock.has_ipv6(),
                    "UDP socket rebound"
                );
                self.udp = Arc::new(sock);
                self.stun.set_families(self.net.stun_families(&self.udp));
            }
            Err(e) => {
                // Left on the loopback placeholder: try again on the next loop turn rather than
                // stay cut off.
                tracing::error!(error = %e, "cannot bind the UDP socket again; retrying in 1 s");
                self.net.rebind_due = true;
                self.net.rebind_not_before = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Starts a STUN round now (abandoning one in progress), if connected and STUN servers are
    /// known; otherwise the periodic timer starts one when they are.
    pub(super) fn restun_now(&mut self, now: Instant) {
        let have_servers = self.netmap.as_ref().is_some_and(|m| m.derp_map.is_some());
        if self.control.is_some() && have_servers {
            self.stun.start_report(now);
            self.next_stun = now + super::RESTUN;
        } else {
            self.next_stun = now;
        }
    }

    /// Our endpoint candidates for control and for CallMeMaybe: local addresses with our port,
    /// STUN-discovered ones and the port mapping, de-duplicated, in that order.
    pub(super) fn endpoint_candidates(
        &self,
        report: &nat::stun_client::Report,
    ) -> Vec<(SocketAddr, EndpointType)> {
        let mut out: Vec<(SocketAddr, EndpointType)> = Vec::new();
        let mut add = |a: SocketAddr, t: EndpointType| {
            let a = super::udp::canonical(a);
            if self.udp.can_send_to(a) && !out.iter().any(|(b, _)| *b == a) {
                out.push((a, t));
            }
        };
        for ip in self.net.snapshot.usable_addrs() {
            add(SocketAddr::new(ip, self.port), EndpointType::LOCAL);
        }
        for e in report.endpoints() {
            add(e, EndpointType::STUN);
        }
        if let Some(e) = self.portmap_endpoint() {
            add(e, EndpointType::PORTMAPPED);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn snap(ifaces: &[(&str, bool, &[&str])], gw: Option<(&str, &str)>) -> Snapshot {
        Snapshot {
            interfaces: ifaces
                .iter()
                .map(|(n, up, addrs)| {
                    (
                        n.to_string(),
                        Interface {
                            up: *up,
                            addrs: addrs.iter().map(|a| ip(a)).collect(),
                        },
                    )
                })
                .collect(),
            default_v4: gw.map(|(i, g)| DefaultRoute {
                interface: i.into(),
                gateway: Some(ip(g)),
            }),
            default_v6: None,
        }
    }

    #[test]
    fn identical_snapshots_are_no_change() {
        let a = snap(&[("eth0", true, &["10.0.0.2"])], Some(("eth0", "10.0.0.1")));
        let c = classify(&a, &a.clone());
        assert_eq!(c.kind, ChangeKind::None);
        assert!(!c.connections_stale());
    }

    #[test]
    fn a_new_address_is_major_but_keeps_connections() {
        let a = snap(&[("eth0", true, &["10.0.0.2"])], Some(("eth0", "10.0.0.1")));
        let b = snap(
            &[("eth0", true, &["10.0.0.2", "10.0.0.3"])],
            Some(("eth0", "10.0.0.1")),
        );
        let c = classify(&a, &b);
        assert_eq!(c.kind, ChangeKind::Major);
        assert_eq!(c.added, vec![ip("10.0.0.3")]);
        assert!(c.removed.is_empty());
        assert!(!c.connections_stale());
    }

    #[test]
    fn a_replaced_address_is_major_and_connections_are_stale() {
        let a = snap(&[("eth0", true, &["10.0.0.2"])], Some(("eth0", "10.0.0.1")));
        let b = snap(&[("eth0", true, &["10.0.1.2"])], Some(("eth0", "10.0.1.1")));
        let c = classify(&a, &b);
        assert_eq!(c.kind, ChangeKind::Major);
        assert_eq!(c.removed, vec![ip("10.0.0.2")]);
        assert_eq!(c.added, vec![ip("10.0.1.2")]);
        assert!(c.default_route_changed);
        assert!(c.connections_stale());
    }

    #[test]
    fn a_new_default_gateway_alone_is_major() {
        let a = snap(&[("eth0", true, &["10.0.0.2"])], Some(("eth0", "10.0.0.1")));
        let b = snap(
            &[("eth0", true, &["10.0.0.2"])],
            Some(("eth0", "10.0.0.254")),
        );
        let c = classify(&a, &b);
        assert_eq!(c.kind, ChangeKind::Major);
        assert!(c.default_route_changed && c.connections_stale());
    }

    #[test]
    fn interface_down_with_its_addresses_is_major() {
        let a = snap(
            &[
                ("eth0", true, &["10.0.0.2"]),
                ("wlan0", true, &["192.168.1.5"]),
            ],
            Some(("eth0", "10.0.0.1")),
        );
        let b = snap(
            &[
                ("eth0", true, &["10.0.0.2"]),
                ("wlan0", false, &["192.168.1.5"]),
            ],
            Some(("eth0", "10.0.0.1")),
        );
        let c = classify(&a, &b);
        assert_eq!(c.kind, ChangeKind::Major);
        assert_eq!(c.removed, vec![ip("192.168.1.5")]);
    }

    #[test]
    fn link_local_and_unaddressed_interfaces_are_minor() {
        let a = snap(&[("eth0", true, &["10.0.0.2"])], Some(("eth0", "10.0.0.1")));
        let b = snap(
            &[
                ("eth0", true, &["10.0.0.2", "fe80::1", "169.254.3.4"]),
                ("veth9", true, &[]),
            ],
            Some(("eth0", "10.0.0.1")),
        );
        assert_eq!(classify(&a, &b).kind, ChangeKind::Minor);
    }

    #[test]
    fn usable_addresses_skip_loopback_link_local_and_tailnet() {
        let s = snap(
            &[
                (
                    "eth0",
                    true,
                    &[
                        "10.0.0.2",
                        "fe80::1",
                        "fd00::2",
                        "2001:db8::5",
                        "169.254.1.1",
                    ],
                ),
                ("tailscale9", true, &["100.64.0.1", "fd7a:115c:a1e0::1"]),
                ("down0", false, &["192.0.2.9"]),
            ],
            None,
        );
        assert_eq!(
            s.usable_addrs(),
            vec![ip("10.0.0.2"), ip("2001:db8::5"), ip("fd00::2")]
        );
        assert!(s.has_ipv6());
    }

    #[test]
    fn proc_net_route_default_with_lowest_metric() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            agent0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        let r = default_route_v4(text, "agent0").unwrap();
        assert_eq!(r.interface, "eth0");
        let want = Ipv4Addr::from(u32::from_str_radix("0100A8C0", 16).unwrap().to_ne_bytes());
        assert_eq!(r.gateway, Some(IpAddr::V4(want)));
        if cfg!(target_endian = "little") {
            assert_eq!(want, Ipv4Addr::new(192, 168, 0, 1));
        }
        assert_eq!(default_route_v4("Iface\tDestination\n", "agent0"), None);
        assert_eq!(default_route_v4("garbage line\nx y z\n", "agent0"), None);
    }

    #[test]
    fn proc_net_ipv6_route_default_skips_unreachable() {
        let text = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        let r = default_route_v6(text, "agent0").unwrap();
        assert_eq!(r.interface, "eth0");
        assert_eq!(r.gateway, Some(ip("fd00::1")));
        assert_eq!(default_route_v6("", "agent0"), None);
    }

    #[test]
    fn taking_a_snapshot_here_does_not_panic_and_skips_loopback() {
        let s = Snapshot::take("agent-test-none");
        assert!(!s.interfaces.contains_key("lo"));
        assert!(s.usable_addrs().iter().all(usable));
    }
}
