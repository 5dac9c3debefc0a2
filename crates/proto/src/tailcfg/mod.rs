//! The control protocol's JSON types (`tailcfg` in Tailscale's source), exact on the wire.
//!
//! Conventions (see docs/design/ts2021.md and the protocol reference §0): Go field names as
//! JSON keys, `null` accepted for every list and map, zero keys written in full, zero times as
//! `0001-01-01T00:00:00Z`, durations as integer nanoseconds.

pub mod filter;
pub mod ssh;

pub use filter::{CapGrant, FilterRule, NetPortRange, PortRange};
pub use ssh::{SshAction, SshPolicy, SshPrincipal, SshRule};

use serde::{Deserialize, Deserializer};

/// Deserializes `null` as the type's default (Go writes nil slices and maps as `null`).
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
