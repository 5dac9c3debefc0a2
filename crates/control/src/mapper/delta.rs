//! The first map of a session, and the smallest message that turns one map into the next.

use std::sync::Arc;

use proto::tailcfg::{self, DebugSettings, MapResponse, PeerChange};

use super::NetMap;
use crate::model::Timestamp;

/// The name of the one packet filter we send (`PacketFilters{"base": …}`).
const BASE_FILTER: &str = "base";

/// The first, complete map of a session.
pub fn full(m: &NetMap, now: Timestamp) -> MapResponse {
    MapResponse {
        node: Some(Box::new(m.node.clone())),
        derp_map: Some((*m.derp_map).clone()),
        peers: m.peers.values().map(|p| (**p).clone()).collect(),
        dns_config: Some((*m.dns).clone()),
        domain: m.domain.clone(),
        collect_services: Some(false),
        packet_filters: [(BASE_FILTER.to_string(), Some(m.filter.clone()))].into(),
        user_profiles: m.profiles.values().cloned().collect(),
        ssh_policy: m.ssh.clone(),
        control_time: Some(now),
        debug: Some(DebugSettings {
            disable_log_tail: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What turns `prev` into `next`, or `None` when nothing a client sees changed.
pub fn delta(prev: &NetMap, next: &NetMap, now: Timestamp) -> Option<MapResponse> {
    let mut r = MapResponse::default();
    if prev.node != next.node {
        r.node = Some(Box::new(next.node.clone()));
    }
    for (id, new) in &next.peers {
        match prev.peers.get(id) {
            None => r.peers_changed.push((**new).clone()),
            Some(old) if Arc::ptr_eq(old, new) || old == new => {}
            Some(old) => match patch(old, new) {
                Some(p) => r.peers_changed_patch.push(p),
                None => r.peers_changed.push((**new).clone()),
            },
        }
    }
    r.peers_removed = prev
        .peers
        .keys()
        .filter(|id| !next.peers.contains_key(id))
        .map(|id| tailcfg::NodeId(id.0))
        .collect();
    if prev.filter != next.filter {
        r.packet_filters
            .insert(BASE_FILTER.to_string(), Some(next.filter.clone()));
    }
    if prev.ssh != next.ssh {
        // Absent means "unchanged", so a removed SSH policy is sent as an empty one.
        r.ssh_policy = Some(next.ssh.clone().unwrap_or_default());
    }
    if prev.dns != next.dns {
        r.dns_config = Some((*next.dns).clone());
    }
    if prev.derp_map != next.derp_map {
        r.derp_map = Some((*next.derp_map).clone());
    }
    r.user_profiles = next
        .profiles
        .iter()
        .filter(|(id, p)| prev.profiles.get(id) != Some(p))
        .map(|(_, p)| p.clone())
        .collect();
    if r == MapResponse::default() {
        return None;
    }
    r.control_time = Some(now);
    Some(r)
}

/// A `PeerChange` when only patchable fields differ (endpoints, DERP home, online, last seen,
/// keys, key expiry); `None` when the whole node must be resent.
fn patch(old: &tailcfg::Node, new: &tailcfg::Node) -> Option<PeerChange> {
    let mut rest = new.clone();
    rest.endpoints = old.endpoints.clone();
    rest.home_derp = old.home_derp;
    rest.legacy_derp = old.legacy_derp.clone();
    rest.online = old.online;
    rest.last_seen = old.last_seen;
    rest.key = old.key;
    rest.disco_key = old.disco_key;
    rest.key_expiry = old.key_expiry;
    if rest != *old {
        return None;
    }
    let mut p = PeerChange {
        node_id: new.id,
        ..Default::default()
    };
    if old.endpoints != new.endpoints {
        p.endpoints = new.endpoints.clone();
        if new.endpoints.is_empty() {
            // An empty list reads as "unchanged"; resend the node to clear endpoints.
            return None;
        }
    }
    if old.home_derp != new.home_derp {
        if new.home_derp == 0 {
            return None;
        }
        p.derp_region = new.home_derp;
    }
    if old.online != new.online {
        p.online = new.online;
    }
    if old.last_seen != new.last_seen {
        match new.last_seen {
            Some(t) => p.last_seen = Some(t),
            None if new.online == Some(true) => {}
            None => return None,
        }
    }
    if old.key != new.key {
        p.key = Some(new.key);
    }
    if old.disco_key != new.disco_key {
        p.disco_key = Some(new.disco_key);
    }
    if old.key_expiry != new.key_expiry {
        p.key_expiry = Some(new.key_expiry);
    }
    Some(p)
}
