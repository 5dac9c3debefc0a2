//! The TUN device (feature `tun`): the one I/O module of this crate, used by the agent daemon.
//!
//! Driven by the agent's event loop on tokio: [`TunDevice::recv`] packets and feed them to
//! `Engine::handle_tun_packet`; write the engine's [`TunWrite`]s back with [`TunDevice::write`],
//! which only accepts packets that carry the filter's proof. [`configure`] (or the single-step
//! helpers [`set_link`], [`add_address`], [`add_route`], [`del_route`]) gives the device its
//! addresses and routes.
//!
//! Link state, addresses and routes are set over rtnetlink (no `ip` binary): each call opens a
//! netlink socket in the caller's network namespace, runs its connection task on the current
//! tokio runtime and closes it when done. That costs one socket per call, which is fine because
//! these run a handful of times per netmap change, never per packet. The calls are idempotent:
//! an address or route that is already there is replaced in place, and deleting a route that is
//! gone is not an error.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressScope, CacheInfo};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::engine::TunWrite;

/// Tailscale's default TUN MTU (1280, the IPv6 minimum; 1360 on the wire with WireGuard).
pub const DEFAULT_MTU: u16 = 1280;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_NAME: usize = 15;

/// Why a TUN operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// The interface name is empty, too long or has characters the kernel rejects.
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
    /// The kernel refused a netlink request (no permission, no such device, bad prefix, …).
    #[error("TUN device {name}: netlink {op} failed: {source}")]
    Netlink {
        /// The interface.
        name: String,
        /// What we were doing, e.g. `add route 100.64.0.0/10`.
        op: String,
        /// The kernel's error (an errno) or why the netlink exchange failed.
        #[source]
        source: io::Error,
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
/// `routes` at the device in the main routing table. Running it again with the same arguments
/// changes nothing and succeeds.
pub async fn configure(
    name: &str,
    mtu: u16,
    addresses: &[IpNet],
    routes: &[IpNet],
) -> Result<(), TunError> {
    let nl = Netlink::open(name)?;
    let index = nl.link_index().await?;
    nl.set_link(index, mtu, true).await?;
    for a in addresses {
        nl.add_address(index, *a).await?;
    }
    for r in routes {
        nl.add_route(index, *r, None).await?;
    }
    Ok(())
}

/// Sets the link's MTU and brings it up or down (`ip link set dev NAME mtu MTU up|down`).
pub async fn set_link(name: &str, mtu: u16, up: bool) -> Result<(), TunError> {
    let nl = Netlink::open(name)?;
    let index = nl.link_index().await?;
    nl.set_link(index, mtu, up).await
}

/// Adds `address` with its prefix length to the link, replacing it in place if it is already
/// there (`ip addr replace ADDR dev NAME`). Tailnet addresses are host prefixes (`/32`,
/// `/128`), so the only connected route the kernel adds is the IPv6 address's own `/128`; the
/// tailnet routes come from [`add_route`].
pub async fn add_address(name: &str, address: IpNet) -> Result<(), TunError> {
    let nl = Netlink::open(name)?;
    let index = nl.link_index().await?;
    nl.add_address(index, address).await
}

/// Adds a service address (MagicDNS's 100.100.100.100 and fd7a:115c:a1e0::53) that local
/// programs connect to but that must never become the source address of the host's own
/// traffic: IPv4 gets host scope (`ip addr add A/32 dev NAME scope host`, skipped by source
/// selection for link and global routes), IPv6 is deprecated at once (`preferred_lft 0`, which
/// source selection avoids) and skips duplicate address detection (`nodad`). Without this the
/// kernel may pick the service address as the source towards peers or through an exit node.
pub async fn add_service_address(name: &str, address: IpNet) -> Result<(), TunError> {
    let nl = Netlink::open(name)?;
    let index = nl.link_index().await?;
    nl.add_service_address(index, address).await
}

/// Points `prefix` at the link in the main table or `table`, replacing a route to the same
/// prefix there (`ip route replace PREFIX dev NAME [table TABLE]`). Host bits are ignored.
pub async fn add_route(name: &str, prefix: IpNet, table: Option<u32>) -> Result<(), TunError> {
    let nl = Netlink::open(name)?;
    let index = nl.link_index().await?;
    nl.add_route(index, prefix, table).await
}

/// Removes the route to `prefix` through the link from the main table or `table`
/// (`ip route del PREFIX dev NAME [table TABLE]`). A route that is not there is not an error.
pub async fn del_route(name: &str, prefix: IpNet, table: Option<u32>) -> Result<(), TunError> {
    let nl = Netlink::open(name)?;
    let index = nl.link_index().await?;
    nl.del_route(index, prefix, table).await
}

/// One rtnetlink connection, scoped to the operations on one interface.
struct Netlink {
    handle: Handle,
    /// The connection task; aborted on drop so it never outlives the call that opened it.
    task: tokio::task::JoinHandle<()>,
    name: String,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Validates `name` and opens a socket in the calling thread's network namespace. Must run
    /// inside a tokio runtime (the connection is a task on it).
    fn open(name: &str) -> Result<Self, TunError> {
        validate_name(name)?;
        let (conn, handle, _multicast) =
            rtnetlink::new_connection().map_err(|source| TunError::Netlink {
                name: name.to_string(),
                op: "open socket".to_string(),
                source,
            })?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
            name: name.to_string(),
        })
    }

    fn err(&self, op: String, e: rtnetlink::Error) -> TunError {
        TunError::Netlink {
            name: self.name.clone(),
            op,
            source: to_io(e),
        }
    }

    /// The interface index; a missing interface is `ENODEV` ("No such device").
    async fn link_index(&self) -> Result<u32, TunError> {
        let op = || "look up link".to_string();
        let link = self
            .handle
            .link()
            .get()
            .match_name(self.name.clone())
            .execute()
            .try_next()
            .await
            .map_err(|e| self.err(op(), e))?;
        match link {
            Some(l) => Ok(l.header.index),
            None => Err(TunError::Netlink {
                name: self.name.clone(),
                op: op(),
                source: io::Error::from_raw_os_error(ENODEV),
            }),
        }
    }

    async fn set_link(&self, index: u32, mtu: u16, up: bool) -> Result<(), TunError> {
        let builder = LinkUnspec::new_with_index(index).mtu(u32::from(mtu));
        let builder = if up { builder.up() } else { builder.down() };
        tracing::debug!(name = %self.name, mtu, up, "netlink: set link");
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(|e| {
                let state = if up { "up" } else { "down" };
                self.err(format!("set link mtu {mtu} {state}"), e)
            })
    }

    async fn add_address(&self, index: u32, address: IpNet) -> Result<(), TunError> {
        tracing::debug!(name = %self.name, %address, "netlink: add address");
        let result = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .replace()
            .execute()
            .await;
        ok_if(result, &[EEXIST]).map_err(|e| self.err(format!("add address {address}"), e))
    }

    async fn add_service_address(&self, index: u32, address: IpNet) -> Result<(), TunError> {
        tracing::debug!(name = %self.name, %address, "netlink: add service address");
        let mut req = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .replace();
        let msg = req.message_mut();
        match address {
            IpNet::V4(_) => msg.header.scope = AddressScope::Host,
            IpNet::V6(_) => {
                let mut lifetimes = CacheInfo::default();
                lifetimes.ifa_preferred = 0;
                lifetimes.ifa_valid = u32::MAX;
                msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        let result = req.execute().await;
        ok_if(result, &[EEXIST]).map_err(|e| self.err(format!("add address {address}"), e))
    }

    async fn add_route(
        &self,
        index: u32,
        prefix: IpNet,
        table: Option<u32>,
    ) -> Result<(), TunError> {
        let prefix = prefix.trunc();
        tracing::debug!(name = %self.name, %prefix, ?table, "netlink: add route");
        let mut msg = route_message(index, prefix, table);
        // What `ip route replace PREFIX dev NAME` sends: a unicast route, link scope for an
        // IPv4 route without gateway (IPv6 has no route scopes, so universe there).
        msg.header.kind = RouteType::Unicast;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = match prefix {
            IpNet::V4(_) => RouteScope::Link,
            IpNet::V6(_) => RouteScope::Universe,
        };
        let result = self.handle.route().add(msg).replace().execute().await;
        ok_if(result, &[EEXIST]).map_err(|e| self.err(route_op("add", prefix, table), e))
    }

    async fn del_route(
        &self,
        index: u32,
        prefix: IpNet,
        table: Option<u32>,
    ) -> Result<(), TunError> {
        let prefix = prefix.trunc();
        tracing::debug!(name = %self.name, %prefix, ?table, "netlink: delete route");
        let mut msg = route_message(index, prefix, table);
        // Wildcards, as `ip route del` sends them: otherwise the kernel only deletes a route whose
        // protocol, scope and type match exactly, and a route added by hand would survive.
        msg.header.kind = RouteType::Unspec;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        let result = self.handle.route().del(msg).execute().await;
        ok_if(result, &[ESRCH, ENOENT]).map_err(|e| self.err(route_op("delete", prefix, table), e))
    }
}

/// A route to `prefix` (already truncated) out of link `index` in `table` (main if `None`).
fn route_message(index: u32, prefix: IpNet, table: Option<u32>) -> RouteMessage {
    match prefix {
        IpNet::V4(p) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(p.network(), p.prefix_len())
            .output_interface(index)
            .table_id(table.unwrap_or(MAIN_TABLE))
            .build(),
        IpNet::V6(p) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(p.network(), p.prefix_len())
            .output_interface(index)
            .table_id(table.unwrap_or(MAIN_TABLE))
            .build(),
    }
}

fn route_op(verb: &str, prefix: IpNet, table: Option<u32>) -> String {
    match table {
        Some(t) => format!("{verb} route {prefix} table {t}"),
        None => format!("{verb} route {prefix}"),
    }
}

/// `RT_TABLE_MAIN`.
pub(crate) const MAIN_TABLE: u32 = 254;
pub(crate) const ENOENT: i32 = 2;
pub(crate) const ESRCH: i32 = 3;
pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENODEV: i32 = 19;

/// The errno a netlink NACK carries (positive), if that is what `e` is.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Treats the listed errnos (and a bare ACK that rtnetlink reports as an error) as success.
pub(crate) fn ok_if(
    result: Result<(), rtnetlink::Error>,
    benign: &[i32],
) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.is_none() => Ok(()),
        Err(e) if errno(&e).is_some_and(|n| benign.contains(&n)) => Ok(()),
        other => other,
    }
}

/// Kernel NACKs become the plain OS error ("File exists (os error 17)"); anything else (a
/// malformed or unexpected reply, a closed connection) keeps rtnetlink's description.
pub(crate) fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), TunError> {
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
