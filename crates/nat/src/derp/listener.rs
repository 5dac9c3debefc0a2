//! The tokio shell of the DERP relay: a TLS (or plain HTTP) listener that serves derper's HTTP
//! endpoints and hands upgraded connections to the sans-IO [`Server`].
//!
//! [`spawn_derp_server`] binds the listener(s) and returns a [`DerpServerHandle`]. Each accepted
//! connection gets a task that reads one HTTP/1.1 request head (hand-parsed, see
//! [`super::http`] for why) and answers:
//!
//! * `/derp` with `Upgrade: DERP` or `Upgrade: websocket` (any case; any method, like derper):
//!   `101 Switching Protocols` with `Upgrade: DERP`, `Connection: Upgrade`, `Derp-Version: 2`,
//!   `Derp-Public-Key: <hex>`, then DERP frames. With `Derp-Fast-Start: 1` no response is
//!   written. Bytes that arrived after the request head are fed to the DERP codec first.
//! * `/derp` without an upgrade: 426 "DERP requires connection upgrade".
//! * `/derp/probe`, `/derp/latency-check`: 200 for GET/HEAD (`Access-Control-Allow-Origin: *`),
//!   405 otherwise.
//! * `/generate_204`: 204, echoing a well-formed `X-Tailscale-Challenge` as
//!   `X-Tailscale-Response: response <challenge>`.
//! * anything else: 404. Non-upgrade responses close the connection.
//!
//! A DERP connection runs a reader (socket → [`Server::handle_input`]) and a writer
//! ([`Server::poll_transmit`] → socket, woken through a per-connection `Notify` or by the
//! connection's keepalive/handshake deadline). The server core sits behind one mutex that is
//! never held across an `.await`. Writes that take longer than 2 s close the connection, as in
//! derper.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::derp::PROTOCOL_VERSION;
use proto::keys::{NodePrivate, NodePublic};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::http::read_head;
use super::server::{ConnId, Server, ServerConfig, ServerStats};
use crate::tls::{TlsConfig, TlsError};

/// Time allowed for the TLS handshake plus the HTTP request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a client that takes longer than this kills the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `X-Tailscale-Challenge` echoed by `/generate_204`.
const MAX_CHALLENGE_LEN: usize = 64;

/// How to run the relay.
#[derive(Clone, Debug)]
pub struct DerpServerConfig {
    /// Address of the main listener (`https://` when `tls` is set, else plain `http://`).
    pub listen: SocketAddr,
    /// Certificate source for the main listener; `None` serves plain HTTP there.
    pub tls: Option<TlsConfig>,
    /// Also serve the same endpoints over plain HTTP here (for clients run with
    /// `TS_DEBUG_USE_DERP_HTTP=1`, and for captive-portal checks on port 80).
    pub plain_http_listen: Option<SocketAddr>,
    /// The relay's long-lived key.
    pub private_key: NodePrivate,
}

impl DerpServerConfig {
    /// A TLS relay on `listen` with `tls` and `private_key`.
    pub fn new(listen: SocketAddr, tls: Option<TlsConfig>, private_key: NodePrivate) -> Self {
        Self {
            listen,
            tls,
            plain_http_listen: None,
            private_key,
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DerpServerError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// The certificate could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running relay. Dropping it does not stop the relay; call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct DerpServerHandle {
    local_addr: SocketAddr,
    plain_http_addr: Option<SocketAddr>,
    public_key: NodePublic,
    cert_name_pin: Option<String>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DerpServerHandle {
    /// The bound address of the main listener (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the extra plain-HTTP listener, if configured.
    pub fn plain_http_addr(&self) -> Option<SocketAddr> {
        self.plain_http_addr
    }

    /// The relay's public key.
    pub fn public_key(&self) -> NodePublic {
        self.public_key
    }

    /// `sha256-raw:<hex>` of the served leaf certificate, for `DERPNode.CertName`.
    pub fn cert_name_pin(&self) -> Option<&str> {
        self.cert_name_pin.as_deref()
    }

    /// Current relay counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.lock().core.stats()
    }

    /// Stops accepting, closes every connection and waits for the listener tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    core: Server,
    notifies: HashMap<ConnId, Arc<Notify>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the core consistent enough to keep relaying.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Collects the writers to wake after a mutation of the core.
    fn take_wakes(&mut self) -> Vec<Arc<Notify>> {
        let mut out = Vec::new();
        while let Some(id) = self.core.poll_wake() {
            if let Some(n) = self.notifies.get(&id) {
                out.push(n.clone());
            }
        }
        out
    }
}

fn wake_all(notifies: Vec<Arc<Notify>>) {
    for n in notifies {
        n.notify_one();
    }
}

/// Binds the configured listener(s) and starts serving.
pub async fn spawn_derp_server(cfg: DerpServerConfig) -> Result<DerpServerHandle, DerpServerError> {
    let material = cfg.tls.as_ref().map(TlsConfig::load).transpose()?;
    let acceptor = match &material {
        Some(m) => Some(tokio_rustls::TlsAcceptor::from(m.server_config()?)),
        None => None,
    };
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let core = Server::new(ServerConfig::new(cfg.private_key.clone(), seed));
    let public_key = core.public_key();
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            core,
            notifies: HashMap::new(),
        }),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DerpServerError::Bind { addr, source })
    };
    let main = bind(cfg.listen).await?;
    let local_addr = main.local_addr().map_err(|source| DerpServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let mut tasks = vec![tokio::spawn(accept_loop(
        main,
        acceptor,
        shared.clone(),
        shutdown_rx.clone(),
    ))];
    let mut plain_http_addr = None;
    if let Some(addr) = cfg.plain_http_listen {
        let plain = bind(addr).await?;
        plain_http_addr = Some(
            plain
                .local_addr()
                .map_err(|source| DerpServerError::Bind { addr, source })?,
        );
        tasks.push(tokio::spawn(accept_loop(
            plain,
            None,
            shared.clone(),
            shutdown_rx,
        )));
    }
    tracing::info!(%local_addr, ?plain_http_addr, key = %public_key, tls = material.is_some(), "derp: relay listening");
    Ok(DerpServerHandle {
        local_addr,
        plain_http_addr,
        public_key,
        cert_name_pin: material.as_ref().map(|m| m.cert_name_pin()),
        shared,
        shutdown,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(x) => x,
                    Err(err) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%err, "derp: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                conns.spawn(serve_tcp(tcp, remote, acceptor.clone(), shared.clone(), shutdown.clone()));
            }
        }
    }
    // Aborting the connection tasks drops their sockets. Their registry entries die with the
    // core, which nothing else uses once every listener of this relay has stopped.
    conns.shutdown().await;
}

async fn serve_tcp(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let result = match acceptor {
        Some(acceptor) => match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => serve_http(tls, remote, shared, shutdown).await,
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        },
        None => serve_http(tcp, remote, shared, shutdown).await,
    };
    if let Err(err) = result {
        tracing::debug!(%remote, %err, "derp: connection ended with an error");
    }
}

/// What the request head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Derp { fast_start: bool },
    NeedsUpgrade,
    Probe { ok: bool },
    NoContent { challenge: Option<String> },
    NotFound,
}

fn route(head: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    Some(match path {
        "/derp/probe" | "/derp/latency-check" => Route::Probe {
            ok: method == "GET" || method == "HEAD",
        },
        "/derp" => {
            let upgrade = header("Upgrade").unwrap_or_default().to_ascii_lowercase();
            if upgrade == "derp" || upgrade == "websocket" {
                Route::Derp {
                    fast_start: header("Derp-Fast-Start") == Some("1"),
                }
            } else {
                Route::NeedsUpgrade
            }
        }
        "/generate_204" => Route::NoContent {
            challenge: header("X-Tailscale-Challenge")
                .filter(|c| {
                    !c.is_empty()
                        && c.len() <= MAX_CHALLENGE_LEN
                        && c.chars().all(is_challenge_char)
                })
                .map(str::to_owned),
        },
        _ => Route::NotFound,
    })
}

fn is_challenge_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')
}

fn simple_response(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn serve_http<S>(
    mut stream: S,
    remote: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head, rest) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP request head timed out"))??;
    let response = match route(&head) {
        Some(Route::Derp { fast_start }) => {
            if !fast_start {
                let key = shared.lock().core.public_key();
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: {PROTOCOL_VERSION}\r\nDerp-Public-Key: {}\r\n\r\n",
                    hex::encode(key.as_bytes())
                );
                stream.write_all(resp.as_bytes()).await?;
            }
            return run_derp(stream, remote, rest, shared, shutdown).await;
        }
        Some(Route::NeedsUpgrade) => simple_response(
            "426 Upgrade Required",
            "",
            "DERP requires connection upgrade\n",
        ),
        Some(Route::Probe { ok: true }) => {
            simple_response("200 OK", "Access-Control-Allow-Origin: *\r\n", "")
        }
        Some(Route::Probe { ok: false }) => {
            simple_response("405 Method Not Allowed", "", "bogus probe method\n")
        }
        Some(Route::NoContent { challenge }) => {
            let echo = challenge
                .map(|c| format!("X-Tailscale-Response: response {c}\r\n"))
                .unwrap_or_default();
            format!(
                "HTTP/1.1 204 No Content\r\nCache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n{echo}Connection: close\r\n\r\n"
            )
        }
        Some(Route::NotFound) => simple_response("404 Not Found", "", "not found\n"),
        None => simple_response("400 Bad Request", "", "malformed HTTP request\n"),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// Serves one upgraded DERP connection until either side closes it.
async fn run_derp<S>(
    stream: S,
    remote: SocketAddr,
    early: Vec<u8>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let notify = Arc::new(Notify::new());
    let id = {
        let mut inner = shared.lock();
        let id = inner.core.accept(Instant::now(), Some(remote));
        inner.notifies.insert(id, notify.clone());
        id
    };
    let (rd, wr) = tokio::io::split(stream);
    let reader = read_loop(rd, id, early, shared.clone());
    let writer = write_loop(wr, id, notify, shared.clone());
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        _ = shutdown.changed() => Ok(()),
    };
    let wakes = {
        let mut inner = shared.lock();
        inner.core.remove(id);
        inner.notifies.remove(&id);
        inner.take_wakes()
    };
    wake_all(wakes);
    result
}

/// Socket → core. Returns `Ok` on a clean EOF, an error for I/O or protocol failures.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    id: ConnId,
    early: Vec<u8>,
    shared: Arc<Shared>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut pending = early;
    loop {
        if !pending.is_empty() {
            let wakes = {
                let mut inner = shared.lock();
                inner
                    .core
                    .handle_input(id, &pending, Instant::now())
                    .map_err(io::Error::other)?;
                inner.take_wakes()
            };
            wake_all(wakes);
            pending.clear();
        }
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
}

/// Core → socket, woken by `notify` or by the connection's next deadline. Only returns on error
/// (including the handshake timeout).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    id: ConnId,
    notify: Arc<Notify>,
    shared: Arc<Shared>,
) -> io::Result<()> {
    loop {
        let (bytes, deadline, wakes) = {
            let mut inner = shared.lock();
            inner
                .core
                .handle_timeout(id, Instant::now())
                .map_err(io::Error::other)?;
            let bytes = inner.core.poll_transmit(id);
            let deadline = inner.core.poll_timeout(id);
            (bytes, deadline, inner.take_wakes())
        };
        // Wake the other writers; this one loops anyway.
        wake_all(
            wakes
                .into_iter()
                .filter(|n| !Arc::ptr_eq(n, &notify))
                .collect(),
        );
        if let Some(bytes) = bytes {
            let write = async {
                wr.write_all(&bytes).await?;
                wr.flush().await
            };
            tokio::time::timeout(WRITE_TIMEOUT, write)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "write to DERP client timed out")
                })??;
            continue;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = sleep => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /derp HTTP/1.1\r\nUpgrade: DERP\r\n\r\n"),
            Some(Route::Derp { fast_start: false })
        );
        assert_eq!(
            r("GET /derp HTTP/1.1\r\nupgrade: derp\r\nDerp-Fast-Start: 1\r\n\r\n"),
            Some(Route::Derp { fast_start: true })
        );
        assert_eq!(
            r("GET /derp HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n"),
            Some(Route::Derp { fast_start: false })
        );
        assert_eq!(
            r("GET /derp HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::NeedsUpgrade)
        );
        assert_eq!(
            r("GET /derp HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
            Some(Route::NeedsUpgrade)
        );
        assert_eq!(
            r("HEAD /derp/probe HTTP/1.1\r\n\r\n"),
            Some(Route::Probe { ok: true })
        );
        assert_eq!(
            r("POST /derp/latency-check HTTP/1.1\r\n\r\n"),
            Some(Route::Probe { ok: false })
        );
        assert_eq!(
            r("GET /generate_204 HTTP/1.1\r\nX-Tailscale-Challenge: ts_127.0.0.1\r\n\r\n"),
            Some(Route::NoContent {
                challenge: Some("ts_127.0.0.1".into())
            })
        );
        assert_eq!(
            r("GET /generate_204 HTTP/1.1\r\nX-Tailscale-Challenge: bad challenge!\r\n\r\n"),
            Some(Route::NoContent { challenge: None })
        );
        assert_eq!(r("GET /other HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(r("garbage\r\n\r\n"), None);
    }
}
