//! MagicDNS end to end: names of tailnet nodes resolve on a laptop through the agent's resolver
//! at 100.100.100.100, other names still go to the laptop's original (ISP) resolver, and the
//! laptop's resolv.conf is managed, restored and left alone as the user asked.
//!
//! The lab (see `support/topology.rs` and `support/lab5.rs`) is a [`Lan`]: the hub with
//! `control serve` (MagicDNS on, base domain `tail.test`, no global nameservers), host `isp`
//! running a tiny authoritative DNS server that knows only `portal.isp.test`, host `monitoring`
//! running our agent and a small HTTP server on its tailnet addresses (port 3000), and host
//! `laptop` whose resolv.conf says `nameserver <isp>` before its agent starts, as DHCP would have
//! left it. Each namespace has its own `/etc/netns/<ns>/resolv.conf`, which `ip netns exec`
//! bind-mounts over `/etc/resolv.conf`, so the agent rewrites that copy and never the machine's
//! (checked at the end of every test).
//!
//! What a user would check: `curl http://monitoring:3000` and
//! `curl http://monitoring.tail.test:3000` (and `-6`), `getent` lookups (A, AAAA, reverse), a
//! DNS query straight to 100.100.100.100 (a `dig @100.100.100.100` stand-in, UDP and TCP),
//! `agent dns query` / `agent dns status`, NXDOMAIN once the node is deleted, and the file
//! itself around `agent down`, a daemon stop, a crash and `--accept-dns=false`.
//!
//! Run as root: `cargo test -p e2e --test magicdns -- --test-threads=1 --nocapture`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use e2e::{
    BASE_DOMAIN, Check, DnsProto, Host, KeyOptions, Lan, Needs, QUAD100, TestEnv, UPSTREAM_NAME,
    UPSTREAM_V4, UPSTREAM_V6, curl_with, dns_query, getent, node_ipv4, node_ipv6,
    points_at_quad100, report, resolv_conf, resolve_addrs, run_test, set_resolv_conf,
    start_dns_upstream, wait_until,
};

/// Port of the monitoring node's HTTP server.
const HTTP_PORT: u16 = 3000;
/// What the monitoring node serves.
const BODY: &str = "monitoring dashboard";
/// `agent up` flags that turn MagicDNS on (the default, spelled out as a user would).
const ACCEPT_DNS: &[&str] = &["--accept-dns"];
/// `agent up` flags that keep the agent away from the OS's DNS settings.
const NO_ACCEPT_DNS: &[&str] = &["--accept-dns=false"];
/// How long the agent may take to take over resolv.conf or to answer a name after `agent up`.
const DNS_READY_BOUND: Duration = Duration::from_secs(30);
/// How long a tailnet change (node deleted) may take to show in DNS answers.
const CHANGE_BOUND: Duration = Duration::from_secs(45);
/// How long resolv.conf may take to be restored after `agent down` or a daemon stop.
const RESTORE_BOUND: Duration = Duration::from_secs(15);
/// Timeout of one DNS query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

fn needs() -> Needs {
    Needs {
        caddy: false,
        control: true,
        agent: true,
    }
}

/// The laptop's resolv.conf before the agent touches it.
fn original_resolv_conf(isp: Ipv4Addr) -> String {
    format!(
        "# written by the DHCP client of the test laptop\n\
         nameserver {isp}\n\
         search corp.example\n\
         options timeout:2 attempts:2\n"
    )
}

/// The machine's own /etc/resolv.conf, to check that no test ever changes it.
fn host_resolv_conf() -> String {
    std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
}

/// The lab: the ISP resolver on `isp`, `monitoring` up with its HTTP server, and `laptop` with
/// its original resolv.conf, its daemon started but not yet up.
struct Lab<'a> {
    lan: Lan<'a>,
    key: e2e::AuthKey,
    isp: Host,
    mon_v4: Ipv4Addr,
    mon_v6: Option<Ipv6Addr>,
    laptop: Host,
    original: String,
}

fn lab(env: &TestEnv) -> anyhow::Result<Lab<'_>> {
    let mut lan = Lan::start(env)?;
    let key = lan.create_key(&KeyOptions::reusable())?;
    let isp = lan.add_host("isp")?;
    start_dns_upstream(
        &mut lan,
        &isp,
        isp.lan_ip(),
        &[
            (UPSTREAM_NAME, "A", &UPSTREAM_V4.to_string()),
            (UPSTREAM_NAME, "AAAA", &UPSTREAM_V6.to_string()),
        ],
    )?;

    let monitoring = lan.add_agent("monitoring")?;
    let status = monitoring.agent_up(&key, &[])?;
    let mon_v4 = node_ipv4(&status["self"]).context("monitoring has no tailnet IPv4")?;
    let mon_v6 = node_ipv6(&status["self"]);
    let www = monitoring.dir().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), format!("{BODY}\n"))?;
    lan.start_http_server(&monitoring, IpAddr::V4(mon_v4), HTTP_PORT, &www)?;
    if let Some(v6) = mon_v6 {
        lan.start_http_server(&monitoring, IpAddr::V6(v6), HTTP_PORT, &www)?;
    }
    report(format_args!(
        "monitoring: tailnet {mon_v4} / {}, HTTP on port {HTTP_PORT}",
        mon_v6.map_or("no IPv6".to_owned(), |a| a.to_string())
    ));

    // The laptop's namespace exists (with the harness's placeholder resolv.conf) before its
    // daemon starts; the original file is written in between, as the OS would have.
    let laptop = lan.add_host("laptop")?;
    let original = original_resolv_conf(isp.lan_ip());
    set_resolv_conf(&laptop, &original)?;
    let before = resolve_addrs(&laptop, UPSTREAM_NAME, false)?;
    ensure!(
        before == [IpAddr::V4(UPSTREAM_V4)],
        "before any agent runs, the laptop resolves {UPSTREAM_NAME} to {before:?} through the ISP \
         resolver, expected {UPSTREAM_V4}; the lab is broken"
    );
    lan.start_agent(&laptop)?;
    Ok(Lab {
        lan,
        key,
        isp,
        mon_v4,
        mon_v6,
        laptop,
        original,
    })
}

/// Waits until the laptop's resolv.conf points at 100.100.100.100; returns it and the time.
fn wait_managed(laptop: &Host, bound: Duration) -> anyhow::Result<(String, Duration)> {
    let t = Instant::now();
    wait_until(
        "the laptop's resolv.conf to point at 100.100.100.100",
        bound,
        || {
            let text = resolv_conf(laptop)?;
            Ok(if points_at_quad100(&text) {
                Check::Ready((text, t.elapsed()))
            } else {
                Check::NotYet(format!("resolv.conf is {text:?}"))
            })
        },
    )
}

/// Waits until the laptop's resolv.conf is byte for byte `original` again; returns the time.
fn wait_restored(laptop: &Host, original: &str, bound: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    wait_until(
        "the laptop's original resolv.conf to be back",
        bound,
        || {
            let text = resolv_conf(laptop)?;
            Ok(if text == original {
                Check::Ready(t.elapsed())
            } else {
                Check::NotYet(format!("resolv.conf is {text:?}"))
            })
        },
    )
}

/// One HTTP GET that must answer 200 with the monitoring page.
fn fetch_dashboard(laptop: &Host, extra: &[&str], url: &str) -> anyhow::Result<()> {
    let r = curl_with(laptop, extra, url, HTTP_TIMEOUT)?;
    ensure!(
        r.status == 200 && r.body.trim() == BODY,
        "{url}: HTTP {} {:?}",
        r.status,
        r.body
    );
    Ok(())
}

/// A DNS query to 100.100.100.100 from the laptop.
fn ask_quad100(
    laptop: &Host,
    name: &str,
    rtype: &str,
    proto: DnsProto,
) -> anyhow::Result<e2e::DnsAnswer> {
    dns_query(
        laptop,
        IpAddr::V4(QUAD100),
        name,
        rtype,
        proto,
        QUERY_TIMEOUT,
    )
}

/// The laptop reaches `http://monitoring:3000` and `http://monitoring.tail.test:3000` by name;
/// A, AAAA and reverse lookups of tailnet names answer from 100.100.100.100 over UDP and TCP, an
/// unknown tailnet name is NXDOMAIN, a non-tailnet name still resolves through the ISP resolver
/// (via 100.100.100.100), `agent dns query` and `agent dns status` work, and once the monitoring
/// node is deleted from the tailnet its name is NXDOMAIN.
#[test]
fn magicdns_resolves_tailnet_names_and_forwards_the_rest() -> anyhow::Result<()> {
    run_test(
        "magicdns_resolves_tailnet_names_and_forwards_the_rest",
        needs(),
        |env| {
            let machine_resolv = host_resolv_conf();
            let mut lab = lab(env)?;
            let (key, isp, laptop) = (lab.key.clone(), lab.isp.clone(), lab.laptop.clone());
            let (mon_v4, mon_v6) = (lab.mon_v4, lab.mon_v6);
            let (key, isp, laptop, mon_v4) = (&key, &isp, &laptop, &mon_v4);
            let fqdn = format!("monitoring.{BASE_DOMAIN}");

            let t_up = Instant::now();
            laptop.agent_up(key, ACCEPT_DNS)?;
            let (managed, took) = wait_managed(laptop, DNS_READY_BOUND)?;
            report(format_args!(
                "laptop: resolv.conf managed {} ms after `agent up` returned ({} ms after it \
                 started):\n{managed}",
                took.as_millis(),
                t_up.elapsed().as_millis()
            ));
            laptop.wait_peers(&["monitoring"], DNS_READY_BOUND)?;

            // By name, as a user types it.
            let short_url = format!("http://monitoring:{HTTP_PORT}/");
            let took = wait_until(
                &format!("`curl {short_url}` on the laptop"),
                DNS_READY_BOUND,
                || {
                    Ok(match fetch_dashboard(laptop, &[], &short_url) {
                        Ok(()) => Check::Ready(t_up.elapsed()),
                        Err(e) => Check::NotYet(format!("{e:#}")),
                    })
                },
            )?;
            report(format_args!(
                "laptop: `curl {short_url}` answered {} ms after `agent up` started",
                took.as_millis()
            ));
            let fqdn_url = format!("http://{fqdn}:{HTTP_PORT}/");
            fetch_dashboard(laptop, &[], &fqdn_url)?;
            fetch_dashboard(laptop, &["-4"], &fqdn_url)?;
            report(format_args!("laptop: `curl {fqdn_url}` (and -4) answered"));

            // A and AAAA through the system resolver and straight from 100.100.100.100.
            let v4 = resolve_addrs(laptop, "monitoring", false)?;
            ensure!(
                v4 == [IpAddr::V4(*mon_v4)],
                "getent ahostsv4 monitoring gave {v4:?}, expected {mon_v4}"
            );
            for proto in [DnsProto::Udp, DnsProto::Tcp] {
                let a = ask_quad100(laptop, &fqdn, "A", proto)?;
                ensure!(
                    a.rcode == 0 && a.values("A") == [mon_v4.to_string()],
                    "A {fqdn} @100.100.100.100 over {proto:?}: {a}, expected {mon_v4}"
                );
                report(format_args!(
                    "A {fqdn} @100.100.100.100 over {proto:?}: {a}"
                ));
            }
            let aaaa = ask_quad100(laptop, &fqdn, "AAAA", DnsProto::Udp)?;
            report(format_args!("AAAA {fqdn} @100.100.100.100: {aaaa}"));
            let v6 = mon_v6.context("monitoring has no tailnet IPv6 address to check AAAA")?;
            ensure!(
                aaaa.rcode == 0 && aaaa.values("AAAA") == [v6.to_string()],
                "AAAA {fqdn}: {aaaa}, expected {v6}"
            );
            let got6 = resolve_addrs(laptop, &fqdn, true)?;
            ensure!(
                got6 == [IpAddr::V6(v6)],
                "getent ahostsv6 {fqdn} gave {got6:?}, expected {v6}"
            );
            fetch_dashboard(laptop, &["-6"], &fqdn_url)?;
            report(format_args!(
                "laptop: `curl -6 {fqdn_url}` answered over IPv6"
            ));

            // Reverse lookups of both tailnet addresses.
            let rev = getent(laptop, "hosts", &mon_v4.to_string())?;
            ensure!(
                rev.as_deref().is_some_and(|l| l.contains(&fqdn)),
                "getent hosts {mon_v4} (reverse) gave {rev:?}, expected {fqdn}"
            );
            for addr in [mon_v4.to_string(), v6.to_string()] {
                let ptr = ask_quad100(laptop, &addr, "PTR", DnsProto::Udp)?;
                ensure!(
                    ptr.rcode == 0 && ptr.values("PTR") == [format!("{fqdn}.")],
                    "PTR {addr} @100.100.100.100: {ptr}, expected {fqdn}."
                );
                report(format_args!("PTR {addr} @100.100.100.100: {ptr}"));
            }

            // Unknown names under the tailnet domain are NXDOMAIN, not forwarded.
            let nx = ask_quad100(laptop, &format!("nosuch.{BASE_DOMAIN}"), "A", DnsProto::Udp)?;
            ensure!(
                nx.is_nxdomain(),
                "A nosuch.{BASE_DOMAIN} @100.100.100.100: {nx}, expected NXDOMAIN"
            );

            // A non-tailnet name goes to the ISP resolver through 100.100.100.100.
            let isp_log_before = isp_queries(&lab.lan, isp);
            for rtype in ["A", "AAAA"] {
                let a = ask_quad100(laptop, UPSTREAM_NAME, rtype, DnsProto::Udp)?;
                let want = if rtype == "A" {
                    UPSTREAM_V4.to_string()
                } else {
                    UPSTREAM_V6.to_string()
                };
                ensure!(
                    a.rcode == 0 && a.values(rtype) == [want.clone()],
                    "{rtype} {UPSTREAM_NAME} @100.100.100.100: {a}, expected {want} from the \
                     ISP resolver"
                );
                report(format_args!(
                    "{rtype} {UPSTREAM_NAME} @100.100.100.100 (forwarded): {a}"
                ));
            }
            let sys = resolve_addrs(laptop, UPSTREAM_NAME, false)?;
            ensure!(
                sys == [IpAddr::V4(UPSTREAM_V4)],
                "getent ahostsv4 {UPSTREAM_NAME} gave {sys:?} with MagicDNS on"
            );
            let isp_log_after = isp_queries(&lab.lan, isp);
            ensure!(
                isp_log_after > isp_log_before,
                "the ISP resolver saw no query for {UPSTREAM_NAME} while the laptop resolved it \
                 through 100.100.100.100"
            );
            let nx = ask_quad100(laptop, "nosuch.isp.test", "A", DnsProto::Udp)?;
            ensure!(
                nx.is_nxdomain(),
                "the ISP's NXDOMAIN for nosuch.isp.test came back as {nx}"
            );

            // The CLI's view.
            let out = laptop.agent_ok(&["dns", "query", "monitoring"])?;
            report(format_args!(
                "`agent dns query monitoring`:\n{}",
                out.trim_end()
            ));
            ensure!(
                out.contains(&mon_v4.to_string()),
                "`agent dns query monitoring` does not show {mon_v4}:\n{out}"
            );
            let out = laptop.agent_ok(&["dns", "query", "monitoring", "AAAA"])?;
            ensure!(
                out.contains(&v6.to_string()),
                "`agent dns query monitoring AAAA` does not show {v6}:\n{out}"
            );
            let out = laptop.agent_ok(&["dns", "status"])?;
            report(format_args!("`agent dns status`:\n{}", out.trim_end()));

            // The node leaves the tailnet: its name stops resolving.
            let t = Instant::now();
            lab.lan.control_cli(&["nodes", "delete", "monitoring"])?;
            let gone = wait_until(
                &format!("{fqdn} to be NXDOMAIN at 100.100.100.100"),
                CHANGE_BOUND,
                || {
                    let a = ask_quad100(laptop, &fqdn, "A", DnsProto::Udp)?;
                    Ok(if a.is_nxdomain() {
                        Check::Ready(t.elapsed())
                    } else {
                        Check::NotYet(format!("{a}"))
                    })
                },
            )?;
            report(format_args!(
                "{fqdn} is NXDOMAIN {} ms after `control nodes delete monitoring`",
                gone.as_millis()
            ));
            let a = resolve_addrs(laptop, "monitoring", false)?;
            ensure!(
                a.is_empty(),
                "getent ahostsv4 monitoring still gives {a:?} after the node was deleted"
            );
            let aaaa = ask_quad100(laptop, &fqdn, "AAAA", DnsProto::Udp)?;
            ensure!(
                aaaa.is_nxdomain(),
                "AAAA {fqdn} after deletion: {aaaa}, expected NXDOMAIN"
            );
            let ptr = ask_quad100(laptop, &mon_v4.to_string(), "PTR", DnsProto::Udp)?;
            report(format_args!(
                "after deletion: PTR {mon_v4} @100.100.100.100: {ptr}"
            ));
            ensure!(
                ptr.values("PTR").is_empty(),
                "the deleted node's address still has a PTR record: {ptr}"
            );
            // The rest of DNS is unaffected.
            let sys = resolve_addrs(laptop, UPSTREAM_NAME, false)?;
            ensure!(
                sys == [IpAddr::V4(UPSTREAM_V4)],
                "after the deletion {UPSTREAM_NAME} resolves to {sys:?}"
            );
            ensure!(
                host_resolv_conf() == machine_resolv,
                "the machine's own /etc/resolv.conf changed during the test"
            );
            lab.lan.ensure_running()
        },
    )
}

/// Queries for [`UPSTREAM_NAME`] the ISP resolver has logged so far.
fn isp_queries(lan: &Lan<'_>, isp: &Host) -> usize {
    lan.log_text(&format!("{}-dns", isp.name()))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("query {UPSTREAM_NAME}.")))
        .count()
}

/// The agent puts the laptop's original resolv.conf back, byte for byte, on `agent down`, when
/// its daemon stops (SIGTERM), and after a crash (SIGKILL) once the daemon runs again and the
/// user takes the node down; in between, `agent up` takes the file over again.
#[test]
fn magicdns_restores_resolv_conf() -> anyhow::Result<()> {
    run_test("magicdns_restores_resolv_conf", needs(), |env| {
        let machine_resolv = host_resolv_conf();
        let mut lab = lab(env)?;
        let laptop = lab.laptop.clone();
        let original = lab.original.clone();

        laptop.agent_up(&lab.key, ACCEPT_DNS)?;
        wait_managed(&laptop, DNS_READY_BOUND)?;

        // `agent down`.
        laptop.agent_ok(&["down"])?;
        let took = wait_restored(&laptop, &original, RESTORE_BOUND)?;
        report(format_args!(
            "`agent down`: original resolv.conf back after {} ms",
            took.as_millis()
        ));
        let sys = resolve_addrs(&laptop, UPSTREAM_NAME, false)?;
        ensure!(
            sys == [IpAddr::V4(UPSTREAM_V4)],
            "after `agent down` {UPSTREAM_NAME} resolves to {sys:?}"
        );

        // `agent up` again, then the daemon is stopped.
        laptop.agent_up(&lab.key, ACCEPT_DNS)?;
        let (_, took) = wait_managed(&laptop, DNS_READY_BOUND)?;
        report(format_args!(
            "`agent up` again: resolv.conf managed {} ms after it returned",
            took.as_millis()
        ));
        let (exit, took) = lab.lan.stop_agent(&laptop)?;
        report(format_args!(
            "daemon stopped with SIGTERM ({exit}) in {} ms",
            took.as_millis()
        ));
        let text = resolv_conf(&laptop)?;
        ensure!(
            text == original,
            "after the daemon exited the laptop's resolv.conf is {text:?}, expected the original"
        );

        // The daemon comes back (the node still wants to run), then crashes.
        lab.lan.start_agent(&laptop)?;
        laptop.wait_running(DNS_READY_BOUND)?;
        let (_, took) = wait_managed(&laptop, DNS_READY_BOUND)?;
        report(format_args!(
            "daemon restarted: resolv.conf managed again after {} ms",
            took.as_millis()
        ));
        let exit = lab.lan.kill_agent(&laptop)?;
        let after_crash = resolv_conf(&laptop)?;
        report(format_args!(
            "daemon killed ({exit}); resolv.conf left as:\n{after_crash}"
        ));
        let t = Instant::now();
        lab.lan.start_agent(&laptop)?;
        laptop.wait_running(DNS_READY_BOUND)?;
        report(format_args!(
            "daemon restarted after the crash: Running after {} ms, resolv.conf {}",
            t.elapsed().as_millis(),
            if points_at_quad100(&resolv_conf(&laptop)?) {
                "managed"
            } else {
                "not managed"
            }
        ));
        let sys = resolve_addrs(&laptop, UPSTREAM_NAME, false)?;
        ensure!(
            sys == [IpAddr::V4(UPSTREAM_V4)],
            "after the crash and restart {UPSTREAM_NAME} resolves to {sys:?}"
        );
        laptop.agent_ok(&["down"])?;
        let took = wait_restored(&laptop, &original, RESTORE_BOUND)
            .context("the original resolv.conf was lost across the crash")?;
        report(format_args!(
            "`agent down` after the crash: original resolv.conf back after {} ms",
            took.as_millis()
        ));
        ensure!(
            host_resolv_conf() == machine_resolv,
            "the machine's own /etc/resolv.conf changed during the test"
        );
        lab.lan.ensure_running()
    })
}

/// With `agent up --accept-dns=false` the laptop's resolv.conf stays exactly as it was, tailnet
/// names do not resolve through the system resolver, and the tailnet itself still works by IP.
#[test]
fn magicdns_accept_dns_false_leaves_resolv_conf_alone() -> anyhow::Result<()> {
    run_test(
        "magicdns_accept_dns_false_leaves_resolv_conf_alone",
        needs(),
        |env| {
            let machine_resolv = host_resolv_conf();
            let mut lab = lab(env)?;
            let laptop = lab.laptop.clone();
            laptop.agent_up(&lab.key, NO_ACCEPT_DNS)?;
            laptop.wait_peers(&["monitoring"], DNS_READY_BOUND)?;
            let url = format!("http://{}:{HTTP_PORT}/", lab.mon_v4);
            wait_until(
                "the laptop to reach monitoring by IP",
                DNS_READY_BOUND,
                || {
                    Ok(match fetch_dashboard(&laptop, &[], &url) {
                        Ok(()) => Check::Ready(()),
                        Err(e) => Check::NotYet(format!("{e:#}")),
                    })
                },
            )?;
            // Give a misbehaving agent time to touch the file.
            std::thread::sleep(Duration::from_secs(3));
            let text = resolv_conf(&laptop)?;
            ensure!(
                text == lab.original,
                "with --accept-dns=false the laptop's resolv.conf changed to {text:?}"
            );
            let fqdn = format!("monitoring.{BASE_DOMAIN}");
            let a = resolve_addrs(&laptop, &fqdn, false)?;
            ensure!(
                a.is_empty(),
                "with --accept-dns=false the system resolver still finds {fqdn}: {a:?}"
            );
            let sys = resolve_addrs(&laptop, UPSTREAM_NAME, false)?;
            ensure!(
                sys == [IpAddr::V4(UPSTREAM_V4)],
                "with --accept-dns=false {UPSTREAM_NAME} resolves to {sys:?}"
            );
            // Informational: whether 100.100.100.100 still answers when asked directly.
            let direct = ask_quad100(&laptop, &fqdn, "A", DnsProto::Udp)
                .map_or_else(|e| format!("{e:#}"), |a| a.to_string());
            report(format_args!(
                "--accept-dns=false: resolv.conf untouched; A {fqdn} @100.100.100.100 gives \
                 {direct}"
            ));
            laptop.agent_ok(&["down"])?;
            let text = resolv_conf(&laptop)?;
            ensure!(
                text == lab.original,
                "`agent down` with --accept-dns=false changed resolv.conf to {text:?}"
            );
            ensure!(
                host_resolv_conf() == machine_resolv,
                "the machine's own /etc/resolv.conf changed during the test"
            );
            lab.lan.ensure_running()
        },
    )
}
