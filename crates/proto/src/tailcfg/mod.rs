//! The control protocol's JSON types (`tailcfg` in Tailscale's source), exact on the wire.
//!
//! Conventions (see docs/design/control-wire.md and the protocol reference §0): Go field names
//! as JSON keys, `null` accepted for every list and map, zero keys written in full, zero times as
//! `0001-01-01T00:00:00Z`, durations as integer nanoseconds, `map[int]` keys as decimal strings,
//! `opt.Bool` as a JSON bool or `null`, and Go's `omitempty` mirrored with
//! `skip_serializing_if`. These are plain data types: nothing here does I/O.
//!
//! - [`register`]: `/machine/register` and `/key` bodies.
//! - [`map`]: `/machine/map` and `/machine/update-health` bodies.
//! - [`node`]: `Node` and the ID types.
//! - [`hostinfo`]: `Hostinfo` and `NetInfo` (lossless for fields we do not model).
//! - [`derpmap`], [`dns`], [`filter`], [`ssh`]: the parts of a MapResponse.
//! - [`time`], [`wire`]: serde helpers for Go's encodings.

pub mod derpmap;
pub mod dns;
pub mod filter;
pub mod hostinfo;
pub mod map;
pub mod node;
pub mod register;
pub mod ssh;
pub mod time;
pub mod wire;

pub use derpmap::{DerpHomeParams, DerpMap, DerpNode, DerpRegion};
pub use dns::{DnsConfig, DnsRecord, DnsResolver};
pub use filter::{CapGrant, FilterRule, NetPortRange, PortRange};
pub use hostinfo::{Hostinfo, Location, NetInfo, Service};
pub use map::{
    ClientVersion, ControlDialPlan, ControlIpCandidate, DebugSettings, DisplayMessage,
    DisplayMessageAction, EndpointType, HealthChangeRequest, MapRequest, MapResponse, PeerChange,
    PingRequest, TkaInfo, UserProfile,
};
pub use node::{CapabilityVersion, LoginId, Node, NodeCapMap, NodeId, UserId, node_attr};
pub use register::{
    Login, OverTlsPublicKeyResponse, RegisterAuth, RegisterRequest, RegisterResponse, User,
    logout_expiry,
};
pub use ssh::{SshAction, SshPolicy, SshPrincipal, SshRule};
pub use time::{GO_ZERO_TIME, GoTimeError};

use serde::{Deserialize, Deserializer};

/// The capability version this implementation speaks (Tailscale v1.90.x).
pub const CURRENT_CAPABILITY_VERSION: CapabilityVersion = 130;

/// Deserializes `null` as the type's default (Go writes nil slices and maps as `null`).
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
