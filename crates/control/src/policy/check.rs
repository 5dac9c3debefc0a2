//! The policy's own `tests` and `sshTests`, evaluated symbolically as Tailscale does: a user or
//! tag is matched by the aliases that name it (users, groups, tags, autogroups) even when no
//! node is registered, and by address aliases through the addresses of the nodes it has.
//!
//! Driven by [`Policy::run_tests`]; the first failing expectation is returned with its line.

use ipnet::IpNet;

use super::compile::internet_set;
use super::syntax::{self, Alias, AutoGroup};
use super::{AclTest, Policy, PolicyError, SshEntry, SshTest, SshUsers};
use crate::model::{Node, User};

/// Who a test names, as far as ACLs can tell: a user login or tags, plus addresses.
#[derive(Debug, Clone, Default)]
struct Ident {
    login: Option<String>,
    tags: Vec<String>,
    nets: Vec<IpNet>,
    /// For group expansion: the member shown in messages.
    member: Option<String>,
}

struct Env<'a> {
    policy: &'a Policy,
    users: &'a [User],
    nodes: &'a [Node],
}

impl Env<'_> {
    fn login_of(&self, node: &Node) -> Option<String> {
        if node.is_tagged() {
            return None;
        }
        let id = node.user_id?;
        self.users
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.login_name.clone())
    }

    fn node_nets(node: &Node) -> impl Iterator<Item = IpNet> {
        node.ipv4
            .map(|a| IpNet::from(std::net::IpAddr::V4(a)))
            .into_iter()
            .chain(node.ipv6.map(|a| IpNet::from(std::net::IpAddr::V6(a))))
    }

    fn user_ident(&self, alias: &str) -> Ident {
        let login = self
            .users
            .iter()
            .find(|u| syntax::user_matches(alias, &u.login_name))
            .map(|u| u.login_name.clone());
        let nets = match &login {
            Some(l) => self
                .nodes
                .iter()
                .filter(|n| self.login_of(n).as_deref() == Some(l.as_str()))
                .flat_map(Self::node_nets)
                .collect(),
            None => Vec::new(),
        };
        Ident {
            login: Some(login.unwrap_or_else(|| alias.to_string())),
            tags: Vec::new(),
            nets,
            member: None,
        }
    }

    /// The identities an alias stands for (a group: each member).
    fn idents(&self, alias: &Alias) -> Vec<Ident> {
        match alias {
            Alias::User(u) => vec![self.user_ident(u)],
            Alias::Group(g) => {
                let members = self.policy.groups.get(g).cloned().unwrap_or_default();
                if members.is_empty() {
                    return vec![Ident::default()];
                }
                members
                    .iter()
                    .map(|m| Ident {
                        member: Some(m.clone()),
                        ..self.user_ident(m)
                    })
                    .collect()
            }
            Alias::Tag(t) => vec![Ident {
                login: None,
                tags: vec![t.clone()],
                nets: self
                    .nodes
                    .iter()
                    .filter(|n| n.tags.contains(t))
                    .flat_map(Self::node_nets)
                    .collect(),
                member: None,
            }],
            Alias::Prefix(net) => {
                // An address that belongs to a node also carries that node's identity.
                let owner = self
                    .nodes
                    .iter()
                    .find(|n| Self::node_nets(n).any(|a| net.contains(&a)));
                vec![Ident {
                    login: owner.and_then(|n| self.login_of(n)),
                    tags: owner.map(|n| n.tags.clone()).unwrap_or_default(),
                    nets: vec![*net],
                    member: None,
                }]
            }
            Alias::Wildcard | Alias::Auto(_) => vec![Ident::default()],
        }
    }

    fn covers_src(&self, alias: &Alias, who: &Ident) -> bool {
        match alias {
            Alias::Prefix(p) => who.nets.iter().any(|n| p.contains(n)),
            _ => self
                .policy
                .identity_matches(alias, who.login.as_deref(), &who.tags),
        }
    }

    fn covers_dst(&self, alias: &Alias, src: &Ident, dst: &Ident) -> bool {
        match alias {
            Alias::Prefix(p) => dst.nets.iter().any(|n| p.contains(n)),
            Alias::Auto(AutoGroup::Internet) => {
                let internet = internet_set();
                !dst.nets.is_empty() && dst.nets.iter().all(|n| internet.covers_net(n))
            }
            Alias::Auto(AutoGroup::SelfDevices) => {
                src.tags.is_empty()
                    && dst.tags.is_empty()
                    && matches!((&src.login, &dst.login), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
            }
            _ => {
                self.policy
                    .identity_matches(alias, dst.login.as_deref(), &dst.tags)
                    || (!dst.nets.is_empty()
                        && matches!(alias, Alias::Wildcard | Alias::Auto(AutoGroup::DangerAll)))
            }
        }
    }

    fn acl_allows(&self, src: &Ident, dst: &Ident, proto: i32, port: u16) -> bool {
        self.policy.acls.iter().any(|acl| {
            let proto_ok = match acl.proto {
                Some(p) => p == proto,
                None => matches!(proto, 1 | 6 | 17 | 58),
            };
            proto_ok
                && acl.src.iter().any(|a| self.covers_src(a, src))
                && acl.dst.iter().any(|d| {
                    d.ports.iter().any(|r| r.first <= port && port <= r.last)
                        && self.covers_dst(&d.alias, src, dst)
                })
        })
    }

    fn ssh_user_ok(users: &SshUsers, src: &Ident, local: &str) -> bool {
        if local == "root" {
            return users.root;
        }
        users.nonroot
            || users.named.iter().any(|n| n == local)
            || users.localpart_domains.iter().any(|d| {
                src.login
                    .as_deref()
                    .and_then(|l| l.rsplit_once('@'))
                    .is_some_and(|(lp, dom)| lp == local && dom.eq_ignore_ascii_case(d))
            })
    }

    /// The first SSH rule (check rules first) admitting `src` to `dst` as `local`.
    fn ssh_match(
        &self,
        entries: &[SshEntry],
        src: &Ident,
        dst: &Ident,
        local: &str,
    ) -> Option<bool> {
        let ordered = entries
            .iter()
            .filter(|e| e.check.is_some())
            .chain(entries.iter().filter(|e| e.check.is_none()));
        for e in ordered {
            if e.src.iter().any(|a| self.covers_src(a, src))
                && e.dst.iter().any(|a| self.covers_dst(a, src, dst))
                && Self::ssh_user_ok(&e.users, src, local)
            {
                return Some(e.check.is_some());
            }
        }
        None
    }
}

fn who(src_text: &str, ident: &Ident) -> String {
    match &ident.member {
        Some(m) => format!("{src_text} (member {m})"),
        None => src_text.to_string(),
    }
}

impl Policy {
    /// Runs the policy's `tests` and `sshTests` against itself. `users` and `nodes` add what
    /// is registered (so address aliases can match users and tags) but are not required.
    pub fn run_tests(&self, users: &[User], nodes: &[Node]) -> Result<(), PolicyError> {
        let env = Env {
            policy: self,
            users,
            nodes,
        };
        for t in &self.tests {
            run_acl_test(&env, t)?;
        }
        for t in &self.ssh_tests {
            run_ssh_test(&env, t)?;
        }
        Ok(())
    }
}

fn run_acl_test(env: &Env<'_>, t: &AclTest) -> Result<(), PolicyError> {
    let proto = t.proto.unwrap_or(6);
    for src in env.idents(&t.src) {
        for (expect, list) in [(true, &t.accept), (false, &t.deny)] {
            for d in list {
                for dst in env.idents(&d.alias) {
                    let allowed = env.acl_allows(&src, &dst, proto, d.port);
                    if allowed != expect {
                        let (want, got) = if expect {
                            ("accept", "denied")
                        } else {
                            ("deny", "accepted")
                        };
                        return Err(PolicyError::at(
                            d.line,
                            format!(
                                "test src {}: expected {want} to {}, but it is {got}",
                                who(&t.src_text, &src),
                                d.text
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn run_ssh_test(env: &Env<'_>, t: &SshTest) -> Result<(), PolicyError> {
    let entries = env.policy.ssh.as_deref().unwrap_or(&[]);
    for src in env.idents(&t.src) {
        for (dst_alias, dst_text, _) in &t.dst {
            for dst in env.idents(dst_alias) {
                let cases = [
                    (Some(false), &t.accept),
                    (Some(true), &t.check),
                    (None, &t.deny),
                ];
                for (want, list) in cases {
                    for u in list {
                        let got = env.ssh_match(entries, &src, &dst, &u.name);
                        if got != want {
                            let name = |r: Option<bool>| match r {
                                Some(false) => "accepted",
                                Some(true) => "allowed after a check",
                                None => "denied",
                            };
                            return Err(PolicyError::at(
                                u.line,
                                format!(
                                    "ssh test src {}: expected {} as {:?} on {dst_text}, but it is {}",
                                    who(&t.src_text, &src),
                                    name(want),
                                    u.name,
                                    name(got)
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
