//! DERP relay: the sans-IO [`server`] and [`client`] state machines, plus their tokio shells
//! ([`listener`] with feature `derp-server`, [`dial`] with feature `derp-client`).
//!
//! The wire codec (frames, decoder, handshake boxes) lives in [`proto::derp`]; this module adds
//! the behaviour: who may send, where packets go, when keepalives and PeerGone are due.

pub mod client;
pub mod server;

#[cfg(feature = "derp-client")]
pub mod dial;
#[cfg(any(feature = "derp-server", feature = "derp-client"))]
pub(crate) mod http;
#[cfg(feature = "derp-server")]
pub mod listener;
