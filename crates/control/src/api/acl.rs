//! The policy file: `GET/POST /tailnet/{t}/acl` and `POST /tailnet/{t}/acl/validate`.
//!
//! The policy is kept as the HuJSON text the admin wrote, comments included. `GET` returns it
//! as parsed JSON by default (what `curl | jq` scripts want) or verbatim with
//! `Accept: application/hujson`, always with an `ETag` (a SHA-256 of the text). `POST` takes
//! HuJSON or JSON, honours `If-Match` (a stale ETag gets 412; `ts-default` matches only while
//! no policy was ever set), and refuses a policy that does not parse, names unknown things or
//! fails its own `tests` with 400 and `line N: reason`; the old policy then stays in force.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, Caller};
use crate::model::Timestamp;
use crate::server::Shared;
use crate::state::{Actor, Tailnet};

/// What a tailnet without a policy behaves like: everyone may reach everyone.
pub const DEFAULT_POLICY: &str = r#"// The default policy: every device may reach every other device on every port.
// Replace it with `control policy set <file>` or POST /api/v2/tailnet/-/acl.
{
	"acls": [
		{"action": "accept", "src": ["*"], "dst": ["*:*"]},
	],
}
"#;

/// The `If-Match` value that matches only the untouched default policy.
pub const TS_DEFAULT: &str = "ts-default";

/// The policy text in force, with its ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyText {
    pub text: String,
    /// Quoted, as sent in the `ETag` header.
    pub etag: String,
    /// True while no policy was ever set (the text is [`DEFAULT_POLICY`]).
    pub is_default: bool,
}

/// The quoted ETag of a policy text.
pub fn etag_of(text: &str) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(text.as_bytes())))
}

/// The policy in force.
pub fn current(t: &Tailnet) -> PolicyText {
    match t.policy_record() {
        Some(rec) => PolicyText {
            etag: etag_of(&rec.text),
            text: rec.text.clone(),
            is_default: false,
        },
        None => PolicyText {
            text: DEFAULT_POLICY.to_string(),
            etag: etag_of(DEFAULT_POLICY),
            is_default: true,
        },
    }
}

/// The policy text as plain JSON (comments and trailing commas dropped).
pub fn to_json(text: &str) -> Result<Value, ApiError> {
    jsonc_parser::parse_to_serde_value::<Value>(text, &Default::default())
        .map_err(|e| ApiError::bad_request(format!("policy is not valid HuJSON: {e}")))
}

/// Whether an `If-Match` header value admits replacing `cur`.
pub fn if_match_ok(if_match: &str, cur: &PolicyText) -> bool {
    if_match.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        let bare = tag.trim_matches('"');
        bare == "*" || (bare == TS_DEFAULT && cur.is_default) || bare == cur.etag.trim_matches('"')
    })
}

/// Validates `text` against the current tailnet (parse, names, `tests`) without installing it.
pub fn check(t: &Tailnet, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the policy is empty: send a HuJSON or JSON object",
        ));
    }
    t.check_policy(text)?;
    Ok(())
}

/// Installs a new policy if `if_match` (when given) still names the current one.
pub fn set(
    t: &mut Tailnet,
    text: &str,
    if_match: Option<&str>,
    actor: &Actor,
    now: Timestamp,
) -> Result<PolicyText, ApiError> {
    let cur = current(t);
    if let Some(m) = if_match
        && !if_match_ok(m, &cur)
    {
        return Err(ApiError::precondition_failed(format!(
            "the policy changed since you read it (If-Match {m}, current ETag {}): fetch it again and reapply your change",
            cur.etag
        )));
    }
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the policy is empty: send a HuJSON or JSON object",
        ));
    }
    t.set_policy(text, actor, now)?;
    Ok(current(t))
}

/// `POST /acl/validate`: a JSON object is a candidate policy; a JSON array is a list of tests
/// to run against the current policy. `None` means all is well.
pub fn validate(t: &Tailnet, body: &str) -> Option<ApiError> {
    let candidate = match jsonc_parser::parse_to_serde_value::<Value>(body, &Default::default()) {
        Ok(Value::Array(tests)) => {
            let mut policy = match to_json(&current(t).text) {
                Ok(Value::Object(o)) => o,
                Ok(_) => serde_json::Map::new(),
                Err(e) => return Some(e),
            };
            policy.insert("tests".into(), Value::Array(tests));
            Value::Object(policy).to_string()
        }
        // Objects and unparseable text go to the policy parser, which names the line.
        _ => body.to_string(),
    };
    check(t, &candidate).err()
}

// ----- handlers -----

fn wants_hujson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/hujson"))
}

fn policy_response(p: &PolicyText, hujson: bool) -> Result<Response, ApiError> {
    let (ctype, body) = if hujson {
        ("application/hujson", p.text.clone())
    } else {
        let v = to_json(&p.text)?;
        let body =
            serde_json::to_string_pretty(&v).map_err(|e| ApiError::internal(e.to_string()))?;
        ("application/json", body + "\n")
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::ETAG, p.etag.clone()),
        ],
        body,
    )
        .into_response())
}

fn body_text(body: &Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the policy must be UTF-8 text"))
}

pub(super) async fn get_acl(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = current(&shared.lock().tailnet);
    policy_response(&p, wants_hujson(&headers))
}

pub(super) async fn post_acl(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = body_text(&body)?;
    let if_match = match headers.get(header::IF_MATCH) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("malformed If-Match header"))?
                .to_string(),
        ),
        None => None,
    };
    let p = set(
        &mut shared.lock().tailnet,
        &text,
        if_match.as_deref(),
        &caller.actor(),
        Utc::now(),
    )?;
    policy_response(&p, wants_hujson(&headers))
}

pub(super) async fn post_validate(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    body: Bytes,
) -> Response {
    let text = match body_text(&body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    // Tailscale answers 200 either way; the body says whether there is a problem.
    match validate(&shared.lock().tailnet, &text) {
        None => axum::Json(json!({})).into_response(),
        Some(e) => axum::Json(e.body()).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        let cur = PolicyText {
            text: "{}".into(),
            etag: etag_of("{}"),
            is_default: false,
        };
        assert!(if_match_ok(&cur.etag, &cur));
        assert!(if_match_ok(cur.etag.trim_matches('"'), &cur));
        assert!(if_match_ok(&format!("W/{}", cur.etag), &cur));
        assert!(if_match_ok("\"x\", *", &cur));
        assert!(!if_match_ok("\"x\"", &cur));
        assert!(!if_match_ok("\"ts-default\"", &cur));
        let def = PolicyText {
            is_default: true,
            ..cur
        };
        assert!(if_match_ok("\"ts-default\"", &def));
    }

    #[test]
    fn default_policy_is_valid() {
        crate::policy::Policy::parse(DEFAULT_POLICY).unwrap();
        assert!(to_json(DEFAULT_POLICY).unwrap().get("acls").is_some());
    }
}
