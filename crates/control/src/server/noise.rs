//! `POST /ts2021`: the HTTP/1.1 upgrade into Noise, then HTTP/2 over the Noise stream.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::keys::{ChallengePublic, MachinePublic};
use proto::noise::EarlyPayload;

use super::Shared;

/// How often an idle Noise connection is pinged (HTTP/2 PING).
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
/// A connection whose PING is not acknowledged within this is closed, ending its map session.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The oldest client capability version we serve (Tailscale v1.50-era clients and newer).
pub const MIN_CAPABILITY_VERSION: u16 = 68;

const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
const HANDSHAKE_HEADER: &str = "x-tailscale-handshake";

/// What every request on one Noise connection knows: who is on the other end.
#[derive(Clone)]
pub struct NoiseConn {
    pub shared: Arc<Shared>,
    pub machine: MachinePublic,
    #[allow(dead_code)]
    pub version: u16,
}

pub async fn upgrade(State(shared): State<Arc<Shared>>, mut req: Request) -> Response {
    let upgrade_ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !upgrade_ok {
        return (
            StatusCode::BAD_REQUEST,
            "expected Upgrade: tailscale-control-protocol\n",
        )
            .into_response();
    }
    let Some(init) = req
        .headers()
        .get(HANDSHAKE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
    else {
        return (
            StatusCode::BAD_REQUEST,
            "missing or invalid X-Tailscale-Handshake header\n",
        )
            .into_response();
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::BAD_REQUEST, "connection cannot be upgraded\n").into_response();
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "ts2021 upgrade failed");
                return;
            }
        };
        serve_noise(shared, TokioIo::new(upgraded), init).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp
}

async fn serve_noise<T>(shared: Arc<Shared>, io: T, init: Vec<u8>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A fresh challenge key per connection, as Tailscale's server sends; clients may ignore it.
    let challenge = proto::keys::NodePrivate::generate(&mut rand_core::OsRng).public();
    let early = EarlyPayload::new(ChallengePublic::from_bytes(*challenge.as_bytes()));
    let (stream, machine, version) =
        match proto::noise::server_accept(io, &shared.noise_key, &init, Some(early)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(error = %e, "ts2021 handshake refused");
                return;
            }
        };
    if version < MIN_CAPABILITY_VERSION {
        tracing::info!(version, "client too old");
        return;
    }
    tracing::debug!(machine = %machine.short(), version, "noise session established");
    let shutdown = shared.shutdown.clone();
    let conn = NoiseConn {
        shared,
        machine,
        version,
    };
    let app = super::machine::router(conn);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(1000)
        // HTTP/2 PINGs find clients that vanished without closing their TCP connection (a cut
        // link, a NAT that dropped its state): without them a map session to a dead node would
        // stay "online", and its subnet routes primary, until the kernel gave up on the socket.
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "noise connection ended");
            }
        }
        // Dropping the connection closes it: clients notice and reconnect elsewhere or later.
        _ = shutdown.cancelled() => {}
    }
}
