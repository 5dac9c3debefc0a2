//! Streaming map sessions: the first full map, then deltas whenever the tailnet changes, and
//! keep-alives well inside the client's 120-second watchdog.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use chrono::Utc;
use proto::tailcfg::MapResponse;
use rand::Rng;

use super::Shared;
use crate::mapper::{self, NetMap};
use crate::model::NodeId;

/// Idle time before a keep-alive (plus up to 9 s of jitter), as Tailscale's servers do.
const KEEPALIVE: Duration = Duration::from_secs(50);

fn encode(resp: &MapResponse) -> Option<Bytes> {
    let json = serde_json::to_vec(resp).ok()?;
    let mut out = Vec::with_capacity(json.len() / 3 + 8);
    match proto::mapframe::encode(&json, &mut out) {
        Ok(()) => Some(Bytes::from(out)),
        Err(e) => {
            tracing::error!(error = %e, "could not encode map frame");
            None
        }
    }
}

fn build(shared: &Shared, id: NodeId) -> Option<NetMap> {
    let now = Utc::now();
    let mut g = shared.lock();
    let inner = &mut *g;
    mapper::build(
        &mut inner.tailnet,
        &mut inner.cache,
        &shared.inputs,
        id,
        now,
    )
}

/// A single framed full map (non-streaming request).
pub fn one_shot(shared: &Shared, id: NodeId) -> Option<Bytes> {
    let m = build(shared, id)?;
    encode(&mapper::full(&m, Utc::now()))
}

/// Starts a streaming session for `id` and returns the response whose body it feeds.
pub fn stream(shared: Arc<Shared>, id: NodeId) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut changes = {
            let mut g = shared.lock();
            g.tailnet.session_started(id);
            g.tailnet.subscribe()
        };
        run(&shared, id, &tx, &mut changes).await;
        shared.lock().tailnet.session_ended(id, Utc::now());
        tracing::debug!(node = %id, "map session ended");
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

async fn run(
    shared: &Shared,
    id: NodeId,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    changes: &mut tokio::sync::watch::Receiver<u64>,
) {
    changes.mark_unchanged();
    let Some(mut sent) = build(shared, id) else {
        return;
    };
    let Some(first) = encode(&mapper::full(&sent, Utc::now())) else {
        return;
    };
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    tracing::debug!(node = %id, peers = sent.peers.len(), "sent full map");
    loop {
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..9000));
        tokio::select! {
            _ = tx.closed() => return,
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(KEEPALIVE + jitter) => {
                let Some(ka) = encode(&MapResponse { keep_alive: true, control_time: Some(Utc::now()), ..Default::default() }) else { return };
                if tx.send(Ok(ka)).await.is_err() {
                    return;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(next) = build(shared, id) else {
                    // The node was deleted: end the stream so that the client notices.
                    return;
                };
                if let Some(d) = mapper::delta(&sent, &next, Utc::now()) {
                    let Some(bytes) = encode(&d) else { return };
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                sent = next;
            }
        }
    }
}

/// Adapts an mpsc receiver into a body stream.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
