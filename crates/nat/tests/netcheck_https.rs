//! The HTTPS latency fallback of netcheck against real DERP listeners on 127.0.0.1: a working
//! TLS relay is measured, a dead port and a wrong certificate pin are left out, and the whole
//! probe respects its time budget.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nat::derp::listener::{DerpServerConfig, DerpServerHandle, spawn_derp_server};
use nat::netcheck::probe::{HTTPS_PROBE_TIMEOUT, https_latencies};
use nat::netcheck::{LatencyMethod, Report};
use nat::stun_client;
use nat::tls::{TlsConfig, TlsMaterial};
use proto::keys::NodePrivate;
use proto::tailcfg::{DerpMap, DerpNode, DerpRegion};

async fn start_tls_relay(seed: u8) -> DerpServerHandle {
    let material = TlsMaterial::self_signed("127.0.0.1").unwrap();
    let cfg = DerpServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(TlsConfig::Material(material)),
        NodePrivate::from_bytes([seed; 32]),
    );
    spawn_derp_server(cfg).await.unwrap()
}

fn region(id: i32, name: &str, port: u16, cert_name: &str) -> DerpRegion {
    DerpRegion {
        region_id: id,
        region_code: name.to_owned(),
        region_name: name.to_owned(),
        nodes: vec![DerpNode {
            name: format!("{id}a"),
            region_id: id,
            host_name: "127.0.0.1".to_owned(),
            cert_name: cert_name.to_owned(),
            ipv4: "127.0.0.1".to_owned(),
            derp_port: i32::from(port),
            ..DerpNode::default()
        }],
        ..DerpRegion::default()
    }
}

#[tokio::test]
async fn https_latency_measures_reachable_relays_only() {
    let good = start_tls_relay(1).await;
    let other = start_tls_relay(2).await;
    // A port nobody listens on.
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pin = good.cert_name_pin().unwrap().to_owned();
    let mut map = DerpMap::default();
    map.regions
        .insert(900, region(900, "lab", good.local_addr().port(), &pin));
    map.regions
        .insert(901, region(901, "dead", dead_port, &pin));
    // The other relay's certificate does not match this pin: refused.
    map.regions.insert(
        902,
        region(902, "wrong-pin", other.local_addr().port(), &pin),
    );
    let mut skipped = region(903, "skipped", good.local_addr().port(), &pin);
    skipped.no_measure_no_home = true;
    map.regions.insert(903, skipped);

    let roots = Arc::new(rustls::RootCertStore::empty());
    let started = Instant::now();
    let got = https_latencies(&map, roots, HTTPS_PROBE_TIMEOUT).await;
    assert!(started.elapsed() < HTTPS_PROBE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].region_id, 900);
    assert_eq!(got[0].addr, good.local_addr());
    assert!(got[0].latency < HTTPS_PROBE_TIMEOUT);

    // What `agent netcheck` shows on a UDP-blocked network.
    let mut report = Report::from_stun(&stun_client::Report::default(), Some(&map));
    report.add_https_latencies(&got, Some(&map));
    assert!(!report.udp && report.ipv4);
    assert_eq!(report.preferred_derp, Some(900));
    assert_eq!(report.regions[&900].method, LatencyMethod::Https);
    assert_eq!(report.regions[&900].name, "lab");
    assert!(report.to_net_info().derp_latency.contains_key("900-v4"));

    good.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn https_latency_gives_up_at_the_budget() {
    // A TCP listener that accepts but never speaks TLS: the probe must not hang.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let mut map = DerpMap::default();
    map.regions.insert(900, region(900, "silent", port, ""));
    let roots = Arc::new(rustls::RootCertStore::empty());
    let started = Instant::now();
    let got = https_latencies(&map, roots, Duration::from_millis(300)).await;
    assert!(got.is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));
    hold.abort();
}
