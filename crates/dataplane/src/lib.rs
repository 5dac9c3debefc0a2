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
//! * [`wgcfg`]: peers' AllowedIPs from the netmap (accepted subnet routes, the selected exit
//!   node) and the destinations this node serves as a subnet router or exit node; [`prefixes`]
//!   does the prefix arithmetic.
//! * `osroute` (feature `tun`): the OS side of routing over rtnetlink (a routing table, throw
//!   routes, fwmark policy rules) for the agent's subnet-router and exit-node support.
//! * `tun` (feature `tun`): the async TUN device and `ip`-command helpers for the agent daemon;
//!   the only module here that does I/O.

pub mod buf;
pub mod engine;
pub mod filter;
#[cfg(feature = "tun")]
pub mod osroute;
pub mod packet;
pub mod prefixes;
pub mod routing;
mod stats;
#[cfg(feature = "tun")]
pub mod tun;
pub mod wgcfg;

pub use buf::PacketBuf;
pub use engine::{Engine, EngineConfig, EngineError, PeerConfig, Transmit, TunWrite};
pub use filter::{Allowed, Filter, RuleError};
pub use stats::{DropCounters, DropReason, PeerStats};
