//! Unit tests for the ACL policy engine: parsing and every rejection (with its line), alias
//! resolution, per-node filters, visibility, routes, autoApprovers, tagOwners, SSH and the
//! policy's own tests.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::TimeZone;
use ipnet::IpNet;
use proto::tailcfg::filter::{FilterRule, NetPortRange, PortRange};

use super::*;
use crate::model::{Node, NodeId, User, UserId};

fn now() -> crate::model::Timestamp {
    chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn ctx() -> CompileContext {
    CompileContext {
        now: now(),
        server_url: "https://ctl.example.com/".to_string(),
    }
}

fn user(id: i64, login: &str) -> User {
    User {
        id: UserId(id),
        login_name: login.to_string(),
        display_name: login.to_string(),
        created: now(),
    }
}

fn node(id: i64, user: Option<i64>, tags: &[&str], ip4: &str, routes: &[&str]) -> Node {
    Node {
        id: NodeId(id),
        machine_key: Default::default(),
        node_key: Default::default(),
        disco_key: Default::default(),
        user_id: user.map(UserId),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        hostname: format!("n{id}"),
        given_name: format!("n{id}"),
        ipv4: Some(ip4.parse().unwrap()),
        ipv6: Some(format!("fd7a:115c:a1e0::{id:x}").parse().unwrap()),
        endpoints: vec![],
        hostinfo: serde_json::json!({ "RoutableIPs": routes }),
        home_derp: 0,
        created: now(),
        last_seen: None,
        key_expiry: None,
        ephemeral: false,
        authorized: true,
        approved_routes: routes.iter().map(|r| r.parse().unwrap()).collect(),
        auth_key_id: None,
    }
}

fn users() -> Vec<User> {
    vec![
        user(1, "alice@example.com"),
        user(2, "bob@example.com"),
        user(3, "carol@other.org"),
    ]
}

/// 1,2: alice; 3: bob; 4: tag:prod; 5: tag:router (10.33.0.0/16); 6: tag:exit (exit node);
/// 7: carol; 8: bob, unauthorized.
fn nodes() -> Vec<Node> {
    let mut unauthorized = node(8, Some(2), &[], "100.64.0.8", &[]);
    unauthorized.authorized = false;
    vec![
        node(1, Some(1), &[], "100.64.0.1", &[]),
        node(2, Some(1), &[], "100.64.0.2", &[]),
        node(3, Some(2), &[], "100.64.0.3", &[]),
        node(4, None, &["tag:prod"], "100.64.0.4", &[]),
        node(5, None, &["tag:router"], "100.64.0.5", &["10.33.0.0/16"]),
        node(6, None, &["tag:exit"], "100.64.0.6", &["0.0.0.0/0", "::/0"]),
        node(7, Some(3), &[], "100.64.0.7", &[]),
        unauthorized,
    ]
}

const HEADER: &str = r#"
  "groups": {
    "group:eng": ["alice@example.com"],
    "group:ops": ["bob@example.com", "carol@other.org"],
  },
  "tagOwners": {
    "tag:prod": ["group:eng"],
    "tag:router": ["autogroup:admin"],
    "tag:exit": ["tag:router"],
    "tag:ci": ["autogroup:member"],
  },
  "hosts": {
    "db": "100.64.0.4",
    "lan": "10.33.1.0/24",
  },
"#;

/// A policy with the common header and the given ACL entries.
fn with_acls(acls: &str) -> Policy {
    let text = format!("{{{HEADER} \"acls\": [{acls}]}}");
    Policy::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn compile(p: &Policy) -> Compiled {
    p.compile(&users(), &nodes(), &ctx())
}

fn npr(ip: &str, first: u16, last: u16) -> NetPortRange {
    NetPortRange {
        ip: ip.to_string(),
        ports: PortRange { first, last },
    }
}

fn rule(src: &[&str], dst: Vec<NetPortRange>, proto: &[i32]) -> FilterRule {
    FilterRule {
        src_ips: src.iter().map(|s| s.to_string()).collect(),
        dst_ports: dst,
        ip_proto: proto.to_vec(),
        cap_grant: vec![],
    }
}

fn id(n: i64) -> NodeId {
    NodeId(n)
}

fn parse_err(text: &str) -> PolicyError {
    match Policy::parse(text) {
        Ok(_) => panic!("policy unexpectedly accepted:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error is on `line` and its message contains `needle`.
fn assert_err(text: &str, line: usize, needle: &str) {
    let e = parse_err(text);
    assert_eq!(e.line, Some(line), "wrong line for {e}");
    assert!(
        e.to_string().contains(needle),
        "{e:?} does not mention {needle:?}"
    );
    assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
}

// ---------------------------------------------------------------- parsing

#[test]
fn hujson_comments_and_trailing_commas_parse() {
    let p = Policy::parse(
        r#"// tailnet policy
        {
          /* block comment */
          "groups": { "group:eng": ["alice@example.com",], }, // trailing
          "tagOwners": { "tag:prod": ["group:eng"], },
          "acls": [
            { "action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22"], },
          ],
        }"#,
    )
    .unwrap();
    assert_eq!(p.acls.len(), 1);
    assert!(!p.is_allow_all());
    assert_eq!(p.defined_tags().collect::<Vec<_>>(), vec!["tag:prod"]);
}

#[test]
fn keys_match_case_insensitively() {
    let p =
        Policy::parse(r#"{"ACLs": [{"Action": "accept", "SRC": ["*"], "Dst": ["*:*"]}]}"#).unwrap();
    assert_eq!(p.acls.len(), 1);
}

#[test]
fn json_syntax_error_names_line_and_column() {
    let e = parse_err("{\n  \"acls\": [\n    {\"action\": \"accept\" \"src\": []}\n  ]\n}");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("column"), "{e}");
    assert!(
        e.to_string().starts_with("line 3: syntax error at column"),
        "{e}"
    );
}

#[test]
fn single_quotes_are_not_hujson() {
    assert_eq!(parse_err("{\n'acls': []}").line, Some(2));
}

#[test]
fn empty_text_is_rejected() {
    assert!(Policy::parse("  // nothing\n").is_err());
    assert_err("[]", 1, "must be an object");
}

#[test]
fn unknown_top_level_key_is_rejected() {
    assert_err(
        "{\n  \"acls\": [],\n  \"derpMap\": {}\n}",
        3,
        "unknown key \"derpMap\"",
    );
}

#[test]
fn duplicate_key_is_rejected() {
    assert_err("{\n \"acls\": [],\n \"acls\": []\n}", 3, "duplicate key");
}

#[test]
fn grants_are_rejected_and_node_attrs_ignored() {
    assert_err("{\n \"grants\": []\n}", 2, "not supported");
    let p = Policy::parse(
        r#"{"nodeAttrs": [{"target": ["*"], "attr": ["funnel"]}], "randomizeClientPort": true}"#,
    )
    .unwrap();
    assert!(p.randomize_client_port);
}

#[test]
fn undefined_group_names_its_line() {
    let text = "{\n \"acls\": [\n  {\"action\": \"accept\",\n   \"src\": [\"group:eng\"],\n   \"dst\": [\"*:*\"]}\n ]\n}";
    assert_err(text, 4, "group \"group:eng\" is not defined");
}

#[test]
fn nested_group_is_rejected() {
    let text = "{\n \"groups\": {\n  \"group:a\": [\"alice@example.com\"],\n  \"group:b\": [\n   \"group:a\"]\n }\n}";
    assert_err(text, 5, "nested groups are not allowed");
}

#[test]
fn group_member_must_be_a_user_and_name_prefixed() {
    assert_err(
        "{\"groups\": {\n\"group:a\": [\"alice\"]}}",
        2,
        "is not a user",
    );
    assert_err(
        "{\"groups\": {\n\"eng\": []}}",
        2,
        "must start with \"group:\"",
    );
}

#[test]
fn undefined_tag_names_its_line() {
    let text = "{\n \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"],\n  \"dst\": [\"tag:prod:22\"]}]\n}";
    assert_err(text, 3, "tag \"tag:prod\" is not defined in tagOwners");
    // A tag owner that is itself an undefined tag.
    assert_err(
        "{\"tagOwners\": {\n\"tag:a\": [\n\"tag:b\"]}}",
        3,
        "tag \"tag:b\" is not defined",
    );
    // In autoApprovers.
    assert_err(
        "{\"autoApprovers\": {\"routes\": {\"10.0.0.0/8\": [\n\"tag:router\"]}}}",
        2,
        "tag \"tag:router\" is not defined",
    );
    assert_err(
        "{\"tagOwners\": {\n\"prod\": []}}",
        2,
        "must start with \"tag:\"",
    );
}

#[test]
fn undefined_host_names_its_line() {
    let text =
        "{\"acls\": [\n{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\n\"web:80\"]}]}";
    assert_err(text, 3, "host \"web\" is not defined");
}

#[test]
fn bad_ports_are_rejected() {
    let acl = |dst: &str| {
        format!(
            "{{\"acls\": [\n{{\"action\": \"accept\", \"src\": [\"*\"],\n\"dst\": [\"{dst}\"]}}]}}"
        )
    };
    assert_err(&acl("*:99999"), 3, "invalid port \"99999\"");
    assert_err(&acl("*:2000-1000"), 3, "start is after end");
    assert_err(&acl("*:22,"), 3, "empty entry");
    assert_err(&acl("100.64.0.1"), 3, "missing its ports");
    assert_err(&acl("[fd7a::1]"), 3, "missing its ports");
}

#[test]
fn bad_protocol_is_rejected() {
    let text = "{\"acls\": [{\"action\": \"accept\",\n\"proto\": \"tcpp\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}";
    assert_err(text, 2, "unknown protocol \"tcpp\"");
    let text = "{\"acls\": [{\"action\": \"accept\", \"proto\": \"256\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}";
    assert_err(text, 1, "unknown protocol");
}

#[test]
fn ports_with_portless_protocol_are_rejected() {
    let text = "{\"acls\": [{\"action\": \"accept\", \"proto\": \"icmp\", \"src\": [\"*\"],\n\"dst\": [\"*:22\"]}]}";
    assert_err(text, 2, "has no ports");
}

#[test]
fn bad_cidrs_are_rejected() {
    let acl = |dst: &str| {
        format!(
            "{{\"acls\": [\n{{\"action\": \"accept\", \"src\": [\"*\"],\n\"dst\": [\"{dst}\"]}}]}}"
        )
    };
    assert_err(
        &acl("10.0.0.1/8:22"),
        3,
        "host bits are set (did you mean \"10.0.0.0/8\"?)",
    );
    assert_err(&acl("10.0.0.0/33:22"), 3, "invalid IP address or CIDR");
    assert_err(
        "{\"hosts\": {\n\"x\": \"300.1.1.1\"}}",
        2,
        "invalid IP address",
    );
    assert_err(
        "{\"autoApprovers\": {\"routes\": {\n\"10.0.0.0/33\": []}}}",
        2,
        "invalid IP address or CIDR",
    );
}

#[test]
fn self_and_internet_are_not_sources() {
    let acl = |src: &str| {
        format!(
            "{{\"acls\": [\n{{\"action\": \"accept\",\n\"src\": [\"{src}\"], \"dst\": [\"*:*\"]}}]}}"
        )
    };
    assert_err(
        &acl("autogroup:self"),
        3,
        "autogroup:self cannot be used as a source",
    );
    assert_err(
        &acl("autogroup:internet"),
        3,
        "autogroup:internet cannot be used as a source",
    );
    assert_err(&acl("autogroup:bogus"), 3, "unknown autogroup");
}

#[test]
fn invalid_action_is_rejected() {
    let text = "{\"acls\": [{\n\"action\": \"deny\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}";
    assert_err(text, 2, "invalid action \"deny\"");
    assert_err(
        "{\"acls\": [\n{\"src\": [\"*\"], \"dst\": [\"*:*\"]}]}",
        2,
        "missing \"action\"",
    );
    assert_err(
        "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"],\n\"foo\": 1}]}",
        2,
        "unknown key \"foo\"",
    );
}

#[test]
fn ssh_rejections_name_their_lines() {
    let ssh =
        |body: &str| format!("{{\"tagOwners\": {{\"tag:prod\": []}}, \"ssh\": [\n{{{body}}}]}}");
    assert_err(
        &ssh(
            "\"action\": \"allow\", \"src\": [\"*\"], \"dst\": [\"tag:prod\"], \"users\": [\"root\"]",
        ),
        2,
        "invalid ssh action",
    );
    assert_err(
        &ssh(
            "\"action\": \"accept\", \"checkPeriod\": \"1h\", \"src\": [\"*\"], \"dst\": [\"tag:prod\"], \"users\": [\"root\"]",
        ),
        2,
        "only valid with action \"check\"",
    );
    assert_err(
        &ssh(
            "\"action\": \"check\", \"checkPeriod\": \"169h\", \"src\": [\"*\"], \"dst\": [\"tag:prod\"], \"users\": [\"root\"]",
        ),
        2,
        "longer than the maximum of 168h",
    );
    assert_err(
        &ssh(
            "\"action\": \"check\", \"checkPeriod\": \"soon\", \"src\": [\"*\"], \"dst\": [\"tag:prod\"], \"users\": [\"root\"]",
        ),
        2,
        "invalid checkPeriod",
    );
    assert_err(
        &ssh("\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*\"], \"users\": [\"root\"]"),
        2,
        "cannot be an ssh destination",
    );
    assert_err(
        &ssh("\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"tag:prod\"], \"users\": []"),
        2,
        "has no users",
    );
    assert_err(
        &ssh(
            "\"action\": \"accept\", \"src\": [\"autogroup:self\"], \"dst\": [\"tag:prod\"], \"users\": [\"root\"]",
        ),
        2,
        "cannot be used as a source",
    );
}

#[test]
fn error_display_is_line_then_reason() {
    let e = PolicyError::at(12, "group \"group:eng\" is not defined");
    assert_eq!(e.to_string(), "line 12: group \"group:eng\" is not defined");
}

// ---------------------------------------------------------------- compile: aliases

#[test]
fn group_source_to_tag_destination() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22"]}"#,
    ));
    assert_eq!(
        c.filter_for(id(4)),
        vec![rule(
            &[
                "100.64.0.1",
                "100.64.0.2",
                "fd7a:115c:a1e0::1",
                "fd7a:115c:a1e0::2"
            ],
            vec![npr("100.64.0.4", 22, 22), npr("fd7a:115c:a1e0::4", 22, 22)],
            &[]
        )]
    );
    // Nodes that are not destinations get nothing (deny all).
    assert!(c.filter_for(id(1)).is_empty());
    assert!(c.filter_for(id(3)).is_empty());
}

#[test]
fn user_alias_means_that_users_untagged_nodes() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["bob@example.com"], "dst": ["alice@example.com:80"]}"#,
    ));
    let f = c.filter_for(id(1));
    assert_eq!(f.len(), 1);
    // Node 8 (bob's, unauthorized) is not a source.
    assert_eq!(f[0].src_ips, vec!["100.64.0.3", "fd7a:115c:a1e0::3"]);
    assert_eq!(
        f[0].dst_ports,
        vec![npr("100.64.0.1", 80, 80), npr("fd7a:115c:a1e0::1", 80, 80)]
    );
}

#[test]
fn host_and_cidr_destinations() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["db:5432", "lan:443", "192.168.7.0/24:*"]}"#,
    ));
    // The host is a single IP: written without /32 and kept only for the node holding it.
    assert_eq!(
        c.filter_for(id(4))[0].dst_ports,
        vec![npr("100.64.0.4", 5432, 5432)]
    );
    // The subnet router gets the part inside its route.
    assert_eq!(
        c.filter_for(id(5))[0].dst_ports,
        vec![npr("10.33.1.0/24", 443, 443)]
    );
    // Nothing reaches 192.168.7.0/24 through any node.
    assert!(c.filter_for(id(3)).is_empty());
}

#[test]
fn autogroup_member_and_tagged() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:tagged:*"]}"#,
    ));
    let f = c.filter_for(id(4));
    assert_eq!(
        f[0].src_ips,
        vec![
            "100.64.0.1",
            "100.64.0.2/31",
            "100.64.0.7",
            "fd7a:115c:a1e0::1",
            "fd7a:115c:a1e0::2/127",
            "fd7a:115c:a1e0::7"
        ]
    );
    assert!(!c.filter_for(id(5)).is_empty());
    assert!(c.filter_for(id(1)).is_empty());
}

#[test]
fn wildcard_source_is_tailnet_ranges_plus_routes() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["*"], "dst": ["*:*"]}"#,
    ));
    let f = c.filter_for(id(1));
    assert_eq!(
        f,
        vec![rule(
            &[
                "10.33.0.0/16",
                "100.64.0.0-100.115.91.255",
                "100.115.94.0-100.127.255.255",
                "fd7a:115c:a1e0::/48"
            ],
            vec![npr("*", 0, 65535)],
            &[]
        )]
    );
}

#[test]
fn danger_all_source_is_star() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["autogroup:danger-all"], "dst": ["tag:prod:443"]}"#,
    ));
    assert_eq!(c.filter_for(id(4))[0].src_ips, vec!["*"]);
}

#[test]
fn autogroup_self_is_per_user() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}"#,
    ));
    assert_eq!(
        c.filter_for(id(1)),
        vec![rule(
            &[
                "100.64.0.1",
                "100.64.0.2",
                "fd7a:115c:a1e0::1",
                "fd7a:115c:a1e0::2"
            ],
            vec![
                npr("100.64.0.1", 0, 65535),
                npr("fd7a:115c:a1e0::1", 0, 65535)
            ],
            &[]
        )]
    );
    assert_eq!(
        c.filter_for(id(3))[0].src_ips,
        vec!["100.64.0.3", "fd7a:115c:a1e0::3"]
    );
    // Tagged nodes are nobody's "self".
    assert!(c.filter_for(id(4)).is_empty());
    assert!(c.can_see(id(1), id(2)));
    assert!(!c.can_see(id(1), id(3)));
    assert_eq!(c.visible_peers(id(2)), vec![id(1)]);
}

#[test]
fn self_and_other_destinations_split_into_two_rules() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["autogroup:self:22", "tag:prod:22"]}"#,
    ));
    assert_eq!(c.filter_for(id(1)).len(), 1);
    assert_eq!(c.filter_for(id(4)).len(), 1);
    assert!(c.filter_for(id(7)).is_empty());
}

#[test]
fn internet_goes_to_exit_nodes_only() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["autogroup:internet:*"]}"#,
    ));
    let exit = c.filter_for(id(6));
    assert_eq!(exit.len(), 1);
    let ips: Vec<&str> = exit[0].dst_ports.iter().map(|d| d.ip.as_str()).collect();
    assert!(ips.contains(&"0.0.0.0/5"), "{ips:?}");
    assert!(ips.contains(&"2000::/3"), "{ips:?}");
    assert!(
        !ips.iter()
            .any(|ip| ip.starts_with("10.") || ip.starts_with("100.64")),
        "{ips:?}"
    );
    assert!(c.filter_for(id(5)).is_empty());
    assert!(c.filter_for(id(4)).is_empty());
    assert!(c.can_see(id(1), id(6)));
    assert!(!c.can_see(id(1), id(4)));
}

#[test]
fn port_forms() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"],
            "dst": ["tag:prod:80,443", "tag:prod:1000-2000", "[fd7a:115c:a1e0::4]:8443", "100.64.0.4:22"]}"#,
    ));
    assert_eq!(
        c.filter_for(id(4))[0].dst_ports,
        vec![
            npr("100.64.0.4", 80, 80),
            npr("100.64.0.4", 443, 443),
            npr("fd7a:115c:a1e0::4", 80, 80),
            npr("fd7a:115c:a1e0::4", 443, 443),
            npr("100.64.0.4", 1000, 2000),
            npr("fd7a:115c:a1e0::4", 1000, 2000),
            npr("fd7a:115c:a1e0::4", 8443, 8443),
            npr("100.64.0.4", 22, 22),
        ]
    );
}

#[test]
fn protocols_by_name_and_number() {
    let p = with_acls(
        r#"{"action": "accept", "proto": "udp", "src": ["group:eng"], "dst": ["tag:prod:53"]},
           {"action": "accept", "proto": "50", "src": ["group:eng"], "dst": ["tag:prod:*"]},
           {"action": "accept", "proto": "ESP", "src": ["group:eng"], "dst": ["db:*"]},
           {"action": "accept", "proto": "ipv6-icmp", "src": ["group:eng"], "dst": ["tag:prod:*"]}"#,
    );
    let f = compile(&p).filter_for(id(4));
    let protos: Vec<Vec<i32>> = f.iter().map(|r| r.ip_proto.clone()).collect();
    assert_eq!(protos, vec![vec![17], vec![50], vec![58]]);
    // The two ESP rules share sources and protocol, so they merged.
    assert_eq!(f[1].dst_ports.len(), 2);
}

#[test]
fn same_sources_and_protocol_merge() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22"]},
           {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:prod:80"]},
           {"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22"]},
           {"action": "accept", "proto": "tcp", "src": ["group:eng"], "dst": ["tag:prod:443"]}"#,
    ));
    let f = c.filter_for(id(4));
    assert_eq!(f.len(), 2, "{f:#?}");
    assert_eq!(
        f[0].dst_ports,
        vec![
            npr("100.64.0.4", 22, 22),
            npr("fd7a:115c:a1e0::4", 22, 22),
            npr("100.64.0.4", 80, 80),
            npr("fd7a:115c:a1e0::4", 80, 80),
        ]
    );
    assert_eq!(f[1].ip_proto, vec![6]);
}

#[test]
fn per_node_reduction_keeps_only_own_destinations() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["tag:prod:22", "alice@example.com:80", "lan:*"]}"#,
    ));
    assert_eq!(
        c.filter_for(id(4))[0].dst_ports,
        vec![npr("100.64.0.4", 22, 22), npr("fd7a:115c:a1e0::4", 22, 22)]
    );
    assert_eq!(
        c.filter_for(id(2))[0].dst_ports,
        vec![npr("100.64.0.2", 80, 80), npr("fd7a:115c:a1e0::2", 80, 80)]
    );
    assert_eq!(
        c.filter_for(id(5))[0].dst_ports,
        vec![npr("10.33.1.0/24", 0, 65535)]
    );
    assert!(c.filter_for(id(3)).is_empty());
}

#[test]
fn compile_is_deterministic_regardless_of_input_order() {
    let p = with_acls(
        r#"{"action": "accept", "src": ["*"], "dst": ["tag:prod:22", "autogroup:self:*"]},
           {"action": "accept", "src": ["group:ops", "tag:ci"], "dst": ["*:80"]}"#,
    );
    let a = compile(&p);
    let mut shuffled = nodes();
    shuffled.reverse();
    let b = p.compile(&users(), &shuffled, &ctx());
    for n in 1..=8 {
        assert_eq!(a.filter_for(id(n)), b.filter_for(id(n)));
        assert_eq!(a.visible_peers(id(n)), b.visible_peers(id(n)));
    }
}

#[test]
fn unauthorized_and_expired_nodes_take_part_in_nothing() {
    let p = with_acls(r#"{"action": "accept", "src": ["*"], "dst": ["*:*"]}"#);
    let c = compile(&p);
    assert!(c.filter_for(id(8)).is_empty());
    assert!(c.visible_peers(id(8)).is_empty());
    assert!(!c.can_see(id(3), id(8)));
    assert!(!c.visible_peers(id(3)).contains(&id(8)));

    let mut ns = nodes();
    ns[0].key_expiry = Some(now() - chrono::Duration::hours(1));
    ns[1].key_expiry = Some(now() + chrono::Duration::hours(1));
    let c = p.compile(&users(), &ns, &ctx());
    assert!(c.filter_for(id(1)).is_empty());
    assert!(!c.can_see(id(2), id(1)));
    assert!(c.can_see(id(2), id(3)));
}

#[test]
fn no_policy_allows_everything() {
    let p = Policy::allow_all();
    assert!(p.is_allow_all());
    let c = compile(&p);
    assert_eq!(c.filter_for(id(1)), vec![FilterRule::allow_all()]);
    assert!(c.filter_for(id(8)).is_empty());
    assert!(c.can_see(id(1), id(4)));
    assert_eq!(
        c.visible_peers(id(1)),
        vec![id(2), id(3), id(4), id(5), id(6), id(7)]
    );
    assert!(c.ssh_policy_for(id(1)).is_none());
    assert!(c.route_visible(id(1), id(6), "0.0.0.0/0".parse().unwrap()));
    assert!(p.run_tests(&users(), &nodes()).is_ok());
}

#[test]
fn empty_acls_deny_everything() {
    let c = compile(&with_acls(""));
    assert!(c.filter_for(id(1)).is_empty());
    assert!(c.visible_peers(id(1)).is_empty());
}

// ---------------------------------------------------------------- visibility and routes

#[test]
fn visibility_is_symmetric() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22"]}"#,
    ));
    assert!(c.can_see(id(1), id(4)));
    assert!(c.can_see(id(4), id(1)));
    assert!(!c.can_see(id(1), id(2)));
    assert!(!c.can_see(id(3), id(4)));
    assert!(!c.can_see(id(1), id(1)));
    assert_eq!(c.visible_peers(id(4)), vec![id(1), id(2)]);
    assert_eq!(c.visible_peers(id(1)), vec![id(4)]);
    assert!(c.visible_peers(id(3)).is_empty());
    assert!(!c.can_see(id(1), id(99)));
}

#[test]
fn subnet_routes_count_for_visibility_and_allowed_ips() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["10.33.0.0/16:*"]}"#,
    ));
    let route: IpNet = "10.33.0.0/16".parse().unwrap();
    assert!(c.can_see(id(1), id(5)));
    assert!(!c.can_see(id(3), id(5)));
    assert!(c.route_visible(id(1), id(5), route));
    assert!(!c.route_visible(id(3), id(5), route));
    // Not a route of that peer.
    assert!(!c.route_visible(id(1), id(4), route));
}

#[test]
fn routes_as_sources_make_the_router_visible() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["10.33.0.0/16"], "dst": ["tag:prod:22"]}"#,
    ));
    assert!(c.can_see(id(4), id(5)));
    assert!(c.route_visible(id(4), id(5), "10.33.0.0/16".parse().unwrap()));
    assert!(!c.can_see(id(1), id(5)));
}

#[test]
fn exit_routes_need_internet_access() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["group:eng"], "dst": ["autogroup:internet:*"]},
           {"action": "accept", "src": ["group:ops"], "dst": ["tag:exit:22"]}"#,
    ));
    let exit: IpNet = "0.0.0.0/0".parse().unwrap();
    let exit6: IpNet = "::/0".parse().unwrap();
    assert!(c.route_visible(id(1), id(6), exit));
    assert!(c.route_visible(id(1), id(6), exit6));
    // Bob may reach the exit node itself, but not the internet through it.
    assert!(c.can_see(id(3), id(6)));
    assert!(!c.route_visible(id(3), id(6), exit));
}

// ---------------------------------------------------------------- autoApprovers, tagOwners

#[test]
fn auto_approvers_for_routes_and_exit_nodes() {
    let p = Policy::parse(
        r#"{
          "groups": {"group:net": ["alice@example.com"]},
          "tagOwners": {"tag:router": [], "tag:exit": []},
          "autoApprovers": {
            "routes": {
              "10.33.0.0/16": ["tag:router"],
              "192.168.0.0/16": ["group:net"],
              "0.0.0.0/0": ["bob@example.com"],
            },
            "exitNode": ["tag:exit"],
          },
        }"#,
    )
    .unwrap();
    let (us, ns) = (users(), nodes());
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    assert!(p.auto_approved(&ns[4], &us, net("10.33.0.0/16")));
    assert!(p.auto_approved(&ns[4], &us, net("10.33.5.0/24")));
    assert!(!p.auto_approved(&ns[4], &us, net("10.34.0.0/16")));
    assert!(!p.auto_approved(&ns[4], &us, net("10.0.0.0/8")));
    assert!(!p.auto_approved(&ns[4], &us, net("0.0.0.0/0")));
    assert!(p.auto_approved(&ns[5], &us, net("0.0.0.0/0")));
    assert!(p.auto_approved(&ns[5], &us, net("::/0")));
    // Group approvers match the owner of an untagged node.
    assert!(p.auto_approved(&ns[0], &us, net("192.168.1.0/24")));
    assert!(!p.auto_approved(&ns[6], &us, net("192.168.1.0/24")));
    // A /0 under "routes" approves any subnet but never the exit route itself.
    assert!(p.auto_approved(&ns[2], &us, net("172.16.0.0/12")));
    assert!(!p.auto_approved(&ns[2], &us, net("0.0.0.0/0")));
    assert!(!Policy::allow_all().auto_approved(&ns[5], &us, net("0.0.0.0/0")));
}

#[test]
fn tag_owners() {
    let p = with_acls("");
    let alice = TagOwnerCheck::User {
        login_name: "Alice@Example.com",
        is_admin: false,
    };
    let bob = TagOwnerCheck::User {
        login_name: "bob@example.com",
        is_admin: false,
    };
    let admin = TagOwnerCheck::User {
        login_name: "bob@example.com",
        is_admin: true,
    };
    let router = ["tag:router".to_string()];
    assert!(p.may_own_tag("tag:prod", alice));
    assert!(!p.may_own_tag("tag:prod", bob));
    assert!(p.may_own_tag("tag:router", admin));
    assert!(!p.may_own_tag("tag:router", bob));
    assert!(p.may_own_tag("tag:exit", TagOwnerCheck::Tags(&router)));
    assert!(!p.may_own_tag("tag:exit", alice));
    assert!(p.may_own_tag("tag:ci", bob));
    assert!(!p.may_own_tag("tag:ci", TagOwnerCheck::Tags(&router)));
    assert!(!p.may_own_tag("tag:undefined", admin));
}

// ---------------------------------------------------------------- SSH

const SSH_POLICY: &str = r#"{
  "groups": {"group:eng": ["alice@example.com"]},
  "tagOwners": {"tag:prod": []},
  "acls": [],
  "ssh": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:prod"], "users": ["autogroup:nonroot", "deploy"]},
    {"action": "check", "src": ["bob@example.com"], "dst": ["tag:prod"], "users": ["root"], "checkPeriod": "1h30m"},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["localpart:*@example.com"],
     "acceptEnv": ["GIT_*"]},
  ],
}"#;

#[test]
fn ssh_accept_and_check_rules() {
    let c = compile(&Policy::parse(SSH_POLICY).unwrap());
    let p = c.ssh_policy_for(id(4)).unwrap();
    assert_eq!(p.rules.len(), 2);
    // Check rules come first.
    let check = &p.rules[0];
    assert_eq!(
        check.action.as_ref().unwrap().hold_and_delegate,
        "https://ctl.example.com/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"
    );
    assert!(!check.action.as_ref().unwrap().accept);
    let ips: Vec<&str> = check
        .principals
        .iter()
        .map(|p| p.node_ip.as_str())
        .collect();
    assert_eq!(ips, vec!["100.64.0.3", "fd7a:115c:a1e0::3"]);
    assert_eq!(
        check.ssh_users,
        [("root".to_string(), "root".to_string())].into()
    );

    let accept = &p.rules[1];
    let action = accept.action.as_ref().unwrap();
    assert!(action.accept && action.allow_agent_forwarding && action.allow_local_port_forwarding);
    assert!(action.allow_remote_port_forwarding);
    assert_eq!(
        accept.ssh_users,
        [("*", "="), ("deploy", "deploy"), ("root", "")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .into()
    );
    assert_eq!(accept.principals.len(), 4);

    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["rules"][1]["sshUsers"]["root"], "");
    assert_eq!(json["rules"][0]["principals"][0]["nodeIP"], "100.64.0.3");
}

#[test]
fn ssh_check_period_and_default() {
    let c = compile(&Policy::parse(SSH_POLICY).unwrap());
    assert_eq!(
        c.ssh_check_period(id(3), id(4)),
        Some(CheckPeriod::Every(Duration::from_secs(5400)))
    );
    assert_eq!(c.ssh_check_period(id(1), id(4)), None);
    let p = Policy::parse(
        r#"{"tagOwners": {"tag:prod": []},
            "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["tag:prod"], "users": ["root"]},
                    {"action": "check", "src": ["alice@example.com"], "dst": ["tag:prod"], "users": ["root"],
                     "checkPeriod": "always"}]}"#,
    )
    .unwrap();
    let c = compile(&p);
    assert_eq!(c.ssh_check_period(id(3), id(4)), Some(CheckPeriod::DEFAULT));
    assert_eq!(c.ssh_check_period(id(1), id(4)), Some(CheckPeriod::Always));
}

#[test]
fn ssh_localpart_and_self() {
    let c = compile(&Policy::parse(SSH_POLICY).unwrap());
    let p = c.ssh_policy_for(id(1)).unwrap();
    assert_eq!(p.rules.len(), 1);
    let r = &p.rules[0];
    assert_eq!(
        r.ssh_users,
        [("alice".to_string(), "alice".to_string())].into()
    );
    let ips: Vec<&str> = r.principals.iter().map(|p| p.node_ip.as_str()).collect();
    assert_eq!(
        ips,
        vec![
            "100.64.0.1",
            "100.64.0.2",
            "fd7a:115c:a1e0::1",
            "fd7a:115c:a1e0::2"
        ]
    );
    assert_eq!(r.accept_env, vec!["GIT_*"]);
    // carol is not @example.com: no localpart rule for her own devices.
    assert!(c.ssh_policy_for(id(7)).unwrap().rules.is_empty());
}

#[test]
fn no_ssh_section_means_no_ssh_policy() {
    let c = compile(&with_acls(
        r#"{"action": "accept", "src": ["*"], "dst": ["*:*"]}"#,
    ));
    assert!(c.ssh_policy_for(id(1)).is_none());
    let c = compile(&Policy::parse(r#"{"ssh": []}"#).unwrap());
    assert_eq!(c.ssh_policy_for(id(1)).unwrap().rules, vec![]);
}

// ---------------------------------------------------------------- tests blocks

const TESTED: &str = r#"{
  "groups": {"group:eng": ["alice@example.com", "dave@example.com"]},
  "tagOwners": {"tag:prod": ["group:eng"]},
  "hosts": {"db": "100.64.0.4"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22,443"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "proto": "udp", "src": ["bob@example.com"], "dst": ["tag:prod:53"]},
  ],
  "ssh": [
    {"action": "check", "src": ["group:eng"], "dst": ["tag:prod"], "users": ["root"]},
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:prod"], "users": ["autogroup:nonroot"]},
  ],
"#;

fn tested(tests: &str) -> Policy {
    Policy::parse(&format!("{TESTED}{tests}}}")).unwrap()
}

#[test]
fn passing_tests_block() {
    let p = tested(
        r#""tests": [
          {"src": "alice@example.com", "accept": ["tag:prod:22", "tag:prod:443", "alice@example.com:8080"],
           "deny": ["tag:prod:80", "bob@example.com:22"]},
          {"src": "group:eng", "accept": ["tag:prod:443"]},
          {"src": "bob@example.com", "proto": "udp", "accept": ["tag:prod:53"]},
          {"src": "bob@example.com", "deny": ["tag:prod:53", "db:22"]},
          {"src": "tag:prod", "deny": ["alice@example.com:22"]},
        ],
        "sshTests": [
          {"src": "alice@example.com", "dst": ["tag:prod"], "accept": ["ubuntu"], "check": ["root"]},
          {"src": "bob@example.com", "dst": ["tag:prod"], "deny": ["root", "ubuntu"]},
        ],"#,
    );
    // Symbolic: works without any registered user or node.
    p.run_tests(&[], &[]).unwrap();
    // And with them, where the host "db" resolves to node 4 (tag:prod) by address.
    p.run_tests(&users(), &nodes()).unwrap();
}

#[test]
fn ip_destinations_in_tests_use_registered_nodes() {
    let p = tested(
        r#""tests": [{"src": "alice@example.com", "accept": ["db:22", "100.64.0.4:443"]}],"#,
    );
    p.run_tests(&users(), &nodes()).unwrap();
    // Without nodes nothing says 100.64.0.4 is tag:prod.
    let e = p.run_tests(&[], &[]).unwrap_err();
    assert!(
        e.message
            .contains("expected accept to db:22, but it is denied"),
        "{e}"
    );
}

#[test]
fn failing_accept_names_the_line() {
    let text = format!(
        "{TESTED}\"tests\": [\n  {{\"src\": \"alice@example.com\",\n   \"accept\": [\"tag:prod:22\",\n     \"tag:prod:80\"]}}\n]}}"
    );
    let line = text
        .lines()
        .position(|l| l.contains("\"tag:prod:80\""))
        .unwrap()
        + 1;
    let e = Policy::parse(&text)
        .unwrap()
        .run_tests(&[], &[])
        .unwrap_err();
    assert_eq!(e.line, Some(line));
    assert_eq!(
        e.to_string(),
        format!(
            "line {line}: test src alice@example.com: expected accept to tag:prod:80, but it is denied"
        )
    );
}

#[test]
fn failing_deny_and_group_member_are_reported() {
    let p = tested(r#""tests": [{"src": "group:eng", "deny": ["tag:prod:22"]}],"#);
    let e = p.run_tests(&[], &[]).unwrap_err();
    assert!(
        e.message
            .contains("test src group:eng (member alice@example.com): expected deny to tag:prod:22, but it is accepted"),
        "{e}"
    );
    let p = tested(r#""tests": [{"src": "bob@example.com", "accept": ["tag:prod:53"]}],"#);
    // Default test protocol is TCP; the rule is UDP only.
    assert!(p.run_tests(&[], &[]).is_err());
}

#[test]
fn failing_ssh_test_is_reported() {
    let p = tested(
        r#""sshTests": [{"src": "alice@example.com", "dst": ["tag:prod"], "accept": ["root"]}],"#,
    );
    let e = p.run_tests(&[], &[]).unwrap_err();
    assert!(
        e.message
            .contains("expected accepted as \"root\" on tag:prod, but it is allowed after a check"),
        "{e}"
    );
}

#[test]
fn test_entries_are_validated_at_parse() {
    let text = format!(
        "{TESTED}\"tests\": [\n{{\"src\": \"alice@example.com\", \"accept\": [\n\"tag:prod:22-23\"]}}]}}"
    );
    let e = parse_err(&text);
    assert!(e.message.contains("single port"), "{e}");
    let text = format!("{TESTED}\"tests\": [\n{{\"src\": \"group:nope\"}}]}}");
    assert!(
        parse_err(&text)
            .message
            .contains("group \"group:nope\" is not defined")
    );
}
