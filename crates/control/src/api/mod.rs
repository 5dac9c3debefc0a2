//! The admin REST API, shaped like Tailscale's API v2 and served under `/api/v2`.
//!
//! Every request needs an API key (`control apikeys create`) as a bearer token or as the basic
//! auth user name ([`auth`]). Any tailnet name in a path, `-` included, means this server's one
//! tailnet. Errors are `{"message": "..."}` with a fitting status ([`ApiError`]).
//!
//! | path | methods | module |
//! |---|---|---|
//! | `/tailnet/{t}/acl`, `/tailnet/{t}/acl/validate` | GET, POST / POST | [`acl`] |
//! | `/tailnet/{t}/devices`, `/device/{id}` (+ `/authorized`, `/tags`, `/routes`, `/key`, `/name`, `/expire`) | GET, DELETE, POST | [`devices`] |
//! | `/tailnet/{t}/keys`, `/tailnet/{t}/keys/{keyId}` | GET, POST / GET, DELETE | [`keys`] |
//! | `/tailnet/{t}/users`, `/users/{id}`, `/users/{id}/delete` | GET (POST) / GET (DELETE) / POST | [`users`] |
//! | `/tailnet/{t}/logging/configuration` | GET | [`logs`] |
//!
//! Each resource module exposes its operations as plain functions on a locked
//! [`crate::state::Tailnet`] (taking `now` and an actor), which the handlers wrap; the admin CLI
//! calls the same functions when it works on the database directly. The JSON shapes live in
//! [`views`]. See `docs/design/admin-api.md`.

pub mod acl;
mod auth;
pub mod devices;
mod error;
pub mod keys;
pub mod logs;
pub mod presence;
pub mod users;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use auth::Caller;
pub use error::{ApiError, parse_json};

use crate::server::Shared;

/// The `/api/v2` routes. Also starts the presence-file writer (see [`presence`]).
pub fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    presence::spawn_writer(&shared);
    Router::new()
        .route(
            "/tailnet/{tailnet}/acl",
            get(acl::get_acl).post(acl::post_acl),
        )
        .route("/tailnet/{tailnet}/acl/validate", post(acl::post_validate))
        .route("/tailnet/{tailnet}/devices", get(devices::list_devices))
        .route(
            "/device/{id}",
            get(devices::get_device).delete(devices::delete_device),
        )
        .route("/device/{id}/authorized", post(devices::post_authorized))
        .route("/device/{id}/tags", post(devices::post_tags))
        .route(
            "/device/{id}/routes",
            get(devices::get_routes).post(devices::post_routes),
        )
        .route("/device/{id}/key", post(devices::post_key))
        .route("/device/{id}/name", post(devices::post_name))
        .route("/device/{id}/expire", post(devices::post_expire))
        .route(
            "/tailnet/{tailnet}/keys",
            get(keys::list_keys).post(keys::post_key),
        )
        .route(
            "/tailnet/{tailnet}/keys/{key_id}",
            get(keys::get_key).delete(keys::delete_key),
        )
        .route(
            "/tailnet/{tailnet}/users",
            get(users::list_users).post(users::post_user),
        )
        .route(
            "/users/{id}",
            get(users::get_user).delete(users::delete_user),
        )
        .route("/users/{id}/delete", post(users::delete_user))
        .route(
            "/tailnet/{tailnet}/logging/configuration",
            get(logs::get_logs),
        )
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API endpoint; see docs/design/admin-api.md")
}
