//! Map generation: the time and bytes to build and send every node's map after one policy
//! change, for 1,000 and 10,000 registered nodes, and the server's memory per node.
//!
//! The tailnet is realistic rather than worst-case: 100 teams, each with user devices and a
//! tagged service, plus shared servers everyone may reach. The measured change adds one rule
//! (team 0 may reach team 1's service), which changes some nodes' filters and peer lists.
//! A second, all-to-all scenario (no policy) shows the full-mesh cost at 1,000 nodes.
//!
//! `cargo run --release -p benches --bin mapgen [-- --sizes 1000,10000]`

use std::time::Instant;

use chrono::Utc;
use control::mapper::{self, Cache, MapInputs, NetMap};
use control::model::NodeId;
use control::state::{Actor, AuthKeyOptions, RegisterInput, Tailnet, TailnetConfig};
use control::store::sqlite::SqliteStore;
use proto::keys::{DiscoPrivate, MachinePrivate, NodePrivate};
use proto::tailcfg::DerpMap;

const TEAMS: usize = 100;

fn policy(extra: bool) -> String {
    let mut groups = Vec::new();
    let mut acls = vec![
        r#"{"action":"accept","src":["autogroup:member"],"dst":["tag:shared:443"]}"#.to_string(),
    ];
    let mut owners = vec![r#""tag:shared":[]"#.to_string()];
    for t in 0..TEAMS {
        groups.push(format!(r#""group:team{t}":["user{t}@example.com"]"#));
        owners.push(format!(r#""tag:svc{t}":[]"#));
        acls.push(format!(
            r#"{{"action":"accept","src":["group:team{t}"],"dst":["tag:svc{t}:*"]}}"#
        ));
    }
    if extra {
        acls.push(
            r#"{"action":"accept","src":["group:team0"],"dst":["tag:svc1:8080"]}"#.to_string(),
        );
    }
    format!(
        r#"{{"groups":{{{}}},"tagOwners":{{{}}},"acls":[{}]}}"#,
        groups.join(","),
        owners.join(","),
        acls.join(",")
    )
}

struct Setup {
    t: Tailnet,
    ids: Vec<NodeId>,
}

fn setup(n: usize, with_policy: bool) -> Setup {
    let dir = std::env::temp_dir().join(format!("mapgen-{}-{n}-{with_policy}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir.join("control.db")).expect("open store");
    let mut t = Tailnet::load(Box::new(store), TailnetConfig::default()).expect("load");
    let now = Utc::now();
    let mut rng = rand::thread_rng();
    if with_policy {
        t.set_policy(&policy(false), &Actor::cli(), now)
            .expect("policy");
    }
    for u in 0..TEAMS {
        t.create_user(&format!("user{u}@example.com"), "", &Actor::cli(), now)
            .expect("user");
    }
    let mut user_keys = Vec::new();
    for u in 0..TEAMS {
        let opts = AuthKeyOptions {
            user: Some(format!("user{u}@example.com")),
            reusable: true,
            ..Default::default()
        };
        user_keys.push(
            t.create_auth_key(opts, &Actor::cli(), now, &mut rng)
                .expect("key")
                .1,
        );
    }
    let mut tag_keys = Vec::new();
    if with_policy {
        for tag in (0..TEAMS)
            .map(|i| format!("tag:svc{i}"))
            .chain(["tag:shared".to_string()])
        {
            let opts = AuthKeyOptions {
                tags: vec![tag],
                reusable: true,
                ..Default::default()
            };
            tag_keys.push(
                t.create_auth_key(opts, &Actor::cli(), now, &mut rng)
                    .expect("key")
                    .1,
            );
        }
    }
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        // Every tenth node is a tagged service; the others are user devices, spread over teams.
        let key = if with_policy && i % 10 == 9 {
            &tag_keys[(i / 10) % tag_keys.len()]
        } else {
            &user_keys[(i / 10) % TEAMS]
        };
        let machine = MachinePrivate::generate(&mut rand_core_rng()).public();
        let node_key = NodePrivate::generate(&mut rand_core_rng()).public();
        let input = RegisterInput {
            node_key,
            auth_key: Some(key.clone()),
            hostinfo: serde_json::json!({"Hostname": format!("host{i}"), "OS": "linux", "IPNVersion": "1.90.9"}),
            ..Default::default()
        };
        let out = t.register(machine, input, now, &mut rng).expect("register");
        assert!(out.error.is_empty(), "{}", out.error);
        let disco = DiscoPrivate::generate(&mut rand_core_rng()).public();
        let ep = vec![format!("198.51.{}.{}:41641", (i / 250) % 250, i % 250 + 1)];
        let id = t
            .update_from_map_request(machine, node_key, Some(disco), Some(ep), None, now)
            .expect("map");
        t.session_started(id);
        ids.push(id);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Setup { t, ids }
}

fn rand_core_rng() -> rand::rngs::OsRng {
    rand::rngs::OsRng
}

fn encode(resp: &proto::tailcfg::MapResponse) -> (usize, usize) {
    let json = serde_json::to_vec(resp).expect("json");
    let mut out = Vec::new();
    proto::mapframe::encode(&json, &mut out).expect("zstd");
    (json.len(), out.len())
}

struct Row {
    scenario: &'static str,
    nodes: usize,
    full_ms: f64,
    full_bytes: usize,
    change_ms: f64,
    change_msgs: usize,
    change_json: usize,
    change_wire: usize,
    mem_per_node: f64,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {} | {:.0} ms | {:.1} MiB | {:.0} ms ({:.1} us/node) | {} | {:.1} KiB | {:.1} KiB | {:.1} KiB |",
            self.scenario,
            self.nodes,
            self.full_ms,
            self.full_bytes as f64 / 1048576.0,
            self.change_ms,
            self.change_ms * 1e3 / self.nodes as f64,
            self.change_msgs,
            self.change_json as f64 / 1024.0,
            self.change_wire as f64 / 1024.0,
            self.mem_per_node / 1024.0,
        )
    }
}

fn run(scenario: &'static str, n: usize, with_policy: bool) -> Row {
    let rss0 = benches::rss_bytes().unwrap_or(0);
    let Setup { mut t, ids } = setup(n, with_policy);
    let inputs = MapInputs::new(DerpMap::default(), &Default::default(), "tail.test");
    let mut cache = Cache::default();
    let now = Utc::now();

    // Every node's first map, as when all clients connect.
    let start = Instant::now();
    let mut maps: Vec<NetMap> = Vec::with_capacity(n);
    let mut full_bytes = 0;
    for id in &ids {
        let m = mapper::build(&mut t, &mut cache, &inputs, *id, now).expect("map");
        full_bytes += encode(&mapper::full(&m, now)).1;
        maps.push(m);
    }
    let full_ms = start.elapsed().as_secs_f64() * 1e3;
    let rss1 = benches::rss_bytes().unwrap_or(0);

    // One policy change: build every node's new map, diff, encode what would be sent.
    let change = if with_policy {
        policy(true)
    } else {
        r#"{"acls":[{"action":"accept","src":["*"],"dst":["*:443"]}]}"#.to_string()
    };
    let start = Instant::now();
    t.set_policy(&change, &Actor::cli(), now)
        .expect("policy change");
    let (mut msgs, mut json_bytes, mut wire_bytes) = (0, 0, 0);
    for (i, id) in ids.iter().enumerate() {
        let next = mapper::build(&mut t, &mut cache, &inputs, *id, now).expect("map");
        if let Some(d) = mapper::delta(&maps[i], &next, now) {
            let (j, w) = encode(&d);
            msgs += 1;
            json_bytes += j;
            wire_bytes += w;
        }
        maps[i] = next;
    }
    let change_ms = start.elapsed().as_secs_f64() * 1e3;
    Row {
        scenario,
        nodes: n,
        full_ms,
        full_bytes,
        change_ms,
        change_msgs: msgs,
        change_json: json_bytes,
        change_wire: wire_bytes,
        mem_per_node: rss1.saturating_sub(rss0) as f64 / n as f64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: one scenario per process, so that memory figures are not skewed by what an
    // earlier scenario left in the allocator.
    if let Some(i) = args.iter().position(|a| a == "--one") {
        let n: usize = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let with_policy = args.get(i + 2).is_none_or(|s| s == "policy");
        let r = run(
            if with_policy {
                "teams (policy)"
            } else {
                "all-to-all (no policy)"
            },
            n,
            with_policy,
        );
        println!("{}", r.line());
        return;
    }
    let sizes: Vec<usize> = args
        .iter()
        .skip_while(|a| *a != "--sizes")
        .nth(1)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10000]);
    let mut jobs: Vec<(usize, &str)> = sizes.iter().map(|n| (*n, "policy")).collect();
    if sizes.contains(&1000) {
        jobs.push((1000, "none"));
    }
    let exe = std::env::current_exe().expect("own path");
    println!(
        "| scenario | nodes | all first maps | first-map bytes (zstd) | policy change: build+diff+encode all | messages | delta JSON bytes | delta wire bytes | server memory per node |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, kind) in jobs {
        let out = std::process::Command::new(&exe)
            .args(["--one", &n.to_string(), kind])
            .output()
            .expect("run scenario");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
