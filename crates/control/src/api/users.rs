//! Users: `GET /tailnet/{t}/users`, `GET /users/{id}`, `POST /users/{id}/delete`.
//!
//! Tailscale's users come from an identity provider, so its API has no "create user"; ours
//! live in this server, so `POST /tailnet/{t}/users` (`{"loginName": …, "displayName": …}`) is
//! an extension, as is `DELETE /users/{id}`. Deleting a user deletes its devices and revokes
//! its auth keys. A user is named by its numeric id or its login name.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::views::{self, Device, UserInfo};
use super::{ApiError, Caller, parse_json};
use crate::model::{Timestamp, User};
use crate::server::Shared;
use crate::state::{Actor, Tailnet};

/// Finds a user by id or login name.
pub fn find<'a>(t: &'a Tailnet, what: &str) -> Result<&'a User, ApiError> {
    let what = what.trim();
    let by_id = what
        .parse::<i64>()
        .ok()
        .and_then(|id| t.user(crate::model::UserId(id)));
    by_id.or_else(|| t.user_by_login(what)).ok_or_else(|| {
        ApiError::not_found(format!("user {what} not found; see `control users list`"))
    })
}

/// Every user, ordered by id.
pub fn list(t: &Tailnet, now: Timestamp) -> Vec<UserInfo> {
    t.users().map(|u| views::user(t, u, now)).collect()
}

/// One user.
pub fn get(t: &Tailnet, what: &str, now: Timestamp) -> Result<UserInfo, ApiError> {
    Ok(views::user(t, find(t, what)?, now))
}

/// The body of `POST /tailnet/{t}/users` (extension).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateUserRequest {
    pub login_name: String,
    #[serde(default)]
    pub display_name: String,
}

/// Creates a user.
pub fn create(
    t: &mut Tailnet,
    req: &CreateUserRequest,
    actor: &Actor,
    now: Timestamp,
) -> Result<UserInfo, ApiError> {
    let login = req.login_name.trim();
    if t.user_by_login(login).is_some() {
        return Err(ApiError::conflict(format!("user {login} already exists")));
    }
    let u = t.create_user(login, req.display_name.trim(), actor, now)?;
    Ok(views::user(t, &u, now))
}

/// What a user deletion removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedUser {
    pub user: UserInfo,
    pub deleted_devices: Vec<Device>,
}

/// Deletes a user, its devices and its auth keys.
pub fn delete(
    t: &mut Tailnet,
    what: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<DeletedUser, ApiError> {
    let u = find(t, what)?.clone();
    let info = views::user(t, &u, now);
    let devices: Vec<Device> = t
        .nodes()
        .filter(|n| n.user_id == Some(u.id))
        .map(|n| views::device(t, n, now, false))
        .collect();
    t.delete_user(&u.login_name, actor, now)?;
    Ok(DeletedUser {
        user: info,
        deleted_devices: devices,
    })
}

// ----- handlers -----

pub(super) async fn list_users(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(_tailnet): Path<String>,
) -> Json<Value> {
    Json(json!({ "users": list(&shared.lock().tailnet, Utc::now()) }))
}

pub(super) async fn post_user(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(_tailnet): Path<String>,
    body: Bytes,
) -> Result<Json<UserInfo>, ApiError> {
    let req: CreateUserRequest = parse_json(&body)?;
    Ok(Json(create(
        &mut shared.lock().tailnet,
        &req,
        &caller.actor(),
        Utc::now(),
    )?))
}

pub(super) async fn get_user(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UserInfo>, ApiError> {
    Ok(Json(get(&shared.lock().tailnet, &id, Utc::now())?))
}

pub(super) async fn delete_user(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeletedUser>, ApiError> {
    Ok(Json(delete(
        &mut shared.lock().tailnet,
        &id,
        &caller.actor(),
        Utc::now(),
    )?))
}
