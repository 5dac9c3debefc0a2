//! Network maps: what each node is told about itself and the tailnet, and the deltas between two
//! maps of the same node.
//!
//! A map session keeps the last [`NetMap`] it sent. When the tailnet's generation moves it builds
//! a new one with [`build`] and sends [`delta`]: only the peers that appeared, changed or left,
//! with endpoint/DERP/online changes as small `PeersChangedPatch` entries, and the filter, DNS,
//! SSH policy or DERP map only when they changed. The first message is [`full`].
//!
//! Peer nodes are built once per generation into a shared [`Cache`] (one `Arc` per node), so a
//! change costs one pass over the tailnet plus, per viewer, a pass over its visible peers that
//! mostly compares pointers.

mod delta;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use proto::tailcfg::{
    self, DerpMap, DnsConfig, DnsRecord, DnsResolver, FilterRule, SshPolicy, UserProfile,
};

use crate::config::DnsSettings;
use crate::model::{Node, NodeId, Timestamp, UserId};
use crate::state::Tailnet;

pub use delta::{delta, full};

/// The user id tagged nodes are shown under (Tailscale's "tagged-devices").
pub const TAGGED_DEVICES_USER: i64 = 2_147_455_555;

/// Everything one node is told. Peers are shared with other nodes' maps where unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct NetMap {
    pub node: tailcfg::Node,
    pub peers: BTreeMap<NodeId, Arc<tailcfg::Node>>,
    pub filter: Vec<FilterRule>,
    pub ssh: Option<SshPolicy>,
    pub dns: Arc<DnsConfig>,
    pub derp_map: Arc<DerpMap>,
    pub profiles: BTreeMap<i64, UserProfile>,
    pub domain: String,
}

/// Server-wide inputs of every map.
#[derive(Debug, Clone)]
pub struct MapInputs {
    pub derp_map: Arc<DerpMap>,
    pub dns: Arc<DnsConfig>,
    /// Home region announced for peers that have not reported one yet: with a single relay
    /// region every client homes there, and announcing it early lets the first packets flow
    /// over DERP instead of waiting for the peer's NetInfo.
    pub default_home_derp: i32,
}

impl MapInputs {
    /// Builds the shared inputs from settings.
    pub fn new(derp_map: DerpMap, dns: &DnsSettings, base_domain: &str) -> Self {
        let relays: Vec<i32> = derp_map
            .regions
            .values()
            .filter(|r| r.nodes.iter().any(|n| !n.stun_only))
            .map(|r| r.region_id)
            .collect();
        let default_home_derp = if relays.len() == 1 { relays[0] } else { 0 };
        MapInputs {
            derp_map: Arc::new(derp_map),
            dns: Arc::new(dns_config(dns, base_domain)),
            default_home_derp,
        }
    }
}

/// The DNS configuration all nodes get.
pub fn dns_config(s: &DnsSettings, base_domain: &str) -> DnsConfig {
    let mut domains = vec![base_domain.to_string()];
    domains.extend(
        s.search_domains
            .iter()
            .filter(|d| *d != base_domain)
            .cloned(),
    );
    DnsConfig {
        resolvers: s.nameservers.iter().map(DnsResolver::new).collect(),
        routes: s
            .split
            .iter()
            .map(|(suffix, rs)| (suffix.clone(), rs.iter().map(DnsResolver::new).collect()))
            .collect(),
        domains,
        proxied: s.magic_dns,
        extra_records: s
            .extra_records
            .iter()
            .map(|r| DnsRecord {
                name: r.name.clone(),
                r#type: r.record_type.clone(),
                value: r.value.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Peer nodes as everybody sees them, rebuilt when the tailnet's generation moves.
#[derive(Debug, Default)]
pub struct Cache {
    generation: Option<u64>,
    base: BTreeMap<NodeId, Arc<tailcfg::Node>>,
}

impl Cache {
    fn refresh(&mut self, t: &Tailnet, now: Timestamp, default_home_derp: i32) {
        if self.generation == Some(t.generation()) {
            return;
        }
        let mut next = BTreeMap::new();
        for n in t.nodes() {
            let built = base_node(t, n, now, default_home_derp);
            // Keep the old Arc when nothing changed so that deltas compare pointers.
            let arc = match self.base.get(&n.id) {
                Some(old) if **old == built => Arc::clone(old),
                _ => Arc::new(built),
            };
            next.insert(n.id, arc);
        }
        self.base = next;
        self.generation = Some(t.generation());
    }
}

/// Builds the map of node `id`, or `None` if the node no longer exists.
pub fn build(
    t: &mut Tailnet,
    cache: &mut Cache,
    inputs: &MapInputs,
    id: NodeId,
    now: Timestamp,
) -> Option<NetMap> {
    let compiled = t.compiled(now);
    cache.refresh(t, now, inputs.default_home_derp);
    let me = t.node(id)?.clone();
    let base = cache.base.get(&id)?;
    let mut node = (**base).clone();
    node.cap_map = self_caps(compiled.ssh_policy_for(id).is_some());
    // The self node's AllowedIPs are its addresses; `PrimaryRoutes` still tells it what it serves.
    node.allowed_ips = Some(node.addresses.clone());
    node.online = None;

    let usable = me.authorized && !me.is_expired(now);
    let mut peers = BTreeMap::new();
    let mut profiles = BTreeMap::new();
    add_profile(t, &me, &mut profiles);
    if usable {
        for pid in compiled.visible_peers(id) {
            let (Some(p), Some(pbase)) = (t.node(pid), cache.base.get(&pid)) else {
                continue;
            };
            // A node that never opened a map session has no disco key: clients cannot reach it
            // and skip it, so it joins peers' maps when its first map request arrives.
            if pid == id || !p.authorized || p.disco_key.is_zero() {
                continue;
            }
            let routes = routes_of(t, p);
            let visible: Vec<IpNet> = routes
                .iter()
                .copied()
                .filter(|r| compiled.route_visible(id, pid, *r))
                .collect();
            let arc = if visible.len() == routes.len() {
                Arc::clone(pbase)
            } else {
                let mut pn = (**pbase).clone();
                pn.allowed_ips = Some(pn.addresses.iter().copied().chain(visible).collect());
                Arc::new(pn)
            };
            add_profile(t, p, &mut profiles);
            peers.insert(pid, arc);
        }
    }
    let filter = if usable {
        compiled.filter_for(id)
    } else {
        Vec::new()
    };
    let ssh = if usable {
        compiled.ssh_policy_for(id)
    } else {
        None
    };
    Some(NetMap {
        node,
        peers,
        filter,
        ssh,
        dns: Arc::clone(&inputs.dns),
        derp_map: Arc::clone(&inputs.derp_map),
        profiles,
        domain: t.config().base_domain.clone(),
    })
}

fn self_caps(ssh: bool) -> tailcfg::NodeCapMap {
    let mut caps = tailcfg::NodeCapMap::new();
    // Self-hosted tailnets have no captive-portal endpoints; without this the client probes
    // Tailscale's public hosts.
    caps.insert(
        tailcfg::node_attr::DISABLE_CAPTIVE_PORTAL_DETECTION.to_string(),
        None,
    );
    caps.insert(tailcfg::node_attr::CAP_FILE_SHARING.to_string(), None);
    if ssh {
        caps.insert(tailcfg::node_attr::CAP_SSH.to_string(), None);
    }
    caps
}

fn add_profile(t: &Tailnet, n: &Node, out: &mut BTreeMap<i64, UserProfile>) {
    match n.user_id.and_then(|u| t.user(u)) {
        Some(u) => {
            out.entry(u.id.0).or_insert_with(|| UserProfile {
                id: tailcfg::UserId(u.id.0),
                login_name: u.login_name.clone(),
                display_name: u.display_name.clone(),
                ..Default::default()
            });
        }
        None => {
            out.entry(TAGGED_DEVICES_USER)
                .or_insert_with(|| UserProfile {
                    id: tailcfg::UserId(TAGGED_DEVICES_USER),
                    login_name: "tagged-devices".into(),
                    display_name: "Tagged Devices".into(),
                    ..Default::default()
                });
        }
    }
}

/// Subnet routes this node is primary for, plus its exit routes: what AllowedIPs may add.
fn routes_of(t: &Tailnet, n: &Node) -> Vec<IpNet> {
    let mut r = t.primaries().routes_of(n.id);
    r.extend(
        n.enabled_routes()
            .into_iter()
            .filter(|p| p.prefix_len() == 0),
    );
    r
}

/// A node as every peer sees it (before per-viewer route filtering).
fn base_node(t: &Tailnet, n: &Node, now: Timestamp, default_home_derp: i32) -> tailcfg::Node {
    let addresses: Vec<IpNet> = n
        .ipv4
        .map(|a| IpNet::from(std::net::IpAddr::V4(a)))
        .into_iter()
        .chain(n.ipv6.map(|a| IpNet::from(std::net::IpAddr::V6(a))))
        .collect();
    let routes = routes_of(t, n);
    let online = t.is_online(n.id);
    let expired = n.is_expired(now);
    let hostinfo: Option<tailcfg::Hostinfo> = serde_json::from_value(n.hostinfo.clone()).ok();
    let home_derp = if n.home_derp > 0 {
        n.home_derp
    } else {
        default_home_derp
    };
    tailcfg::Node {
        id: tailcfg::NodeId(n.id.0),
        stable_id: n.id.0.to_string(),
        name: format!("{}.{}.", n.given_name, t.config().base_domain),
        user: tailcfg::UserId(n.user_id.map_or(TAGGED_DEVICES_USER, |u: UserId| u.0)),
        key: n.node_key,
        key_expiry: n.key_expiry,
        machine: n.machine_key,
        disco_key: n.disco_key,
        allowed_ips: Some(addresses.iter().copied().chain(routes).collect()),
        addresses,
        endpoints: if expired {
            Vec::new()
        } else {
            n.endpoints
                .iter()
                .filter_map(|e| e.parse::<SocketAddr>().ok())
                .collect()
        },
        legacy_derp: if home_derp > 0 {
            format!("{}:{}", tailcfg::node::DERP_MAGIC_IP, home_derp)
        } else {
            String::new()
        },
        home_derp,
        hostinfo,
        created: Some(n.created),
        tags: n.tags.clone(),
        primary_routes: t.primaries().routes_of(n.id),
        last_seen: if online { None } else { n.last_seen },
        online: Some(online),
        machine_authorized: n.authorized && !expired,
        expired,
        ..Default::default()
    }
}
