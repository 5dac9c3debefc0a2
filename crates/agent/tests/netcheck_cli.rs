//! `agent netcheck` end to end through the local API: the real CLI binary against a local API
//! server whose backend is a fake with a fixed report (so the test needs no network), and against
//! a real daemon that is not logged in (a clear error, exit status 1).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::daemon::backend::{Backend, BackendError, BackendFuture, PlaceholderBackend};
use agent::daemon::state::{Prefs, StateDir};
use agent::ipn::{
    NetcheckReport, PingReply, PortMappingReport, RegionLatency, Status, UpReply, UpRequest, WhoIs,
};

const AGENT: &str = env!("CARGO_BIN_EXE_agent");

/// The placeholder backend (no engine) with a fixed netcheck answer.
struct Fake {
    inner: PlaceholderBackend,
    report: Option<NetcheckReport>,
}

impl Fake {
    fn new(dir: &Path, report: Option<NetcheckReport>) -> Fake {
        let state = StateDir::open(&dir.join("state")).unwrap();
        let keys = state.load_or_create_keys().unwrap();
        Fake {
            inner: PlaceholderBackend::new(state, Prefs::default(), keys),
            report,
        }
    }
}

impl Backend for Fake {
    fn status(&self) -> BackendFuture<'_, Status> {
        self.inner.status()
    }
    fn up(&self, req: UpRequest) -> BackendFuture<'_, Result<UpReply, BackendError>> {
        self.inner.up(req)
    }
    fn down(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        self.inner.down()
    }
    fn logout(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        self.inner.logout()
    }
    fn ping(&self, t: String, c: u32) -> BackendFuture<'_, Result<Vec<PingReply>, BackendError>> {
        self.inner.ping(t, c)
    }
    fn whois(&self, a: IpAddr) -> BackendFuture<'_, Result<WhoIs, BackendError>> {
        self.inner.whois(a)
    }
    fn shutdown(&self) -> BackendFuture<'_, ()> {
        self.inner.shutdown()
    }
    fn netcheck(&self) -> BackendFuture<'_, Result<NetcheckReport, BackendError>> {
        match &self.report {
            Some(r) => {
                let r = r.clone();
                Box::pin(async move { Ok(r) })
            }
            None => self.inner.netcheck(),
        }
    }
}

fn sample() -> NetcheckReport {
    NetcheckReport {
        time: None,
        udp: true,
        ipv4: true,
        ipv6: false,
        global_v4: Some("198.51.100.3:55433".parse().unwrap()),
        global_v6: None,
        os_has_ipv6: false,
        mapping_varies_by_dest_ip: Some(true),
        port_mapping: PortMappingReport {
            pmp: true,
            ..Default::default()
        },
        preferred_derp: Some(900),
        regions: vec![RegionLatency {
            id: 900,
            code: "lab".into(),
            name: "Lab".into(),
            latency_ms: Some(0.8),
            latency_v4_ms: Some(0.8),
            latency_v6_ms: None,
            method: "stun".into(),
        }],
        https_fallback: false,
    }
}

/// Serves the local API with `backend` on a socket in `dir` from a background runtime.
fn serve(dir: &Path, backend: Fake) -> (PathBuf, tokio::runtime::Runtime) {
    let socket = dir.join("agent.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
    let backend: Arc<dyn Backend> = Arc::new(backend);
    rt.spawn(agent::daemon::localapi::serve(
        listener,
        backend,
        std::future::pending(),
    ));
    (socket, rt)
}

fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(AGENT)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn netcheck_prints_the_report_as_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (socket, _rt) = serve(tmp.path(), Fake::new(tmp.path(), Some(sample())));
    let out = cli(&socket, &["netcheck"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("* UDP: true"), "{text}");
    assert!(text.contains("* IPv4: yes, 198.51.100.3:55433"), "{text}");
    assert!(text.contains("* MappingVariesByDestIP: true"), "{text}");
    assert!(text.contains("* PortMapping: NAT-PMP"), "{text}");
    assert!(text.contains("* Nearest DERP: Lab"), "{text}");
    assert!(text.contains("- lab: 0.8ms"), "{text}");

    let out = cli(&socket, &["netcheck", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["udp"], true);
    assert_eq!(v["global_v4"], "198.51.100.3:55433");
    assert_eq!(v["mapping_varies_by_dest_ip"], true);
    assert_eq!(v["port_mapping"]["pmp"], true);
    assert_eq!(v["port_mapping"]["upnp"], false);
    assert_eq!(v["preferred_derp"], 900);
    assert_eq!(v["regions"][0]["code"], "lab");
    let back: NetcheckReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, sample());
}

#[test]
fn netcheck_on_a_node_that_is_not_up_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (socket, _rt) = serve(tmp.path(), Fake::new(tmp.path(), None));
    let out = cli(&socket, &["netcheck"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("agent up"), "{err}");
}

#[test]
fn netcheck_against_a_fresh_daemon_needs_login() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("agent.sock");
    let mut child = Command::new(AGENT)
        .arg("daemon")
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .args(["--port", "0", "--tun", "agnc0"])
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not listen");
        assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cli(&socket, &["netcheck"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("not connected") && err.contains("agent up"),
        "{err}"
    );
}

#[test]
fn netcheck_without_a_daemon_says_how_to_start_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cli(&tmp.path().join("none.sock"), &["netcheck"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is `agent daemon` running?"), "{err}");
}
