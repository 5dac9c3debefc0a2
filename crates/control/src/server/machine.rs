//! `/machine/*` over Noise: register, map, update-health.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use http::StatusCode;
use proto::tailcfg::{self, MapRequest, RegisterRequest, RegisterResponse};

use super::noise::NoiseConn;
use crate::state::RegisterInput;

/// Largest request body we read (the Go server uses the same limit).
const MAX_BODY: usize = 1 << 20;

pub fn router(conn: NoiseConn) -> Router {
    Router::new()
        .route("/machine/register", post(register))
        .route("/machine/map", post(map))
        .route("/machine/update-health", post(|| async { StatusCode::OK }))
        .fallback(|| async {
            (
                StatusCode::NOT_IMPLEMENTED,
                "not implemented by this server\n",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(conn)
}

/// Parses a JSON object body. serde would also accept an array for a struct; clients never
/// send one, so it is refused like any other malformed body.
fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(format!("invalid {what}: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid {what}: {e}"))
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

async fn register(State(conn): State<NoiseConn>, body: Bytes) -> Response {
    let req: RegisterRequest = match parse_object(&body, "RegisterRequest") {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    if req.version > 0 && req.version < i32::from(super::noise::MIN_CAPABILITY_VERSION) {
        return bad_request("client too old; upgrade it");
    }
    let input = RegisterInput {
        node_key: req.node_key,
        old_node_key: req.old_node_key,
        auth_key: req
            .auth
            .as_ref()
            .map(|a| a.auth_key.clone())
            .filter(|k| !k.is_empty()),
        expiry: req.expiry,
        hostinfo: req
            .hostinfo
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok())
            .unwrap_or_else(|| serde_json::json!({})),
        ephemeral: req.ephemeral,
    };
    let now = Utc::now();
    let outcome = {
        let mut g = conn.shared.lock();
        g.tailnet
            .register(conn.machine, input, now, &mut rand::thread_rng())
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "registration failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    let (user, login) = match &outcome.user {
        Some(u) => (
            tailcfg::User {
                id: tailcfg::UserId(u.id.0),
                display_name: u.display_name.clone(),
                created: Some(u.created),
                ..Default::default()
            },
            tailcfg::Login {
                id: tailcfg::LoginId(u.id.0),
                login_name: u.login_name.clone(),
                display_name: u.display_name.clone(),
                ..Default::default()
            },
        ),
        None => (
            tailcfg::User {
                id: tailcfg::UserId(crate::mapper::TAGGED_DEVICES_USER),
                display_name: "Tagged Devices".into(),
                ..Default::default()
            },
            tailcfg::Login {
                id: tailcfg::LoginId(crate::mapper::TAGGED_DEVICES_USER),
                login_name: "tagged-devices".into(),
                display_name: "Tagged Devices".into(),
                ..Default::default()
            },
        ),
    };
    let resp = RegisterResponse {
        user,
        login,
        node_key_expired: outcome.node_key_expired,
        machine_authorized: outcome.machine_authorized,
        error: outcome.error,
        ..Default::default()
    };
    axum::Json(resp).into_response()
}

async fn map(State(conn): State<NoiseConn>, body: Bytes) -> Response {
    let req: MapRequest = match parse_object(&body, "MapRequest") {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    let now = Utc::now();
    let hostinfo = req
        .hostinfo
        .as_ref()
        .and_then(|h| serde_json::to_value(h).ok());
    let endpoints = (!req.endpoints.is_empty() || !req.stream)
        .then(|| req.endpoints.iter().map(ToString::to_string).collect());
    let node_id = {
        let mut g = conn.shared.lock();
        g.tailnet.update_from_map_request(
            conn.machine,
            req.node_key,
            Some(req.disco_key),
            endpoints,
            hostinfo,
            now,
        )
    };
    let node_id = match node_id {
        Ok(id) => id,
        Err(e) => {
            tracing::info!(error = %e, "map request refused");
            return (StatusCode::UNAUTHORIZED, format!("{e}\n")).into_response();
        }
    };
    if !req.stream && req.omit_peers {
        // A "lite" update: the client ignores the body.
        return StatusCode::OK.into_response();
    }
    if !req.stream {
        return match super::poll::one_shot(&conn.shared, node_id) {
            Some(bytes) => Response::new(Body::from(bytes)),
            None => (StatusCode::NOT_FOUND, "node not found\n").into_response(),
        };
    }
    super::poll::stream(conn.shared, node_id)
}
