//! The admin API's error type: an HTTP status plus a message a person can act on.
//!
//! Every failure leaves the server as `{"message": "..."}` (plus `data` for policy test
//! failures), the shape Tailscale's API v2 uses. The same type is what the admin CLI prints in
//! database mode, so a message reads the same whether it came over HTTP or not.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::Value;

use crate::state::StateError;
use crate::store::StoreError;

/// A refused or failed admin request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Extra detail (Tailscale puts failing ACL tests here).
    pub data: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            data: None,
        }
    }

    /// 400: the request is malformed or breaks a rule.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no or a wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404: the named object does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the object already exists.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 412: `If-Match` names a version that is no longer current.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, message)
    }

    /// 500: something broke on the server side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The JSON body sent to clients.
    pub fn body(&self) -> Value {
        let mut body = serde_json::json!({ "message": self.message });
        if let (Some(data), Some(obj)) = (&self.data, body.as_object_mut()) {
            obj.insert("data".into(), data.clone());
        }
        body
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let message = e.to_string();
        match e {
            StateError::NotFound(_) => Self::not_found(message),
            StateError::Invalid(_) | StateError::Policy(_) => Self::bad_request(message),
            StateError::Store(StoreError::Conflict(_)) => Self::conflict(message),
            StateError::Store(StoreError::NotFound(_)) => Self::not_found(message),
            StateError::PoolExhausted => Self::new(StatusCode::SERVICE_UNAVAILABLE, message),
            other => {
                tracing::error!(error = %other, "admin request failed");
                Self::internal(message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Parses a JSON request body, answering 400 with serde's reason (which names the field).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_errors_map_to_statuses() {
        let nf: ApiError = StateError::NotFound("node 7".into()).into();
        assert_eq!(
            (nf.status, nf.message.as_str()),
            (StatusCode::NOT_FOUND, "node 7 not found")
        );
        let bad: ApiError = StateError::Invalid("bad tag".into()).into();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body(), serde_json::json!({"message": "bad tag"}));
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        let v: serde_json::Map<String, Value> = parse_json(b" \n").unwrap();
        assert!(v.is_empty());
        let err = parse_json::<serde_json::Map<String, Value>>(b"{").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
