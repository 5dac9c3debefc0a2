//! resolv.conf text, sans-IO: reading nameservers, recognising the file the agent wrote (by its
//! marker), rendering ours, and the backup format [`crate::os::direct`] keeps in the state
//! directory.
//!
//! The backup is the original file verbatim after one or two header comment lines, so it is
//! itself a valid resolv.conf a human can copy back by hand:
//!
//! ```text
//! # agent-dns-backup v1: the original /etc/resolv.conf, restored when the agent stops
//! # agent-dns-backup symlink ../run/systemd/resolve/stub-resolv.conf   (only if it was a link)
//! # agent-dns-backup absent                                           (only if there was none)
//! <original content>
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::{MAGIC_IPV4, MAGIC_IPV6};

/// The token that marks a resolv.conf as written by the agent.
pub const MARKER: &str = "agent-dns-marker";
/// First line of a backup.
pub const BACKUP_HEADER: &str =
    "# agent-dns-backup v1: the original /etc/resolv.conf, restored when the agent stops";
const BACKUP_SYMLINK: &str = "# agent-dns-backup symlink ";
const BACKUP_ABSENT: &str = "# agent-dns-backup absent";

/// systemd-resolved's stub listener, never an upstream of ours.
pub const RESOLVED_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));

/// Whether the text is a resolv.conf the agent wrote.
pub fn has_marker(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with('#') && l.contains(MARKER))
}

/// The `nameserver` addresses, in order (IPv6 zone suffixes like `%eth0` are dropped).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or_default();
        if let Ok(ip) = addr.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// The upstreams a resolv.conf names, as port-53 socket addresses, without the MagicDNS
/// addresses and the systemd-resolved stub (sending there would loop back to us).
pub fn upstreams(text: &str) -> Vec<SocketAddr> {
    nameservers(text)
        .into_iter()
        .filter(|ip| {
            *ip != IpAddr::V4(MAGIC_IPV4) && *ip != IpAddr::V6(MAGIC_IPV6) && *ip != RESOLVED_STUB
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Our resolv.conf: a marker comment, the nameservers and the search domains.
pub fn render(nameservers: &[IpAddr], search: &[String], backup_path: &str) -> String {
    let mut out = format!(
        "# Written by the agent for MagicDNS ({MARKER}); do not edit.\n\
         # The original file is kept in {backup_path} and put back by `agent down`,\n\
         # when the agent stops, or at its next start after a crash.\n"
    );
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

/// What a backup says the original was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Original {
    /// A regular file with this content.
    File(String),
    /// A symbolic link to this target.
    Symlink(String),
    /// There was no resolv.conf.
    Absent,
}

/// Renders a backup of `original`.
pub fn render_backup(original: &Original) -> String {
    match original {
        Original::File(content) => format!("{BACKUP_HEADER}\n{content}"),
        Original::Symlink(target) => format!("{BACKUP_HEADER}\n{BACKUP_SYMLINK}{target}\n"),
        Original::Absent => format!("{BACKUP_HEADER}\n{BACKUP_ABSENT}\n"),
    }
}

/// Reads a backup back. A file without our header (written by hand, or by an older version) is
/// taken as the original content verbatim, so nothing is ever thrown away.
pub fn parse_backup(text: &str) -> Original {
    let Some(rest) = text.strip_prefix(BACKUP_HEADER) else {
        return Original::File(text.to_string());
    };
    let rest = rest.strip_prefix('\n').unwrap_or(rest);
    if let Some(target) = rest.strip_prefix(BACKUP_SYMLINK) {
        return Original::Symlink(target.trim_end_matches('\n').to_string());
    }
    if rest.trim_end() == BACKUP_ABSENT {
        return Original::Absent;
    }
    Original::File(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_and_upstreams() {
        let text = "# comment\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\n\
                    nameserver 127.0.0.53\nnameserver 100.100.100.100\nsearch lan\n\
                    nameserver bogus\nnameserver 10.0.0.1\n";
        assert_eq!(nameservers(text).len(), 4);
        assert_eq!(
            upstreams(text),
            [
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn rendered_file_carries_the_marker() {
        let text = render(
            &[IpAddr::V4(MAGIC_IPV4)],
            &["example.ts.net".into(), "corp.example.com".into()],
            "/var/lib/agent/resolv.conf.backup",
        );
        assert!(has_marker(&text));
        assert!(text.contains("nameserver 100.100.100.100\n"));
        assert!(text.contains("search example.ts.net corp.example.com\n"));
        assert!(!has_marker("nameserver 10.0.0.1\n"));
        // The marker in a non-comment line does not count.
        assert!(!has_marker("search agent-dns-marker\n"));
    }

    #[test]
    fn backups_round_trip() {
        for original in [
            Original::File("nameserver 10.0.0.1\nsearch lan\n".into()),
            Original::File(String::new()),
            Original::Symlink("../run/systemd/resolve/stub-resolv.conf".into()),
            Original::Absent,
        ] {
            assert_eq!(parse_backup(&render_backup(&original)), original);
        }
        assert_eq!(
            parse_backup("nameserver 1.2.3.4\n"),
            Original::File("nameserver 1.2.3.4\n".into())
        );
    }
}
