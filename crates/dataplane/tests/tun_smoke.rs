//! Smoke test for the `tun` feature: a real TUN device inside a private network namespace.
//!
//! The test thread calls `unshare(CLONE_NEWNET)`, so the device, its addresses and routes and
//! every packet exist only in a namespace with no other interface; nothing can leave the machine
//! and the namespace vanishes with the thread. Needs root (CAP_NET_ADMIN and `/dev/net/tun`);
//! without it the test prints why and passes.

#![cfg(target_os = "linux")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use dataplane::packet::PacketInfo;
use dataplane::tun::{TunConfig, TunDevice, configure};
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

async fn exercise() -> Result<(), String> {
    let dev = TunDevice::create(&TunConfig {
        name: "dpsmoke0".to_string(),
        mtu: 1280,
    })
    .map_err(|e| e.to_string())?;
    assert_eq!(dev.name(), "dpsmoke0");
    assert_eq!(dev.mtu(), 1280);
    configure(
        dev.name(),
        dev.mtu(),
        &[
            "100.64.0.1/32".parse().expect("valid prefix"),
            "fd7a:115c:a1e0::1/128".parse().expect("valid prefix"),
        ],
        &[
            "100.64.0.0/10".parse().expect("valid prefix"),
            "fd7a:115c:a1e0::/48".parse().expect("valid prefix"),
        ],
    )
    .await
    .map_err(|e| e.to_string())?;

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
