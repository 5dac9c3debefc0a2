//! Registration, auth-key, expiry, tag, route and policy rules, under explicit time.

use chrono::{Duration, TimeZone, Utc};
use proto::keys::{MachinePrivate, MachinePublic, NodePrivate, NodePublic};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::store::sqlite::SqliteStore;

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

fn tailnet() -> Tailnet {
    let store = SqliteStore::open_in_memory().unwrap();
    Tailnet::load(Box::new(store), TailnetConfig::default()).unwrap()
}

struct Device {
    machine: MachinePublic,
    node: NodePublic,
}

fn device(seed: u8) -> Device {
    let mut rng = StdRng::from_seed([seed; 32]);
    Device {
        machine: MachinePrivate::generate(&mut rng).public(),
        node: NodePrivate::generate(&mut rng).public(),
    }
}

fn rng() -> StdRng {
    StdRng::from_seed([7; 32])
}

fn key(t: &mut Tailnet, opts: AuthKeyOptions) -> String {
    t.create_auth_key(opts, &Actor::cli(), t0(), &mut rand::thread_rng())
        .unwrap()
        .1
}

fn register(
    t: &mut Tailnet,
    d: &Device,
    key: Option<&str>,
    host: &str,
    now: Timestamp,
) -> RegisterOutcome {
    let input = RegisterInput {
        node_key: d.node,
        auth_key: key.map(str::to_string),
        hostinfo: serde_json::json!({"Hostname": host}),
        ..Default::default()
    };
    t.register(d.machine, input, now, &mut rng()).unwrap()
}

#[test]
fn single_use_key_registers_once_then_reports_already_used() {
    let mut t = tailnet();
    let k = key(&mut t, AuthKeyOptions::default());
    let ok = register(&mut t, &device(1), Some(&k), "web", t0());
    assert_eq!(ok.error, "");
    assert!(ok.machine_authorized);
    let again = register(&mut t, &device(2), Some(&k), "db", t0());
    assert_eq!(again.error, AuthKeyError::AlreadyUsed.to_string());
}

#[test]
fn reusable_key_registers_many() {
    let mut t = tailnet();
    let k = key(
        &mut t,
        AuthKeyOptions {
            reusable: true,
            ..Default::default()
        },
    );
    for i in 1..=3 {
        assert_eq!(
            register(&mut t, &device(i), Some(&k), "host", t0()).error,
            ""
        );
    }
    let names: Vec<_> = t.nodes().map(|n| n.given_name.clone()).collect();
    assert_eq!(
        names,
        ["host", "host-1", "host-2"],
        "colliding names get suffixes"
    );
    let ips: Vec<_> = t
        .nodes()
        .filter_map(|n| n.ipv4)
        .map(|a| a.to_string())
        .collect();
    assert_eq!(ips, ["100.64.0.1", "100.64.0.2", "100.64.0.3"]);
}

#[test]
fn expired_revoked_and_invalid_keys_are_refused_with_their_reason() {
    let mut t = tailnet();
    let exp = key(
        &mut t,
        AuthKeyOptions {
            expiry: Some(Duration::hours(1)),
            reusable: true,
            ..Default::default()
        },
    );
    let late = register(
        &mut t,
        &device(1),
        Some(&exp),
        "a",
        t0() + Duration::hours(2),
    );
    assert_eq!(late.error, AuthKeyError::Expired.to_string());
    assert_eq!(
        register(&mut t, &device(2), Some(&exp), "a", t0()).error,
        ""
    );

    let rev = key(&mut t, AuthKeyOptions::default());
    let key_id = t.auth_keys().last().unwrap().key_id.clone();
    t.revoke_auth_key(&key_id, &Actor::cli(), t0()).unwrap();
    assert_eq!(
        register(&mut t, &device(3), Some(&rev), "b", t0()).error,
        AuthKeyError::Revoked.to_string()
    );

    let bogus = format!("{}x", rev);
    assert_eq!(
        register(&mut t, &device(4), Some(&bogus), "c", t0()).error,
        AuthKeyError::Invalid.to_string()
    );
    assert_eq!(
        register(&mut t, &device(4), Some("tskey-auth-nope"), "c", t0()).error,
        AuthKeyError::Invalid.to_string()
    );
    let none = register(&mut t, &device(5), None, "d", t0());
    assert!(none.error.contains("auth key"), "{}", none.error);
}

#[test]
fn restart_with_known_node_key_needs_no_auth_key() {
    let mut t = tailnet();
    let k = key(&mut t, AuthKeyOptions::default());
    let d = device(1);
    assert_eq!(register(&mut t, &d, Some(&k), "a", t0()).error, "");
    // The single-use key is spent, but the same node key re-registering is a restart.
    let again = register(&mut t, &d, Some(&k), "a", t0() + Duration::hours(1));
    assert_eq!(again.error, "");
    let bare = register(&mut t, &d, None, "a", t0() + Duration::hours(2));
    assert_eq!(bare.error, "");
    assert_eq!(t.nodes().count(), 1);
}

#[test]
fn node_key_from_another_machine_is_refused() {
    let mut t = tailnet();
    let k = key(
        &mut t,
        AuthKeyOptions {
            reusable: true,
            ..Default::default()
        },
    );
    let d = device(1);
    register(&mut t, &d, Some(&k), "a", t0());
    let thief = Device {
        machine: device(9).machine,
        node: d.node,
    };
    assert!(
        register(&mut t, &thief, Some(&k), "a", t0())
            .error
            .contains("another machine")
    );
}

#[test]
fn ephemeral_nodes_vanish_on_logout_and_after_grace() {
    let mut t = tailnet();
    let k = key(
        &mut t,
        AuthKeyOptions {
            reusable: true,
            ephemeral: true,
            ..Default::default()
        },
    );
    let a = device(1);
    register(&mut t, &a, Some(&k), "a", t0());
    let id = t.node_by_key(&a.node).unwrap().id;
    let logout = RegisterInput {
        node_key: a.node,
        expiry: Some(Utc.timestamp_opt(123, 0).unwrap()),
        ..Default::default()
    };
    let out = t.register(a.machine, logout, t0(), &mut rng()).unwrap();
    assert!(out.node_key_expired);
    assert!(t.node(id).is_none(), "logout deletes an ephemeral node");

    let b = device(2);
    register(&mut t, &b, Some(&k), "b", t0());
    let id = t.node_by_key(&b.node).unwrap().id;
    t.session_started(id);
    t.session_ended(id, t0());
    assert!(
        !t.tick(t0() + Duration::seconds(60), t0()).unwrap(),
        "still within grace"
    );
    assert!(t.node(id).is_some());
    t.tick(t0() + Duration::seconds(121), t0()).unwrap();
    assert!(t.node(id).is_none(), "removed after the grace period");
}

#[test]
fn logout_expires_a_regular_node_and_relogin_keeps_its_ips() {
    let mut t = tailnet();
    let k = key(
        &mut t,
        AuthKeyOptions {
            reusable: true,
            ..Default::default()
        },
    );
    let a = device(1);
    register(&mut t, &a, Some(&k), "a", t0());
    let ip = t.node_by_key(&a.node).unwrap().ipv4;
    let logout = RegisterInput {
        node_key: a.node,
        expiry: Some(Utc.timestamp_opt(123, 0).unwrap()),
        ..Default::default()
    };
    t.register(a.machine, logout, t0(), &mut rng()).unwrap();
    let n = t.node_by_key(&a.node).unwrap();
    assert!(n.is_expired(t0()));
    let bare = register(&mut t, &a, None, "a", t0() + Duration::seconds(1));
    assert!(
        bare.node_key_expired && !bare.error.is_empty(),
        "needs an auth key again"
    );
    // A new node key from the same machine with a valid key: same node, same address.
    let again = Device {
        machine: a.machine,
        node: device(3).node,
    };
    assert_eq!(
        register(&mut t, &again, Some(&k), "a", t0() + Duration::seconds(2)).error,
        ""
    );
    assert_eq!(t.nodes().count(), 1);
    assert_eq!(t.node_by_key(&again.node).unwrap().ipv4, ip);
}

#[test]
fn key_rotation_keeps_identity() {
    let mut t = tailnet();
    let k = key(&mut t, AuthKeyOptions::default());
    let a = device(1);
    register(&mut t, &a, Some(&k), "a", t0());
    let id = t.node_by_key(&a.node).unwrap().id;
    let new_key = device(2).node;
    let input = RegisterInput {
        node_key: new_key,
        old_node_key: a.node,
        hostinfo: serde_json::json!({}),
        ..Default::default()
    };
    let out = t.register(a.machine, input, t0(), &mut rng()).unwrap();
    assert_eq!(out.error, "");
    assert_eq!(t.node_by_key(&new_key).map(|n| n.id), Some(id));
    assert!(t.node_by_key(&a.node).is_none());
}

#[test]
fn node_keys_expire_by_default_and_tagged_nodes_do_not() {
    let mut t = tailnet();
    t.set_policy(r#"{"tagOwners": {"tag:server": []}}"#, &Actor::cli(), t0())
        .unwrap();
    let user_key = key(&mut t, AuthKeyOptions::default());
    let tag_key = key(
        &mut t,
        AuthKeyOptions {
            tags: vec!["tag:server".into()],
            ..Default::default()
        },
    );
    register(&mut t, &device(1), Some(&user_key), "laptop", t0());
    register(&mut t, &device(2), Some(&tag_key), "server", t0());
    let laptop = t.find_node("laptop").unwrap();
    assert_eq!(laptop.key_expiry, Some(t0() + Duration::days(180)));
    let server = t.find_node("server").unwrap();
    assert_eq!(server.key_expiry, None);
    assert_eq!(server.tags, ["tag:server"]);
    assert_eq!(server.user_id, None);
    let id = laptop.id;
    t.set_node_expiry(id, None, &Actor::cli(), t0()).unwrap();
    assert_eq!(
        t.node(id).unwrap().key_expiry,
        None,
        "expiry can be disabled per node"
    );
    t.set_node_expiry(id, Some(t0()), &Actor::cli(), t0())
        .unwrap();
    assert!(t.node(id).unwrap().is_expired(t0()));
}

#[test]
fn requested_tags_need_tag_owners() {
    let mut t = tailnet();
    t.create_user("alice@example.com", "", &Actor::cli(), t0())
        .unwrap();
    t.set_policy(
        r#"{"tagOwners": {"tag:web": ["alice@example.com"], "tag:db": []}}"#,
        &Actor::cli(),
        t0(),
    )
    .unwrap();
    let k = key(
        &mut t,
        AuthKeyOptions {
            user: Some("alice@example.com".into()),
            reusable: true,
            ..Default::default()
        },
    );
    let mut input = RegisterInput {
        node_key: device(1).node,
        auth_key: Some(k.clone()),
        hostinfo: serde_json::json!({"Hostname": "w", "RequestTags": ["tag:web"]}),
        ..Default::default()
    };
    assert_eq!(
        t.register(device(1).machine, input.clone(), t0(), &mut rng())
            .unwrap()
            .error,
        ""
    );
    assert_eq!(t.find_node("w").unwrap().tags, ["tag:web"]);
    input.node_key = device(2).node;
    input.hostinfo = serde_json::json!({"Hostname": "d", "RequestTags": ["tag:db"]});
    let refused = t
        .register(device(2).machine, input, t0(), &mut rng())
        .unwrap();
    assert!(refused.error.contains("tag:db"), "{}", refused.error);
}

#[test]
fn device_approval_gates_unless_preauthorized() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut t = Tailnet::load(
        Box::new(store),
        TailnetConfig {
            device_approval: true,
            ..Default::default()
        },
    )
    .unwrap();
    let plain = key(&mut t, AuthKeyOptions::default());
    let pre = key(
        &mut t,
        AuthKeyOptions {
            preauthorized: true,
            ..Default::default()
        },
    );
    assert!(!register(&mut t, &device(1), Some(&plain), "a", t0()).machine_authorized);
    assert!(register(&mut t, &device(2), Some(&pre), "b", t0()).machine_authorized);
    let id = t.find_node("a").unwrap().id;
    t.approve_node(id, &Actor::cli(), t0()).unwrap();
    assert!(register(&mut t, &device(1), None, "a", t0()).machine_authorized);
}

#[test]
fn routes_need_approval_or_auto_approvers() {
    let mut t = tailnet();
    t.set_policy(
        r#"{"tagOwners": {"tag:router": []},
            "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
            "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:router"]}}"#,
        &Actor::cli(),
        t0(),
    )
    .unwrap();
    let rk = key(
        &mut t,
        AuthKeyOptions {
            tags: vec!["tag:router".into()],
            reusable: true,
            ..Default::default()
        },
    );
    let uk = key(
        &mut t,
        AuthKeyOptions {
            reusable: true,
            ..Default::default()
        },
    );
    let routes = serde_json::json!({"Hostname": "r", "RoutableIPs": ["10.1.0.0/16", "192.168.0.0/24", "0.0.0.0/0", "::/0"]});
    for (d, k, name) in [(device(1), &rk, "r"), (device(2), &uk, "u")] {
        let input = RegisterInput {
            node_key: d.node,
            auth_key: Some(k.clone()),
            hostinfo: routes.clone(),
            ..Default::default()
        };
        t.register(d.machine, input, t0(), &mut rng()).unwrap();
        let _ = name;
    }
    let r = t.find_node("r").unwrap();
    let mut enabled: Vec<String> = r.enabled_routes().iter().map(ToString::to_string).collect();
    enabled.sort();
    assert_eq!(
        enabled,
        ["0.0.0.0/0", "10.1.0.0/16", "::/0"],
        "auto-approved; 192.168 needs an admin"
    );
    let u = t
        .nodes()
        .find(|n| n.given_name.starts_with('r') && n.id != r.id)
        .unwrap();
    assert!(
        u.enabled_routes().is_empty(),
        "an untagged node's routes are not auto-approved"
    );
    let rid = r.id;
    t.set_approved_routes(
        rid,
        vec![
            "192.168.0.0/24".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ],
        &Actor::cli(),
        t0(),
    )
    .unwrap();
    assert_eq!(t.node(rid).unwrap().enabled_routes().len(), 2);
}

#[test]
fn rejected_policy_keeps_the_old_one() {
    let mut t = tailnet();
    let good = r#"{"groups": {"group:eng": ["alice@example.com"]}, "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["*:22"]}]}"#;
    t.set_policy(good, &Actor::cli(), t0()).unwrap();
    let bad = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:ops\"], \"dst\": [\"*:*\"]}\n  ]\n}";
    let err = t
        .set_policy(bad, &Actor::cli(), t0())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("group:ops"), "{err}");
    assert_eq!(t.policy_record().unwrap().text, good);
    let failing_test =
        r#"{"acls": [], "tests": [{"src": "alice@example.com", "accept": ["100.64.0.1:22"]}]}"#;
    assert!(t.set_policy(failing_test, &Actor::cli(), t0()).is_err());
    assert_eq!(t.policy_record().unwrap().text, good);
}

#[test]
fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let (ip, name, key_id);
    {
        let mut t = Tailnet::load(
            Box::new(SqliteStore::open(&path).unwrap()),
            TailnetConfig::default(),
        )
        .unwrap();
        t.set_policy(
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:80"]}]}"#,
            &Actor::cli(),
            t0(),
        )
        .unwrap();
        let k = key(
            &mut t,
            AuthKeyOptions {
                reusable: true,
                ..Default::default()
            },
        );
        register(&mut t, &device(1), Some(&k), "web", t0());
        let n = t.find_node("web").unwrap().clone();
        t.rename_node(n.id, "frontend", &Actor::cli(), t0())
            .unwrap();
        ip = n.ipv4;
        name = "frontend".to_string();
        key_id = t.auth_keys().next().unwrap().key_id.clone();
    }
    let mut t = Tailnet::load(
        Box::new(SqliteStore::open(&path).unwrap()),
        TailnetConfig::default(),
    )
    .unwrap();
    let n = t.find_node(&name).unwrap();
    assert_eq!(n.ipv4, ip);
    assert!(t.policy_record().unwrap().text.contains("*:80"));
    assert_eq!(t.auth_keys().next().unwrap().key_id, key_id);
    // The next node does not reuse the first one's address.
    let k = key(&mut t, AuthKeyOptions::default());
    register(&mut t, &device(2), Some(&k), "db", t0());
    assert_ne!(t.find_node("db").unwrap().ipv4, ip);
    let audit = t.audit_log(&AuditQuery::default()).unwrap();
    assert!(audit.iter().any(|e| e.action == "node.rename"));
}

#[test]
fn external_writes_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let mut server = Tailnet::load(
        Box::new(SqliteStore::open(&path).unwrap()),
        TailnetConfig::default(),
    )
    .unwrap();
    let gen0 = server.generation();
    {
        let mut cli = Tailnet::load(
            Box::new(SqliteStore::open(&path).unwrap()),
            TailnetConfig::default(),
        )
        .unwrap();
        cli.create_user("bob@example.com", "", &Actor::cli(), t0())
            .unwrap();
    }
    assert!(server.refresh().unwrap());
    assert!(server.user_by_login("bob@example.com").is_some());
    assert!(server.generation() > gen0);
    assert!(!server.refresh().unwrap());
}
