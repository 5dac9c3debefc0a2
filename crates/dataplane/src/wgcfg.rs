//! What each peer is configured with and which destinations this node serves: Tailscale's
//! `wgengine/wgcfg/nmcfg` (AllowedIPs from the netmap) and the local networks of its packet
//! filter (`ipnlocal` `updateFilterLocked` with `shrinkDefaultRoute`), as pure functions.
//!
//! Driven by the agent on every netmap and preference change: [`peer_allowed_ips`] builds each
//! [`crate::PeerConfig`]'s AllowedIPs, [`local_routes`] the [`crate::EngineConfig`]'s
//! `local_routes`. The engine uses the former both to route outbound packets and to check the
//! inner source of inbound ones, so a subnet route that is not accepted here is neither used
//! nor accepted as a source.

use std::net::IpAddr;

use ipnet::IpNet;
use proto::tailcfg::Node;

use crate::prefixes;

/// The tailnet's IPv4 range (CGNAT 100.64.0.0/10).
pub const TAILNET_V4: &str = "100.64.0.0/10";
/// The tailnet's IPv6 range (Tailscale's ULA).
pub const TAILNET_V6: &str = "fd7a:115c:a1e0::/48";

/// Prefixes an exit node never serves even though they are inside `0.0.0.0/0` or `::/0`
/// (Tailscale's `removeFromDefaultRoute`): private LANs, link-local, multicast and the tailnet's
/// own ranges. Reaching those needs an explicit subnet route.
pub const NOT_VIA_EXIT_NODE: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "224.0.0.0/4",
    TAILNET_V4,
    "fe80::/10",
    "ff00::/8",
    TAILNET_V6,
];

/// This node's choices about peers' routes (`--accept-routes`, `--exit-node`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSelection<'a> {
    /// Use the subnet routes peers are primary for (Tailscale's `RouteAll`).
    pub accept_routes: bool,
    /// The `StableID` of the exit node in use: only that peer gets `0.0.0.0/0` and `::/0`.
    pub exit_node: Option<&'a str>,
    /// Routes this node advertises itself. A peer's subnet route inside one of them is skipped:
    /// we are on that network, and routing it into the tunnel (say, to the other router of a
    /// failover pair) would cut us off from it.
    pub own_routes: &'a [IpNet],
}

/// Whether `p` is a default route (an exit route).
pub fn is_exit_route(p: &IpNet) -> bool {
    p.prefix_len() == 0
}

/// Whether the peer offers itself as an exit node (control put an approved default route in its
/// AllowedIPs).
pub fn offers_exit_node(node: &Node) -> bool {
    node.allowed_ips
        .as_ref()
        .is_some_and(|a| a.iter().any(is_exit_route))
}

/// Subnet routes the peer carries in its AllowedIPs (not its own addresses, not exit routes).
pub fn subnet_routes(node: &Node) -> Vec<IpNet> {
    node.allowed_ips
        .iter()
        .flatten()
        .map(|p| p.trunc())
        .filter(|p| !is_exit_route(p) && !is_own_address(node, p))
        .collect()
}

fn is_own_address(node: &Node, p: &IpNet) -> bool {
    node.addresses.iter().any(|a| a.trunc() == *p || *a == *p)
}

/// The AllowedIPs to configure for `node` (nmcfg's rules): its own addresses always; its
/// subnet routes only with [`RouteSelection::accept_routes`]; default routes only if it is the
/// selected exit node. Without `AllowedIPs` in the map, its addresses.
pub fn peer_allowed_ips(node: &Node, sel: &RouteSelection<'_>) -> Vec<IpNet> {
    let source = node.allowed_ips.as_deref().unwrap_or(&node.addresses);
    let selected_exit =
        !node.stable_id.is_empty() && sel.exit_node.is_some_and(|id| id == node.stable_id);
    let mut out: Vec<IpNet> = Vec::with_capacity(source.len());
    for p in source {
        let p = p.trunc();
        let keep = if is_exit_route(&p) {
            selected_exit
        } else if is_own_address(node, &p) {
            true
        } else {
            sel.accept_routes && !sel.own_routes.iter().any(|o| o.trunc().contains(&p))
        };
        if keep && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The destinations this node accepts from peers besides its own addresses: the subnet routes it
/// advertises and, as an exit node, the default routes minus its directly connected networks
/// (`lan`, except its own addresses there, `host_ips`) and minus [`NOT_VIA_EXIT_NODE`]. That
/// makes an exit node "guest wifi": the internet, but not the LAN it sits on unless that LAN is
/// also advertised as a subnet route.
pub fn local_routes(
    advertised: &[IpNet],
    exit_node: bool,
    lan: &[IpNet],
    host_ips: &[IpAddr],
) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = advertised
        .iter()
        .filter(|p| !is_exit_route(p))
        .map(|p| p.trunc())
        .collect();
    if exit_node {
        let all: Vec<IpNet> = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut remove: Vec<IpNet> = lan.to_vec();
        let hosts: Vec<IpNet> = host_ips.iter().map(|ip| IpNet::from(*ip)).collect();
        let shrunk = prefixes::subtract(&all, &remove);
        let mut with_hosts = shrunk;
        with_hosts.extend(hosts);
        remove = NOT_VIA_EXIT_NODE
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        out.extend(prefixes::subtract(&with_hosts, &remove));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(id: &str, addrs: &[&str], allowed: &[&str]) -> Node {
        Node {
            stable_id: id.into(),
            addresses: nets(addrs),
            allowed_ips: Some(nets(allowed)),
            ..Default::default()
        }
    }

    fn router() -> Node {
        peer(
            "r1",
            &["100.64.0.5/32", "fd7a:115c:a1e0::5/128"],
            &[
                "100.64.0.5/32",
                "fd7a:115c:a1e0::5/128",
                "192.168.1.0/24",
                "10.0.0.0/16",
            ],
        )
    }

    fn exit(id: &str) -> Node {
        peer(
            id,
            &["100.64.0.9/32"],
            &["100.64.0.9/32", "0.0.0.0/0", "::/0"],
        )
    }

    #[test]
    fn subnet_routes_only_when_accepted() {
        let r = router();
        let without = peer_allowed_ips(&r, &RouteSelection::default());
        assert_eq!(without, nets(&["100.64.0.5/32", "fd7a:115c:a1e0::5/128"]));
        let with = peer_allowed_ips(
            &r,
            &RouteSelection {
                accept_routes: true,
                ..Default::default()
            },
        );
        assert_eq!(
            with,
            nets(&[
                "100.64.0.5/32",
                "fd7a:115c:a1e0::5/128",
                "192.168.1.0/24",
                "10.0.0.0/16"
            ])
        );
        assert_eq!(subnet_routes(&r), nets(&["192.168.1.0/24", "10.0.0.0/16"]));
        assert!(!offers_exit_node(&r));
    }

    #[test]
    fn default_routes_only_for_the_selected_exit_node() {
        let (e1, e2) = (exit("e1"), exit("e2"));
        assert!(offers_exit_node(&e1));
        let sel = RouteSelection {
            accept_routes: true,
            exit_node: Some("e1"),
            ..Default::default()
        };
        assert_eq!(
            peer_allowed_ips(&e1, &sel),
            nets(&["100.64.0.9/32", "0.0.0.0/0", "::/0"])
        );
        // Another exit node, even with accept-routes, only gets its address.
        assert_eq!(peer_allowed_ips(&e2, &sel), nets(&["100.64.0.9/32"]));
        // An empty StableID never matches.
        let mut anon = exit("");
        anon.stable_id.clear();
        let sel = RouteSelection {
            exit_node: Some(""),
            ..Default::default()
        };
        assert_eq!(peer_allowed_ips(&anon, &sel), nets(&["100.64.0.9/32"]));
    }

    #[test]
    fn own_routes_are_not_sent_into_the_tunnel() {
        let own = nets(&["192.168.0.0/16"]);
        let sel = RouteSelection {
            accept_routes: true,
            exit_node: None,
            own_routes: &own,
        };
        assert_eq!(
            peer_allowed_ips(&router(), &sel),
            nets(&["100.64.0.5/32", "fd7a:115c:a1e0::5/128", "10.0.0.0/16"])
        );
    }

    #[test]
    fn missing_allowed_ips_fall_back_to_addresses() {
        let mut n = router();
        n.allowed_ips = None;
        let sel = RouteSelection {
            accept_routes: true,
            ..Default::default()
        };
        assert_eq!(
            peer_allowed_ips(&n, &sel),
            nets(&["100.64.0.5/32", "fd7a:115c:a1e0::5/128"])
        );
    }

    #[test]
    fn subnet_router_serves_its_advertised_routes() {
        let got = local_routes(&nets(&["192.168.1.0/24", "10.0.0.0/16"]), false, &[], &[]);
        assert_eq!(got, nets(&["192.168.1.0/24", "10.0.0.0/16"]));
    }

    #[test]
    fn exit_node_serves_the_internet_but_not_its_lan() {
        let lan = nets(&["203.0.113.0/24", "2001:db8:1::/64"]);
        let hosts = [ip("203.0.113.2")];
        let got = local_routes(&[], true, &lan, &hosts);
        let has = |s: &str| got.iter().any(|n| n.contains(&ip(s)));
        assert!(has("198.51.100.7"), "a public address");
        assert!(has("2001:db8:2::1"), "public IPv6");
        assert!(has("203.0.113.2"), "the exit node's own uplink address");
        assert!(!has("203.0.113.1"), "its directly connected LAN");
        assert!(!has("2001:db8:1::9"));
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fe80::1",
        ] {
            assert!(!has(private), "{private}");
        }
        // An exit node that is also a subnet router serves its LAN through the explicit route.
        let got = local_routes(&nets(&["192.168.1.0/24", "0.0.0.0/0"]), true, &lan, &hosts);
        assert!(got.iter().any(|n| n.contains(&ip("192.168.1.20"))));
        assert!(!got.iter().any(|n| n.prefix_len() == 0));
    }
}
