//! A set of IP addresses kept as sorted, merged, inclusive ranges (one list per family).
//!
//! Used to union the prefixes an ACL source or destination resolves to, to subtract ranges
//! (`autogroup:internet`, the tailnet's `*`), and to print the result as the filter wire
//! strings: single IPs without a length, masked CIDRs, or `a-b` ranges. Pure data, no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Inclusive address ranges; IPv4 values use the low 32 bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IpSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn addr_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (true, u128::from(u32::from(a))),
        IpAddr::V6(a) => (false, u128::from(a)),
    }
}

fn net_range(net: &IpNet) -> (bool, u128, u128) {
    let (v4, start) = addr_bits(net.network());
    let (_, end) = addr_bits(net.broadcast());
    (v4, start, end)
}

fn merge(ranges: &mut Vec<(u128, u128)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *ranges = out;
}

fn contains_value(ranges: &[(u128, u128)], v: u128) -> bool {
    let i = ranges.partition_point(|r| r.1 < v);
    ranges.get(i).is_some_and(|r| r.0 <= v)
}

fn overlaps_range(ranges: &[(u128, u128)], s: u128, e: u128) -> bool {
    let i = ranges.partition_point(|r| r.1 < s);
    ranges.get(i).is_some_and(|r| r.0 <= e)
}

fn covers_range(ranges: &[(u128, u128)], s: u128, e: u128) -> bool {
    let i = ranges.partition_point(|r| r.1 < s);
    ranges.get(i).is_some_and(|r| r.0 <= s && r.1 >= e)
}

fn subtract(ranges: &[(u128, u128)], s: u128, e: u128) -> Vec<(u128, u128)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(rs, re) in ranges {
        if re < s || rs > e {
            out.push((rs, re));
            continue;
        }
        if rs < s {
            out.push((rs, s - 1));
        }
        if re > e {
            out.push((e + 1, re));
        }
    }
    out
}

/// Splits an inclusive range into the fewest aligned prefixes (as (start, prefix length)).
fn range_to_prefixes(mut s: u128, e: u128, bits: u32) -> Vec<(u128, u8)> {
    // The last address of the block of 2^size_log addresses starting at aligned `s`; cannot
    // overflow because `s` is aligned to the block size.
    let block_end = |s: u128, size_log: u32| -> u128 {
        if size_log >= 128 {
            u128::MAX
        } else {
            s | ((1u128 << size_log) - 1)
        }
    };
    let mut out = Vec::new();
    loop {
        let mut size_log = s.trailing_zeros().min(bits);
        while size_log > 0 && block_end(s, size_log) > e {
            size_log -= 1;
        }
        // `bits - size_log` is at most 128, so it fits in a u8.
        out.push((s, u8::try_from(bits - size_log).unwrap_or(0)));
        let last = block_end(s, size_log);
        if last >= e {
            break;
        }
        s = last + 1;
    }
    out
}

pub(crate) fn to_ip(v4: bool, v: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX)))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl IpSet {
    /// The empty set.
    pub fn new() -> Self {
        IpSet::default()
    }

    /// Every IPv4 and IPv6 address.
    pub fn everything() -> Self {
        IpSet {
            v4: vec![(0, u128::from(u32::MAX))],
            v6: vec![(0, u128::MAX)],
        }
    }

    /// Adds a prefix. Call [`IpSet::normalize`] after a batch of additions.
    pub fn add_net(&mut self, net: &IpNet) {
        let (v4, s, e) = net_range(net);
        if v4 {
            self.v4.push((s, e))
        } else {
            self.v6.push((s, e))
        }
    }

    /// Adds a single address. Call [`IpSet::normalize`] after a batch of additions.
    pub fn add_ip(&mut self, ip: IpAddr) {
        let (v4, v) = addr_bits(ip);
        if v4 {
            self.v4.push((v, v))
        } else {
            self.v6.push((v, v))
        }
    }

    /// Adds every range of another set. Call [`IpSet::normalize`] afterwards.
    pub fn add_set(&mut self, other: &IpSet) {
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
    }

    /// Sorts and merges the ranges; every query below assumes this was done.
    pub fn normalize(&mut self) {
        merge(&mut self.v4);
        merge(&mut self.v6);
    }

    pub fn remove_net(&mut self, net: &IpNet) {
        let (v4, s, e) = net_range(net);
        if v4 {
            self.v4 = subtract(&self.v4, s, e)
        } else {
            self.v6 = subtract(&self.v6, s, e)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v4, v) = addr_bits(ip);
        contains_value(if v4 { &self.v4 } else { &self.v6 }, v)
    }

    /// Whether any address of `net` is in the set.
    pub fn overlaps_net(&self, net: &IpNet) -> bool {
        let (v4, s, e) = net_range(net);
        overlaps_range(if v4 { &self.v4 } else { &self.v6 }, s, e)
    }

    /// Whether every address of `net` is in the set.
    pub fn covers_net(&self, net: &IpNet) -> bool {
        let (v4, s, e) = net_range(net);
        covers_range(if v4 { &self.v4 } else { &self.v6 }, s, e)
    }

    /// Whether the two sets share an address.
    pub fn overlaps(&self, other: &IpSet) -> bool {
        other
            .v4
            .iter()
            .any(|&(s, e)| overlaps_range(&self.v4, s, e))
            || other
                .v6
                .iter()
                .any(|&(s, e)| overlaps_range(&self.v6, s, e))
    }

    /// The set as the fewest aligned prefixes, IPv4 first, ascending.
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (v4, ranges, bits) in [(true, &self.v4, 32u32), (false, &self.v6, 128u32)] {
            for &(s, e) in ranges {
                for (start, len) in range_to_prefixes(s, e, bits) {
                    if let Ok(net) = IpNet::new(to_ip(v4, start), len) {
                        out.push(net);
                    }
                }
            }
        }
        out
    }

    /// The merged ranges as (is_v4, first, last), IPv4 first, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = (bool, u128, u128)> + '_ {
        self.v4
            .iter()
            .map(|&(s, e)| (true, s, e))
            .chain(self.v6.iter().map(|&(s, e)| (false, s, e)))
    }
}

/// A prefix as the filter wire format writes it: single addresses without a length.
pub(crate) fn net_string(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}
