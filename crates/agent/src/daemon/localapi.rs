//! The local API server: HTTP/1.1 on the daemon's Unix socket, JSON in and out (types in
//! [`crate::ipn`]), one [`Backend`] call per request.
//!
//! [`serve`] accepts connections until its shutdown future resolves, then gives requests in
//! flight a short grace period. Access control is the socket file's mode and group: whoever can
//! connect may use every endpoint, as with Tailscale's socket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

use super::backend::{Backend, BackendError};
use crate::ipn::{
    API_PREFIX, ApiError, MAX_PING_COUNT, OkReply, UpRequest, VersionInfo, parse_whois_addr,
};

/// Requests are small JSON documents; anything bigger is a client bug or abuse.
const MAX_BODY: usize = 64 * 1024;

/// How long requests in flight may run on after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves the local API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let backend = Arc::clone(&backend);
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(req, Arc::clone(&backend)));
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "local API connection ended with an error");
                        }
                    });
                }
                // Running out of file descriptors is transient; back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a local API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::debug!("aborting local API requests still running at shutdown");
        conns.abort_all();
    }
}

async fn handle(
    req: Request<Incoming>,
    backend: Arc<dyn Backend>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = route(req, backend.as_ref()).await.unwrap_or_else(|(status, message)| {
        if status.is_server_error() {
            tracing::warn!(%method, %path, %status, error = %message, "local API request failed");
        } else {
            tracing::debug!(%method, %path, %status, error = %message, "local API request refused");
        }
        json_response(status, &ApiError { error: message })
    });
    Ok(resp)
}

type Failure = (StatusCode, String);

async fn route(
    req: Request<Incoming>,
    backend: &dyn Backend,
) -> Result<Response<Full<Bytes>>, Failure> {
    let Some(endpoint) = req.uri().path().strip_prefix(API_PREFIX).map(str::to_owned) else {
        return Err(not_found(req.uri().path()));
    };
    let query = query_map(req.uri().query());
    match (endpoint.as_str(), req.method()) {
        ("status", &Method::GET) => ok(&backend.status().await),
        ("version", &Method::GET) => ok(&VersionInfo::current()),
        ("up", &Method::POST) => {
            let up: UpRequest = read_json(req).await?;
            up.validate().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
            ok(&backend.up(up).await.map_err(backend_failure)?)
        }
        ("down", &Method::POST) => {
            backend.down().await.map_err(backend_failure)?;
            ok(&OkReply { ok: true })
        }
        ("logout", &Method::POST) => {
            backend.logout().await.map_err(backend_failure)?;
            ok(&OkReply { ok: true })
        }
        ("ping", &Method::GET) => {
            let (target, count) = ping_params(&query)?;
            ok(&backend.ping(target, count).await.map_err(backend_failure)?)
        }
        ("netcheck", &Method::GET) => ok(&backend.netcheck().await.map_err(backend_failure)?),
        ("netcheck", _) => Err(wrong_method(&endpoint, "GET")),
        ("whois", &Method::GET) => {
            let addr = whois_param(&query)?;
            ok(&backend.whois(addr).await.map_err(backend_failure)?)
        }
        ("dns/status", &Method::GET) => ok(&backend.dns_status().await.map_err(backend_failure)?),
        ("dns/query", &Method::GET) => {
            let (name, qtype) = dns_query_params(&query)?;
            ok(&backend
                .dns_query(name, qtype)
                .await
                .map_err(backend_failure)?)
        }
        ("dns/status" | "dns/query", _) => Err(wrong_method(&endpoint, "GET")),
        ("status" | "version" | "ping" | "whois", _) => Err(wrong_method(&endpoint, "GET")),
        ("up" | "down" | "logout", _) => Err(wrong_method(&endpoint, "POST")),
        _ => Err(not_found(req.uri().path())),
    }
}

fn ok<T: Serialize>(value: &T) -> Result<Response<Full<Bytes>>, Failure> {
    Ok(json_response(StatusCode::OK, value))
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        // Our own types always serialize; this only guards against a future bug.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"cannot encode the answer: {e}\"}}").into_bytes(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Failure> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid JSON request body: {e}"),
        )
    })
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn ping_params(query: &HashMap<String, String>) -> Result<(String, u32), Failure> {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
    let target = query
        .get("target")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("ping needs a target: a peer name or tailnet IP".to_owned()))?;
    let count = match query.get("count") {
        None => 1,
        Some(c) => c
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PING_COUNT).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "ping count {c:?} must be between 1 and {MAX_PING_COUNT}"
                ))
            })?,
    };
    Ok((target.clone(), count))
}

fn whois_param(query: &HashMap<String, String>) -> Result<IpAddr, Failure> {
    let addr = query
        .get("addr")
        .ok_or_else(|| (StatusCode::BAD_REQUEST, "whois needs addr=IP".to_owned()))?;
    parse_whois_addr(addr).map_err(|e| (StatusCode::BAD_REQUEST, e))
}

/// `dns/query?name=NAME&type=TYPE` (type defaults to A).
fn dns_query_params(query: &HashMap<String, String>) -> Result<(String, String), Failure> {
    let name = query
        .get("name")
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "dns query needs a name (e.g. `agent dns query monitoring`)".to_owned(),
            )
        })?;
    let qtype = query
        .get("type")
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| "A".to_owned());
    Ok((name.trim().to_owned(), qtype))
}

fn backend_failure(e: BackendError) -> Failure {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, e.to_string())
}

fn not_found(path: &str) -> Failure {
    (
        StatusCode::NOT_FOUND,
        format!("unknown local API path {path:?}; is the CLI newer than the daemon?"),
    )
}

fn wrong_method(endpoint: &str, want: &str) -> Failure {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        format!("use {want} for {API_PREFIX}{endpoint}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_params_default_and_limits() {
        let q = query_map(Some("target=web%2D1.example.ts.net"));
        assert_eq!(
            ping_params(&q).unwrap(),
            ("web-1.example.ts.net".to_owned(), 1)
        );
        let q = query_map(Some("target=100.64.0.2&count=5"));
        assert_eq!(ping_params(&q).unwrap().1, 5);
        for bad in [
            "target=x&count=0",
            "target=x&count=101",
            "target=x&count=ten",
            "count=3",
        ] {
            let err = ping_params(&query_map(Some(bad))).unwrap_err();
            assert_eq!(err.0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn whois_param_parses_ipv6_with_port() {
        let q = query_map(Some("addr=%5Bfd7a%3A%3A1%5D%3A22"));
        assert_eq!(
            whois_param(&q).unwrap(),
            "fd7a::1".parse::<IpAddr>().unwrap()
        );
        assert!(whois_param(&query_map(Some("addr=nope"))).is_err());
    }

    #[test]
    fn errors_are_json_objects() {
        let resp = json_response(StatusCode::NOT_FOUND, &ApiError { error: "x".into() });
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
