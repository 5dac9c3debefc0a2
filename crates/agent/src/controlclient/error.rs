//! The control client's error type: one variant per thing a user can act on, each worded so the
//! message alone says what went wrong and where.

/// Why talking to the control server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The configured URL cannot be used.
    #[error("invalid control server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// TCP (or the first HTTP exchange) failed: wrong address, server down, firewall.
    #[error("cannot reach the control server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The TLS handshake with an `https://` server failed (certificate, protocol).
    #[error("TLS with the control server at {url} failed: {reason}")]
    Tls { url: String, reason: String },
    /// Something answers at the URL, but not the Tailscale control protocol.
    #[error("{url} is not a Tailscale control server: {reason}")]
    NotControlServer { url: String, reason: String },
    /// The ts2021 Noise handshake failed (wrong server key, refused version, broken stream).
    #[error("secure session with the control server at {url} failed: {reason}")]
    Handshake { url: String, reason: String },
    /// The established connection broke.
    #[error("connection to the control server was lost: {0}")]
    ConnectionLost(String),
    /// The server answered a request with an HTTP error.
    #[error("control server answered {path} with HTTP {status}: {body}")]
    Status {
        path: &'static str,
        status: u16,
        body: String,
    },
    /// The server sent something this client cannot understand.
    #[error("control server sent an invalid {what}: {reason}")]
    Protocol { what: &'static str, reason: String },
    /// The server refused the login; the text is the server's, verbatim (e.g. a bad auth key).
    #[error("{0}")]
    LoginRefused(String),
    /// The server did not answer in time.
    #[error("the control server did not answer {what} within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
    /// The client was shut down before the operation finished.
    #[error("the control client has shut down")]
    Shutdown,
}
