//! `agent exit-node list`: the peers that offer themselves as exit nodes, built from the
//! daemon's status (one local API call, `GET status`), as a table or as JSON.
//!
//! Selecting one is `agent up --exit-node=NAME|IP` (and `--exit-node=` to stop); the daemon
//! checks the choice against its netmap.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::client::LocalClient;
use crate::ipn::Status;

/// `agent exit-node ...`
#[derive(Debug, Clone, Subcommand)]
pub enum ExitNodeCommand {
    /// Show the peers offering an exit node, and which one is in use.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One exit node candidate, as `agent exit-node list --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitNodeEntry {
    /// Stable node ID.
    pub id: String,
    /// MagicDNS name without the trailing dot (hostname when it has none).
    pub name: String,
    /// Its tailnet addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// Whether control reports it as connected.
    pub online: bool,
    /// Whether this node sends its internet traffic through it now.
    pub selected: bool,
}

/// The exit node candidates in `status`, sorted by name.
pub fn candidates(status: &Status) -> Vec<ExitNodeEntry> {
    let selected_id = status.exit_node_status.as_ref().map(|e| e.id.as_str());
    let mut out: Vec<ExitNodeEntry> = status
        .peers
        .iter()
        .filter(|p| p.exit_node_option)
        .map(|p| ExitNodeEntry {
            id: p.id.clone(),
            name: if p.name.is_empty() {
                p.hostname.clone()
            } else {
                p.name.trim_end_matches('.').to_string()
            },
            addresses: p.addresses.clone(),
            online: p.online,
            selected: p.exit_node || selected_id.is_some_and(|id| !id.is_empty() && id == p.id),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The table: `IP  NAME  STATUS` where status is `selected`, `online` or `offline`.
pub fn table(entries: &[ExitNodeEntry]) -> String {
    if entries.is_empty() {
        return "No exit nodes found: a node offers one with `agent up --advertise-exit-node` \
                once its routes are approved.\n"
            .to_string();
    }
    let ip = |e: &ExitNodeEntry| {
        e.addresses
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let ip_w = entries
        .iter()
        .map(|e| ip(e).len())
        .max()
        .unwrap_or(0)
        .max(2);
    let name_w = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!("{:<ip_w$}  {:<name_w$}  STATUS\n", "IP", "NAME");
    for e in entries {
        let state = match (e.selected, e.online) {
            (true, _) => "selected",
            (false, true) => "online",
            (false, false) => "offline",
        };
        out.push_str(&format!("{:<ip_w$}  {:<name_w$}  {state}\n", ip(e), e.name));
    }
    out
}

/// Runs an `exit-node` subcommand.
pub async fn run(client: &LocalClient, cmd: ExitNodeCommand) -> Result<ExitCode, String> {
    match cmd {
        ExitNodeCommand::List { json } => {
            let status: Status = client.get("status").await.map_err(|e| e.to_string())?;
            let list = candidates(&status);
            let text = if json {
                let mut t = serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?;
                t.push('\n');
                t
            } else {
                table(&list)
            };
            print(&text);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::{BackendState, ExitNodeStatus, Path, PeerStatus};
    use proto::keys::NodePublic;

    fn peer(id: &str, name: &str, ip: &str, exit: bool, online: bool) -> PeerStatus {
        PeerStatus {
            id: id.into(),
            public_key: NodePublic::zero(),
            name: format!("{name}.example.ts.net"),
            hostname: name.into(),
            os: "linux".into(),
            addresses: vec![ip.parse().unwrap()],
            online,
            path: Path::None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            tags: vec![],
            exit_node: false,
            exit_node_option: exit,
            primary_routes: vec![],
        }
    }

    fn status(selected: Option<&str>) -> Status {
        Status {
            backend_state: BackendState::Running,
            self_: peer("1", "laptop", "100.64.0.1", false, true),
            peers: vec![
                peer("4", "zurich", "100.64.0.4", true, false),
                peer("2", "web", "100.64.0.2", false, true),
                peer("3", "egress", "100.64.0.3", true, true),
            ],
            tailnet: None,
            magic_dns_suffix: None,
            health: vec![],
            auth_url: None,
            version: "0".into(),
            exit_node_status: selected.map(|id| ExitNodeStatus {
                id: id.into(),
                name: String::new(),
                addresses: vec![],
                online: true,
            }),
        }
    }

    #[test]
    fn lists_only_exit_nodes_with_their_state() {
        let list = candidates(&status(Some("3")));
        assert_eq!(
            list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["egress.example.ts.net", "zurich.example.ts.net"]
        );
        assert!(list[0].selected && !list[1].selected);
        let text = table(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("IP") && lines[0].ends_with("STATUS"),
            "{text}"
        );
        assert!(lines[1].starts_with("100.64.0.3") && lines[1].ends_with("selected"));
        assert!(lines[2].starts_with("100.64.0.4") && lines[2].ends_with("offline"));
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json[0]["selected"], true);
        assert_eq!(json[0]["addresses"][0], "100.64.0.3");
        assert_eq!(json[1]["online"], false);
    }

    /// The routing flags of `agent up` (defined in `cli/mod.rs`): absent = keep, bare = on,
    /// `=false` = off, `--exit-node=` / `--advertise-routes=` = clear.
    #[test]
    fn up_routing_flags_parse_like_tailscale() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            let mut argv = vec!["agent", "up"];
            argv.extend_from_slice(args);
            match crate::cli::Cli::try_parse_from(argv).unwrap().command {
                crate::cli::Command::Up(a) => a,
                other => panic!("{other:?}"),
            }
        };
        let none = parse(&[]);
        assert_eq!(none.advertise_routes, None);
        assert_eq!(none.accept_routes, None);
        assert_eq!(none.exit_node, None);
        let on = parse(&[
            "--advertise-routes=192.168.1.0/24,10.0.0.0/16",
            "--advertise-exit-node",
            "--snat-subnet-routes=false",
            "--accept-routes",
            "--exit-node=egress",
            "--exit-node-allow-lan-access",
        ]);
        assert_eq!(
            on.advertise_routes,
            Some(vec![
                "192.168.1.0/24".to_string(),
                "10.0.0.0/16".to_string()
            ])
        );
        assert_eq!(on.advertise_exit_node, Some(true));
        assert_eq!(on.snat_subnet_routes, Some(false));
        assert_eq!(on.accept_routes, Some(true));
        assert_eq!(on.exit_node.as_deref(), Some("egress"));
        assert_eq!(on.exit_node_allow_lan_access, Some(true));
        let clear = parse(&[
            "--exit-node=",
            "--advertise-routes=",
            "--accept-routes=false",
        ]);
        assert_eq!(clear.exit_node.as_deref(), Some(""));
        assert!(clear.advertise_routes.unwrap().iter().all(|s| s.is_empty()));
        assert_eq!(clear.accept_routes, Some(false));
        assert_eq!(parse(&["--exit-node"]).exit_node.as_deref(), Some(""));
    }

    #[test]
    fn nothing_to_list_says_how_to_get_one() {
        let mut s = status(None);
        s.peers.retain(|p| !p.exit_node_option);
        assert!(table(&candidates(&s)).contains("--advertise-exit-node"));
        assert!(candidates(&status(None)).iter().all(|e| !e.selected));
    }
}
