//! Our agent on a LAN of network namespaces: hosts join a tailnet run by our `control`, talk to
//! each other over it (ICMP and TCP), follow ACL policy changes, fall back to the DERP relay when
//! UDP between them is cut, survive a daemon restart, and react to logout and key expiry.
//!
//! Every test builds a [`Lan`] (see `support/topology.rs`): a hub namespace whose bridge
//! 10.99.0.254/24 carries `control serve` with its DERP relay and STUN server, and one namespace
//! per host (`10.99.0.<n>`) running `agent daemon`. Hosts join with `agent up --authkey`, and the
//! tests check what a user would: `agent status --json`, `ping`, a TCP connection to a small echo
//! server bound to the peer's tailnet IP, `agent ping`. Timings are printed; only generous bounds
//! are asserted. Nothing leaves the namespaces: none of them has a route off the machine.
//!
//! Run as root: `cargo test -p e2e --test agent_mesh -- --test-threads=1`. Skipped (with a
//! message) when not root or when the binaries are missing; see tests/README.md.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use e2e::{
    AGENT_PORT, Check, Host, KeyOptions, Lan, Needs, backend_state, path_kind, peer, peer_names,
    report, run_test, wait_until,
};

/// Port of the TCP echo server every host runs on its tailnet IP.
const ECHO_PORT: u16 = 7000;
/// How long the first packet between two freshly joined hosts may take.
const FIRST_PACKET_BOUND: Duration = Duration::from_secs(30);
/// How long a peer list or a path may take to settle.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// How long a policy or node change may take to reach the agents.
const CHANGE_BOUND: Duration = Duration::from_secs(45);
/// How long the path may take to go back to direct once UDP flows again.
const DIRECT_AGAIN_BOUND: Duration = Duration::from_secs(60);
/// Connect timeout of one TCP probe.
const TCP_TIMEOUT: Duration = Duration::from_secs(3);

fn needs() -> Needs {
    Needs {
        caddy: false,
        control: true,
        agent: true,
    }
}

/// A host that joined the tailnet, with its tailnet IPv4 address.
struct Member {
    host: Host,
    ip: Ipv4Addr,
}

impl Member {
    fn name(&self) -> &str {
        self.host.name()
    }

    fn ip(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }
}

/// Adds one agent host per name and brings each up with `key` (plus `up_args`).
fn join(
    lan: &mut Lan<'_>,
    names: &[&str],
    key: &e2e::AuthKey,
    up_args: &[&str],
) -> anyhow::Result<Vec<Member>> {
    let mut members = Vec::new();
    for name in names {
        let host = lan.add_agent(name)?;
        let status = host.agent_up(key, up_args)?;
        let ip = e2e::node_ipv4(status.get("self").unwrap_or(&serde_json::Value::Null))
            .with_context(|| format!("{name} is Running without a tailnet IPv4: {status}"))?;
        report(format_args!("{name}: tailnet IP {ip}"));
        members.push(Member { host, ip });
    }
    Ok(members)
}

/// Waits until every member lists all the others as peers.
fn wait_full_peer_lists(members: &[Member]) -> anyhow::Result<()> {
    for m in members {
        let others: Vec<&str> = members
            .iter()
            .filter(|o| o.name() != m.name())
            .map(Member::name)
            .collect();
        let status = m.host.wait_peers(&others, SETTLE_BOUND)?;
        report(format_args!(
            "{}: agent status lists {:?}",
            m.name(),
            peer_names(&status)
        ));
    }
    Ok(())
}

/// Starts the TCP echo server on every member's tailnet IP.
fn start_echo_servers(lan: &mut Lan<'_>, members: &[Member]) -> anyhow::Result<()> {
    for m in members {
        lan.start_tcp_echo(&m.host, m.ip(), ECHO_PORT)?;
    }
    Ok(())
}

/// One TCP exchange `from` -> `to`; checks the server saw `from`'s tailnet IP.
fn tcp_ok(from: &Member, to: &Member) -> anyhow::Result<()> {
    let msg = format!("hello from {}", from.name());
    let reply = from.host.tcp_echo(to.ip(), ECHO_PORT, &msg, TCP_TIMEOUT)?;
    let want = format!("{} saw {}: {msg}", to.name(), from.ip);
    ensure!(
        reply.trim() == want,
        "TCP {} -> {}: reply {reply:?}, want {want:?}",
        from.name(),
        to.name()
    );
    Ok(())
}

/// Retries [`tcp_ok`] until it works; returns the time it took.
fn wait_tcp_ok(from: &Member, to: &Member, bound: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    wait_until(
        &format!("TCP {} -> {}", from.name(), to.name()),
        bound,
        || {
            Ok(match tcp_ok(from, to) {
                Ok(()) => Check::Ready(t.elapsed()),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        },
    )
}

fn ordered_pairs(members: &[Member]) -> impl Iterator<Item = (&Member, &Member)> {
    members.iter().flat_map(move |a| {
        members
            .iter()
            .filter(move |b| b.name() != a.name())
            .map(move |b| (a, b))
    })
}

/// Three hosts join with one reusable key; each lists the other two; ICMP and TCP work between
/// every pair, both ways; and after that traffic every path is direct over the LAN.
#[test]
fn three_hosts_full_mesh() -> anyhow::Result<()> {
    run_test("three_hosts_full_mesh", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let members = join(&mut lan, &["h1", "h2", "h3"], &key, &[])?;
        wait_full_peer_lists(&members)?;
        start_echo_servers(&mut lan, &members)?;
        for (a, b) in ordered_pairs(&members) {
            let ping = a.host.wait_ping(b.ip(), FIRST_PACKET_BOUND)?;
            let tcp = wait_tcp_ok(a, b, FIRST_PACKET_BOUND)?;
            report(format_args!(
                "{} -> {}: first ICMP reply after {} ms, TCP echo after {} ms",
                a.name(),
                b.name(),
                ping.as_millis(),
                tcp.as_millis()
            ));
        }
        for (a, b) in ordered_pairs(&members) {
            let (took, p) = a.host.wait_path(
                b.name(),
                "direct",
                SETTLE_BOUND,
                Some(Duration::from_secs(3)),
            )?;
            let addr = p["path"]["addr"].as_str().unwrap_or("");
            let want = format!("{}:{AGENT_PORT}", b.host.lan_ip());
            ensure!(
                addr == want,
                "{} -> {}: direct path via {addr:?}, expected the LAN address {want}",
                a.name(),
                b.name()
            );
            report(format_args!(
                "{} -> {}: direct via {addr} ({} ms after the traffic)",
                a.name(),
                b.name(),
                took.as_millis()
            ));
        }
        lan.check_no_route_out()?;
        lan.ensure_running()
    })
}

/// A policy that lets h1 reach h3 by ICMP only: h1 -> h3 TCP fails while every other pair
/// works; installing an allow-all policy with `control policy set` opens it within seconds.
#[test]
fn policy_denies_one_pair_then_opens() -> anyhow::Result<()> {
    run_test("policy_denies_one_pair_then_opens", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let members = join(&mut lan, &["h1", "h2", "h3"], &key, &[])?;
        wait_full_peer_lists(&members)?;
        start_echo_servers(&mut lan, &members)?;
        let [h1, h2, h3] = members.as_slice() else {
            unreachable!("three members");
        };
        // Everything works under the default (allow-all) policy first.
        for (a, b) in ordered_pairs(&members) {
            wait_tcp_ok(a, b, FIRST_PACKET_BOUND)?;
        }
        let deny = format!(
            r#"// h1 may reach h2 fully but h3 only by ICMP; h2 and h3 may reach everything.
{{
  "hosts": {{ "h1": "{}/32", "h2": "{}/32", "h3": "{}/32" }},
  "acls": [
    {{ "action": "accept", "src": ["h2", "h3"], "dst": ["*:*"] }},
    {{ "action": "accept", "src": ["h1"], "dst": ["h2:*"] }},
    {{ "action": "accept", "src": ["h1"], "proto": "icmp", "dst": ["h3:*"] }},
  ],
}}
"#,
            h1.ip, h2.ip, h3.ip
        );
        let t = Instant::now();
        lan.set_policy("deny-h1-h3", &deny)?;
        wait_until("h1 -> h3 TCP to be refused", CHANGE_BOUND, || {
            Ok(match tcp_ok(h1, h3) {
                Ok(()) => Check::NotYet("h1 -> h3 TCP still works".into()),
                Err(e) => Check::Ready(e),
            })
        })?;
        report(format_args!(
            "deny policy: h1 -> h3 TCP fails {} ms after `control policy set`",
            t.elapsed().as_millis()
        ));
        // The deny holds, and only that pair is affected.
        let err = tcp_ok(h1, h3)
            .err()
            .context("h1 -> h3 TCP worked again under the deny policy")?;
        report(format_args!("h1 -> h3 TCP under the deny policy: {err:#}"));
        for (a, b) in ordered_pairs(&members) {
            if a.name() == "h1" && b.name() == "h3" {
                continue;
            }
            tcp_ok(a, b).with_context(|| {
                format!(
                    "{} -> {} TCP should still work under the deny policy",
                    a.name(),
                    b.name()
                )
            })?;
        }
        h1.host
            .wait_ping(h3.ip(), Duration::from_secs(10))
            .context("the policy allows ICMP h1 -> h3")?;

        let open = r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }"#;
        let t = Instant::now();
        lan.set_policy("allow-all", open)?;
        wait_tcp_ok(h1, h3, CHANGE_BOUND)?;
        report(format_args!(
            "allow-all policy: h1 -> h3 TCP works {} ms after `control policy set`",
            t.elapsed().as_millis()
        ));
        for (a, b) in ordered_pairs(&members) {
            tcp_ok(a, b)?;
        }
        lan.ensure_running()
    })
}

/// With UDP between h1 and h2 dropped by nftables, the two still talk through the DERP relay
/// and `agent status` says `relay`; once the rule is removed they move back to `direct`.
#[test]
fn relay_when_udp_blocked_then_direct() -> anyhow::Result<()> {
    run_test("relay_when_udp_blocked_then_direct", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let h1 = lan.add_agent("h1")?;
        let h2 = lan.add_agent("h2")?;
        h1.block_udp_with(&h2)?;
        let members = [up_member(&h1, &key)?, up_member(&h2, &key)?];
        wait_full_peer_lists(&members)?;
        let [m1, m2] = &members;
        for (a, b) in [(m1, m2), (m2, m1)] {
            let took = a.host.wait_ping(b.ip(), FIRST_PACKET_BOUND)?;
            report(format_args!(
                "{} -> {} with UDP blocked: ICMP reply after {} ms",
                a.name(),
                b.name(),
                took.as_millis()
            ));
        }
        for (a, b) in [(m1, m2), (m2, m1)] {
            let (_, p) = a.host.wait_path(b.name(), "relay", SETTLE_BOUND, None)?;
            report(format_args!(
                "{} -> {}: path {}",
                a.name(),
                b.name(),
                p["path"]
            ));
        }
        // A few seconds of pings and disco probes: the path must stay on the relay.
        for _ in 0..3 {
            ensure!(m1.host.ping_once(m2.ip())?, "ping over the relay lost");
            let _ = h1.agent(&["ping", "-c", "1", "h2"]);
        }
        let kind = h1.path_to("h2")?;
        ensure!(
            kind == "relay",
            "h1 -> h2 says {kind:?} while UDP between them is dropped"
        );
        let dropped = h1.udp_dropped_with(&h2)?;
        ensure!(
            dropped > 0,
            "no direct UDP was attempted between h1 and h2, so the relay path is unproven"
        );
        report(format_args!(
            "{dropped} direct UDP packets dropped; traffic went through DERP"
        ));

        h1.unblock_udp_with(&h2)?;
        let t = Instant::now();
        for (a, b) in [(m1, m2), (m2, m1)] {
            let (_, p) = a.host.wait_path(
                b.name(),
                "direct",
                DIRECT_AGAIN_BOUND,
                Some(Duration::from_secs(2)),
            )?;
            report(format_args!(
                "{} -> {}: back to {} {} s after unblocking",
                a.name(),
                b.name(),
                p["path"],
                t.elapsed().as_secs_f64()
            ));
        }
        m1.host.wait_ping(m2.ip(), Duration::from_secs(10))?;

        // Cutting UDP again on a working direct path: traffic must move back to the relay on its
        // own (no `agent ping`), as after a Wi-Fi change or a new firewall rule.
        h1.block_udp_with(&h2)?;
        let t = Instant::now();
        let outage = m1
            .host
            .wait_ping(m2.ip(), DIRECT_AGAIN_BOUND)
            .context("h1 -> h2 pings were not answered again after UDP was cut on a direct path")?;
        let (_, p) = m1
            .host
            .wait_path("h2", "relay", DIRECT_AGAIN_BOUND, None)
            .context("h1 stays on the dead direct path after UDP was cut again")?;
        m2.host.wait_ping(m1.ip(), FIRST_PACKET_BOUND)?;
        report(format_args!(
            "UDP cut on a direct path: pings answered again after {:.1} s, path {} after {:.1} s",
            outage.as_secs_f64(),
            p["path"],
            t.elapsed().as_secs_f64()
        ));
        lan.ensure_running()
    })
}

/// `agent up` on an existing host and returns it as a member.
fn up_member(host: &Host, key: &e2e::AuthKey) -> anyhow::Result<Member> {
    let status = host.agent_up(key, &[])?;
    let ip = e2e::node_ipv4(&status["self"]).context("no tailnet IPv4")?;
    Ok(Member {
        host: host.clone(),
        ip,
    })
}

/// A daemon stopped with SIGTERM and started again on the same state directory comes back
/// Running with the same node key and tailnet IPs, without a new auth key, and traffic flows.
#[test]
fn restart_keeps_identity() -> anyhow::Result<()> {
    run_test("restart_keeps_identity", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let members = join(&mut lan, &["h1", "h2"], &key, &[])?;
        wait_full_peer_lists(&members)?;
        let [h1, h2] = members.as_slice() else {
            unreachable!("two members");
        };
        h1.host.wait_ping(h2.ip(), FIRST_PACKET_BOUND)?;
        let before = h1.host.status()?;

        let (exit, took) = lan.stop_agent(&h1.host)?;
        report(format_args!(
            "h1: daemon stopped with SIGTERM: {exit} after {} ms",
            took.as_millis()
        ));
        ensure!(
            exit.success(),
            "the daemon did not exit cleanly on SIGTERM: {exit}"
        );

        let t = Instant::now();
        lan.start_agent(&h1.host)?;
        let after = h1.host.wait_running(SETTLE_BOUND)?;
        report(format_args!(
            "h1: Running again {} ms after restart, no `agent up`",
            t.elapsed().as_millis()
        ));
        for field in ["public_key", "addresses", "name"] {
            ensure!(
                before["self"][field] == after["self"][field],
                "self.{field} changed across the restart: {} -> {}",
                before["self"][field],
                after["self"][field]
            );
        }
        h1.host.wait_peers(&["h2"], SETTLE_BOUND)?;
        let a = h1.host.wait_ping(h2.ip(), FIRST_PACKET_BOUND)?;
        let b = h2.host.wait_ping(h1.ip(), FIRST_PACKET_BOUND)?;
        report(format_args!(
            "after the restart: h1 -> h2 ping after {} ms, h2 -> h1 after {} ms more",
            a.as_millis(),
            b.as_millis()
        ));
        lan.ensure_running()
    })
}

/// An ephemeral node (ephemeral key, `agent up --ephemeral`) disappears from the other hosts'
/// `agent status` and from `control nodes list` after `agent logout`.
#[test]
fn ephemeral_node_gone_after_logout() -> anyhow::Result<()> {
    run_test("ephemeral_node_gone_after_logout", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let eph_key = lan.create_key(&KeyOptions {
            reusable: false,
            ephemeral: true,
            tags: Vec::new(),
        })?;
        let mut members = join(&mut lan, &["h1"], &key, &[])?;
        members.extend(join(&mut lan, &["eph"], &eph_key, &["--ephemeral"])?);
        wait_full_peer_lists(&members)?;
        let [h1, eph] = members.as_slice() else {
            unreachable!("two members");
        };
        h1.host.wait_ping(eph.ip(), FIRST_PACKET_BOUND)?;

        let t = Instant::now();
        eph.host.agent_ok(&["logout"])?;
        let gone = h1.host.wait_peer_gone("eph", CHANGE_BOUND)?;
        report(format_args!(
            "eph logged out: gone from h1's agent status after {} ms",
            gone.as_millis()
        ));
        wait_until("control nodes list to drop eph", CHANGE_BOUND, || {
            let nodes = lan.nodes()?;
            let listed = nodes.to_string().contains("\"eph");
            Ok(if listed {
                Check::NotYet(format!("{nodes}"))
            } else {
                Check::Ready(())
            })
        })?;
        report(format_args!(
            "eph gone from control nodes list after {} ms",
            t.elapsed().as_millis()
        ));
        let s = eph.host.status()?;
        ensure!(
            backend_state(&s) == "NeedsLogin",
            "after logout eph reports {:?}, expected NeedsLogin",
            backend_state(&s)
        );
        lan.ensure_running()
    })
}

/// An ephemeral node whose daemon dies without logging out (SIGKILL) is removed once control's
/// ephemeral grace period (3 s here, `control serve --ephemeral-grace`) has passed.
#[test]
fn ephemeral_node_gone_after_daemon_dies() -> anyhow::Result<()> {
    run_test("ephemeral_node_gone_after_daemon_dies", needs(), |env| {
        let mut lan = Lan::start_with(env, &["--ephemeral-grace", "3s"])?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let eph_key = lan.create_key(&KeyOptions {
            reusable: false,
            ephemeral: true,
            tags: Vec::new(),
        })?;
        let mut members = join(&mut lan, &["h1"], &key, &[])?;
        members.extend(join(&mut lan, &["eph"], &eph_key, &["--ephemeral"])?);
        wait_full_peer_lists(&members)?;
        let [h1, eph] = members.as_slice() else {
            unreachable!("two members");
        };
        h1.host.wait_ping(eph.ip(), FIRST_PACKET_BOUND)?;

        let t = Instant::now();
        let exit = lan.kill_agent(&eph.host)?;
        report(format_args!("eph: daemon killed ({exit})"));
        let gone = h1.host.wait_peer_gone("eph", CHANGE_BOUND)?;
        report(format_args!(
            "eph killed: gone from h1's agent status after {} ms (grace 3 s)",
            gone.as_millis()
        ));
        wait_until("control nodes list to drop eph", CHANGE_BOUND, || {
            let nodes = lan.nodes()?;
            Ok(if nodes.to_string().contains("\"eph") {
                Check::NotYet(format!("{nodes}"))
            } else {
                Check::Ready(())
            })
        })?;
        report(format_args!(
            "eph gone from control nodes list after {} ms",
            t.elapsed().as_millis()
        ));
        lan.ensure_running()
    })
}

/// `control nodes expire h2` stops h2's traffic within a generous bound, and h2's own status
/// says it needs to log in again.
#[test]
fn expired_node_key_stops_traffic() -> anyhow::Result<()> {
    run_test("expired_node_key_stops_traffic", needs(), |env| {
        let mut lan = Lan::start(env)?;
        let key = lan.create_key(&KeyOptions::reusable())?;
        let members = join(&mut lan, &["h1", "h2"], &key, &[])?;
        wait_full_peer_lists(&members)?;
        let [h1, h2] = members.as_slice() else {
            unreachable!("two members");
        };
        h1.host.wait_ping(h2.ip(), FIRST_PACKET_BOUND)?;
        h2.host.wait_ping(h1.ip(), FIRST_PACKET_BOUND)?;

        let t = Instant::now();
        lan.control_cli(&["nodes", "expire", "h2"])?;
        let status = h2.host.wait_state("NeedsLogin", CHANGE_BOUND)?;
        report(format_args!(
            "h2 reports NeedsLogin {} ms after `control nodes expire` (health: {})",
            t.elapsed().as_millis(),
            status["health"]
        ));
        let stopped = h1.host.wait_ping_fails(h2.ip(), CHANGE_BOUND)?;
        report(format_args!(
            "h1 -> h2 pings unanswered (3 in a row) {} ms after the expiry",
            stopped.as_millis()
        ));
        ensure!(
            !h2.host.ping_once(h1.ip())?,
            "h2 still reaches h1 over the tailnet with an expired key"
        );
        let h1_view = h1.host.status()?;
        report(format_args!(
            "h1's view of h2 after the expiry: {}",
            peer(&h1_view, "h2").map_or("not listed".to_owned(), |p| format!(
                "online {} path {}",
                p["online"],
                path_kind(p)
            ))
        ));

        // As h2's status says: a new `agent up --authkey` brings it back.
        let t = Instant::now();
        let status = h2.host.agent_up(&key, &[])?;
        let ip = e2e::node_ipv4(&status["self"]).context("h2 has no tailnet IPv4")?;
        let took = h1.host.wait_ping(IpAddr::V4(ip), FIRST_PACKET_BOUND)?;
        report(format_args!(
            "h2 logged in again as {ip} (was {}): h1 -> h2 ping answered {} ms after `agent up` \
             ({} ms of pinging)",
            h2.ip,
            t.elapsed().as_millis(),
            took.as_millis()
        ));
        lan.ensure_running()
    })
}
