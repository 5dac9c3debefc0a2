//! MagicDNS names and IP allocation: pure helpers the tailnet state uses.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Turns a client-reported hostname into a DNS label: lowercase `[a-z0-9-]`, no leading or
/// trailing hyphen, at most 63 characters; `node` if nothing is left.
pub fn sanitize_hostname(hostname: &str) -> String {
    let first = hostname.split('.').next().unwrap_or_default();
    let mut out = String::with_capacity(first.len());
    let mut last_hyphen = false;
    for c in first.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
            last_hyphen = false;
        } else if !last_hyphen && !out.is_empty() {
            out.push('-');
            last_hyphen = true;
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_string();
    if trimmed.is_empty() {
        "node".to_string()
    } else {
        trimmed
    }
}

/// Whether `name` is a valid DNS label for a rename.
pub fn is_valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Picks `base`, or `base-1`, `base-2`, … so that the name is not in `taken`.
pub fn unique_name(base: &str, taken: &BTreeSet<&str>) -> String {
    if !taken.contains(base) {
        return base.to_string();
    }
    (1u32..)
        .map(|i| {
            let suffix = format!("-{i}");
            let keep = 63usize.saturating_sub(suffix.len()).min(base.len());
            format!("{}{suffix}", &base[..keep])
        })
        .find(|n| !taken.contains(n.as_str()))
        .unwrap_or_else(|| base.to_string())
}

/// The ChromeOS VM range inside the CGNAT space, never handed out.
const CHROMEOS_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 115, 92, 0), 23);
/// The MagicDNS service addresses.
const QUAD100_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
const QUAD100_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

/// Lowest free IPv4 in `pool` (skipping network/broadcast, service and reserved addresses).
pub fn allocate_v4(pool: Ipv4Net, used: &BTreeSet<IpAddr>) -> Option<Ipv4Addr> {
    let first = u32::from(pool.network()).checked_add(1)?;
    let last = u32::from(pool.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| *a != QUAD100_V4 && !CHROMEOS_V4.contains(a) && !used.contains(&IpAddr::V4(*a)))
}

/// Lowest free IPv6 in `pool`, skipping the network address and the `::53` resolver.
pub fn allocate_v6(pool: Ipv6Net, used: &BTreeSet<IpAddr>) -> Option<Ipv6Addr> {
    let base = u128::from(pool.network());
    let size_bits = 128 - u32::from(pool.prefix_len());
    let max_offset: u128 = if size_bits >= 64 {
        u128::from(u64::MAX)
    } else {
        (1u128 << size_bits) - 1
    };
    (1..max_offset)
        .map(|o| Ipv6Addr::from(base + o))
        .find(|a| *a != QUAD100_V6 && !used.contains(&IpAddr::V6(*a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_hostnames() {
        assert_eq!(sanitize_hostname("My-Laptop.local"), "my-laptop");
        assert_eq!(sanitize_hostname("web_01"), "web-01");
        assert_eq!(sanitize_hostname("--"), "node");
        assert_eq!(sanitize_hostname(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn unique_names_get_suffixes() {
        let taken: BTreeSet<&str> = ["web", "web-1"].into_iter().collect();
        assert_eq!(unique_name("web", &taken), "web-2");
        assert_eq!(unique_name("db", &taken), "db");
    }

    #[test]
    fn allocation_skips_used_and_reserved() {
        let pool: Ipv4Net = "100.64.0.0/10".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(allocate_v4(pool, &used), Some(Ipv4Addr::new(100, 64, 0, 1)));
        used.insert(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(allocate_v4(pool, &used), Some(Ipv4Addr::new(100, 64, 0, 2)));
        let small: Ipv4Net = "100.115.92.0/22".parse().unwrap();
        assert_eq!(
            allocate_v4(small, &BTreeSet::new()),
            Some(Ipv4Addr::new(100, 115, 94, 0))
        );
        let v6: Ipv6Net = "fd7a:115c:a1e0::/48".parse().unwrap();
        assert_eq!(
            allocate_v6(v6, &BTreeSet::new()),
            "fd7a:115c:a1e0::1".parse().ok()
        );
    }
}
