//! A tokio shell around the sans-IO DERP [`Client`]: dial a DERP URL over TLS (or plain HTTP),
//! upgrade with `GET /derp`, run the handshake, then send and receive.
//!
//! Certificate checks mirror tailscale's `derphttp` client: a `DERPNode.CertName` of the form
//! `sha256-raw:<hex>` pins the SHA-256 of the server's leaf certificate ([`TlsVerify::Pinned`];
//! the handshake signature is still verified, so the server must hold the certificate's key);
//! any other CertName is the name to verify instead of the host name; `InsecureForTests`
//! disables checks. Normal verification needs the caller's root store (this crate bundles no
//! roots).
//!
//! [`DerpConnection`] methods take `&mut self`; a caller that needs to send and receive
//! concurrently takes the stream and the sans-IO client apart with
//! [`DerpConnection::into_parts`] and runs its own loop.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proto::derp::ServerInfo;
use proto::keys::NodePublic;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{Client, ClientConfig, ClientError, ClientEvent};
use super::http::read_head;

/// How to check the server's certificate.
#[derive(Clone)]
#[non_exhaustive]
pub enum TlsVerify {
    /// Accept exactly the leaf certificate with this SHA-256 (`CertName: "sha256-raw:<hex>"`).
    Pinned([u8; 32]),
    /// WebPKI verification against `roots`, for `cert_name` if set, else for the URL's host.
    Roots {
        roots: Arc<RootCertStore>,
        cert_name: Option<String>,
    },
    /// No verification at all (`DERPNode.InsecureForTests`).
    InsecureForTests,
}

impl fmt::Debug for TlsVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pinned(h) => write!(f, "Pinned(sha256-raw:{})", hex::encode(h)),
            Self::Roots { roots, cert_name } => {
                write!(f, "Roots({} roots, cert_name={cert_name:?})", roots.len())
            }
            Self::InsecureForTests => f.write_str("InsecureForTests"),
        }
    }
}

impl TlsVerify {
    /// The verification a Tailscale client applies for a DERP node's `CertName` field.
    pub fn from_cert_name(cert_name: Option<&str>, roots: Arc<RootCertStore>) -> Self {
        match cert_name {
            Some(name) if name.starts_with("sha256-raw:") => {
                match crate::tls::parse_cert_name_pin(name) {
                    Some(pin) => Self::Pinned(pin),
                    // A malformed pin must not silently fall back to something weaker: pin to an
                    // impossible digest so every certificate is refused.
                    None => Self::Pinned([0; 32]),
                }
            }
            Some(name) if !name.is_empty() => Self::Roots {
                roots,
                cert_name: Some(name.to_owned()),
            },
            _ => Self::Roots {
                roots,
                cert_name: None,
            },
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct DialOptions {
    /// `https://host[:port]/derp` or `http://host[:port]/derp`.
    pub url: String,
    /// Connect to this address instead of resolving the URL's host (the DERP node's IPv4/IPv6).
    pub connect_to: Option<SocketAddr>,
    /// Certificate checks for `https`.
    pub verify: TlsVerify,
    /// Budget for TCP + TLS + upgrade + DERP handshake (Tailscale uses 10 s).
    pub timeout: Duration,
}

impl DialOptions {
    /// Options for `url` with the given verification and a 10 s budget.
    pub fn new(url: impl Into<String>, verify: TlsVerify) -> Self {
        Self {
            url: url.into(),
            connect_to: None,
            verify,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why connecting to or talking with a DERP server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The URL is not `http(s)://host[:port][/path]`.
    #[error("invalid DERP URL {0:?}: want http(s)://host[:port]/derp")]
    BadUrl(String),
    /// A network error (connect, TLS handshake including certificate rejection, read, write).
    #[error("DERP connection to {url} failed: {source}")]
    Io { url: String, source: io::Error },
    /// The server answered the upgrade with something other than 101.
    #[error("DERP server at {url} refused the upgrade: {status}")]
    Upgrade { url: String, status: String },
    /// The whole dial took longer than [`DialOptions::timeout`].
    #[error("DERP connection to {0} timed out")]
    Timeout(String),
    /// The DERP session failed.
    #[error(transparent)]
    Derp(#[from] ClientError),
    /// The server closed the connection.
    #[error("DERP server closed the connection")]
    Closed,
}

/// A byte stream to a DERP server (TLS or plain TCP).
pub trait DerpStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DerpStream for T {}

/// An established DERP session.
pub struct DerpConnection {
    url: String,
    stream: Box<dyn DerpStream>,
    client: Client,
    server_info: ServerInfo,
}

impl fmt::Debug for DerpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerpConnection")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

struct ParsedUrl {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Option<ParsedUrl> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/derp"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(ParsedUrl {
        tls,
        host,
        port,
        path: path.to_owned(),
    })
}

/// A function run on every DERP client socket before it connects, e.g. to set `SO_MARK` so the
/// agent's policy routing keeps relay traffic out of its own tunnel. This crate has no syscall
/// dependency of its own; the caller brings one.
pub type SocketHook = fn(&tokio::net::TcpSocket) -> io::Result<()>;

/// The process-wide [`SocketHook`]; set once by the agent at start.
static SOCKET_HOOK: std::sync::OnceLock<SocketHook> = std::sync::OnceLock::new();

/// Installs the hook run on every DERP client socket from now on. Only the first call takes
/// effect (returns `false` afterwards): the mark is a property of the process.
pub fn set_socket_hook(hook: SocketHook) -> bool {
    SOCKET_HOOK.set(hook).is_ok()
}

/// Connects to the first address that answers, running the socket hook on each socket.
pub(crate) async fn connect_tcp(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no addresses");
    for addr in addrs {
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }?;
        if let Some(hook) = SOCKET_HOOK.get()
            && let Err(e) = hook(&sock)
        {
            tracing::debug!(error = %e, "DERP socket hook failed; connecting anyway");
        }
        match sock.connect(*addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Dials `opts.url`, upgrades to DERP and completes the handshake as `config.private_key`.
pub async fn connect(
    opts: &DialOptions,
    config: ClientConfig,
) -> Result<DerpConnection, DialError> {
    let url = opts.url.clone();
    match tokio::time::timeout(opts.timeout, connect_inner(opts, config)).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Timeout(url)),
    }
}

async fn connect_inner(
    opts: &DialOptions,
    config: ClientConfig,
) -> Result<DerpConnection, DialError> {
    let parsed = parse_url(&opts.url).ok_or_else(|| DialError::BadUrl(opts.url.clone()))?;
    let io_err = |source| DialError::Io {
        url: opts.url.clone(),
        source,
    };
    let tcp = match opts.connect_to {
        Some(addr) => connect_tcp(&[addr]).await,
        None => match tokio::net::lookup_host((parsed.host.as_str(), parsed.port)).await {
            Ok(addrs) => connect_tcp(&addrs.collect::<Vec<_>>()).await,
            Err(e) => Err(e),
        },
    }
    .map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;
    let mut stream: Box<dyn DerpStream> = if parsed.tls {
        let connector =
            tokio_rustls::TlsConnector::from(client_tls_config(&opts.verify).map_err(io_err)?);
        let name = ServerName::try_from(parsed.host.clone())
            .map_err(|_| DialError::BadUrl(opts.url.clone()))?;
        Box::new(connector.connect(name, tcp).await.map_err(io_err)?)
    } else {
        Box::new(tcp)
    };
    let host_header = match parsed.host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{}]:{}", parsed.host, parsed.port),
        _ => format!("{}:{}", parsed.host, parsed.port),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: tailscale-rs derp\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n",
        parsed.path
    );
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    let (head, rest) = read_head(&mut stream).await.map_err(io_err)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let status = match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
        _ => 0,
    };
    if status != 101 {
        let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default())
            .into_owned();
        return Err(DialError::Upgrade {
            url: opts.url.clone(),
            status: line,
        });
    }
    let mut conn = DerpConnection {
        url: opts.url.clone(),
        stream,
        client: Client::new(config),
        server_info: ServerInfo::default(),
    };
    conn.client.handle_input(&rest)?;
    loop {
        match conn.next_event().await? {
            ClientEvent::Connected { info, .. } => {
                conn.server_info = info;
                return Ok(conn);
            }
            other => tracing::debug!(?other, "derp dial: event before ServerInfo"),
        }
    }
}

impl DerpConnection {
    /// The server's key.
    pub fn server_key(&self) -> Option<NodePublic> {
        self.client.server_key()
    }

    /// What the server said in ServerInfo.
    pub fn server_info(&self) -> &ServerInfo {
        &self.server_info
    }

    /// Our node key.
    pub fn public_key(&self) -> NodePublic {
        self.client.public_key()
    }

    /// Sends `packet` to `dst` through the relay.
    pub async fn send_packet(&mut self, dst: NodePublic, packet: &[u8]) -> Result<(), DialError> {
        self.client.send_packet(dst, packet)?;
        self.flush().await
    }

    /// Tells the server whether it is our home relay.
    pub async fn note_preferred(&mut self, preferred: bool) -> Result<(), DialError> {
        self.client.note_preferred(preferred)?;
        self.flush().await
    }

    /// Sends a Ping; the Pong arrives through [`recv`](Self::recv).
    pub async fn send_ping(&mut self, data: [u8; 8]) -> Result<(), DialError> {
        self.client.send_ping(data)?;
        self.flush().await
    }

    /// The next event from the server (packets, PeerGone, keepalives, …).
    pub async fn recv(&mut self) -> Result<ClientEvent, DialError> {
        self.next_event().await
    }

    /// Writes everything the client has queued.
    pub async fn flush(&mut self) -> Result<(), DialError> {
        while let Some(bytes) = self.client.poll_transmit() {
            self.stream
                .write_all(&bytes)
                .await
                .map_err(|source| DialError::Io {
                    url: self.url.clone(),
                    source,
                })?;
        }
        self.stream.flush().await.map_err(|source| DialError::Io {
            url: self.url.clone(),
            source,
        })
    }

    async fn next_event(&mut self) -> Result<ClientEvent, DialError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            self.flush().await?;
            if let Some(ev) = self.client.poll_event() {
                return Ok(ev);
            }
            let n = self
                .stream
                .read(&mut buf)
                .await
                .map_err(|source| DialError::Io {
                    url: self.url.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(DialError::Closed);
            }
            self.client.handle_input(buf.get(..n).unwrap_or_default())?;
        }
    }

    /// Splits into the raw stream and the sans-IO client for a custom event loop.
    pub fn into_parts(self) -> (Box<dyn DerpStream>, Client) {
        (self.stream, self.client)
    }
}

/// A rustls client configuration implementing `verify` (ring provider, ALPN `http/1.1`).
pub fn client_tls_config(verify: &TlsVerify) -> io::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let cfg = match verify {
        TlsVerify::Roots {
            roots,
            cert_name: None,
        } => builder.with_root_certificates(roots.clone()),
        TlsVerify::Roots {
            roots,
            cert_name: Some(name),
        } => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(io::Error::other)?;
            let name = ServerName::try_from(name.clone()).map_err(io::Error::other)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CertNameVerifier { inner, name }))
        }
        TlsVerify::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: *pin,
                provider,
                check_pin: true,
            })),
        TlsVerify::InsecureForTests => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: [0; 32],
                    provider,
                    check_pin: false,
                }))
        }
    };
    let mut cfg = cfg.with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts exactly one leaf certificate by SHA-256, still checking the handshake signatures.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    check_pin: bool,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_pin {
            return Ok(ServerCertVerified::assertion());
        }
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "DERP server certificate sha256-raw:{} does not match the pinned CertName sha256-raw:{}",
                hex::encode(got),
                hex::encode(self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// WebPKI verification for a name other than the one dialled (`CertName` domain fronting).
#[derive(Debug)]
struct CertNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for CertNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let u = parse_url("https://derp.example.com/derp").unwrap();
        assert!(u.tls && u.host == "derp.example.com" && u.port == 443 && u.path == "/derp");
        let u = parse_url("http://127.0.0.1:8080").unwrap();
        assert!(!u.tls && u.port == 8080 && u.path == "/derp");
        let u = parse_url("https://[::1]:3340/derp").unwrap();
        assert!(u.host == "::1" && u.port == 3340);
        assert!(parse_url("ftp://x/derp").is_none());
        assert!(parse_url("https://:443/derp").is_none());
        assert!(parse_url("https://host:notaport/derp").is_none());
    }

    #[test]
    fn cert_name_selects_verification() {
        let roots = Arc::new(RootCertStore::empty());
        let pin = format!("sha256-raw:{}", "ab".repeat(32));
        assert!(
            matches!(TlsVerify::from_cert_name(Some(&pin), roots.clone()), TlsVerify::Pinned(p) if p == [0xab; 32])
        );
        assert!(
            matches!(TlsVerify::from_cert_name(Some("sha256-raw:zz"), roots.clone()), TlsVerify::Pinned(p) if p == [0; 32])
        );
        assert!(matches!(
            TlsVerify::from_cert_name(Some("derp.example.com"), roots.clone()),
            TlsVerify::Roots {
                cert_name: Some(_),
                ..
            }
        ));
        assert!(matches!(
            TlsVerify::from_cert_name(None, roots),
            TlsVerify::Roots {
                cert_name: None,
                ..
            }
        ));
    }
}
