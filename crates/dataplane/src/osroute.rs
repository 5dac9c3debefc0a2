//! OS routing for subnet routes and exit nodes (feature `tun`): routes in a dedicated routing
//! table (device routes and `throw` routes) and fwmark policy rules, over rtnetlink.
//!
//! Driven by the agent's router (`agent::runtime::router`), which computes the desired state as
//! a pure plan and calls these primitives to reach it: open one [`OsRouting`] connection per
//! batch of changes, then add and delete single routes and rules. Like `tun`, every call is
//! idempotent: adding what is there and deleting what is gone both succeed, so a plan can be
//! re-applied after a partial failure.
//!
//! The policy this implements is tailscaled's on Linux: the agent's own sockets carry a firewall
//! mark, rules send marked packets to the main table (never into the tunnel), and every other
//! packet consults the agent's table first (tailnet ranges, accepted subnet routes, the exit
//! node's default routes, throw routes for LANs that stay local).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::tun::{EEXIST, ENODEV, ENOENT, ESRCH, errno, ok_if, to_io, validate_name};

/// `RT_TABLE_DEFAULT`: the (normally empty) table after main.
pub const DEFAULT_TABLE: u32 = 253;
/// `RT_TABLE_MAIN`.
pub const MAIN_TABLE: u32 = crate::tun::MAIN_TABLE;
/// `EAFNOSUPPORT`: IPv6 is disabled in this namespace or kernel.
const EAFNOSUPPORT: i32 = 97;

/// Why an OS routing operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OsRouteError {
    /// The kernel refused a netlink request (no permission, no such device, …), or the netlink
    /// exchange itself failed.
    #[error("netlink {op} failed: {source}")]
    Netlink {
        /// What we were doing, e.g. `add rule 5270 lookup 52`.
        op: String,
        /// The kernel's error (an errno) or why the exchange failed.
        #[source]
        source: io::Error,
    },
    /// The interface name is invalid.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
}

impl OsRouteError {
    /// Whether the failure means the address family is not available (IPv6 disabled).
    pub fn is_family_unsupported(&self) -> bool {
        matches!(self, OsRouteError::Netlink { source, .. } if source.raw_os_error() == Some(EAFNOSUPPORT))
    }
}

/// What a policy rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleTarget {
    /// `lookup TABLE`.
    Lookup(u32),
    /// `unreachable`: the packet is refused.
    Unreachable,
}

/// One `ip rule`: family, priority, an optional `fwmark VALUE/MASK`, and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRule {
    /// IPv6 (`ip -6 rule`) rather than IPv4.
    pub v6: bool,
    /// The rule's priority (its position; lower runs first).
    pub priority: u32,
    /// `fwmark VALUE/MASK`, or every packet.
    pub fwmark: Option<(u32, u32)>,
    /// What happens to matching packets.
    pub target: RuleTarget,
}

impl std::fmt::Display for PolicyRule {
    /// `ip -6 rule 5210 fwmark 0x80000/0xff0000 lookup 254`, as `ip rule` would show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fam = if self.v6 { "-6 " } else { "" };
        write!(f, "ip {fam}rule {}", self.priority)?;
        if let Some((v, m)) = self.fwmark {
            write!(f, " fwmark {v:#x}/{m:#x}")?;
        }
        match self.target {
            RuleTarget::Lookup(t) => write!(f, " lookup {t}"),
            RuleTarget::Unreachable => f.write_str(" unreachable"),
        }
    }
}

/// A route in a table: to a device (by interface index) or a `throw` (lookup continues with
/// the next rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteVia {
    /// `dev IFINDEX`.
    Dev(u32),
    /// `throw`.
    Throw,
}

/// One rtnetlink connection for a batch of routing changes in the caller's network namespace.
/// Its connection task runs on the current tokio runtime and is aborted on drop.
pub struct OsRouting {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OsRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OsRouting")
    }
}

impl Drop for OsRouting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn nl(op: impl Into<String>, e: rtnetlink::Error) -> OsRouteError {
    OsRouteError::Netlink {
        op: op.into(),
        source: to_io(e),
    }
}

fn table_of_route(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn table_of_rule(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn priority_of_rule(m: &RuleMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

impl OsRouting {
    /// Opens a netlink socket. Must run inside a tokio runtime.
    pub fn open() -> Result<Self, OsRouteError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| OsRouteError::Netlink {
                op: "open socket".into(),
                source,
            })?;
        Ok(OsRouting {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// The index of interface `name`; a missing interface is `ENODEV` ("No such device").
    pub async fn link_index(&self, name: &str) -> Result<u32, OsRouteError> {
        validate_name(name).map_err(|_| OsRouteError::InvalidName(name.to_string()))?;
        let op = || format!("look up link {name}");
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| nl(op(), e))?;
        link.map(|l| l.header.index)
            .ok_or_else(|| OsRouteError::Netlink {
                op: op(),
                source: io::Error::from_raw_os_error(ENODEV),
            })
    }

    /// Adds or replaces the route to `prefix` in `table` (`ip route replace PREFIX dev X table T`
    /// or `ip route replace throw PREFIX table T`). Host bits are ignored.
    pub async fn replace_route(
        &self,
        table: u32,
        prefix: IpNet,
        via: RouteVia,
    ) -> Result<(), OsRouteError> {
        let prefix = prefix.trunc();
        let mut msg = route_message(prefix, table, via);
        msg.header.protocol = RouteProtocol::Boot;
        match via {
            RouteVia::Dev(_) => {
                msg.header.kind = RouteType::Unicast;
                msg.header.scope = match prefix {
                    IpNet::V4(_) => RouteScope::Link,
                    IpNet::V6(_) => RouteScope::Universe,
                };
            }
            RouteVia::Throw => {
                msg.header.kind = RouteType::Throw;
                msg.header.scope = RouteScope::Universe;
            }
        }
        tracing::debug!(%prefix, table, ?via, "netlink: replace route");
        let result = self.handle.route().add(msg).replace().execute().await;
        ok_if(result, &[EEXIST]).map_err(|e| nl(route_op("add", prefix, table, via), e))
    }

    /// Deletes the route to `prefix` in `table`; a route that is not there is not an error.
    pub async fn delete_route(
        &self,
        table: u32,
        prefix: IpNet,
        via: RouteVia,
    ) -> Result<(), OsRouteError> {
        let prefix = prefix.trunc();
        let mut msg = route_message(prefix, table, via);
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = match via {
            RouteVia::Dev(_) => RouteType::Unspec,
            RouteVia::Throw => RouteType::Throw,
        };
        tracing::debug!(%prefix, table, ?via, "netlink: delete route");
        let result = self.handle.route().del(msg).execute().await;
        ok_if(result, &[ESRCH, ENOENT]).map_err(|e| nl(route_op("delete", prefix, table, via), e))
    }

    /// Deletes every route in `table` (both families); returns how many were removed. Used to
    /// clean up after a crash, when nobody remembers what was installed.
    pub async fn flush_table(&self, table: u32) -> Result<usize, OsRouteError> {
        let mut removed = 0;
        for v6 in [false, true] {
            let filter = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .table_id(table)
                    .build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .table_id(table)
                    .build()
            };
            let mut routes = Vec::new();
            let mut stream = self.handle.route().get(filter).execute();
            loop {
                match stream.try_next().await {
                    Ok(Some(m)) => {
                        if table_of_route(&m) == table {
                            routes.push(m);
                        }
                    }
                    Ok(None) => break,
                    Err(e) if v6 && errno(&e) == Some(EAFNOSUPPORT) => break,
                    Err(e) => return Err(nl(format!("list routes in table {table}"), e)),
                }
            }
            for m in routes {
                let result = self.handle.route().del(m).execute().await;
                ok_if(result, &[ESRCH, ENOENT])
                    .map_err(|e| nl(format!("flush table {table}"), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Adds `rule` unless an identical one exists.
    pub async fn add_rule(&self, rule: &PolicyRule) -> Result<(), OsRouteError> {
        tracing::debug!(%rule, "netlink: add rule");
        let mut req = self.handle.rule().add();
        let msg = req.message_mut();
        fill_rule(msg, rule);
        let result = req.execute().await;
        ok_if(result, &[EEXIST]).map_err(|e| nl(format!("add {rule}"), e))
    }

    /// Deletes `rule`; a rule that is not there is not an error.
    pub async fn delete_rule(&self, rule: &PolicyRule) -> Result<(), OsRouteError> {
        tracing::debug!(%rule, "netlink: delete rule");
        let mut msg = RuleMessage::default();
        fill_rule(&mut msg, rule);
        let result = self.handle.rule().del(msg).execute().await;
        ok_if(result, &[ENOENT, ESRCH]).map_err(|e| nl(format!("delete {rule}"), e))
    }

    /// Deletes every rule (both families) whose priority is in `priorities` and whose table is
    /// `table`, main, default or none (unreachable): the rules a previous run of the agent left
    /// behind. Returns how many were removed.
    pub async fn delete_rules_at(
        &self,
        priorities: &[u32],
        table: u32,
    ) -> Result<usize, OsRouteError> {
        let mut removed = 0;
        for version in [IpVersion::V4, IpVersion::V6] {
            let v6 = version == IpVersion::V6;
            let mut found = Vec::new();
            let mut stream = self.handle.rule().get(version).execute();
            loop {
                match stream.try_next().await {
                    Ok(Some(m)) => {
                        let ours = priority_of_rule(&m).is_some_and(|p| priorities.contains(&p))
                            && matches!(table_of_rule(&m), t if t == table || t == MAIN_TABLE || t == DEFAULT_TABLE || t == 0);
                        if ours {
                            found.push(m);
                        }
                    }
                    Ok(None) => break,
                    Err(e) if v6 && errno(&e) == Some(EAFNOSUPPORT) => break,
                    Err(e) => return Err(nl("list rules", e)),
                }
            }
            for m in found {
                let result = self.handle.rule().del(m).execute().await;
                ok_if(result, &[ENOENT, ESRCH]).map_err(|e| nl("delete stale rule", e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn fill_rule(msg: &mut RuleMessage, rule: &PolicyRule) {
    msg.header.family = if rule.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    if let Some((value, mask)) = rule.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(value));
        msg.attributes.push(RuleAttribute::FwMask(mask));
    }
    match rule.target {
        RuleTarget::Lookup(table) => {
            msg.header.action = RuleAction::ToTable;
            if table > 255 {
                msg.header.table = 0;
                msg.attributes.push(RuleAttribute::Table(table));
            } else {
                // Checked above: fits in a byte.
                msg.header.table = u8::try_from(table).unwrap_or(0);
            }
        }
        RuleTarget::Unreachable => {
            msg.header.action = RuleAction::Unreachable;
            msg.header.table = 0;
        }
    }
}

fn route_message(prefix: IpNet, table: u32, via: RouteVia) -> RouteMessage {
    let mut msg = match prefix {
        IpNet::V4(p) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(p.network(), p.prefix_len())
            .table_id(table)
            .build(),
        IpNet::V6(p) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(p.network(), p.prefix_len())
            .table_id(table)
            .build(),
    };
    if let RouteVia::Dev(index) = via {
        msg.attributes.push(RouteAttribute::Oif(index));
    }
    msg
}

fn route_op(verb: &str, prefix: IpNet, table: u32, via: RouteVia) -> String {
    match via {
        RouteVia::Dev(i) => format!("{verb} route {prefix} dev #{i} table {table}"),
        RouteVia::Throw => format!("{verb} route throw {prefix} table {table}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_like_ip_rule() {
        let r = PolicyRule {
            v6: false,
            priority: 5210,
            fwmark: Some((0x80000, 0xff0000)),
            target: RuleTarget::Lookup(MAIN_TABLE),
        };
        assert_eq!(
            r.to_string(),
            "ip rule 5210 fwmark 0x80000/0xff0000 lookup 254"
        );
        let u = PolicyRule {
            v6: true,
            priority: 5250,
            fwmark: Some((0x80000, 0xff0000)),
            target: RuleTarget::Unreachable,
        };
        assert_eq!(
            u.to_string(),
            "ip -6 rule 5250 fwmark 0x80000/0xff0000 unreachable"
        );
    }

    #[test]
    fn table_ids_above_255_go_in_an_attribute() {
        let mut m = RuleMessage::default();
        fill_rule(
            &mut m,
            &PolicyRule {
                v6: false,
                priority: 1,
                fwmark: None,
                target: RuleTarget::Lookup(1000),
            },
        );
        assert_eq!(table_of_rule(&m), 1000);
        let mut m = RuleMessage::default();
        fill_rule(
            &mut m,
            &PolicyRule {
                v6: false,
                priority: 1,
                fwmark: None,
                target: RuleTarget::Lookup(52),
            },
        );
        assert_eq!(table_of_rule(&m), 52);
        assert_eq!(priority_of_rule(&m), Some(1));
    }
}
