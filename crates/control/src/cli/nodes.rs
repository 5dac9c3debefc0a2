//! `control nodes …` and `control routes …`.
//!
//! A node is named by its id, its MagicDNS name (`web` or `web.<base domain>`) or a tailnet IP.
//! `routes approve` adds to what is approved (`--replace` sets the list exactly); approving
//! one half of an exit route (`0.0.0.0/0` or `::/0`) approves both, as exit nodes carry both.

use chrono::Utc;
use control::api::views::{Device, DeviceRoutes, ZERO_TIME};
use serde::Serialize;

use super::Target;
use super::output::{self, Table, list, when};

#[derive(clap::Args)]
pub struct NodesArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: NodesCmd,
}

#[derive(clap::Subcommand)]
enum NodesCmd {
    /// List devices with their addresses, owner and state.
    List,
    /// Approve a device waiting for approval (servers with --device-approval).
    Approve { node: String },
    /// Expire a device's key now; it must log in again.
    Expire { node: String },
    /// Delete a device.
    Delete { node: String },
    /// Change a device's MagicDNS name.
    Rename { node: String, name: String },
    /// Replace a device's tags, e.g. `control nodes tag web tag:server,tag:web`.
    Tag {
        node: String,
        /// Tags, comma-separated.
        #[arg(value_delimiter = ',')]
        tags: Vec<String>,
        /// Remove every tag (the device must have an owner).
        #[arg(long, conflicts_with = "tags")]
        clear: bool,
    },
}

#[derive(clap::Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: RoutesCmd,
}

#[derive(clap::Subcommand)]
enum RoutesCmd {
    /// List advertised and approved routes of every device.
    List,
    /// Approve routes a device advertises, e.g. `control routes approve web 10.0.0.0/24,::/0`.
    Approve {
        node: String,
        /// Routes, comma-separated.
        #[arg(value_delimiter = ',')]
        routes: Vec<String>,
        /// Approve every route the device advertises.
        #[arg(long, conflicts_with = "routes")]
        all: bool,
        /// Make the approved list exactly ROUTES (none: revoke all) instead of adding to it.
        #[arg(long)]
        replace: bool,
    },
}

pub async fn run_nodes(a: NodesArgs) -> anyhow::Result<()> {
    let mut b = a.target.backend().await?;
    let json = a.target.json;
    match a.cmd {
        NodesCmd::List => {
            let devices = b.devices().await?;
            if json {
                return output::json(&devices);
            }
            print_devices(&devices);
            Ok(())
        }
        NodesCmd::Approve { node } => {
            b.approve(&node).await?;
            done(&b.device(&node).await?, "approved", json)
        }
        NodesCmd::Expire { node } => {
            b.expire(&node).await?;
            done(&b.device(&node).await?, "expired the key of", json)
        }
        NodesCmd::Delete { node } => {
            let d = b.delete_device(&node).await?;
            done(&d, "deleted", json)
        }
        NodesCmd::Rename { node, name } => {
            let id = b.device(&node).await?.id;
            b.rename(&id, &name).await?;
            done(&b.device(&id).await?, "renamed", json)
        }
        NodesCmd::Tag { node, tags, clear } => {
            let tags: Vec<String> = tags
                .into_iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            if tags.is_empty() && !clear {
                anyhow::bail!(
                    "give the tags, e.g. `control nodes tag {node} tag:server`, or --clear to remove all"
                );
            }
            let id = b.device(&node).await?.id;
            b.set_tags(&id, tags).await?;
            done(&b.device(&id).await?, "tagged", json)
        }
    }
}

fn done(d: &Device, what: &str, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(d);
    }
    let tags = if d.tags.is_empty() {
        String::new()
    } else {
        format!(", tags {}", d.tags.join(","))
    };
    println!("{what} node {} (id {}{tags})", d.short_name(), d.id);
    Ok(())
}

fn owner(d: &Device) -> String {
    if d.tags.is_empty() {
        d.user.clone()
    } else {
        d.tags.join(",")
    }
}

fn state(d: &Device, now: chrono::DateTime<Utc>) -> String {
    let mut s = vec![if d.online { "online" } else { "offline" }];
    let expired = d.expires != ZERO_TIME
        && chrono::DateTime::parse_from_rfc3339(&d.expires).is_ok_and(|e| e.to_utc() <= now);
    if expired {
        s.push("expired");
    }
    if !d.authorized {
        s.push("needs approval");
    }
    if d.is_ephemeral {
        s.push("ephemeral");
    }
    s.join(", ")
}

fn print_devices(devices: &[Device]) {
    let now = Utc::now();
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "ADDRESS",
        "OWNER",
        "OS",
        "LAST SEEN",
        "KEY EXPIRES",
        "STATE",
    ]);
    for d in devices {
        t.row(vec![
            d.id.clone(),
            d.short_name().to_string(),
            d.addresses.first().cloned().unwrap_or_else(|| "-".into()),
            owner(d),
            if d.os.is_empty() {
                "-".into()
            } else {
                d.os.clone()
            },
            if d.online {
                "now".into()
            } else {
                d.last_seen
                    .as_deref()
                    .map_or("-".into(), |s| when(Some(s), now))
            },
            when(Some(&d.expires), now),
            state(d, now),
        ]);
    }
    t.print_or("no devices yet; register one with a key from `control keys create`");
}

/// One device's routes, for `routes list --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteRow {
    id: String,
    name: String,
    advertised_routes: Vec<String>,
    enabled_routes: Vec<String>,
    primary_routes: Vec<String>,
}

pub async fn run_routes(a: RoutesArgs) -> anyhow::Result<()> {
    let mut b = a.target.backend().await?;
    let json = a.target.json;
    match a.cmd {
        RoutesCmd::List => {
            let rows: Vec<RouteRow> = b
                .devices()
                .await?
                .into_iter()
                .map(|d| RouteRow {
                    name: d.short_name().to_string(),
                    id: d.id,
                    advertised_routes: d.advertised_routes.unwrap_or_default(),
                    enabled_routes: d.enabled_routes.unwrap_or_default(),
                    primary_routes: d.primary_routes.unwrap_or_default(),
                })
                .filter(|r| !r.advertised_routes.is_empty() || !r.enabled_routes.is_empty())
                .collect();
            if json {
                return output::json(&rows);
            }
            print_routes(&rows);
            Ok(())
        }
        RoutesCmd::Approve {
            node,
            routes,
            all,
            replace,
        } => {
            let current = b.routes(&node).await?;
            let wanted = approved_after(&current, &routes, all, replace);
            let d = b.device(&node).await?;
            let after = b.set_routes(&d.id, &wanted).await?;
            if json {
                return output::json(&after);
            }
            let pending: Vec<String> = after
                .advertised_routes
                .iter()
                .filter(|r| !after.enabled_routes.contains(r))
                .cloned()
                .collect();
            println!(
                "node {}: approved {}",
                d.short_name(),
                list(&after.enabled_routes)
            );
            if !pending.is_empty() {
                eprintln!("still waiting for approval: {}", pending.join(","));
            }
            let unadvertised: Vec<&String> = after
                .enabled_routes
                .iter()
                .filter(|r| !after.advertised_routes.contains(r))
                .collect();
            if !unadvertised.is_empty() {
                eprintln!(
                    "note: {} approved but not advertised by the device; they take effect once it advertises them",
                    unadvertised
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            Ok(())
        }
    }
}

/// The approved list after `routes approve`.
fn approved_after(
    current: &DeviceRoutes,
    routes: &[String],
    all: bool,
    replace: bool,
) -> Vec<String> {
    let mut add: Vec<String> = if all {
        current.advertised_routes.clone()
    } else {
        routes.to_vec()
    };
    add = add
        .into_iter()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    // Exit nodes carry both address families.
    for (a, b) in [("0.0.0.0/0", "::/0"), ("::/0", "0.0.0.0/0")] {
        if add.iter().any(|r| r == a)
            && current.advertised_routes.iter().any(|r| r == b)
            && !add.iter().any(|r| r == b)
        {
            add.push(b.to_string());
        }
    }
    let mut out = if replace {
        Vec::new()
    } else {
        current.enabled_routes.clone()
    };
    for r in add {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

fn print_routes(rows: &[RouteRow]) {
    let mut t = Table::new(&["NODE", "ID", "ROUTE", "ADVERTISED", "APPROVED", "SERVING"]);
    for r in rows {
        let mut all: Vec<&String> = r
            .advertised_routes
            .iter()
            .chain(&r.enabled_routes)
            .collect();
        all.sort();
        all.dedup();
        for route in all {
            let adv = r.advertised_routes.contains(route);
            let ok = r.enabled_routes.contains(route);
            let exit = route == "0.0.0.0/0" || route == "::/0";
            let serving = if !(adv && ok) {
                "no"
            } else if exit {
                "exit node"
            } else if r.primary_routes.contains(route) {
                "primary"
            } else {
                "standby"
            };
            let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
            t.row(vec![
                r.name.clone(),
                r.id.clone(),
                route.clone(),
                yes(adv),
                yes(ok),
                serving.into(),
            ]);
        }
    }
    t.print_or("no device advertises routes");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(adv: &[&str], en: &[&str]) -> DeviceRoutes {
        DeviceRoutes {
            advertised_routes: adv.iter().map(|s| s.to_string()).collect(),
            enabled_routes: en.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn approve_adds_and_pairs_exit_routes() {
        let cur = routes(&["10.0.0.0/24", "0.0.0.0/0", "::/0"], &["10.0.0.0/24"]);
        assert_eq!(
            approved_after(&cur, &["0.0.0.0/0".into()], false, false),
            ["10.0.0.0/24", "0.0.0.0/0", "::/0"]
        );
        assert_eq!(approved_after(&cur, &[], false, true), Vec::<String>::new());
        assert_eq!(
            approved_after(&cur, &[], true, false),
            ["10.0.0.0/24", "0.0.0.0/0", "::/0"]
        );
    }
}
