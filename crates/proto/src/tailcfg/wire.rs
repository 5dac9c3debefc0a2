//! Small serde helpers for Go's JSON encodings that the tailcfg types share.
//!
//! - [`go_bytes`]: Go `[]byte` as standard padded base64; an empty value is written as `null`
//!   (Go's nil slice) and `null` reads as empty.
//! - [`opt_addr`]: Go `netip.Addr` value fields, where the zero address is `""`.
//! - [`null_values_as_default`] / [`null_values_dropped`]: maps whose values may be `null`.
//! - [`is_zero`]: `skip_serializing_if` for Go's `omitempty` on numbers and ID newtypes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// Whether `v` is its type's zero value (Go's `omitempty` rule for numbers).
pub fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Reads a JSON object (or `null`) whose values may be `null`, replacing null values with the
/// value type's default (Go: `map[string][]T` with a nil slice value).
pub fn null_values_as_default<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Ord + Deserialize<'de>,
    V: Default + Deserialize<'de>,
{
    let raw = Option::<BTreeMap<K, Option<V>>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Reads a JSON object (or `null`) whose values may be `null`, dropping the null entries
/// (Go: `map[int]*DERPRegion`, where the client ignores nil regions).
pub fn null_values_dropped<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    let raw = Option::<BTreeMap<K, Option<V>>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Go `[]byte`: standard base64 with padding; empty <-> `null`.
pub mod go_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            return s.serialize_none();
        }
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(text) => STANDARD.decode(text.as_bytes()).map_err(|e| {
                serde::de::Error::custom(format!("byte field is not standard base64: {e}"))
            }),
        }
    }
}

/// Go `netip.Addr` written without `omitempty`: `None` <-> `""`.
pub mod opt_addr {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                let shown: String = text.chars().take(45).collect();
                serde::de::Error::custom(format!("{shown:?} is not an IP address"))
            }),
        }
    }
}
