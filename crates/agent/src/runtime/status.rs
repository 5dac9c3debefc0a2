//! `agent status` and `agent whois` answers, built from the network map and the engine's and
//! path manager's live state.

use std::net::IpAddr;
use std::time::Instant;

use nat::magicsock::PathStatus;
use proto::netmap::NetMap;
use proto::tailcfg::Node;

use super::Driver;
use crate::ipn::{BackendState, Path, PeerStatus, Status, UserProfile, WhoIs};

/// The status when the engine task is gone.
pub fn stopped() -> Status {
    Status {
        backend_state: BackendState::Stopped,
        self_: empty_peer(),
        peers: Vec::new(),
        tailnet: None,
        magic_dns_suffix: None,
        health: vec!["the engine is not running".into()],
        auth_url: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
        exit_node_status: None,
    }
}

fn empty_peer() -> PeerStatus {
    PeerStatus {
        id: String::new(),
        public_key: proto::keys::NodePublic::zero(),
        name: String::new(),
        hostname: String::new(),
        os: std::env::consts::OS.to_string(),
        addresses: Vec::new(),
        online: false,
        path: Path::None,
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        tags: Vec::new(),
        exit_node: false,
        exit_node_option: false,
        primary_routes: Vec::new(),
    }
}

/// A node from the map as `agent status` shows it (without live path and counters).
fn node_status(n: &Node) -> PeerStatus {
    let hostinfo = n.hostinfo.as_ref();
    PeerStatus {
        id: n.stable_id.clone(),
        public_key: n.key,
        name: n.name.trim_end_matches('.').to_string(),
        hostname: hostinfo.map(|h| h.hostname.clone()).unwrap_or_default(),
        os: hostinfo.map(|h| h.os.clone()).unwrap_or_default(),
        addresses: n.addresses.iter().map(|a| a.addr()).collect(),
        online: n.online.unwrap_or(false),
        path: Path::None,
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        tags: n.tags.clone(),
        exit_node: false,
        exit_node_option: dataplane::wgcfg::offers_exit_node(n),
        primary_routes: n.primary_routes.clone(),
    }
}

pub(super) fn build(d: &Driver, now: Instant) -> Status {
    let nm = d.netmap.as_deref();
    let mut self_ = match nm.and_then(|m| m.self_node.as_ref()) {
        Some(me) => node_status(me),
        None => {
            let mut p = empty_peer();
            p.public_key = d.keys.node_private.public();
            p.hostname = d
                .prefs
                .hostname
                .clone()
                .unwrap_or_else(crate::daemon::backend::os_hostname);
            p
        }
    };
    self_.online = d.backend_state == BackendState::Running;
    let wall = chrono::Utc::now();
    let exit = super::router::exit_node_status(&d.prefs.routing, nm);
    let peers = nm
        .map(|m| {
            m.peers
                .values()
                .map(|n| {
                    let mut p = node_status(n);
                    p.exit_node = exit.as_ref().is_some_and(|e| e.id == n.stable_id);
                    p.path = match d.paths.peer_path(&n.key) {
                        PathStatus::Direct(addr, _) => Path::Direct { addr },
                        PathStatus::Relay(region) => Path::Relay {
                            region_code: d.derp.region_code(region),
                        },
                        PathStatus::None => Path::None,
                    };
                    if let Some(s) = d.engine.peer_stats(&n.key, now) {
                        p.rx_bytes = s.rx_bytes;
                        p.tx_bytes = s.tx_bytes;
                        p.last_handshake = s.last_handshake.and_then(|t| {
                            let ago = chrono::Duration::from_std(now.saturating_duration_since(t))
                                .ok()?;
                            Some(wall - ago)
                        });
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default();
    Status {
        backend_state: d.backend_state,
        self_,
        peers,
        tailnet: nm.map(|m| m.domain.clone()).filter(|s| !s.is_empty()),
        magic_dns_suffix: nm.and_then(|m| m.dns.domains.first().cloned()),
        health: d
            .health
            .iter()
            .chain(d.router.health())
            .chain(d.dns.health())
            .cloned()
            .collect(),
        auth_url: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
        exit_node_status: exit,
    }
}

/// A peer by FQDN, short name, hostname or tailnet IP.
pub fn find_peer<'a>(nm: &'a NetMap, target: &str) -> Option<&'a Node> {
    let ip: Option<IpAddr> = target.parse().ok();
    let want = target.trim_end_matches('.').to_ascii_lowercase();
    nm.peers.values().find(|n| {
        let fqdn = n.name.trim_end_matches('.').to_ascii_lowercase();
        let short = fqdn.split('.').next().unwrap_or_default().to_string();
        ip.is_some_and(|ip| n.addresses.iter().any(|a| a.addr() == ip))
            || fqdn == want
            || short == want
    })
}

/// The node (self or a peer) that owns `ip`, and its user.
pub fn whois(nm: &NetMap, ip: IpAddr) -> Option<WhoIs> {
    let node = nm
        .self_node
        .iter()
        .chain(nm.peers.values())
        .find(|n| n.addresses.iter().any(|a| a.addr() == ip))?;
    let user = if node.tags.is_empty() {
        nm.user_profiles.get(&node.user).map(|u| UserProfile {
            id: u64::try_from(u.id.0).unwrap_or_default(),
            login_name: u.login_name.clone(),
            display_name: u.display_name.clone(),
        })
    } else {
        None
    };
    Some(WhoIs {
        node: node_status(node),
        user,
    })
}
