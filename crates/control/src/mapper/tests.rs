//! Full maps and deltas, built from a real tailnet under explicit time.

use chrono::{TimeZone, Utc};
use proto::keys::{DiscoPrivate, MachinePrivate, NodePrivate};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::config::DnsSettings;
use crate::state::{Actor, AuthKeyOptions, RegisterInput, TailnetConfig};
use crate::store::sqlite::SqliteStore;

fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

struct World {
    t: Tailnet,
    cache: Cache,
    inputs: MapInputs,
}

impl World {
    fn new() -> Self {
        let t = Tailnet::load(
            Box::new(SqliteStore::open_in_memory().unwrap()),
            TailnetConfig::default(),
        )
        .unwrap();
        let inputs = MapInputs::new(
            DerpMap::default(),
            &DnsSettings {
                magic_dns: true,
                ..Default::default()
            },
            "tail.test",
        );
        World {
            t,
            cache: Cache::default(),
            inputs,
        }
    }

    fn join(&mut self, seed: u8, host: &str, tags: &[&str]) -> NodeId {
        let mut rng = StdRng::from_seed([seed; 32]);
        let machine = MachinePrivate::generate(&mut rng).public();
        let node_key = NodePrivate::generate(&mut rng).public();
        let opts = AuthKeyOptions {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        let (_, key) = self
            .t
            .create_auth_key(opts, &Actor::cli(), now(), &mut rand::thread_rng())
            .unwrap();
        let input = RegisterInput {
            node_key,
            auth_key: Some(key),
            hostinfo: serde_json::json!({"Hostname": host, "OS": "linux"}),
            ..Default::default()
        };
        let out = self.t.register(machine, input, now(), &mut rng).unwrap();
        assert_eq!(out.error, "");
        let disco = DiscoPrivate::generate(&mut rng).public();
        let id = self
            .t
            .update_from_map_request(
                machine,
                node_key,
                Some(disco),
                Some(vec![format!("192.0.2.{seed}:41641")]),
                None,
                now(),
            )
            .unwrap();
        self.t.session_started(id);
        id
    }

    fn map(&mut self, id: NodeId) -> NetMap {
        build(&mut self.t, &mut self.cache, &self.inputs, id, now()).unwrap()
    }
}

#[test]
fn full_map_has_self_peers_filter_dns() {
    let mut w = World::new();
    let a = w.join(1, "alpha", &[]);
    let _b = w.join(2, "beta", &[]);
    let m = w.map(a);
    let r = full(&m, now());
    let node = r.node.as_ref().unwrap();
    assert_eq!(node.name, "alpha.tail.test.");
    assert!(node.machine_authorized);
    assert!(
        node.cap_map
            .contains_key("disable-captive-portal-detection")
    );
    assert_eq!(r.peers.len(), 1);
    assert_eq!(r.peers[0].name, "beta.tail.test.");
    assert_eq!(r.peers[0].online, Some(true));
    assert_eq!(r.peers[0].endpoints.len(), 1);
    assert_eq!(
        r.packet_filters
            .get("base")
            .and_then(|f| f.as_ref())
            .map(Vec::len),
        Some(1),
        "no policy = allow all"
    );
    assert!(r.dns_config.as_ref().unwrap().proxied);
    assert!(r.derp_map.is_some());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["Domain"], "tail.test");
    assert_eq!(json["CollectServices"], false);
}

#[test]
fn nothing_changed_means_no_message() {
    let mut w = World::new();
    let a = w.join(1, "alpha", &[]);
    w.join(2, "beta", &[]);
    let m1 = w.map(a);
    let m2 = w.map(a);
    assert_eq!(delta(&m1, &m2, now()), None);
}

#[test]
fn endpoint_and_online_changes_are_patches() {
    let mut w = World::new();
    let a = w.join(1, "alpha", &[]);
    let b = w.join(2, "beta", &[]);
    let before = w.map(a);
    let bn = w.t.node(b).unwrap().clone();
    w.t.update_from_map_request(
        bn.machine_key,
        bn.node_key,
        None,
        Some(vec!["198.51.100.7:41641".into()]),
        None,
        now(),
    )
    .unwrap();
    let after = w.map(a);
    let d = delta(&before, &after, now()).unwrap();
    assert!(d.peers_changed.is_empty() && d.peers.is_empty(), "{d:?}");
    assert_eq!(d.peers_changed_patch.len(), 1);
    assert_eq!(
        d.peers_changed_patch[0].endpoints[0].to_string(),
        "198.51.100.7:41641"
    );
    assert!(
        d.packet_filters.is_empty()
            && d.dns_config.is_none()
            && d.derp_map.is_none()
            && d.node.is_none()
    );

    w.t.session_ended(b, now());
    let offline = w.map(a);
    let d = delta(&after, &offline, now()).unwrap();
    assert_eq!(d.peers_changed_patch.len(), 1);
    assert_eq!(d.peers_changed_patch[0].online, Some(false));
}

#[test]
fn policy_change_sends_filter_and_visibility() {
    let mut w = World::new();
    w.t.set_policy(r#"{"tagOwners": {"tag:web": [], "tag:db": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#, &Actor::cli(), now()).unwrap();
    let web = w.join(1, "web", &["tag:web"]);
    let db = w.join(2, "db", &["tag:db"]);
    let laptop = w.join(3, "laptop", &[]);
    let before = w.map(laptop);
    assert_eq!(before.peers.len(), 2);
    w.t.set_policy(
        r#"{"tagOwners": {"tag:web": [], "tag:db": []},
            "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:443"]},
                     {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]}]}"#,
        &Actor::cli(),
        now(),
    )
    .unwrap();
    let after = w.map(laptop);
    let d = delta(&before, &after, now()).unwrap();
    assert_eq!(
        d.peers_removed,
        vec![tailcfg::NodeId(db.0)],
        "laptop no longer sees db"
    );
    assert!(
        d.packet_filters
            .get("base")
            .is_some_and(|f| f.as_ref().is_some_and(Vec::is_empty)),
        "nothing may reach the laptop"
    );
    let web_map = w.map(web);
    let rules = &web_map.filter;
    assert_eq!(rules.len(), 1);
    assert!(rules[0].dst_ports.iter().all(|d| d.ports.first == 443));
    let db_map = w.map(db);
    assert_eq!(db_map.peers.keys().copied().collect::<Vec<_>>(), vec![web]);
}

#[test]
fn deleted_peer_is_removed_and_deleted_self_has_no_map() {
    let mut w = World::new();
    let a = w.join(1, "alpha", &[]);
    let b = w.join(2, "beta", &[]);
    let before = w.map(a);
    w.t.delete_node(b, &Actor::cli(), now()).unwrap();
    let after = w.map(a);
    let d = delta(&before, &after, now()).unwrap();
    assert_eq!(d.peers_removed, vec![tailcfg::NodeId(b.0)]);
    assert!(build(&mut w.t, &mut w.cache, &w.inputs, b, now()).is_none());
}

#[test]
fn subnet_routes_show_on_the_primary_only() {
    let mut w = World::new();
    let r1 = w.join(1, "r1", &[]);
    let r2 = w.join(2, "r2", &[]);
    let client = w.join(3, "client", &[]);
    for r in [r1, r2] {
        let n = w.t.node(r).unwrap().clone();
        w.t.update_from_map_request(
            n.machine_key,
            n.node_key,
            None,
            None,
            Some(serde_json::json!({"Hostname": n.hostname, "RoutableIPs": ["192.168.1.0/24"]})),
            now(),
        )
        .unwrap();
        w.t.set_approved_routes(
            r,
            vec!["192.168.1.0/24".parse().unwrap()],
            &Actor::cli(),
            now(),
        )
        .unwrap();
    }
    let m = w.map(client);
    let route: IpNet = "192.168.1.0/24".parse().unwrap();
    let has = |m: &NetMap, id: NodeId| {
        m.peers[&id]
            .allowed_ips
            .as_ref()
            .is_some_and(|a| a.contains(&route))
    };
    assert!(has(&m, r1) && !has(&m, r2));
    assert_eq!(m.peers[&r1].primary_routes, vec![route]);
    w.t.session_ended(r1, now());
    let m2 = w.map(client);
    assert!(
        !has(&m2, r1) && has(&m2, r2),
        "failover to the online router"
    );
    let d = delta(&m, &m2, now()).unwrap();
    assert_eq!(
        d.peers_changed.len(),
        2,
        "AllowedIPs changes resend both routers"
    );
}

#[test]
fn dns_config_carries_every_setting() {
    use crate::config::ExtraRecord;
    let s = DnsSettings {
        magic_dns: true,
        nameservers: vec!["1.1.1.1".into(), "https://dns.example/dns-query".into()],
        search_domains: vec!["corp.example".into()],
        split: [(
            "internal.example".to_string(),
            vec!["10.0.0.53".to_string()],
        )]
        .into(),
        extra_records: vec![ExtraRecord {
            name: "printer.tail.test".into(),
            record_type: "A".into(),
            value: "100.64.9.9".into(),
        }],
    };
    let d = dns_config(&s, "tail.test");
    assert!(d.proxied);
    assert_eq!(d.domains, ["tail.test", "corp.example"]);
    assert_eq!(
        d.resolvers
            .iter()
            .map(|r| r.addr.as_str())
            .collect::<Vec<_>>(),
        ["1.1.1.1", "https://dns.example/dns-query"]
    );
    assert_eq!(d.routes["internal.example"][0].addr, "10.0.0.53");
    assert_eq!(d.extra_records[0].value, "100.64.9.9");
    let off = dns_config(
        &DnsSettings {
            magic_dns: false,
            ..Default::default()
        },
        "tail.test",
    );
    assert!(!off.proxied, "MagicDNS can be turned off");
}
