//! End-to-end checks of the DERP relay over real TLS/TCP sockets on 127.0.0.1: what a Tailscale
//! client (or an operator with curl) would observe.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use nat::derp::client::{ClientConfig, ClientEvent};
use nat::derp::dial::{self, DerpConnection, DialError, DialOptions, TlsVerify};
use nat::derp::listener::{DerpServerConfig, DerpServerHandle, spawn_derp_server};
use nat::tls::{TlsConfig, TlsMaterial, parse_cert_name_pin};
use proto::derp::{ClientInfo, DISCO_MAGIC, Frame, FrameDecoder, PeerGoneReason, ServerInfo};
use proto::keys::{NodePrivate, NodePublic};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn key(n: u8) -> NodePrivate {
    NodePrivate::from_bytes([n; 32])
}

async fn start_tls_relay() -> DerpServerHandle {
    let material = TlsMaterial::self_signed("127.0.0.1").unwrap();
    let mut cfg = DerpServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(TlsConfig::Material(material)),
        key(1),
    );
    cfg.plain_http_listen = Some("127.0.0.1:0".parse().unwrap());
    spawn_derp_server(cfg).await.unwrap()
}

fn pinned(relay: &DerpServerHandle) -> TlsVerify {
    TlsVerify::Pinned(parse_cert_name_pin(relay.cert_name_pin().unwrap()).unwrap())
}

async fn connect(relay: &DerpServerHandle, who: &NodePrivate) -> DerpConnection {
    let url = format!("https://127.0.0.1:{}/derp", relay.local_addr().port());
    let opts = DialOptions::new(url, pinned(relay));
    dial::connect(
        &opts,
        ClientConfig::new(who.clone(), [who.as_bytes()[0]; 32]),
    )
    .await
    .unwrap()
}

/// The next event that is not a keepalive.
async fn next_event(conn: &mut DerpConnection) -> ClientEvent {
    loop {
        match tokio::time::timeout(WAIT, conn.recv())
            .await
            .expect("timed out waiting for a DERP event")
            .unwrap()
        {
            ClientEvent::KeepAlive => continue,
            ev => return ev,
        }
    }
}

fn disco_packet() -> Vec<u8> {
    let mut p = DISCO_MAGIC.to_vec();
    p.resize(100, 0x42);
    p
}

#[tokio::test]
async fn two_clients_exchange_packets_with_source_keys() {
    let relay = start_tls_relay().await;
    let (a, b) = (key(2), key(3));
    let mut ca = connect(&relay, &a).await;
    let mut cb = connect(&relay, &b).await;
    assert_eq!(ca.server_key(), Some(relay.public_key()));
    assert_eq!(ca.server_info(), &ServerInfo::current());

    ca.send_packet(b.public(), b"hello from a").await.unwrap();
    assert_eq!(
        next_event(&mut cb).await,
        ClientEvent::Packet {
            src: a.public(),
            packet: b"hello from a".to_vec()
        }
    );
    cb.send_packet(a.public(), b"hello from b").await.unwrap();
    assert_eq!(
        next_event(&mut ca).await,
        ClientEvent::Packet {
            src: b.public(),
            packet: b"hello from b".to_vec()
        }
    );

    // A full-size packet survives the trip.
    let big = vec![0x5a; 64 << 10];
    ca.send_packet(b.public(), &big).await.unwrap();
    assert_eq!(
        next_event(&mut cb).await,
        ClientEvent::Packet {
            src: a.public(),
            packet: big
        }
    );

    ca.send_ping(*b"pingpong").await.unwrap();
    assert_eq!(
        next_event(&mut ca).await,
        ClientEvent::Pong { data: *b"pingpong" }
    );
    ca.note_preferred(true).await.unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn peer_gone_when_a_peer_leaves() {
    let relay = start_tls_relay().await;
    let (a, b) = (key(2), key(3));
    let mut ca = connect(&relay, &a).await;
    let mut cb = connect(&relay, &b).await;
    ca.send_packet(b.public(), b"x").await.unwrap();
    assert!(matches!(
        next_event(&mut cb).await,
        ClientEvent::Packet { .. }
    ));
    drop(ca);
    assert_eq!(
        next_event(&mut cb).await,
        ClientEvent::PeerGone {
            peer: a.public(),
            reason: PeerGoneReason::DISCONNECTED
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn disco_to_unknown_key_gets_not_here() {
    let relay = start_tls_relay().await;
    let mut ca = connect(&relay, &key(2)).await;
    let nobody = NodePublic::from_bytes([0xee; 32]);
    ca.send_packet(nobody, &disco_packet()).await.unwrap();
    assert_eq!(
        next_event(&mut ca).await,
        ClientEvent::PeerGone {
            peer: nobody,
            reason: PeerGoneReason::NOT_HERE
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn wrong_pin_is_refused() {
    let relay = start_tls_relay().await;
    let url = format!("https://127.0.0.1:{}/derp", relay.local_addr().port());
    let wrong = TlsVerify::from_cert_name(
        Some(&format!("sha256-raw:{}", "00".repeat(32))),
        Arc::new(rustls::RootCertStore::empty()),
    );
    let err = dial::connect(
        &DialOptions::new(url.clone(), wrong),
        ClientConfig::new(key(2), [0; 32]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DialError::Io { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not match the pinned CertName"),
        "{err}"
    );
    // Normal verification with no trusted roots also refuses a self-signed certificate.
    let roots = TlsVerify::Roots {
        roots: Arc::new(rustls::RootCertStore::empty()),
        cert_name: None,
    };
    assert!(
        dial::connect(
            &DialOptions::new(url, roots),
            ClientConfig::new(key(2), [0; 32])
        )
        .await
        .is_err()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn plain_http_listener_serves_derp_too() {
    let relay = start_tls_relay().await;
    let plain = relay.plain_http_addr().unwrap();
    let url = format!("http://127.0.0.1:{}/derp", plain.port());
    let (a, b) = (key(2), key(3));
    let mut ca = dial::connect(
        &DialOptions::new(url, TlsVerify::InsecureForTests),
        ClientConfig::new(a.clone(), [2; 32]),
    )
    .await
    .unwrap();
    // b connects over TLS: both listeners share one relay.
    let mut cb = connect(&relay, &b).await;
    ca.send_packet(b.public(), b"over plain http")
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut cb).await,
        ClientEvent::Packet {
            src: a.public(),
            packet: b"over plain http".to_vec()
        }
    );
    relay.shutdown().await;
}

async fn tls_stream(relay: &DerpServerHandle) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = dial::client_tls_config(&pinned(relay)).unwrap();
    let tcp = TcpStream::connect(relay.local_addr()).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends one request and returns the whole response (the server closes after answering).
async fn http_request<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn probe_generate_204_and_upgrade_required() {
    let relay = start_tls_relay().await;
    let resp = http_request(
        tls_stream(&relay).await,
        "GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("Access-Control-Allow-Origin: *\r\n"),
        "{resp}"
    );
    let resp = http_request(
        tls_stream(&relay).await,
        "HEAD /derp/latency-check HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let resp = http_request(
        tls_stream(&relay).await,
        "POST /derp/probe HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

    let plain = TcpStream::connect(relay.plain_http_addr().unwrap())
        .await
        .unwrap();
    let resp = http_request(
        plain,
        "GET /generate_204 HTTP/1.1\r\nX-Tailscale-Challenge: ts_127.0.0.1\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 204 No Content\r\n"), "{resp}");
    assert!(
        resp.contains("X-Tailscale-Response: response ts_127.0.0.1\r\n"),
        "{resp}"
    );
    assert!(
        resp.contains(
            "Cache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n"
        ),
        "{resp}"
    );

    let resp = http_request(
        tls_stream(&relay).await,
        "GET /derp HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{resp}"
    );
    assert!(
        resp.ends_with("DERP requires connection upgrade\n"),
        "{resp}"
    );
    relay.shutdown().await;
}

/// Reads frames until `want` of them arrived or the server closed; returns them and whether the
/// stream ended.
async fn read_frames<S: AsyncRead + Unpin>(
    s: &mut S,
    dec: &mut FrameDecoder,
    want: usize,
) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(f) = dec.next_frame().unwrap() {
            frames.push(f);
        }
        if frames.len() >= want {
            return (frames, false);
        }
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => return (frames, true),
            Ok(n) => dec.push(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn upgrade_response_is_exact_and_forged_client_info_is_dropped() {
    let relay = start_tls_relay().await;
    let mut s = tls_stream(&relay).await;
    s.write_all(
        b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let head_end = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let want = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\nDerp-Public-Key: {}\r\n\r\n",
        hex::encode(relay.public_key().as_bytes())
    );
    assert_eq!(head, want);
    let mut dec = FrameDecoder::new();
    dec.push(&got[head_end..]);
    let (frames, _) = read_frames(&mut s, &mut dec, 1).await;
    assert_eq!(
        frames,
        vec![Frame::ServerKey {
            key: relay.public_key()
        }]
    );

    // Claim key 3 but seal with key 2: the box does not open, so the server hangs up silently.
    let Frame::ClientInfo { sealed, .. } = ClientInfo::default()
        .seal(&key(2), &relay.public_key(), &mut rand::rngs::OsRng)
        .unwrap()
    else {
        unreachable!()
    };
    let forged = Frame::ClientInfo {
        key: key(3).public(),
        sealed,
    };
    s.write_all(&forged.to_bytes().unwrap()).await.unwrap();
    let (frames, closed) = read_frames(&mut s, &mut dec, 1).await;
    assert!(closed, "connection should be closed");
    assert_eq!(frames, vec![], "no ServerInfo for a forged ClientInfo");
    assert_eq!(relay.stats().clients, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn fast_start_client_info_in_the_request_segment() {
    let relay = start_tls_relay().await;
    let a = key(2);
    let mut s = tls_stream(&relay).await;
    // Fast start: no 101, and the ClientInfo rides in the same write as the request head.
    let mut req = b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: DERP\r\nDerp-Fast-Start: 1\r\n\r\n".to_vec();
    let ci = ClientInfo::default()
        .seal(&a, &relay.public_key(), &mut rand::rngs::OsRng)
        .unwrap();
    ci.encode(&mut req).unwrap();
    s.write_all(&req).await.unwrap();
    let mut dec = FrameDecoder::new();
    let (frames, closed) = read_frames(&mut s, &mut dec, 2).await;
    assert!(!closed);
    assert_eq!(
        frames[0],
        Frame::ServerKey {
            key: relay.public_key()
        }
    );
    let Frame::ServerInfo { sealed } = &frames[1] else {
        panic!("want ServerInfo, got {frames:?}")
    };
    assert_eq!(
        ServerInfo::open(&a, &relay.public_key(), sealed).unwrap(),
        ServerInfo::current()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn self_signed_certificate_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsConfig::SelfSigned {
        hostname: "127.0.0.1".into(),
        state_dir: dir.path().to_owned(),
    };
    let cfg = DerpServerConfig::new("127.0.0.1:0".parse().unwrap(), Some(tls), key(1));
    let first = spawn_derp_server(cfg.clone()).await.unwrap();
    let pin = first.cert_name_pin().unwrap().to_owned();
    first.shutdown().await;
    let second = spawn_derp_server(cfg).await.unwrap();
    assert_eq!(second.cert_name_pin(), Some(pin.as_str()));
    let _conn = connect(&second, &key(4)).await;
    second.shutdown().await;
}
