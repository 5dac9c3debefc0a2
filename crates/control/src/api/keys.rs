//! Keys: `GET/POST /tailnet/{t}/keys` and `GET/DELETE /tailnet/{t}/keys/{keyId}`.
//!
//! Like Tailscale, one endpoint serves auth keys (for devices) and API keys (for this API),
//! told apart by `keyType`. The create body is Tailscale's
//! (`{"capabilities":{"devices":{"create":{…}}},"expirySeconds":N,"description":…}`) plus two
//! extensions: `"keyType":"api"` mints an API key, `"user"` binds an auth key to a user, and
//! `"neverExpires":true` drops the expiry. The secret is in the answer to its creation only.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use chrono::{Duration, Utc};
use http::StatusCode;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::views::{self, KeyCapabilities, KeyInfo};
use super::{ApiError, Caller, parse_json};
use crate::model::Timestamp;
use crate::server::Shared;
use crate::state::{Actor, AuthKeyOptions, Tailnet};

/// Key lifetime when the request names none (Tailscale's default).
pub const DEFAULT_EXPIRY: Duration = Duration::days(90);

/// The body of `POST /tailnet/{t}/keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateKeyRequest {
    #[serde(default)]
    pub capabilities: KeyCapabilities,
    /// Lifetime in seconds; absent or 0 means [`DEFAULT_EXPIRY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_seconds: Option<i64>,
    #[serde(default)]
    pub description: String,
    /// Extension: `auth` (default) or `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// Extension: the login name that owns devices registered with an untagged auth key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extension: the key never expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub never_expires: bool,
}

fn expiry(req: &CreateKeyRequest) -> Result<Option<Duration>, ApiError> {
    if req.never_expires {
        return Ok(None);
    }
    match req.expiry_seconds {
        None | Some(0) => Ok(Some(DEFAULT_EXPIRY)),
        Some(s) if s > 0 => Ok(Some(Duration::seconds(s))),
        Some(s) => Err(ApiError::bad_request(format!(
            "expirySeconds {s} must be positive"
        ))),
    }
}

/// Creates an auth key or API key; the answer holds the secret in `key`.
pub fn create(
    t: &mut Tailnet,
    req: CreateKeyRequest,
    actor: &Actor,
    now: Timestamp,
    rng: &mut impl Rng,
) -> Result<KeyInfo, ApiError> {
    let expiry = expiry(&req)?;
    match req.key_type.as_deref().unwrap_or("auth") {
        "auth" => {
            let c = req.capabilities.devices.create;
            let opts = AuthKeyOptions {
                user: req.user.filter(|u| !u.trim().is_empty()),
                reusable: c.reusable,
                ephemeral: c.ephemeral,
                preauthorized: c.preauthorized,
                tags: c.tags,
                expiry,
                description: req.description,
            };
            let (key, secret) = t.create_auth_key(opts, actor, now, rng)?;
            Ok(KeyInfo {
                key: Some(secret),
                ..views::auth_key(t, &key, now)
            })
        }
        "api" => {
            let (key, secret) = t.create_api_key(&req.description, expiry, actor, now, rng)?;
            Ok(KeyInfo {
                key: Some(secret),
                ..views::api_key(&key, now)
            })
        }
        other => Err(ApiError::bad_request(format!(
            "unknown keyType {other:?}: use \"auth\" or \"api\""
        ))),
    }
}

/// Auth keys then API keys; `all` includes revoked, expired and used-up ones.
pub fn list(t: &Tailnet, now: Timestamp, all: bool) -> Vec<KeyInfo> {
    t.auth_keys()
        .map(|k| views::auth_key(t, k, now))
        .chain(t.api_keys().map(|k| views::api_key(k, now)))
        .filter(|k| all || !k.invalid)
        .collect()
}

/// One key by its id.
pub fn get(t: &Tailnet, id: &str, now: Timestamp) -> Result<KeyInfo, ApiError> {
    list(t, now, true)
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "key {id} not found; see `control keys list --all` or `control apikeys list`"
            ))
        })
}

/// Revokes a key; returns how it looks now.
pub fn revoke(
    t: &mut Tailnet,
    id: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<KeyInfo, ApiError> {
    let k = get(t, id, now)?;
    if k.revoked.is_some() {
        return Ok(k);
    }
    if k.key_type == "api" {
        t.revoke_api_key(id, actor, now)?;
    } else {
        t.revoke_auth_key(id, actor, now)?;
    }
    get(t, id, now)
}

// ----- handlers -----

#[derive(Deserialize)]
pub(super) struct ListQuery {
    all: Option<String>,
}

pub(super) async fn list_keys(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(_tailnet): Path<String>,
    Query(q): Query<ListQuery>,
) -> Json<Value> {
    let all = q.all.as_deref().is_some_and(|a| a == "true" || a == "1");
    Json(json!({ "keys": list(&shared.lock().tailnet, Utc::now(), all) }))
}

pub(super) async fn post_key(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(_tailnet): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<KeyInfo>), ApiError> {
    let req: CreateKeyRequest = parse_json(&body)?;
    let info = create(
        &mut shared.lock().tailnet,
        req,
        &caller.actor(),
        Utc::now(),
        &mut rand::thread_rng(),
    )?;
    Ok((StatusCode::OK, Json(info)))
}

pub(super) async fn get_key(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path((_tailnet, id)): Path<(String, String)>,
) -> Result<Json<KeyInfo>, ApiError> {
    Ok(Json(get(&shared.lock().tailnet, &id, Utc::now())?))
}

pub(super) async fn delete_key(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path((_tailnet, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    revoke(&mut shared.lock().tailnet, &id, &caller.actor(), Utc::now())?;
    Ok(Json(json!({})))
}
