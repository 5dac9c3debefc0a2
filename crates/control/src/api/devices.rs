//! Devices: `GET /tailnet/{t}/devices` and everything under `/device/{id}`.
//!
//! The `pub fn`s are the operations themselves, on a locked [`Tailnet`]; the admin CLI calls
//! them directly in database mode, and the handlers below wrap them for HTTP. A device is named
//! by its id, as in Tailscale; its MagicDNS name or a tailnet IP works too.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::views::{self, Device, DeviceRoutes};
use super::{ApiError, Caller, parse_json};
use crate::model::{Node, Timestamp};
use crate::server::Shared;
use crate::state::{Actor, Tailnet};

/// Finds a device by id, MagicDNS name or IP.
pub fn find<'a>(t: &'a Tailnet, what: &str) -> Result<&'a Node, ApiError> {
    t.find_node(what.trim()).ok_or_else(|| {
        ApiError::not_found(format!("node {what} not found; see `control nodes list`"))
    })
}

/// Every device, ordered by id.
pub fn list(t: &Tailnet, now: Timestamp, all: bool) -> Vec<Device> {
    t.nodes().map(|n| views::device(t, n, now, all)).collect()
}

/// One device.
pub fn get(t: &Tailnet, what: &str, now: Timestamp, all: bool) -> Result<Device, ApiError> {
    Ok(views::device(t, find(t, what)?, now, all))
}

/// Deletes a device; returns how it looked.
pub fn delete(
    t: &mut Tailnet,
    what: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<Device, ApiError> {
    let n = find(t, what)?;
    let view = views::device(t, n, now, false);
    let id = n.id;
    t.delete_node(id, actor, now)?;
    Ok(view)
}

/// Authorizes a device (device approval). De-authorizing is not supported yet.
pub fn authorize(
    t: &mut Tailnet,
    what: &str,
    authorized: bool,
    actor: &Actor,
    now: Timestamp,
) -> Result<(), ApiError> {
    let n = find(t, what)?;
    if !authorized {
        if !n.authorized {
            return Ok(());
        }
        return Err(ApiError::bad_request(
            "de-authorizing a device is not supported; delete it (`control nodes delete`) or expire its key instead",
        ));
    }
    let id = n.id;
    t.approve_node(id, actor, now)?;
    Ok(())
}

/// Replaces a device's tags.
pub fn set_tags(
    t: &mut Tailnet,
    what: &str,
    tags: Vec<String>,
    actor: &Actor,
    now: Timestamp,
) -> Result<(), ApiError> {
    let id = find(t, what)?.id;
    t.set_node_tags(id, tags, actor, now)?;
    Ok(())
}

/// Advertised and approved routes of a device.
pub fn routes(t: &Tailnet, what: &str) -> Result<DeviceRoutes, ApiError> {
    Ok(views::device_routes(find(t, what)?))
}

/// Replaces a device's approved ("enabled") routes.
pub fn set_routes(
    t: &mut Tailnet,
    what: &str,
    routes: &[String],
    actor: &Actor,
    now: Timestamp,
) -> Result<DeviceRoutes, ApiError> {
    let parsed = parse_routes(routes)?;
    let id = find(t, what)?.id;
    t.set_approved_routes(id, parsed, actor, now)?;
    routes_of(t, id)
}

fn routes_of(t: &Tailnet, id: crate::model::NodeId) -> Result<DeviceRoutes, ApiError> {
    t.node(id).map(views::device_routes).ok_or_else(|| {
        ApiError::not_found(format!("node {id} not found; see `control nodes list`"))
    })
}

/// Parses route prefixes (`10.0.0.0/24`; a bare address means a host route).
pub fn parse_routes(routes: &[String]) -> Result<Vec<IpNet>, ApiError> {
    routes
        .iter()
        .map(|r| {
            let r = r.trim();
            r.parse::<IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid route {r:?}: use a prefix like 10.0.0.0/24"
                    ))
                })
        })
        .collect()
}

/// Disables (`true`) or re-enables (`false`) key expiry. Re-enabling starts a fresh lifetime
/// from now (the server's `--node-key-expiry`), since the old expiry time is not kept.
pub fn set_key_expiry_disabled(
    t: &mut Tailnet,
    what: &str,
    disabled: bool,
    actor: &Actor,
    now: Timestamp,
) -> Result<(), ApiError> {
    let n = find(t, what)?;
    let id = n.id;
    let expiry = if disabled {
        None
    } else if let Some(e) = n.key_expiry {
        // Already expiring: leave the current time alone.
        Some(e)
    } else {
        t.config().node_key_expiry.map(|d| now + d)
    };
    if expiry != n.key_expiry {
        t.set_node_expiry(id, expiry, actor, now)?;
    }
    Ok(())
}

/// Expires a device's key now; the device must log in again.
pub fn expire(t: &mut Tailnet, what: &str, actor: &Actor, now: Timestamp) -> Result<(), ApiError> {
    let id = find(t, what)?.id;
    t.set_node_expiry(id, Some(now), actor, now)?;
    Ok(())
}

/// Renames a device (its MagicDNS label). A full name in this tailnet's domain is accepted.
pub fn rename(
    t: &mut Tailnet,
    what: &str,
    name: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<Device, ApiError> {
    let id = find(t, what)?.id;
    let suffix = format!(".{}", t.config().base_domain);
    let name = name.trim().trim_end_matches('.');
    let name = name
        .strip_suffix(suffix.as_str())
        .unwrap_or(name)
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err(ApiError::bad_request("a new name is required"));
    }
    if let Some(other) = t.nodes().find(|n| n.id != id && n.given_name == name) {
        return Err(ApiError::conflict(format!(
            "name {name} is already used by node {}",
            other.id
        )));
    }
    t.rename_node(id, &name, actor, now)?;
    let n = t
        .node(id)
        .ok_or_else(|| ApiError::not_found(format!("node {id} not found")))?;
    Ok(views::device(t, n, now, false))
}

// ----- handlers -----

#[derive(Deserialize)]
pub(super) struct FieldsQuery {
    fields: Option<String>,
}

impl FieldsQuery {
    fn all(&self) -> bool {
        self.fields
            .as_deref()
            .is_some_and(|f| f.split(',').any(|f| f.trim() == "all"))
    }
}

pub(super) async fn list_devices(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(_tailnet): Path<String>,
    Query(q): Query<FieldsQuery>,
) -> Json<Value> {
    let g = shared.lock();
    Json(json!({ "devices": list(&g.tailnet, Utc::now(), q.all()) }))
}

pub(super) async fn get_device(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FieldsQuery>,
) -> Result<Json<Device>, ApiError> {
    let g = shared.lock();
    Ok(Json(get(&g.tailnet, &id, Utc::now(), q.all())?))
}

pub(super) async fn delete_device(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    delete(&mut shared.lock().tailnet, &id, &caller.actor(), Utc::now())?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct AuthorizedBody {
    authorized: Option<bool>,
}

pub(super) async fn post_authorized(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: AuthorizedBody = parse_json(&body)?;
    authorize(
        &mut shared.lock().tailnet,
        &id,
        b.authorized.unwrap_or(true),
        &caller.actor(),
        Utc::now(),
    )?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct TagsBody {
    tags: Vec<String>,
}

pub(super) async fn post_tags(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: TagsBody = parse_json(&body)?;
    set_tags(
        &mut shared.lock().tailnet,
        &id,
        b.tags,
        &caller.actor(),
        Utc::now(),
    )?;
    Ok(Json(json!({})))
}

pub(super) async fn get_routes(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceRoutes>, ApiError> {
    Ok(Json(routes(&shared.lock().tailnet, &id)?))
}

#[derive(Deserialize)]
struct RoutesBody {
    routes: Vec<String>,
}

pub(super) async fn post_routes(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<DeviceRoutes>, ApiError> {
    let b: RoutesBody = parse_json(&body)?;
    Ok(Json(set_routes(
        &mut shared.lock().tailnet,
        &id,
        &b.routes,
        &caller.actor(),
        Utc::now(),
    )?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyBody {
    key_expiry_disabled: Option<bool>,
}

pub(super) async fn post_key(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: KeyBody = parse_json(&body)?;
    let mut g = shared.lock();
    match b.key_expiry_disabled {
        Some(disabled) => {
            set_key_expiry_disabled(&mut g.tailnet, &id, disabled, &caller.actor(), Utc::now())?
        }
        // An empty body changes nothing, as in Tailscale; the device must still exist.
        None => {
            find(&g.tailnet, &id)?;
        }
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

pub(super) async fn post_name(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: NameBody = parse_json(&body)?;
    rename(
        &mut shared.lock().tailnet,
        &id,
        &b.name,
        &caller.actor(),
        Utc::now(),
    )?;
    Ok(Json(json!({})))
}

pub(super) async fn post_expire(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    expire(&mut shared.lock().tailnet, &id, &caller.actor(), Utc::now())?;
    Ok(Json(json!({})))
}
