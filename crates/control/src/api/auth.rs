//! API-key authentication for `/api/v2`.
//!
//! Tailscale accepts the key as a bearer token (`Authorization: Bearer tskey-api-…`) or as the
//! user name of HTTP basic auth with an empty password (`curl -u tskey-api-…:`); so do we. A
//! handler that takes a [`Caller`] argument runs only for a valid, unrevoked, unexpired key,
//! and the caller's actor (`api:<key id>`) goes into the audit log of every change it makes.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use base64::Engine as _;
use chrono::Utc;
use http::request::Parts;

use super::ApiError;
use crate::server::Shared;
use crate::state::Actor;

/// An authenticated API caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The public id of the API key used.
    pub key_id: String,
}

impl Caller {
    /// The audit-log actor for changes made by this caller.
    pub fn actor(&self) -> Actor {
        Actor(format!("api:{}", self.key_id))
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing API key: send `Authorization: Bearer tskey-api-...` (create a key with `control apikeys create`)",
                )
            })?
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let token = token_from_header(header)?;
        let now = Utc::now();
        let key_id = shared.lock().tailnet.verify_api_key(&token, now);
        match key_id {
            Some(key_id) => Ok(Caller { key_id }),
            None if token.starts_with("tskey-auth-") => Err(ApiError::unauthorized(
                "this is an auth key (for devices), not an API key: create one with `control apikeys create`",
            )),
            None => Err(ApiError::unauthorized(
                "API key invalid, expired or revoked",
            )),
        }
    }
}

/// Extracts the key text from a `Bearer` or `Basic` Authorization header value.
fn token_from_header(value: &str) -> Result<String, ApiError> {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| ApiError::unauthorized("malformed basic auth credentials"))?;
        let text = String::from_utf8(raw)
            .map_err(|_| ApiError::unauthorized("malformed basic auth credentials"))?;
        // The key is the user name; the password is empty (or ignored).
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return Ok(user.to_string());
    }
    Err(ApiError::unauthorized(
        "unsupported Authorization scheme: use Bearer or Basic",
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic() {
        assert_eq!(
            token_from_header("Bearer tskey-api-k1-s").unwrap(),
            "tskey-api-k1-s"
        );
        assert_eq!(
            token_from_header("bearer  tskey-api-k1-s ").unwrap(),
            "tskey-api-k1-s"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("tskey-api-k1-s:");
        assert_eq!(
            token_from_header(&format!("Basic {basic}")).unwrap(),
            "tskey-api-k1-s"
        );
        assert!(token_from_header("Digest abc").is_err());
        assert!(token_from_header("Basic %%%").is_err());
    }
}
