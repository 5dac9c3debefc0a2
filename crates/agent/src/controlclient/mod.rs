//! The agent's control client: talks Tailscale's control protocol (ts2021) to a coordination
//! server and keeps the node's network map current.
//!
//! Layers, bottom up (all tokio I/O; the protocol logic lives in `proto`):
//! - [`dial()`]: `GET /key`, the `POST /ts2021` upgrade, the Noise handshake and HTTP/2, giving a
//!   [`Connection`].
//! - [`Connection`]: `register`, `logout`, `map_stream` (a [`MapStream`] of decoded
//!   `MapResponse`s) and `lite_update`, as concurrent HTTP/2 streams on one Noise session.
//! - [`Client`]: the long-running task the daemon starts with [`Client::start`]. It logs in, keeps
//!   a streaming map session applied to a `proto::netmap::NetMap`, reconnects with backoff, and
//!   reports [`ClientEvent`]s; the daemon steers it through a [`ClientHandle`].
//!
//! Errors are [`ControlError`]s whose messages say what a user can do about them.

mod backoff;
mod client;
mod conn;
mod dial;
mod error;

pub use backoff::Backoff;
pub use client::{AuthKey, Client, ClientConfig, ClientEvent, ClientHandle};
pub use conn::{Connection, MapStream, REQUEST_TIMEOUT};
pub use dial::{DialOptions, ServerUrl, dial, dial_with, fetch_server_key};
pub use error::ControlError;

/// The capability version this client announces (Tailscale v1.90).
pub const CAPABILITY_VERSION: u16 = 130;
