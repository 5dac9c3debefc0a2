//! Cryptokey routing: the longest-prefix match of an address over the peers' AllowedIPs.
//!
//! Driven by the engine: rebuilt from the peer list on every `set_config`, queried once per
//! outbound packet (destination → peer) and once per inbound packet (source → must be the peer
//! that sent it). Values are opaque peer handles chosen by the caller.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

/// Prefix → peer handle, for IPv4 and IPv6.
#[derive(Debug, Clone)]
pub struct RoutingTable<T> {
    v4: PrefixMap<Ipv4Net, T>,
    v6: PrefixMap<Ipv6Net, T>,
}

impl<T> Default for RoutingTable<T> {
    fn default() -> Self {
        RoutingTable {
            v4: PrefixMap::new(),
            v6: PrefixMap::new(),
        }
    }
}

impl<T: Copy> RoutingTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `prefix` (host bits are ignored) to `peer`, returning the previous owner if the
    /// exact prefix was already routed (the later peer wins, as when WireGuard moves an
    /// AllowedIP).
    pub fn insert(&mut self, prefix: IpNet, peer: T) -> Option<T> {
        match prefix.trunc() {
            IpNet::V4(n) => self.v4.insert(n, peer),
            IpNet::V6(n) => self.v6.insert(n, peer),
        }
    }

    /// The peer owning the most specific prefix that contains `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, v)| *v),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, v)| *v),
        }
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_over_exit_route() {
        let mut t = RoutingTable::new();
        t.insert(net("100.64.0.2/32"), 'a');
        t.insert(net("fd7a:115c:a1e0::2/128"), 'a');
        t.insert(net("0.0.0.0/0"), 'x'); // exit node
        t.insert(net("::/0"), 'x');
        t.insert(net("10.1.0.0/16"), 's'); // subnet router
        t.insert(net("10.1.2.0/24"), 'r'); // a more specific subnet elsewhere

        assert_eq!(t.lookup(ip("100.64.0.2")), Some('a'));
        assert_eq!(t.lookup(ip("100.64.0.3")), Some('x'));
        assert_eq!(t.lookup(ip("8.8.8.8")), Some('x'));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some('s'));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some('r'));
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::2")), Some('a'));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some('x'));
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn no_route_without_default() {
        let mut t = RoutingTable::new();
        t.insert(net("100.64.0.2/32"), 1u32);
        assert_eq!(t.lookup(ip("100.64.0.3")), None);
        assert_eq!(t.lookup(ip("::1")), None);
        // Host bits in a configured prefix are ignored rather than rejected.
        t.insert(net("10.0.0.7/8"), 2);
        assert_eq!(t.lookup(ip("10.200.0.1")), Some(2));
        // Re-inserting an exact prefix moves it to the new peer.
        assert_eq!(t.insert(net("100.64.0.2/32"), 3), Some(1));
        assert_eq!(t.lookup(ip("100.64.0.2")), Some(3));
    }
}
