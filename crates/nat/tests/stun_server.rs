//! The STUN responder over real UDP on 127.0.0.1: Tailscale requests get the observed address,
//! anything else gets silence.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nat::stun_server::spawn_stun_server;
use proto::stun::{TxId, binding_request, parse_binding_response};
use tokio::net::UdpSocket;

async fn recv_reply(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn binding_request_gets_our_address() {
    let server = spawn_stun_server("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server.local_addr()).await.unwrap();
    let tx = TxId([7; 12]);
    sock.send(&binding_request(tx)).await.unwrap();
    let reply = recv_reply(&sock, Duration::from_secs(10))
        .await
        .expect("no STUN reply");
    assert_eq!(
        parse_binding_response(&reply).unwrap(),
        (tx, sock.local_addr().unwrap())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_ignored() {
    let server = spawn_stun_server("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server.local_addr()).await.unwrap();
    let mut bad_fingerprint = binding_request(TxId([1; 12]));
    bad_fingerprint[39] ^= 0xff;
    let mut other_software = binding_request(TxId([2; 12]));
    other_software[24..32].copy_from_slice(b"notnode!");
    for junk in [
        &b"hello"[..],
        &bad_fingerprint[..],
        &other_software[..],
        &[0u8; 40][..],
    ] {
        sock.send(junk).await.unwrap();
    }
    assert_eq!(
        recv_reply(&sock, Duration::from_millis(500)).await,
        None,
        "junk must not be answered"
    );
    // The responder is still alive afterwards.
    let tx = TxId([3; 12]);
    sock.send(&binding_request(tx)).await.unwrap();
    let reply = recv_reply(&sock, Duration::from_secs(10))
        .await
        .expect("no STUN reply");
    assert_eq!(parse_binding_response(&reply).unwrap().0, tx);
    server.shutdown().await;
}
