//! Set arithmetic on IP prefixes: subtracting one list of prefixes from another and printing
//! the result as the fewest CIDR blocks.
//!
//! Pure functions, called by [`crate::wgcfg`] when an exit node's accepted destinations are
//! "everything minus the local LANs" (Tailscale's `shrinkDefaultRoute`, built on
//! `netipx.IPSetBuilder`). Each family is handled as inclusive `u128` ranges.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::filter::range_to_prefixes;

/// An inclusive address range within one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    lo: u128,
    hi: u128,
}

fn range_of(net: &IpNet) -> Range {
    match net.trunc() {
        IpNet::V4(n) => Range {
            lo: u128::from(u32::from(n.network())),
            hi: u128::from(u32::from(n.broadcast())),
        },
        IpNet::V6(n) => Range {
            lo: u128::from(n.network()),
            hi: u128::from(n.broadcast()),
        },
    }
}

/// Sorted, non-overlapping, non-adjacent ranges of one family.
fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.lo <= last.hi.saturating_add(1) => last.hi = last.hi.max(r.hi),
            _ => out.push(r),
        }
    }
    out
}

/// `base` minus `remove` for one family; both normalized.
fn subtract_ranges(base: &[Range], remove: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    for b in base {
        let mut lo = b.lo;
        let mut done = false;
        for r in remove.iter().filter(|r| r.hi >= b.lo && r.lo <= b.hi) {
            if r.lo > lo {
                out.push(Range { lo, hi: r.lo - 1 });
            }
            if r.hi >= b.hi {
                done = true;
                break;
            }
            lo = r.hi + 1;
        }
        if !done {
            out.push(Range { lo, hi: b.hi });
        }
    }
    out
}

fn to_prefixes(ranges: &[Range], v4: bool) -> Vec<IpNet> {
    let addr = |x: u128| -> Option<IpAddr> {
        if v4 {
            u32::try_from(x)
                .ok()
                .map(|a| IpAddr::V4(std::net::Ipv4Addr::from(a)))
        } else {
            Some(IpAddr::V6(std::net::Ipv6Addr::from(x)))
        }
    };
    ranges
        .iter()
        .filter_map(|r| range_to_prefixes(addr(r.lo)?, addr(r.hi)?))
        .flatten()
        .collect()
}

/// The addresses in `base` that are not in `remove`, as the fewest prefixes (IPv4 first, each
/// family in address order). Host bits in the inputs are ignored.
pub fn subtract(base: &[IpNet], remove: &[IpNet]) -> Vec<IpNet> {
    let family = |v4: bool, list: &[IpNet]| {
        normalize(
            list.iter()
                .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                .map(range_of)
                .collect(),
        )
    };
    let mut out = Vec::new();
    for v4 in [true, false] {
        let left = subtract_ranges(&family(v4, base), &family(v4, remove));
        out.extend(to_prefixes(&left, v4));
    }
    out
}

/// The union of `nets` as the fewest prefixes (IPv4 first).
pub fn aggregate(nets: &[IpNet]) -> Vec<IpNet> {
    subtract(nets, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn default_route_minus_a_lan() {
        let got = subtract(&nets(&["0.0.0.0/0"]), &nets(&["128.0.0.0/1"]));
        assert_eq!(got, nets(&["0.0.0.0/1"]));
        let got = subtract(
            &nets(&["10.0.0.0/8"]),
            &nets(&["10.0.0.0/9", "10.192.0.0/10"]),
        );
        assert_eq!(got, nets(&["10.128.0.0/10"]));
        // A hole in the middle leaves blocks on both sides.
        let got = subtract(&nets(&["192.168.0.0/24"]), &nets(&["192.168.0.128/32"]));
        assert!(
            !got.iter()
                .any(|n| n.contains(&"192.168.0.128".parse::<IpAddr>().unwrap()))
        );
        assert!(
            got.iter()
                .any(|n| n.contains(&"192.168.0.127".parse::<IpAddr>().unwrap()))
        );
        assert!(
            got.iter()
                .any(|n| n.contains(&"192.168.0.129".parse::<IpAddr>().unwrap()))
        );
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn families_stay_apart_and_edges_hold() {
        let got = subtract(
            &nets(&["0.0.0.0/0", "::/0"]),
            &nets(&["0.0.0.0/0", "fe80::/10"]),
        );
        assert!(got.iter().all(|n| matches!(n, IpNet::V6(_))));
        assert!(
            got.iter()
                .any(|n| n.contains(&"2001:db8::1".parse::<IpAddr>().unwrap()))
        );
        assert!(
            !got.iter()
                .any(|n| n.contains(&"fe80::1".parse::<IpAddr>().unwrap()))
        );
        // Removing nothing from everything is everything; removing from nothing is nothing.
        assert_eq!(subtract(&nets(&["::/0"]), &[]), nets(&["::/0"]));
        assert!(subtract(&[], &nets(&["10.0.0.0/8"])).is_empty());
        assert_eq!(
            subtract(&nets(&["255.255.255.255/32"]), &nets(&["0.0.0.0/1"])),
            nets(&["255.255.255.255/32"])
        );
    }

    #[test]
    fn aggregate_merges_neighbours() {
        assert_eq!(
            aggregate(&nets(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.5/32"])),
            nets(&["10.0.0.0/24"])
        );
    }
}
