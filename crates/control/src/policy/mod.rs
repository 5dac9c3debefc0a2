//! The tailnet ACL policy: a HuJSON document (groups, hosts, tagOwners, acls, autoApprovers,
//! ssh, tests) parsed and validated once, then compiled against the current users and nodes.
//!
//! How it is driven (pure code, no I/O, no clock reads):
//! 1. [`Policy::parse`] turns the text into a [`Policy`] or a [`PolicyError`] naming the line.
//!    [`Policy::run_tests`] evaluates the policy's own `tests`/`sshTests`; the server rejects a
//!    new policy whose tests fail. No policy at all is [`Policy::allow_all`].
//! 2. Whenever the policy, the users or the nodes change, the server calls [`Policy::compile`]
//!    with a [`CompileContext`] (`now`, server URL) and keeps the [`Compiled`] result.
//! 3. Per node it asks the [`Compiled`] value for the packet filter, the SSH policy, the visible
//!    peers and which of a peer's routes to show.
//!
//! Registration asks [`Policy::auto_approved`] (autoApprovers) and [`Policy::may_own_tag`]
//! (tagOwners). See `docs/design/policy.md` for the semantics chosen where Tailscale and
//! Headscale differ.

mod check;
mod compile;
mod hujson;
mod ipset;
mod parse;
mod ssh;
mod syntax;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use proto::tailcfg::filter::PortRange;

use crate::model::{Node, User};

pub use compile::{CompileContext, Compiled};
pub use syntax::CheckPeriod;
use syntax::{Alias, AutoGroup};

/// Why a policy was rejected: the 1-based line of the offending token (when known) and the
/// reason. Displays as `line N: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyError {
    pub line: Option<usize>,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> Self {
        PolicyError {
            line: Some(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Who asks to apply a tag, for [`Policy::may_own_tag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOwnerCheck<'a> {
    /// A user (by login name). `is_admin` decides `autogroup:admin`.
    User { login_name: &'a str, is_admin: bool },
    /// A node (or auth key) that already holds these tags; tags can own tags.
    Tags(&'a [String]),
}

/// A `tagOwners` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    User(String),
    Group(String),
    Tag(String),
    Admin,
    Member,
}

/// One destination of an ACL: an alias and its port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AclDst {
    pub alias: Alias,
    pub ports: Vec<PortRange>,
}

/// One `acls` entry (the only action is accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acl {
    pub line: usize,
    pub proto: Option<i32>,
    pub src: Vec<Alias>,
    pub dst: Vec<AclDst>,
}

/// The `users` of an SSH rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SshUsers {
    pub root: bool,
    /// `autogroup:nonroot`: any local user except root.
    pub nonroot: bool,
    /// Literal local user names.
    pub named: Vec<String>,
    /// `localpart:*@domain` entries (the domain, lowercase).
    pub localpart_domains: Vec<String>,
}

/// One `ssh` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshEntry {
    pub line: usize,
    /// `Some` for `check` rules.
    pub check: Option<CheckPeriod>,
    pub src: Vec<Alias>,
    pub dst: Vec<Alias>,
    pub users: SshUsers,
    pub accept_env: Vec<String>,
}

/// A destination in a `tests` entry: `alias:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestDst {
    pub line: usize,
    pub text: String,
    pub alias: Alias,
    pub port: u16,
}

/// One `tests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AclTest {
    pub line: usize,
    pub src_text: String,
    pub src: Alias,
    pub proto: Option<i32>,
    pub accept: Vec<TestDst>,
    pub deny: Vec<TestDst>,
}

/// A local user name in an `sshTests` entry, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshTestUser {
    pub line: usize,
    pub name: String,
}

/// One `sshTests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshTest {
    pub line: usize,
    pub src_text: String,
    pub src: Alias,
    /// (alias, text as written, line).
    pub dst: Vec<(Alias, String, usize)>,
    pub accept: Vec<SshTestUser>,
    pub check: Vec<SshTestUser>,
    pub deny: Vec<SshTestUser>,
}

/// A parsed, validated policy. Cheap to clone relative to compiling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// No policy set: everyone may reach everyone, no SSH, no tags, no auto-approval.
    pub(crate) allow_all: bool,
    /// Group name to member user aliases.
    pub(crate) groups: BTreeMap<String, Vec<String>>,
    pub(crate) hosts: BTreeMap<String, IpNet>,
    pub(crate) tag_owners: BTreeMap<String, Vec<Owner>>,
    pub(crate) acls: Vec<Acl>,
    /// `autoApprovers.routes`: prefix to approvers.
    pub(crate) auto_routes: Vec<(IpNet, Vec<Alias>)>,
    /// `autoApprovers.exitNode`.
    pub(crate) auto_exit: Vec<Alias>,
    /// `None` when the policy has no `ssh` section (nodes then get no SSHPolicy).
    pub(crate) ssh: Option<Vec<SshEntry>>,
    pub(crate) tests: Vec<AclTest>,
    pub(crate) ssh_tests: Vec<SshTest>,
    /// `randomizeClientPort`, for the map builder.
    pub randomize_client_port: bool,
}

impl Policy {
    /// Parses and validates HuJSON policy text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        parse::parse_policy(text)
    }

    /// The policy of a tailnet without one: every node may reach every node on every port.
    pub fn allow_all() -> Policy {
        Policy {
            allow_all: true,
            groups: BTreeMap::new(),
            hosts: BTreeMap::new(),
            tag_owners: BTreeMap::new(),
            acls: Vec::new(),
            auto_routes: Vec::new(),
            auto_exit: Vec::new(),
            ssh: None,
            tests: Vec::new(),
            ssh_tests: Vec::new(),
            randomize_client_port: false,
        }
    }

    /// Whether this is the no-policy [`Policy::allow_all`].
    pub fn is_allow_all(&self) -> bool {
        self.allow_all
    }

    /// The tags defined in `tagOwners`, sorted.
    pub fn defined_tags(&self) -> impl Iterator<Item = &str> {
        self.tag_owners.keys().map(String::as_str)
    }

    /// Whether `autoApprovers` approves `route` for `node` (which it does not modify). A
    /// `routes` entry approves its prefix and every more specific prefix inside it; the exit
    /// routes `0.0.0.0/0` and `::/0` are approved only by `exitNode`. Approvers are users and
    /// groups (matching the owner of an untagged node), tags, `autogroup:member` and
    /// `autogroup:tagged`.
    pub fn auto_approved(&self, node: &Node, users: &[User], route: IpNet) -> bool {
        let route = route.trunc();
        let login = if node.is_tagged() {
            None
        } else {
            node.user_id
                .and_then(|id| users.iter().find(|u| u.id == id))
                .map(|u| u.login_name.as_str())
        };
        let matches = |approvers: &[Alias]| {
            approvers
                .iter()
                .any(|a| self.identity_matches(a, login, &node.tags))
        };
        if route.prefix_len() == 0 {
            return matches(&self.auto_exit);
        }
        self.auto_routes
            .iter()
            .any(|(prefix, approvers)| prefix.contains(&route) && matches(approvers))
    }

    /// Whether the requester may apply `tag` (per `tagOwners`). Undefined tags are owned by
    /// nobody.
    pub fn may_own_tag(&self, tag: &str, owner: TagOwnerCheck<'_>) -> bool {
        let Some(owners) = self.tag_owners.get(tag) else {
            return false;
        };
        owners.iter().any(|o| match (o, owner) {
            (Owner::User(u), TagOwnerCheck::User { login_name, .. }) => {
                syntax::user_matches(u, login_name)
            }
            (Owner::Group(g), TagOwnerCheck::User { login_name, .. }) => {
                self.user_in_group(g, login_name)
            }
            (Owner::Tag(t), TagOwnerCheck::Tags(held)) => held.iter().any(|h| h == t),
            (Owner::Admin, TagOwnerCheck::User { is_admin, .. }) => is_admin,
            (Owner::Member, TagOwnerCheck::User { .. }) => true,
            _ => false,
        })
    }

    /// Whether a user (by login name) is a member of the group.
    pub(crate) fn user_in_group(&self, group: &str, login_name: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|members| members.iter().any(|m| syntax::user_matches(m, login_name)))
    }

    /// Whether an identity (a user's untagged node: `login`; a tagged node: `tags`) is in an
    /// identity-style alias. Address aliases never match here.
    pub(crate) fn identity_matches(
        &self,
        alias: &Alias,
        login: Option<&str>,
        tags: &[String],
    ) -> bool {
        match alias {
            Alias::Wildcard | Alias::Auto(AutoGroup::DangerAll) => true,
            Alias::User(u) => tags.is_empty() && login.is_some_and(|l| syntax::user_matches(u, l)),
            Alias::Group(g) => tags.is_empty() && login.is_some_and(|l| self.user_in_group(g, l)),
            Alias::Tag(t) => tags.iter().any(|x| x == t),
            Alias::Auto(AutoGroup::Member) => tags.is_empty() && login.is_some(),
            Alias::Auto(AutoGroup::Tagged) => !tags.is_empty(),
            Alias::Auto(_) | Alias::Prefix(_) => false,
        }
    }
}
