//! Human-readable output for the CLI: the `agent status` table, `whois`, durations and byte
//! counts. Pure functions of their input and `now`, so they are tested without a daemon.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::ipn::{BackendState, PeerStatus, Status, WhoIs};

/// `agent status` without `--json`.
pub fn status(status: &Status, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    match status.backend_state {
        BackendState::Running | BackendState::Starting => {
            if status.backend_state == BackendState::Starting {
                out.push_str("Starting: waiting for the network map…\n");
            }
            out.push_str(&table(status, now));
        }
        BackendState::NeedsLogin => {
            out.push_str("Logged out.\n");
            match &status.auth_url {
                Some(url) => {
                    let _ = writeln!(out, "Log in at: {url}");
                }
                None => out.push_str("Log in with: agent up --authkey KEY --login-server URL\n"),
            }
        }
        BackendState::NeedsMachineAuth => {
            out.push_str("Logged in, waiting for a tailnet admin to approve this machine.\n");
        }
        BackendState::Stopped => out.push_str("Stopped. Run `agent up` to connect.\n"),
        BackendState::NoState => out.push_str("The agent is starting up.\n"),
    }
    if !status.health.is_empty() {
        out.push_str("\n# Health check:\n");
        for line in &status.health {
            let _ = writeln!(out, "#   - {line}");
        }
    }
    out
}

/// The node table: this node first, then the peers.
fn table(status: &Status, now: DateTime<Utc>) -> String {
    let header = ["IP", "NAME", "OS", "STATE", "PATH", "HANDSHAKE", "RX", "TX"].map(String::from);
    let mut rows = vec![header];
    rows.push(row(&status.self_, now, true));
    rows.extend(status.peers.iter().map(|p| row(p, now, false)));

    let mut widths = [0usize; COLUMNS];
    for r in &rows {
        for (width, cell) in widths.iter_mut().zip(r) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (cell, width) in r.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const COLUMNS: usize = 8;

fn row(node: &PeerStatus, now: DateTime<Utc>, is_self: bool) -> [String; COLUMNS] {
    let ip = node
        .addresses
        .first()
        .map_or_else(|| "-".to_owned(), ToString::to_string);
    let mut state = match (is_self, node.online) {
        (true, _) => "self",
        (false, true) => "online",
        (false, false) => "offline",
    }
    .to_owned();
    // Like `tailscale status`: which peer is the exit node in use, which could be, and the
    // subnets a peer routes for us.
    if node.exit_node {
        state.push_str("; exit node");
    } else if node.exit_node_option {
        state.push_str("; offers exit node");
    }
    let subnets: Vec<String> = node
        .primary_routes
        .iter()
        .filter(|r| r.prefix_len() != 0)
        .map(ToString::to_string)
        .collect();
    if !subnets.is_empty() {
        let _ = write!(state, "; routes {}", subnets.join(","));
    }
    let handshake = node
        .last_handshake
        .map_or_else(|| "-".to_owned(), |t| ago(t, now));
    let (rx, tx) = if is_self {
        ("-".to_owned(), "-".to_owned())
    } else {
        (bytes(node.rx_bytes), bytes(node.tx_bytes))
    };
    let path = node.path.to_string();
    [
        ip,
        display_name(node),
        node.os.clone(),
        state,
        path,
        handshake,
        rx,
        tx,
    ]
}

/// The first label of the MagicDNS name, or the hostname when there is no name yet.
pub fn display_name(node: &PeerStatus) -> String {
    match node.name.split('.').next() {
        Some(label) if !label.is_empty() => label.to_owned(),
        _ => node.hostname.clone(),
    }
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    match secs {
        ..=0 => "just now".to_owned(),
        1..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, …
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss past 2^53 bytes does not matter for one decimal place.
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("PiB"))
}

/// `agent whois` without `--json`.
pub fn whois(who: &WhoIs) -> String {
    let node = &who.node;
    let addresses: Vec<String> = node.addresses.iter().map(ToString::to_string).collect();
    let mut out = String::from("Machine:\n");
    let _ = writeln!(
        out,
        "  Name:      {}",
        if node.name.is_empty() {
            &node.hostname
        } else {
            &node.name
        }
    );
    let _ = writeln!(out, "  ID:        {}", node.id);
    let _ = writeln!(out, "  Addresses: {}", addresses.join(", "));
    let _ = writeln!(out, "  OS:        {}", node.os);
    if !node.tags.is_empty() {
        let _ = writeln!(out, "  Tags:      {}", node.tags.join(", "));
    }
    if let Some(user) = &who.user {
        out.push_str("User:\n");
        let _ = writeln!(out, "  Name:      {}", user.login_name);
        let _ = writeln!(out, "  Display:   {}", user.display_name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::Path;
    use proto::keys::NodePublic;

    fn node(name: &str, ip: &str) -> PeerStatus {
        PeerStatus {
            id: "n1".into(),
            public_key: NodePublic::zero(),
            name: format!("{name}.example.ts.net."),
            hostname: name.into(),
            os: "linux".into(),
            addresses: vec![ip.parse().unwrap()],
            online: true,
            path: Path::None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            tags: vec![],
            exit_node: false,
            exit_node_option: false,
            primary_routes: vec![],
        }
    }

    fn running(now: DateTime<Utc>) -> Status {
        let mut direct = node("web-1", "100.64.0.2");
        direct.path = Path::Direct {
            addr: "192.0.2.7:41641".parse().unwrap(),
        };
        direct.last_handshake = Some(now - chrono::Duration::seconds(12));
        direct.rx_bytes = 1536;
        direct.tx_bytes = 300;
        let mut relayed = node("db", "100.64.0.3");
        relayed.path = Path::Relay {
            region_code: "fra".into(),
        };
        relayed.online = false;
        Status {
            backend_state: BackendState::Running,
            self_: node("laptop", "100.64.0.1"),
            peers: vec![direct, relayed],
            tailnet: Some("example.com".into()),
            magic_dns_suffix: Some("example.ts.net".into()),
            health: vec![],
            auth_url: None,
            version: "0.1.0".into(),
            exit_node_status: None,
        }
    }

    #[test]
    fn table_shows_paths_handshakes_and_traffic() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .to_utc();
        let text = status(&running(now), now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("IP"), "{text}");
        assert!(
            lines[1].starts_with("100.64.0.1") && lines[1].contains("laptop"),
            "{text}"
        );
        assert!(lines[2].contains("direct 192.0.2.7:41641"), "{text}");
        assert!(
            lines[2].contains("12s ago") && lines[2].contains("1.5 KiB"),
            "{text}"
        );
        assert!(
            lines[3].contains("relay \"fra\"") && lines[3].contains("offline"),
            "{text}"
        );
        // Columns line up: every row has PATH at the same offset.
        let col = lines[0].find("PATH").unwrap();
        assert_eq!(lines[2].find("direct").unwrap(), col, "{text}");
    }

    #[test]
    fn table_marks_exit_nodes_and_subnet_routers() {
        let now = Utc::now();
        let mut s = running(now);
        s.peers[0].exit_node = true;
        s.peers[0].primary_routes = vec!["0.0.0.0/0".parse().unwrap()];
        s.peers[1].exit_node_option = true;
        s.peers[1].primary_routes = vec!["192.168.1.0/24".parse().unwrap()];
        let text = status(&s, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains("online; exit node"), "{text}");
        assert!(!lines[2].contains("routes"), "{text}");
        assert!(
            lines[3].contains("offers exit node; routes 192.168.1.0/24"),
            "{text}"
        );
    }

    #[test]
    fn logged_out_status_tells_how_to_log_in() {
        let now = Utc::now();
        let mut s = running(now);
        s.backend_state = BackendState::NeedsLogin;
        s.health = vec!["packet engine not available yet".into()];
        let text = status(&s, now);
        assert!(text.contains("agent up --authkey"), "{text}");
        assert!(
            text.contains("#   - packet engine not available yet"),
            "{text}"
        );
    }

    #[test]
    fn durations_and_sizes() {
        let now = Utc::now();
        let ago_s = |s| ago(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago_s(5), "5s ago");
        assert_eq!(ago_s(600), "10m ago");
        assert_eq!(ago_s(3 * 3600), "3h ago");
        assert_eq!(ago_s(3 * 86_400), "3d ago");
        assert_eq!(ago_s(-3), "just now");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
