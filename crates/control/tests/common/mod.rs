//! A small ts2021 client and a server harness for the control server's integration tests.
//!
//! [`TestServer::start`] runs `control::server::start` on 127.0.0.1:0 with a database in a
//! temporary directory. [`Client::connect`] then does what a Tailscale client does before it can
//! register: `GET /key` (hyper's HTTP/1.1 client), a hand-written `POST /ts2021` upgrade carrying
//! the Noise initiation, the handshake over the upgraded socket, and hyper's HTTP/2 client on top
//! of the Noise stream. Register, logout, map streams and lite map updates are requests on that
//! one connection, as the Go client sends them. Everything here talks to loopback only.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use control::config::ServeArgs;
use control::server::Running;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::keys::{DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate};
use proto::mapframe::MapFrameDecoder;
use proto::noise::ClientHandshake;
use proto::tailcfg::{
    Hostinfo, MapRequest, MapResponse, OverTlsPublicKeyResponse, RegisterAuth, RegisterRequest,
    RegisterResponse,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The capability version the test client announces (Tailscale v1.90).
pub const CAPVER: u16 = 130;

/// The MagicDNS suffix the test servers use.
pub const BASE_DOMAIN: &str = "tail.test";

/// Anything that went wrong in the test client, as text (tests only print or assert on it).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

// ------------------------------------------------------------------------------------ server

/// A control server on loopback with a database in its own temporary directory.
pub struct TestServer {
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with a fresh database.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let (running, shutdown) = start_on(&dir.path().join("c.db")).await;
        TestServer {
            addr: running.http_addr,
            db: dir.path().join("c.db"),
            running: Some(running),
            shutdown,
            dir,
        }
    }

    /// The running server (panics after [`Self::stop`]).
    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Stops the server and waits until every task ended.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(10), r.wait())
                .await
                .expect("the server did not stop within 10 s of its shutdown token");
        }
    }

    /// Starts a new server on the same database (after [`Self::stop`]).
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "stop the server first");
        let (running, shutdown) = start_on(&self.db).await;
        self.addr = running.http_addr;
        self.running = Some(running);
        self.shutdown = shutdown;
    }

    /// Creates a user and an auth key for it with `opts` (the user is created if missing).
    pub fn auth_key_for(
        &self,
        login: &str,
        opts: control::state::AuthKeyOptions,
    ) -> (String, String) {
        use control::state::Actor;
        let now = chrono::Utc::now();
        let shared = &self.running().shared;
        let mut g = shared.lock();
        if g.tailnet.user_by_login(login).is_none() {
            g.tailnet
                .create_user(login, "", &Actor::cli(), now)
                .unwrap();
        }
        let opts = control::state::AuthKeyOptions {
            user: Some(login.to_string()),
            ..opts
        };
        let (rec, text) = g
            .tailnet
            .create_auth_key(opts, &Actor::cli(), now, &mut rand::thread_rng())
            .unwrap();
        (rec.key_id, text)
    }

    /// A single-use auth key for `login`.
    pub fn auth_key(&self, login: &str) -> String {
        self.auth_key_for(login, Default::default()).1
    }

    /// Installs a policy through the tailnet, as `control policy set` would.
    pub fn set_policy(&self, text: &str) {
        let now = chrono::Utc::now();
        self.running()
            .shared
            .lock()
            .tailnet
            .set_policy(text, &control::state::Actor::cli(), now)
            .unwrap_or_else(|e| panic!("policy refused: {e}\n{text}"));
    }
}

async fn start_on(db: &std::path::Path) -> (Running, CancellationToken) {
    let settings = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        db: Some(db.to_path_buf()),
        base_domain: Some(BASE_DOMAIN.into()),
        derp_port: Some(0),
        stun_port: Some(0),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = control::server::start(settings, shutdown.clone())
        .await
        .unwrap();
    (running, shutdown)
}

// ------------------------------------------------------------------------------------ client

/// The keys a device keeps across restarts.
pub struct Keys {
    pub machine: MachinePrivate,
    pub node: NodePrivate,
    pub disco: DiscoPrivate,
}

impl Keys {
    pub fn generate() -> Keys {
        Keys {
            machine: MachinePrivate::generate(&mut rand_core::OsRng),
            node: NodePrivate::generate(&mut rand_core::OsRng),
            disco: DiscoPrivate::generate(&mut rand_core::OsRng),
        }
    }

    /// A copy (private keys are not `Clone` on purpose; tests rebuild them from text).
    pub fn duplicate(&self) -> Keys {
        Keys {
            machine: MachinePrivate::from_text(&self.machine.to_text()).unwrap(),
            node: NodePrivate::from_text(&self.node.to_text()).unwrap(),
            disco: DiscoPrivate::from_text(&self.disco.to_text()).unwrap(),
        }
    }
}

/// A device connected to the control server over ts2021.
pub struct Client {
    pub keys: Keys,
    pub server_key: MachinePublic,
    pub hostname: String,
    send: SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing the connection ends its map streams, as a client process exiting would.
        self.conn.abort();
    }
}

/// `GET /key?v=130` with hyper's HTTP/1.1 client.
pub async fn fetch_server_key(addr: SocketAddr) -> Result<OverTlsPublicKeyResponse, Error> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let task = tokio::spawn(conn);
    let req = Request::get(format!("/key?v={CAPVER}"))
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    task.abort();
    if status != StatusCode::OK {
        return Err(format!("/key: {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(serde_json::from_slice(&body)?)
}

/// What the server answered to a `/ts2021` upgrade request.
pub struct UpgradeReply {
    pub status: u16,
    pub head: String,
    /// Bytes after the response head (the start of the Noise handshake reply).
    pub rest: Vec<u8>,
    pub tcp: TcpStream,
}

/// Sends `POST /ts2021` with `handshake_header` as `X-Tailscale-Handshake`, written by hand as
/// the Go client does, and reads the response head.
pub async fn post_upgrade(addr: SocketAddr, handshake_header: &str) -> Result<UpgradeReply, Error> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!(
        "POST /ts2021 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: tailscale-control-protocol\r\n\
         Connection: upgrade\r\nX-Tailscale-Handshake: {handshake_header}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head larger than 64 KiB".into());
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(format!(
                "connection closed before the response head ended: {:?}",
                String::from_utf8_lossy(&buf)
            )
            .into());
        }
    };
    let rest = buf.split_off(end);
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status in response head {head:?}"))?;
    Ok(UpgradeReply {
        status,
        head,
        rest,
        tcp,
    })
}

impl Client {
    /// A new device (fresh keys) connected to the server at `addr`.
    pub async fn connect(addr: SocketAddr, hostname: &str) -> Result<Client, Error> {
        Client::connect_with(addr, hostname, Keys::generate()).await
    }

    /// A device with existing keys connected to the server at `addr`.
    pub async fn connect_with(
        addr: SocketAddr,
        hostname: &str,
        keys: Keys,
    ) -> Result<Client, Error> {
        let server_key = fetch_server_key(addr).await?.public_key;
        let (hs, init) =
            ClientHandshake::start(&keys.machine, &server_key, CAPVER, &mut rand_core::OsRng)?;
        let header = base64::engine::general_purpose::STANDARD.encode(init);
        let reply = post_upgrade(addr, &header).await?;
        if reply.status != 101 {
            return Err(format!(
                "/ts2021 answered {} instead of 101: {}",
                reply.status, reply.head
            )
            .into());
        }
        let upgrade_ok = reply.head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("upgrade") && v.trim() == "tailscale-control-protocol"
            })
        });
        if !upgrade_ok {
            return Err(format!(
                "101 without Upgrade: tailscale-control-protocol: {}",
                reply.head
            )
            .into());
        }
        let (stream, _early) = proto::noise::client_finish(reply.tcp, hs, reply.rest).await?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client {
            keys,
            server_key,
            hostname: hostname.to_string(),
            send,
            conn,
        })
    }

    fn hostinfo(&self) -> Hostinfo {
        Hostinfo {
            hostname: self.hostname.clone(),
            os: "linux".into(),
            ..Default::default()
        }
    }

    /// POSTs `body` to `path` over Noise; returns the status and the response.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<http::Response<Incoming>, Error> {
        let mut send = self.send.clone();
        send.ready().await?;
        let req = Request::post(format!("https://127.0.0.1{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        Ok(send.send_request(req).await?)
    }

    /// POSTs `body` and reads the whole answer.
    pub async fn post_collect(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let resp = self.post(path, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a RegisterRequest as built by the caller.
    pub async fn register_request(&self, req: &RegisterRequest) -> Result<RegisterResponse, Error> {
        let (status, body) = self
            .post_collect("/machine/register", serde_json::to_vec(req)?)
            .await?;
        if status != StatusCode::OK {
            return Err(format!("register: {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Registers this device's node key, with an auth key or (re-login) without one.
    pub async fn register(
        &self,
        auth_key: Option<&str>,
        ephemeral: bool,
    ) -> Result<RegisterResponse, Error> {
        let req = RegisterRequest {
            version: i32::from(CAPVER),
            node_key: self.keys.node.public(),
            nl_key: proto::tailcfg::register::zero_nl_key(),
            auth: auth_key.map(|k| RegisterAuth {
                auth_key: k.to_string(),
                ..Default::default()
            }),
            hostinfo: Some(self.hostinfo()),
            ephemeral,
            ..Default::default()
        };
        self.register_request(&req).await
    }

    /// Logs out, as `tailscale logout` does: a RegisterRequest with an expiry in the past.
    pub async fn logout(&self) -> Result<RegisterResponse, Error> {
        let req = RegisterRequest {
            version: i32::from(CAPVER),
            node_key: self.keys.node.public(),
            nl_key: proto::tailcfg::register::zero_nl_key(),
            expiry: Some(proto::tailcfg::logout_expiry()),
            hostinfo: Some(self.hostinfo()),
            ..Default::default()
        };
        self.register_request(&req).await
    }

    fn map_request(&self, endpoints: &[SocketAddr], stream: bool) -> MapRequest {
        MapRequest {
            version: i32::from(CAPVER),
            compress: "zstd".into(),
            keep_alive: true,
            node_key: self.keys.node.public(),
            disco_key: self.keys.disco.public(),
            stream,
            omit_peers: !stream,
            hostinfo: Some(self.hostinfo()),
            endpoints: endpoints.to_vec(),
            ..Default::default()
        }
    }

    /// Opens the long-poll map stream, reporting `endpoints`.
    pub async fn map_stream(&self, endpoints: &[SocketAddr]) -> Result<MapStream, Error> {
        let body = serde_json::to_vec(&self.map_request(endpoints, true))?;
        let resp = self.post("/machine/map", body).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(format!("map: {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(MapStream {
            body: resp.into_body(),
            decoder: MapFrameDecoder::new(),
            ended: false,
        })
    }

    /// A "lite" map request (`OmitPeers`, no stream) reporting new endpoints; returns the status.
    pub async fn lite_update(&self, endpoints: &[SocketAddr]) -> Result<StatusCode, Error> {
        let body = serde_json::to_vec(&self.map_request(endpoints, false))?;
        let (status, _) = self.post_collect("/machine/map", body).await?;
        Ok(status)
    }
}

// -------------------------------------------------------------------------------- map stream

/// What waiting on a map stream produced.
#[derive(Debug)]
pub enum Next {
    Message(Box<MapResponse>),
    /// Nothing but keep-alives arrived in time.
    Timeout,
    /// The server ended the stream (or the connection failed); the text says how.
    Ended(String),
}

/// The body of a streaming `/machine/map` response, decoded message by message.
pub struct MapStream {
    body: Incoming,
    decoder: MapFrameDecoder,
    ended: bool,
}

impl MapStream {
    /// The next non-keep-alive message, waiting at most `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.decoder.next_message() {
                Ok(Some(json)) => {
                    let msg: MapResponse = match serde_json::from_slice(&json) {
                        Ok(m) => m,
                        Err(e) => {
                            panic!(
                                "server sent a MapResponse that does not parse: {e}: {}",
                                String::from_utf8_lossy(&json)
                            )
                        }
                    };
                    if msg.keep_alive {
                        continue;
                    }
                    return Next::Message(Box::new(msg));
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a bad map frame: {e}"),
            }
            if self.ended {
                return Next::Ended("stream ended".into());
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => {
                    self.ended = true;
                    return Next::Ended("end of body".into());
                }
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Next::Ended(format!("body error: {e}"));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.feed(&data);
                    }
                }
            }
        }
    }

    /// The next non-keep-alive message, or `None` on timeout or end of stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<MapResponse> {
        match self.recv(timeout).await {
            Next::Message(m) => Some(*m),
            Next::Timeout | Next::Ended(_) => None,
        }
    }

    /// Reads messages until one satisfies `pred`; returns it and how long it took, and prints the
    /// latency under `what`. Panics with what it saw if nothing matched within `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&MapResponse) -> bool,
    ) -> (MapResponse, Duration) {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.recv(left).await {
                Next::Message(m) if pred(&m) => {
                    let took = start.elapsed();
                    println!("{what}: {took:?}");
                    return (*m, took);
                }
                Next::Message(m) => seen.push(summary(&m)),
                Next::Timeout => {
                    panic!("{what}: nothing matching within {timeout:?}; saw {seen:#?}")
                }
                Next::Ended(how) => panic!("{what}: map stream ended ({how}); saw {seen:#?}"),
            }
        }
    }

    /// Waits until the server ends the stream; returns how long it took.
    pub async fn wait_end(&mut self, what: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.recv(left).await {
                Next::Message(_) => {}
                Next::Timeout => panic!("{what}: the stream did not end within {timeout:?}"),
                Next::Ended(how) => {
                    let took = start.elapsed();
                    println!("{what}: {took:?} ({how})");
                    return took;
                }
            }
        }
    }

    /// Collects whatever arrives within `window` (to check that something did NOT happen).
    pub async fn drain(&mut self, window: Duration) -> Vec<MapResponse> {
        let start = Instant::now();
        let mut out = Vec::new();
        loop {
            let left = window.saturating_sub(start.elapsed());
            match self.recv(left).await {
                Next::Message(m) => out.push(*m),
                Next::Timeout | Next::Ended(_) => return out,
            }
        }
    }
}

/// A one-line description of a map message for failure output.
pub fn summary(m: &MapResponse) -> String {
    let ids = |v: &[proto::tailcfg::Node]| v.iter().map(|n| n.id.0).collect::<Vec<_>>();
    format!(
        "node={} peers={:?} changed={:?} removed={:?} patch={:?} filters={:?}",
        m.node.is_some(),
        ids(&m.peers),
        ids(&m.peers_changed),
        m.peers_removed.iter().map(|id| id.0).collect::<Vec<_>>(),
        m.peers_changed_patch
            .iter()
            .map(|p| (p.node_id.0, p.endpoints.clone(), p.online))
            .collect::<Vec<_>>(),
        m.packet_filters.keys().collect::<Vec<_>>(),
    )
}
