//! Go `time.Time` and `time.Duration` on the wire, as serde helper modules.
//!
//! Go marshals a `time.Time` as RFC 3339 with up to nine fraction digits, trailing zeros trimmed
//! (`time.RFC3339Nano`), and its zero value as `"0001-01-01T00:00:00Z"`, which the protocol uses
//! for "unset" or "never" (`KeyExpiry`, `RegisterRequest.Expiry`). Pointer times (`*time.Time`)
//! are `null` or absent when unset. Durations are integer nanoseconds.
//!
//! Use with `#[serde(with = "…")]`:
//! - [`go_time`]: `Option<DateTime<Utc>>`, `None` <-> the zero time (field always written).
//! - [`go_time_required`]: `DateTime<Utc>`, written as is (the zero time is year 1).
//! - [`go_time_ptr`]: `Option<DateTime<Utc>>` for `*time.Time ,omitempty`; pair it with
//!   `skip_serializing_if = "Option::is_none"` and `default`. `null` and the zero time read as
//!   `None`.
//! - [`go_time_patch`]: `Option<Option<DateTime<Utc>>>` for patch fields where "absent" and
//!   "set to zero" differ (`PeerChange.KeyExpiry`).
//! - [`go_duration`]: `std::time::Duration` as integer nanoseconds.
//!
//! Parsing accepts any RFC 3339 time (any offset, any fraction length) and converts it to UTC,
//! because the Go client stamps some times in its local zone (`RegisterRequest.Timestamp`).

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// The wire form of Go's zero `time.Time`.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Why a time could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GoTimeError {
    /// Go only writes years 0 to 9999.
    #[error("time {0} is outside the years 0..=9999 that Go can encode")]
    OutOfRange(String),
    /// The text is not an RFC 3339 time.
    #[error("time {text:?} is not an RFC 3339 timestamp: {reason}")]
    Parse { text: String, reason: String },
}

/// Go's zero time (`0001-01-01T00:00:00Z`) as a chrono value.
pub fn go_zero_time() -> DateTime<Utc> {
    // Year 1 is well inside chrono's range, so this never falls back; the fallback keeps the
    // function total without an unwrap.
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether `t` is Go's zero time.
pub fn is_go_zero(t: &DateTime<Utc>) -> bool {
    *t == go_zero_time()
}

/// Formats `t` like Go's `time.Time.MarshalJSON` in UTC: `2025-10-06T12:00:00.1234Z`.
pub fn format_go_time(t: &DateTime<Utc>) -> Result<String, GoTimeError> {
    if !(0..=9999).contains(&t.year()) {
        return Err(GoTimeError::OutOfRange(t.to_rfc3339()));
    }
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    // chrono keeps a leap second as nanos >= 1e9; Go has no leap seconds, so clamp.
    let nanos = t.nanosecond().min(999_999_999);
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    Ok(out)
}

/// Parses an RFC 3339 time into UTC. The zero time parses as year 1 (see [`parse_go_time_opt`]).
pub fn parse_go_time(s: &str) -> Result<DateTime<Utc>, GoTimeError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| GoTimeError::Parse {
            text: s.chars().take(40).collect(),
            reason: e.to_string(),
        })
}

/// Parses an RFC 3339 time; Go's zero time becomes `None`.
pub fn parse_go_time_opt(s: &str) -> Result<Option<DateTime<Utc>>, GoTimeError> {
    let t = parse_go_time(s)?;
    Ok(if is_go_zero(&t) { None } else { Some(t) })
}

/// Formats an optional time; `None` becomes Go's zero time.
pub fn format_go_time_opt(t: Option<&DateTime<Utc>>) -> Result<String, GoTimeError> {
    match t {
        Some(t) => format_go_time(t),
        None => Ok(GO_ZERO_TIME.to_string()),
    }
}

/// `Option<DateTime<Utc>>` for a Go `time.Time` value field: `None` is the zero time.
pub mod go_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_go_time_opt(t.as_ref()).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        // Go writes the zero time rather than null, but `null` decodes to zero in Go too.
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_go_time_opt(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// `DateTime<Utc>` for a time that is always meaningful; the zero time is year 1.
pub mod go_time_required {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_go_time(t).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_go_time(&text).map_err(serde::de::Error::custom)
    }
}

/// `Option<DateTime<Utc>>` for a Go `*time.Time` with `omitempty`: skip `None` when writing.
pub mod go_time_ptr {
    use chrono::{DateTime, Utc};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::go_time_required::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        super::go_time::deserialize(d)
    }
}

/// `Option<Option<DateTime<Utc>>>` for patch fields: outer `None` = absent (unchanged),
/// `Some(None)` = the zero time ("never"), `Some(Some(t))` = `t`. Pair with `default` and
/// `skip_serializing_if = "Option::is_none"`.
pub mod go_time_patch {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        t: &Option<Option<DateTime<Utc>>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(inner) => super::go_time::serialize(inner, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<DateTime<Utc>>>, D::Error> {
        // A present `null` is a nil pointer in Go, i.e. "unchanged".
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_go_time_opt(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `std::time::Duration` as Go's `time.Duration`: integer nanoseconds. Negative values are
/// rejected when reading, since none of the protocol's durations can be negative.
pub mod go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let nanos = i64::try_from(v.as_nanos()).map_err(|_| {
            serde::ser::Error::custom(format!(
                "duration {v:?} does not fit Go's int64 nanoseconds"
            ))
        })?;
        s.serialize_i64(nanos)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let nanos = i64::deserialize(d)?;
        let nanos = u64::try_from(nanos)
            .map_err(|_| serde::de::Error::custom(format!("duration {nanos}ns is negative")))?;
        Ok(Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_go_time(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn formats_like_rfc3339nano() {
        assert_eq!(
            format_go_time(&t("2025-10-06T12:00:00Z")),
            Ok("2025-10-06T12:00:00Z".into())
        );
        assert_eq!(
            format_go_time(&t("2025-10-06T12:00:00.120000000Z")),
            Ok("2025-10-06T12:00:00.12Z".into())
        );
        assert_eq!(
            format_go_time(&t("2025-10-06T12:00:00.123456789Z")),
            Ok("2025-10-06T12:00:00.123456789Z".into())
        );
        assert_eq!(format_go_time(&go_zero_time()), Ok(GO_ZERO_TIME.into()));
    }

    #[test]
    fn parses_offsets_into_utc() {
        assert_eq!(t("2025-10-06T14:00:00+02:00"), t("2025-10-06T12:00:00Z"));
        assert_eq!(parse_go_time_opt(GO_ZERO_TIME), Ok(None));
        assert!(matches!(
            parse_go_time("yesterday"),
            Err(GoTimeError::Parse { .. })
        ));
    }

    #[test]
    fn duration_is_nanoseconds() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct W(#[serde(with = "go_duration")] std::time::Duration);
        let w = W(std::time::Duration::from_millis(1500));
        assert_eq!(serde_json::to_string(&w).ok(), Some("1500000000".into()));
        assert_eq!(serde_json::from_str::<W>("1500000000").ok(), Some(w));
        assert!(serde_json::from_str::<W>("-1").is_err());
    }
}
