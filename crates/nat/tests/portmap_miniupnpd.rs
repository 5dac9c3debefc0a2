//! The port mapper against the real miniupnpd (Debian's `miniupnpd-nftables`), in network
//! namespaces this test creates: what a user checks is that a datagram sent from the internet
//! to the mapped public ip:port reaches the agent's socket, and stops arriving after release.
//!
//! Topology (namespaces `tsr-pm-<pid>-<n>-{r,h,i}`, no link to the machine's own network):
//!
//! ```text
//!  host (h) eth0 192.168.77.2 --- lan 192.168.77.1  router (r)  wan 11.77.0.1 --- eth0 11.77.0.2 internet (i)
//!  default via 192.168.77.1        miniupnpd, nftables masquerade on wan       (no default route)
//! ```
//!
//! The WAN is 11.77.0.0/24 rather than a documentation range: miniupnpd refuses to forward
//! ports when its external address is private or reserved (RFC 5737's 192.0.2/24,
//! 198.51.100/24 and 203.0.113/24 included). The address never leaves these namespaces.
//!
//! The client code runs in-process on threads that entered the host namespace with `setns`.
//! Needs root, `ip` (iproute2), `nft` (nftables) and `/usr/sbin/miniupnpd`; skips with a printed
//! reason otherwise, or fails if `E2E_STRICT=1`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nat::portmap::io::{Options, PortMapper, probe_gateway};
use nat::portmap::{Mapping, PortmapEvent, Protocol};
use nix::sched::CloneFlags;
use tokio::net::UdpSocket;

const MINIUPNPD: &str = "/usr/sbin/miniupnpd";
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const WAN_IP: Ipv4Addr = Ipv4Addr::new(11, 77, 0, 1);
const INET: Ipv4Addr = Ipv4Addr::new(11, 77, 0, 2);
const PREFIX: &str = "tsr-pm-";

/// miniupnpd's nftables backend (2.3.x) keeps its rules in chains of `table inet filter` by
/// default (`upnp_table_name`, `upnp_nat_table_name`): `miniupnpd` (filter, jumped to from
/// forward), `prerouting_miniupnpd` and `postrouting_miniupnpd` (nat). The router creates them
/// itself, as /etc/miniupnpd/nft_init.sh would, plus masquerade on the WAN.
const NFT_RULES: &str = r#"
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan" accept
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname "wan" masquerade
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
"#;

/// miniupnpd 2.3.1 has no separate PCP switch: `enable_natpmp=yes` opens port 5351 for both
/// NAT-PMP and PCP. `min_lifetime` is lowered so the test can watch a renewal.
const MINIUPNPD_CONF: &str = "\
ext_ifname=wan
listening_ip=lan
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
min_lifetime=4
max_lifetime=86400
uuid=6f0e3c2a-7b7e-4d0a-9d55-000000000077
allow 1024-65535 192.168.77.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
";

#[test]
fn miniupnpd_maps_renews_and_releases() {
    if let Some(reason) = skip_reason() {
        assert!(
            std::env::var("E2E_STRICT").as_deref() != Ok("1"),
            "E2E_STRICT=1 but: {reason}"
        );
        eprintln!("skipping portmap_miniupnpd: {reason}");
        return;
    }
    let lab = Lab::new();
    let inet = lab.inet.clone();
    in_netns(&lab.host, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(inet));
    });
}

async fn scenario(inet: String) {
    // netcheck's one-shot probe sees all three services and the router's public address.
    let probe = probe_gateway(GW, HOST, &Options::default()).await.unwrap();
    eprintln!("probe: {probe:?}");
    assert!(probe.pmp && probe.pcp && probe.upnp, "{probe:?}");
    assert_eq!(probe.public_ip, Some(WAN_IP));

    // PCP (preferred), with a short lifetime to see a renewal.
    let opts = Options {
        lifetime: Duration::from_secs(4),
        upnp: false,
        ..Options::default()
    };
    map_check_release(&inet, opts, Protocol::Pcp, true).await;
    // NAT-PMP alone.
    let opts = Options {
        lifetime: Duration::from_secs(4),
        pcp: false,
        upnp: false,
        ..Options::default()
    };
    map_check_release(&inet, opts, Protocol::NatPmp, true).await;
    // UPnP IGD alone (the fallback path).
    let opts = Options {
        pmp: false,
        pcp: false,
        ..Options::default()
    };
    map_check_release(&inet, opts, Protocol::Upnp, false).await;
}

/// Maps a fresh "WireGuard" socket, checks that the internet reaches it, optionally waits for a
/// renewal, releases, and checks that the internet no longer reaches it.
async fn map_check_release(inet: &str, opts: Options, protocol: Protocol, renew: bool) {
    let wg = UdpSocket::bind((HOST, 0)).await.unwrap();
    let port = wg.local_addr().unwrap().port();
    let mut pm = PortMapper::start_with(GW, HOST, port, opts).await.unwrap();
    let ev = wait_for(&mut pm, 15, |e| matches!(e, PortmapEvent::Mapped(_))).await;
    let PortmapEvent::Mapped(m) = ev else {
        unreachable!()
    };
    eprintln!("{protocol}: mapped {m:?}");
    assert_eq!(m.protocol, protocol);
    assert_eq!(m.external.ip(), WAN_IP);
    assert_eq!(m.internal_port, port);
    assert_eq!(pm.mapping(), Some(m));
    assert!(
        reaches(inet, &wg, &m).await,
        "{protocol}: datagram from the internet did not arrive"
    );

    if renew {
        let ev = wait_for(&mut pm, 10, |e| {
            matches!(e, PortmapEvent::Renewed(_) | PortmapEvent::Mapped(_))
        })
        .await;
        let (PortmapEvent::Renewed(r) | PortmapEvent::Mapped(r)) = ev else {
            unreachable!()
        };
        assert_eq!(
            r.external, m.external,
            "{protocol}: the renewal kept the port"
        );
        assert!(
            reaches(inet, &wg, &r).await,
            "{protocol}: not reachable after renewal"
        );
    }

    pm.shutdown().await;
    assert!(
        !reaches(inet, &wg, &m).await,
        "{protocol}: still reachable after release"
    );
}

/// Sends from a fresh socket in the internet namespace (a new conntrack flow, so only the
/// gateway's forwarding rule can let it in) and reports whether `wg` received it.
async fn reaches(inet: &str, wg: &UdpSocket, m: &Mapping) -> bool {
    let sender = udp_in(inet, SocketAddr::from((INET, 0)));
    let payload = format!("hello via {}", m.external);
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        sender.send_to(payload.as_bytes(), m.external).unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), wg.recv_from(&mut buf)).await;
        if let Ok(Ok((n, from))) = got {
            assert_eq!(&buf[..n], payload.as_bytes());
            assert_eq!(from.ip(), INET, "the source address is preserved");
            return true;
        }
    }
    false
}

async fn wait_for(
    pm: &mut PortMapper,
    secs: u64,
    want: impl Fn(&PortmapEvent) -> bool,
) -> PortmapEvent {
    let wait = async {
        loop {
            let ev = pm.next_event().await.expect("the port mapper stopped");
            eprintln!("event: {ev:?}");
            assert!(
                !matches!(ev, PortmapEvent::Failed(_) | PortmapEvent::Lost { .. }),
                "{ev:?}"
            );
            if want(&ev) {
                return ev;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait)
        .await
        .expect("timed out waiting for a port mapping event")
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates stay there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap();
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn udp_in(ns: &str, addr: SocketAddr) -> StdUdpSocket {
    in_netns(ns, move || StdUdpSocket::bind(addr).unwrap())
}

fn skip_reason() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("needs root for network namespaces".into());
    }
    if !Path::new(MINIUPNPD).exists() {
        return Some(format!(
            "{MINIUPNPD} missing (apt-get install miniupnpd-nftables)"
        ));
    }
    for tool in [["ip", "-V"], ["nft", "--version"]] {
        if Command::new(tool[0])
            .arg(tool[1])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!(
                "`{}` missing (apt-get install iproute2 nftables)",
                tool[0]
            ));
        }
    }
    None
}

/// The three namespaces and miniupnpd; Drop kills miniupnpd and deletes the namespaces.
struct Lab {
    router: String,
    host: String,
    inet: String,
    dir: PathBuf,
    miniupnpd: Option<Child>,
}

impl Lab {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&base);
        let mut lab = Lab {
            router: format!("{base}-r"),
            host: format!("{base}-h"),
            inet: format!("{base}-i"),
            dir,
            miniupnpd: None,
        };
        lab.build();
        lab
    }

    fn build(&mut self) {
        fs::create_dir_all(&self.dir).unwrap();
        let (r, h, i) = (self.router.clone(), self.host.clone(), self.inet.clone());
        for ns in [&r, &h, &i] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &h,
        ]);
        ip(&[
            "-n", &r, "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", &i,
        ]);
        for (ns, dev, addr) in [
            (&r, "lan", "192.168.77.1/24"),
            (&r, "wan", "11.77.0.1/24"),
            (&h, "eth0", "192.168.77.2/24"),
            (&i, "eth0", "11.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &h, "route", "add", "default", "via", "192.168.77.1"]);
        run(Command::new("ip").args([
            "netns",
            "exec",
            &r,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]));
        let nft = self.dir.join("router.nft");
        fs::write(&nft, NFT_RULES).unwrap();
        run(Command::new("ip")
            .args(["netns", "exec", &r, "nft", "-f"])
            .arg(&nft));

        let conf = self.dir.join("miniupnpd.conf");
        fs::write(&conf, MINIUPNPD_CONF).unwrap();
        let log = self.dir.join("miniupnpd.log");
        let out = fs::File::create(&log).unwrap();
        // -d: foreground with debug logs on stderr; -f: our config; -P: a pid file of our own.
        // `ip netns exec` execs miniupnpd, so the child's PID is miniupnpd's.
        let child = Command::new("ip")
            .args(["netns", "exec", &r, MINIUPNPD, "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(self.dir.join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.miniupnpd = Some(child);
        for _ in 0..50 {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Listening for NAT-PMP/PCP traffic") && text.contains("HTTP listening")
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.miniupnpd.as_mut().map(|c| c.try_wait()) {
                panic!("miniupnpd exited ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "miniupnpd did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.miniupnpd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.join("miniupnpd.log")).unwrap_or_default();
            eprintln!("--- miniupnpd log ---\n{log}");
            let rules = Command::new("ip")
                .args(["netns", "exec", &self.router, "nft", "list", "ruleset"])
                .output();
            if let Ok(o) = rules {
                eprintln!(
                    "--- router ruleset ---\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        for ns in [&self.router, &self.host, &self.inet] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Deletes namespaces left by a run of this test that was killed (its PID is gone), with the
/// miniupnpd still inside.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if owner.parse::<u32>().is_err() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "delete", name]).status();
        eprintln!("swept stale namespace {name}");
    }
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
