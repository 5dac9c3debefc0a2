//! One function per CLI subcommand. Each makes its local API call(s) through [`LocalClient`]
//! and prints the result; errors come back as the message to show the user.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use super::client::LocalClient;
use super::format;
use super::{Command, IpArgs, PingArgs, UpArgs};
use crate::ipn::{
    AuthKey, BackendState, OkReply, PeerStatus, PingReply, Status, UpReply, UpRequest, VersionInfo,
    WhoIs,
};

/// Runs a client subcommand against the daemon at `socket`.
pub async fn run(socket: &Path, command: Command) -> Result<ExitCode, String> {
    let client = LocalClient::new(socket);
    let api = |e: super::client::ClientError| e.to_string();
    match command {
        // `cli::run` handles the daemon before it gets here.
        Command::Daemon(_) => Err("internal error: daemon dispatched as a client command".into()),
        Command::Up(args) => up(&client, args).await,
        Command::Down => {
            client.post::<_, OkReply>("down", &()).await.map_err(api)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logout => {
            client
                .post::<_, OkReply>("logout", &())
                .await
                .map_err(api)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let status: Status = client.get("status").await.map_err(api)?;
            if json {
                print_json(&status)?;
            } else {
                print(&format::status(&status, chrono::Utc::now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ip(args) => ip(&client, args).await,
        Command::ExitNode(cmd) => super::exitnode::run(&client, cmd).await,
        Command::Dns(cmd) => super::dns::run(&client, cmd).await,
        Command::Ping(args) => ping(&client, args).await,
        Command::Whois { addr, json } => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("addr", &addr)
                .finish();
            let who: WhoIs = client.get(&format!("whois?{query}")).await.map_err(api)?;
            if json {
                print_json(&who)?
            } else {
                print(&format::whois(&who))
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Netcheck(args) => super::netcheck::run(&client, args).await,
        Command::Version { daemon } => {
            let me = VersionInfo::current();
            print(&format!("agent {} ({}/{})\n", me.version, me.os, me.arch));
            if daemon {
                let d: VersionInfo = client.get("version").await.map_err(api)?;
                print(&format!("daemon {} ({}/{})\n", d.version, d.os, d.arch));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn up(client: &LocalClient, args: UpArgs) -> Result<ExitCode, String> {
    let auth_key = args.auth_key.as_deref().map(read_auth_key).transpose()?;
    let req = UpRequest {
        auth_key,
        login_server: args.login_server,
        hostname: args.hostname,
        advertise_tags: args.advertise_tags,
        ephemeral: args.ephemeral,
        accept_dns: args.accept_dns,
        advertise_routes: args.advertise_routes,
        advertise_exit_node: args.advertise_exit_node,
        snat_subnet_routes: args.snat_subnet_routes,
        accept_routes: args.accept_routes,
        exit_node: args.exit_node,
        exit_node_allow_lan_access: args.exit_node_allow_lan_access,
    };
    // The daemon checks too; checking here first avoids a round trip for a typo.
    req.validate()?;
    let reply: UpReply = client.post("up", &req).await.map_err(|e| e.to_string())?;
    match (reply.backend_state, reply.auth_url) {
        (_, Some(url)) => print(&format!("To authenticate, visit:\n\n\t{url}\n\n")),
        (BackendState::NeedsMachineAuth, None) => {
            print("Logged in; a tailnet admin must approve this machine before it can connect.\n");
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `--authkey KEY` or `--authkey file:PATH`.
fn read_auth_key(arg: &str) -> Result<AuthKey, String> {
    let Some(path) = arg.strip_prefix("file:") else {
        return Ok(AuthKey::new(arg));
    };
    std::fs::read_to_string(path)
        .map(|s| AuthKey::new(s.trim()))
        .map_err(|e| format!("cannot read the auth key from {path}: {e}"))
}

async fn ip(client: &LocalClient, args: IpArgs) -> Result<ExitCode, String> {
    let status: Status = client.get("status").await.map_err(|e| e.to_string())?;
    let node = match &args.peer {
        None => &status.self_,
        Some(name) => find_peer(&status, name).ok_or_else(|| {
            format!("no node named {name:?} in the tailnet (see `agent status` for the names)")
        })?,
    };
    let addrs: Vec<&IpAddr> = node
        .addresses
        .iter()
        .filter(|a| (!args.v4 || a.is_ipv4()) && (!args.v6 || a.is_ipv6()))
        .collect();
    if node.addresses.is_empty() && args.peer.is_none() {
        return Err(format!(
            "this node has no tailnet IP yet (state {}): run `agent up` first",
            status.backend_state
        ));
    }
    if addrs.is_empty() {
        let family = if args.v4 { "IPv4" } else { "IPv6" };
        return Err(format!(
            "{} has no {family} tailnet address",
            format::display_name(node)
        ));
    }
    let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    print(&text);
    Ok(ExitCode::SUCCESS)
}

/// Matches a node by MagicDNS name (with or without the trailing dot), its first label,
/// hostname or one of its addresses; case-insensitive like DNS.
fn find_peer<'a>(status: &'a Status, query: &str) -> Option<&'a PeerStatus> {
    let q = query.trim_end_matches('.').to_ascii_lowercase();
    let ip = q.parse::<IpAddr>().ok();
    std::iter::once(&status.self_)
        .chain(&status.peers)
        .find(|n| {
            let fqdn = n.name.trim_end_matches('.').to_ascii_lowercase();
            fqdn == q
                || fqdn.split('.').next() == Some(q.as_str())
                || n.hostname.eq_ignore_ascii_case(&q)
                || ip.is_some_and(|ip| n.addresses.contains(&ip))
        })
}

async fn ping(client: &LocalClient, args: PingArgs) -> Result<ExitCode, String> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("target", &args.target)
        .append_pair("count", &args.count.to_string())
        .finish();
    let pongs: Vec<PingReply> = client
        .get(&format!("ping?{query}"))
        .await
        .map_err(|e| e.to_string())?;
    let text: String = pongs
        .iter()
        .map(|p| {
            format!(
                "pong from {} ({}) via {} in {:.1}ms\n",
                p.from, p.ip, p.path, p.latency_ms
            )
        })
        .collect();
    print(&text);
    if pongs.is_empty() {
        return Err(format!(
            "no answer from {} after {} pings",
            args.target, args.count
        ));
    }
    // The daemon stops early once a pong arrives over a direct path; pings after the last
    // answered one were never sent.
    let sent = pongs.iter().map(|p| p.seq + 1).max().unwrap_or(0);
    let lost = usize::try_from(sent)
        .unwrap_or(usize::MAX)
        .saturating_sub(pongs.len());
    if lost > 0 {
        eprintln!("{lost} of {sent} pings got no answer");
    }
    if pongs
        .last()
        .is_some_and(|p| matches!(p.path, crate::ipn::Path::Direct { .. }))
    {
        eprintln!("direct connection established");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    text.push('\n');
    print(&text);
    Ok(())
}

/// Writes to stdout, ignoring a closed pipe (`agent status | head -1`) instead of panicking as
/// `print!` would.
pub(super) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_key_from_file_is_trimmed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        std::fs::write(&path, "tskey-auth-abc\n").unwrap();
        let key = read_auth_key(&format!("file:{}", path.display())).unwrap();
        assert_eq!(key.expose(), "tskey-auth-abc");
        assert_eq!(read_auth_key("tskey-x").unwrap().expose(), "tskey-x");
        assert!(
            read_auth_key("file:/nonexistent/key")
                .unwrap_err()
                .contains("/nonexistent/key")
        );
    }
}
