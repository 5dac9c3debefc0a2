//! Compiling a [`Policy`] against the current users and nodes into per-node answers: packet
//! filters, peer visibility and route visibility (SSH lives in [`super::ssh`]).
//!
//! Driven by [`Policy::compile`], once per policy or topology change; the resulting
//! [`Compiled`] is then queried per node. Compilation resolves every ACL once into a
//! [`Rule`] (source set and strings, destination targets) and indexes, per node, the rules in
//! which it is a source and a destination, so per-node queries touch only their own rules
//! instead of every node pair.
//!
//! Eligibility: unauthorized nodes and nodes whose key has expired at `now` take part in
//! nothing: they are neither sources nor destinations, see no peers and get an empty filter.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use proto::tailcfg::filter::{FilterRule, NetPortRange, PortRange};
use proto::tailcfg::ssh::SshPolicy;

use super::Policy;
use super::ipset::{IpSet, net_string};
use super::ssh::SshCompiled;
use super::syntax::{Alias, AutoGroup, CheckPeriod};
use crate::model::{Node, NodeId, Timestamp, User, UserId};

/// Inputs to [`Policy::compile`] besides users and nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileContext {
    /// Decides which node keys have expired.
    pub now: Timestamp,
    /// The server's public URL (`https://ctl.example.com`), for SSH `check` callbacks.
    pub server_url: String,
}

/// A node as the compiler sees it.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub id: NodeId,
    /// Owner of an untagged node; `None` for tagged nodes.
    pub user: Option<UserId>,
    pub login: Option<String>,
    pub tags: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Enabled (advertised and approved) routes other than `/0`.
    pub subnet_routes: Vec<IpNet>,
    /// Enabled `/0` routes (the node is an exit node).
    pub exit_routes: Vec<IpNet>,
}

/// Where an ACL destination points.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// `*`: `"IP":"*"`.
    Any,
    /// Identity aliases (users, groups, tags, member/tagged): these node indices, sorted.
    Nodes(Vec<usize>),
    /// Address aliases (IPs, CIDRs, hosts, `autogroup:internet`).
    Prefixes(Vec<IpNet>),
    /// `autogroup:self`.
    SelfDevices,
}

#[derive(Debug, Clone)]
pub(crate) struct Dst {
    pub target: Target,
    pub ports: Vec<PortRange>,
}

/// One compiled ACL (an ACL with both `autogroup:self` and other destinations yields two).
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub proto: Vec<i32>,
    pub src: IpSet,
    /// `SrcIPs` for non-self rules.
    pub src_strings: Vec<String>,
    /// Eligible nodes whose addresses or subnet routes are in `src`, sorted.
    pub src_nodes: Vec<usize>,
    pub is_self: bool,
    pub dsts: Vec<Dst>,
    /// Nodes any destination reaches (non-self rules), sorted.
    pub dst_nodes: Vec<usize>,
    /// `SrcIPs` per user for self rules.
    pub self_src_strings: BTreeMap<UserId, Vec<String>>,
}

/// A policy resolved against one set of users and nodes. Queries take node ids; unknown or
/// ineligible nodes get empty answers.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub(crate) allow_all: bool,
    /// Eligible nodes, sorted by id.
    pub(crate) nodes: Vec<NodeInfo>,
    /// Untagged eligible nodes per user, sorted indices.
    pub(crate) by_user: BTreeMap<UserId, Vec<usize>>,
    pub(crate) rules: Vec<Rule>,
    /// Per node: rules it is a source of / a destination of.
    pub(crate) src_rules: Vec<Vec<usize>>,
    pub(crate) dst_rules: Vec<Vec<usize>>,
    pub(crate) internet: IpSet,
    pub(crate) ssh: Option<SshCompiled>,
}

/// `100.64.0.0/10` without `100.115.92.0/23` (reserved by Tailscale), plus the tailnet ULA.
pub(crate) fn tailnet_set() -> IpSet {
    let mut v4 = IpSet::new();
    v4.add_net(&net("100.64.0.0/10"));
    v4.normalize();
    v4.remove_net(&net("100.115.92.0/23"));
    v4.add_net(&net("fd7a:115c:a1e0::/48"));
    v4.normalize();
    v4
}

/// The public address space reached through exit nodes (`autogroup:internet`).
pub(crate) fn internet_set() -> IpSet {
    let mut s = IpSet::new();
    s.add_net(&net("0.0.0.0/0"));
    s.add_net(&net("2000::/3"));
    s.normalize();
    for private in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "fd7a:115c:a1e0::/48",
    ] {
        s.remove_net(&net(private));
    }
    s
}

fn net(s: &str) -> IpNet {
    // Only called with the literals above.
    s.parse()
        .unwrap_or_else(|_| IpNet::from(IpAddr::from([0, 0, 0, 0])))
}

/// The `SrcIPs` strings of a set: the tailnet ranges as Headscale writes them when the set
/// covers them, then prefixes (single IPs without a length), IPv4 first, ascending.
pub(crate) fn src_strings(set: &IpSet) -> Vec<String> {
    let tailnet = tailnet_set();
    let tailnet_nets = tailnet.prefixes();
    let mut rest = set.clone();
    let mut out: Vec<(bool, u128, String)> = Vec::new();
    if tailnet_nets.iter().all(|n| set.covers_net(n)) {
        for n in &tailnet_nets {
            rest.remove_net(n);
        }
        for (v4, s, e) in tailnet.ranges() {
            // The IPv6 part is exactly one prefix; the IPv4 parts are written as ranges.
            let text = if v4 {
                format!(
                    "{}-{}",
                    super::ipset::to_ip(v4, s),
                    super::ipset::to_ip(v4, e)
                )
            } else {
                format!("{}/48", super::ipset::to_ip(v4, s))
            };
            out.push((v4, s, text));
        }
    }
    for n in rest.prefixes() {
        let (v4, start) = match n.network() {
            IpAddr::V4(a) => (true, u128::from(u32::from(a))),
            IpAddr::V6(a) => (false, u128::from(a)),
        };
        out.push((v4, start, net_string(&n)));
    }
    out.sort_by_key(|a| (!a.0, a.1));
    out.into_iter().map(|(_, _, s)| s).collect()
}

impl Policy {
    /// Resolves the policy against `users` and `nodes`. Never fails: names that match nothing
    /// resolve to nothing.
    pub fn compile(&self, users: &[User], nodes: &[Node], ctx: &CompileContext) -> Compiled {
        let logins: BTreeMap<UserId, &str> = users
            .iter()
            .map(|u| (u.id, u.login_name.as_str()))
            .collect();
        let mut infos: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.authorized && !n.is_expired(ctx.now))
            .map(|n| {
                let tagged = n.is_tagged();
                let user = if tagged { None } else { n.user_id };
                let enabled = n.enabled_routes();
                NodeInfo {
                    id: n.id,
                    user,
                    login: user.and_then(|u| logins.get(&u)).map(|l| l.to_string()),
                    tags: n.tags.clone(),
                    ips: n
                        .ipv4
                        .map(IpAddr::V4)
                        .into_iter()
                        .chain(n.ipv6.map(IpAddr::V6))
                        .collect(),
                    subnet_routes: enabled
                        .iter()
                        .filter(|r| r.prefix_len() != 0)
                        .copied()
                        .collect(),
                    exit_routes: enabled
                        .iter()
                        .filter(|r| r.prefix_len() == 0)
                        .copied()
                        .collect(),
                }
            })
            .collect();
        infos.sort_by_key(|n| n.id);
        infos.dedup_by_key(|n| n.id);

        let mut by_user: BTreeMap<UserId, Vec<usize>> = BTreeMap::new();
        for (i, n) in infos.iter().enumerate() {
            if let Some(u) = n.user {
                by_user.entry(u).or_default().push(i);
            }
        }
        let count = infos.len();
        let mut c = Compiled {
            allow_all: self.allow_all,
            nodes: infos,
            by_user,
            rules: Vec::new(),
            src_rules: vec![Vec::new(); count],
            dst_rules: vec![Vec::new(); count],
            internet: internet_set(),
            ssh: None,
        };
        if self.allow_all {
            return c;
        }
        for acl in &self.acls {
            let proto: Vec<i32> = acl.proto.into_iter().collect();
            let (src, danger_all) = c.source_set(self, &acl.src);
            if src.is_empty() {
                continue;
            }
            let src_nodes = c.nodes_in_set(&src);
            let src_strings = if danger_all {
                vec!["*".to_string()]
            } else {
                src_strings(&src)
            };
            let (self_dsts, other_dsts): (Vec<_>, Vec<_>) = acl
                .dst
                .iter()
                .partition(|d| d.alias == Alias::Auto(AutoGroup::SelfDevices));
            if !other_dsts.is_empty() {
                let dsts: Vec<Dst> = other_dsts
                    .iter()
                    .map(|d| Dst {
                        target: c.target(self, &d.alias),
                        ports: d.ports.clone(),
                    })
                    .collect();
                c.push_rule(Rule {
                    proto: proto.clone(),
                    src: src.clone(),
                    src_strings: src_strings.clone(),
                    src_nodes: src_nodes.clone(),
                    is_self: false,
                    dsts,
                    dst_nodes: Vec::new(),
                    self_src_strings: BTreeMap::new(),
                });
            }
            if !self_dsts.is_empty() {
                let dsts: Vec<Dst> = self_dsts
                    .iter()
                    .map(|d| Dst {
                        target: Target::SelfDevices,
                        ports: d.ports.clone(),
                    })
                    .collect();
                c.push_rule(Rule {
                    proto,
                    src,
                    src_strings: Vec::new(),
                    src_nodes,
                    is_self: true,
                    dsts,
                    dst_nodes: Vec::new(),
                    self_src_strings: BTreeMap::new(),
                });
            }
        }
        c.ssh = self
            .ssh
            .as_ref()
            .map(|entries| SshCompiled::new(self, &c, entries, &ctx.server_url));
        c
    }
}

impl Compiled {
    pub(crate) fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.binary_search_by_key(&id, |n| n.id).ok()
    }

    /// Node indices whose identity matches an identity alias, or whose addresses lie in an
    /// address alias (`*` = every node).
    pub(crate) fn alias_nodes(&self, policy: &Policy, alias: &Alias) -> Vec<usize> {
        match alias {
            Alias::Prefix(net) => (0..self.nodes.len())
                .filter(|&i| self.nodes[i].ips.iter().any(|ip| net.contains(ip)))
                .collect(),
            Alias::Auto(AutoGroup::SelfDevices | AutoGroup::Internet) => Vec::new(),
            _ => (0..self.nodes.len())
                .filter(|&i| {
                    let n = &self.nodes[i];
                    policy.identity_matches(alias, n.login.as_deref(), &n.tags)
                })
                .collect(),
        }
    }

    /// The address set of a rule's sources, and whether `autogroup:danger-all` was among them.
    fn source_set(&self, policy: &Policy, srcs: &[Alias]) -> (IpSet, bool) {
        let mut set = IpSet::new();
        let mut danger_all = false;
        for alias in srcs {
            match alias {
                Alias::Auto(AutoGroup::DangerAll) => {
                    danger_all = true;
                    set.add_set(&IpSet::everything());
                }
                Alias::Wildcard => {
                    set.add_set(&tailnet_set());
                    for n in &self.nodes {
                        n.ips.iter().for_each(|ip| set.add_ip(*ip));
                        n.subnet_routes.iter().for_each(|r| set.add_net(r));
                    }
                }
                Alias::Prefix(net) => set.add_net(net),
                _ => {
                    for i in self.alias_nodes(policy, alias) {
                        self.nodes[i].ips.iter().for_each(|ip| set.add_ip(*ip));
                    }
                }
            }
        }
        set.normalize();
        (set, danger_all)
    }

    /// Nodes with an address in the set or a subnet route overlapping it.
    fn nodes_in_set(&self, set: &IpSet) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.ips.iter().any(|ip| set.contains(*ip))
                    || n.subnet_routes.iter().any(|r| set.overlaps_net(r))
            })
            .collect()
    }

    fn target(&self, policy: &Policy, alias: &Alias) -> Target {
        match alias {
            Alias::Wildcard | Alias::Auto(AutoGroup::DangerAll) => Target::Any,
            Alias::Prefix(net) => Target::Prefixes(vec![*net]),
            Alias::Auto(AutoGroup::Internet) => Target::Prefixes(self.internet.prefixes()),
            Alias::Auto(AutoGroup::SelfDevices) => Target::SelfDevices,
            _ => Target::Nodes(self.alias_nodes(policy, alias)),
        }
    }

    /// Whether a destination prefix concerns node `i`: it holds one of the node's addresses,
    /// overlaps one of its subnet routes, or (for an exit node) overlaps the internet.
    fn prefix_reaches(&self, net: &IpNet, i: usize) -> bool {
        let n = &self.nodes[i];
        n.ips.iter().any(|ip| net.contains(ip))
            || n.subnet_routes
                .iter()
                .any(|r| net.contains(r) || r.contains(net))
            || (!n.exit_routes.is_empty() && self.internet.overlaps_net(net))
    }

    fn push_rule(&mut self, mut rule: Rule) {
        let r = self.rules.len();
        if rule.is_self {
            for (user, members) in &self.by_user {
                let srcs: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|m| rule.src_nodes.binary_search(m).is_ok())
                    .collect();
                if srcs.is_empty() {
                    continue;
                }
                let mut set = IpSet::new();
                for &s in &srcs {
                    self.nodes[s].ips.iter().for_each(|ip| set.add_ip(*ip));
                    self.src_rules[s].push(r);
                }
                set.normalize();
                rule.self_src_strings.insert(*user, src_strings(&set));
                for &m in members {
                    self.dst_rules[m].push(r);
                }
            }
        } else {
            let mut reached = vec![false; self.nodes.len()];
            for d in &rule.dsts {
                match &d.target {
                    Target::Any => reached.iter_mut().for_each(|x| *x = true),
                    Target::Nodes(list) => list.iter().for_each(|&i| reached[i] = true),
                    Target::Prefixes(nets) => {
                        for (i, x) in reached.iter_mut().enumerate() {
                            if !*x && nets.iter().any(|net| self.prefix_reaches(net, i)) {
                                *x = true;
                            }
                        }
                    }
                    Target::SelfDevices => {}
                }
            }
            rule.dst_nodes = (0..reached.len()).filter(|&i| reached[i]).collect();
            for &i in &rule.dst_nodes {
                self.dst_rules[i].push(r);
            }
            for &i in &rule.src_nodes {
                self.src_rules[i].push(r);
            }
        }
        self.rules.push(rule);
    }

    /// The packet filter for a node: the rules whose destinations include the node's
    /// addresses, its subnet routes or (exit nodes) the internet, each reduced to those
    /// destinations, with rules of equal `SrcIPs` and `IPProto` merged. Empty = deny all.
    pub fn filter_for(&self, node: NodeId) -> Vec<FilterRule> {
        let Some(i) = self.index_of(node) else {
            return Vec::new();
        };
        if self.allow_all {
            return vec![FilterRule::allow_all()];
        }
        let n = &self.nodes[i];
        let mut out: Vec<FilterRule> = Vec::new();
        let mut by_key: BTreeMap<(Vec<String>, Vec<i32>), usize> = BTreeMap::new();
        for &r in &self.dst_rules[i] {
            let rule = &self.rules[r];
            let mut entries: Vec<NetPortRange> = Vec::new();
            let own = |entries: &mut Vec<NetPortRange>, ports: &[PortRange]| {
                for ip in &n.ips {
                    for p in ports {
                        entries.push(NetPortRange {
                            ip: ip.to_string(),
                            ports: *p,
                        });
                    }
                }
            };
            let src = if rule.is_self {
                let Some(s) = n.user.and_then(|u| rule.self_src_strings.get(&u)) else {
                    continue;
                };
                rule.dsts.iter().for_each(|d| own(&mut entries, &d.ports));
                s
            } else {
                for d in &rule.dsts {
                    match &d.target {
                        Target::Any => d.ports.iter().for_each(|p| {
                            entries.push(NetPortRange {
                                ip: "*".to_string(),
                                ports: *p,
                            })
                        }),
                        Target::Nodes(list) => {
                            if list.binary_search(&i).is_ok() {
                                own(&mut entries, &d.ports);
                            }
                        }
                        Target::Prefixes(nets) => {
                            for net in nets.iter().filter(|net| self.prefix_reaches(net, i)) {
                                for p in &d.ports {
                                    entries.push(NetPortRange {
                                        ip: net_string(net),
                                        ports: *p,
                                    });
                                }
                            }
                        }
                        Target::SelfDevices => {}
                    }
                }
                &rule.src_strings
            };
            if entries.is_empty() {
                continue;
            }
            let key = (src.clone(), rule.proto.clone());
            match by_key.get(&key) {
                Some(&at) => {
                    for e in entries {
                        if !out[at].dst_ports.contains(&e) {
                            out[at].dst_ports.push(e);
                        }
                    }
                }
                None => {
                    let mut dst_ports: Vec<NetPortRange> = Vec::with_capacity(entries.len());
                    for e in entries {
                        if !dst_ports.contains(&e) {
                            dst_ports.push(e);
                        }
                    }
                    by_key.insert(key, out.len());
                    out.push(FilterRule {
                        src_ips: src.clone(),
                        dst_ports,
                        ip_proto: rule.proto.clone(),
                        cap_grant: Vec::new(),
                    });
                }
            }
        }
        out
    }

    /// Whether `a` may reach `b` or `b` may reach `a` (including via subnet routes): the
    /// condition for each to appear in the other's peer list.
    pub fn can_see(&self, a: NodeId, b: NodeId) -> bool {
        let (Some(ia), Some(ib)) = (self.index_of(a), self.index_of(b)) else {
            return false;
        };
        if ia == ib {
            return false;
        }
        if self.allow_all {
            return true;
        }
        let same_user = self.nodes[ia].user.is_some() && self.nodes[ia].user == self.nodes[ib].user;
        self.src_rules[ia].iter().any(|&r| {
            let rule = &self.rules[r];
            if rule.is_self {
                same_user
            } else {
                rule.dst_nodes.binary_search(&ib).is_ok()
            }
        }) || self.dst_rules[ia].iter().any(|&r| {
            let rule = &self.rules[r];
            (!rule.is_self || same_user) && rule.src_nodes.binary_search(&ib).is_ok()
        })
    }

    /// Every node `node` can see (see [`Compiled::can_see`]), sorted by id.
    pub fn visible_peers(&self, node: NodeId) -> Vec<NodeId> {
        let Some(i) = self.index_of(node) else {
            return Vec::new();
        };
        if self.allow_all {
            return self
                .nodes
                .iter()
                .filter(|n| n.id != node)
                .map(|n| n.id)
                .collect();
        }
        let mut seen = vec![false; self.nodes.len()];
        let own_user: &[usize] = self.nodes[i]
            .user
            .and_then(|u| self.by_user.get(&u))
            .map_or(&[], Vec::as_slice);
        for &r in &self.src_rules[i] {
            let rule = &self.rules[r];
            let list = if rule.is_self {
                own_user
            } else {
                &rule.dst_nodes
            };
            list.iter().for_each(|&j| seen[j] = true);
        }
        for &r in &self.dst_rules[i] {
            let rule = &self.rules[r];
            if rule.is_self {
                own_user
                    .iter()
                    .filter(|j| rule.src_nodes.binary_search(j).is_ok())
                    .for_each(|&j| seen[j] = true);
            } else {
                rule.src_nodes.iter().for_each(|&j| seen[j] = true);
            }
        }
        seen[i] = false;
        (0..seen.len())
            .filter(|&j| seen[j])
            .map(|j| self.nodes[j].id)
            .collect()
    }

    /// Whether `viewer` gets `route` in its copy of `peer`'s AllowedIPs: the route must be
    /// enabled on `peer`, and some rule must let `viewer` reach into it (for exit routes: reach
    /// the internet) or let the route's addresses reach `viewer`.
    pub fn route_visible(&self, viewer: NodeId, peer: NodeId, route: IpNet) -> bool {
        let (Some(iv), Some(ip)) = (self.index_of(viewer), self.index_of(peer)) else {
            return false;
        };
        let route = route.trunc();
        let p = &self.nodes[ip];
        let exit = route.prefix_len() == 0;
        let enabled = if exit {
            &p.exit_routes
        } else {
            &p.subnet_routes
        };
        if !enabled.contains(&route) {
            return false;
        }
        if self.allow_all {
            return true;
        }
        let reaches = |net: &IpNet| -> bool {
            if exit {
                self.internet.overlaps_net(net)
            } else {
                net.contains(&route) || route.contains(net)
            }
        };
        let outbound = self.src_rules[iv].iter().any(|&r| {
            self.rules[r].dsts.iter().any(|d| match &d.target {
                Target::Any => true,
                Target::Prefixes(nets) => nets.iter().any(reaches),
                Target::Nodes(list) => {
                    !exit
                        && list
                            .iter()
                            .any(|&j| self.nodes[j].ips.iter().any(|a| route.contains(a)))
                }
                Target::SelfDevices => false,
            })
        });
        outbound
            || self.dst_rules[iv].iter().any(|&r| {
                let rule = &self.rules[r];
                !rule.is_self
                    && if exit {
                        rule.src.overlaps(&self.internet)
                    } else {
                        rule.src.overlaps_net(&route)
                    }
            })
    }

    /// The SSH policy for a node as a destination; `None` when the policy has no `ssh`
    /// section (or no policy is set). Check rules come before accept rules.
    pub fn ssh_policy_for(&self, node: NodeId) -> Option<SshPolicy> {
        let ssh = self.ssh.as_ref()?;
        Some(ssh.policy_for(self, node))
    }

    /// For an SSH connection from `src` to `dst` that a `check` rule governs, the shortest
    /// applicable check period (how long a successful check stays valid). `None` if no check
    /// rule applies.
    pub fn ssh_check_period(&self, src: NodeId, dst: NodeId) -> Option<CheckPeriod> {
        let ssh = self.ssh.as_ref()?;
        ssh.check_period(self, src, dst)
    }
}
