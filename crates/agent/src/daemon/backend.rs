//! The seam between the daemon shell and the engine: the [`Backend`] trait the local API calls,
//! and [`PlaceholderBackend`], an engine-less backend (prefs and keys only) for tests of the
//! shell. The daemon runs [`crate::runtime::EngineBackend`].
//!
//! The local API server holds an `Arc<dyn Backend>` and calls one method per request. A backend
//! is a *handle*: the real one is expected to forward each call as a command to the single task
//! that owns the engine (house style practice 5) and await its answer, so every method takes
//! `&self` and no engine state sits behind a lock here.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;

use proto::keys::NodePublic;

use super::state::{Keys, Prefs, StateDir, StateError};
use crate::ipn::{BackendState, Path, PeerStatus, PingReply, Status, UpReply, UpRequest, WhoIs};

/// A boxed future, which keeps [`Backend`] object-safe without an extra crate.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the local API asks of the engine. Requests reach a backend already validated
/// ([`UpRequest::validate`], ping count limits).
///
/// Implementations: [`crate::runtime::EngineBackend`] (what the daemon runs) and
/// [`PlaceholderBackend`] (no engine, for tests of the shell).
pub trait Backend: Send + Sync + 'static {
    /// The current state, this node and its peers. Never fails: problems go into
    /// [`Status::health`].
    fn status(&self) -> BackendFuture<'_, Status>;

    /// Saves the request's preferences, logs in if needed and connects.
    fn up(&self, req: UpRequest) -> BackendFuture<'_, Result<UpReply, BackendError>>;

    /// Disconnects, keeping the login (`want_running = false`).
    fn down(&self) -> BackendFuture<'_, Result<(), BackendError>>;

    /// Disconnects and forgets the login; the next `up` needs a new auth key.
    fn logout(&self) -> BackendFuture<'_, Result<(), BackendError>>;

    /// Sends `count` disco pings to a peer given by name or tailnet IP; one entry per pong.
    fn ping(
        &self,
        target: String,
        count: u32,
    ) -> BackendFuture<'_, Result<Vec<PingReply>, BackendError>>;

    /// The node that owns a tailnet address.
    fn whois(&self, addr: IpAddr) -> BackendFuture<'_, Result<WhoIs, BackendError>>;

    /// Called once when the daemon stops: undo OS changes (routes, addresses, DNS) and close
    /// the TUN device.
    fn shutdown(&self) -> BackendFuture<'_, ()>;

    /// MagicDNS state (`agent dns status`). Backends without a resolver say so.
    fn dns_status(&self) -> BackendFuture<'_, Result<crate::ipn::DnsStatus, BackendError>> {
        Box::pin(async { Err(BackendError::NotAvailable(DNS_MISSING.to_owned())) })
    }

    /// Probes this node's network now (`agent netcheck`): STUN from the WireGuard socket, port
    /// mapping at the gateway, DERP latencies. Needs a connected node (for the DERP map).
    fn netcheck(&self) -> BackendFuture<'_, Result<crate::ipn::NetcheckReport, BackendError>> {
        Box::pin(async {
            Err(BackendError::NotAvailable(
                "netcheck needs the packet engine, which this daemon does not run".to_owned(),
            ))
        })
    }

    /// Asks the daemon's MagicDNS resolver `name`/`qtype` (`agent dns query`).
    fn dns_query(
        &self,
        _name: String,
        _qtype: String,
    ) -> BackendFuture<'_, Result<crate::ipn::DnsQueryReply, BackendError>> {
        Box::pin(async { Err(BackendError::NotAvailable(DNS_MISSING.to_owned())) })
    }
}

/// Why a backend call failed. Messages are shown to the user verbatim by the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The request cannot be carried out by this build (e.g. the engine is missing).
    #[error("{0}")]
    NotAvailable(String),
    /// The operation needs a connected node.
    #[error("the agent is not connected (state {state}): run `agent up` first")]
    NotRunning { state: BackendState },
    /// The request names something that does not exist (an unknown peer).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or contradicts the current state.
    #[error("{0}")]
    InvalidRequest(String),
    /// Control refused or failed; the text is the control client's.
    #[error("{0}")]
    Control(String),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A bug or an unexpected OS failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackendError {
    /// The HTTP status the local API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotAvailable(_) => 501,
            Self::NotRunning { .. } => 409,
            Self::NotFound(_) => 404,
            Self::InvalidRequest(_) => 400,
            Self::Control(_) => 502,
            Self::State(_) | Self::Internal(_) => 500,
        }
    }
}

/// The message `up` returns until the engine driver is wired in.
pub const ENGINE_MISSING: &str = "packet engine not available yet: this agent build can save \
     preferences but cannot connect to a tailnet";

/// The message `dns status` / `dns query` return from a backend without a resolver.
pub const DNS_MISSING: &str = "MagicDNS is not available: this daemon runs without the packet \
     engine, so it has no resolver";

/// A backend without an engine: it keeps preferences and keys and reports `NeedsLogin` or
/// `Stopped`, so the socket, CLI and service setup can be used and tested on their own.
#[derive(Debug)]
pub struct PlaceholderBackend {
    state: StateDir,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    prefs: Prefs,
    keys: Keys,
}

impl PlaceholderBackend {
    pub fn new(state: StateDir, prefs: Prefs, keys: Keys) -> Self {
        Self {
            state,
            inner: Mutex::new(Inner { prefs, keys }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated (every update is a
        // single assignment after the file write), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn backend_state(prefs: &Prefs) -> BackendState {
        if prefs.logged_in && !prefs.want_running {
            BackendState::Stopped
        } else {
            BackendState::NeedsLogin
        }
    }

    /// Applies `change` to a copy of the prefs, saves it, and only then makes it current.
    fn update_prefs(&self, change: impl FnOnce(&mut Prefs)) -> Result<(), BackendError> {
        let mut inner = self.lock();
        let mut prefs = inner.prefs.clone();
        change(&mut prefs);
        self.state.save_prefs(&prefs)?;
        inner.prefs = prefs;
        Ok(())
    }
}

impl Backend for PlaceholderBackend {
    fn status(&self) -> BackendFuture<'_, Status> {
        let inner = self.lock();
        let status = Status {
            backend_state: Self::backend_state(&inner.prefs),
            self_: self_status(&inner.prefs, inner.keys.node_private.public()),
            peers: Vec::new(),
            tailnet: None,
            magic_dns_suffix: None,
            health: vec![ENGINE_MISSING.to_owned()],
            auth_url: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            exit_node_status: None,
        };
        Box::pin(async move { status })
    }

    fn up(&self, req: UpRequest) -> BackendFuture<'_, Result<UpReply, BackendError>> {
        let saved = self.update_prefs(|prefs| {
            if req.login_server.is_some() {
                prefs.control_url = req.login_server.clone();
            }
            if req.hostname.is_some() {
                prefs.hostname = req.hostname.clone();
            }
            prefs.advertise_tags = req.advertise_tags.clone();
            prefs.ephemeral = req.ephemeral;
            if let Some(accept) = req.accept_dns {
                prefs.no_accept_dns = !accept;
            }
            prefs.want_running = true;
        });
        Box::pin(async move {
            saved?;
            Err(BackendError::NotAvailable(ENGINE_MISSING.to_owned()))
        })
    }

    fn down(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        let res = self.update_prefs(|prefs| prefs.want_running = false);
        Box::pin(async move { res })
    }

    fn logout(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        let res = self.update_prefs(|prefs| {
            prefs.want_running = false;
            prefs.logged_in = false;
        });
        Box::pin(async move { res })
    }

    fn ping(
        &self,
        _target: String,
        _count: u32,
    ) -> BackendFuture<'_, Result<Vec<PingReply>, BackendError>> {
        let state = Self::backend_state(&self.lock().prefs);
        Box::pin(async move { Err(BackendError::NotRunning { state }) })
    }

    fn whois(&self, _addr: IpAddr) -> BackendFuture<'_, Result<WhoIs, BackendError>> {
        let state = Self::backend_state(&self.lock().prefs);
        Box::pin(async move { Err(BackendError::NotRunning { state }) })
    }

    fn netcheck(&self) -> BackendFuture<'_, Result<crate::ipn::NetcheckReport, BackendError>> {
        // Without an engine there is no WireGuard socket and no DERP map to probe with.
        let state = Self::backend_state(&self.lock().prefs);
        Box::pin(async move { Err(BackendError::NotRunning { state }) })
    }

    fn shutdown(&self) -> BackendFuture<'_, ()> {
        // Nothing was configured in the OS, so there is nothing to undo.
        Box::pin(async {})
    }
}

/// This node as the placeholder knows it: keys and preferences, no addresses.
fn self_status(prefs: &Prefs, public_key: NodePublic) -> PeerStatus {
    PeerStatus {
        id: String::new(),
        public_key,
        name: String::new(),
        hostname: prefs.hostname.clone().unwrap_or_else(os_hostname),
        os: std::env::consts::OS.to_owned(),
        addresses: Vec::new(),
        online: false,
        path: Path::None,
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        tags: prefs.advertise_tags.clone(),
        exit_node: false,
        exit_node_option: false,
        primary_routes: prefs.routing.advertise_routes.clone(),
    }
}

/// The kernel's hostname, or `localhost` when it cannot be read.
pub fn os_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::AuthKey;

    fn backend(dir: &std::path::Path) -> PlaceholderBackend {
        let state = StateDir::open(dir).unwrap();
        let keys = state.load_or_create_keys().unwrap();
        PlaceholderBackend::new(state, Prefs::default(), keys)
    }

    #[tokio::test]
    async fn up_saves_prefs_but_not_the_auth_key_and_reports_the_missing_engine() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path());
        let req = UpRequest {
            auth_key: Some(AuthKey::new("tskey-auth-secret")),
            login_server: Some("https://control.example".into()),
            advertise_tags: vec!["tag:server".into()],
            ..Default::default()
        };
        let err = b.up(req).await.unwrap_err();
        assert_eq!(err.to_string(), ENGINE_MISSING);
        assert_eq!(err.http_status(), 501);

        let saved = std::fs::read_to_string(tmp.path().join("prefs.json")).unwrap();
        assert!(saved.contains("https://control.example"));
        assert!(!saved.contains("tskey-auth-secret"));
        let status = b.status().await;
        assert_eq!(status.backend_state, BackendState::NeedsLogin);
        assert_eq!(status.self_.tags, vec!["tag:server".to_owned()]);
    }

    #[tokio::test]
    async fn ping_and_whois_say_the_node_is_not_connected() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path());
        let err = b.ping("peer".into(), 3).await.unwrap_err();
        assert!(err.to_string().contains("agent up"), "{err}");
        assert_eq!(err.http_status(), 409);
        assert!(b.whois("100.64.0.1".parse().unwrap()).await.is_err());
    }
}
