//! Smoke test for `dataplane::osroute`: policy rules, a routing table with device and throw
//! routes, and the crash clean-up, inside a private network namespace.
//!
//! Like `tun_smoke`, the test thread calls `unshare(CLONE_NEWNET)`, so everything exists only
//! in a namespace that vanishes with the thread. Needs root; without it the test prints why and
//! passes. What was configured is read back through `ip -j`, as an operator would.

#![cfg(target_os = "linux")]

use std::process::Command;

use dataplane::osroute::{MAIN_TABLE, OsRouting, PolicyRule, RouteVia, RuleTarget};
use dataplane::tun::{TunConfig, TunDevice, set_link};
use ipnet::IpNet;
use serde_json::Value;

const TABLE: u32 = 52;

fn net(s: &str) -> IpNet {
    s.parse().expect("a valid prefix")
}

fn ip_json(args: &[&str]) -> Result<Value, String> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn rule_priorities() -> Result<Vec<u64>, String> {
    Ok(ip_json(&["rule", "show"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["priority"].as_u64())
        .collect())
}

fn table_routes() -> Result<Vec<(String, String)>, String> {
    Ok(ip_json(&["route", "show", "table", &TABLE.to_string()])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["type"].as_str().unwrap_or("unicast").to_string(),
            )
        })
        .collect())
}

async fn exercise() -> Result<(), String> {
    let dev = TunDevice::create(&TunConfig {
        name: "rt-smoke0".into(),
        mtu: 1280,
    })
    .map_err(|e| e.to_string())?;
    set_link(dev.name(), 1280, true)
        .await
        .map_err(|e| e.to_string())?;
    let os = OsRouting::open().map_err(|e| e.to_string())?;
    let index = os.link_index(dev.name()).await.map_err(|e| e.to_string())?;
    let mark = Some((0x80000, 0xff0000));
    let rules = [
        PolicyRule {
            v6: false,
            priority: 5210,
            fwmark: mark,
            target: RuleTarget::Lookup(MAIN_TABLE),
        },
        PolicyRule {
            v6: false,
            priority: 5250,
            fwmark: mark,
            target: RuleTarget::Unreachable,
        },
        PolicyRule {
            v6: false,
            priority: 5270,
            fwmark: None,
            target: RuleTarget::Lookup(TABLE),
        },
    ];
    for r in &rules {
        os.add_rule(r).await.map_err(|e| e.to_string())?;
        // Adding twice is fine (idempotent).
        os.add_rule(r).await.map_err(|e| e.to_string())?;
    }
    let prios = rule_priorities()?;
    for p in [5210, 5250, 5270] {
        assert_eq!(prios.iter().filter(|x| **x == p).count(), 1, "{prios:?}");
    }
    os.replace_route(TABLE, net("100.64.0.0/10"), RouteVia::Dev(index))
        .await
        .map_err(|e| e.to_string())?;
    os.replace_route(TABLE, net("0.0.0.0/0"), RouteVia::Dev(index))
        .await
        .map_err(|e| e.to_string())?;
    os.replace_route(TABLE, net("192.168.7.0/24"), RouteVia::Throw)
        .await
        .map_err(|e| e.to_string())?;
    let routes = table_routes()?;
    assert!(
        routes.contains(&("100.64.0.0/10".into(), "unicast".into())),
        "{routes:?}"
    );
    assert!(
        routes.contains(&("default".into(), "unicast".into())),
        "{routes:?}"
    );
    assert!(
        routes.contains(&("192.168.7.0/24".into(), "throw".into())),
        "{routes:?}"
    );
    // Unmarked traffic to the internet now goes to the TUN device; the LAN is thrown back.
    let get = ip_json(&["route", "get", "198.51.100.1"])?;
    assert_eq!(get[0]["dev"], "rt-smoke0", "{get}");

    os.delete_route(TABLE, net("0.0.0.0/0"), RouteVia::Dev(index))
        .await
        .map_err(|e| e.to_string())?;
    os.delete_route(TABLE, net("0.0.0.0/0"), RouteVia::Dev(index))
        .await
        .map_err(|e| e.to_string())?;
    os.delete_rule(&rules[1]).await.map_err(|e| e.to_string())?;
    os.delete_rule(&rules[1]).await.map_err(|e| e.to_string())?;
    assert!(!rule_priorities()?.contains(&5250));

    // The clean-up after a crash removes the rest without knowing what was there.
    let removed = os
        .delete_rules_at(&[5210, 5230, 5250, 5270], TABLE)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(removed, 2);
    assert!(os.flush_table(TABLE).await.map_err(|e| e.to_string())? >= 2);
    assert!(table_routes()?.is_empty());
    let prios = rule_priorities()?;
    assert!(
        prios.iter().all(|p| !(5210..=5270).contains(p)),
        "{prios:?}"
    );
    Ok(())
}

#[test]
fn policy_rules_and_table_in_private_netns() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping policy_rules_and_table_in_private_netns: needs root");
        return;
    }
    let worker = std::thread::spawn(|| -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(exercise())
    });
    match worker.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.contains("/dev/net/tun") || e.contains("Operation not permitted") => {
            eprintln!("skipping: TUN unavailable here: {e}");
        }
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("namespace thread panicked"),
    }
}
