//! The HTTP side of the server: `/key`, the ts2021 upgrade, `/machine/*` over Noise, the admin
//! API, and the background loops (refresh from the database, housekeeping).
//!
//! Flow of a client:
//! 1. `GET /key` returns the server's Noise public key.
//! 2. `POST /ts2021` with the Noise initiation in `X-Tailscale-Handshake` upgrades the HTTP/1.1
//!    connection; [`noise`] finishes the handshake and serves HTTP/2 over the Noise stream, with
//!    the client's machine key bound to every request on it.
//! 3. [`machine`] handles register, map (streaming sessions in [`poll`]) and update-health.

pub mod derp;
mod machine;
mod noise;
mod poll;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use chrono::Utc;
use http::StatusCode;
use proto::keys::{MachinePrivate, MachinePublic};
use proto::tailcfg::OverTlsPublicKeyResponse;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::mapper::{Cache, MapInputs};
use crate::model::ServerKeys;
use crate::state::Tailnet;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot load the tailnet: {0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DERP relay: {0}")]
    Derp(String),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
pub struct Shared {
    inner: Mutex<Inner>,
    noise_key: MachinePrivate,
    pub inputs: MapInputs,
    pub settings: Settings,
    /// Cancelled when the server stops: ends Noise connections and map sessions too.
    pub shutdown: CancellationToken,
}

/// The mutable part, behind one mutex that is never held across an `.await`.
pub struct Inner {
    pub tailnet: Tailnet,
    pub cache: Cache,
}

impl Shared {
    /// Locks the tailnet, first reloading it if another process wrote to the database.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = g.tailnet.refresh() {
            tracing::warn!(error = %e, "could not check the database for external changes");
        }
        g
    }

    /// The server's Noise public key.
    pub fn noise_public(&self) -> MachinePublic {
        self.noise_key.public()
    }
}

/// A running server.
pub struct Running {
    pub http_addr: SocketAddr,
    pub derp: Option<derp::Relay>,
    pub shared: Arc<Shared>,
    tasks: tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
}

impl Running {
    /// Waits until shutdown is requested and every task stopped.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
        if let Some(d) = self.derp.take() {
            d.shutdown().await;
        }
    }
}

/// Opens the store, starts DERP/STUN and the HTTP listener, and returns once all are bound.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<Running, ServerError> {
    let mut store = crate::store::sqlite::SqliteStore::open(&settings.db)?;
    let keys = {
        use crate::store::Store;
        store.server_keys(&mut || ServerKeys {
            noise: MachinePrivate::generate(&mut rand_core::OsRng),
            derp: proto::keys::NodePrivate::generate(&mut rand_core::OsRng),
        })?
    };
    let tailnet = Tailnet::load(Box::new(store), settings.tailnet.clone())?;

    let relay = derp::start(&settings, &keys).await?;
    let derp_map = derp::derp_map(&settings, relay.as_ref())?;
    let inputs = MapInputs::new(derp_map, &settings.dns, &settings.tailnet.base_domain);

    let listener = bind_listener(settings.listen).map_err(|source| ServerError::Listen {
        addr: settings.listen,
        source,
    })?;
    let http_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            tailnet,
            cache: Cache::default(),
        }),
        noise_key: keys.noise,
        inputs,
        settings,
        shutdown: shutdown.clone(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    let app = router(Arc::clone(&shared));
    let sd = shutdown.clone();
    tasks.spawn(async move {
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { sd.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tasks.spawn(housekeeping(Arc::clone(&shared), shutdown.clone()));
    tracing::info!(addr = %http_addr, url = %shared.settings.server_url, "control server listening");
    Ok(Running {
        http_addr,
        derp: relay,
        shared,
        tasks,
        shutdown,
    })
}

/// Binds the HTTP listener with kernel-level dead-peer detection that every accepted
/// connection inherits (Linux copies these options from the listening socket): TCP keepalive
/// probes after 20 s of silence (3 probes, 5 s apart) and a 35 s user timeout for unacknowledged
/// data. A node whose link vanished without a FIN or RST (cable pulled, power lost) then has its
/// connection, and so its map session, closed within about 35 s even if nothing is sent; the
/// HTTP/2 PINGs in `noise.rs` are the application-level half of the same check.
fn bind_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too, as `TcpListener::bind` would on Linux.
        let _ = socket.set_only_v6(false);
    }
    let keepalive = TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(20))
        .with_interval(std::time::Duration::from_secs(5))
        .with_retries(3);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(std::time::Duration::from_secs(35)))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/key", get(key))
        .route("/ts2021", any(noise::upgrade))
        .route("/health", get(|| async { "ok\n" }))
        .nest("/api/v2", crate::api::router(Arc::clone(&shared)))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(shared)
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    v: Option<i64>,
}

/// `GET /key?v=<capver>`: the server's Noise key.
async fn key(State(shared): State<Arc<Shared>>, Query(q): Query<KeyQuery>) -> Response {
    if q.v
        .is_some_and(|v| v < i64::from(noise::MIN_CAPABILITY_VERSION))
    {
        return (StatusCode::BAD_REQUEST, "client too old; upgrade it\n").into_response();
    }
    axum::Json(OverTlsPublicKeyResponse {
        legacy_public_key: MachinePublic::zero(),
        public_key: shared.noise_public(),
    })
    .into_response()
}

/// Reloads external database changes promptly and runs periodic clean-up.
async fn housekeeping(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut refresh = tokio::time::interval(std::time::Duration::from_millis(250));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Utc::now();
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = refresh.tick() => {}
        }
        let mut g = shared.lock();
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(4) {
            let now = Utc::now();
            if let Err(e) = g.tailnet.tick(now, last_tick) {
                tracing::warn!(error = %e, "housekeeping failed");
            }
            last_tick = now;
        }
    }
}
