//! The audit log: `GET /tailnet/{t}/logging/configuration`.
//!
//! Tailscale serves its configuration audit log at this path. Ours answers
//! `{"logs": [LogEntry…]}`, newest first, with simpler entries than Tailscale's (actor, action,
//! target and a free-form detail). Query parameters: `start` (RFC 3339, oldest entry wanted),
//! `limit` (default 100) and `action` (an action prefix such as `node.` or `policy.set`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::views::{self, LogEntry};
use super::{ApiError, Caller};
use crate::model::Timestamp;
use crate::server::Shared;
use crate::state::Tailnet;
use crate::store::AuditQuery;

/// How many entries a query returns when it names no limit.
pub const DEFAULT_LIMIT: usize = 100;

/// Reads audit entries, newest first.
pub fn query(
    t: &mut Tailnet,
    since: Option<Timestamp>,
    limit: Option<usize>,
    action: Option<String>,
) -> Result<Vec<LogEntry>, ApiError> {
    let q = AuditQuery {
        limit: Some(limit.unwrap_or(DEFAULT_LIMIT)),
        since,
        action_prefix: action.filter(|a| !a.is_empty()),
    };
    Ok(t.audit_log(&q)?.iter().map(views::log_entry).collect())
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    start: Option<String>,
    limit: Option<usize>,
    action: Option<String>,
}

pub(super) async fn get_logs(
    State(shared): State<Arc<Shared>>,
    _caller: Caller,
    Path(_tailnet): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    let since = match q.start.as_deref() {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "start {s:?} is not an RFC 3339 time like 2026-01-02T03:04:05Z"
                    ))
                })?
                .to_utc(),
        ),
        None => None,
    };
    let logs = query(&mut shared.lock().tailnet, since, q.limit, q.action)?;
    Ok(Json(json!({ "logs": logs })))
}
