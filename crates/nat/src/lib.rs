//! NAT traversal and relays.
//!
//! - [`derp`]: the DERP relay. `derp::server` and `derp::client` are sans-IO state machines
//!   (bytes and `now` in, bytes and events out); `derp::listener` (feature `derp-server`) serves
//!   them over TLS/HTTP with tokio, and `derp::dial` (feature `derp-client`) connects to a relay.
//! - [`tls`]: relay certificates (PEM files or a persisted self-signed one) and the
//!   `sha256-raw:` CertName pin.
//! - [`stun_server`] (feature `derp-server`): the UDP STUN responder that runs beside a relay.
//! - [`stun_client`]: sans-IO STUN probing: endpoint discovery, per-region latency, hard-NAT
//!   detection and the preferred (home) DERP region.
//! - [`magicsock`]: sans-IO path selection per peer: disco ping/pong/call-me-maybe, the best
//!   direct address with trust and heartbeats, fallback to DERP and upgrade back, port guessing
//!   towards hard NATs.
//! - [`netcheck`]: the `agent netcheck` report and `Hostinfo.NetInfo`; `netcheck::probe`
//!   (feature `derp-client`) measures HTTPS latency to DERP regions when UDP is blocked.
//!
//! With `--no-default-features` nothing here depends on tokio: the shells are opt-in.

pub mod derp;
pub mod magicsock;
pub mod netcheck;
pub mod portmap;
pub mod stun_client;
#[cfg(feature = "derp-server")]
pub mod stun_server;
pub mod tls;
