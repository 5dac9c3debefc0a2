//! Compiles `tailcfg.FilterRule`s into matchers, following Tailscale's
//! `wgengine/filter/tailcfg.go` (`MatchesFromFilterRules`, `parseIPSet`) and `match.go`.
//!
//! Driven by [`super::Filter::compile`]. A bad entry (unparsable IP, CIDR with host bits set,
//! inverted range) is skipped and reported; the rest of the filter still applies, as the Go
//! client does (it logs the first error and keeps the parsed matches).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proto::tailcfg::{FilterRule, PortRange};

use crate::packet::{PacketInfo, ip_proto};

/// Why one entry of a filter rule was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The text is not `*`, an IP, a CIDR or an `a-b` range.
    #[error("filter rule {rule}: {entry:?} is not an IP, CIDR, range or \"*\"")]
    BadAddress { rule: usize, entry: String },
    /// A CIDR has bits set below its mask (`10.0.0.1/8`); Tailscale rejects these.
    #[error("filter rule {rule}: {entry:?} has host bits set below the mask")]
    HostBitsSet { rule: usize, entry: String },
    /// A range mixes families or ends before it starts.
    #[error("filter rule {rule}: {entry:?} is not a valid IP range")]
    BadRange { rule: usize, entry: String },
    /// A port range ends before it starts.
    #[error("filter rule {rule}: port range {first}-{last} is empty")]
    BadPorts { rule: usize, first: u16, last: u16 },
}

/// A destination prefix with its inclusive port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DstMatch {
    pub(crate) net: IpNet,
    pub(crate) ports: PortRange,
}

/// A 256-bit set of IP protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ProtoSet([u64; 4]);

impl ProtoSet {
    fn insert(&mut self, p: u8) {
        if let Some(w) = self.0.get_mut(usize::from(p >> 6)) {
            *w |= 1u64 << (p & 63);
        }
    }

    pub(crate) fn contains(&self, p: u8) -> bool {
        self.0
            .get(usize::from(p >> 6))
            .is_some_and(|w| w & (1u64 << (p & 63)) != 0)
    }
}

/// One compiled rule: sources × destinations × protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Match {
    pub(crate) protos: ProtoSet,
    pub(crate) srcs: Vec<IpNet>,
    pub(crate) dsts: Vec<DstMatch>,
}

/// Compiles rules; returns the matches plus every entry that had to be skipped.
pub(crate) fn compile(rules: &[FilterRule]) -> (Vec<Match>, Vec<RuleError>) {
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        // CapGrant-only rules carry application capabilities, not packet permission.
        if rule.dst_ports.is_empty() {
            continue;
        }
        let mut protos = ProtoSet::default();
        if rule.ip_proto.is_empty() {
            for p in [
                ip_proto::TCP,
                ip_proto::UDP,
                ip_proto::ICMPV4,
                ip_proto::ICMPV6,
            ] {
                protos.insert(p);
            }
        } else {
            // Values outside 0..=255 are ignored, as in Go.
            for p in rule.ip_proto.iter().filter_map(|&p| u8::try_from(p).ok()) {
                protos.insert(p);
            }
        }
        let mut srcs = Vec::new();
        for s in &rule.src_ips {
            // `cap:` sources match peers by node capability; this engine has no capability
            // table, so such sources match nothing (fail closed).
            if s.starts_with("cap:") {
                continue;
            }
            match parse_ip_set(s) {
                Ok(nets) => srcs.extend(nets),
                Err(kind) => errors.push(kind.into_error(i, s)),
            }
        }
        let mut dsts = Vec::new();
        for d in &rule.dst_ports {
            if d.ports.first > d.ports.last {
                errors.push(RuleError::BadPorts {
                    rule: i,
                    first: d.ports.first,
                    last: d.ports.last,
                });
                continue;
            }
            match parse_ip_set(&d.ip) {
                Ok(nets) => dsts.extend(nets.into_iter().map(|net| DstMatch {
                    net,
                    ports: d.ports,
                })),
                Err(kind) => errors.push(kind.into_error(i, &d.ip)),
            }
        }
        out.push(Match { protos, srcs, dsts });
    }
    (out, errors)
}

fn src_ok(m: &Match, src: IpAddr) -> bool {
    m.srcs.iter().any(|n| n.contains(&src))
}

/// `match`: protocol, source, destination IP and destination port all fit one rule.
pub(crate) fn matches_full(ms: &[Match], p: &PacketInfo) -> bool {
    let port = p.dst_port();
    ms.iter().any(|m| {
        m.protos.contains(p.proto)
            && src_ok(m, p.src)
            && m.dsts
                .iter()
                .any(|d| d.net.contains(&p.dst) && d.ports.first <= port && port <= d.ports.last)
    })
}

/// `matchIPsOnly`: some rule lets the source reach the destination IP; ports and protocols are
/// not consulted (used for ICMP that is neither a reply nor an error).
pub(crate) fn matches_ips_only(ms: &[Match], p: &PacketInfo) -> bool {
    ms.iter()
        .any(|m| src_ok(m, p.src) && m.dsts.iter().any(|d| d.net.contains(&p.dst)))
}

/// `matchProtoAndIPsOnlyIfAllPorts`: for port-less protocols, a rule must list the protocol and
/// open all ports (0–65535) on the destination.
pub(crate) fn matches_proto_all_ports(ms: &[Match], p: &PacketInfo) -> bool {
    ms.iter().any(|m| {
        m.protos.contains(p.proto)
            && src_ok(m, p.src)
            && m.dsts
                .iter()
                .any(|d| d.ports == PortRange::ANY && d.net.contains(&p.dst))
    })
}

enum ParseErrorKind {
    BadAddress,
    HostBitsSet,
    BadRange,
}

impl ParseErrorKind {
    fn into_error(self, rule: usize, entry: &str) -> RuleError {
        let entry = entry.to_string();
        match self {
            ParseErrorKind::BadAddress => RuleError::BadAddress { rule, entry },
            ParseErrorKind::HostBitsSet => RuleError::HostBitsSet { rule, entry },
            ParseErrorKind::BadRange => RuleError::BadRange { rule, entry },
        }
    }
}

/// Parses one of `*`, `IP`, `CIDR` (masked) or `a-b` into prefixes (Go's `parseIPSet`).
fn parse_ip_set(s: &str) -> Result<Vec<IpNet>, ParseErrorKind> {
    if s == "*" {
        return Ok(vec![
            IpNet::V4(Ipv4Net::default()),
            IpNet::V6(Ipv6Net::default()),
        ]);
    }
    if s.contains('/') {
        let net: IpNet = s.parse().map_err(|_| ParseErrorKind::BadAddress)?;
        if net.trunc() != net {
            return Err(ParseErrorKind::HostBitsSet);
        }
        return Ok(vec![net]);
    }
    if s.matches('-').count() == 1 {
        let (a, b) = s.split_once('-').ok_or(ParseErrorKind::BadRange)?;
        let a: IpAddr = a.parse().map_err(|_| ParseErrorKind::BadAddress)?;
        let b: IpAddr = b.parse().map_err(|_| ParseErrorKind::BadAddress)?;
        return range_to_prefixes(a, b).ok_or(ParseErrorKind::BadRange);
    }
    let ip: IpAddr = s.parse().map_err(|_| ParseErrorKind::BadAddress)?;
    Ok(vec![IpNet::from(ip)])
}

/// Splits an inclusive address range into the minimal list of CIDR prefixes.
pub(crate) fn range_to_prefixes(a: IpAddr, b: IpAddr) -> Option<Vec<IpNet>> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let blocks = split_range(u128::from(u32::from(a)), u128::from(u32::from(b)), 32)?;
            blocks
                .into_iter()
                .map(|(start, len)| {
                    let start = u32::try_from(start).ok()?;
                    Ipv4Net::new(start.into(), len).ok().map(IpNet::V4)
                })
                .collect()
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let blocks = split_range(u128::from(a), u128::from(b), 128)?;
            blocks
                .into_iter()
                .map(|(start, len)| Ipv6Net::new(start.into(), len).ok().map(IpNet::V6))
                .collect()
        }
        _ => None,
    }
}

/// Greedy CIDR decomposition of `[lo, hi]` in a `bits`-wide space: (start, prefix length) pairs.
fn split_range(mut lo: u128, hi: u128, bits: u8) -> Option<Vec<(u128, u8)>> {
    if lo > hi {
        return None;
    }
    let mut out = Vec::new();
    loop {
        // The largest block aligned at `lo` that does not pass `hi`.
        let mut size_log = u32::from(bits).min(if lo == 0 { 128 } else { lo.trailing_zeros() });
        while size_log > 0 {
            let last = if size_log >= 128 {
                u128::MAX
            } else {
                lo + ((1u128 << size_log) - 1)
            };
            if last <= hi {
                break;
            }
            size_log -= 1;
        }
        let prefix_len = bits.checked_sub(u8::try_from(size_log).ok()?)?;
        out.push((lo, prefix_len));
        let last = if size_log >= 128 {
            u128::MAX
        } else {
            lo + ((1u128 << size_log) - 1)
        };
        if last >= hi {
            return Some(out);
        }
        lo = last + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ip_set_forms() {
        assert_eq!(
            parse_ip_set("*").ok().unwrap(),
            nets(&["0.0.0.0/0", "::/0"])
        );
        assert_eq!(
            parse_ip_set("100.64.0.1").ok().unwrap(),
            nets(&["100.64.0.1/32"])
        );
        assert_eq!(
            parse_ip_set("fd7a::1").ok().unwrap(),
            nets(&["fd7a::1/128"])
        );
        assert_eq!(
            parse_ip_set("10.0.0.0/8").ok().unwrap(),
            nets(&["10.0.0.0/8"])
        );
        assert!(matches!(
            parse_ip_set("10.0.0.1/8"),
            Err(ParseErrorKind::HostBitsSet)
        ));
        assert!(matches!(
            parse_ip_set("nonsense"),
            Err(ParseErrorKind::BadAddress)
        ));
        assert!(matches!(
            parse_ip_set("10.0.0.9-10.0.0.1"),
            Err(ParseErrorKind::BadRange)
        ));
        assert!(matches!(
            parse_ip_set("10.0.0.1-fd7a::1"),
            Err(ParseErrorKind::BadRange)
        ));
    }

    #[test]
    fn ranges_become_minimal_prefixes() {
        let got = parse_ip_set("100.64.0.0-100.115.91.255").ok().unwrap();
        // Tailscale's standard CGNAT-minus-ChromeOS-range source.
        assert_eq!(
            got,
            nets(&[
                "100.64.0.0/11",
                "100.96.0.0/12",
                "100.112.0.0/15",
                "100.114.0.0/16",
                "100.115.0.0/18",
                "100.115.64.0/20",
                "100.115.80.0/21",
                "100.115.88.0/22",
            ])
        );
        assert_eq!(
            parse_ip_set("0.0.0.0-255.255.255.255").ok().unwrap(),
            nets(&["0.0.0.0/0"])
        );
        assert_eq!(
            parse_ip_set("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
                .ok()
                .unwrap(),
            nets(&["::/0"])
        );
        assert_eq!(
            parse_ip_set("10.0.0.5-10.0.0.5").ok().unwrap(),
            nets(&["10.0.0.5/32"])
        );
        assert_eq!(
            parse_ip_set("10.0.0.1-10.0.0.6").ok().unwrap(),
            nets(&["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"])
        );
    }

    #[test]
    fn ip_proto_defaults_and_bounds() {
        let mut rule = FilterRule::allow_all();
        let (ms, errs) = compile(std::slice::from_ref(&rule));
        assert!(errs.is_empty());
        for p in [1u8, 6, 17, 58] {
            assert!(ms[0].protos.contains(p));
        }
        assert!(!ms[0].protos.contains(132));
        rule.ip_proto = vec![132, -1, 300, 47];
        let (ms, _) = compile(&[rule]);
        assert!(ms[0].protos.contains(132) && ms[0].protos.contains(47));
        assert!(!ms[0].protos.contains(6));
    }
}
