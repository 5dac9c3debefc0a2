//! Validation: the [`hujson`] tree to a typed [`Policy`], rejecting anything Tailscale would,
//! each error with the line of the offending token.
//!
//! Keys of the policy's own structure (`acls`, `src`, `tagOwners`, …) match case-insensitively
//! as Tailscale's and Headscale's decoders do; unknown keys are errors. Names inside the policy
//! (`group:eng`, hosts, tags) are case-sensitive.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::hujson::{self, Json, JsonKind, Member};
use super::syntax::{self, Alias, AutoGroup, Names};
use super::{
    Acl, AclDst, AclTest, Owner, Policy, PolicyError, SshEntry, SshTest, SshTestUser, SshUsers,
    TestDst,
};

/// Looks up the members of an object by key, case-insensitively, rejecting unknown keys.
struct Fields<'a> {
    members: &'a [Member],
}

impl<'a> Fields<'a> {
    /// Checks every key is one of `known` (lowercase) and none repeats in another case.
    fn new(members: &'a [Member], known: &[&str], what: &str) -> Result<Self, PolicyError> {
        let mut seen = BTreeSet::new();
        for m in members {
            let lower = m.key.to_ascii_lowercase();
            if !known.contains(&lower.as_str()) {
                return Err(PolicyError::at(
                    m.line,
                    format!(
                        "unknown key {:?} in {what} (expected one of: {})",
                        m.key,
                        known.join(", ")
                    ),
                ));
            }
            if !seen.insert(lower) {
                return Err(PolicyError::at(
                    m.line,
                    format!("duplicate key {:?} in {what}", m.key),
                ));
            }
        }
        Ok(Fields { members })
    }

    fn get(&self, key: &str) -> Option<&'a Member> {
        self.members
            .iter()
            .find(|m| m.key.eq_ignore_ascii_case(key))
    }
}

fn err<T>(line: usize, msg: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError::at(line, msg))
}

/// An array of strings, each with its line.
fn string_list<'a>(v: &'a Json, what: &str) -> Result<Vec<(&'a str, usize)>, PolicyError> {
    v.as_array(what)?
        .iter()
        .map(|e| Ok((e.as_str(&format!("each entry of {what}"))?, e.line)))
        .collect()
}

const TOP_KEYS: &[&str] = &[
    "groups",
    "hosts",
    "tagowners",
    "acls",
    "grants",
    "nodeattrs",
    "autoapprovers",
    "ssh",
    "tests",
    "sshtests",
    "randomizeclientport",
];

pub(crate) fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    let root = hujson::parse(text)?;
    let top = Fields::new(root.as_object("the policy")?, TOP_KEYS, "the policy")?;

    if let Some(m) = top.get("grants") {
        return err(
            m.line,
            "\"grants\" are not supported by this server; express the policy with \"acls\" and \
             \"ssh\"",
        );
    }
    if let Some(m) = top.get("nodeAttrs") {
        // Accepted for compatibility with existing policy files, but has no effect here.
        m.value.as_array("nodeAttrs")?;
    }

    let groups = match top.get("groups") {
        Some(m) => parse_groups(&m.value)?,
        None => BTreeMap::new(),
    };
    let hosts = match top.get("hosts") {
        Some(m) => parse_hosts(&m.value)?,
        None => BTreeMap::new(),
    };
    let tag_members = match top.get("tagOwners") {
        Some(m) => m.value.as_object("tagOwners")?,
        None => &[],
    };
    let mut tags = BTreeSet::new();
    for m in tag_members {
        if !m.key.starts_with("tag:") || m.key.len() <= 4 {
            return err(
                m.line,
                format!("tag {:?} must start with \"tag:\" and have a name", m.key),
            );
        }
        tags.insert(m.key.clone());
    }
    let names = Names {
        groups: &groups,
        hosts: &hosts,
        tags: &tags,
    };

    let mut tag_owners = BTreeMap::new();
    for m in tag_members {
        tag_owners.insert(m.key.clone(), parse_owners(&m.value, &names)?);
    }

    let acls = match top.get("acls") {
        Some(m) => m
            .value
            .as_array("acls")?
            .iter()
            .map(|e| parse_acl(e, &names))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };

    let (auto_routes, auto_exit) = match top.get("autoApprovers") {
        Some(m) => parse_auto_approvers(&m.value, &names)?,
        None => (Vec::new(), Vec::new()),
    };

    let ssh = match top.get("ssh") {
        Some(m) => Some(
            m.value
                .as_array("ssh")?
                .iter()
                .map(|e| parse_ssh(e, &names))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };

    let tests = match top.get("tests") {
        Some(m) => m
            .value
            .as_array("tests")?
            .iter()
            .map(|e| parse_test(e, &names))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let ssh_tests = match top.get("sshTests") {
        Some(m) => m
            .value
            .as_array("sshTests")?
            .iter()
            .map(|e| parse_ssh_test(e, &names))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let randomize_client_port = match top.get("randomizeClientPort") {
        Some(m) => m.value.as_bool("randomizeClientPort")?,
        None => false,
    };

    Ok(Policy {
        allow_all: false,
        groups,
        hosts,
        tag_owners,
        acls,
        auto_routes,
        auto_exit,
        ssh,
        tests,
        ssh_tests,
        randomize_client_port,
    })
}

fn parse_groups(v: &Json) -> Result<BTreeMap<String, Vec<String>>, PolicyError> {
    let mut out = BTreeMap::new();
    for m in v.as_object("groups")? {
        if !m.key.starts_with("group:") || m.key.len() <= 6 {
            return err(
                m.line,
                format!(
                    "group {:?} must start with \"group:\" and have a name",
                    m.key
                ),
            );
        }
        let mut members = Vec::new();
        for (member, line) in string_list(&m.value, &format!("group {:?}", m.key))? {
            if member.starts_with("group:") {
                return err(
                    line,
                    format!(
                        "group {:?} contains group {member:?}: nested groups are not allowed",
                        m.key
                    ),
                );
            }
            if !member.contains('@') {
                return err(
                    line,
                    format!(
                        "group {:?} member {member:?} is not a user (users look like \
                         \"alice@example.com\" or \"alice@\")",
                        m.key
                    ),
                );
            }
            members.push(member.to_string());
        }
        out.insert(m.key.clone(), members);
    }
    Ok(out)
}

fn parse_hosts(v: &Json) -> Result<BTreeMap<String, IpNet>, PolicyError> {
    let mut out = BTreeMap::new();
    for m in v.as_object("hosts")? {
        let k = &m.key;
        if k.is_empty()
            || k.contains('@')
            || k.contains(':')
            || k == "*"
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return err(m.line, format!("invalid host name {k:?}"));
        }
        if k.parse::<std::net::IpAddr>().is_ok() {
            return err(m.line, format!("host name {k:?} must not be an IP address"));
        }
        let text = m.value.as_str(&format!("host {k:?}"))?;
        let net = syntax::parse_prefix(text)
            .map_err(|e| PolicyError::at(m.value.line, format!("host {k:?}: {e}")))?;
        out.insert(k.clone(), net);
    }
    Ok(out)
}

fn parse_owners(v: &Json, names: &Names<'_>) -> Result<Vec<Owner>, PolicyError> {
    let mut out = Vec::new();
    for (s, line) in string_list(v, "a tagOwners entry")? {
        let owner = if s == "autogroup:admin" {
            Owner::Admin
        } else if s == "autogroup:member" {
            Owner::Member
        } else {
            match syntax::parse_alias(s, names).map_err(|e| PolicyError::at(line, e))? {
                Alias::User(u) => Owner::User(u),
                Alias::Group(g) => Owner::Group(g),
                Alias::Tag(t) => Owner::Tag(t),
                _ => {
                    return err(
                        line,
                        format!(
                            "tag owner {s:?} must be a user, a group, a tag, autogroup:admin or \
                             autogroup:member"
                        ),
                    );
                }
            }
        };
        out.push(owner);
    }
    Ok(out)
}

/// Parses a source alias list (ACL `src`, SSH `src`): `autogroup:self` and
/// `autogroup:internet` are destinations only.
fn parse_sources(v: &Json, names: &Names<'_>, what: &str) -> Result<Vec<Alias>, PolicyError> {
    let mut out = Vec::new();
    for (s, line) in string_list(v, what)? {
        let alias = syntax::parse_alias(s, names).map_err(|e| PolicyError::at(line, e))?;
        if let Alias::Auto(g @ (AutoGroup::SelfDevices | AutoGroup::Internet)) = alias {
            return err(
                line,
                format!("{} cannot be used as a source in {what}", Alias::Auto(g)),
            );
        }
        out.push(alias);
    }
    Ok(out)
}

fn parse_acl(v: &Json, names: &Names<'_>) -> Result<Acl, PolicyError> {
    let f = Fields::new(
        v.as_object("an acls entry")?,
        &["action", "src", "dst", "proto", "users", "ports"],
        "an acls entry",
    )?;
    let action = f
        .get("action")
        .ok_or_else(|| PolicyError::at(v.line, "acl is missing \"action\""))?;
    let action_s = action.value.as_str("action")?;
    if action_s != "accept" {
        return err(
            action.value.line,
            format!("invalid action {action_s:?}: the only ACL action is \"accept\""),
        );
    }
    // "users" and "ports" are the legacy spellings of "src" and "dst".
    let src = f
        .get("src")
        .or_else(|| f.get("users"))
        .ok_or_else(|| PolicyError::at(v.line, "acl is missing \"src\""))?;
    let dst = f
        .get("dst")
        .or_else(|| f.get("ports"))
        .ok_or_else(|| PolicyError::at(v.line, "acl is missing \"dst\""))?;
    if f.get("src").is_some() && f.get("users").is_some() {
        return err(v.line, "acl has both \"src\" and its legacy name \"users\"");
    }
    if f.get("dst").is_some() && f.get("ports").is_some() {
        return err(v.line, "acl has both \"dst\" and its legacy name \"ports\"");
    }
    let proto = match f.get("proto") {
        Some(m) => {
            let text = match &m.value.kind {
                JsonKind::Str(s) => s.clone(),
                JsonKind::Number(n) => n.clone(),
                _ => {
                    return err(
                        m.value.line,
                        format!("proto must be a string, found {}", m.value.type_name()),
                    );
                }
            };
            if text.is_empty() {
                None
            } else {
                Some(syntax::parse_proto(&text).map_err(|e| PolicyError::at(m.value.line, e))?)
            }
        }
        None => None,
    };
    let src = parse_sources(&src.value, names, "acl src")?;
    let mut dsts = Vec::new();
    for (s, line) in string_list(&dst.value, "acl dst")? {
        let (alias_s, ports_s) = syntax::split_dst(s).map_err(|e| PolicyError::at(line, e))?;
        let ports = syntax::parse_ports(ports_s)
            .map_err(|e| PolicyError::at(line, format!("destination {s:?}: {e}")))?;
        let alias = syntax::parse_alias(alias_s, names).map_err(|e| PolicyError::at(line, e))?;
        if let Some(p) = proto
            && !syntax::proto_has_ports(p)
            && ports != [proto::tailcfg::filter::PortRange::ANY]
        {
            return err(
                line,
                format!("destination {s:?}: protocol {p} has no ports; use \"{alias_s}:*\""),
            );
        }
        dsts.push(AclDst { alias, ports });
    }
    Ok(Acl {
        line: v.line,
        proto,
        src,
        dst: dsts,
    })
}

fn parse_approvers(v: &Json, names: &Names<'_>, what: &str) -> Result<Vec<Alias>, PolicyError> {
    let mut out = Vec::new();
    for (s, line) in string_list(v, what)? {
        let alias = syntax::parse_alias(s, names).map_err(|e| PolicyError::at(line, e))?;
        match alias {
            Alias::User(_)
            | Alias::Group(_)
            | Alias::Tag(_)
            | Alias::Auto(AutoGroup::Member | AutoGroup::Tagged) => out.push(alias),
            _ => {
                return err(
                    line,
                    format!(
                        "auto-approver {s:?} must be a user, a group, a tag, autogroup:member or autogroup:tagged"
                    ),
                );
            }
        }
    }
    Ok(out)
}

type AutoApprovers = (Vec<(IpNet, Vec<Alias>)>, Vec<Alias>);

fn parse_auto_approvers(v: &Json, names: &Names<'_>) -> Result<AutoApprovers, PolicyError> {
    let f = Fields::new(
        v.as_object("autoApprovers")?,
        &["routes", "exitnode"],
        "autoApprovers",
    )?;
    let mut routes = Vec::new();
    if let Some(m) = f.get("routes") {
        for r in m.value.as_object("autoApprovers.routes")? {
            let net = syntax::parse_prefix(&r.key)
                .map_err(|e| PolicyError::at(r.line, format!("autoApprovers route: {e}")))?;
            routes.push((
                net,
                parse_approvers(&r.value, names, &format!("autoApprovers route {:?}", r.key))?,
            ));
        }
    }
    let exit = match f.get("exitNode") {
        Some(m) => parse_approvers(&m.value, names, "autoApprovers.exitNode")?,
        None => Vec::new(),
    };
    Ok((routes, exit))
}

fn parse_ssh_users(v: &Json) -> Result<SshUsers, PolicyError> {
    let mut users = SshUsers::default();
    let list = string_list(v, "ssh users")?;
    if list.is_empty() {
        return err(
            v.line,
            "ssh rule has no users; list local users such as \"root\" or \"autogroup:nonroot\"",
        );
    }
    for (s, line) in list {
        if s == "root" {
            users.root = true;
        } else if s == "autogroup:nonroot" {
            users.nonroot = true;
        } else if let Some(domain) = s.strip_prefix("localpart:*@") {
            if domain.is_empty() {
                return err(line, format!("ssh user {s:?} is missing its domain"));
            }
            users.localpart_domains.push(domain.to_ascii_lowercase());
        } else if s.starts_with("autogroup:") || s.starts_with("localpart:") {
            return err(
                line,
                format!(
                    "unsupported ssh user {s:?} (use \"autogroup:nonroot\" or \"localpart:*@domain\")"
                ),
            );
        } else if s.is_empty() || s == "*" || s.chars().any(|c| c.is_whitespace() || c == ':') {
            return err(line, format!("invalid ssh user {s:?}"));
        } else {
            users.named.push(s.to_string());
        }
    }
    Ok(users)
}

fn parse_ssh(v: &Json, names: &Names<'_>) -> Result<SshEntry, PolicyError> {
    let f = Fields::new(
        v.as_object("an ssh entry")?,
        &["action", "src", "dst", "users", "checkperiod", "acceptenv"],
        "an ssh entry",
    )?;
    let action = f
        .get("action")
        .ok_or_else(|| PolicyError::at(v.line, "ssh rule is missing \"action\""))?;
    let is_check = match action.value.as_str("action")? {
        "accept" => false,
        "check" => true,
        other => {
            return err(
                action.value.line,
                format!("invalid ssh action {other:?}: use \"accept\" or \"check\""),
            );
        }
    };
    let check = match (is_check, f.get("checkPeriod")) {
        (true, Some(m)) => {
            let s = m.value.as_str("checkPeriod")?;
            Some(syntax::parse_check_period(s).map_err(|e| PolicyError::at(m.value.line, e))?)
        }
        (true, None) => Some(super::CheckPeriod::DEFAULT),
        (false, Some(m)) => return err(m.line, "checkPeriod is only valid with action \"check\""),
        (false, None) => None,
    };
    let src = f
        .get("src")
        .ok_or_else(|| PolicyError::at(v.line, "ssh rule is missing \"src\""))?;
    let dst = f
        .get("dst")
        .ok_or_else(|| PolicyError::at(v.line, "ssh rule is missing \"dst\""))?;
    let users = f
        .get("users")
        .ok_or_else(|| PolicyError::at(v.line, "ssh rule is missing \"users\""))?;
    let src = parse_sources(&src.value, names, "ssh src")?;
    let mut dsts = Vec::new();
    for (s, line) in string_list(&dst.value, "ssh dst")? {
        let alias = syntax::parse_alias(s, names).map_err(|e| PolicyError::at(line, e))?;
        if matches!(
            alias,
            Alias::Wildcard | Alias::Auto(AutoGroup::Internet | AutoGroup::DangerAll)
        ) {
            return err(
                line,
                format!("{s:?} cannot be an ssh destination (use tags, users or autogroup:self)"),
            );
        }
        dsts.push(alias);
    }
    let accept_env = match f.get("acceptEnv") {
        Some(m) => string_list(&m.value, "acceptEnv")?
            .into_iter()
            .map(|(s, _)| s.to_string())
            .collect(),
        None => Vec::new(),
    };
    Ok(SshEntry {
        line: v.line,
        check,
        src,
        dst: dsts,
        users: parse_ssh_users(&users.value)?,
        accept_env,
    })
}

fn parse_test_src(v: &Json, names: &Names<'_>, what: &str) -> Result<(String, Alias), PolicyError> {
    let s = v.as_str(what)?;
    let alias = syntax::parse_alias(s, names).map_err(|e| PolicyError::at(v.line, e))?;
    if matches!(alias, Alias::Auto(_) | Alias::Wildcard) {
        return err(
            v.line,
            format!("{what} {s:?} must be a user, group, tag, host or IP"),
        );
    }
    Ok((s.to_string(), alias))
}

fn parse_test(v: &Json, names: &Names<'_>) -> Result<AclTest, PolicyError> {
    let f = Fields::new(
        v.as_object("a tests entry")?,
        &["src", "proto", "accept", "deny"],
        "a tests entry",
    )?;
    let src = f
        .get("src")
        .ok_or_else(|| PolicyError::at(v.line, "test is missing \"src\""))?;
    let (src_text, src) = parse_test_src(&src.value, names, "test src")?;
    let proto = match f.get("proto") {
        Some(m) => Some(
            syntax::parse_proto(m.value.as_str("proto")?)
                .map_err(|e| PolicyError::at(m.value.line, e))?,
        ),
        None => None,
    };
    let dsts = |key: &str| -> Result<Vec<TestDst>, PolicyError> {
        let Some(m) = f.get(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (s, line) in string_list(&m.value, &format!("test {key}"))? {
            let (alias_s, port_s) = syntax::split_dst(s).map_err(|e| PolicyError::at(line, e))?;
            let port = port_s.parse::<u16>().map_err(|_| {
                PolicyError::at(
                    line,
                    format!("test destination {s:?} must name a single port"),
                )
            })?;
            let alias =
                syntax::parse_alias(alias_s, names).map_err(|e| PolicyError::at(line, e))?;
            if matches!(alias, Alias::Auto(_) | Alias::Wildcard) {
                return err(
                    line,
                    format!("test destination {s:?} must be a user, group, tag, host or IP"),
                );
            }
            out.push(TestDst {
                line,
                text: s.to_string(),
                alias,
                port,
            });
        }
        Ok(out)
    };
    Ok(AclTest {
        line: v.line,
        src_text,
        src,
        proto,
        accept: dsts("accept")?,
        deny: dsts("deny")?,
    })
}

fn parse_ssh_test(v: &Json, names: &Names<'_>) -> Result<SshTest, PolicyError> {
    let f = Fields::new(
        v.as_object("an sshTests entry")?,
        &["src", "dst", "accept", "check", "deny"],
        "an sshTests entry",
    )?;
    let src = f
        .get("src")
        .ok_or_else(|| PolicyError::at(v.line, "ssh test is missing \"src\""))?;
    let (src_text, src) = parse_test_src(&src.value, names, "ssh test src")?;
    let dst = f
        .get("dst")
        .ok_or_else(|| PolicyError::at(v.line, "ssh test is missing \"dst\""))?;
    let mut dsts = Vec::new();
    for (s, line) in string_list(&dst.value, "ssh test dst")? {
        let alias = syntax::parse_alias(s, names).map_err(|e| PolicyError::at(line, e))?;
        if matches!(alias, Alias::Auto(_) | Alias::Wildcard) {
            return err(
                line,
                format!("ssh test destination {s:?} must be a user, group, tag, host or IP"),
            );
        }
        dsts.push((alias, s.to_string(), line));
    }
    let users = |key: &str| -> Result<Vec<SshTestUser>, PolicyError> {
        let Some(m) = f.get(key) else {
            return Ok(Vec::new());
        };
        Ok(string_list(&m.value, &format!("ssh test {key}"))?
            .into_iter()
            .map(|(s, line)| SshTestUser {
                line,
                name: s.to_string(),
            })
            .collect())
    };
    Ok(SshTest {
        line: v.line,
        src_text,
        src,
        dst: dsts,
        accept: users("accept")?,
        check: users("check")?,
        deny: users("deny")?,
    })
}
