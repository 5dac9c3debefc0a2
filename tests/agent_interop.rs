//! Our agent and the official Tailscale client on one tailnet run by our `control`.
//!
//! The LAN (see `support/topology.rs`) has the hub with `control serve` (DERP and STUN on the
//! hub's bridge address 10.99.0.254), host `h1` running our `agent daemon`, and host `ts1`
//! running caddy with the caddy-tailscale plugin (tailscale.com v1.90.9) and one tsnet node,
//! `tsnode`. The checks are what a user would do:
//!
//! * from h1's namespace, `curl http://<tsnode's 100.x IP>/` answers with caddy's body, so our
//!   agent reaches a node of the official client over WireGuard;
//! * from ts1's namespace, `curl http://127.0.0.1:18081/` answers with the page that
//!   `python3 -m http.server` serves on h1's tailnet IP: caddy reverse-proxies through its tsnet
//!   node to our agent.
//!
//! The official client's DERP map and endpoints point at the hub's bridge address; no namespace
//! has a route off the machine (checked), and the client's log must show no attempt to reach
//! anything else (the harness's egress markers), with `TS_NO_LOGS_NO_SUPPORT` and friends set as
//! in `caddy_env`.
//!
//! Run as root: `cargo test -p e2e --test agent_interop -- --test-threads=1`. Skipped (with a
//! message) when not root, when caddy is missing or when the binaries are missing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use e2e::{
    CaddyNode, Caddyfile, Check, KeyOptions, Lan, Needs, Spawn, TestEnv, caddy_env,
    egress_attempts, node_ipv4, path_kind, peer, report, run_test, wait_until,
};

/// Port of caddy's reverse proxy on ts1's loopback.
const PROXY_PORT: u16 = 18081;
/// Port of the HTTP server on h1's tailnet IP.
const AGENT_HTTP_PORT: u16 = 8000;
/// What caddy serves on its tsnet node.
const CADDY_BODY: &str = "hello from caddy on the official client";
/// What h1's HTTP server serves.
const AGENT_BODY: &str = "hello from our agent on h1";
/// How long the official client may take from start to the first request over the tailnet.
const FIRST_REQUEST_BOUND: Duration = Duration::from_secs(60);

fn needs() -> Needs {
    Needs {
        caddy: true,
        control: true,
        agent: true,
    }
}

/// HTTP both ways between our agent (h1) and a tsnet node of the official client (ts1), and a
/// direct WireGuard path between them.
#[test]
fn agent_and_official_client_exchange_http() -> anyhow::Result<()> {
    run_test("agent_and_official_client_exchange_http", needs(), |env| {
        exchange_http(env, Path::Direct)
    })
}

/// The same with UDP between h1 and ts1 dropped by nftables: our agent and the official client
/// meet only through our DERP relay (TLS, pinned self-signed certificate).
#[test]
fn agent_and_official_client_over_derp() -> anyhow::Result<()> {
    run_test("agent_and_official_client_over_derp", needs(), |env| {
        exchange_http(env, Path::Relay)
    })
}

/// Which path the test expects between h1 and tsnode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Relay,
}

fn exchange_http(env: &mut TestEnv, path: Path) -> anyhow::Result<()> {
    let caddy_bin = env.caddy()?.to_path_buf();
    let mut lan = Lan::start(env)?;
    let agent_key = lan.create_key(&KeyOptions::reusable())?;
    // tsnet nodes log out when caddy stops, as in the official_client tests.
    let tsnet_key = lan.create_key(&KeyOptions {
        reusable: true,
        ephemeral: true,
        tags: Vec::new(),
    })?;

    let h1 = lan.add_agent("h1")?;
    let status = h1.agent_up(&agent_key, &[])?;
    let h1_ip = node_ipv4(&status["self"]).context("h1 has no tailnet IPv4")?;
    let www = h1.dir().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), format!("{AGENT_BODY}\n"))?;
    lan.start_http_server(&h1, IpAddr::V4(h1_ip), AGENT_HTTP_PORT, &www)?;

    let ts1 = lan.add_host("ts1")?;
    let caddyfile = Caddyfile {
        control_url: lan.control_url().to_owned(),
        storage_dir: ts1.dir().join("caddy-data"),
        state_dir: ts1.dir().join("ts-state"),
        nodes: vec![CaddyNode {
            name: "tsnode".into(),
            port: 41641,
        }],
        serve: Some(("tsnode".into(), CADDY_BODY.into())),
        proxy: Some((
            PROXY_PORT,
            format!("{h1_ip}:{AGENT_HTTP_PORT}"),
            "tsnode".into(),
        )),
    };
    if path == Path::Relay {
        h1.block_udp_with(&ts1)?;
    }
    let config = ts1.dir().join("Caddyfile");
    std::fs::write(&config, caddyfile.render())?;
    std::fs::create_dir_all(ts1.dir().join("home"))?;
    let spec = Spawn::new(&caddy_bin)
        .clear_env()
        .envs(caddy_env(ts1.dir()))
        .env("TS_TEST_AUTHKEY", tsnet_key.expose())
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config);
    let caddy_started = Instant::now();
    lan.spawn(&ts1, "caddy", &spec)?;

    // Our agent learns about the tsnet node from control.
    let status = h1.wait_peers(&["tsnode"], FIRST_REQUEST_BOUND)?;
    let ts_ip = peer(&status, "tsnode")
        .and_then(node_ipv4)
        .context("tsnode is listed without a tailnet IPv4")?;
    report(format_args!(
        "tsnode joined as {ts_ip}, seen by h1 {:.1} s after caddy start",
        caddy_started.elapsed().as_secs_f64()
    ));

    // 1. Our agent -> official client.
    let url = format!("http://{ts_ip}/");
    let took = wait_until(
        "h1 to fetch caddy's page over the tailnet",
        FIRST_REQUEST_BOUND,
        || {
            lan.ensure_running()?;
            Ok(match h1.curl(&url, Duration::from_secs(5)) {
                Ok(r) if r.status == 200 && r.body.trim() == CADDY_BODY => {
                    Check::Ready(caddy_started.elapsed())
                }
                Ok(r) => Check::NotYet(format!("HTTP {}: {}", r.status, r.body.trim())),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        },
    )?;
    report(format_args!(
        "h1 -> tsnode: `curl {url}` answered {:.1} s after caddy start",
        took.as_secs_f64()
    ));

    // 2. Official client -> our agent, through caddy's reverse proxy on its tsnet node.
    let proxy_url = format!("http://127.0.0.1:{PROXY_PORT}/");
    let t = Instant::now();
    wait_until(
        "caddy to proxy to h1's HTTP server over the tailnet",
        FIRST_REQUEST_BOUND,
        || {
            lan.ensure_running()?;
            Ok(match ts1.curl(&proxy_url, Duration::from_secs(5)) {
                Ok(r) if r.status == 200 && r.body.trim() == AGENT_BODY => Check::Ready(()),
                Ok(r) => Check::NotYet(format!("HTTP {}: {}", r.status, r.body.trim())),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        },
    )?;
    report(format_args!(
        "tsnode -> h1: caddy's proxy answered from h1 after {} ms more",
        t.elapsed().as_millis()
    ));

    // Steady state: a few requests each way, all answered.
    for i in 0..3 {
        let r = h1.curl(&url, Duration::from_secs(5))?;
        ensure!(
            r.status == 200 && r.body.trim() == CADDY_BODY,
            "h1 -> tsnode request {i}: HTTP {} {:?}",
            r.status,
            r.body
        );
        let r = ts1.curl(&proxy_url, Duration::from_secs(5))?;
        ensure!(
            r.status == 200 && r.body.trim() == AGENT_BODY,
            "tsnode -> h1 request {i}: HTTP {} {:?}",
            r.status,
            r.body
        );
    }
    let served = lan
        .log_text(&format!("h1-http-{AGENT_HTTP_PORT}"))
        .unwrap_or_default();
    ensure!(
        served.contains(&format!("{ts_ip} - -")),
        "h1's HTTP server did not see requests from tsnode's tailnet IP {ts_ip}"
    );

    // The path our agent uses to the official client: direct over the LAN once disco ran,
    // or the relay when UDP is cut.
    match path {
        Path::Direct => {
            let (took, p) = h1.wait_path(
                "tsnode",
                "direct",
                Duration::from_secs(30),
                Some(Duration::from_secs(3)),
            )?;
            report(format_args!(
                "h1 -> tsnode: path {} ({} ms after the traffic)",
                p["path"],
                took.as_millis()
            ));
            let want = format!("{}:41641", ts1.lan_ip());
            ensure!(
                p["path"]["addr"].as_str() == Some(want.as_str()),
                "direct path to tsnode is not its LAN address {want}: {}",
                p["path"]
            );
        }
        Path::Relay => {
            let (_, p) = h1.wait_path("tsnode", "relay", Duration::from_secs(30), None)?;
            let dropped = h1.udp_dropped_with(&ts1)?;
            report(format_args!(
                "h1 -> tsnode: path {}; {dropped} direct UDP packets dropped",
                p["path"]
            ));
            ensure!(
                dropped > 0,
                "no direct UDP was attempted between h1 and ts1, so the relay is unproven"
            );
        }
    }

    lan.check_no_route_out()?;
    let caddy_log = lan.log_text("caddy").unwrap_or_default();
    let attempts = egress_attempts(&caddy_log);
    ensure!(
        attempts.is_empty(),
        "the official client tried to reach something off this machine:\n{}",
        attempts.join("\n")
    );
    let nodes = lan.nodes()?;
    let listed: Vec<String> = nodes
        .as_array()
        .map(|ns| {
            ns.iter()
                .map(|n| {
                    format!(
                        "{} ({}, {})",
                        n["name"].as_str().unwrap_or("?"),
                        n["clientVersion"].as_str().unwrap_or("?"),
                        if n["online"] == true {
                            "online"
                        } else {
                            "offline"
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    report(format_args!("control nodes list: {}", listed.join(", ")));
    let s = h1.status()?;
    if let Some(p) = peer(&s, "tsnode") {
        report(format_args!(
            "h1's view of tsnode: online {} path {} os {}",
            p["online"],
            path_kind(p),
            p["os"]
        ));
    }
    Ok(())
}
