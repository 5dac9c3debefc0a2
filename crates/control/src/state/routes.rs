//! Primary subnet routers: one online node per advertised-and-approved prefix.
//!
//! The choice is sticky: a primary keeps its prefixes while it stays online; when it goes
//! offline, the lowest-id online advertiser takes over. Exit routes (`/0`) are not elected:
//! every approved exit node carries them.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::model::{Node, NodeId};

/// The current primary node for each subnet prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Primaries {
    by_prefix: BTreeMap<IpNet, NodeId>,
}

impl Primaries {
    /// The primary for `prefix`, if any.
    pub fn primary(&self, prefix: &IpNet) -> Option<NodeId> {
        self.by_prefix.get(prefix).copied()
    }

    /// Prefixes `node` is primary for.
    pub fn routes_of(&self, node: NodeId) -> Vec<IpNet> {
        self.by_prefix
            .iter()
            .filter(|(_, n)| **n == node)
            .map(|(p, _)| *p)
            .collect()
    }

    /// All primaries.
    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &NodeId)> {
        self.by_prefix.iter()
    }

    /// Re-elects primaries given the nodes and which of them are online.
    pub fn recompute(
        &mut self,
        nodes: &BTreeMap<NodeId, Node>,
        sessions: &BTreeMap<NodeId, usize>,
    ) {
        let online = |id: &NodeId| sessions.get(id).is_some_and(|c| *c > 0);
        let mut candidates: BTreeMap<IpNet, Vec<NodeId>> = BTreeMap::new();
        for n in nodes.values().filter(|n| n.authorized) {
            for r in n.enabled_routes() {
                if r.prefix_len() == 0 {
                    continue;
                }
                candidates.entry(r).or_default().push(n.id);
            }
        }
        let mut next = BTreeMap::new();
        for (prefix, ids) in candidates {
            let current = self
                .by_prefix
                .get(&prefix)
                .filter(|id| ids.contains(id) && online(id));
            let chosen = current
                .copied()
                .or_else(|| ids.iter().copied().find(|id| online(id)));
            // With nobody online, keep the previous (or first) advertiser so routes do not
            // flap while all routers restart; traffic to it fails either way.
            let chosen = chosen
                .or_else(|| {
                    self.by_prefix
                        .get(&prefix)
                        .copied()
                        .filter(|id| ids.contains(id))
                })
                .or(ids.first().copied());
            if let Some(c) = chosen {
                next.insert(prefix, c);
            }
        }
        self.by_prefix = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;
    use chrono::Utc;
    use proto::keys::{DiscoPublic, MachinePublic, NodePublic};

    fn router(id: i64, routes: &[&str]) -> Node {
        Node {
            id: NodeId(id),
            machine_key: MachinePublic::zero(),
            node_key: NodePublic::from_bytes([id as u8; 32]),
            disco_key: DiscoPublic::zero(),
            user_id: None,
            tags: vec![],
            hostname: format!("r{id}"),
            given_name: format!("r{id}"),
            ipv4: None,
            ipv6: None,
            endpoints: vec![],
            hostinfo: serde_json::json!({"RoutableIPs": routes}),
            home_derp: 0,
            created: Utc::now(),
            last_seen: None,
            key_expiry: None,
            ephemeral: false,
            authorized: true,
            approved_routes: routes.iter().map(|r| r.parse().unwrap()).collect(),
            auth_key_id: None,
        }
    }

    #[test]
    fn failover_and_stickiness() {
        let p: IpNet = "192.168.1.0/24".parse().unwrap();
        let nodes: BTreeMap<NodeId, Node> = [
            router(1, &["192.168.1.0/24"]),
            router(2, &["192.168.1.0/24", "0.0.0.0/0"]),
        ]
        .into_iter()
        .map(|n| (n.id, n))
        .collect();
        let mut prim = Primaries::default();
        let mut sessions: BTreeMap<NodeId, usize> = [(NodeId(1), 1), (NodeId(2), 1)].into();
        prim.recompute(&nodes, &sessions);
        assert_eq!(prim.primary(&p), Some(NodeId(1)));
        assert!(prim.primary(&"0.0.0.0/0".parse().unwrap()).is_none());
        sessions.remove(&NodeId(1));
        prim.recompute(&nodes, &sessions);
        assert_eq!(
            prim.primary(&p),
            Some(NodeId(2)),
            "fails over to the online router"
        );
        sessions.insert(NodeId(1), 1);
        prim.recompute(&nodes, &sessions);
        assert_eq!(
            prim.primary(&p),
            Some(NodeId(2)),
            "stays on the new primary when the old returns"
        );
    }
}
