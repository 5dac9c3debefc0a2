//! `agent daemon`: the long-running service. It opens the state directory, builds the
//! [`Backend`], serves the local API on a Unix socket until SIGTERM or SIGINT, and then lets the
//! backend undo its OS changes.
//!
//! Start-up order matters to systemd (`Type=notify`): state is loaded and the socket is
//! listening before `READY=1` is sent, so `systemctl start agent` returns only once the CLI can
//! connect, and a damaged state file fails the start instead of a later request.
//!
//! - [`state`]: `prefs.json` and `keys.json` in the state directory.
//! - [`backend`]: the [`Backend`] trait (the engine seam; the daemon runs
//!   [`crate::runtime::EngineBackend`]) and the engine-less [`PlaceholderBackend`].
//! - [`socket`]: creating the socket file with the right mode and group.
//! - [`localapi`]: the HTTP/1.1 server that maps requests to backend calls.

pub mod backend;
pub mod localapi;
pub mod socket;
pub mod state;

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

pub use backend::{Backend, BackendError, BackendFuture, PlaceholderBackend};
use socket::SocketError;
use state::{Keys, Prefs, StateDir, StateError};

/// Where the daemon keeps prefs and keys unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agent";
/// Where the daemon listens and the CLI connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/agent/agent.sock";
/// The TUN interface name unless told otherwise.
pub const DEFAULT_TUN: &str = "agent0";
/// The WireGuard UDP port unless told otherwise (Tailscale's default, so firewall rules written
/// for it apply).
pub const DEFAULT_PORT: u16 = 41641;

/// Everything `agent daemon` is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Holds `prefs.json` and `keys.json`; created with mode 0700.
    pub state_dir: PathBuf,
    /// The local API socket.
    pub socket: PathBuf,
    /// An extra group allowed to use the socket (root always can).
    pub socket_group: Option<String>,
    /// The TUN interface to create.
    pub tun: String,
    /// The UDP port for WireGuard and disco; 0 picks a free one.
    pub port: u16,
}

/// Why the daemon could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A command-line value is unusable.
    #[error("{0}")]
    Config(String),
    /// The state directory or a state file is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The local API socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

impl DaemonError {
    /// The process exit status: 78 (`EX_CONFIG` from sysexits.h) when only a human can fix the
    /// problem, so that systemd's `RestartPreventExitStatus=78` stops a restart loop; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::State(StateError::Corrupt { .. }) => 78,
            _ => 1,
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Must be called inside a tokio runtime.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    validate_tun_name(&config.tun)?;
    // Installed first, so that a SIGTERM arriving during start-up still stops us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let state = StateDir::open(&config.state_dir)?;
    let prefs = state.load_prefs()?;
    let keys = state.load_or_create_keys()?;
    tracing::info!(
        state_dir = %config.state_dir.display(),
        node_key = %keys.node_private.public(),
        want_running = prefs.want_running,
        "state loaded"
    );
    let backend = make_backend(&config, state, prefs, keys).await?;

    let listener = socket::bind(&config.socket, config.socket_group.as_deref())?;
    tracing::info!(socket = %config.socket.display(), "local API listening");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);

    let shutdown = async {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    };
    localapi::serve(listener, Arc::clone(&backend), shutdown).await;

    notify(&[sd_notify::NotifyState::Stopping]);
    // The socket goes first, so that a CLI run during shutdown hears "not running" at once.
    socket::remove(&config.socket);
    backend.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Builds the backend the local API talks to. This is the one place that changes when the
/// engine driver is ready: construct it from `config` (TUN name, port), `prefs` and `keys`, and
/// return its handle here.
async fn make_backend(
    config: &DaemonConfig,
    state: StateDir,
    prefs: Prefs,
    keys: Keys,
) -> Result<Arc<dyn Backend>, DaemonError> {
    let cfg = crate::runtime::RuntimeConfig {
        tun: config.tun.clone(),
        port: config.port,
    };
    let backend = crate::runtime::EngineBackend::start(cfg, state, prefs, keys)
        .await
        .map_err(|e| DaemonError::Config(format!("cannot bind UDP port {}: {e}", config.port)))?;
    Ok(Arc::new(backend))
}

/// Sets up `tracing` for the daemon: `RUST_LOG` filters (default `info`), colours only on a
/// terminal, and no timestamps under journald, which stamps lines itself.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal());
    // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    let res = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // Fails only if a subscriber is already installed (e.g. by a test), which is fine.
    drop(res);
}

/// Tells systemd about a state change. Without systemd (no `NOTIFY_SOCKET`) this does nothing.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Linux interface names are at most 15 bytes and cannot contain '/', ':' or whitespace.
fn validate_tun_name(name: &str) -> Result<(), DaemonError> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if name.is_empty() || name.len() > 15 || bad_char || name == "." || name == ".." {
        return Err(DaemonError::Config(format!(
            "TUN name {name:?} is not a valid interface name (1-15 characters, no '/', ':' \
             or spaces)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tun_names() {
        assert!(validate_tun_name(DEFAULT_TUN).is_ok());
        assert!(validate_tun_name("tailscale0").is_ok());
        for bad in ["", "a-very-long-interface-name", "a/b", "a b", ".."] {
            assert!(validate_tun_name(bad).is_err(), "{bad:?}");
        }
    }
}
