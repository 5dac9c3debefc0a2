//! The client's network map, sans-IO: the state a map stream describes, rebuilt from the full map
//! and the deltas that follow it exactly as Tailscale's Go client (`controlclient/map.go`) does.
//!
//! Driven by the agent's control client: it creates a [`NetMap`] per map session, feeds every
//! decoded [`MapResponse`] to [`NetMap::apply`] together with the current wall-clock time (used
//! only for `PeerSeenChange`, which means "seen now"), and hands the returned [`Changes`] to the
//! daemon so that it reconfigures only what changed. [`NetMap::diff`] compares two maps, for the
//! moment a new session's full map replaces an old session's state.
//!
//! Delta rules (protocol reference §5.3):
//! - keep-alives change nothing;
//! - `Node` absent = unchanged; `Peers` is honoured only when non-empty and then replaces the peer
//!   set, ignoring the other peer deltas; otherwise `PeersRemoved`, `PeersChanged` (whole nodes),
//!   `PeerSeenChange`, `OnlineChange` and `PeersChangedPatch` (field by field) apply in that
//!   order; deltas naming unknown peers are ignored;
//! - `PacketFilter` is the named filter `"base"`; `PacketFilters` sets names, deletes names mapped
//!   to `null`, and `"*": null` clears all names first; the effective filter is the concatenation
//!   by sorted name; `[]` denies everything while absent leaves the filter unchanged;
//! - `DERPMap` without regions keeps the previous regions; `DNSConfig`, `SSHPolicy`,
//!   `CollectServices` absent and `Domain` empty mean unchanged; `UserProfiles` add or replace.
//!
//! Two wire ambiguities are resolved the way this workspace's types allow: an empty `Endpoints`
//! list in a patch reads as "unchanged" (servers resend the whole node to clear endpoints), and
//! an empty `Regions` object in a DERP map reads like `null` (keep the previous regions).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::keys::NodePublic;
use crate::tailcfg::{
    DerpMap, DisplayMessage, DnsConfig, FilterRule, MapResponse, Node, NodeId, PeerChange,
    SshPolicy, TkaInfo, UserId, UserProfile,
};

/// The name `PacketFilter` is stored under among the named filters.
pub const BASE_FILTER: &str = "base";

/// Everything the control server has told this node in one map session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetMap {
    /// This node as control sees it (addresses, key expiry, capabilities, authorization).
    /// `None` until the first full map.
    pub self_node: Option<Node>,
    /// The peers, by node ID.
    pub peers: BTreeMap<NodeId, Node>,
    /// The named packet filters as received.
    pub named_filters: BTreeMap<String, Vec<FilterRule>>,
    /// The effective packet filter (named filters concatenated by sorted name). `None` until
    /// control sends any filter: the Go client then treats the filter as "not ready" and drops
    /// inbound traffic, as an empty filter does.
    pub packet_filter: Option<Vec<FilterRule>>,
    pub dns: DnsConfig,
    pub derp_map: Option<DerpMap>,
    pub user_profiles: BTreeMap<UserId, UserProfile>,
    /// The tailnet name.
    pub domain: String,
    pub ssh_policy: Option<SshPolicy>,
    /// The server's clock at its last non-keep-alive message.
    pub control_time: Option<DateTime<Utc>>,
    pub collect_services: bool,
    /// Health problems control reports about this node (empty = healthy).
    pub health: Vec<String>,
    pub display_messages: BTreeMap<String, DisplayMessage>,
    pub tka_info: Option<TkaInfo>,
    pub domain_audit_log_id: String,
}

/// What differs in one peer between two maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// The node (WireGuard) key.
    pub key: bool,
    pub disco_key: bool,
    pub endpoints: bool,
    pub home_derp: bool,
    /// `Addresses`, `AllowedIPs` or `PrimaryRoutes`: what is routed to the peer.
    pub routes: bool,
    pub online: bool,
    pub last_seen: bool,
    pub key_expiry: bool,
    /// Anything else (name, tags, capabilities, Hostinfo, …).
    pub other: bool,
}

impl PeerDiff {
    /// Compares two versions of one peer.
    pub fn between(old: &Node, new: &Node) -> PeerDiff {
        let mut d = PeerDiff {
            key: old.key != new.key,
            disco_key: old.disco_key != new.disco_key,
            endpoints: old.endpoints != new.endpoints,
            home_derp: old.home_derp_region() != new.home_derp_region(),
            routes: old.addresses != new.addresses
                || old.effective_allowed_ips() != new.effective_allowed_ips()
                || old.primary_routes != new.primary_routes,
            online: old.online != new.online,
            last_seen: old.last_seen != new.last_seen,
            key_expiry: old.key_expiry != new.key_expiry,
            other: false,
        };
        // Whatever the named fields do not explain counts as "other".
        let mut rest = new.clone();
        rest.key = old.key;
        rest.disco_key = old.disco_key;
        rest.endpoints = old.endpoints.clone();
        rest.home_derp = old.home_derp;
        rest.legacy_derp = old.legacy_derp.clone();
        rest.addresses = old.addresses.clone();
        rest.allowed_ips = old.allowed_ips.clone();
        rest.primary_routes = old.primary_routes.clone();
        rest.online = old.online;
        rest.last_seen = old.last_seen;
        rest.key_expiry = old.key_expiry;
        d.other = rest != *old;
        d
    }

    /// Whether anything differs.
    pub fn any(&self) -> bool {
        *self != PeerDiff::default()
    }

    /// Whether the WireGuard configuration of the peer (key, routes, expiry) is affected, as
    /// opposed to path discovery only (endpoints, DERP home, disco key) or presence.
    pub fn affects_wireguard(&self) -> bool {
        self.key || self.routes || self.key_expiry
    }
}

/// What one [`NetMap::apply`] (or [`NetMap::diff`]) changed. Only real differences count: a
/// re-sent identical DNS config sets nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The self node differs (addresses, key expiry, capabilities, authorization, …).
    pub self_node: bool,
    pub peers_added: BTreeSet<NodeId>,
    pub peers_removed: BTreeSet<NodeId>,
    /// Peers present before and after whose contents differ, with what differs.
    pub peers_changed: BTreeMap<NodeId, PeerDiff>,
    /// The effective packet filter differs.
    pub packet_filter: bool,
    pub dns: bool,
    pub derp_map: bool,
    pub user_profiles: bool,
    pub domain: bool,
    pub ssh_policy: bool,
    pub collect_services: bool,
    /// Health or display messages differ.
    pub health: bool,
    pub tka_info: bool,
    /// Only the control clock moved.
    pub control_time: bool,
}

impl Changes {
    /// Whether nothing changed at all (the control clock included).
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// Whether the peer set or any peer changed.
    pub fn peers(&self) -> bool {
        !self.peers_added.is_empty()
            || !self.peers_removed.is_empty()
            || !self.peers_changed.is_empty()
    }

    /// Folds `later` into `self`, as if both updates had been one.
    pub fn merge(&mut self, later: Changes) {
        self.self_node |= later.self_node;
        for id in later.peers_added {
            self.peers_removed.remove(&id);
            self.peers_added.insert(id);
        }
        for id in later.peers_removed {
            self.peers_added.remove(&id);
            self.peers_changed.remove(&id);
            self.peers_removed.insert(id);
        }
        for (id, d) in later.peers_changed {
            if self.peers_added.contains(&id) {
                continue;
            }
            let e = self.peers_changed.entry(id).or_default();
            e.key |= d.key;
            e.disco_key |= d.disco_key;
            e.endpoints |= d.endpoints;
            e.home_derp |= d.home_derp;
            e.routes |= d.routes;
            e.online |= d.online;
            e.last_seen |= d.last_seen;
            e.key_expiry |= d.key_expiry;
            e.other |= d.other;
        }
        self.packet_filter |= later.packet_filter;
        self.dns |= later.dns;
        self.derp_map |= later.derp_map;
        self.user_profiles |= later.user_profiles;
        self.domain |= later.domain;
        self.ssh_policy |= later.ssh_policy;
        self.collect_services |= later.collect_services;
        self.health |= later.health;
        self.tka_info |= later.tka_info;
        self.control_time |= later.control_time;
    }
}

/// Brings a node from the server into the modern form the rest of the agent relies on, as Go's
/// `upgradeNode` does: the legacy `DERP` string becomes `HomeDERP`, and `AllowedIPs: null`
/// becomes a copy of `Addresses`.
pub fn upgrade_node(n: &mut Node) {
    if !n.legacy_derp.is_empty() {
        if n.home_derp == 0 {
            n.home_derp = n.home_derp_region();
        }
        n.legacy_derp.clear();
    }
    if n.allowed_ips.is_none() {
        n.allowed_ips = Some(n.addresses.clone());
    }
}

impl NetMap {
    /// An empty map, as at the start of a session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a full map (one carrying the self node) has been applied.
    pub fn is_complete(&self) -> bool {
        self.self_node.is_some()
    }

    /// A peer by ID.
    pub fn peer(&self, id: NodeId) -> Option<&Node> {
        self.peers.get(&id)
    }

    /// A peer by node key.
    pub fn peer_by_key(&self, key: &NodePublic) -> Option<&Node> {
        self.peers.values().find(|p| p.key == *key)
    }

    /// A peer by MagicDNS name, with or without the trailing dot, case-insensitively.
    pub fn peer_by_name(&self, name: &str) -> Option<&Node> {
        let want = name.trim_end_matches('.');
        self.peers
            .values()
            .find(|p| p.name.trim_end_matches('.').eq_ignore_ascii_case(want))
    }

    /// This node's tailnet addresses (single-IP prefixes), empty before the first full map.
    pub fn addresses(&self) -> &[ipnet::IpNet] {
        self.self_node
            .as_ref()
            .map(|n| n.addresses.as_slice())
            .unwrap_or_default()
    }

    /// Applies one map-stream message and reports what changed. `now` is the local wall clock,
    /// used only to stamp peers that `PeerSeenChange` marks as seen.
    pub fn apply(&mut self, resp: MapResponse, now: DateTime<Utc>) -> Changes {
        let mut ch = Changes::default();
        if resp.keep_alive {
            return ch;
        }
        let MapResponse {
            node,
            derp_map,
            peers,
            peers_changed,
            peers_removed,
            peers_changed_patch,
            peer_seen_change,
            online_change,
            dns_config,
            domain,
            collect_services,
            packet_filter,
            packet_filters,
            user_profiles,
            health,
            display_messages,
            ssh_policy,
            control_time,
            tka_info,
            domain_data_plane_audit_log_id,
            ..
        } = resp;

        self.apply_peers(
            &mut ch,
            PeerDeltas {
                peers,
                changed: peers_changed,
                removed: peers_removed,
                patches: peers_changed_patch,
                seen: peer_seen_change,
                online: online_change,
            },
            now,
        );

        if let Some(mut n) = node.map(|b| *b) {
            upgrade_node(&mut n);
            // An old server may still send the capability list: fold it into CapMap.
            for c in std::mem::take(&mut n.capabilities) {
                n.cap_map.entry(c).or_insert(None);
            }
            ch.self_node = self.self_node.as_ref() != Some(&n);
            self.self_node = Some(n);
        }

        for up in user_profiles {
            if self.user_profiles.get(&up.id) != Some(&up) {
                ch.user_profiles = true;
                self.user_profiles.insert(up.id, up);
            }
        }

        if let Some(mut dm) = derp_map {
            if let Some(old) = &self.derp_map {
                if dm.regions.is_empty() {
                    dm.regions = old.regions.clone();
                    dm.omit_default_regions = old.omit_default_regions;
                }
                match (&mut dm.home_params, &old.home_params) {
                    (None, old_hp) => dm.home_params = old_hp.clone(),
                    (Some(hp), Some(old_hp)) if hp.region_score.is_empty() => {
                        hp.region_score = old_hp.region_score.clone();
                    }
                    _ => {}
                }
            }
            ch.derp_map = self.derp_map.as_ref() != Some(&dm);
            self.derp_map = Some(dm);
        }

        let mut filter_touched = false;
        if let Some(pf) = packet_filter {
            filter_touched = true;
            self.named_filters.insert(BASE_FILTER.to_string(), pf);
        }
        if !packet_filters.is_empty() {
            filter_touched = true;
            if matches!(packet_filters.get("*"), Some(None)) {
                self.named_filters.clear();
            }
            for (name, rules) in packet_filters {
                if name == "*" {
                    continue;
                }
                match rules {
                    Some(r) => {
                        self.named_filters.insert(name, r);
                    }
                    None => {
                        self.named_filters.remove(&name);
                    }
                }
            }
        }
        if filter_touched {
            // BTreeMap iteration is by sorted name, which is the concatenation order.
            let concat: Vec<FilterRule> = self.named_filters.values().flatten().cloned().collect();
            ch.packet_filter = self.packet_filter.as_ref() != Some(&concat);
            self.packet_filter = Some(concat);
        }

        if let Some(dns) = dns_config {
            ch.dns = self.dns != dns;
            self.dns = dns;
        }
        if let Some(p) = ssh_policy {
            ch.ssh_policy = self.ssh_policy.as_ref() != Some(&p);
            self.ssh_policy = Some(p);
        }
        if let Some(v) = collect_services {
            ch.collect_services = self.collect_services != v;
            self.collect_services = v;
        }
        if !domain.is_empty() {
            ch.domain = self.domain != domain;
            self.domain = domain;
        }
        if !domain_data_plane_audit_log_id.is_empty() {
            self.domain_audit_log_id = domain_data_plane_audit_log_id;
        }
        if let Some(h) = health {
            ch.health |= self.health != h;
            self.health = h;
        }
        if !display_messages.is_empty() {
            let before = self.display_messages.clone();
            if matches!(display_messages.get("*"), Some(None)) {
                self.display_messages.clear();
            }
            for (id, msg) in display_messages {
                if id == "*" {
                    continue;
                }
                match msg {
                    Some(m) => {
                        self.display_messages.insert(id, m);
                    }
                    None => {
                        self.display_messages.remove(&id);
                    }
                }
            }
            ch.health |= before != self.display_messages;
        }
        if let Some(t) = tka_info {
            ch.tka_info = self.tka_info.as_ref() != Some(&t);
            self.tka_info = Some(t);
        }
        if let Some(t) = control_time {
            ch.control_time = self.control_time != Some(t);
            self.control_time = Some(t);
        }
        ch
    }

    fn apply_peers(&mut self, ch: &mut Changes, d: PeerDeltas, now: DateTime<Utc>) {
        if !d.peers.is_empty() {
            // A full peer list: it replaces the set and the other peer deltas are ignored.
            let mut next = BTreeMap::new();
            for mut n in d.peers {
                upgrade_node(&mut n);
                next.insert(n.id, n);
            }
            diff_peers(&self.peers, &next, ch);
            self.peers = next;
            return;
        }

        // Old versions of every peer touched below, to report real differences only.
        let mut before: BTreeMap<NodeId, Option<Node>> = BTreeMap::new();
        let mut remember = |peers: &BTreeMap<NodeId, Node>, id: NodeId| {
            before.entry(id).or_insert_with(|| peers.get(&id).cloned());
        };

        for id in d.removed {
            if self.peers.contains_key(&id) {
                remember(&self.peers, id);
                self.peers.remove(&id);
            }
        }
        for mut n in d.changed {
            upgrade_node(&mut n);
            remember(&self.peers, n.id);
            self.peers.insert(n.id, n);
        }
        for (id, seen) in d.seen {
            if self.peers.contains_key(&id) {
                remember(&self.peers, id);
            }
            if let Some(p) = self.peers.get_mut(&id) {
                p.last_seen = seen.then_some(now);
            }
        }
        for (id, online) in d.online {
            if self.peers.contains_key(&id) {
                remember(&self.peers, id);
            }
            if let Some(p) = self.peers.get_mut(&id) {
                p.online = Some(online);
            }
        }
        for pc in d.patches {
            if self.peers.contains_key(&pc.node_id) {
                remember(&self.peers, pc.node_id);
            }
            if let Some(p) = self.peers.get_mut(&pc.node_id) {
                patch_peer(p, pc);
            }
        }

        for (id, old) in before {
            match (old, self.peers.get(&id)) {
                (None, Some(_)) => {
                    ch.peers_added.insert(id);
                }
                (Some(_), None) => {
                    ch.peers_removed.insert(id);
                }
                (Some(old), Some(new)) => {
                    let diff = PeerDiff::between(&old, new);
                    if diff.any() {
                        ch.peers_changed.insert(id, diff);
                    }
                }
                (None, None) => {}
            }
        }
    }

    /// What differs from `self` to `next`, as one [`Changes`]. Used when a new map session
    /// starts from scratch and its full map replaces everything the previous one built.
    pub fn diff(&self, next: &NetMap) -> Changes {
        let mut ch = Changes {
            self_node: self.self_node != next.self_node,
            packet_filter: self.packet_filter != next.packet_filter,
            dns: self.dns != next.dns,
            derp_map: self.derp_map != next.derp_map,
            user_profiles: self.user_profiles != next.user_profiles,
            domain: self.domain != next.domain,
            ssh_policy: self.ssh_policy != next.ssh_policy,
            collect_services: self.collect_services != next.collect_services,
            health: self.health != next.health || self.display_messages != next.display_messages,
            tka_info: self.tka_info != next.tka_info,
            control_time: self.control_time != next.control_time,
            ..Default::default()
        };
        diff_peers(&self.peers, &next.peers, &mut ch);
        ch
    }
}

/// The peer-related parts of one MapResponse.
struct PeerDeltas {
    peers: Vec<Node>,
    changed: Vec<Node>,
    removed: Vec<NodeId>,
    patches: Vec<PeerChange>,
    seen: BTreeMap<NodeId, bool>,
    online: BTreeMap<NodeId, bool>,
}

fn diff_peers(old: &BTreeMap<NodeId, Node>, new: &BTreeMap<NodeId, Node>, ch: &mut Changes) {
    for (id, n) in new {
        match old.get(id) {
            None => {
                ch.peers_added.insert(*id);
            }
            Some(o) => {
                let d = PeerDiff::between(o, n);
                if d.any() {
                    ch.peers_changed.insert(*id, d);
                }
            }
        }
    }
    for id in old.keys() {
        if !new.contains_key(id) {
            ch.peers_removed.insert(*id);
        }
    }
}

/// Applies a `PeerChange` field by field; unset fields stay as they are.
fn patch_peer(p: &mut Node, pc: PeerChange) {
    if pc.derp_region != 0 {
        p.home_derp = pc.derp_region;
        p.legacy_derp.clear();
    }
    if pc.cap != 0 {
        p.cap = pc.cap;
    }
    if !pc.endpoints.is_empty() {
        p.endpoints = pc.endpoints;
    }
    if let Some(k) = pc.key {
        p.key = k;
    }
    if let Some(k) = pc.disco_key {
        p.disco_key = k;
    }
    if let Some(o) = pc.online {
        p.online = Some(o);
    }
    if let Some(t) = pc.last_seen {
        p.last_seen = Some(t);
    }
    if let Some(e) = pc.key_expiry {
        p.key_expiry = e;
    }
    if !pc.key_signature.is_empty() {
        p.key_signature = pc.key_signature;
    }
    if let Some(m) = pc.cap_map {
        p.cap_map = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DiscoPublic;
    use crate::tailcfg::{DerpHomeParams, DerpRegion, DnsResolver};
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
    }

    fn node(id: i64) -> Node {
        let b = u8::try_from(id).unwrap();
        Node {
            id: NodeId(id),
            stable_id: id.to_string(),
            name: format!("n{id}.tail.test."),
            key: NodePublic::from_bytes([b; 32]),
            disco_key: DiscoPublic::from_bytes([b + 100; 32]),
            addresses: vec![format!("100.64.0.{id}/32").parse().unwrap()],
            endpoints: vec![format!("127.0.0.1:{}", 41000 + id).parse().unwrap()],
            home_derp: 999,
            machine_authorized: true,
            ..Default::default()
        }
    }

    fn rule(src: &str) -> FilterRule {
        FilterRule {
            src_ips: vec![src.into()],
            ..FilterRule::allow_all()
        }
    }

    fn full(peers: &[i64]) -> MapResponse {
        MapResponse {
            node: Some(Box::new(node(1))),
            peers: peers.iter().map(|&i| node(i)).collect(),
            packet_filters: [("base".to_string(), Some(vec![FilterRule::allow_all()]))].into(),
            dns_config: Some(DnsConfig {
                domains: vec!["tail.test".into()],
                ..Default::default()
            }),
            derp_map: Some(DerpMap {
                regions: [(
                    999,
                    DerpRegion {
                        region_id: 999,
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
            domain: "tail.test".into(),
            control_time: Some(t(0)),
            ..Default::default()
        }
    }

    fn started(peers: &[i64]) -> NetMap {
        let mut m = NetMap::new();
        let ch = m.apply(full(peers), t(0));
        assert!(ch.self_node && ch.packet_filter && ch.dns && ch.derp_map && ch.domain);
        m
    }

    #[test]
    fn full_map_fills_everything_and_upgrades_nodes() {
        let mut resp = full(&[2, 3]);
        resp.peers[0].legacy_derp = "127.3.3.40:7".into();
        resp.peers[0].home_derp = 0;
        let mut m = NetMap::new();
        let ch = m.apply(resp, t(0));
        assert_eq!(ch.peers_added, [NodeId(2), NodeId(3)].into());
        assert!(m.is_complete());
        let p2 = m.peer(NodeId(2)).unwrap();
        assert_eq!(p2.home_derp, 7);
        assert!(p2.legacy_derp.is_empty());
        assert_eq!(p2.allowed_ips.as_deref(), Some(p2.addresses.as_slice()));
        assert_eq!(m.packet_filter, Some(vec![FilterRule::allow_all()]));
        assert_eq!(m.domain, "tail.test");
        assert_eq!(m.addresses().len(), 1);
    }

    #[test]
    fn keep_alive_changes_nothing() {
        let mut m = started(&[2]);
        let before = m.clone();
        let ka = MapResponse {
            keep_alive: true,
            control_time: Some(t(60)),
            peers_removed: vec![NodeId(2)],
            ..Default::default()
        };
        assert!(m.apply(ka, t(60)).is_empty());
        assert_eq!(m, before);
    }

    #[test]
    fn empty_delta_changes_nothing_and_identical_resend_reports_nothing() {
        let mut m = started(&[2, 3]);
        assert!(m.apply(MapResponse::default(), t(1)).is_empty());
        // The same full map again: only real differences count.
        let ch = m.apply(full(&[2, 3]), t(1));
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn peers_list_replaces_and_ignores_other_peer_deltas() {
        let mut m = started(&[2, 3]);
        let resp = MapResponse {
            peers: vec![node(3), node(4)],
            peers_removed: vec![NodeId(3)],
            peers_changed: vec![node(9)],
            ..Default::default()
        };
        let ch = m.apply(resp, t(1));
        assert_eq!(ch.peers_added, [NodeId(4)].into());
        assert_eq!(ch.peers_removed, [NodeId(2)].into());
        assert!(ch.peers_changed.is_empty());
        assert_eq!(
            m.peers.keys().copied().collect::<Vec<_>>(),
            vec![NodeId(3), NodeId(4)]
        );
    }

    #[test]
    fn empty_peers_list_does_not_clear_peers() {
        let mut m = started(&[2, 3]);
        let mut resp = full(&[]);
        resp.peers = Vec::new();
        let ch = m.apply(resp, t(1));
        assert!(!ch.peers());
        assert_eq!(m.peers.len(), 2);
        // PeersRemoved is the only way to zero.
        let ch = m.apply(
            MapResponse {
                peers_removed: vec![NodeId(2), NodeId(3), NodeId(77)],
                ..Default::default()
            },
            t(2),
        );
        assert_eq!(ch.peers_removed, [NodeId(2), NodeId(3)].into());
        assert!(m.peers.is_empty());
    }

    #[test]
    fn peers_changed_adds_and_replaces_whole_nodes() {
        let mut m = started(&[2]);
        let mut changed = node(2);
        changed.name = "renamed.tail.test.".into();
        changed.endpoints = Vec::new();
        let ch = m.apply(
            MapResponse {
                peers_changed: vec![changed, node(5)],
                ..Default::default()
            },
            t(1),
        );
        assert_eq!(ch.peers_added, [NodeId(5)].into());
        let d = ch.peers_changed[&NodeId(2)];
        assert!(d.other && d.endpoints && !d.key && !d.affects_wireguard());
        let p = m.peer(NodeId(2)).unwrap();
        assert_eq!(p.name, "renamed.tail.test.");
        assert!(
            p.endpoints.is_empty(),
            "a whole node replaces, it does not merge"
        );
    }

    #[test]
    fn patch_endpoints_and_derp_region() {
        let mut m = started(&[2]);
        let eps: Vec<std::net::SocketAddr> = vec![
            "192.0.2.1:41641".parse().unwrap(),
            "127.0.0.1:5".parse().unwrap(),
        ];
        let ch = m.apply(
            MapResponse {
                peers_changed_patch: vec![PeerChange {
                    node_id: NodeId(2),
                    endpoints: eps.clone(),
                    derp_region: 900,
                    ..Default::default()
                }],
                ..Default::default()
            },
            t(1),
        );
        let d = ch.peers_changed[&NodeId(2)];
        assert!(d.endpoints && d.home_derp && !d.other && !d.affects_wireguard());
        let p = m.peer(NodeId(2)).unwrap();
        assert_eq!(p.endpoints, eps);
        assert_eq!(p.home_derp, 900);
        assert_eq!(p.name, "n2.tail.test.", "untouched fields stay");
    }

    #[test]
    fn patch_keys_online_last_seen_expiry_cap() {
        let mut m = started(&[2]);
        let nk = NodePublic::from_bytes([42; 32]);
        let dk = DiscoPublic::from_bytes([43; 32]);
        let pc = PeerChange {
            node_id: NodeId(2),
            key: Some(nk),
            disco_key: Some(dk),
            online: Some(true),
            last_seen: Some(t(5)),
            key_expiry: Some(Some(t(1000))),
            cap: 130,
            ..Default::default()
        };
        let ch = m.apply(
            MapResponse {
                peers_changed_patch: vec![pc],
                ..Default::default()
            },
            t(9),
        );
        let d = ch.peers_changed[&NodeId(2)];
        assert!(d.key && d.disco_key && d.online && d.last_seen && d.key_expiry);
        assert!(d.affects_wireguard() && d.other, "Cap counts as other");
        let p = m.peer(NodeId(2)).unwrap();
        assert_eq!((p.key, p.disco_key), (nk, dk));
        assert_eq!(
            (p.online, p.last_seen, p.key_expiry),
            (Some(true), Some(t(5)), Some(t(1000)))
        );
        assert_eq!(p.cap, 130);
        // KeyExpiry patched to "never".
        let pc = PeerChange {
            node_id: NodeId(2),
            key_expiry: Some(None),
            ..Default::default()
        };
        m.apply(
            MapResponse {
                peers_changed_patch: vec![pc],
                ..Default::default()
            },
            t(10),
        );
        assert_eq!(m.peer(NodeId(2)).unwrap().key_expiry, None);
    }

    #[test]
    fn patch_cap_map_and_signature() {
        let mut m = started(&[2]);
        let pc = PeerChange {
            node_id: NodeId(2),
            cap_map: Some([("funnel".to_string(), None)].into()),
            key_signature: vec![1, 2, 3],
            ..Default::default()
        };
        let ch = m.apply(
            MapResponse {
                peers_changed_patch: vec![pc],
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.peers_changed[&NodeId(2)].other);
        let p = m.peer(NodeId(2)).unwrap();
        assert!(p.has_cap("funnel"));
        assert_eq!(p.key_signature, vec![1, 2, 3]);
    }

    #[test]
    fn patches_for_unknown_peers_are_ignored() {
        let mut m = started(&[2]);
        let before = m.clone();
        let ch = m.apply(
            MapResponse {
                peers_changed_patch: vec![PeerChange {
                    node_id: NodeId(99),
                    online: Some(true),
                    ..Default::default()
                }],
                online_change: [(NodeId(98), true)].into(),
                peer_seen_change: [(NodeId(97), true)].into(),
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.is_empty());
        assert_eq!(m, before);
    }

    #[test]
    fn empty_patch_reports_no_change() {
        let mut m = started(&[2]);
        let ch = m.apply(
            MapResponse {
                peers_changed_patch: vec![PeerChange {
                    node_id: NodeId(2),
                    ..Default::default()
                }],
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.is_empty());
    }

    #[test]
    fn online_change() {
        let mut m = started(&[2, 3]);
        let ch = m.apply(
            MapResponse {
                online_change: [(NodeId(2), true), (NodeId(3), false)].into(),
                ..Default::default()
            },
            t(1),
        );
        assert_eq!(ch.peers_changed.len(), 2);
        assert!(ch.peers_changed.values().all(|d| d.online && !d.other));
        assert_eq!(m.peer(NodeId(2)).unwrap().online, Some(true));
        assert_eq!(m.peer(NodeId(3)).unwrap().online, Some(false));
    }

    #[test]
    fn peer_seen_change_stamps_now_or_clears() {
        let mut m = started(&[2, 3]);
        m.peers.get_mut(&NodeId(3)).unwrap().last_seen = Some(t(-100));
        let ch = m.apply(
            MapResponse {
                peer_seen_change: [(NodeId(2), true), (NodeId(3), false)].into(),
                ..Default::default()
            },
            t(42),
        );
        assert!(ch.peers_changed[&NodeId(2)].last_seen && ch.peers_changed[&NodeId(3)].last_seen);
        assert_eq!(m.peer(NodeId(2)).unwrap().last_seen, Some(t(42)));
        assert_eq!(m.peer(NodeId(3)).unwrap().last_seen, None);
    }

    #[test]
    fn removed_then_changed_in_one_message_is_a_change() {
        let mut m = started(&[2]);
        let mut n = node(2);
        n.addresses = vec!["100.64.0.77/32".parse().unwrap()];
        let ch = m.apply(
            MapResponse {
                peers_removed: vec![NodeId(2)],
                peers_changed: vec![n],
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.peers_removed.is_empty() && ch.peers_added.is_empty());
        assert!(ch.peers_changed[&NodeId(2)].routes);
    }

    #[test]
    fn self_node_change_and_capabilities_folded() {
        let mut m = started(&[]);
        assert!(
            m.apply(
                MapResponse {
                    node: Some(Box::new(node(1))),
                    ..Default::default()
                },
                t(1)
            )
            .is_empty()
        );
        let mut me = node(1);
        me.key_expiry = Some(t(500));
        me.capabilities = vec!["old-cap".into()];
        let ch = m.apply(
            MapResponse {
                node: Some(Box::new(me)),
                ..Default::default()
            },
            t(2),
        );
        assert!(ch.self_node && !ch.peers());
        let me = m.self_node.as_ref().unwrap();
        assert!(me.cap_map.contains_key("old-cap") && me.capabilities.is_empty());
    }

    #[test]
    fn packet_filter_is_the_base_named_filter() {
        let mut m = started(&[]);
        // PacketFilter replaces "base".
        let ch = m.apply(
            MapResponse {
                packet_filter: Some(vec![rule("10.0.0.1")]),
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.packet_filter);
        assert_eq!(m.packet_filter, Some(vec![rule("10.0.0.1")]));
        // [] = deny all, distinct from absent.
        let ch = m.apply(
            MapResponse {
                packet_filter: Some(vec![]),
                ..Default::default()
            },
            t(2),
        );
        assert!(ch.packet_filter);
        assert_eq!(m.packet_filter, Some(vec![]));
        let ch = m.apply(MapResponse::default(), t(3));
        assert!(!ch.packet_filter);
        assert_eq!(m.packet_filter, Some(vec![]));
    }

    #[test]
    fn named_filters_concatenate_by_sorted_name_and_delete() {
        let mut m = NetMap::new();
        let ch = m.apply(
            MapResponse {
                packet_filters: [
                    ("zz".to_string(), Some(vec![rule("3.3.3.3")])),
                    ("aa".to_string(), Some(vec![rule("1.1.1.1")])),
                    ("base".to_string(), Some(vec![rule("2.2.2.2")])),
                ]
                .into(),
                ..Default::default()
            },
            t(0),
        );
        assert!(ch.packet_filter);
        assert_eq!(
            m.packet_filter,
            Some(vec![rule("1.1.1.1"), rule("2.2.2.2"), rule("3.3.3.3")])
        );
        // null deletes one name; others are unchanged.
        m.apply(
            MapResponse {
                packet_filters: [("aa".to_string(), None)].into(),
                ..Default::default()
            },
            t(1),
        );
        assert_eq!(
            m.packet_filter,
            Some(vec![rule("2.2.2.2"), rule("3.3.3.3")])
        );
        // "*": null clears all first, then the others in the same message apply.
        let ch = m.apply(
            MapResponse {
                packet_filters: [
                    ("*".to_string(), None),
                    ("mm".to_string(), Some(vec![rule("4.4.4.4")])),
                ]
                .into(),
                ..Default::default()
            },
            t(2),
        );
        assert!(ch.packet_filter);
        assert_eq!(m.packet_filter, Some(vec![rule("4.4.4.4")]));
        assert_eq!(m.named_filters.keys().collect::<Vec<_>>(), vec!["mm"]);
        // "*": null alone leaves nothing: deny all.
        m.apply(
            MapResponse {
                packet_filters: [("*".to_string(), None)].into(),
                ..Default::default()
            },
            t(3),
        );
        assert_eq!(m.packet_filter, Some(vec![]));
    }

    #[test]
    fn packet_filter_then_star_clears_base_too() {
        // Go applies PacketFilter first, then PacketFilters, so "*": null wins over both.
        let mut m = NetMap::new();
        m.apply(
            MapResponse {
                packet_filter: Some(vec![rule("1.1.1.1")]),
                packet_filters: [("*".to_string(), None)].into(),
                ..Default::default()
            },
            t(0),
        );
        assert_eq!(m.packet_filter, Some(vec![]));
    }

    #[test]
    fn filter_not_ready_until_sent() {
        let mut m = NetMap::new();
        m.apply(
            MapResponse {
                node: Some(Box::new(node(1))),
                ..Default::default()
            },
            t(0),
        );
        assert_eq!(m.packet_filter, None);
    }

    #[test]
    fn derp_map_without_regions_keeps_old_regions() {
        let mut m = started(&[]);
        let ch = m.apply(
            MapResponse {
                derp_map: Some(DerpMap {
                    home_params: Some(DerpHomeParams {
                        region_score: [(999, 0.5)].into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.derp_map);
        let dm = m.derp_map.as_ref().unwrap();
        assert!(dm.regions.contains_key(&999));
        assert_eq!(dm.home_params.as_ref().unwrap().region_score[&999], 0.5);
        // HomeParams absent keeps the old ones; new regions replace.
        m.apply(
            MapResponse {
                derp_map: Some(DerpMap {
                    regions: [(
                        900,
                        DerpRegion {
                            region_id: 900,
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            t(2),
        );
        let dm = m.derp_map.as_ref().unwrap();
        assert_eq!(dm.regions.keys().copied().collect::<Vec<_>>(), vec![900]);
        assert!(dm.home_params.is_some());
    }

    #[test]
    fn dns_ssh_domain_profiles_collect_services() {
        let mut m = started(&[]);
        let dns = DnsConfig {
            resolvers: vec![DnsResolver::new("1.1.1.1")],
            proxied: true,
            ..Default::default()
        };
        let ch = m.apply(
            MapResponse {
                dns_config: Some(dns.clone()),
                ssh_policy: Some(SshPolicy::default()),
                domain: "other.test".into(),
                collect_services: Some(true),
                user_profiles: vec![UserProfile {
                    id: UserId(7),
                    login_name: "a@b".into(),
                    ..Default::default()
                }],
                health: Some(vec!["bad".into()]),
                ..Default::default()
            },
            t(1),
        );
        assert!(
            ch.dns
                && ch.ssh_policy
                && ch.domain
                && ch.collect_services
                && ch.user_profiles
                && ch.health
        );
        assert!(!ch.peers() && !ch.self_node && !ch.packet_filter && !ch.derp_map);
        assert_eq!(m.dns, dns);
        assert_eq!(m.domain, "other.test");
        assert!(m.collect_services);
        assert_eq!(m.user_profiles[&UserId(7)].login_name, "a@b");
        // Empty Domain and absent fields are "unchanged".
        assert!(
            m.apply(
                MapResponse {
                    domain: String::new(),
                    ..Default::default()
                },
                t(2)
            )
            .is_empty()
        );
        assert_eq!(m.domain, "other.test");
    }

    #[test]
    fn display_messages_patch() {
        let mut m = NetMap::new();
        let msg = DisplayMessage {
            title: "x".into(),
            ..Default::default()
        };
        m.apply(
            MapResponse {
                display_messages: [
                    ("a".to_string(), Some(msg.clone())),
                    ("b".to_string(), Some(msg.clone())),
                ]
                .into(),
                ..Default::default()
            },
            t(0),
        );
        let ch = m.apply(
            MapResponse {
                display_messages: [("a".to_string(), None)].into(),
                ..Default::default()
            },
            t(1),
        );
        assert!(ch.health);
        assert_eq!(m.display_messages.keys().collect::<Vec<_>>(), vec!["b"]);
        m.apply(
            MapResponse {
                display_messages: [("*".to_string(), None)].into(),
                ..Default::default()
            },
            t(2),
        );
        assert!(m.display_messages.is_empty());
    }

    #[test]
    fn diff_between_sessions() {
        let old = started(&[2, 3]);
        let mut new = NetMap::new();
        let mut resp = full(&[3, 4]);
        resp.peers[0].endpoints = vec!["127.0.0.1:1".parse().unwrap()];
        new.apply(resp, t(0));
        let ch = old.diff(&new);
        assert_eq!(ch.peers_added, [NodeId(4)].into());
        assert_eq!(ch.peers_removed, [NodeId(2)].into());
        assert!(ch.peers_changed[&NodeId(3)].endpoints);
        assert!(!ch.self_node && !ch.dns && !ch.packet_filter);
        assert!(old.diff(&old).is_empty());
    }

    #[test]
    fn changes_merge() {
        let mut a = Changes {
            peers_added: [NodeId(1)].into(),
            dns: true,
            ..Default::default()
        };
        let b = Changes {
            peers_removed: [NodeId(1)].into(),
            peers_changed: [(
                NodeId(2),
                PeerDiff {
                    endpoints: true,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        a.merge(b);
        assert!(a.peers_added.is_empty() && a.peers_removed.contains(&NodeId(1)) && a.dns);
        assert!(a.peers_changed[&NodeId(2)].endpoints);
    }

    #[test]
    fn lookups() {
        let m = started(&[2, 3]);
        assert_eq!(
            m.peer_by_key(&NodePublic::from_bytes([3; 32]))
                .map(|p| p.id),
            Some(NodeId(3))
        );
        assert_eq!(
            m.peer_by_name("N2.tail.test").map(|p| p.id),
            Some(NodeId(2))
        );
        assert!(m.peer_by_name("nope").is_none());
    }
}
