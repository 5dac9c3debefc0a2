//! `POST /machine/register` bodies (`tailcfg.RegisterRequest`, `RegisterResponse`, `User`,
//! `Login`) and the `GET /key` answer (`OverTLSPublicKeyResponse`).
//!
//! Login succeeds when the response has an empty `Error` and an empty `AuthURL`. A logout is a
//! RegisterRequest whose `Expiry` lies in the past; the Go client uses [`logout_expiry`]. Auth
//! keys and OAuth tokens never appear in `Debug` output.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::hostinfo::Hostinfo;
use super::node::{CapabilityVersion, LoginId, UserId};
use super::time::{go_time, go_time_ptr};
use super::wire::go_bytes;
use crate::keys::{MachinePublic, NodePublic};

/// Unix seconds of the `Expiry` the Go client sends to log out (`1970-01-01T00:02:03Z`).
pub const LOGOUT_EXPIRY_UNIX: i64 = 123;

/// The `Expiry` the Go client sends to log out.
pub fn logout_expiry() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(LOGOUT_EXPIRY_UNIX)
}

/// The text of an all-zero tailnet-lock key, which is what a client without one would send.
pub fn zero_nl_key() -> String {
    format!("nlpub:{}", "0".repeat(64))
}

/// A client's request to register (or re-key, or log out) a node key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterRequest {
    /// The client's capability version (130 for v1.90).
    #[serde(rename = "Version")]
    pub version: CapabilityVersion,
    /// The node key being registered.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// The previous node key when rotating, else zero.
    #[serde(rename = "OldNodeKey")]
    pub old_node_key: NodePublic,
    /// Tailnet-lock public key (`nlpub:<hex>`), kept as text; see [`zero_nl_key`].
    #[serde(rename = "NLKey")]
    pub nl_key: String,
    /// Credentials, for auth-key login.
    #[serde(rename = "Auth", skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegisterAuth>,
    /// Requested key expiry; `None` = no request, a past time = log out.
    #[serde(rename = "Expiry", with = "go_time")]
    pub expiry: Option<DateTime<Utc>>,
    /// The AuthURL being waited on (interactive login long-poll), or empty.
    #[serde(rename = "Followup")]
    pub followup: String,
    #[serde(rename = "Hostinfo")]
    pub hostinfo: Option<Hostinfo>,
    /// The client asks to be deleted when it goes away.
    #[serde(rename = "Ephemeral", skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// Tailnet-lock re-signature (base64); `null` when empty.
    #[serde(rename = "NodeKeySignature", with = "go_bytes")]
    pub node_key_signature: Vec<u8>,
    /// `signature-none` (omitted), `signature-v1`, `signature-v2`.
    #[serde(rename = "SignatureType", skip_serializing_if = "String::is_empty")]
    pub signature_type: String,
    /// Request creation time (rounded to seconds, possibly in the client's zone).
    #[serde(
        rename = "Timestamp",
        skip_serializing_if = "Option::is_none",
        with = "go_time_ptr"
    )]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(
        rename = "DeviceCert",
        skip_serializing_if = "Vec::is_empty",
        with = "go_bytes"
    )]
    pub device_cert: Vec<u8>,
    #[serde(
        rename = "Signature",
        skip_serializing_if = "Vec::is_empty",
        with = "go_bytes"
    )]
    pub signature: Vec<u8>,
    /// Requested tailnet name (`required:` prefix = mandatory).
    #[serde(rename = "Tailnet", skip_serializing_if = "String::is_empty")]
    pub tailnet: String,
}

impl RegisterRequest {
    /// Whether this request is a logout: `Expiry` set and before `now`.
    pub fn is_logout(&self, now: DateTime<Utc>) -> bool {
        self.expiry.is_some_and(|e| e < now)
    }

    /// The pre-auth key, if any (empty strings count as none).
    pub fn auth_key(&self) -> Option<&str> {
        self.auth
            .as_ref()
            .map(|a| a.auth_key.as_str())
            .filter(|k| !k.is_empty())
    }
}

/// Login credentials (`tailcfg.RegisterResponseAuth`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterAuth {
    /// Legacy OAuth2 token (pre-1.66 Android only), kept opaque.
    #[serde(rename = "Oauth2Token", skip_serializing_if = "Option::is_none")]
    pub oauth2_token: Option<serde_json::Value>,
    /// The pre-auth key. Secret.
    #[serde(rename = "AuthKey", skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
}

impl fmt::Debug for RegisterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterAuth")
            .field(
                "oauth2_token",
                &self.oauth2_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "auth_key",
                &if self.auth_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// The server's answer to a RegisterRequest. Every field is always written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterResponse {
    #[serde(rename = "User")]
    pub user: User,
    #[serde(rename = "Login")]
    pub login: Login,
    /// The node key must be replaced (the client regenerates it and registers again).
    #[serde(rename = "NodeKeyExpired")]
    pub node_key_expired: bool,
    #[serde(rename = "MachineAuthorized")]
    pub machine_authorized: bool,
    /// Non-empty = interactive authorization pending at this URL.
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    /// Current tailnet-lock signature needing re-signing; `null` when empty.
    #[serde(rename = "NodeKeySignature", with = "go_bytes")]
    pub node_key_signature: Vec<u8>,
    /// Non-empty = failure shown to the user; other fields are then ignored.
    #[serde(rename = "Error")]
    pub error: String,
}

impl RegisterResponse {
    /// A failed registration carrying a user-visible message.
    pub fn error(message: impl Into<String>) -> Self {
        RegisterResponse {
            error: message.into(),
            ..Default::default()
        }
    }
}

/// A user (`tailcfg.User`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    #[serde(rename = "ID")]
    pub id: UserId,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    #[serde(rename = "ProfilePicURL")]
    pub profile_pic_url: String,
    #[serde(rename = "Created", with = "go_time")]
    pub created: Option<DateTime<Utc>>,
}

/// A login identity (`tailcfg.Login`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Login {
    #[serde(rename = "ID")]
    pub id: LoginId,
    /// `"google"`, `"github"`, … (free-form).
    #[serde(rename = "Provider")]
    pub provider: String,
    /// Email or email-ish login name.
    #[serde(rename = "LoginName")]
    pub login_name: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    #[serde(rename = "ProfilePicURL")]
    pub profile_pic_url: String,
}

/// The JSON answer to `GET /key?v=<capver>`. Note the lowercase keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverTlsPublicKeyResponse {
    /// The retired NaCl key. Zero is accepted (Headscale sends zero), but then the Go client
    /// re-fetches `/key` on every login.
    #[serde(rename = "legacyPublicKey")]
    pub legacy_public_key: MachinePublic,
    /// The server's Noise static key; must be non-zero.
    #[serde(rename = "publicKey")]
    pub public_key: MachinePublic,
}
