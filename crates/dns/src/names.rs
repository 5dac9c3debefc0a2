//! Name helpers, pure functions: normalising query names (lowercase, no trailing dot), suffix
//! matching on label boundaries, and reverse (PTR) names for `in-addr.arpa` / `ip6.arpa`,
//! including recognising names inside the tailnet's reverse zones (100.64.0.0/10 and
//! fd7a:115c:a1e0::/48).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv6 reverse zone of the tailnet's ULA range fd7a:115c:a1e0::/48.
pub const TAILNET_V6_REVERSE_ZONE: &str = "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa";

/// Lowercases a DNS name and drops the trailing dot, the form every table here is keyed by.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` equals `suffix` or ends with `.suffix` (both normalised). The empty suffix
/// (the root) matches every name.
pub fn has_suffix(name: &str, suffix: &str) -> bool {
    if suffix.is_empty() {
        return true;
    }
    name == suffix
        || (name.len() > suffix.len()
            && name.ends_with(suffix)
            && name.as_bytes().get(name.len() - suffix.len() - 1) == Some(&b'.'))
}

/// The reverse name of an address, without the trailing dot (`4.3.2.1.in-addr.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                out.push(hex_digit(b & 0x0f));
                out.push('.');
                out.push(hex_digit(b >> 4));
                out.push('.');
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

/// A name under `in-addr.arpa` or `ip6.arpa`, read back into what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reverse {
    /// A complete name: one address.
    Addr(IpAddr),
    /// A partial IPv4 name: the leading octets given (1 to 3 of them).
    V4Prefix { octets: [u8; 4], len: usize },
    /// A partial IPv6 name: the leading nibbles given (fewer than 32).
    V6Prefix { nibbles: [u8; 32], len: usize },
}

/// Parses a normalised reverse name; `None` for anything else (including malformed labels).
pub fn parse_reverse(name: &str) -> Option<Reverse> {
    if let Some(rest) = name.strip_suffix("in-addr.arpa") {
        let labels: Vec<&str> = split_labels(rest)?;
        if labels.is_empty() || labels.len() > 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        // Labels are least significant first.
        for (i, label) in labels.iter().rev().enumerate() {
            let v: u8 = label.parse().ok()?;
            // Reject "01" and the like: they are not how an octet is written in a PTR name.
            if label.len() > 1 && label.starts_with('0') {
                return None;
            }
            *octets.get_mut(i)? = v;
        }
        return Some(if labels.len() == 4 {
            Reverse::Addr(IpAddr::V4(Ipv4Addr::from(octets)))
        } else {
            Reverse::V4Prefix {
                octets,
                len: labels.len(),
            }
        });
    }
    if let Some(rest) = name.strip_suffix("ip6.arpa") {
        let labels = split_labels(rest)?;
        if labels.is_empty() || labels.len() > 32 {
            return None;
        }
        let mut nibbles = [0u8; 32];
        for (i, label) in labels.iter().rev().enumerate() {
            let mut chars = label.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return None;
            };
            let v = u8::try_from(c.to_digit(16)?).ok()?;
            *nibbles.get_mut(i)? = v;
        }
        if labels.len() == 32 {
            let mut bytes = [0u8; 16];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (nibbles[2 * i] << 4) | nibbles[2 * i + 1];
            }
            return Some(Reverse::Addr(IpAddr::V6(Ipv6Addr::from(bytes))));
        }
        return Some(Reverse::V6Prefix {
            nibbles,
            len: labels.len(),
        });
    }
    None
}

/// The labels before a reverse suffix: `rest` is everything before `in-addr.arpa`, so it must
/// be empty (the suffix itself) or end with a dot.
fn split_labels(rest: &str) -> Option<Vec<&str>> {
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_suffix('.')?;
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return None;
    }
    Some(labels)
}

/// If `name` lies inside one of the tailnet's reverse zones, the zone to put in the SOA of a
/// negative answer (`<n>.100.in-addr.arpa` for 100.64.0.0/10, [`TAILNET_V6_REVERSE_ZONE`]).
pub fn tailnet_reverse_zone(name: &str) -> Option<String> {
    let v6_range = [0xf, 0xd, 0x7, 0xa, 0x1, 0x1, 0x5, 0xc, 0xa, 0x1, 0xe, 0x0];
    match parse_reverse(name)? {
        Reverse::Addr(IpAddr::V4(v4)) => {
            let o = v4.octets();
            (o[0] == 100 && (64..128).contains(&o[1])).then(|| format!("{}.100.in-addr.arpa", o[1]))
        }
        Reverse::V4Prefix { octets, len } => {
            (len >= 2 && octets[0] == 100 && (64..128).contains(&octets[1]))
                .then(|| format!("{}.100.in-addr.arpa", octets[1]))
        }
        Reverse::Addr(IpAddr::V6(v6)) => {
            let o = v6.octets();
            (o[..6] == [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0])
                .then(|| TAILNET_V6_REVERSE_ZONE.to_string())
        }
        Reverse::V6Prefix { nibbles, len } => {
            (len >= 12 && nibbles[..12] == v6_range).then(|| TAILNET_V6_REVERSE_ZONE.to_string())
        }
    }
}

/// Whether an address is in the tailnet's ranges (100.64.0.0/10, fd7a:115c:a1e0::/48).
pub fn is_tailnet_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (64..128).contains(&o[1])
        }
        IpAddr::V6(v6) => v6.octets()[..6] == [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_suffix() {
        assert_eq!(normalize("Web-1.Example.TS.net."), "web-1.example.ts.net");
        assert!(has_suffix("a.example.ts.net", "example.ts.net"));
        assert!(has_suffix("example.ts.net", "example.ts.net"));
        assert!(!has_suffix("badexample.ts.net", "example.ts.net"));
        assert!(!has_suffix("ts.net", "example.ts.net"));
        assert!(has_suffix("anything", ""));
    }

    #[test]
    fn reverse_names_round_trip() {
        for ip in [
            "100.64.0.1",
            "fd7a:115c:a1e0::1",
            "192.0.2.10",
            "2001:db8::ff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let name = reverse_name(ip);
            assert_eq!(parse_reverse(&name), Some(Reverse::Addr(ip)), "{name}");
        }
        assert_eq!(
            reverse_name("100.64.0.1".parse().unwrap()),
            "1.0.64.100.in-addr.arpa"
        );
        assert!(
            reverse_name("fd7a:115c:a1e0::1".parse().unwrap())
                .ends_with("0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa")
        );
    }

    #[test]
    fn malformed_reverse_names_are_not_parsed() {
        for bad in [
            "1.2.3.4.5.in-addr.arpa",
            "256.0.64.100.in-addr.arpa",
            "01.0.64.100.in-addr.arpa",
            "x.0.64.100.in-addr.arpa",
            "1..64.100.in-addr.arpa",
            "ab.0.ip6.arpa",
            "fooin-addr.arpa",
            "example.com",
        ] {
            assert_eq!(parse_reverse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tailnet_reverse_zones() {
        assert_eq!(
            tailnet_reverse_zone("9.9.100.100.in-addr.arpa").as_deref(),
            Some("100.100.in-addr.arpa")
        );
        assert_eq!(
            tailnet_reverse_zone("64.100.in-addr.arpa").as_deref(),
            Some("64.100.in-addr.arpa")
        );
        assert_eq!(tailnet_reverse_zone("1.0.63.100.in-addr.arpa"), None);
        assert_eq!(tailnet_reverse_zone("1.0.128.100.in-addr.arpa"), None);
        assert_eq!(tailnet_reverse_zone("100.in-addr.arpa"), None);
        let v6 = reverse_name("fd7a:115c:a1e0:ab12::9".parse().unwrap());
        assert_eq!(
            tailnet_reverse_zone(&v6).as_deref(),
            Some(TAILNET_V6_REVERSE_ZONE)
        );
        assert_eq!(
            tailnet_reverse_zone(TAILNET_V6_REVERSE_ZONE).as_deref(),
            Some(TAILNET_V6_REVERSE_ZONE)
        );
        assert_eq!(
            tailnet_reverse_zone(&reverse_name("fd00::1".parse().unwrap())),
            None
        );
    }
}
