//! Nothing committed is lost when the server is killed: `control serve` is SIGKILLed mid-session
//! and restarted on the same database; the device re-registers without an auth key, keeps its
//! addresses and name, and the admin CLI still lists it.

// Test helpers may panic on setup failures; that is a failed test, not a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Keys};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn control(db: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_control"));
    c.env("CONTROL_DB", db).env("NO_COLOR", "1");
    c
}

async fn start(db: &std::path::Path, port: u16) -> Server {
    let child = control(db)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--base-domain",
            "tail.test",
        ])
        .args(["--derp-port", "0", "--stun-port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "control serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server(child)
}

fn cli_json(db: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = control(db)
        .args(args)
        .args(["--base-domain", "tail.test", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn sigkill_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("control.db");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = start(&db, port).await;

    let key = cli_json(&db, &["keys", "create"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let keys = Keys::generate();
    let device = Client::connect_with(addr, "survivor", keys.duplicate())
        .await
        .unwrap();
    let resp = device.register(Some(&key), false).await.unwrap();
    assert_eq!(resp.error, "");
    let mut stream = device.map_stream(&[]).await.unwrap();
    let first = stream
        .next(Duration::from_secs(10))
        .await
        .expect("first map");
    let addresses = first.node.as_ref().unwrap().addresses.clone();
    let policy = dir.path().join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}"#,
    )
    .unwrap();
    let out = control(&db)
        .args(["policy", "set"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGKILL: no shutdown path runs.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let _server = start(&db, port).await;

    let device = Client::connect_with(addr, "survivor", keys).await.unwrap();
    let again = device.register(None, false).await.unwrap();
    assert_eq!(
        again.error, "",
        "the known node key re-registers without an auth key"
    );
    let mut stream = device.map_stream(&[]).await.unwrap();
    let map = stream
        .next(Duration::from_secs(10))
        .await
        .expect("map after restart");
    let node = map.node.as_ref().unwrap();
    assert_eq!(node.addresses, addresses, "same tailnet IPs");
    assert_eq!(node.name, "survivor.tail.test.");
    let filter = map
        .packet_filters
        .get("base")
        .cloned()
        .flatten()
        .unwrap_or_default();
    assert!(
        filter
            .iter()
            .any(|r| r.dst_ports.iter().any(|d| d.ports.first == 22)),
        "policy survived"
    );
    let nodes = cli_json(&db, &["nodes", "list"]);
    let list = nodes.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{nodes}");
}
