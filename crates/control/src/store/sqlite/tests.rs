//! Tests of [`SqliteStore`] against real files in a temporary directory: every trait method
//! round-trips, data survives a reopen, a second connection sees writes, and errors are typed.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use proto::keys::{DiscoPublic, MachinePrivate, MachinePublic, NodePrivate, NodePublic};
use serde_json::json;

use super::*;

fn t(secs: i64, nanos: u32) -> Timestamp {
    Utc.timestamp_opt(1_790_000_000 + secs, nanos).unwrap()
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("control.db")
}

fn user(login: &str) -> User {
    User {
        id: UserId(0),
        login_name: login.into(),
        display_name: format!("{login} (display)"),
        created: t(1, 123_456_789),
    }
}

/// A node with every optional field set; `n` makes keys, names and addresses unique.
fn full_node(n: u8, user: UserId, auth_key: AuthKeyId) -> Node {
    Node {
        id: NodeId(0),
        machine_key: MachinePublic::from_bytes([n; 32]),
        node_key: NodePublic::from_bytes([n.wrapping_add(100); 32]),
        disco_key: DiscoPublic::from_bytes([n.wrapping_add(200); 32]),
        user_id: Some(user),
        tags: vec!["tag:db".into(), "tag:server".into()],
        hostname: format!("Host {n}"),
        given_name: format!("host-{n}"),
        ipv4: Some(Ipv4Addr::new(100, 64, 0, n)),
        ipv6: Some(Ipv6Addr::new(
            0xfd7a,
            0x115c,
            0xa1e0,
            0,
            0,
            0,
            0,
            u16::from(n),
        )),
        endpoints: vec!["192.0.2.1:41641".into(), "[2001:db8::1]:41641".into()],
        hostinfo: json!({
            "OS": "linux",
            "Hostname": format!("Host {n}"),
            "RoutableIPs": ["10.0.0.0/24", "0.0.0.0/0"],
            "Services": [{"Proto": "tcp", "Port": 22}],
            "NetInfo": {"PreferredDERP": 1, "WorkingUDP": true},
        }),
        home_derp: 1,
        created: t(10, 1),
        last_seen: Some(t(20, 999_999_999)),
        key_expiry: Some(t(86_400 * 180, 5)),
        ephemeral: true,
        authorized: true,
        approved_routes: vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
        auth_key_id: Some(auth_key),
    }
}

/// A node with every optional field empty.
fn bare_node(n: u8) -> Node {
    Node {
        id: NodeId(0),
        machine_key: MachinePublic::from_bytes([n; 32]),
        node_key: NodePublic::from_bytes([n.wrapping_add(100); 32]),
        disco_key: DiscoPublic::zero(),
        user_id: None,
        tags: vec![],
        hostname: String::new(),
        given_name: format!("bare-{n}"),
        ipv4: None,
        ipv6: None,
        endpoints: vec![],
        hostinfo: json!({}),
        home_derp: 0,
        created: t(0, 0),
        last_seen: None,
        key_expiry: None,
        ephemeral: false,
        authorized: false,
        approved_routes: vec![],
        auth_key_id: None,
    }
}

fn auth_key(key_id: &str, user: Option<UserId>) -> AuthKey {
    AuthKey {
        id: AuthKeyId(0),
        key_id: key_id.into(),
        secret_hash: "ab".repeat(32),
        user_id: user,
        reusable: true,
        ephemeral: false,
        preauthorized: true,
        tags: vec!["tag:ci".into()],
        description: "CI runners".into(),
        created: t(2, 2),
        expires: Some(t(3600, 0)),
        revoked: None,
        uses: 3,
    }
}

fn api_key(key_id: &str) -> ApiKey {
    ApiKey {
        id: ApiKeyId(0),
        key_id: key_id.into(),
        secret_hash: "cd".repeat(32),
        description: "terraform".into(),
        created: t(4, 4),
        expires: None,
        revoked: Some(t(5, 5)),
    }
}

fn event(at: Timestamp, action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        id: 0,
        at,
        actor: "cli".into(),
        action: action.into(),
        target: target.into(),
        detail: json!({"old": "a", "new": ["b", 1, null]}),
    }
}

fn server_keys(seed: u8) -> ServerKeys {
    ServerKeys {
        noise: MachinePrivate::from_bytes([seed; 32]),
        derp: NodePrivate::from_bytes([seed.wrapping_add(1); 32]),
    }
}

/// Fills a store with one of everything; returns what `load` must give back.
fn populate(s: &mut SqliteStore) -> Snapshot {
    let mut alice = user("alice@example.com");
    alice.id = s.insert_user(&alice).unwrap();
    let mut key = auth_key("kAbc123", Some(alice.id));
    key.id = s.insert_auth_key(&key).unwrap();
    let mut api = api_key("kApi1");
    api.id = s.insert_api_key(&api).unwrap();
    let mut full = full_node(1, alice.id, key.id);
    full.id = s.insert_node(&full).unwrap();
    let mut bare = bare_node(2);
    bare.id = s.insert_node(&bare).unwrap();
    let policy = PolicyRecord {
        text: "// hujson\n{\"acls\": []}".into(),
        updated: t(7, 7),
    };
    s.set_policy(&policy).unwrap();
    Snapshot {
        users: vec![alice],
        nodes: vec![full, bare],
        auth_keys: vec![key],
        api_keys: vec![api],
        policy: Some(policy),
    }
}

fn assert_snapshot_eq(got: &Snapshot, want: &Snapshot) {
    assert_eq!(got.users, want.users);
    assert_eq!(got.nodes, want.nodes);
    assert_eq!(got.auth_keys, want.auth_keys);
    assert_eq!(got.api_keys, want.api_keys);
    assert_eq!(got.policy, want.policy);
}

#[test]
fn everything_round_trips() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let want = populate(&mut s);
    assert_snapshot_eq(&s.load().unwrap(), &want);
}

#[test]
fn users_update_and_delete() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let mut u = user("bob@example.com");
    u.id = s.insert_user(&u).unwrap();
    u.login_name = "robert@example.com".into();
    u.display_name = "Robert".into();
    u.created = t(99, 1);
    s.update_user(&u).unwrap();
    assert_eq!(s.load().unwrap().users, vec![u.clone()]);

    s.delete_user(u.id).unwrap();
    assert!(s.load().unwrap().users.is_empty());
    assert!(matches!(s.update_user(&u), Err(StoreError::NotFound(m)) if m.contains("user")));
    assert!(matches!(s.delete_user(u.id), Err(StoreError::NotFound(_))));
}

#[test]
fn ids_are_not_reused_after_delete() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let a = s.insert_user(&user("a@x")).unwrap();
    s.delete_user(a).unwrap();
    let b = s.insert_user(&user("b@x")).unwrap();
    assert!(b.0 > a.0);
}

#[test]
fn nodes_update_every_field_and_delete() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let uid = s.insert_user(&user("carol@example.com")).unwrap();
    let kid = s.insert_auth_key(&auth_key("k1", Some(uid))).unwrap();

    // Bare → full: every None becomes Some and every list fills.
    let mut node = bare_node(5);
    let id = s.insert_node(&node).unwrap();
    node = full_node(5, uid, kid);
    node.id = id;
    s.update_node(&node).unwrap();
    assert_eq!(s.load().unwrap().nodes, vec![node.clone()]);

    // Full → bare again: Some back to None.
    let mut bare = bare_node(6);
    bare.id = id;
    s.update_node(&bare).unwrap();
    assert_eq!(s.load().unwrap().nodes, vec![bare.clone()]);

    s.delete_node(id).unwrap();
    assert!(s.load().unwrap().nodes.is_empty());
    assert!(matches!(s.update_node(&bare), Err(StoreError::NotFound(m)) if m == "node 1"));
    assert!(matches!(s.delete_node(id), Err(StoreError::NotFound(_))));
}

#[test]
fn auth_keys_update_and_delete_keeps_nodes() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let uid = s.insert_user(&user("dave@example.com")).unwrap();
    let mut key = auth_key("kDave", Some(uid));
    key.id = s.insert_auth_key(&key).unwrap();
    key.user_id = None;
    key.reusable = false;
    key.ephemeral = true;
    key.preauthorized = false;
    key.tags = vec![];
    key.description = String::new();
    key.expires = None;
    key.revoked = Some(t(50, 50));
    key.uses = 4;
    s.update_auth_key(&key).unwrap();
    assert_eq!(s.load().unwrap().auth_keys, vec![key.clone()]);

    let mut node = full_node(1, uid, key.id);
    node.id = s.insert_node(&node).unwrap();
    s.delete_auth_key(key.id).unwrap();
    let snap = s.load().unwrap();
    assert!(snap.auth_keys.is_empty());
    assert_eq!(snap.nodes.len(), 1, "the node outlives its auth key");
    assert_eq!(snap.nodes[0].auth_key_id, None);
    assert!(matches!(
        s.update_auth_key(&key),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.delete_auth_key(key.id),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn api_keys_update() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let mut key = api_key("kApi");
    key.id = s.insert_api_key(&key).unwrap();
    key.description = "renamed".into();
    key.expires = Some(t(100, 0));
    key.revoked = None;
    s.update_api_key(&key).unwrap();
    assert_eq!(s.load().unwrap().api_keys, vec![key.clone()]);
    key.id = ApiKeyId(999);
    assert!(matches!(s.update_api_key(&key), Err(StoreError::NotFound(m)) if m.contains("999")));
}

#[test]
fn policy_keeps_history_of_replaced_versions() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    assert_eq!(s.load().unwrap().policy, None);
    let p1 = PolicyRecord {
        text: "{\"acls\": [1]}".into(),
        updated: t(1, 0),
    };
    let p2 = PolicyRecord {
        text: "{\"acls\": [2]}".into(),
        updated: t(2, 0),
    };
    let p3 = PolicyRecord {
        text: "{\"acls\": [3]}".into(),
        updated: t(3, 0),
    };
    s.set_policy(&p1).unwrap();
    assert!(s.policy_history().unwrap().is_empty());
    s.set_policy(&p2).unwrap();
    s.set_policy(&p3).unwrap();
    assert_eq!(s.load().unwrap().policy, Some(p3.clone()));
    let history = s.policy_history().unwrap();
    let got: Vec<_> = history.iter().map(|r| (&r.policy, r.replaced)).collect();
    assert_eq!(got, vec![(&p2, p3.updated), (&p1, p2.updated)]);
}

#[test]
fn audit_filters_and_orders_newest_first() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let events = [
        event(t(1, 0), "node.register", "node:1"),
        event(t(2, 0), "policy.set", "policy"),
        event(t(3, 0), "node.delete", "node:1"),
        event(t(3, 0), "nodeX.other", "x"),
        event(t(4, 0), "authkey.create", "authkey:k1"),
    ];
    let ids: Vec<i64> = events.iter().map(|e| s.append_audit(e).unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let all = s.list_audit(&AuditQuery::default()).unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "authkey.create",
            "nodeX.other",
            "node.delete",
            "policy.set",
            "node.register"
        ]
    );
    let mut want = events[4].clone();
    want.id = ids[4];
    assert_eq!(
        all[0], want,
        "every field round-trips, detail JSON included"
    );

    let q = AuditQuery {
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(s.list_audit(&q).unwrap().len(), 2);

    let q = AuditQuery {
        since: Some(t(3, 0)),
        ..Default::default()
    };
    assert_eq!(s.list_audit(&q).unwrap().len(), 3, "since is inclusive");

    let q = AuditQuery {
        action_prefix: Some("node.".into()),
        ..Default::default()
    };
    let got: Vec<String> = s
        .list_audit(&q)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(got, ["node.delete", "node.register"]);

    // The prefix is literal: no LIKE wildcards, no case folding.
    for prefix in ["node_", "NODE.", "%"] {
        let q = AuditQuery {
            action_prefix: Some(prefix.into()),
            ..Default::default()
        };
        assert!(s.list_audit(&q).unwrap().is_empty(), "{prefix}");
    }

    let q = AuditQuery {
        limit: Some(1),
        since: Some(t(2, 0)),
        action_prefix: Some("node".into()),
    };
    let got = s.list_audit(&q).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].action, "nodeX.other");
}

#[test]
fn unique_violations_are_conflicts_with_readable_messages() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let uid = s.insert_user(&user("alice@example.com")).unwrap();
    let err = s.insert_user(&user("alice@example.com")).unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(_)));
    assert_eq!(err.to_string(), "already exists: user alice@example.com");

    // Renaming onto an existing login is a conflict too.
    let mut bob = user("bob@example.com");
    bob.id = s.insert_user(&bob).unwrap();
    bob.login_name = "alice@example.com".into();
    assert!(matches!(s.update_user(&bob), Err(StoreError::Conflict(_))));

    let kid = s.insert_auth_key(&auth_key("k1", Some(uid))).unwrap();
    s.insert_node(&full_node(1, uid, kid)).unwrap();

    let mut same_key = full_node(2, uid, kid);
    same_key.node_key = full_node(1, uid, kid).node_key;
    let err = s.insert_node(&same_key).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("nodekey:")),
        "{err}"
    );

    let mut same_name = full_node(3, uid, kid);
    same_name.given_name = "host-1".into();
    let err = s.insert_node(&same_name).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m == "node name host-1"),
        "{err}"
    );

    let mut same_ip = full_node(4, uid, kid);
    same_ip.ipv4 = Some(Ipv4Addr::new(100, 64, 0, 1));
    let err = s.insert_node(&same_ip).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("100.64.0.1")),
        "{err}"
    );

    let err = s.insert_auth_key(&auth_key("k1", None)).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m == "auth key k1"),
        "{err}"
    );

    s.insert_api_key(&api_key("kA")).unwrap();
    let err = s.insert_api_key(&api_key("kA")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m == "API key kA"),
        "{err}"
    );

    // Several nodes may all lack addresses: NULLs never collide.
    s.insert_node(&bare_node(10)).unwrap();
    s.insert_node(&bare_node(11)).unwrap();
}

#[test]
fn references_to_missing_rows_are_not_found() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let err = s
        .insert_node(&full_node(1, UserId(42), AuthKeyId(1)))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m.contains("user 42")),
        "{err}"
    );

    let uid = s.insert_user(&user("erin@example.com")).unwrap();
    let err = s.insert_node(&full_node(1, uid, AuthKeyId(7))).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m.contains("auth key 7")),
        "{err}"
    );

    let err = s
        .insert_auth_key(&auth_key("k9", Some(UserId(9))))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m.contains("user 9")),
        "{err}"
    );
}

#[test]
fn deleting_a_user_needs_its_nodes_gone_and_keeps_its_keys() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let uid = s.insert_user(&user("frank@example.com")).unwrap();
    let mut node = bare_node(1);
    node.user_id = Some(uid);
    let nid = s.insert_node(&node).unwrap();
    let err = s.delete_user(uid).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("frank@example.com")),
        "{err}"
    );
    assert_eq!(s.load().unwrap().users.len(), 1);

    let mut key = auth_key("kFrank", Some(uid));
    key.revoked = Some(t(9, 0));
    let kid = s.insert_auth_key(&key).unwrap();
    s.delete_node(nid).unwrap();
    s.delete_user(uid).unwrap();
    let snap = s.load().unwrap();
    assert!(snap.users.is_empty());
    assert_eq!(snap.auth_keys.len(), 1, "revoked keys stay for the record");
    assert_eq!(
        (snap.auth_keys[0].id, snap.auth_keys[0].user_id),
        (kid, None)
    );
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let want = {
        let mut s = SqliteStore::open(&path).unwrap();
        let want = populate(&mut s);
        s.append_audit(&event(t(1, 1), "user.create", "user:alice@example.com"))
            .unwrap();
        want
    };
    let mut s = SqliteStore::open(&path).unwrap();
    assert_snapshot_eq(&s.load().unwrap(), &want);
    assert_eq!(s.list_audit(&AuditQuery::default()).unwrap().len(), 1);
    assert_eq!(s.path(), Some(path.as_path()));
}

#[test]
fn data_version_reports_writes_from_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut server = SqliteStore::open(&path).unwrap();
    let mut cli = SqliteStore::open(&path).unwrap();

    let v0 = server.data_version().unwrap();
    server.insert_user(&user("own@x")).unwrap();
    assert_eq!(
        server.data_version().unwrap(),
        v0,
        "own writes do not count"
    );

    cli.insert_user(&user("other@x")).unwrap();
    let v1 = server.data_version().unwrap();
    assert_ne!(v1, v0);
    assert_eq!(
        server.load().unwrap().users.len(),
        2,
        "the other write is visible"
    );
    assert_eq!(
        server.data_version().unwrap(),
        v1,
        "stable until the next foreign write"
    );
}

#[test]
fn two_processes_writing_at_once_wait_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    SqliteStore::open(&path).unwrap();
    let writer = |name: &'static str, path: PathBuf| {
        std::thread::spawn(move || {
            let mut s = SqliteStore::open(&path).unwrap();
            for i in 0..50 {
                s.insert_user(&user(&format!("{name}{i}@x"))).unwrap();
                s.set_policy(&PolicyRecord {
                    text: format!("{name}{i}"),
                    updated: t(i, 0),
                })
                .unwrap();
            }
        })
    };
    let a = writer("a", path.clone());
    let b = writer("b", path.clone());
    a.join().unwrap();
    b.join().unwrap();
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.load().unwrap().users.len(), 100);
    assert_eq!(s.policy_history().unwrap().len(), 99);
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn new_files_are_private_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    s.insert_user(&user("a@x")).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let wal = path.with_extension("db-wal");
    assert!(wal.exists(), "WAL mode is on");
    assert_eq!(mode(&wal), 0o600);
}

#[test]
fn server_keys_are_created_once_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut calls = 0;
    let first = {
        let mut s = SqliteStore::open(&path).unwrap();
        let mut make = || {
            calls += 1;
            server_keys(7)
        };
        let first = s.server_keys(&mut make).unwrap();
        assert_eq!(s.server_keys(&mut make).unwrap(), first);
        first
    };
    assert_eq!(calls, 1);
    assert_eq!(first, server_keys(7));

    let mut s = SqliteStore::open(&path).unwrap();
    let again = s
        .server_keys(&mut || panic!("keys exist; must not generate"))
        .unwrap();
    assert_eq!(again, first);
}

#[test]
fn migrations_are_idempotent_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    for _ in 0..3 {
        let mut s = SqliteStore::open(&path).unwrap();
        let n = s.load().unwrap().users.len();
        s.insert_user(&user(&format!("u{n}@x"))).unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    let applied: i64 = conn
        .query_row("SELECT count(*) FROM refinery_schema_history", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(applied, 1, "V1 recorded once");
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 3);
}

#[test]
fn corrupt_rows_give_corrupt_errors_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    let id = s.insert_node(&bare_node(1)).unwrap();
    let raw = Connection::open(&path).unwrap();

    raw.execute(
        "UPDATE nodes SET node_key = 'nodekey:zz' WHERE id = ?1",
        [id.0],
    )
    .unwrap();
    let err = s.load().unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("nodes row 1 column node_key")));

    raw.execute(
        "UPDATE nodes SET node_key = ?2, tags = '[1' WHERE id = ?1",
        params![id.0, bare_node(1).node_key.to_string()],
    )
    .unwrap();
    assert!(matches!(s.load(), Err(StoreError::Corrupt(m)) if m.contains("column tags")));

    raw.execute(
        "UPDATE nodes SET tags = '[]', last_seen = 'yesterday' WHERE id = ?1",
        [id.0],
    )
    .unwrap();
    assert!(matches!(s.load(), Err(StoreError::Corrupt(m)) if m.contains("column last_seen")));

    raw.execute(
        "UPDATE nodes SET last_seen = NULL, home_derp = 'x' WHERE id = ?1",
        [id.0],
    )
    .unwrap();
    assert!(matches!(s.load(), Err(StoreError::Corrupt(m)) if m.contains("column home_derp")));
}

#[test]
fn corrupt_server_key_does_not_echo_the_secret() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    s.conn
        .execute(
            "INSERT INTO server_keys (name, privkey) VALUES ('noise', 'deadbeefcafe0123')",
            [],
        )
        .unwrap();
    let err = s.server_keys(&mut || server_keys(1)).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(_)));
    assert!(!err.to_string().contains("deadbeef"), "{err}");
    assert!(!format!("{err:?}").contains("deadbeef"));
}

#[test]
fn far_future_timestamps_are_refused_not_stored() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let mut u = user("z@x");
    u.created = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
    assert!(matches!(s.insert_user(&u), Err(StoreError::Db(_))));
    assert!(s.load().unwrap().users.is_empty());
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(SqliteStore::open(&path).unwrap());
    let raw = Connection::open(&path).unwrap();
    raw.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES (99, 'from_the_future', '2026-01-01T00:00:00Z', '1')",
        [],
    )
    .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration(m) if m.contains("newer version")),
        "{err}"
    );
}

#[test]
fn commits_survive_a_process_that_never_closes_the_database() {
    // Like kill -9: the connection is never closed, so nothing is checkpointed and the commits
    // live only in the WAL file. A fresh open must still see all of them.
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut s = SqliteStore::open(&path).unwrap();
    let want = populate(&mut s);
    std::mem::forget(s);
    let mut reopened = SqliteStore::open(&path).unwrap();
    assert_snapshot_eq(&reopened.load().unwrap(), &want);
}
