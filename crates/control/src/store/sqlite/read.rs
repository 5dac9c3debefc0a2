//! Queries that read whole tables (or the audit log) back into model records.
//!
//! Called by [`super::SqliteStore`] with a connection or an open transaction; each function
//! decodes every row through [`Cols`], so bad stored data surfaces as
//! [`StoreError::Corrupt`] instead of a panic. Rows come back in id order (insertion order).

use rusqlite::{Connection, Params};

use super::codec::{Cols, db, ts_text};
use crate::model::{
    ApiKey, ApiKeyId, AuditEvent, AuthKey, AuthKeyId, Node, NodeId, PolicyRecord, User, UserId,
};
use crate::store::{AuditQuery, StoreError};

use super::PolicyRevision;

/// Runs `sql` and decodes every row of `table` with `decode`.
fn collect<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    table: &'static str,
    decode: impl Fn(&Cols<'_, '_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = stmt.query(params).map_err(db)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        out.push(decode(&Cols::new(row, table)?)?);
    }
    Ok(out)
}

pub(super) fn users(conn: &Connection) -> Result<Vec<User>, StoreError> {
    let sql = "SELECT id, login_name, display_name, created FROM users ORDER BY id";
    collect(conn, sql, [], "users", |c| {
        Ok(User {
            id: UserId(c.id()),
            login_name: c.get("login_name")?,
            display_name: c.get("display_name")?,
            created: c.ts("created")?,
        })
    })
}

pub(super) fn nodes(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    let sql = "SELECT id, machine_key, node_key, disco_key, user_id, tags, hostname, given_name, \
               ipv4, ipv6, endpoints, hostinfo, home_derp, created, last_seen, key_expiry, \
               ephemeral, authorized, approved_routes, auth_key_id FROM nodes ORDER BY id";
    collect(conn, sql, [], "nodes", |c| {
        Ok(Node {
            id: NodeId(c.id()),
            machine_key: c.parse("machine_key")?,
            node_key: c.parse("node_key")?,
            disco_key: c.parse("disco_key")?,
            user_id: c.get::<Option<i64>>("user_id")?.map(UserId),
            tags: c.json("tags")?,
            hostname: c.get("hostname")?,
            given_name: c.get("given_name")?,
            ipv4: c.opt_parse("ipv4")?,
            ipv6: c.opt_parse("ipv6")?,
            endpoints: c.json("endpoints")?,
            hostinfo: c.json("hostinfo")?,
            home_derp: c.get("home_derp")?,
            created: c.ts("created")?,
            last_seen: c.opt_ts("last_seen")?,
            key_expiry: c.opt_ts("key_expiry")?,
            ephemeral: c.get("ephemeral")?,
            authorized: c.get("authorized")?,
            approved_routes: c.json("approved_routes")?,
            auth_key_id: c.get::<Option<i64>>("auth_key_id")?.map(AuthKeyId),
        })
    })
}

pub(super) fn auth_keys(conn: &Connection) -> Result<Vec<AuthKey>, StoreError> {
    let sql = "SELECT id, key_id, secret_hash, user_id, reusable, ephemeral, preauthorized, tags, \
               description, created, expires, revoked, uses FROM auth_keys ORDER BY id";
    collect(conn, sql, [], "auth_keys", |c| {
        Ok(AuthKey {
            id: AuthKeyId(c.id()),
            key_id: c.get("key_id")?,
            secret_hash: c.get("secret_hash")?,
            user_id: c.get::<Option<i64>>("user_id")?.map(UserId),
            reusable: c.get("reusable")?,
            ephemeral: c.get("ephemeral")?,
            preauthorized: c.get("preauthorized")?,
            tags: c.json("tags")?,
            description: c.get("description")?,
            created: c.ts("created")?,
            expires: c.opt_ts("expires")?,
            revoked: c.opt_ts("revoked")?,
            uses: c.get("uses")?,
        })
    })
}

pub(super) fn api_keys(conn: &Connection) -> Result<Vec<ApiKey>, StoreError> {
    let sql = "SELECT id, key_id, secret_hash, description, created, expires, revoked \
               FROM api_keys ORDER BY id";
    collect(conn, sql, [], "api_keys", |c| {
        Ok(ApiKey {
            id: ApiKeyId(c.id()),
            key_id: c.get("key_id")?,
            secret_hash: c.get("secret_hash")?,
            description: c.get("description")?,
            created: c.ts("created")?,
            expires: c.opt_ts("expires")?,
            revoked: c.opt_ts("revoked")?,
        })
    })
}

pub(super) fn policy(conn: &Connection) -> Result<Option<PolicyRecord>, StoreError> {
    let sql = "SELECT id, text, updated FROM policy WHERE id = 1";
    let mut rows = collect(conn, sql, [], "policy", |c| {
        Ok(PolicyRecord {
            text: c.get("text")?,
            updated: c.ts("updated")?,
        })
    })?;
    Ok(rows.pop())
}

pub(super) fn policy_history(conn: &Connection) -> Result<Vec<PolicyRevision>, StoreError> {
    let sql = "SELECT id, text, updated, replaced FROM policy_history ORDER BY id DESC";
    collect(conn, sql, [], "policy_history", |c| {
        Ok(PolicyRevision {
            id: c.id(),
            policy: PolicyRecord {
                text: c.get("text")?,
                updated: c.ts("updated")?,
            },
            replaced: c.ts("replaced")?,
        })
    })
}

/// Audit entries matching `q`, newest first (by time, then by id for equal times).
pub(super) fn audit(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
    // `substr(...) = prefix` rather than LIKE: LIKE is case-insensitive and treats `_` and `%`
    // in the prefix as wildcards. `since` compares as text, which equals time order because
    // every stored timestamp has the same width (see `ts_text`). LIMIT -1 means no limit.
    let sql = "SELECT id, at, actor, action, target, detail FROM audit_log \
               WHERE (?1 IS NULL OR at >= ?1) \
               AND (?2 IS NULL OR substr(action, 1, length(?2)) = ?2) \
               ORDER BY at DESC, id DESC LIMIT ?3";
    let since = q.since.as_ref().map(ts_text).transpose()?;
    let limit = q.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let params = rusqlite::params![since, q.action_prefix, limit];
    collect(conn, sql, params, "audit_log", |c| {
        Ok(AuditEvent {
            id: c.id(),
            at: c.ts("at")?,
            actor: c.get("actor")?,
            action: c.get("action")?,
            target: c.get("target")?,
            detail: c.json("detail")?,
        })
    })
}
