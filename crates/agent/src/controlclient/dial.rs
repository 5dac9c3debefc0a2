//! Dialing the control server (I/O): `GET /key`, then `POST /ts2021` upgraded into a Noise
//! session carrying HTTP/2, exactly as Tailscale v1.90 does it (protocol reference §2-3).
//!
//! [`dial`] returns a [`Connection`] once the HTTP/2 connection inside Noise is up. Plain `http://`
//! URLs use TCP; `https://` URLs use TLS (rustls with the `ring` provider, Mozilla's roots from
//! `webpki-roots` unless [`DialOptions::tls`] supplies a configuration) for both `/key` and the
//! upgrade. Unlike the Go client this never falls back from HTTP to port 443: the URL's scheme
//! and port are dialed as given.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::keys::{MachinePrivate, MachinePublic};
use proto::noise::ClientHandshake;
use proto::tailcfg::OverTlsPublicKeyResponse;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::CAPABILITY_VERSION;
use super::conn::Connection;
use super::error::ControlError;

/// The `Upgrade` protocol token of ts2021.
const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
/// The header carrying the base64 Noise initiation.
const HANDSHAKE_HEADER: &str = "X-Tailscale-Handshake";
/// Largest `/key` answer read (the Go client's limit).
const MAX_KEY_BODY: usize = 64 * 1024;
/// Largest error body quoted back to the user.
const MAX_ERROR_BODY: usize = 4 * 1024;
/// What we call ourselves in HTTP/1.1 requests.
const USER_AGENT: &str = concat!("tailnet-agent/", env!("CARGO_PKG_VERSION"));

/// How to dial the control server.
#[derive(Clone)]
pub struct DialOptions {
    /// Limit for the whole dial: TCP, TLS, `/key`, upgrade, Noise and HTTP/2 handshakes.
    pub timeout: Duration,
    /// TLS settings for `https://` URLs; `None` = rustls with Mozilla's root certificates.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `SO_MARK` for the TCP sockets, so that policy routing keeps control traffic out of the
    /// agent's own tunnel (an exit node's default route). Setting it needs `CAP_NET_ADMIN`; a
    /// refusal is logged and the connection goes ahead unmarked.
    pub socket_mark: Option<u32>,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            timeout: Duration::from_secs(15),
            tls: None,
            socket_mark: None,
        }
    }
}

impl std::fmt::Debug for DialOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialOptions")
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .field("socket_mark", &self.socket_mark)
            .finish()
    }
}

/// A parsed control server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The URL as the user gave it, without a trailing slash (for messages).
    pub text: String,
    pub tls: bool,
    /// Host name or IP, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written in the URL (HTTP `Host` and HTTP/2 `:authority`).
    pub authority: String,
}

impl ServerUrl {
    /// Parses `http://host[:port][/]` or `https://host[:port][/]`.
    pub fn parse(url: &str) -> Result<ServerUrl, ControlError> {
        let text = url.trim().trim_end_matches('/').to_string();
        let bad = |reason: &str| ControlError::InvalidUrl {
            url: url.to_string(),
            reason: reason.into(),
        };
        let uri: Uri = text
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
            None => return Err(bad("it needs a scheme, e.g. http://127.0.0.1:8080")),
        };
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user names or passwords in the URL are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "it must not have a path or query; give only scheme, host and port",
            ));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(ServerUrl {
            text,
            tls,
            host,
            port,
            authority: authority.as_str().to_string(),
        })
    }
}

/// A TCP or TLS connection to the control server.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS configuration used when the caller gives none: Mozilla's roots, HTTP/1.1 only (the
/// upgrade must not negotiate HTTP/2 over TLS).
fn default_tls() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Opens a TCP (and, for https, TLS) connection to the server.
async fn connect(url: &ServerUrl, opts: &DialOptions) -> Result<Io, ControlError> {
    let unreachable = |reason: String| ControlError::Unreachable {
        url: url.text.clone(),
        reason,
    };
    let tcp = connect_tcp(&url.host, url.port, opts.socket_mark)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // Small request/response exchanges: do not wait to coalesce writes.
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return Ok(Io::Plain(tcp));
    }
    let tls_err = |reason: String| ControlError::Tls {
        url: url.text.clone(),
        reason,
    };
    let cfg = match &opts.tls {
        Some(c) => Arc::clone(c),
        None => default_tls().map_err(|e| tls_err(e.to_string()))?,
    };
    let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
        tls_err(format!(
            "{:?} is not a valid TLS server name: {e}",
            url.host
        ))
    })?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    Ok(Io::Tls(Box::new(tls)))
}

/// Resolves `host` and connects to the first address that answers, marking each socket with
/// `mark` first.
async fn connect_tcp(host: &str, port: u16, mark: Option<u32>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no addresses");
    for addr in tokio::net::lookup_host((host, port)).await? {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(mark) = mark
            && let Err(e) = socket2::SockRef::from(&sock).set_mark(mark)
        {
            tracing::debug!(error = %e, mark, "cannot mark the control socket");
        }
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Starts an HTTP/1.1 client connection on a fresh socket; the connection task ends with it.
async fn http1(
    url: &ServerUrl,
    opts: &DialOptions,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    ControlError,
> {
    let io = connect(url, opts).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ControlError::Unreachable {
            url: url.text.clone(),
            reason: e.to_string(),
        })?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "control HTTP/1.1 connection ended");
        }
    });
    Ok((send, task))
}

fn not_control(url: &ServerUrl, reason: impl Into<String>) -> ControlError {
    ControlError::NotControlServer {
        url: url.text.clone(),
        reason: reason.into(),
    }
}

/// Reads at most `limit` bytes of a body, for quoting in an error message.
async fn body_snippet(body: hyper::body::Incoming, limit: usize) -> String {
    match Limited::new(body, limit).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        Err(_) => String::from("(body unreadable or too long)"),
    }
}

/// `GET /key?v=130`: the server's Noise public key.
pub async fn fetch_server_key(
    url: &ServerUrl,
    opts: &DialOptions,
) -> Result<MachinePublic, ControlError> {
    let (mut send, task) = http1(url, opts).await?;
    let result = async {
        let req = Request::get(format!("/key?v={CAPABILITY_VERSION}"))
            .header(header::HOST, &url.authority)
            .header(header::USER_AGENT, USER_AGENT)
            .body(Empty::<Bytes>::new())
            .map_err(|e| ControlError::InvalidUrl {
                url: url.text.clone(),
                reason: e.to_string(),
            })?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ControlError::Unreachable {
                url: url.text.clone(),
                reason: format!("GET /key failed: {e}"),
            })?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = body_snippet(resp.into_body(), MAX_ERROR_BODY).await;
            return Err(not_control(
                url,
                format!("GET /key answered {status}: {body:.200}"),
            ));
        }
        let body = Limited::new(resp.into_body(), MAX_KEY_BODY)
            .collect()
            .await
            .map_err(|e| not_control(url, format!("reading its /key answer failed: {e}")))?
            .to_bytes();
        let key: OverTlsPublicKeyResponse = serde_json::from_slice(&body).map_err(|e| {
            not_control(
                url,
                format!("its /key answer is not the expected JSON ({e})"),
            )
        })?;
        if key.public_key.is_zero() {
            return Err(not_control(
                url,
                "control server is too old; it has no Noise key",
            ));
        }
        Ok(key.public_key)
    }
    .await;
    task.abort();
    result
}

/// Dials the control server at `server_url` as `machine_key` with default options.
pub async fn dial(
    server_url: &str,
    machine_key: &MachinePrivate,
) -> Result<Connection, ControlError> {
    dial_with(server_url, machine_key, &DialOptions::default()).await
}

/// Dials the control server at `server_url` as `machine_key`: `/key`, the ts2021 upgrade, the
/// Noise handshake and HTTP/2, all within `opts.timeout`.
pub async fn dial_with(
    server_url: &str,
    machine_key: &MachinePrivate,
    opts: &DialOptions,
) -> Result<Connection, ControlError> {
    let url = ServerUrl::parse(server_url)?;
    match tokio::time::timeout(opts.timeout, dial_inner(&url, machine_key, opts)).await {
        Ok(r) => r,
        Err(_) => Err(ControlError::Unreachable {
            url: url.text.clone(),
            reason: format!("no working connection within {} s", opts.timeout.as_secs()),
        }),
    }
}

async fn dial_inner(
    url: &ServerUrl,
    machine_key: &MachinePrivate,
    opts: &DialOptions,
) -> Result<Connection, ControlError> {
    let server_key = fetch_server_key(url, opts).await?;
    let (hs, init) = ClientHandshake::start(
        machine_key,
        &server_key,
        CAPABILITY_VERSION,
        &mut rand_core::OsRng,
    )
    .map_err(|e| ControlError::Handshake {
        url: url.text.clone(),
        reason: e.to_string(),
    })?;

    let (mut send, http1_task) = http1(url, opts).await?;
    let req = Request::post("/ts2021")
        .header(header::HOST, &url.authority)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::UPGRADE, UPGRADE_PROTOCOL)
        .header(header::CONNECTION, "upgrade")
        .header(
            HANDSHAKE_HEADER,
            base64::engine::general_purpose::STANDARD.encode(init),
        )
        .header(header::CONTENT_LENGTH, "0")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ControlError::InvalidUrl {
            url: url.text.clone(),
            reason: e.to_string(),
        })?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| ControlError::Unreachable {
            url: url.text.clone(),
            reason: format!("POST /ts2021 failed: {e}"),
        })?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = body_snippet(resp.into_body(), MAX_ERROR_BODY).await;
        http1_task.abort();
        return Err(not_control(
            url,
            format!(
                "POST /ts2021 answered {status} instead of 101 Switching Protocols: {body:.200}"
            ),
        ));
    }
    let upgrade = resp
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if upgrade != Some(UPGRADE_PROTOCOL) {
        http1_task.abort();
        return Err(not_control(
            url,
            format!("it upgraded /ts2021 to {upgrade:?}, not {UPGRADE_PROTOCOL:?}"),
        ));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| ControlError::Unreachable {
            url: url.text.clone(),
            reason: format!("the /ts2021 upgrade failed: {e}"),
        })?;
    let (noise, early) = proto::noise::client_finish(TokioIo::new(upgraded), hs, Vec::new())
        .await
        .map_err(|e| ControlError::Handshake {
            url: url.text.clone(),
            reason: e.to_string(),
        })?;
    if let Some(e) = &early {
        tracing::debug!(challenge = %e.node_key_challenge.short(), "control sent an early payload");
    }

    let (h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        // Map streams can be large: let a whole full map flow without waiting for window
        // updates on every 64 KiB.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Full<Bytes>>(TokioIo::new(noise))
        .await
        .map_err(|e| ControlError::Handshake {
            url: url.text.clone(),
            reason: format!("HTTP/2 over Noise failed: {e}"),
        })?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control Noise connection ended");
        }
    });
    Ok(Connection::new(h2, driver, url.clone(), server_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = ServerUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 8080));
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.text, "http://127.0.0.1:8080");
        let u = ServerUrl::parse("https://ctl.example.com").unwrap();
        assert_eq!((u.tls, u.port), (true, 443));
        let u = ServerUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 9000, "[::1]:9000")
        );
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://h/path",
            "http://u:p@h",
        ] {
            let e = ServerUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid control server URL"), "{bad}: {e}");
        }
    }
}
