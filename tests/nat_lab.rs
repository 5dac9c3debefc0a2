//! Our agent in the NAT lab (`support/natlab.rs`): hosts behind easy, hard, double, firewall,
//! UDP-blocking and port-mapping (miniupnpd) routers, an internet namespace with two DERP
//! regions, and what a user would check:
//!
//! * `nat_matrix`: pair by pair over the NAT kinds, traffic flows both ways (ping and a TCP
//!   exchange), the path ends direct wherever a direct path can exist and on DERP where it
//!   cannot, and the times from `agent up` to the first answered ping and to a direct path. The
//!   matrix is printed as a table. Pairs of one wave run concurrently in one lab.
//! * `tcp_survives_direct_cut`: a slow TCP transfer keeps going, without a reset, while the
//!   direct UDP path is cut for ~10 s and restored; the path goes to DERP and back to direct.
//! * `roaming_recovers`: a new LAN address (with the router's NAT state flushed), and a NAT
//!   state flush alone; traffic resumes and control learns the new endpoint.
//! * `netcheck_reports_each_kind`: `agent netcheck --json` behind each kind of router.
//!
//! Run as root: `cargo test -p e2e --test nat_lab -- --test-threads=1 --nocapture`. Needs
//! `nft`, `conntrack` and `miniupnpd` (scripts/install-test-deps.sh). `NATLAB_WAVE=<n>` sets how
//! many pairs of the matrix run at once (default 6).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use e2e::{
    AuthKey, Check, Lab, NatKind, Needs, PairResult, REGION_CONTROL, REGION_DERPER, Site, is_relay,
    measure_pair, path_name, report, run_test, secs, wait_until,
};
use serde_json::Value;

/// Port of the TCP echo server on every host (bound to all addresses).
const ECHO_PORT: u16 = 7000;
/// How long an expected direct path may take, from `agent up`.
const DIRECT_BOUND: Duration = Duration::from_secs(60);
/// How long a pair that should stay on DERP is watched (with traffic) from `agent up`.
const DERP_WATCH: Duration = Duration::from_secs(25);
/// How long traffic may take to resume after a roam.
const ROAM_BOUND: Duration = Duration::from_secs(30);

fn needs() -> Needs {
    Needs {
        caddy: false,
        control: true,
        agent: true,
    }
}

/// The matrix: every kind with easy, and the interesting pairs with hard.
const PAIRS: [(NatKind, NatKind); 12] = [
    (NatKind::Easy, NatKind::Easy),
    (NatKind::Hard, NatKind::Easy),
    (NatKind::Double, NatKind::Easy),
    (NatKind::Firewall, NatKind::Easy),
    (NatKind::UdpBlocked, NatKind::Easy),
    (NatKind::PortMapped, NatKind::Easy),
    (NatKind::Hard, NatKind::Hard),
    (NatKind::Double, NatKind::Hard),
    (NatKind::Firewall, NatKind::Hard),
    (NatKind::PortMapped, NatKind::Hard),
    (NatKind::Double, NatKind::Double),
    (NatKind::Firewall, NatKind::Firewall),
];

/// One matrix row.
struct Row {
    a: NatKind,
    b: NatKind,
    expect_direct: bool,
    result: PairResult,
    /// Errors about traffic (ping or TCP in either direction).
    traffic: Vec<String>,
}

/// Brings `a` and `b` up at the same time; returns when both are Running, with the instant the
/// first `agent up` started.
fn up_pair(a: &Site, b: &Site, key: &AuthKey) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let ha = s.spawn(|| a.agent_up(key));
        let hb = s.spawn(|| b.agent_up(key));
        let ra = ha
            .join()
            .map_err(|_| anyhow::anyhow!("agent up thread panicked"))?;
        let rb = hb
            .join()
            .map_err(|_| anyhow::anyhow!("agent up thread panicked"))?;
        ra?;
        rb?;
        anyhow::Ok(())
    })?;
    Ok(t0)
}

/// One TCP exchange `from` -> `to` with retries; checks the server saw `from`'s tailnet IP.
fn tcp_exchange(from: &Site, to: &Site, bound: Duration) -> anyhow::Result<Duration> {
    let to_ip = IpAddr::V4(to.tailnet_ip()?);
    let from_ip = from.tailnet_ip()?;
    let msg = format!("hello from {}", from.name());
    let want = format!("{} saw {from_ip}: {msg}", to.name());
    let t = Instant::now();
    wait_until(
        &format!("TCP {} -> {}", from.name(), to.name()),
        bound,
        || {
            Ok(
                match from.tcp_echo(to_ip, ECHO_PORT, &msg, Duration::from_secs(3)) {
                    Ok(r) if r.trim() == want => Check::Ready(t.elapsed()),
                    Ok(r) => Check::NotYet(format!("reply {r:?}, want {want:?}")),
                    Err(e) => Check::NotYet(format!("{e:#}")),
                },
            )
        },
    )
}

/// Runs one pair: up, measure, traffic both ways.
fn run_pair(a: &Site, b: &Site, key: &AuthKey, expect_direct: bool) -> anyhow::Result<Row> {
    let t0 = up_pair(a, b, key)?;
    a.wait_peer(b.name(), Duration::from_secs(30))?;
    b.wait_peer(a.name(), Duration::from_secs(30))?;
    let b_ip = IpAddr::V4(b.tailnet_ip()?);
    let a_ip = IpAddr::V4(a.tailnet_ip()?);
    let bound = if expect_direct {
        DIRECT_BOUND
    } else {
        DERP_WATCH
    };
    let result = measure_pair(a, b, b_ip, t0, bound)?;
    let mut traffic = Vec::new();
    if result.first_packet.is_none() {
        traffic.push(format!("no ping {} -> {} answered", a.name(), b.name()));
    }
    if let Err(e) = b.wait_ping(a_ip, Duration::from_secs(15)) {
        traffic.push(format!("ping {} -> {}: {e:#}", b.name(), a.name()));
    }
    for (x, y) in [(a, b), (b, a)] {
        if let Err(e) = tcp_exchange(x, y, Duration::from_secs(20)) {
            traffic.push(format!("{e:#}"));
        }
    }
    let mut result = result;
    // Traffic above may have moved the path on; report where it ended.
    result.path_a = path_name(&a.status()?, b.name());
    result.path_b = path_name(&b.status()?, a.name());
    Ok(Row {
        a: a.kind(),
        b: b.kind(),
        expect_direct,
        result,
        traffic,
    })
}

fn wave_size() -> usize {
    std::env::var("NATLAB_WAVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(6)
}

#[test]
fn nat_matrix() -> anyhow::Result<()> {
    run_test("nat_matrix", needs(), |env| {
        let mut lab = Lab::start(env)?;
        let key = lab.create_key()?;
        let mut rows: Vec<Row> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for (w, wave) in PAIRS.chunks(wave_size()).enumerate() {
            let mut pairs = Vec::new();
            for (i, (ka, kb)) in wave.iter().enumerate() {
                let n = w * 100 + i;
                let a = lab.add_agent(&format!("{}{n}a", ka.label()), *ka)?;
                let b = lab.add_agent(&format!("{}{n}b", kb.label()), *kb)?;
                for s in [&a, &b] {
                    lab.start_tcp_echo(s, "0.0.0.0".parse()?, ECHO_PORT)?;
                }
                pairs.push((a, b, ka.direct_possible_with(*kb)));
            }
            let results: Vec<anyhow::Result<Row>> = std::thread::scope(|s| {
                let handles: Vec<_> = pairs
                    .iter()
                    .map(|(a, b, direct)| s.spawn(|| run_pair(a, b, &key, *direct)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("pair thread panicked")))
                    })
                    .collect()
            });
            for ((a, b, _), r) in pairs.iter().zip(results) {
                match r {
                    Ok(row) => {
                        report(format_args!(
                            "matrix {}-{}: first packet {} s, direct {} s, paths {}/{} {} {:?}",
                            a.kind(),
                            b.kind(),
                            secs(row.result.first_packet),
                            secs(row.result.direct),
                            row.result.path_a,
                            row.result.path_b,
                            row.result.addr,
                            row.traffic
                        ));
                        rows.push(row);
                    }
                    Err(e) => errors.push(format!("{}-{}: {e:#}", a.kind(), b.kind())),
                }
            }
            // The wave's agents go offline so the next wave has the machine to itself.
            for (a, b, _) in &pairs {
                lab.stop_agent(a)?;
                lab.stop_agent(b)?;
            }
        }
        report(matrix_table(&rows));
        for row in &rows {
            let pair = format!("{}-{}", row.a, row.b);
            for t in &row.traffic {
                errors.push(format!("{pair}: traffic: {t}"));
            }
            if row.expect_direct && (row.result.path_a != "direct" || row.result.path_b != "direct")
            {
                errors.push(format!(
                    "{pair}: a direct path is possible but {} -> {} is {:?} and {} -> {} is {:?}",
                    row.a, row.b, row.result.path_a, row.b, row.a, row.result.path_b
                ));
            }
            if !row.expect_direct
                && (!is_relay(&row.result.path_a) || !is_relay(&row.result.path_b))
            {
                errors.push(format!(
                    "{pair}: no direct path is possible, yet the paths are {:?} / {:?}",
                    row.result.path_a, row.result.path_b
                ));
            }
        }
        lab.check_no_route_out()?;
        if !errors.is_empty() {
            bail!(
                "{} problem(s) in the NAT matrix:\n  {}",
                errors.len(),
                errors.join("\n  ")
            );
        }
        Ok(())
    })
}

fn matrix_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "\nNAT matrix (times from `agent up`, seconds)\n\
         | a | b | expected | path a->b | path b->a | first packet | direct a->b | direct b->a \
         | traffic |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.a,
            r.b,
            if r.expect_direct { "direct" } else { "derp" },
            r.result.path_a,
            r.result.path_b,
            secs(r.result.first_packet),
            secs(r.result.direct),
            secs(r.result.direct_b),
            if r.traffic.is_empty() { "ok" } else { "FAIL" }
        ));
    }
    out
}

/// Two easy hosts up and direct; returns their tailnet IPs.
fn direct_pair(a: &Site, b: &Site, key: &AuthKey) -> anyhow::Result<(IpAddr, IpAddr)> {
    let t0 = up_pair(a, b, key)?;
    a.wait_peer(b.name(), Duration::from_secs(30))?;
    b.wait_peer(a.name(), Duration::from_secs(30))?;
    let a_ip = IpAddr::V4(a.tailnet_ip()?);
    let b_ip = IpAddr::V4(b.tailnet_ip()?);
    let r = measure_pair(a, b, b_ip, t0, DIRECT_BOUND)?;
    ensure!(
        r.direct.is_some(),
        "{} -> {} never went direct (path {})",
        a.name(),
        b.name(),
        r.path_a
    );
    b.wait_ping(a_ip, Duration::from_secs(15))?;
    report(format_args!(
        "{} -> {}: first packet {} s, direct {} s via {}",
        a.name(),
        b.name(),
        secs(r.first_packet),
        secs(r.direct),
        r.addr
    ));
    Ok((a_ip, b_ip))
}

/// Waits until `a`'s path to `b` satisfies `want`, pinging `b_ip` meanwhile; returns the time.
fn wait_path(
    a: &Site,
    b: &Site,
    b_ip: IpAddr,
    what: &str,
    bound: Duration,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    wait_until(
        &format!("{}'s path to {} to be {what}", a.name(), b.name()),
        bound,
        || {
            let _ = a.ping_once(b_ip)?;
            let kind = path_name(&a.status()?, b.name());
            Ok(if want(&kind) {
                Check::Ready(t.elapsed())
            } else {
                Check::NotYet(format!("path {kind}"))
            })
        },
    )
}

#[test]
fn tcp_survives_direct_cut() -> anyhow::Result<()> {
    run_test("tcp_survives_direct_cut", needs(), |env| {
        let mut lab = Lab::start(env)?;
        let key = lab.create_key()?;
        let a = lab.add_agent("cuta", NatKind::Easy)?;
        let b = lab.add_agent("cutb", NatKind::Easy)?;
        let (_, b_ip) = direct_pair(&a, &b, &key)?;
        const BYTES: u64 = 4 * 1024 * 1024;
        lab.start_sink(&b, b_ip, 7100)?;
        let stream = lab.start_stream(&a, b_ip, 7100, BYTES, Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_secs(4));

        a.cut_udp_with(&b)?;
        b.cut_udp_with(&a)?;
        let cut_at = Instant::now();
        let to_relay = wait_path(&a, &b, b_ip, "DERP", Duration::from_secs(20), is_relay);
        let remaining = Duration::from_secs(10).saturating_sub(cut_at.elapsed());
        std::thread::sleep(remaining);
        a.restore_udp_with(&b)?;
        b.restore_udp_with(&a)?;
        let restored_at = Instant::now();
        let to_direct = wait_path(&a, &b, b_ip, "direct", DIRECT_BOUND, |k| k == "direct");
        let log = lab.wait_stream(stream, Duration::from_secs(90));
        report(format_args!(
            "direct cut for {:.1} s: DERP after {:?}, direct again {:?} after the restore",
            restored_at.duration_since(cut_at).as_secs_f64(),
            to_relay.as_ref().map(|d| d.as_secs_f64()),
            to_direct.as_ref().map(|d| d.as_secs_f64()),
        ));
        let log = log.context("the TCP transfer across the cut failed")?;
        report(format_args!(
            "stream: {}",
            log.trim().lines().last().unwrap_or("")
        ));
        ensure!(
            log.contains(&format!("sink got {BYTES} bytes")),
            "the sink did not confirm {BYTES} bytes:\n{log}"
        );
        to_relay.context("the path did not move to DERP while UDP was cut")?;
        to_direct.context("the path did not return to direct after UDP was restored")?;
        lab.ensure_running()
    })
}

#[test]
fn roaming_recovers() -> anyhow::Result<()> {
    run_test("roaming_recovers", needs(), |env| {
        let mut lab = Lab::start(env)?;
        let key = lab.create_key()?;
        let a = lab.add_agent("roama", NatKind::Easy)?;
        let b = lab.add_agent("roamb", NatKind::Easy)?;
        let (a_ip, b_ip) = direct_pair(&a, &b, &key)?;

        // 1. New LAN address plus a flushed NAT, as after moving to another network.
        let new_ip = a.renumber()?;
        a.flush_conntrack()?;
        let t = Instant::now();
        let resumed = a.wait_ping(b_ip, ROAM_BOUND)?;
        let back = b.wait_ping(a_ip, ROAM_BOUND)?;
        let direct = wait_path(&a, &b, b_ip, "direct", DIRECT_BOUND, |k| k == "direct");
        let want = format!("{new_ip}:");
        let seen = wait_until(
            "control to list roama's new LAN endpoint",
            ROAM_BOUND,
            || {
                let eps = lab.control_endpoints("roama")?;
                Ok(if eps.iter().any(|e| e.starts_with(&want)) {
                    Check::Ready(t.elapsed())
                } else {
                    Check::NotYet(format!("endpoints {eps:?}"))
                })
            },
        );
        report(format_args!(
            "roam (new address {new_ip} + NAT flush): pings resumed after {:.1} s, back the \
             other way {:.1} s later, direct {:?}, control saw the new endpoint after {:?}",
            resumed.as_secs_f64(),
            back.as_secs_f64(),
            direct.as_ref().map(|d| d.as_secs_f64()),
            seen.as_ref().map(|d| d.as_secs_f64()),
        ));
        direct.context("no direct path after the roam")?;
        seen?;

        // 2. The router forgets its NAT state alone (reboot, timeout).
        a.flush_conntrack()?;
        b.flush_conntrack()?;
        let resumed = a.wait_ping(b_ip, ROAM_BOUND)?;
        let back = b.wait_ping(a_ip, ROAM_BOUND)?;
        let direct = wait_path(&a, &b, b_ip, "direct", DIRECT_BOUND, |k| k == "direct")?;
        report(format_args!(
            "NAT flush on both routers: pings resumed after {:.1} s (back {:.1} s), direct \
             after {:.1} s",
            resumed.as_secs_f64(),
            back.as_secs_f64(),
            direct.as_secs_f64()
        ));
        lab.ensure_running()
    })
}

/// `(region id, latency ms, method)` of every region with a latency in `agent netcheck --json`
/// (`"regions": [{"id": 902, "latency_ms": 0.75, "method": "stun", ...}]`).
fn netcheck_regions(nc: &Value) -> Vec<(u64, f64, String)> {
    nc["regions"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    Some((
                        r["id"].as_u64()?,
                        r["latency_ms"].as_f64()?,
                        r["method"].as_str().unwrap_or("").to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn netcheck_reports_each_kind() -> anyhow::Result<()> {
    run_test("netcheck_reports_each_kind", needs(), |env| {
        let mut lab = Lab::start(env)?;
        let key = lab.create_key()?;
        let mut sites = Vec::new();
        for kind in NatKind::ALL {
            sites.push(lab.add_agent(&format!("nc-{}", kind.label()), kind)?);
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = sites.iter().map(|x| s.spawn(|| x.agent_up(&key))).collect();
            hs.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("agent up panicked"))?
                    .map(|_| ())
            })
        })?;
        let mut table = String::from(
            "\nagent netcheck --json per NAT kind\n\
             | kind | udp | public v4 (want) | varies by dest | port mapping | regions | \
             preferred |\n|---|---|---|---|---|---|---|\n",
        );
        let mut errors = Vec::new();
        for site in &sites {
            let kind = site.kind();
            let nc = match site.netcheck() {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{kind}: {e:#}"));
                    continue;
                }
            };
            report(format_args!("{kind}: netcheck {nc}"));
            let udp = nc["udp"].as_bool().unwrap_or(false);
            let v4 = nc["global_v4"].as_str().unwrap_or("");
            let v4_ip = v4
                .parse::<std::net::SocketAddr>()
                .map(|s| s.ip().to_string())
                .unwrap_or_default();
            let varies = nc["mapping_varies_by_dest_ip"].as_bool();
            let pm = &nc["port_mapping"];
            let mapping = ["pmp", "pcp", "upnp"]
                .iter()
                .any(|p| pm[*p].as_bool() == Some(true));
            let regions = netcheck_regions(&nc);
            let ids: Vec<u64> = regions.iter().map(|r| r.0).collect();
            let methods: Vec<&str> = regions.iter().map(|r| r.2.as_str()).collect();
            let preferred = nc["preferred_derp"].as_u64().unwrap_or(0);
            let want_v4 = site.public_ip().to_string();
            table.push_str(&format!(
                "| {kind} | {udp} | {v4} ({want_v4}) | {} | {mapping} {} | {ids:?} {methods:?} | \
                 {preferred} |\n",
                varies.map_or("-".to_owned(), |v| v.to_string()),
                pm["mapping"].as_str().unwrap_or(""),
            ));
            if udp != kind.udp_works() {
                errors.push(format!("{kind}: udp {udp}, want {}", kind.udp_works()));
            }
            if kind.udp_works() {
                if v4_ip != want_v4 {
                    errors.push(format!("{kind}: public IPv4 {v4:?}, want {want_v4}"));
                }
                if varies != Some(kind.mapping_varies()) {
                    errors.push(format!(
                        "{kind}: mapping varies by destination {varies:?}, want {}",
                        kind.mapping_varies()
                    ));
                }
            } else if methods.iter().any(|m| *m != "https") {
                errors.push(format!(
                    "{kind}: UDP is blocked, so latencies must be measured over HTTPS: {methods:?}"
                ));
            }
            if mapping != (kind == NatKind::PortMapped) {
                errors.push(format!(
                    "{kind}: port mapping {mapping}, want {}: {pm}",
                    kind == NatKind::PortMapped
                ));
            }
            for r in [REGION_CONTROL, REGION_DERPER] {
                if !ids.contains(&u64::from(r)) {
                    errors.push(format!("{kind}: no latency for region {r} ({ids:?})"));
                }
            }
            if ![REGION_CONTROL, REGION_DERPER]
                .iter()
                .any(|r| u64::from(*r) == preferred)
            {
                errors.push(format!("{kind}: no preferred region ({preferred})"));
            }
        }
        report(table);
        lab.check_no_route_out()?;
        if !errors.is_empty() {
            bail!(
                "netcheck: {} problem(s):\n  {}",
                errors.len(),
                errors.join("\n  ")
            );
        }
        lab.ensure_running()
    })
}

/// Median of `xs` (seconds), `None` when empty.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    Some(if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    })
}

/// Which client runs on the measured peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Ours,
    Official,
}

/// One run: our agent on an easy host `a` (already up) pings the peer, which is started at
/// `t0` (daemon + `agent up`, or caddy with a tsnet node); returns (first packet, direct).
fn time_peer(
    lab: &mut Lab<'_>,
    a: &Site,
    b: &Site,
    client: Client,
    keys: (&AuthKey, &AuthKey),
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let t0 = Instant::now();
    let peer_name = match client {
        Client::Ours => {
            lab.start_agent(b)?;
            b.agent_up(keys.0)?;
            b.name().to_owned()
        }
        Client::Official => {
            let node = format!("ts{}", b.name());
            let caddyfile = e2e::Caddyfile {
                control_url: lab.control_url().to_owned(),
                storage_dir: b.dir().join("caddy-data"),
                state_dir: b.dir().join("ts-state"),
                nodes: vec![e2e::CaddyNode {
                    name: node.clone(),
                    port: e2e::LAB_AGENT_PORT,
                }],
                // caddy-tailscale starts a tsnet node only when a site binds to it.
                serve: Some((node.clone(), "bench".into())),
                proxy: None,
            };
            let config = b.dir().join("Caddyfile");
            std::fs::write(&config, caddyfile.render())?;
            std::fs::create_dir_all(b.dir().join("home"))?;
            let spec = e2e::Spawn::new(lab.env().caddy()?)
                .clear_env()
                .envs(e2e::caddy_env(b.dir()))
                .env("TS_TEST_AUTHKEY", keys.1.expose())
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&config);
            lab.spawn(b, &format!("{}-caddy", b.name()), &spec)?;
            node
        }
    };
    a.wait_peer(&peer_name, Duration::from_secs(60))?;
    let status = a.status()?;
    let ip = e2e::peer(&status, &peer_name)
        .and_then(e2e::node_ipv4)
        .context("peer without a tailnet IPv4")?;
    let (mut first, mut direct) = (None, None);
    // Until both are known: a path can turn direct (disco) before a ping has been answered.
    while t0.elapsed() < DIRECT_BOUND && (direct.is_none() || first.is_none()) {
        if first.is_none() && a.ping_once(IpAddr::V4(ip))? {
            first = Some(t0.elapsed().as_secs_f64());
        }
        if direct.is_none() && path_name(&a.status()?, &peer_name) == "direct" {
            direct = Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((first, direct))
}

/// Time to first packet and to a direct path, our agent vs the official client (tsnet in
/// caddy) as the peer of our agent behind easy NAT, with the peer behind easy and hard NAT.
/// Not part of CI: `benches/time_to_direct.sh` runs it (`BENCH_RUNS`, default 5).
#[test]
#[ignore = "benchmark; run benches/time_to_direct.sh"]
fn bench_time_to_direct() -> anyhow::Result<()> {
    let needs = Needs {
        caddy: true,
        control: true,
        agent: true,
    };
    run_test("bench_time_to_direct", needs, |env| {
        let runs: usize = std::env::var("BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let mut lab = Lab::start(env)?;
        let key = lab.create_key()?;
        let eph = lab.create_key_with(true)?;
        let mut table = format!(
            "\ntime to first packet and to a direct path (median of {runs} runs, seconds from \
             the peer's start; our agent behind easy NAT measures)\n\
             | peer NAT | peer client | first packet | direct | direct in | direct ratio \
             (official / ours) |\n|---|---|---|---|---|---|\n"
        );
        let mut n = 0;
        for kind in [NatKind::Easy, NatKind::Hard] {
            let mut ours_direct = None;
            for client in [Client::Ours, Client::Official] {
                // BENCH_ONLY=hard-official (etc.) measures one cell, e.g. to chase an outlier.
                if let Ok(only) = std::env::var("BENCH_ONLY")
                    && only != format!("{kind}-{client:?}").to_lowercase()
                {
                    continue;
                }
                let (mut firsts, mut directs) = (Vec::new(), Vec::new());
                for _ in 0..runs {
                    n += 1;
                    let a = lab.add_agent(&format!("bn{n}a"), NatKind::Easy)?;
                    a.agent_up(&key)?;
                    let b = lab.add_site(&format!("bn{n}b"), kind)?;
                    let (first, direct) = time_peer(&mut lab, &a, &b, client, (&key, &eph))?;
                    report(format_args!(
                        "{kind} {client:?} run {n}: first packet {first:?} s, direct {direct:?} s"
                    ));
                    firsts.extend(first);
                    directs.extend(direct);
                    lab.stop_agent(&a)?;
                    if client == Client::Ours {
                        lab.stop_agent(&b)?;
                    }
                }
                let fmt = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
                let d = median(directs.clone());
                let ratio = match (client, ours_direct, d) {
                    (Client::Official, Some(o), Some(d)) => format!("{:.2}", d / o),
                    _ => "-".to_owned(),
                };
                if client == Client::Ours {
                    ours_direct = d;
                }
                table.push_str(&format!(
                    "| {kind} | {} | {} | {} | {}/{runs} | {ratio} |\n",
                    match client {
                        Client::Ours => "our agent",
                        Client::Official => "official (tsnet 1.90.9)",
                    },
                    fmt(median(firsts)),
                    fmt(d),
                    directs.len(),
                ));
            }
        }
        report(table);
        Ok(())
    })
}
