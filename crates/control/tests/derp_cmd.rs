//! `control derp`: the standalone relay prints a DERP map region whose `CertName` pin and port
//! let two clients connect over pinned TLS and relay a packet; a wrong pin is refused.

// Test helpers may panic on setup failures; that is a failed test, not a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nat::derp::client::{ClientConfig, ClientEvent};
use nat::derp::dial::{DialOptions, TlsVerify, connect};
use proto::keys::NodePrivate;
use proto::tailcfg::DerpMap;

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `control derp` and reads the DERP map it prints (a pretty JSON object).
fn start_relay(state: &std::path::Path) -> (Relay, DerpMap) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_control"))
        .args([
            "derp",
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "127.0.0.1",
            "--stun-port",
            "0",
        ])
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start control derp");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut json = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 {
            panic!("control derp exited before printing its map: {json}");
        }
        json.push_str(&line);
        if line.starts_with('}') {
            break;
        }
    }
    // Keep draining so the relay never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let map: DerpMap = serde_json::from_str(&json).expect("DERP map JSON");
    (Relay(child), map)
}

#[tokio::test]
async fn standalone_relay_serves_pinned_derp() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, map) = start_relay(dir.path());
    let region = map.regions.get(&900).expect("region 900");
    let node = &region.nodes[0];
    assert!(
        node.cert_name.starts_with("sha256-raw:"),
        "self-signed cert is pinned: {}",
        node.cert_name
    );
    let url = format!("https://127.0.0.1:{}/derp", node.derp_port);
    let roots = Arc::new(rustls::RootCertStore::empty());
    let verify = TlsVerify::from_cert_name(Some(&node.cert_name), roots.clone());

    let a_key = NodePrivate::generate(&mut rand_core::OsRng);
    let b_key = NodePrivate::generate(&mut rand_core::OsRng);
    let b_pub = b_key.public();
    let mut a = connect(
        &DialOptions::new(url.clone(), verify.clone()),
        ClientConfig::new(a_key.clone(), [1; 32]),
    )
    .await
    .expect("client A connects with the pin");
    let mut b = connect(
        &DialOptions::new(url.clone(), verify),
        ClientConfig::new(b_key, [2; 32]),
    )
    .await
    .expect("client B connects with the pin");
    a.send_packet(b_pub, b"through the standalone relay")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ClientEvent::Packet { src, packet } = b.recv().await.unwrap() {
                return (src, packet);
            }
        }
    })
    .await
    .expect("packet relayed");
    assert_eq!(got.0, a_key.public());
    assert_eq!(got.1, b"through the standalone relay");

    // A different pin (as if the certificate were swapped) is refused.
    let wrong = TlsVerify::from_cert_name(Some(&format!("sha256-raw:{}", "00".repeat(32))), roots);
    let err = connect(
        &DialOptions::new(url, wrong),
        ClientConfig::new(NodePrivate::generate(&mut rand_core::OsRng), [3; 32]),
    )
    .await;
    assert!(err.is_err(), "a wrong pin must fail");
}

#[test]
fn relay_identity_and_certificate_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, m1) = start_relay(dir.path());
    drop(r1);
    let (_r2, m2) = start_relay(dir.path());
    assert_eq!(
        m1.regions[&900].nodes[0].cert_name,
        m2.regions[&900].nodes[0].cert_name
    );
    let key = std::fs::metadata(dir.path().join("derp.key")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}
