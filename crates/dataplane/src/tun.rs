//! The TUN device (feature `tun`): the one I/O module of this crate, used by the agent daemon.
//!
//! Driven by the agent's event loop on tokio: [`TunDevice::recv`] packets and feed them to
//! `Engine::handle_tun_packet`; write the engine's [`TunWrite`]s back with [`TunDevice::write`],
//! which only accepts packets that carry the filter's proof. [`configure`] (or the single-step
//! helpers [`set_link`], [`add_address`], [`add_route`], [`del_route`]) gives the device its
//! addresses and routes.
//!
//! Addresses and routes go through the `ip` binary (iproute2) rather than `rtnetlink`: it is
//! present on every Linux system we target, it runs a handful of times per netmap change (never
//! per packet), its error messages are the ones operators already know, and it keeps a second
//! netlink stack (rtnetlink 0.24 + netlink-packet-route, plus tun-rs's own `netconfig-rs` if its
//! `address-management` feature were on) out of the dependency tree. Swapping in rtnetlink later
//! only touches this module.

use std::io;
use std::process::Stdio;

use ipnet::IpNet;
use tokio::process::Command;

use crate::engine::TunWrite;

/// Tailscale's default TUN MTU (1280, the IPv6 minimum; 1360 on the wire with WireGuard).
pub const DEFAULT_MTU: u16 = 1280;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_NAME: usize = 15;

/// Why a TUN operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// The interface name is empty, too long or has characters `ip` would misread.
    #[error(
        "invalid interface name {0:?}: use 1-15 letters, digits, '_', '-' or '.', not starting with '-'"
    )]
    InvalidName(String),
    /// Creating or using the device failed (no permission, no `/dev/net/tun`, …).
    #[error("TUN device {name}: {op} failed: {source}")]
    Io {
        /// The interface.
        name: String,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `ip` command could not be started (is iproute2 installed?).
    #[error("could not run `ip` ({args}): {source}")]
    Spawn {
        /// The arguments given to `ip`.
        args: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `ip` command ran and failed.
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Command {
        /// The arguments given to `ip`.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// How to create the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name, e.g. `tailnode0`.
    pub name: String,
    /// MTU; [`DEFAULT_MTU`] unless there is a reason.
    pub mtu: u16,
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            name: "tailnode0".to_string(),
            mtu: DEFAULT_MTU,
        }
    }
}

/// An open TUN device (layer 3, no packet-information header, no offload).
pub struct TunDevice {
    dev: tun_rs::AsyncDevice,
    name: String,
    mtu: u16,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl TunDevice {
    /// Creates the device and sets its MTU. Needs `CAP_NET_ADMIN` and a tokio runtime. The
    /// device disappears when this value is dropped.
    pub fn create(config: &TunConfig) -> Result<Self, TunError> {
        validate_name(&config.name)?;
        let io_err = |op| {
            let name = config.name.clone();
            move |source| TunError::Io { name, op, source }
        };
        let dev = tun_rs::DeviceBuilder::new()
            .name(&config.name)
            .mtu(config.mtu)
            .build_async()
            .map_err(io_err("create"))?;
        // The kernel may have picked another name (e.g. a `%d` pattern); report the real one.
        let name = dev.name().unwrap_or_else(|_| config.name.clone());
        tracing::debug!(name, mtu = config.mtu, "TUN device created");
        Ok(TunDevice {
            dev,
            name,
            mtu: config.mtu,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU it was created with.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Reads one IP packet into `buf`, returning its length. Size `buf` for at least the MTU.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize, TunError> {
        self.dev
            .recv(buf)
            .await
            .map_err(|source| self.io("read", source))
    }

    /// Writes a packet the engine decrypted and the filter allowed.
    pub async fn write(&self, packet: &TunWrite) -> Result<(), TunError> {
        self.send(packet.packet()).await
    }

    /// Writes a packet this node generated itself (e.g. a MagicDNS answer). Never use it for
    /// traffic from peers: that must go through the engine's filter and [`TunDevice::write`].
    pub async fn write_self_originated(&self, packet: &[u8]) -> Result<(), TunError> {
        self.send(packet).await
    }

    async fn send(&self, packet: &[u8]) -> Result<(), TunError> {
        let n = self
            .dev
            .send(packet)
            .await
            .map_err(|source| self.io("write", source))?;
        if n != packet.len() {
            return Err(self.io(
                "write",
                io::Error::new(io::ErrorKind::WriteZero, "short write"),
            ));
        }
        Ok(())
    }

    fn io(&self, op: &'static str, source: io::Error) -> TunError {
        TunError::Io {
            name: self.name.clone(),
            op,
            source,
        }
    }
}

/// Brings the link up with `mtu`, adds `addresses` (addresses already there are kept) and points
/// `routes` at the device in the main routing table.
pub async fn configure(
    name: &str,
    mtu: u16,
    addresses: &[IpNet],
    routes: &[IpNet],
) -> Result<(), TunError> {
    set_link(name, mtu, true).await?;
    for a in addresses {
        add_address(name, *a).await?;
    }
    for r in routes {
        add_route(name, *r, None).await?;
    }
    Ok(())
}

/// `ip link set dev NAME mtu MTU up|down`.
pub async fn set_link(name: &str, mtu: u16, up: bool) -> Result<(), TunError> {
    validate_name(name)?;
    let mtu = mtu.to_string();
    ip(&[
        "link",
        "set",
        "dev",
        name,
        "mtu",
        &mtu,
        if up { "up" } else { "down" },
    ])
    .await
}

/// `ip addr replace ADDR dev NAME` (idempotent). Tailnet addresses are host prefixes
/// (`/32`, `/128`) so the kernel adds no connected route; routes come from [`add_route`].
pub async fn add_address(name: &str, address: IpNet) -> Result<(), TunError> {
    validate_name(name)?;
    let a = address.to_string();
    ip(&[family(&address), "addr", "replace", &a, "dev", name]).await
}

/// `ip route replace PREFIX dev NAME [table TABLE]` (idempotent).
pub async fn add_route(name: &str, prefix: IpNet, table: Option<u32>) -> Result<(), TunError> {
    validate_name(name)?;
    let p = prefix.trunc().to_string();
    let table = table.map(|t| t.to_string());
    let mut args = vec![family(&prefix), "route", "replace", &p, "dev", name];
    if let Some(t) = &table {
        args.extend(["table", t.as_str()]);
    }
    ip(&args).await
}

/// `ip route del PREFIX dev NAME [table TABLE]`.
pub async fn del_route(name: &str, prefix: IpNet, table: Option<u32>) -> Result<(), TunError> {
    validate_name(name)?;
    let p = prefix.trunc().to_string();
    let table = table.map(|t| t.to_string());
    let mut args = vec![family(&prefix), "route", "del", &p, "dev", name];
    if let Some(t) = &table {
        args.extend(["table", t.as_str()]);
    }
    ip(&args).await
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    }
}

fn validate_name(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(TunError::InvalidName(name.to_string()))
    }
}

async fn ip(args: &[&str]) -> Result<(), TunError> {
    let joined = args.join(" ");
    tracing::debug!(args = %joined, "running ip");
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| TunError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(TunError::Command {
        args: joined,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["tailnode0", "ts-0", "a.b_c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-up", "sixteen-chars-xx", "a b", "tun/0", "x;rm"] {
            assert!(
                matches!(validate_name(bad), Err(TunError::InvalidName(_))),
                "{bad}"
            );
        }
    }
}
