//! The tailnet agent as a library: the pieces the `agent` daemon and CLI are built from.
//!
//! - [`controlclient`]: login, the streaming network map and reconnects against the control
//!   server (ts2021).
//! - [`daemon`]: `agent daemon`, the service shell: state directory, local API socket, signals,
//!   and the [`daemon::Backend`] seam where the engine driver plugs in.
//! - [`cli`]: the `agent` command line (`up`, `down`, `status`, …), a client of the local API.
//! - [`ipn`]: the local API's JSON types, shared by daemon and CLI.
//! - [`runtime`]: the engine driver: one task owning the packet engine, path selection, STUN,
//!   DERP, the UDP socket, the TUN device and the control client; the real [`daemon::Backend`].

pub mod cli;
pub mod controlclient;
pub mod daemon;
pub mod ipn;
pub mod runtime;
