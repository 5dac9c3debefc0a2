//! ts2021 over tokio I/O: `server_accept` / `client_finish`, the early payload, record framing
//! on a real byte stream, and hyper's HTTP/2 client and server running inside `NoiseStream`.
//! Run with `cargo test -p proto --features tokio`.

#![allow(clippy::unwrap_used)] // Tests may unwrap (house style); helpers here are not #[test] fns.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::keys::{ChallengePublic, MachinePrivate, MachinePublic};
use proto::noise::handshake::{self, ClientHandshake, HandshakeError};
use proto::noise::transport::MAX_FRAME_LEN;
use proto::noise::{EarlyPayload, NoiseStream, StreamError, client_finish, server_accept};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

const V: u16 = 130;

struct Pair {
    client: NoiseStream<DuplexStream>,
    server: NoiseStream<DuplexStream>,
    early: Option<EarlyPayload>,
    machine: MachinePrivate,
    seen_by_server: MachinePublic,
}

async fn connect(early: Option<EarlyPayload>) -> Pair {
    let machine = MachinePrivate::generate(&mut OsRng);
    let server_key = MachinePrivate::generate(&mut OsRng);
    let (hs, init) = ClientHandshake::start(&machine, &server_key.public(), V, &mut OsRng).unwrap();
    let (cio, sio) = duplex(64 * 1024);
    let (srv, cli) = tokio::join!(
        server_accept(sio, &server_key, &init, early),
        client_finish(cio, hs, Vec::new())
    );
    let (server, seen_by_server, version) = srv.unwrap();
    let (client, early) = cli.unwrap();
    assert_eq!(version, V);
    assert_eq!(client.peer(), server_key.public());
    assert_eq!(client.handshake_hash(), server.handshake_hash());
    Pair {
        client,
        server,
        early,
        machine,
        seen_by_server,
    }
}

/// Serves HTTP/2 on `server`: echoes the request body's length and sends back `resp_len` bytes.
fn spawn_h2_server(server: NoiseStream<DuplexStream>, peer: MachinePublic) {
    let service =
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
            let resp_len: usize = req
                .headers()
                .get("x-want")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let resp = Response::builder()
                .header("x-got", body.len().to_string())
                .header("x-peer", peer.to_string())
                .body(Full::new(Bytes::from(vec![b'r'; resp_len])))
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
    tokio::spawn(async move {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), service)
            .await
    });
}

async fn h2_requests(client: NoiseStream<DuplexStream>, machine: &MachinePublic) {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for (req_len, resp_len) in [(0usize, 10usize), (300_000, 200_000), (5000, 0)] {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post("https://control.example/machine/map")
                .header("x-want", resp_len.to_string())
                .body(Full::new(Bytes::from(vec![b'q'; req_len])))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let got = resp.headers()["x-got"].to_str().unwrap().to_owned();
            let peer = resp.headers()["x-peer"].to_str().unwrap().to_owned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, req_len.to_string());
            assert_eq!(body.len(), resp_len);
            peer
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), machine.to_string());
    }
}

#[tokio::test]
async fn http2_over_noise_with_early_payload() {
    let early = EarlyPayload::new(ChallengePublic::from_bytes([0x42; 32]));
    let p = connect(Some(early.clone())).await;
    assert_eq!(p.early, Some(early));
    assert_eq!(p.seen_by_server, p.machine.public());
    spawn_h2_server(p.server, p.seen_by_server);
    h2_requests(p.client, &p.machine.public()).await;
}

#[tokio::test]
async fn http2_over_noise_without_early_payload() {
    // With no early payload, `client_finish` decides from the server's first bytes (HTTP/2
    // SETTINGS, which hyper's server sends at once) and must hand them back to the client.
    let machine = MachinePrivate::generate(&mut OsRng);
    let server_key = MachinePrivate::generate(&mut OsRng);
    let (hs, init) = ClientHandshake::start(&machine, &server_key.public(), V, &mut OsRng).unwrap();
    let (cio, sio) = duplex(64 * 1024);
    let server_task = tokio::spawn(async move {
        let (server, peer, _) = server_accept(sio, &server_key, &init, None).await.unwrap();
        spawn_h2_server(server, peer);
        peer
    });
    let (client, early) = client_finish(cio, hs, Vec::new()).await.unwrap();
    assert_eq!(early, None);
    assert_eq!(server_task.await.unwrap(), machine.public());
    h2_requests(client, &machine.public()).await;
}

#[tokio::test]
async fn plain_bytes_both_ways_and_clean_shutdown() {
    let mut p = connect(Some(EarlyPayload::default())).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            p.client.write_all(&data).await.unwrap();
            p.client.shutdown().await.unwrap();
            p.client
        })
    };
    let mut got = Vec::new();
    p.server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    let mut client = writer.await.unwrap();

    p.server.write_all(b"bye").await.unwrap();
    p.server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
}

/// Server side over a raw socket: the test plays the client with the sans-IO handshake and
/// inspects the bytes on the wire.
#[tokio::test]
async fn stream_writes_are_split_into_max_size_records() {
    let machine = MachinePrivate::generate(&mut OsRng);
    let server_key = MachinePrivate::generate(&mut OsRng);
    let (hs, init) = ClientHandshake::start(&machine, &server_key.public(), V, &mut OsRng).unwrap();
    let (mut raw, sio) = duplex(256 * 1024);
    let (mut server, _, _) = server_accept(sio, &server_key, &init, None).await.unwrap();

    let mut response = [0u8; handshake::RESPONSE_LEN];
    raw.read_exact(&mut response).await.unwrap();
    let (_, mut opener) = hs.finish(&response).unwrap().into_parts();

    let data = vec![0x5au8; 50_000];
    server.write_all(&data).await.unwrap();
    server.flush().await.unwrap();
    drop(server);
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();

    let mut rest = &wire[..];
    let mut sizes = Vec::new();
    while !rest.is_empty() {
        assert_eq!(rest[0], 0x04);
        let len = 3 + usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        sizes.push(len);
        rest = &rest[len..];
    }
    assert!(sizes.iter().all(|&s| s <= MAX_FRAME_LEN), "{sizes:?}");
    assert_eq!(
        sizes.iter().filter(|&&s| s == MAX_FRAME_LEN).count(),
        50_000 / 4077
    );
    opener.feed(&wire);
    let mut got = vec![0u8; 60_000];
    let mut n = 0;
    loop {
        let k = opener.read(&mut got[n..]).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(&got[..n], &data[..]);
}

#[tokio::test]
async fn malformed_initiation_gets_an_error_frame() {
    let machine = MachinePrivate::generate(&mut OsRng);
    let server_key = MachinePrivate::generate(&mut OsRng);
    let (hs, init) = ClientHandshake::start(&machine, &server_key.public(), V, &mut OsRng).unwrap();
    let (cio, sio) = duplex(4096);
    let (srv, cli) = tokio::join!(
        async move {
            // Dropping the server's end after the error frame closes the connection.
            server_accept(sio, &server_key, &init[..60], None)
                .await
                .map(|_| ())
        },
        client_finish(cio, hs, Vec::new())
    );
    assert!(matches!(
        srv,
        Err(StreamError::Handshake(
            HandshakeError::WrongInitiationSize { got: 60 }
        ))
    ));
    let err = cli.unwrap_err();
    assert!(
        matches!(&err, StreamError::Handshake(HandshakeError::ServerRefused(t)) if t == "wrong handshake initiation size"),
        "{err}"
    );
}

#[tokio::test]
async fn bytes_read_past_the_upgrade_are_used_as_prefix() {
    let machine = MachinePrivate::generate(&mut OsRng);
    let server_key = MachinePrivate::generate(&mut OsRng);
    let (hs, init) = ClientHandshake::start(&machine, &server_key.public(), V, &mut OsRng).unwrap();
    let (mut cio, sio) = duplex(64 * 1024);
    let early = EarlyPayload::new(ChallengePublic::from_bytes([9; 32]));
    let (mut server, _, _) = server_accept(sio, &server_key, &init, Some(early.clone()))
        .await
        .unwrap();
    server.write_all(b"hello after early").await.unwrap();
    server.flush().await.unwrap();

    // Like hyper's upgrade `read_buf`: the response, the early payload and more, read raw.
    let mut prefix = vec![0u8; 4096];
    let n = cio.read(&mut prefix).await.unwrap();
    prefix.truncate(n);
    assert!(n > handshake::RESPONSE_LEN);
    let (mut client, got_early) = client_finish(cio, hs, prefix).await.unwrap();
    assert_eq!(got_early, Some(early));
    let mut buf = [0u8; 17];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello after early");
}

#[tokio::test]
async fn tampered_record_and_truncated_stream_are_errors() {
    let machine = MachinePrivate::generate(&mut OsRng);
    let server_key = MachinePrivate::generate(&mut OsRng);
    let start = || ClientHandshake::start(&machine, &server_key.public(), V, &mut OsRng).unwrap();

    // Tampered record: the test plays the server with the sans-IO API.
    let (hs, init) = start();
    let mut acc = handshake::accept(&server_key, &init, &mut OsRng).unwrap();
    let (mut cio, mut sio) = duplex(64 * 1024);
    let mut wire = acc.response.to_vec();
    acc.transport
        .sealer_mut()
        .seal(b"\0\0\0\x04\0\0\0\0\0settings", &mut wire)
        .unwrap();
    let mut bad = Vec::new();
    acc.transport
        .sealer_mut()
        .seal(b"tamper with me", &mut bad)
        .unwrap();
    bad[10] ^= 1;
    wire.extend_from_slice(&bad);
    sio.write_all(&wire).await.unwrap();
    let (mut client, early) = client_finish(&mut cio, hs, Vec::new()).await.unwrap();
    assert_eq!(early, None);
    let mut buf = [0u8; 17];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"\0\0\0\x04\0\0\0\0\0settings");
    let err = client.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    // EOF in the middle of a record.
    let (hs, init) = start();
    let mut acc = handshake::accept(&server_key, &init, &mut OsRng).unwrap();
    let (cio, mut sio) = duplex(64 * 1024);
    let mut wire = acc.response.to_vec();
    acc.transport
        .sealer_mut()
        .seal(b"\xff\xff\xffTX not early", &mut wire)
        .unwrap();
    let mut cut = Vec::new();
    acc.transport
        .sealer_mut()
        .seal(b"cut short", &mut cut)
        .unwrap();
    wire.extend_from_slice(&cut[..cut.len() - 3]);
    sio.write_all(&wire).await.unwrap();
    drop(sio);
    let (mut client, _) = client_finish(cio, hs, Vec::new()).await.unwrap();
    let mut got = Vec::new();
    let err = client.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(got, b"\xff\xff\xffTX not early");
}
