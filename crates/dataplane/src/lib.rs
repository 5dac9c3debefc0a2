//! The agent's packet engine: WireGuard sessions, cryptokey routing and Tailscale's inbound
//! packet filter, as a sans-IO state machine.
//!
//! # Run loop
//!
//! [`Engine`] owns everything and never touches a socket, a device or a clock. The agent's single
//! event loop feeds it packets read from the TUN device ([`Engine::handle_tun_packet`]), WireGuard
//! datagrams from UDP or DERP ([`Engine::handle_network_packet`]) and timer wakeups
//! ([`Engine::handle_timeout`] at [`Engine::poll_timeout`]), each with `now`; after every call it
//! drains [`Engine::poll_transmit`] and [`Engine::poll_tun_write`] and recycles the buffers.
//!
//! # Layout
//!
//! * [`packet`]: zero-copy IPv4/IPv6/TCP/UDP/ICMP views that never panic.
//! * [`filter`]: `FilterRule`s compiled into a matcher; its [`filter::Allowed`] proof is the only
//!   way to obtain a [`TunWrite`].
//! * [`routing`]: longest-prefix match over the peers' AllowedIPs.
//! * [`engine`]: the state machine gluing boringtun sessions, routing and the filter together.
//! * [`buf`]: reusable packet buffers.
//! * `tun` (feature `tun`): the async TUN device and `ip`-command helpers for the agent daemon;
//!   the only module here that does I/O.

pub mod buf;
pub mod engine;
pub mod filter;
pub mod packet;
pub mod routing;
mod stats;
#[cfg(feature = "tun")]
pub mod tun;

pub use buf::PacketBuf;
pub use engine::{Engine, EngineConfig, EngineError, PeerConfig, Transmit, TunWrite};
pub use filter::{Allowed, Filter, RuleError};
pub use stats::{DropCounters, DropReason, PeerStats};
