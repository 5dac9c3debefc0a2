//! Smoke test for the `tun` feature: a real TUN device inside a private network namespace.
//!
//! The test thread calls `unshare(CLONE_NEWNET)`, so the device, its addresses and routes and
//! every packet exist only in a namespace with no other interface; nothing can leave the machine
//! and the namespace vanishes with the thread. Needs root (CAP_NET_ADMIN and `/dev/net/tun`);
//! without it the test prints why and passes.
//!
//! The addresses and routes are set over netlink by `dataplane::tun` and read back here through
//! `ip -j` (iproute2's JSON output), which is what an operator would look at.

#![cfg(target_os = "linux")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use dataplane::packet::PacketInfo;
use dataplane::tun::{TunConfig, TunDevice, TunError, add_route, configure, del_route, set_link};
use ipnet::IpNet;
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

#[test]
fn tun_device_moves_packets_in_private_netns() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping tun_device_moves_packets_in_private_netns: needs root");
        return;
    }
    let worker = std::thread::spawn(|| -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(exercise())
    });
    match worker.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.contains("/dev/net/tun") || e.contains("Operation not permitted") => {
            eprintln!("skipping: TUN unavailable here: {e}");
        }
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("namespace thread panicked"),
    }
}

#[tokio::test]
async fn bad_interface_names_are_rejected_before_any_netlink_call() {
    for bad in ["", "-up", "sixteen-chars-xx", "a b"] {
        let err = configure(bad, 1280, &[], &[]).await.expect_err(bad);
        assert!(matches!(err, TunError::InvalidName(_)), "{bad}: {err:?}");
        let err = del_route(bad, net("100.64.0.0/10"), None)
            .await
            .expect_err(bad);
        assert!(matches!(err, TunError::InvalidName(_)), "{bad}: {err:?}");
    }
}

async fn exercise() -> Result<(), String> {
    let dev = TunDevice::create(&TunConfig {
        name: "dpsmoke0".to_string(),
        mtu: 1280,
    })
    .map_err(|e| e.to_string())?;
    assert_eq!(dev.name(), "dpsmoke0");
    assert_eq!(dev.mtu(), 1280);
    check_netlink_config(dev.name()).await?;

    // Outbound: a socket sends to a tailnet peer; the kernel routes it into the TUN.
    let sock = UdpSocket::bind(SocketAddr::new(ME.into(), 0))
        .await
        .map_err(|e| e.to_string())?;
    let my_port = sock.local_addr().map_err(|e| e.to_string())?.port();
    sock.send_to(b"hello", (PEER, 9999))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let seen = timeout(Duration::from_secs(5), async {
        loop {
            let n = dev.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Skip whatever else the kernel emits on a fresh link (IPv6 MLD, RS, …).
            let Ok(info) = PacketInfo::parse(&buf[..n]) else {
                continue;
            };
            if info.dst == IpAddr::V4(PEER) && info.dst_port() == 9999 {
                return Ok::<_, String>(info);
            }
        }
    })
    .await
    .map_err(|_| "no packet came out of the TUN device".to_string())??;
    assert_eq!(seen.src, IpAddr::V4(ME));
    assert_eq!(seen.src_port(), my_port);

    // Inbound: a packet written to the TUN reaches the socket.
    let reply = udp4(PEER, ME, 9999, my_port, b"world");
    dev.write_self_originated(&reply)
        .await
        .map_err(|e| e.to_string())?;
    let mut got = [0u8; 64];
    let (n, from) = timeout(Duration::from_secs(5), sock.recv_from(&mut got))
        .await
        .map_err(|_| "the packet written to the TUN never reached the socket".to_string())?
        .map_err(|e| e.to_string())?;
    assert_eq!(&got[..n], b"world");
    assert_eq!(from, SocketAddr::new(PEER.into(), 9999));
    Ok(())
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid prefix")
}

/// Sets addresses, routes and link state through `dataplane::tun` and checks them with `ip -j`.
async fn check_netlink_config(name: &str) -> Result<(), String> {
    let addresses = [net("100.64.0.1/32"), net("fd7a:115c:a1e0::1/128")];
    let routes = [net("100.64.0.0/10"), net("fd7a:115c:a1e0::/48")];
    configure(name, 1280, &addresses, &routes)
        .await
        .map_err(|e| e.to_string())?;
    let want_addrs = vec![
        ("inet".to_string(), "100.64.0.1".to_string(), 32),
        ("inet6".to_string(), "fd7a:115c:a1e0::1".to_string(), 128),
    ];
    let want_routes = vec![
        "100.64.0.0/10".to_string(),
        "fd7a:115c:a1e0::/48".to_string(),
    ];
    assert!(link_is_up(name), "configure brings the link up");
    assert_eq!(tailnet_addrs(name), want_addrs);
    assert_eq!(routes_in(name, None), want_routes);

    // A second identical call (the agent repeats it on every netmap) changes nothing and succeeds.
    configure(name, 1280, &addresses, &routes)
        .await
        .map_err(|e| format!("second configure: {e}"))?;
    assert_eq!(tailnet_addrs(name), want_addrs);
    assert_eq!(routes_in(name, None), want_routes);

    // Host bits in a route are ignored; routes can go to another table.
    add_route(name, net("100.100.100.100/10"), Some(52))
        .await
        .map_err(|e| e.to_string())?;
    add_route(name, net("fd7a:115c:a1e0::/48"), Some(52))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(routes_in(name, Some(52)), want_routes);

    // Deleting removes exactly that route; deleting it again is fine.
    del_route(name, net("fd7a:115c:a1e0::/48"), None)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(routes_in(name, None), vec!["100.64.0.0/10".to_string()]);
    assert_eq!(routes_in(name, Some(52)), want_routes, "table 52 untouched");
    del_route(name, net("fd7a:115c:a1e0::/48"), None)
        .await
        .map_err(|e| format!("deleting a missing route: {e}"))?;
    del_route(name, net("100.64.0.0/10"), Some(52))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        routes_in(name, Some(52)),
        vec!["fd7a:115c:a1e0::/48".to_string()]
    );

    // MTU and down/up through the link helper.
    set_link(name, 1300, false)
        .await
        .map_err(|e| e.to_string())?;
    assert!(!link_is_up(name));
    assert_eq!(link_mtu(name), 1300);
    configure(name, 1280, &addresses, &routes)
        .await
        .map_err(|e| e.to_string())?;
    assert!(link_is_up(name));
    assert_eq!(link_mtu(name), 1280);
    assert_eq!(routes_in(name, None), want_routes);

    // Errors name the interface and the operation.
    let err = configure("dpmissing0", 1280, &addresses, &routes)
        .await
        .expect_err("no such interface");
    assert!(matches!(err, TunError::Netlink { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("dpmissing0") && msg.contains("look up link"),
        "{msg}"
    );
    Ok(())
}

/// Runs `ip -j ARGS` and parses its JSON output.
fn ip_json(args: &[&str]) -> Value {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -j {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ip -j prints JSON")
}

fn link(name: &str) -> Value {
    ip_json(&["link", "show", "dev", name])[0].clone()
}

fn link_is_up(name: &str) -> bool {
    link(name)["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == "UP")
}

fn link_mtu(name: &str) -> u64 {
    link(name)["mtu"].as_u64().expect("mtu")
}

/// (family, address, prefix length) of the global addresses on the link, IPv4 first. Skips the
/// link-local address the kernel may add on its own.
fn tailnet_addrs(name: &str) -> Vec<(String, String, u64)> {
    let v = ip_json(&["addr", "show", "dev", name]);
    let mut out: Vec<_> = v[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| {
            (
                a["family"].as_str().expect("family").to_string(),
                a["local"].as_str().expect("local").to_string(),
                a["prefixlen"].as_u64().expect("prefixlen"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Destinations of the routes through the link (IPv4 then IPv6) in the main table or `table`,
/// leaving out the routes the kernel adds by itself.
fn routes_in(name: &str, table: Option<u32>) -> Vec<String> {
    let table = table.map_or("main".to_string(), |t| t.to_string());
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let v = ip_json(&[family, "route", "show", "table", &table, "dev", name]);
        for r in v.as_array().expect("route list") {
            // The kernel's own routes: fe80::/64 and the host route of an IPv6 address.
            if r["protocol"] == "kernel" {
                continue;
            }
            out.push(r["dst"].as_str().expect("dst").to_string());
        }
    }
    out
}

/// An IPv4/UDP packet with a valid header checksum (UDP checksum 0 = none, allowed on IPv4).
fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
    let total = 28 + body.len();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = p[..20].chunks(2).fold(0u32, |acc, w| {
        acc + u32::from(u16::from_be_bytes([w[0], w[1]]))
    });
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    p[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    p.extend_from_slice(body);
    p
}
