//! [`DnsConfig`]: everything MagicDNS needs, derived from one network map by
//! [`DnsConfig::from_netmap`] (a pure function; the agent calls it on every map and swaps the
//! result into the [`crate::Resolver`]).
//!
//! What it holds:
//! - whether MagicDNS is on (`DNSConfig.Proxied`) and the base domain (the self node's name
//!   minus its first label, as Tailscale derives the MagicDNS suffix);
//! - every node's FQDN, and the short name (first label) of nodes under the base domain, mapped
//!   to all their addresses (self and peers, IPv4 and IPv6), plus `ExtraRecords`;
//! - PTR data for those addresses;
//! - global resolvers, fallback resolvers and split-DNS routes as socket addresses. Only plain
//!   IP resolvers (`1.1.1.1`, `1.1.1.1:53`, `[2606:4700::1111]:53`) are used: DNS-over-HTTPS and
//!   DNS-over-TLS resolvers (`https://…`, `tls://…`) are not supported yet and are listed in
//!   [`DnsConfig::unsupported_resolvers`] instead, so `agent dns status` can say so.
//!
//! With no global resolvers, queries that are not for the tailnet go to the OS's original
//! upstreams (see [`DnsConfig::use_os_upstreams`]), which the OS integration supplies.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use proto::netmap::NetMap;
use proto::tailcfg::{DnsResolver, Node};
use serde::{Deserialize, Serialize};

use crate::names::{has_suffix, normalize};

/// MagicDNS settings and records for one network map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// MagicDNS is on (`Proxied`): the OS should send queries to 100.100.100.100.
    pub magic_dns: bool,
    /// The MagicDNS suffix (`example.ts.net`), lowercase without the trailing dot.
    pub base_domain: Option<String>,
    /// Search domains for the OS, base domain first when MagicDNS is on, no duplicates.
    pub search_domains: Vec<String>,
    /// FQDN (lowercase, no trailing dot) → addresses, IPv4 first.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Short name (first label of a name under the base domain) → its FQDN in `hosts`.
    pub short_names: BTreeMap<String, String>,
    /// Address → FQDN, for PTR answers.
    pub reverse: BTreeMap<IpAddr, String>,
    /// Global upstream resolvers ("override local DNS"), in order.
    pub resolvers: Vec<SocketAddr>,
    /// Used only when there are no global resolvers and the OS's upstreams are unknown.
    pub fallback_resolvers: Vec<SocketAddr>,
    /// Split DNS: suffix (lowercase, no dots at either end) → resolvers. An empty list means
    /// the suffix is answered here (from `ExtraRecords`), with NXDOMAIN for unknown names.
    pub routes: BTreeMap<String, Vec<SocketAddr>>,
    /// Resolver addresses that were skipped because their protocol (DoH, DoT) or form is not
    /// supported.
    pub unsupported_resolvers: Vec<String>,
}

impl DnsConfig {
    /// Builds the DNS configuration of a network map. Never fails: malformed names, records or
    /// resolver addresses are skipped (resolvers are listed in `unsupported_resolvers`).
    pub fn from_netmap(nm: &NetMap) -> DnsConfig {
        let dns = &nm.dns;
        let mut cfg = DnsConfig {
            magic_dns: dns.proxied,
            ..Default::default()
        };
        cfg.base_domain = nm
            .self_node
            .as_ref()
            .and_then(|n| {
                normalize(&n.name)
                    .split_once('.')
                    .map(|(_, s)| s.to_string())
            })
            .filter(|s| !s.is_empty());

        let mut search = Vec::new();
        if cfg.magic_dns
            && let Some(base) = &cfg.base_domain
        {
            search.push(base.clone());
        }
        for d in &dns.domains {
            let d = normalize(d.trim_start_matches('.'));
            if !d.is_empty() && !search.contains(&d) {
                search.push(d);
            }
        }
        cfg.search_domains = search;

        // Self first, then peers by node ID: the order decides which node keeps a short name
        // two nodes would share.
        let nodes = nm.self_node.iter().chain(nm.peers.values());
        for node in nodes {
            cfg.add_node(node);
        }
        for rec in &dns.extra_records {
            cfg.add_extra_record(&rec.name, &rec.r#type, &rec.value);
        }

        let mut unsupported = Vec::new();
        cfg.resolvers = resolver_addrs(&dns.resolvers, &mut unsupported);
        if cfg.resolvers.is_empty() {
            // Capability versions 9-13 sent plain IPs in the deprecated `Nameservers`.
            cfg.resolvers = dns
                .nameservers
                .iter()
                .map(|ip| SocketAddr::new(*ip, 53))
                .collect();
        }
        cfg.fallback_resolvers = resolver_addrs(&dns.fallback_resolvers, &mut unsupported);
        for (suffix, resolvers) in &dns.routes {
            let suffix = normalize(suffix.trim_start_matches('.'));
            let addrs = resolver_addrs(resolvers, &mut unsupported);
            // A route whose every resolver is unsupported must not turn into "answer locally".
            if addrs.is_empty() && !resolvers.is_empty() {
                continue;
            }
            cfg.routes.insert(suffix, addrs);
        }
        unsupported.dedup();
        cfg.unsupported_resolvers = unsupported;
        cfg
    }

    fn add_node(&mut self, node: &Node) {
        let fqdn = normalize(&node.name);
        if fqdn.is_empty() {
            return;
        }
        let mut addrs: Vec<IpAddr> = node.addresses.iter().map(|a| a.addr()).collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        addrs.dedup();
        for ip in &addrs {
            self.reverse.entry(*ip).or_insert_with(|| fqdn.clone());
        }
        self.add_short_name(&fqdn);
        self.hosts.entry(fqdn).or_default().extend(addrs);
    }

    fn add_short_name(&mut self, fqdn: &str) {
        let Some(base) = &self.base_domain else {
            return;
        };
        if let Some((short, rest)) = fqdn.split_once('.')
            && rest == base
        {
            self.short_names
                .entry(short.to_string())
                .or_insert_with(|| fqdn.to_string());
        }
    }

    fn add_extra_record(&mut self, name: &str, rtype: &str, value: &str) {
        let name = normalize(name);
        let Ok(ip) = value.trim().parse::<IpAddr>() else {
            return;
        };
        let type_ok = match rtype {
            "" => true,
            "A" => ip.is_ipv4(),
            "AAAA" => ip.is_ipv6(),
            // Clients ignore other types (tailcfg.DNSRecord).
            _ => false,
        };
        if name.is_empty() || !type_ok {
            return;
        }
        self.reverse.entry(ip).or_insert_with(|| name.clone());
        self.add_short_name(&name);
        let addrs = self.hosts.entry(name).or_default();
        if !addrs.contains(&ip) {
            addrs.push(ip);
            addrs.sort_by_key(|a| a.is_ipv6());
        }
    }

    /// Whether queries that are not for the tailnet and match no split route go to the OS's
    /// original upstreams (true when control sent no global resolvers).
    pub fn use_os_upstreams(&self) -> bool {
        self.resolvers.is_empty()
    }

    /// The addresses a name (FQDN or short name, any case, trailing dot optional) resolves to
    /// in the tailnet, if it is a tailnet name.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let name = normalize(name);
        let fqdn = self.short_names.get(&name).unwrap_or(&name);
        self.hosts.get(fqdn).map(Vec::as_slice)
    }

    /// The tailnet zone that answers for `name` with authority (NXDOMAIN for unknown names):
    /// the base domain or a split route with no resolvers. `name` must be normalised.
    pub fn local_zone(&self, name: &str) -> Option<&str> {
        let base = self.base_domain.as_deref().filter(|b| has_suffix(name, b));
        let route = self
            .routes
            .iter()
            .filter(|(suffix, addrs)| addrs.is_empty() && has_suffix(name, suffix))
            .map(|(s, _)| s.as_str())
            .max_by_key(|s| s.len());
        match (base, route) {
            (Some(b), Some(r)) => Some(if r.len() > b.len() { r } else { b }),
            (b, r) => b.or(r),
        }
    }

    /// The longest split-DNS route with resolvers matching `name` (normalised).
    pub fn split_route(&self, name: &str) -> Option<(&str, &[SocketAddr])> {
        self.routes
            .iter()
            .filter(|(suffix, addrs)| !addrs.is_empty() && has_suffix(name, suffix))
            .max_by_key(|(s, _)| s.len())
            .map(|(s, a)| (s.as_str(), a.as_slice()))
    }
}

/// Plain-IP resolvers as socket addresses; everything else goes to `unsupported`.
fn resolver_addrs(list: &[DnsResolver], unsupported: &mut Vec<String>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for r in list {
        match parse_resolver_addr(&r.addr) {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None => unsupported.push(r.addr.clone()),
        }
    }
    out
}

/// `1.1.1.1`, `1.1.1.1:53`, `2606:4700::1111`, `[2606:4700::1111]:53`; `None` for URLs
/// (DoH/DoT) and anything malformed.
pub fn parse_resolver_addr(addr: &str) -> Option<SocketAddr> {
    let addr = addr.trim();
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    addr.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proto::tailcfg::{DnsConfig as WireDns, DnsRecord, NodeId};

    fn node(id: i64, name: &str, addrs: &[&str]) -> Node {
        Node {
            id: NodeId(id),
            name: name.to_string(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn sample_netmap() -> NetMap {
        let mut nm = NetMap::new();
        nm.self_node = Some(node(
            1,
            "laptop.example.ts.net.",
            &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
        ));
        for n in [
            node(
                2,
                "Monitoring.example.ts.net.",
                &["fd7a:115c:a1e0::2/128", "100.64.0.2/32"],
            ),
            node(3, "db.example.ts.net.", &["100.64.0.3/32"]),
            node(4, "shared.other.ts.net.", &["100.64.0.4/32"]),
        ] {
            nm.peers.insert(n.id, n);
        }
        nm.dns = WireDns {
            proxied: true,
            domains: vec!["example.ts.net".into(), "corp.example.com".into()],
            resolvers: vec![
                DnsResolver::new("192.0.2.53"),
                DnsResolver::new("https://dns.example/dns-query"),
                DnsResolver::new("[2001:db8::53]:5353"),
            ],
            routes: [
                (
                    "corp.example.com".to_string(),
                    vec![DnsResolver::new("10.0.0.53")],
                ),
                ("internal.".to_string(), vec![]),
                (
                    "doh-only.example".to_string(),
                    vec![DnsResolver::new("https://x/dns-query")],
                ),
            ]
            .into_iter()
            .collect(),
            extra_records: vec![
                DnsRecord {
                    name: "grafana.example.ts.net.".into(),
                    r#type: "A".into(),
                    value: "100.64.0.2".into(),
                },
                DnsRecord {
                    name: "bad.example.ts.net".into(),
                    r#type: "A".into(),
                    value: "fd7a::1".into(),
                },
                DnsRecord {
                    name: "printer.internal".into(),
                    r#type: String::new(),
                    value: "192.168.1.9".into(),
                },
            ],
            ..Default::default()
        };
        nm
    }

    #[test]
    fn names_addresses_and_search_domains_come_from_the_map() {
        let cfg = DnsConfig::from_netmap(&sample_netmap());
        assert!(cfg.magic_dns);
        assert_eq!(cfg.base_domain.as_deref(), Some("example.ts.net"));
        assert_eq!(cfg.search_domains, ["example.ts.net", "corp.example.com"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            cfg.lookup("MONITORING.example.ts.net."),
            Some(&[ip("100.64.0.2"), ip("fd7a:115c:a1e0::2")][..])
        );
        assert_eq!(
            cfg.lookup("monitoring"),
            cfg.lookup("monitoring.example.ts.net")
        );
        assert_eq!(cfg.lookup("laptop").map(<[IpAddr]>::len), Some(2));
        // A node outside the base domain keeps its FQDN but gets no short name.
        assert!(cfg.lookup("shared.other.ts.net").is_some());
        assert!(cfg.lookup("shared").is_none());
        assert_eq!(cfg.lookup("grafana"), Some(&[ip("100.64.0.2")][..]));
        assert!(cfg.lookup("bad.example.ts.net").is_none());
        assert_eq!(
            cfg.lookup("printer.internal"),
            Some(&[ip("192.168.1.9")][..])
        );
        assert_eq!(
            cfg.reverse.get(&ip("100.64.0.2")).map(String::as_str),
            Some("monitoring.example.ts.net")
        );
        assert_eq!(
            cfg.reverse
                .get(&ip("fd7a:115c:a1e0::1"))
                .map(String::as_str),
            Some("laptop.example.ts.net")
        );
    }

    #[test]
    fn resolvers_and_routes_keep_plain_ips_only() {
        let cfg = DnsConfig::from_netmap(&sample_netmap());
        assert_eq!(
            cfg.resolvers,
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:5353".parse().unwrap()
            ]
        );
        assert_eq!(
            cfg.unsupported_resolvers,
            ["https://dns.example/dns-query", "https://x/dns-query"]
        );
        assert!(!cfg.use_os_upstreams());
        assert_eq!(
            cfg.split_route("host.corp.example.com"),
            Some(("corp.example.com", &["10.0.0.53:53".parse().unwrap()][..]))
        );
        assert_eq!(cfg.split_route("example.com"), None);
        assert!(!cfg.routes.contains_key("doh-only.example"));
        assert_eq!(cfg.local_zone("x.internal"), Some("internal"));
        assert_eq!(
            cfg.local_zone("nope.example.ts.net"),
            Some("example.ts.net")
        );
        assert_eq!(cfg.local_zone("example.org"), None);
    }

    #[test]
    fn without_resolvers_the_os_upstreams_are_used() {
        let mut nm = sample_netmap();
        nm.dns.resolvers.clear();
        nm.dns.proxied = false;
        let cfg = DnsConfig::from_netmap(&nm);
        assert!(cfg.use_os_upstreams());
        assert!(!cfg.magic_dns);
        // Without MagicDNS the base domain is not added as a search domain by us.
        assert_eq!(cfg.search_domains, ["example.ts.net", "corp.example.com"]);
        nm.dns.domains.clear();
        assert!(DnsConfig::from_netmap(&nm).search_domains.is_empty());
    }

    #[test]
    fn resolver_address_forms() {
        assert_eq!(
            parse_resolver_addr("1.1.1.1"),
            Some("1.1.1.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver_addr("1.1.1.1:5353"),
            Some("1.1.1.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_resolver_addr("2606:4700::1111"),
            Some("[2606:4700::1111]:53".parse().unwrap())
        );
        assert_eq!(parse_resolver_addr("https://dns.google/dns-query"), None);
        assert_eq!(parse_resolver_addr("tls://1.1.1.1"), None);
        assert_eq!(parse_resolver_addr("1.1.1.1:0"), None);
    }
}
