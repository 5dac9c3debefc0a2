//! Subnet routers and exit nodes end to end, in network namespaces.
//!
//! Subnet routers: an `office` host runs our agent with
//! `--advertise-routes=192.168.1.0/24` and has a second link (`eth1`, 192.168.1.1) into the
//! office LAN, where a `legacy` host (192.168.1.50, no agent, no route anywhere) runs a TCP echo
//! server that reports the source address of each connection. Routes are approved with
//! `control routes approve`. A `laptop` with `--accept-routes` reaches the legacy host (which
//! sees the router's LAN address: masquerading is the default; with
//! `--snat-subnet-routes=false` it sees the laptop's tailnet address), a `guest` without it does
//! not, the ACL policy can deny the subnet, and with two routers for the same prefix stopping
//! the primary moves the traffic to the other.
//!
//! Exit nodes: an `internet` namespace holds a web host (203.0.113.10 and 2001:db8:ff::10, TCP
//! echo reporting the source address). The `exit` host has an uplink into it (198.51.100.2 and
//! 2001:db8:1::2) and runs `--advertise-exit-node` (auto-approved by the policy's
//! `autoApprovers.exitNode` for `tag:exit`); the `laptop` has its own uplink (198.51.100.6,
//! IPv4 only), like a home router. With `--exit-node=exit` the web host sees the exit node's
//! address, with `--exit-node=` the laptop's own again; with `--exit-node-allow-lan-access` the
//! laptop still reaches a `printer` on its LAN directly. The laptop keeps talking to control and
//! to the exit node over the LAN while all its other traffic goes into the tunnel.
//!
//! Every default route points at a namespace of the test (checked with `check_contained`);
//! everything is torn down even on failure. Timings are printed; only generous bounds are
//! asserted.
//!
//! Run as root: `cargo test -p e2e --test subnet_exit -- --test-threads=1 --nocapture`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use e2e::{
    Check, Host, Internet, KeyOptions, LEGACY_IP, LEGACY_NET, Lan, Needs, check_contained,
    create_api_key, device_routes, live_routes_list, nft_ruleset, node_ipv4, office_lan, peer,
    policy_routing, report, routes_list, run_test, sysctl, tcp_source, wait_tcp_fails,
    wait_tcp_source, wait_until,
};

/// Port of the legacy host's and the web host's TCP echo servers.
const ECHO_PORT: u16 = 7000;
/// Port of the printer's TCP echo server.
const PRINTER_PORT: u16 = 9100;
/// `agent up` flag of a laptop that uses approved subnet routes.
const ACCEPT_ROUTES: &str = "--accept-routes";
/// How long an approval, a policy change or an exit-node switch may take to reach traffic.
const CHANGE_BOUND: Duration = Duration::from_secs(45);
/// How long traffic may take to move to the standby router after the primary's agent stops.
const FAILOVER_BOUND: Duration = Duration::from_secs(90);
/// How long traffic may take to move when the primary router vanishes without a goodbye (its
/// link cut): control must notice on its own.
const SILENT_FAILOVER_BOUND: Duration = Duration::from_secs(150);
/// Connect timeout of one TCP probe.
const TCP_TIMEOUT: Duration = Duration::from_secs(3);

fn needs() -> Needs {
    Needs {
        caddy: false,
        control: true,
        agent: true,
    }
}

fn legacy() -> IpAddr {
    IpAddr::V4(LEGACY_IP)
}

/// `--advertise-routes=<LEGACY_NET>`.
fn advertise_legacy() -> String {
    format!("--advertise-routes={LEGACY_NET}")
}

/// Waits until `control routes list` shows `name` advertising `route`; returns the list.
fn wait_advertised(lan: &Lan<'_>, name: &str, route: &str) -> anyhow::Result<serde_json::Value> {
    wait_until(
        &format!("control to list {route} as advertised by {name}"),
        CHANGE_BOUND,
        || {
            let list = routes_list(lan)?;
            let (adv, _, _) = device_routes(&list, name);
            Ok(if adv.iter().any(|r| r == route) {
                Check::Ready(list)
            } else {
                Check::NotYet(format!("{list}"))
            })
        },
    )
}

/// A laptop with `--accept-routes` reaches a legacy host behind the office router once the
/// route is approved, and the legacy host sees the router's LAN address (masquerade); a guest
/// without `--accept-routes` does not reach it; a policy that does not grant the subnet denies
/// it and one that does opens it again; the router forwards (IP forwarding on) through its own
/// nftables rules, which are gone once its agent stops.
#[test]
fn subnet_router_reaches_legacy_host() -> anyhow::Result<()> {
    run_test("subnet_router_reaches_legacy_host", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let office = lan.add_agent("office")?;
        let office_lan_ip = Ipv4Addr::new(192, 168, 1, 1);
        let legacy_host = office_lan(&mut lan, "legacy", &[(&office, office_lan_ip)])?;
        lan.start_tcp_echo(&legacy_host, legacy(), ECHO_PORT)?;
        let laptop = lan.add_agent("laptop")?;
        let guest = lan.add_agent("guest")?;
        // Before anything: the legacy host is out of reach (no route at all).
        ensure!(
            tcp_source(&laptop, legacy(), ECHO_PORT, TCP_TIMEOUT).is_err(),
            "the laptop reaches {LEGACY_IP} before any agent is up; the lab leaks"
        );

        let office_status = office.agent_up(&key, &[&advertise_legacy()])?;
        let office_ip = node_ipv4(&office_status["self"]).context("office has no tailnet IP")?;
        laptop.agent_up(&key, &[ACCEPT_ROUTES])?;
        guest.agent_up(&key, &[])?;
        laptop.wait_peers(&["office"], CHANGE_BOUND)?;
        guest.wait_peers(&["office"], CHANGE_BOUND)?;
        let list = wait_advertised(&lan, "office", LEGACY_NET)?;
        report(format_args!("control routes list before approval: {list}"));

        // Advertised but not approved: no traffic.
        let before = tcp_source(&laptop, legacy(), ECHO_PORT, TCP_TIMEOUT);
        ensure!(
            before.is_err(),
            "the laptop reaches {LEGACY_IP} before the route was approved: {before:?}"
        );

        let out = lan.control_cli(&["routes", "approve", "office", LEGACY_NET])?;
        report(format_args!(
            "`control routes approve office {LEGACY_NET}`: {}",
            out.trim()
        ));
        let took = wait_tcp_source(
            &laptop,
            legacy(),
            ECHO_PORT,
            IpAddr::V4(office_lan_ip),
            CHANGE_BOUND,
        )?;
        report(format_args!(
            "laptop -> {LEGACY_IP}:{ECHO_PORT} works {} ms after the approval (seen from \
             {office_lan_ip}, the router's LAN address)",
            took.as_millis()
        ));
        ensure!(
            laptop.ping_once(legacy())?,
            "the laptop's ping to {LEGACY_IP} through the router went unanswered"
        );
        let (_, enabled, primary) = device_routes(&routes_list(&lan)?, "office");
        report(format_args!(
            "office: approved {enabled:?}, primary {primary:?}; forwarding ipv4 = {}",
            sysctl(&office, "net/ipv4/ip_forward")?
        ));
        ensure!(
            sysctl(&office, "net/ipv4/ip_forward")? == "1",
            "the subnet router forwards but net.ipv4.ip_forward is not 1"
        );

        // The guest did not accept routes.
        guest.wait_ping(IpAddr::V4(office_ip), CHANGE_BOUND)?;
        let guest_try = tcp_source(&guest, legacy(), ECHO_PORT, TCP_TIMEOUT);
        ensure!(
            guest_try.is_err(),
            "the guest without {ACCEPT_ROUTES} reaches {LEGACY_IP}: {guest_try:?}"
        );
        report(format_args!(
            "guest (no {ACCEPT_ROUTES}) -> {LEGACY_IP}: {:#}",
            guest_try
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        ));

        // A policy that grants the tailnet but not the office subnet denies it.
        let tailnet_only = r#"{
  "acls": [
    { "action": "accept", "src": ["*"], "dst": ["100.64.0.0/10:*", "fd7a:115c:a1e0::/48:*"] },
  ],
}"#;
        lan.set_policy("tailnet-only", tailnet_only)?;
        let (took, err) = wait_tcp_fails(&laptop, legacy(), ECHO_PORT, CHANGE_BOUND)?;
        report(format_args!(
            "policy without the subnet: laptop -> {LEGACY_IP} fails {} ms after `control \
             policy set` ({err})",
            took.as_millis()
        ));
        laptop
            .wait_ping(IpAddr::V4(office_ip), CHANGE_BOUND)
            .context("the tailnet-only policy should still let the laptop reach the router")?;
        let with_subnet = format!(
            r#"{{
  "acls": [
    {{ "action": "accept", "src": ["*"], "dst": ["100.64.0.0/10:*", "fd7a:115c:a1e0::/48:*"] }},
    {{ "action": "accept", "src": ["*"], "dst": ["{LEGACY_NET}:{ECHO_PORT}"] }},
  ],
}}"#
        );
        lan.set_policy("with-subnet", &with_subnet)?;
        let took = wait_tcp_source(
            &laptop,
            legacy(),
            ECHO_PORT,
            IpAddr::V4(office_lan_ip),
            CHANGE_BOUND,
        )?;
        report(format_args!(
            "policy granting {LEGACY_NET}:{ECHO_PORT}: laptop -> {LEGACY_IP} works again {} ms \
             after `control policy set`",
            took.as_millis()
        ));

        check_contained(&lan)?;
        let rules = nft_ruleset(&office)?;
        report(format_args!(
            "office nftables while routing ({} lines):\n{rules}",
            rules.lines().count()
        ));
        let (exit, took) = lan.stop_agent(&office)?;
        report(format_args!(
            "office agent stopped ({exit}) in {} ms",
            took.as_millis()
        ));
        let rules = nft_ruleset(&office)?;
        ensure!(
            rules.trim().is_empty(),
            "the office router's nftables rules are still there after its agent exited:\n{rules}"
        );
        let (took, _) = wait_tcp_fails(&laptop, legacy(), ECHO_PORT, CHANGE_BOUND)?;
        report(format_args!(
            "router gone: laptop -> {LEGACY_IP} fails after {} ms",
            took.as_millis()
        ));
        lan.ensure_running()
    })
}

/// With `--snat-subnet-routes=false` the legacy host sees the laptop's own tailnet address (and
/// needs a route back to the tailnet through the router, as such a LAN would have).
#[test]
fn subnet_router_without_snat_keeps_tailnet_source() -> anyhow::Result<()> {
    run_test(
        "subnet_router_without_snat_keeps_tailnet_source",
        needs(),
        |env| {
            let mut lan = Lan::start(env)?;
            let key = lan.create_key(&KeyOptions::reusable())?;
            let office = lan.add_agent("office")?;
            let office_lan_ip = Ipv4Addr::new(192, 168, 1, 1);
            let legacy_host = office_lan(&mut lan, "legacy", &[(&office, office_lan_ip)])?;
            e2e::ip_in(
                &legacy_host,
                &[
                    "route",
                    "add",
                    "100.64.0.0/10",
                    "via",
                    &office_lan_ip.to_string(),
                ],
            )?;
            lan.start_tcp_echo(&legacy_host, legacy(), ECHO_PORT)?;
            let laptop = lan.add_agent("laptop")?;
            office.agent_up(&key, &[&advertise_legacy(), "--snat-subnet-routes=false"])?;
            let status = laptop.agent_up(&key, &[ACCEPT_ROUTES])?;
            let laptop_ip = node_ipv4(&status["self"]).context("laptop has no tailnet IP")?;
            wait_advertised(&lan, "office", LEGACY_NET)?;
            lan.control_cli(&["routes", "approve", "office", LEGACY_NET])?;
            let took = wait_tcp_source(
                &laptop,
                legacy(),
                ECHO_PORT,
                IpAddr::V4(laptop_ip),
                CHANGE_BOUND,
            )?;
            report(format_args!(
                "--snat-subnet-routes=false: {LEGACY_IP} sees the laptop's tailnet address \
                 {laptop_ip} ({} ms after the approval)",
                took.as_millis()
            ));
            check_contained(&lan)?;
            lan.ensure_running()
        },
    )
}

/// Two routers for the office LAN, both approved, and a laptop that uses them.
struct HaLab<'a> {
    lan: Lan<'a>,
    laptop: Host,
    api_key: e2e::AuthKey,
    /// `(name, host, LAN address)` of each router, the primary first.
    primary: (&'static str, Host, Ipv4Addr),
    standby: (&'static str, Host, Ipv4Addr),
}

/// Which of office1/office2 the server names primary for the office LAN.
fn primary_of(list: &serde_json::Value) -> Option<&'static str> {
    ["office1", "office2"]
        .into_iter()
        .find(|n| device_routes(list, n).2.iter().any(|r| r == LEGACY_NET))
}

fn ha_lab(env: &e2e::TestEnv) -> anyhow::Result<HaLab<'_>> {
    let mut lan = Lan::start(env)?;
    let key = lan.create_key(&KeyOptions::reusable())?;
    let r1 = lan.add_agent("office1")?;
    let r2 = lan.add_agent("office2")?;
    let r1_lan = Ipv4Addr::new(192, 168, 1, 1);
    let r2_lan = Ipv4Addr::new(192, 168, 1, 2);
    let legacy_host = office_lan(&mut lan, "legacy", &[(&r1, r1_lan), (&r2, r2_lan)])?;
    lan.start_tcp_echo(&legacy_host, legacy(), ECHO_PORT)?;
    let laptop = lan.add_agent("laptop")?;

    r1.agent_up(&key, &[&advertise_legacy()])?;
    wait_advertised(&lan, "office1", LEGACY_NET)?;
    lan.control_cli(&["routes", "approve", "office1", LEGACY_NET])?;
    r2.agent_up(&key, &[&advertise_legacy()])?;
    wait_advertised(&lan, "office2", LEGACY_NET)?;
    lan.control_cli(&["routes", "approve", "office2", LEGACY_NET])?;
    laptop.agent_up(&key, &[ACCEPT_ROUTES])?;
    laptop.wait_peers(&["office1", "office2"], CHANGE_BOUND)?;

    // The running server's view (`--server`): who is primary right now.
    let api_key = create_api_key(&lan)?;
    let list = live_routes_list(&lan, &api_key)?;
    let primary = primary_of(&list)
        .with_context(|| format!("no router is primary for {LEGACY_NET}: {list}"))?;
    let one = ("office1", r1, r1_lan);
    let two = ("office2", r2, r2_lan);
    let (primary, standby) = if primary == "office1" {
        (one, two)
    } else {
        (two, one)
    };
    report(format_args!(
        "{} is primary for {LEGACY_NET}, {} is standby",
        primary.0, standby.0
    ));
    let took = wait_tcp_source(
        &laptop,
        legacy(),
        ECHO_PORT,
        IpAddr::V4(primary.2),
        CHANGE_BOUND,
    )?;
    report(format_args!(
        "laptop -> {LEGACY_IP} through {} ({}) after {} ms",
        primary.0,
        primary.2,
        took.as_millis()
    ));
    Ok(HaLab {
        lan,
        laptop,
        api_key,
        primary,
        standby,
    })
}

/// Two routers advertise the office LAN; both are approved and control makes one primary.
/// Stopping the primary's agent moves the laptop's traffic to the other router (the legacy
/// host sees the standby's LAN address) within a generous bound, and control names the standby
/// primary; the old primary coming back does not break traffic.
#[test]
fn subnet_router_failover() -> anyhow::Result<()> {
    run_test("subnet_router_failover", needs(), |env| {
        let HaLab {
            mut lan,
            laptop,
            api_key,
            primary,
            standby,
        } = ha_lab(env)?;
        let (exit, _) = lan.stop_agent(&primary.1)?;
        report(format_args!("{}: agent stopped ({exit})", primary.0));
        let took = wait_tcp_source(
            &laptop,
            legacy(),
            ECHO_PORT,
            IpAddr::V4(standby.2),
            FAILOVER_BOUND,
        )?;
        report(format_args!(
            "failover: laptop -> {LEGACY_IP} through {} ({}) {:.1} s after {}'s agent stopped",
            standby.0,
            standby.2,
            took.as_secs_f64(),
            primary.0
        ));
        let list = live_routes_list(&lan, &api_key)?;
        let db_view = routes_list(&lan)?;
        report(format_args!(
            "control after failover: primary {:?} (server), {:?} (`control routes list --db`)",
            primary_of(&list),
            primary_of(&db_view)
        ));
        ensure!(
            primary_of(&list) == Some(standby.0),
            "control does not name {} primary after {} went away: {list}",
            standby.0,
            primary.0
        );

        // The old primary comes back; traffic keeps flowing (through either router).
        lan.start_agent(&primary.1)?;
        primary.1.wait_running(CHANGE_BOUND)?;
        std::thread::sleep(Duration::from_secs(3));
        let src = tcp_source(&laptop, legacy(), ECHO_PORT, TCP_TIMEOUT)
            .context("traffic to the legacy host broke when the old primary came back")?;
        report(format_args!(
            "{} back: laptop -> {LEGACY_IP} arrives from {src}; control primary {:?}",
            primary.0,
            primary_of(&live_routes_list(&lan, &api_key)?)
        ));
        check_contained(&lan)?;
        lan.ensure_running()
    })
}

/// The primary router loses its network without a goodbye (its link to the hub goes down, as
/// when a cable is pulled or the machine loses power): control has to notice on its own, and
/// the laptop's traffic must move to the standby within a generous bound.
#[test]
fn subnet_router_failover_after_silent_link_loss() -> anyhow::Result<()> {
    run_test(
        "subnet_router_failover_after_silent_link_loss",
        needs(),
        |env| {
            let HaLab {
                mut lan,
                laptop,
                api_key,
                primary,
                standby,
            } = ha_lab(env)?;
            e2e::ip_in(&primary.1, &["link", "set", "eth0", "down"])?;
            report(format_args!(
                "{}: eth0 (its link to the hub) down",
                primary.0
            ));
            let took = wait_tcp_source(
                &laptop,
                legacy(),
                ECHO_PORT,
                IpAddr::V4(standby.2),
                SILENT_FAILOVER_BOUND,
            );
            let view = live_routes_list(&lan, &api_key)?;
            let nodes = lan.nodes()?;
            let online: Vec<String> = nodes
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| format!("{} online={}", n["name"], n["online"]))
                        .collect()
                })
                .unwrap_or_default();
            report(format_args!(
                "after {}'s link went down: control primary {:?}; nodes {online:?}",
                primary.0,
                primary_of(&view)
            ));
            let took = took?;
            report(format_args!(
                "silent failover: laptop -> {LEGACY_IP} through {} ({}) {:.1} s after {} lost \
                 its link",
                standby.0,
                standby.2,
                took.as_secs_f64(),
                primary.0
            ));
            check_contained(&lan)?;
            // The cut router's daemon is still running; only its link is gone.
            lan.ensure_running()
        },
    )
}

/// The exit-node lab: internet with the web host, an auto-approved exit node with an uplink, a
/// laptop with its own uplink, and a printer on the laptop's LAN.
#[test]
fn exit_node_carries_the_laptops_internet_traffic() -> anyhow::Result<()> {
    run_test(
        "exit_node_carries_the_laptops_internet_traffic",
        needs(),
        |env| {
            let mut lan = Lan::start(env)?;
            lan.set_policy(
                "exit-policy",
                r#"{
  "tagOwners": { "tag:exit": [] },
  "autoApprovers": { "exitNode": ["tag:exit"] },
  "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
}"#,
            )?;
            let key = lan.create_key(&KeyOptions::reusable())?;
            let exit_key = lan.create_key(&KeyOptions {
                reusable: true,
                ephemeral: false,
                tags: vec!["tag:exit".into()],
            })?;
            let mut internet = Internet::create(&mut lan, "internet")?;
            let web4 = IpAddr::V4(Internet::WEB_V4);
            let web6 = IpAddr::V6(Internet::WEB_V6);
            lan.start_tcp_echo(&internet.host, web4, ECHO_PORT)?;
            lan.start_tcp_echo(&internet.host, web6, ECHO_PORT)?;

            let exit = lan.add_agent("exit")?;
            let exit_up = internet.uplink(&exit, true)?;
            let laptop = lan.add_agent("laptop")?;
            let home_up = internet.uplink(&laptop, false)?;
            let printer = lan.add_host("printer")?;
            let printer_ip = IpAddr::V4(printer.lan_ip());
            lan.start_tcp_echo(&printer, printer_ip, PRINTER_PORT)?;

            let exit_status = exit.agent_up(&exit_key, &["--advertise-exit-node"])?;
            let exit_ip = node_ipv4(&exit_status["self"]).context("exit has no tailnet IP")?;
            laptop.agent_up(&key, &[])?;
            laptop.wait_peers(&["exit"], CHANGE_BOUND)?;

            // Without an exit node: the laptop's own uplink, and no IPv6 at all.
            let src = tcp_source(&laptop, web4, ECHO_PORT, TCP_TIMEOUT)?;
            ensure!(
                src == IpAddr::V4(home_up.v4),
                "without an exit node the web host sees {src}, expected the laptop's {}",
                home_up.v4
            );
            ensure!(
                tcp_source(&laptop, web6, ECHO_PORT, TCP_TIMEOUT).is_err(),
                "the laptop reaches the web host over IPv6 without an exit node; it has no IPv6 \
                 uplink"
            );
            report(format_args!(
                "no exit node: web host sees the laptop's own {}",
                home_up.v4
            ));

            // The candidate is listed once approved.
            let t = Instant::now();
            let listing = wait_until(
                "`agent exit-node list` on the laptop to show exit",
                CHANGE_BOUND,
                || {
                    let out = laptop.agent(&["exit-node", "list"])?;
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    Ok(if out.status.success() && text.contains("exit") {
                        Check::Ready(text)
                    } else {
                        Check::NotYet(format!(
                            "{} {}",
                            text.trim(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ))
                    })
                },
            )?;
            report(format_args!(
                "`agent exit-node list` after {} ms:\n{}",
                t.elapsed().as_millis(),
                listing.trim_end()
            ));
            ensure!(
                listing.contains(&exit_ip.to_string()),
                "`agent exit-node list` does not show exit's tailnet IP {exit_ip}"
            );
            let (_, enabled, _) = device_routes(&routes_list(&lan)?, "exit");
            report(format_args!("control: exit's approved routes {enabled:?}"));

            // Use it.
            let t = Instant::now();
            laptop.agent_up(&key, &["--exit-node=exit"])?;
            let took = wait_tcp_source(
                &laptop,
                web4,
                ECHO_PORT,
                IpAddr::V4(exit_up.v4),
                CHANGE_BOUND,
            )?;
            report(format_args!(
                "--exit-node=exit: web host sees the exit node's {} {} ms after `agent up` \
                 started ({} ms of probing)",
                exit_up.v4,
                t.elapsed().as_millis(),
                took.as_millis()
            ));
            report(format_args!(
                "laptop policy routing with the exit node:\n{}",
                policy_routing(&laptop)
            ));
            let s = laptop.status()?;
            let exit_peer = peer(&s, "exit").context("laptop does not list exit")?;
            ensure!(
                exit_peer["exit_node"] == true,
                "laptop's status does not mark exit as its exit node: {exit_peer}"
            );
            // The agent's own traffic stays off the tunnel: WireGuard to the exit node still
            // goes straight over the LAN, and control still reaches the laptop.
            let (_, p) = laptop.wait_path("exit", "direct", CHANGE_BOUND, None)?;
            let want = format!("{}:{}", exit.lan_ip(), e2e::AGENT_PORT);
            ensure!(
                p["path"]["addr"].as_str() == Some(want.as_str()),
                "with the exit node on, the laptop's path to it is {} instead of {want}",
                p["path"]
            );
            let late = lan.add_agent("late")?;
            late.agent_up(&key, &[])?;
            let t = Instant::now();
            laptop.wait_peers(&["late"], CHANGE_BOUND).context(
                "with the exit node on, the laptop no longer hears from control (a new node \
                 never shows up)",
            )?;
            report(format_args!(
                "control still reaches the laptop through the exit-node routing: a new node \
                 listed after {} ms",
                t.elapsed().as_millis()
            ));
            ensure!(
                laptop.status()?["backend_state"] == "Running",
                "the laptop left Running with the exit node on"
            );

            // IPv6 leaves through the exit node, which has it.
            let want6 = exit_up.v6.context("exit has no IPv6 uplink")?;
            let v6 = wait_tcp_source(&laptop, web6, ECHO_PORT, IpAddr::V6(want6), CHANGE_BOUND);
            match &v6 {
                Ok(took) => report(format_args!(
                    "IPv6 through the exit node: web host sees {want6} after {} ms",
                    took.as_millis()
                )),
                Err(e) => report(format_args!("IPv6 through the exit node FAILED: {e:#}")),
            }

            // Without LAN access (informational), then with it.
            let lan_try = tcp_source(&laptop, printer_ip, PRINTER_PORT, TCP_TIMEOUT).map_or_else(
                |e| format!("fails ({e:#})"),
                |s| format!("arrives from {s}"),
            );
            report(format_args!(
                "exit node without --exit-node-allow-lan-access: laptop -> printer {lan_try}"
            ));
            let t = Instant::now();
            laptop.agent_up(
                &key,
                &[
                    &format!("--exit-node={exit_ip}"),
                    "--exit-node-allow-lan-access",
                ],
            )?;
            let took = wait_tcp_source(
                &laptop,
                printer_ip,
                PRINTER_PORT,
                IpAddr::V4(laptop.lan_ip()),
                CHANGE_BOUND,
            )?;
            report(format_args!(
                "--exit-node={exit_ip} --exit-node-allow-lan-access: printer sees the laptop's \
                 own LAN address {} after {} ms ({} ms since `agent up`)",
                laptop.lan_ip(),
                took.as_millis(),
                t.elapsed().as_millis()
            ));
            let src = tcp_source(&laptop, web4, ECHO_PORT, TCP_TIMEOUT)?;
            ensure!(
                src == IpAddr::V4(exit_up.v4),
                "with LAN access on, internet traffic arrives from {src} instead of the exit \
                 node's {}",
                exit_up.v4
            );

            // Clear it: the laptop's own address again.
            let t = Instant::now();
            laptop.agent_up(&key, &["--exit-node="])?;
            let took = wait_tcp_source(
                &laptop,
                web4,
                ECHO_PORT,
                IpAddr::V4(home_up.v4),
                CHANGE_BOUND,
            )?;
            report(format_args!(
                "--exit-node=: web host sees the laptop's own {} again after {} ms ({} ms since \
                 `agent up`)",
                home_up.v4,
                took.as_millis(),
                t.elapsed().as_millis()
            ));
            report(format_args!(
                "laptop policy routing after clearing:\n{}",
                policy_routing(&laptop)
            ));
            ensure!(
                tcp_source(&laptop, web6, ECHO_PORT, TCP_TIMEOUT).is_err(),
                "after clearing the exit node the laptop still reaches the web host over IPv6"
            );
            let src = tcp_source(&laptop, printer_ip, PRINTER_PORT, TCP_TIMEOUT)?;
            ensure!(
                src == IpAddr::V4(laptop.lan_ip()),
                "after clearing the exit node the printer sees {src}"
            );
            check_contained(&lan)?;
            lan.ensure_running()?;
            v6.map(|_| ()).context("IPv6 through the exit node")
        },
    )
}

/// The lab itself, without any agent feature: the office LAN and the internet uplinks carry
/// traffic as wired (a router reaches the legacy host on-link, an uplinked host reaches the web
/// host from its own uplink address), a host without an uplink reaches neither, and every
/// namespace passes `check_contained`.
#[test]
fn lab_is_wired_and_contained() -> anyhow::Result<()> {
    run_test("lab_is_wired_and_contained", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let router = lan.add_host("router")?;
        let router_lan = Ipv4Addr::new(192, 168, 1, 1);
        let legacy_host = office_lan(&mut lan, "legacy", &[(&router, router_lan)])?;
        lan.start_tcp_echo(&legacy_host, legacy(), ECHO_PORT)?;
        let mut internet = Internet::create(&mut lan, "internet")?;
        lan.start_tcp_echo(&internet.host, IpAddr::V4(Internet::WEB_V4), ECHO_PORT)?;
        lan.start_tcp_echo(&internet.host, IpAddr::V6(Internet::WEB_V6), ECHO_PORT)?;
        let home = lan.add_host("home")?;
        let up4 = internet.uplink(&home, false)?;
        let dual = lan.add_host("dual")?;
        let up6 = internet.uplink(&dual, true)?;
        let nowhere = lan.add_host("nowhere")?;

        let src = tcp_source(&router, legacy(), ECHO_PORT, TCP_TIMEOUT)?;
        ensure!(src == IpAddr::V4(router_lan), "legacy saw {src}");
        let src = tcp_source(&home, IpAddr::V4(Internet::WEB_V4), ECHO_PORT, TCP_TIMEOUT)?;
        ensure!(src == IpAddr::V4(up4.v4), "web saw {src}");
        let want6 = up6.v6.context("dual has no IPv6 uplink")?;
        let src = tcp_source(&dual, IpAddr::V6(Internet::WEB_V6), ECHO_PORT, TCP_TIMEOUT)?;
        ensure!(src == IpAddr::V6(want6), "web saw {src} over IPv6");
        for (host, to) in [
            (&nowhere, legacy()),
            (&nowhere, IpAddr::V4(Internet::WEB_V4)),
            (&home, legacy()),
            (&home, IpAddr::V6(Internet::WEB_V6)),
        ] {
            ensure!(
                tcp_source(host, to, ECHO_PORT, TCP_TIMEOUT).is_err(),
                "{} reaches {to}, which the lab does not route for it",
                host.name()
            );
        }
        check_contained(&lan)?;
        // The check itself catches a gateway outside the lab.
        e2e::ip_in(
            &nowhere,
            &[
                "route",
                "add",
                "192.0.2.0/24",
                "via",
                &router_lan.to_string(),
            ],
        )
        .err()
        .context("a gateway that is not on-link should be refused by `ip route add`")?;
        e2e::ip_in(&nowhere, &["route", "add", "192.0.2.0/24", "dev", "eth0"])?;
        e2e::ip_in(
            &nowhere,
            &["route", "add", "198.18.0.0/15", "via", "10.99.0.77"],
        )?;
        ensure!(
            check_contained(&lan).is_err(),
            "check_contained accepted a gateway (10.99.0.77) that no lab namespace owns"
        );
        Ok(())
    })
}
