//! Tailscale SSH: the policy's `ssh` entries resolved to nodes once, then rendered per
//! destination node into a `tailcfg.SSHPolicy`.
//!
//! Built by [`super::Policy::compile`]; queried through
//! [`super::Compiled::ssh_policy_for`] and [`super::Compiled::ssh_check_period`].
//! Principals are the addresses of the eligible source nodes (one `nodeIP` each); address
//! aliases in `src` select the nodes whose addresses they contain rather than every address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proto::tailcfg::ssh::{SshAction, SshPolicy, SshPrincipal, SshRule};

use super::compile::Compiled;
use super::syntax::{Alias, AutoGroup, CheckPeriod};
use super::{Policy, SshEntry, SshUsers};
use crate::model::NodeId;

#[derive(Debug, Clone)]
struct Entry {
    check: Option<CheckPeriod>,
    src_nodes: Vec<usize>,
    /// Nodes named by destinations other than `autogroup:self`.
    dst_nodes: Vec<usize>,
    has_self: bool,
    users: SshUsers,
    accept_env: Vec<String>,
}

/// The `ssh` section resolved against one set of nodes.
#[derive(Debug, Clone)]
pub(crate) struct SshCompiled {
    /// Check rules first, then accept rules, each in policy order.
    entries: Vec<Entry>,
    hold_url: String,
}

fn union(lists: impl IntoIterator<Item = Vec<usize>>) -> Vec<usize> {
    let mut all: Vec<usize> = lists.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

impl SshCompiled {
    pub fn new(policy: &Policy, c: &Compiled, entries: &[SshEntry], server_url: &str) -> Self {
        let mut out: Vec<Entry> = entries
            .iter()
            .map(|e| Entry {
                check: e.check,
                src_nodes: union(e.src.iter().map(|a| c.alias_nodes(policy, a))),
                dst_nodes: union(
                    e.dst
                        .iter()
                        .filter(|a| **a != Alias::Auto(AutoGroup::SelfDevices))
                        .map(|a| c.alias_nodes(policy, a)),
                ),
                has_self: e.dst.contains(&Alias::Auto(AutoGroup::SelfDevices)),
                users: e.users.clone(),
                accept_env: e.accept_env.clone(),
            })
            .collect();
        // Stable: keeps policy order within check and within accept rules.
        out.sort_by_key(|e| e.check.is_none());
        SshCompiled {
            entries: out,
            hold_url: format!(
                "{}/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER",
                server_url.trim_end_matches('/')
            ),
        }
    }

    /// The source nodes an entry admits to destination node `i`, sorted.
    fn principals(&self, c: &Compiled, e: &Entry, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        if e.dst_nodes.binary_search(&i).is_ok() {
            out.extend_from_slice(&e.src_nodes);
        }
        if e.has_self
            && let Some(same) = c.nodes[i].user.and_then(|u| c.by_user.get(&u))
        {
            out.extend(same.iter().filter(|j| e.src_nodes.binary_search(j).is_ok()));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn action(&self, e: &Entry) -> SshAction {
        match e.check {
            Some(_) => SshAction {
                hold_and_delegate: self.hold_url.clone(),
                ..SshAction::default()
            },
            None => SshAction {
                accept: true,
                allow_agent_forwarding: true,
                allow_local_port_forwarding: true,
                allow_remote_port_forwarding: true,
                ..SshAction::default()
            },
        }
    }

    fn rule(
        &self,
        c: &Compiled,
        e: &Entry,
        nodes: &[usize],
        users: BTreeMap<String, String>,
    ) -> SshRule {
        let mut ips: Vec<IpAddr> = nodes
            .iter()
            .flat_map(|&j| c.nodes[j].ips.iter().copied())
            .collect();
        ips.sort_unstable();
        ips.dedup();
        SshRule {
            rule_expires: None,
            principals: ips
                .into_iter()
                .map(|ip| SshPrincipal {
                    node_ip: ip.to_string(),
                    ..SshPrincipal::default()
                })
                .collect(),
            ssh_users: users,
            action: Some(self.action(e)),
            accept_env: e.accept_env.clone(),
        }
    }

    pub fn policy_for(&self, c: &Compiled, node: NodeId) -> SshPolicy {
        let Some(i) = c.index_of(node) else {
            return SshPolicy::default();
        };
        let mut rules = Vec::new();
        for e in &self.entries {
            let principals = self.principals(c, e, i);
            if principals.is_empty() {
                continue;
            }
            let u = &e.users;
            if u.root || u.nonroot || !u.named.is_empty() {
                let mut map = BTreeMap::new();
                if u.nonroot {
                    map.insert("*".to_string(), "=".to_string());
                }
                // Root is denied unless listed, even when autogroup:nonroot maps "*".
                map.insert(
                    "root".to_string(),
                    if u.root { "root" } else { "" }.to_string(),
                );
                for name in &u.named {
                    map.insert(name.clone(), name.clone());
                }
                rules.push(self.rule(c, e, &principals, map));
            }
            // localpart:*@domain: each user of that domain may log in as their local part.
            for domain in &u.localpart_domains {
                let mut per_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for &j in &principals {
                    if let Some(login) = c.nodes[j].login.as_deref()
                        && let Some((local, dom)) = login.rsplit_once('@')
                        && dom.eq_ignore_ascii_case(domain)
                        && !local.is_empty()
                    {
                        per_user.entry(local).or_default().push(j);
                    }
                }
                for (local, nodes) in per_user {
                    let map = BTreeMap::from([(local.to_string(), local.to_string())]);
                    rules.push(self.rule(c, e, &nodes, map));
                }
            }
        }
        SshPolicy { rules }
    }

    pub fn check_period(&self, c: &Compiled, src: NodeId, dst: NodeId) -> Option<CheckPeriod> {
        let (s, d) = (c.index_of(src)?, c.index_of(dst)?);
        self.entries
            .iter()
            .filter_map(|e| {
                let period = e.check?;
                self.principals(c, e, d)
                    .binary_search(&s)
                    .is_ok()
                    .then_some(period)
            })
            .min()
    }
}
