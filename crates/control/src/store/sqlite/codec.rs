//! Value encoding between model records and SQLite columns, and error mapping.
//!
//! Used by [`super::SqliteStore`] only. Encoding is total for every value the model can hold
//! except timestamps outside years 0–9999 (see [`ts_text`]). Decoding never panics: anything
//! that does not parse becomes [`StoreError::Corrupt`] naming the table, row id and column, so
//! an operator can find the bad row with the `sqlite3` shell.

use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use rusqlite::types::{FromSql, Value};
use rusqlite::{Error as SqlError, Row, ffi};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{ApiKey, AuthKey, Node, Timestamp};
use crate::store::StoreError;

/// Any SQLite failure that has no more specific meaning.
pub(super) fn db(e: SqlError) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The constraint a failed write broke, if it broke one.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Violation {
    /// A UNIQUE or PRIMARY KEY constraint; holds SQLite's `table.column` list.
    Unique(String),
    /// A FOREIGN KEY constraint: the row refers to a parent that does not exist, or a delete
    /// would leave children pointing at nothing.
    ForeignKey,
}

/// Classifies a constraint failure from its extended result code.
pub(super) fn violation(e: &SqlError) -> Option<Violation> {
    let SqlError::SqliteFailure(err, msg) = e else {
        return None;
    };
    match err.extended_code {
        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
            // SQLite words it "UNIQUE constraint failed: users.login_name".
            let cols = msg
                .as_deref()
                .and_then(|m| m.split_once(": "))
                .map(|(_, cols)| cols.to_owned())
                .unwrap_or_default();
            Some(Violation::Unique(cols))
        }
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
        _ => None,
    }
}

/// Maps a failed write: unique violations become [`StoreError::Conflict`] with the message
/// `conflict` gives for the offending `table.column` (or [`StoreError::Db`] if it gives none).
pub(super) fn write_err(e: SqlError, conflict: impl FnOnce(&str) -> Option<String>) -> StoreError {
    match violation(&e) {
        Some(Violation::Unique(cols)) => match conflict(&cols) {
            Some(msg) => StoreError::Conflict(msg),
            None => StoreError::Conflict(format!("a row with the same {cols}")),
        },
        Some(Violation::ForeignKey) | None => db(e),
    }
}

/// A timestamp as stored: RFC 3339, UTC, nine fractional digits, `Z`.
///
/// The fixed width makes text order equal time order (the audit `since` filter relies on it).
/// Years outside 0–9999 would break that width and could not be read back by RFC 3339 parsers,
/// so they are refused at write time rather than becoming a row that fails every later load.
pub(super) fn ts_text(t: &Timestamp) -> Result<String, StoreError> {
    if !(0..=9999).contains(&t.year()) {
        return Err(StoreError::Db(format!(
            "timestamp {t} is outside the years 0-9999 that can be stored"
        )));
    }
    Ok(t.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

pub(super) fn opt_ts_text(t: Option<&Timestamp>) -> Result<Option<String>, StoreError> {
    t.map(ts_text).transpose()
}

/// JSON text of a list or object. Serialising strings, maps with string keys and `Value`s does
/// not fail; the error path exists only so that nothing here can panic.
pub(super) fn json_text<T: Serialize + ?Sized>(v: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("cannot encode {what}: {e}")))
}

/// Reads the columns of one row of `table`, naming the row in every decode error.
pub(super) struct Cols<'r, 's> {
    row: &'r Row<'s>,
    table: &'static str,
    id: i64,
}

impl<'r, 's> Cols<'r, 's> {
    /// Wraps `row`, whose `id` column identifies it in error messages.
    pub(super) fn new(row: &'r Row<'s>, table: &'static str) -> Result<Self, StoreError> {
        let mut cols = Self { row, table, id: 0 };
        cols.id = cols.get("id")?;
        Ok(cols)
    }

    pub(super) fn id(&self) -> i64 {
        self.id
    }

    fn corrupt(&self, col: &str, why: impl Display) -> StoreError {
        StoreError::Corrupt(format!(
            "{} row {} column {col}: {why}",
            self.table, self.id
        ))
    }

    /// A column as a plain SQLite value (text, integer, bool, optional of those).
    pub(super) fn get<T: FromSql>(&self, col: &str) -> Result<T, StoreError> {
        self.row.get(col).map_err(|e| match e {
            SqlError::InvalidColumnType(..)
            | SqlError::FromSqlConversionFailure(..)
            | SqlError::IntegralValueOutOfRange(..) => self.corrupt(col, e),
            other => db(other),
        })
    }

    /// A text column parsed with `FromStr` (keys, addresses).
    pub(super) fn parse<T>(&self, col: &str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let s: String = self.get(col)?;
        s.parse().map_err(|e| self.corrupt(col, e))
    }

    /// A nullable text column parsed with `FromStr`.
    pub(super) fn opt_parse<T>(&self, col: &str) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let s: Option<String> = self.get(col)?;
        s.map(|s| s.parse().map_err(|e| self.corrupt(col, e)))
            .transpose()
    }

    pub(super) fn ts(&self, col: &str) -> Result<Timestamp, StoreError> {
        let s: String = self.get(col)?;
        self.parse_ts(col, &s)
    }

    pub(super) fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>, StoreError> {
        let s: Option<String> = self.get(col)?;
        s.map(|s| self.parse_ts(col, &s)).transpose()
    }

    fn parse_ts(&self, col: &str, s: &str) -> Result<Timestamp, StoreError> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| self.corrupt(col, format_args!("bad timestamp {s:?}: {e}")))
    }

    /// A JSON text column.
    pub(super) fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T, StoreError> {
        let s: String = self.get(col)?;
        serde_json::from_str(&s).map_err(|e| self.corrupt(col, format_args!("bad JSON: {e}")))
    }
}

/// Row values ?1 (id) to ?20 of a node in column order, shared by INSERT (which leaves ?1
/// unused) and UPDATE. Owned values, so that encoded text outlives the builder.
pub(super) fn node_values(n: &Node) -> Result<Vec<Value>, StoreError> {
    Ok(vec![
        n.id.0.into(),
        n.machine_key.to_string().into(),
        n.node_key.to_string().into(),
        n.disco_key.to_string().into(),
        n.user_id.map(|u| u.0).into(),
        json_text(&n.tags, "node tags")?.into(),
        n.hostname.clone().into(),
        n.given_name.clone().into(),
        n.ipv4.map(|ip| ip.to_string()).into(),
        n.ipv6.map(|ip| ip.to_string()).into(),
        json_text(&n.endpoints, "node endpoints")?.into(),
        json_text(&n.hostinfo, "node hostinfo")?.into(),
        n.home_derp.into(),
        ts_text(&n.created)?.into(),
        opt_ts_text(n.last_seen.as_ref())?.into(),
        opt_ts_text(n.key_expiry.as_ref())?.into(),
        n.ephemeral.into(),
        n.authorized.into(),
        json_text(&n.approved_routes, "node routes")?.into(),
        n.auth_key_id.map(|k| k.0).into(),
    ])
}

/// Row values ?1 (id) to ?13 of an auth key.
pub(super) fn auth_key_values(k: &AuthKey) -> Result<Vec<Value>, StoreError> {
    Ok(vec![
        k.id.0.into(),
        k.key_id.clone().into(),
        k.secret_hash.clone().into(),
        k.user_id.map(|u| u.0).into(),
        k.reusable.into(),
        k.ephemeral.into(),
        k.preauthorized.into(),
        json_text(&k.tags, "auth key tags")?.into(),
        k.description.clone().into(),
        ts_text(&k.created)?.into(),
        opt_ts_text(k.expires.as_ref())?.into(),
        opt_ts_text(k.revoked.as_ref())?.into(),
        k.uses.into(),
    ])
}

/// Row values ?1 (id) to ?7 of an API key.
pub(super) fn api_key_values(k: &ApiKey) -> Result<Vec<Value>, StoreError> {
    Ok(vec![
        k.id.0.into(),
        k.key_id.clone().into(),
        k.secret_hash.clone().into(),
        k.description.clone().into(),
        ts_text(&k.created)?.into(),
        opt_ts_text(k.expires.as_ref())?.into(),
        opt_ts_text(k.revoked.as_ref())?.into(),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_sort_as_text() {
        let a = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::nanoseconds(1);
        let (ta, tb) = (ts_text(&a).unwrap(), ts_text(&b).unwrap());
        assert_eq!(ta, "2026-01-02T03:04:05.000000000Z");
        assert!(ta < tb);
    }

    #[test]
    fn far_future_timestamp_is_refused() {
        let t = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        assert!(matches!(ts_text(&t), Err(StoreError::Db(_))));
    }
}
