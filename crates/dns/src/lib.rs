//! MagicDNS: the tailnet's resolver at 100.100.100.100 and fd7a:115c:a1e0::53, and the OS
//! integration that points the host at it.
//!
//! Sans-IO (pure functions of their input):
//! - [`config`]: [`DnsConfig::from_netmap`], names, addresses, resolvers and split routes;
//! - [`names`]: name normalisation and reverse (PTR) names;
//! - [`answer`]: [`answer::plan`], the decision for one question (answer here or forward where);
//! - [`resolv_conf`]: reading and writing resolv.conf text and its backup.
//!
//! I/O (clearly separate):
//! - [`forward`]: raw queries to upstreams over UDP, TCP on truncation;
//! - [`resolver`]: [`Resolver`], the config behind an `ArcSwap` plus forwarding, and
//!   [`Resolver::query`] for `agent dns query`;
//! - [`server`]: [`DnsServer`], hickory-server over UDP and TCP;
//! - [`os`]: systemd-resolved (via `resolvectl`) or direct /etc/resolv.conf management.
//!
//! The agent drives it: on every network map it calls [`DnsConfig::from_netmap`] and
//! [`Resolver::set_config`]; once the TUN is up it binds a [`DnsServer`] on the MagicDNS
//! addresses; with `--accept-dns` it applies [`os::OsConfigurator`] and reverts it on down/exit,
//! and calls [`os::recover`] at start.

use std::net::{Ipv4Addr, Ipv6Addr};

pub mod answer;
pub mod config;
mod error;
pub mod forward;
pub mod names;
pub mod os;
pub mod resolv_conf;
pub mod resolver;
pub mod server;

pub use answer::Route;
pub use config::DnsConfig;
pub use error::DnsError;
pub use resolver::{AnswerPath, QueryAnswer, QueryError, RecordText, Resolution, Resolver};
pub use server::DnsServer;

/// The MagicDNS IPv4 address ("quad-100").
pub const MAGIC_IPV4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// The MagicDNS IPv6 address.
pub const MAGIC_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
