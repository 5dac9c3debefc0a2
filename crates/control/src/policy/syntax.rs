//! The small string languages inside a policy: aliases (`group:eng`, `tag:prod`,
//! `alice@example.com`, `10.0.0.0/8`, hosts, autogroups), `alias:ports` destinations, port
//! lists, protocol names and check periods.
//!
//! Each parser takes the string and returns a value or a reason; callers attach the line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use proto::tailcfg::filter::PortRange;

/// An `autogroup:` alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AutoGroup {
    /// Every untagged (user-owned) node.
    Member,
    /// Every tagged node.
    Tagged,
    /// The destination's own user's untagged nodes (destinations only).
    SelfDevices,
    /// Public address space, reached through exit nodes (destinations only).
    Internet,
    /// Every address, including non-tailnet ones (`SrcIPs ["*"]`).
    DangerAll,
}

impl AutoGroup {
    fn name(self) -> &'static str {
        match self {
            AutoGroup::Member => "autogroup:member",
            AutoGroup::Tagged => "autogroup:tagged",
            AutoGroup::SelfDevices => "autogroup:self",
            AutoGroup::Internet => "autogroup:internet",
            AutoGroup::DangerAll => "autogroup:danger-all",
        }
    }
}

/// A resolved-at-parse-time alias. Names are kept as written (users compare case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Alias {
    /// `*`.
    Wildcard,
    /// An IP or CIDR literal, or a `hosts` entry (already looked up).
    Prefix(IpNet),
    /// A user login (`alice@example.com`) or bare username (`alice@`).
    User(String),
    Group(String),
    Tag(String),
    Auto(AutoGroup),
}

impl std::fmt::Display for Alias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alias::Wildcard => f.write_str("*"),
            Alias::Prefix(n) => write!(f, "{n}"),
            Alias::User(u) | Alias::Group(u) | Alias::Tag(u) => f.write_str(u),
            Alias::Auto(a) => f.write_str(a.name()),
        }
    }
}

/// What an alias may be checked against while parsing: the defined names.
pub(crate) struct Names<'a> {
    pub groups: &'a BTreeMap<String, Vec<String>>,
    pub hosts: &'a BTreeMap<String, IpNet>,
    pub tags: &'a BTreeSet<String>,
}

/// Whether a string is shaped like an IP address or prefix (so a failed parse is reported as a
/// bad address rather than an unknown host name).
fn looks_like_ip(s: &str) -> bool {
    s.contains('/')
        || ((s.contains('.') || s.contains(':'))
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':'))
}

/// Parses an IP or CIDR literal; CIDRs must have no host bits set.
pub(crate) fn parse_prefix(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err(format!(
            "invalid CIDR {s:?}: host bits are set (did you mean \"{}\"?)",
            net.trunc()
        )),
        Err(_) => Err(format!("invalid IP address or CIDR {s:?}")),
    }
}

/// Parses an alias, checking that named groups, tags and hosts are defined.
pub(crate) fn parse_alias(s: &str, names: &Names<'_>) -> Result<Alias, String> {
    if s.is_empty() {
        return Err("empty alias".to_string());
    }
    if looks_like_ip(s) && !names.hosts.contains_key(s) {
        return parse_prefix(s).map(Alias::Prefix);
    }
    if s == "*" {
        return Ok(Alias::Wildcard);
    }
    if s.contains('@') {
        return Ok(Alias::User(s.to_string()));
    }
    if s.starts_with("group:") {
        if !names.groups.contains_key(s) {
            return Err(format!("group {s:?} is not defined"));
        }
        return Ok(Alias::Group(s.to_string()));
    }
    if s.starts_with("tag:") {
        if !names.tags.contains(s) {
            return Err(format!("tag {s:?} is not defined in tagOwners"));
        }
        return Ok(Alias::Tag(s.to_string()));
    }
    if let Some(rest) = s.strip_prefix("autogroup:") {
        let group = match rest {
            "member" => AutoGroup::Member,
            "tagged" => AutoGroup::Tagged,
            "self" => AutoGroup::SelfDevices,
            "internet" => AutoGroup::Internet,
            "danger-all" => AutoGroup::DangerAll,
            _ => return Err(format!("unknown autogroup {s:?}")),
        };
        return Ok(Alias::Auto(group));
    }
    match names.hosts.get(s) {
        Some(net) => Ok(Alias::Prefix(*net)),
        None => Err(format!(
            "host {s:?} is not defined (users need an \"@\", e.g. \"{s}@example.com\")"
        )),
    }
}

/// Splits a destination `alias:ports` (`tag:prod:22`, `[fd7a::1]:80`, `*:*`).
pub(crate) fn split_dst(s: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("destination {s:?} has an unclosed '['"))?;
        let ports = after.strip_prefix(':').ok_or_else(|| {
            format!("destination {s:?} is missing its ports (e.g. \"[{addr}]:*\")")
        })?;
        return Ok((addr, ports));
    }
    match s.rsplit_once(':') {
        Some((alias, ports))
            if !alias.is_empty()
                && !ports.is_empty()
                && ports
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '*' || c == ',' || c == '-') =>
        {
            Ok((alias, ports))
        }
        _ => Err(format!(
            "destination {s:?} is missing its ports (e.g. \"{s}:*\" or \"{s}:22\")"
        )),
    }
}

/// Parses a port list: `*`, `22`, `80,443`, `1000-2000`, or a mix.
pub(crate) fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    if s == "*" {
        return Ok(vec![PortRange::ANY]);
    }
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .map_err(|_| format!("invalid port {p:?} (ports are 0-65535)"))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        if part.is_empty() {
            return Err(format!("invalid port list {s:?}: empty entry"));
        }
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(format!("invalid port range {part:?}: start is after end"));
                }
                PortRange { first, last }
            }
            None => PortRange::single(port(part)?),
        };
        out.push(range);
    }
    Ok(out)
}

/// The protocols Tailscale names in ACLs, with their IANA numbers.
const PROTOCOLS: &[(&str, i32)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("ipv4", 4),
    ("ip-in-ip", 4),
    ("tcp", 6),
    ("egp", 8),
    ("igp", 9),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", 58),
    ("sctp", 132),
    ("fc", 133),
];

/// Parses an ACL `proto`: a name from [`PROTOCOLS`] or a number 0-255.
pub(crate) fn parse_proto(s: &str) -> Result<i32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, n)) = PROTOCOLS.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    match s.parse::<u8>() {
        Ok(n) => Ok(i32::from(n)),
        Err(_) => Err(format!(
            "unknown protocol {s:?} (use a name such as \"tcp\", \"udp\", \"icmp\" or a number \
             0-255)"
        )),
    }
}

/// Whether a protocol has ports (so a destination may name specific ones).
pub(crate) fn proto_has_ports(p: i32) -> bool {
    matches!(p, 6 | 17 | 132)
}

/// The check period of an SSH `check` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckPeriod {
    /// Re-authenticate on every connection.
    Always,
    /// Re-authenticate when the last check is older than this.
    Every(Duration),
}

impl CheckPeriod {
    /// Tailscale's default: 12 hours.
    pub const DEFAULT: CheckPeriod = CheckPeriod::Every(Duration::from_secs(12 * 3600));
    /// The longest allowed period: one week.
    pub const MAX: Duration = Duration::from_secs(168 * 3600);
}

/// Parses `always` or a Go-style duration (`12h`, `1h30m`, `90s`), at most 168h.
pub(crate) fn parse_check_period(s: &str) -> Result<CheckPeriod, String> {
    if s == "always" {
        return Ok(CheckPeriod::Always);
    }
    let bad = || format!("invalid checkPeriod {s:?} (use e.g. \"12h\", \"30m\" or \"always\")");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    let d = Duration::from_secs(total);
    if d.is_zero() {
        return Err(format!(
            "invalid checkPeriod {s:?}: must be longer than zero"
        ));
    }
    if d > CheckPeriod::MAX {
        return Err(format!(
            "checkPeriod {s:?} is longer than the maximum of 168h"
        ));
    }
    Ok(CheckPeriod::Every(d))
}

/// Whether a user alias (`alice@example.com`, or `alice@` for a bare username) names the user
/// with this login name. Comparison ignores ASCII case, as login names are email-like.
pub(crate) fn user_matches(alias: &str, login_name: &str) -> bool {
    if alias.eq_ignore_ascii_case(login_name) {
        return true;
    }
    match alias.strip_suffix('@') {
        Some(bare) => !bare.is_empty() && bare.eq_ignore_ascii_case(login_name),
        None => false,
    }
}
