//! Subnet routes and exit nodes on the host: which peers get which prefixes, which destinations
//! this node serves, and the OS state (policy routing, routes, nftables, IP forwarding) that
//! goes with them, in the manner of tailscaled's Linux router.
//!
//! Two halves:
//! * [`compose`] is pure: from the saved routing preferences, the netmap and the host's local
//!   networks it computes the peers' AllowedIPs, the engine's served prefixes, warnings, and an
//!   [`OsPlan`] (routes of table 52, policy rules, the nftables ruleset, forwarding switches).
//! * [`Router`] is the applier (I/O): it moves the OS from what it installed last to the new
//!   plan (rtnetlink through `dataplane::osroute`, `nft -f -`, `/proc/sys`), removes everything
//!   on `down`/exit, and after a crash (a marker file in the state directory) on the next start.
//!
//! The driver (`super`) calls [`compose`] + [`Router::apply`] on every netmap and every `up`,
//! [`Router::teardown`] when the data plane goes away, and [`Router::check_forwarding`] from its
//! timer.
//!
//! Policy routing (tailscaled's numbers): the agent's own sockets (WireGuard/STUN/disco UDP, DERP
//! and control TCP) carry `SO_MARK` [`BYPASS_MARK`]; marked packets look up main (5210), then
//! default (5230), and are otherwise unreachable (5250), so they never enter the tunnel; all
//! other packets look up table 52 first (5270): the tailnet ranges, accepted subnet routes and,
//! with an exit node, the default routes, plus `throw` routes for LANs that must stay local.
//! Sockets without the mark (the MagicDNS forwarder's upstream queries, every application)
//! follow table 52, so with an exit node their traffic leaves through it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dataplane::osroute::{DEFAULT_TABLE, MAIN_TABLE, OsRouting, PolicyRule, RouteVia, RuleTarget};
use dataplane::wgcfg::{self, RouteSelection};
use ipnet::IpNet;
use proto::keys::NodePublic;
use proto::netmap::NetMap;
use proto::tailcfg::Node;

use crate::daemon::state::RoutingPrefs;

/// `SO_MARK` of the agent's own sockets (tailscaled's bypass mark).
pub const BYPASS_MARK: u32 = 0x80000;
/// The part of the mark the rules look at (tailscaled's `0xff0000`).
pub const MARK_MASK: u32 = 0xff0000;
/// The routing table holding the tunnel's routes.
pub const ROUTE_TABLE: u32 = 52;
/// Rule priorities: marked → main, marked → default, marked → unreachable, all → table 52.
pub const RULE_PRIORITIES: [u32; 4] = [5210, 5230, 5250, 5270];
/// The nftables table (family `inet`) holding forward-accept and masquerade rules.
pub const NFT_TABLE: &str = "agent";
/// Written into the state directory while OS routing state is installed; found at start, it
/// means the last run did not clean up.
const MARKER_FILE: &str = "routing.active";
/// How often IP forwarding is re-checked while this node forwards.
const FORWARDING_CHECK: Duration = Duration::from_secs(5);

const FORWARD_V4: &str = "/proc/sys/net/ipv4/ip_forward";
const FORWARD_V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const RP_FILTER: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

fn net(s: &str) -> Option<IpNet> {
    s.parse().ok()
}

/// A route of table 52.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlannedRoute {
    /// Into the TUN device.
    Tun(IpNet),
    /// `throw`: keep looking in the next rules (main), i.e. stay out of the tunnel.
    Throw(IpNet),
}

/// Everything the OS should look like for the current preferences and netmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsPlan {
    /// Routes of [`ROUTE_TABLE`].
    pub routes: BTreeSet<PlannedRoute>,
    /// Policy rules (both families).
    pub rules: Vec<PolicyRule>,
    /// The nftables ruleset for [`NFT_TABLE`], when this node forwards.
    pub nft: Option<String>,
    /// `net.ipv4.ip_forward` must be on.
    pub forward_v4: bool,
    /// `net.ipv6.conf.all.forwarding` must be on.
    pub forward_v6: bool,
}

/// The host's own networks, as the routing decisions need them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNets {
    /// Directly connected prefixes of every non-loopback, non-TUN interface (tailnet and
    /// link-local addresses excluded).
    pub lan: Vec<IpNet>,
    /// This host's own addresses on those networks.
    pub host_ips: Vec<IpAddr>,
    /// Whether the host has IPv6 at all (IPv6 rules and routes are skipped otherwise).
    pub ipv6: bool,
}

impl LocalNets {
    /// Reads the interfaces' addresses (`getifaddrs`), skipping `tun`.
    pub fn read(tun: &str) -> Self {
        let mut out = LocalNets {
            ipv6: ipv6_enabled(),
            ..Default::default()
        };
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return out;
        };
        let tailnet: Vec<IpNet> = [wgcfg::TAILNET_V4, wgcfg::TAILNET_V6]
            .iter()
            .filter_map(|s| net(s))
            .collect();
        for ifa in addrs {
            if ifa.interface_name == tun {
                continue;
            }
            let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
                continue;
            };
            let pair = match (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                (Some(a), Some(m)) => {
                    let len = u32::from(m.ip()).leading_ones();
                    u8::try_from(len)
                        .ok()
                        .and_then(|l| ipnet::Ipv4Net::new(a.ip(), l).ok())
                        .map(|n| (IpAddr::V4(a.ip()), IpNet::V4(n)))
                }
                _ => match (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                    (Some(a), Some(m)) => {
                        let len = u128::from(m.ip()).leading_ones();
                        u8::try_from(len)
                            .ok()
                            .and_then(|l| ipnet::Ipv6Net::new(a.ip(), l).ok())
                            .map(|n| (IpAddr::V6(a.ip()), IpNet::V6(n)))
                    }
                    _ => None,
                },
            };
            let Some((ip, prefix)) = pair else { continue };
            let link_local = match ip {
                IpAddr::V4(a) => a.is_link_local(),
                IpAddr::V6(a) => a.is_unicast_link_local(),
            };
            if ip.is_loopback() || link_local || tailnet.iter().any(|t| t.contains(&ip)) {
                continue;
            }
            out.host_ips.push(ip);
            // Host routes (/32, /128) are no network (Tailscale's interfaceRoutes skips them).
            if prefix.prefix_len() < prefix.max_prefix_len() && !out.lan.contains(&prefix.trunc()) {
                out.lan.push(prefix.trunc());
            }
        }
        out
    }
}

fn ipv6_enabled() -> bool {
    match std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6") {
        Ok(s) => s.trim() != "1",
        Err(_) => false,
    }
}

/// What [`compose`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Composition {
    /// AllowedIPs per usable peer (expired peers are left out).
    pub peers: BTreeMap<NodePublic, Vec<IpNet>>,
    /// Destinations this node serves besides its addresses (the engine's `local_routes`).
    pub local_routes: Vec<IpNet>,
    /// The exit node in use, if it is in the netmap.
    pub exit_node: Option<Node>,
    /// Problems to show in `agent status`.
    pub warnings: Vec<String>,
    /// The OS state to reach.
    pub plan: OsPlan,
}

/// Whether a peer is usable at `now` (not expired).
fn usable(n: &Node, now: DateTime<Utc>) -> bool {
    !(n.expired || n.key_expiry.is_some_and(|e| e <= now))
}

/// The peer `prefs` selects as exit node: by StableID, else by a saved tailnet IP.
pub fn find_exit_node<'a>(prefs: &RoutingPrefs, nm: &'a NetMap) -> Option<&'a Node> {
    if let Some(id) = prefs.exit_node_id.as_deref().filter(|s| !s.is_empty()) {
        return nm.peers.values().find(|n| n.stable_id == id);
    }
    let ip = prefs.exit_node_ip?;
    nm.peers
        .values()
        .find(|n| n.addresses.iter().any(|a| a.addr() == ip))
}

/// Computes peers' AllowedIPs, served prefixes and the OS plan (Tailscale's nmcfg + router
/// config). Pure: the caller reads `local` from the host and the clock for `now`.
pub fn compose(
    tun: &str,
    prefs: &RoutingPrefs,
    nm: &NetMap,
    local: &LocalNets,
    now: DateTime<Utc>,
) -> Composition {
    let mut warnings = Vec::new();
    let exit = find_exit_node(prefs, nm).cloned();
    let want_exit = prefs.exit_node_id.is_some() || prefs.exit_node_ip.is_some();
    let own_routes: Vec<IpNet> = prefs.advertise_routes.clone();
    if want_exit {
        let what = prefs
            .exit_node_ip
            .map(|ip| ip.to_string())
            .or_else(|| prefs.exit_node_id.clone())
            .unwrap_or_default();
        match &exit {
            None => warnings.push(format!(
                "exit node {what} is not in the network map; internet traffic is blocked until \
                 it returns or `agent up --exit-node=` clears it"
            )),
            Some(n) if !wgcfg::offers_exit_node(n) => warnings.push(format!(
                "exit node {} no longer offers an exit node; internet traffic is blocked until \
                 it does or `agent up --exit-node=` clears it",
                n.name.trim_end_matches('.')
            )),
            Some(n) if !usable(n, now) => warnings.push(format!(
                "exit node {} has an expired key",
                n.name.trim_end_matches('.')
            )),
            Some(_) => {}
        }
        warnings.extend(rp_filter_warning());
    }
    let sel = RouteSelection {
        accept_routes: prefs.accept_routes,
        exit_node: exit.as_ref().map(|n| n.stable_id.as_str()),
        own_routes: &own_routes,
    };
    let mut peers = BTreeMap::new();
    let mut accepted: BTreeSet<IpNet> = BTreeSet::new();
    for n in nm.peers.values().filter(|n| usable(n, now)) {
        let allowed = wgcfg::peer_allowed_ips(n, &sel);
        for p in &allowed {
            let own = n.addresses.iter().any(|a| a.trunc() == *p);
            if !own && !wgcfg::is_exit_route(p) {
                accepted.insert(*p);
            }
        }
        peers.insert(n.key, allowed);
    }
    let local_routes = wgcfg::local_routes(
        &prefs.advertise_routes,
        prefs.advertise_exit_node,
        &local.lan,
        &local.host_ips,
    );
    let plan = plan(
        tun,
        prefs,
        &accepted.into_iter().collect::<Vec<_>>(),
        want_exit,
        local,
    );
    Composition {
        peers,
        local_routes,
        exit_node: exit,
        warnings,
        plan,
    }
}

/// The OS plan for the given routing choices (pure).
pub fn plan(
    tun: &str,
    prefs: &RoutingPrefs,
    accepted_routes: &[IpNet],
    exit_node: bool,
    local: &LocalNets,
) -> OsPlan {
    let v6 = local.ipv6;
    let family_ok = |p: &IpNet| v6 || matches!(p, IpNet::V4(_));
    let mut routes = BTreeSet::new();
    for s in [wgcfg::TAILNET_V4, wgcfg::TAILNET_V6] {
        if let Some(p) = net(s).filter(family_ok) {
            routes.insert(PlannedRoute::Tun(p));
        }
    }
    for p in accepted_routes.iter().filter(|p| family_ok(p)) {
        routes.insert(PlannedRoute::Tun(p.trunc()));
    }
    if exit_node {
        for s in ["0.0.0.0/0", "::/0"] {
            if let Some(p) = net(s).filter(family_ok) {
                routes.insert(PlannedRoute::Tun(p));
            }
        }
        // Link-local IPv6 never goes to an exit node (the kernel needs it per interface).
        if let Some(p) = net("fe80::/10").filter(family_ok) {
            routes.insert(PlannedRoute::Throw(p));
        }
        if prefs.exit_node_allow_lan_access {
            for p in local.lan.iter().filter(|p| family_ok(p)) {
                // A LAN inside an accepted subnet route stays in the tunnel: the explicit
                // route is the more specific choice the user made.
                if !accepted_routes.iter().any(|a| a.contains(p)) {
                    routes.insert(PlannedRoute::Throw(*p));
                }
            }
        }
    }
    let mut rules = Vec::new();
    for is_v6 in [false, true] {
        if is_v6 && !v6 {
            continue;
        }
        let mark = Some((BYPASS_MARK, MARK_MASK));
        rules.push(PolicyRule {
            v6: is_v6,
            priority: RULE_PRIORITIES[0],
            fwmark: mark,
            target: RuleTarget::Lookup(MAIN_TABLE),
        });
        rules.push(PolicyRule {
            v6: is_v6,
            priority: RULE_PRIORITIES[1],
            fwmark: mark,
            target: RuleTarget::Lookup(DEFAULT_TABLE),
        });
        rules.push(PolicyRule {
            v6: is_v6,
            priority: RULE_PRIORITIES[2],
            fwmark: mark,
            target: RuleTarget::Unreachable,
        });
        rules.push(PolicyRule {
            v6: is_v6,
            priority: RULE_PRIORITIES[3],
            fwmark: None,
            target: RuleTarget::Lookup(ROUTE_TABLE),
        });
    }
    let subnet_v4 = prefs.advertise_routes.iter().any(|p| p.addr().is_ipv4());
    let subnet_v6 = prefs.advertise_routes.iter().any(|p| p.addr().is_ipv6());
    let forwards = prefs.advertise_exit_node || !prefs.advertise_routes.is_empty();
    OsPlan {
        routes,
        rules,
        nft: forwards.then(|| nft_ruleset(tun, !prefs.no_snat_subnet_routes)),
        forward_v4: prefs.advertise_exit_node || subnet_v4,
        forward_v6: v6 && (prefs.advertise_exit_node || subnet_v6),
    }
}

/// The nftables ruleset of a forwarding node, as `nft -f` input that atomically replaces
/// [`NFT_TABLE`] (the "add, delete, define" idiom works whether or not the table exists).
///
/// Why text through the `nft` binary rather than the `nftables` crate: that crate also only
/// builds JSON and runs the same binary, so it would add a dependency without removing the
/// runtime requirement; the text form is what an operator reads in `nft list ruleset`, and the
/// whole table is one transaction either way.
pub fn nft_ruleset(tun: &str, snat: bool) -> String {
    let mut s = format!(
        "table inet {NFT_TABLE}\n\
         delete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{tun}\" accept\n\
         \t\toifname \"{tun}\" accept\n\
         \t}}\n"
    );
    if snat {
        s.push_str(&format!(
            "\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname != \"{tun}\" ip saddr {} masquerade\n\
             \t\toifname != \"{tun}\" ip6 saddr {} masquerade\n\
             \t}}\n",
            wgcfg::TAILNET_V4,
            wgcfg::TAILNET_V6
        ));
    }
    s.push_str("}\n");
    s
}

/// Whether `SO_MARK` can be set by this process (it needs `CAP_NET_ADMIN`); the mark to use on
/// the agent's sockets, or `None` when unprivileged (then policy routing is not installed
/// either, since the tunnel's own traffic could not escape it).
pub fn usable_mark() -> Option<u32> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    match sock.set_mark(BYPASS_MARK) {
        Ok(()) => Some(BYPASS_MARK),
        Err(e) => {
            tracing::debug!(error = %e, "cannot set SO_MARK; no policy routing");
            None
        }
    }
}

/// `SO_MARK` for DERP's TCP sockets (installed as `nat`'s socket hook).
pub fn mark_tcp(sock: &tokio::net::TcpSocket) -> std::io::Result<()> {
    socket2::SockRef::from(sock).set_mark(BYPASS_MARK)
}

/// What the router installed last, to diff the next plan against.
#[derive(Debug, Default)]
struct Installed {
    /// Routes with the table they went into and the TUN index they point at.
    routes: BTreeSet<(u32, IpNet, RouteVia)>,
    rules: Vec<PolicyRule>,
    nft: Option<String>,
}

/// The applier: moves the OS to an [`OsPlan`] and back.
#[derive(Debug)]
pub struct Router {
    tun: String,
    marker: PathBuf,
    installed: Installed,
    /// Whether policy routing is possible at all (our sockets can be marked).
    marks: bool,
    /// Which forwarding switches the current plan needs.
    forwarding: (bool, bool),
    next_check: Instant,
    apply_health: Vec<String>,
    forwarding_health: Vec<String>,
    compose_health: Vec<String>,
}

impl Router {
    /// A router for the TUN device `tun`, remembering its state in `state_dir`.
    pub fn new(tun: &str, state_dir: &Path, marks: bool) -> Self {
        Router {
            tun: tun.to_string(),
            marker: state_dir.join(MARKER_FILE),
            installed: Installed::default(),
            marks,
            forwarding: (false, false),
            next_check: Instant::now(),
            apply_health: Vec::new(),
            forwarding_health: Vec::new(),
            compose_health: Vec::new(),
        }
    }

    /// Problems for `agent status`.
    pub fn health(&self) -> impl Iterator<Item = &String> {
        self.compose_health
            .iter()
            .chain(&self.apply_health)
            .chain(&self.forwarding_health)
    }

    /// Keeps [`Composition::warnings`] for `agent status`.
    pub fn set_warnings(&mut self, warnings: Vec<String>) {
        self.compose_health = warnings;
    }

    /// Removes what a previous run left behind (it crashed or was killed): its rules, table 52
    /// and the nftables table. Does nothing unless that run left its marker file.
    pub async fn cleanup_stale(&mut self) {
        if !self.marker.exists() {
            return;
        }
        tracing::info!("removing routing state left by a previous run");
        match OsRouting::open() {
            Ok(os) => {
                if let Err(e) = os.delete_rules_at(&RULE_PRIORITIES, ROUTE_TABLE).await {
                    tracing::warn!(error = %e, "cannot remove stale policy rules");
                }
                if let Err(e) = os.flush_table(ROUTE_TABLE).await {
                    tracing::warn!(error = %e, "cannot flush stale routing table");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot clean up routing state"),
        }
        delete_nft_table().await;
        let _ = std::fs::remove_file(&self.marker);
    }

    /// Brings the OS to `plan`: rules, then routes (into table 52, or main in fallback), then
    /// nftables, then IP forwarding. Failures become health messages; the rest still applies.
    pub async fn apply(&mut self, plan: &OsPlan) {
        let mut health = Vec::new();
        if let Err(e) = std::fs::write(&self.marker, b"routes, rules and nftables installed\n") {
            tracing::debug!(error = %e, "cannot write the routing marker file");
        }
        let os = match OsRouting::open() {
            Ok(os) => os,
            Err(e) => {
                self.apply_health = vec![format!("cannot configure routing: {e}")];
                return;
            }
        };
        let index = match os.link_index(&self.tun).await {
            Ok(i) => i,
            Err(e) => {
                self.apply_health = vec![format!("cannot configure routing: {e}")];
                return;
            }
        };
        // Rules first, so routes land in a table that is consulted.
        let wanted_rules: Vec<PolicyRule> = if self.marks {
            plan.rules.clone()
        } else {
            Vec::new()
        };
        for old in self.installed.rules.clone() {
            if !wanted_rules.contains(&old) && os.delete_rule(&old).await.is_ok() {
                self.installed.rules.retain(|r| *r != old);
            }
        }
        let mut rules_ok = self.marks;
        for r in &wanted_rules {
            if self.installed.rules.contains(r) {
                continue;
            }
            match os.add_rule(r).await {
                Ok(()) => self.installed.rules.push(*r),
                Err(e) if r.v6 && e.is_family_unsupported() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "policy routing unavailable");
                    health.push(format!(
                        "policy routing unavailable ({e}); tailnet routes use the main table \
                         and exit nodes cannot be used"
                    ));
                    rules_ok = false;
                    break;
                }
            }
        }
        if !rules_ok {
            for r in std::mem::take(&mut self.installed.rules) {
                let _ = os.delete_rule(&r).await;
            }
        }
        let exit_routes = plan
            .routes
            .iter()
            .any(|r| matches!(r, PlannedRoute::Tun(p) if p.prefix_len() == 0));
        if !self.marks && exit_routes {
            health.push(
                "cannot use an exit node: the agent cannot mark its own sockets (SO_MARK needs \
                 CAP_NET_ADMIN), so its own traffic would loop into the tunnel"
                    .into(),
            );
        }
        let table = if rules_ok { ROUTE_TABLE } else { MAIN_TABLE };
        let wanted: BTreeSet<(u32, IpNet, RouteVia)> = plan
            .routes
            .iter()
            .filter_map(|r| match r {
                PlannedRoute::Tun(p) if rules_ok || p.prefix_len() > 0 => {
                    Some((table, *p, RouteVia::Dev(index)))
                }
                PlannedRoute::Throw(p) if rules_ok => Some((table, *p, RouteVia::Throw)),
                _ => None,
            })
            .collect();
        for old in self.installed.routes.clone() {
            if !wanted.contains(&old) {
                let (t, p, via) = old;
                if let Err(e) = os.delete_route(t, p, via).await {
                    tracing::debug!(error = %e, "route removal failed");
                }
                self.installed.routes.remove(&old);
            }
        }
        for r in &wanted {
            if self.installed.routes.contains(r) {
                continue;
            }
            let (t, p, via) = *r;
            match os.replace_route(t, p, via).await {
                Ok(()) => {
                    self.installed.routes.insert(*r);
                }
                Err(e) if p.addr().is_ipv6() && e.is_family_unsupported() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "route not installed");
                    health.push(format!("cannot install the route {p}: {e}"));
                }
            }
        }
        drop(os);
        if plan.nft != self.installed.nft {
            match &plan.nft {
                Some(ruleset) => match run_nft(ruleset).await {
                    Ok(()) => self.installed.nft = Some(ruleset.clone()),
                    Err(e) => health.push(format!(
                        "cannot install the nftables rules for forwarding: {e}"
                    )),
                },
                None => {
                    delete_nft_table().await;
                    self.installed.nft = None;
                }
            }
        }
        self.forwarding = (plan.forward_v4, plan.forward_v6);
        enable_forwarding(self.forwarding, &mut health);
        self.apply_health = health;
        self.forwarding_health = forwarding_problems(self.forwarding);
        self.next_check = Instant::now() + FORWARDING_CHECK;
    }

    /// Re-reads the forwarding switches every few seconds while this node forwards, and warns
    /// (log and status) when the OS has turned one off.
    pub fn check_forwarding(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + FORWARDING_CHECK;
        let problems = forwarding_problems(self.forwarding);
        if problems != self.forwarding_health {
            for p in &problems {
                tracing::warn!("{p}");
            }
            self.forwarding_health = problems;
        }
    }

    /// Removes every route, rule and the nftables table this router installed (on `down`,
    /// logout, key expiry and daemon exit). IP forwarding is left as it is, as tailscaled does.
    pub async fn teardown(&mut self) {
        let installed = std::mem::take(&mut self.installed);
        if !installed.routes.is_empty() || !installed.rules.is_empty() {
            match OsRouting::open() {
                Ok(os) => {
                    for r in &installed.rules {
                        if let Err(e) = os.delete_rule(r).await {
                            tracing::warn!(error = %e, "cannot remove policy rule");
                        }
                    }
                    for (t, p, via) in &installed.routes {
                        // Routes through the TUN vanish with it; throw routes do not.
                        let _ = os.delete_route(*t, *p, *via).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove routing state"),
            }
        }
        if installed.nft.is_some() {
            delete_nft_table().await;
        }
        let _ = std::fs::remove_file(&self.marker);
        self.forwarding = (false, false);
        self.apply_health.clear();
        self.forwarding_health.clear();
        self.compose_health.clear();
        tracing::debug!("routing state removed");
    }
}

fn read_switch(path: &str) -> Option<bool> {
    std::fs::read_to_string(path).ok().map(|s| s.trim() != "0")
}

fn enable_forwarding((v4, v6): (bool, bool), health: &mut Vec<String>) {
    for (want, path, name) in [
        (v4, FORWARD_V4, "net.ipv4.ip_forward"),
        (v6, FORWARD_V6, "net.ipv6.conf.all.forwarding"),
    ] {
        if !want || read_switch(path) == Some(true) {
            continue;
        }
        match std::fs::write(path, b"1\n") {
            Ok(()) => tracing::info!("{name} enabled for forwarding"),
            Err(e) => health.push(format!("cannot enable {name}: {e}")),
        }
    }
}

/// A warning when strict reverse-path filtering would drop the tunnel's own UDP replies once an
/// exit node's default route is in table 52 (the reverse lookup does not see our mark).
pub fn rp_filter_warning() -> Option<String> {
    let strict = std::fs::read_to_string(RP_FILTER).is_ok_and(|s| s.trim() == "1");
    strict.then(|| {
        "net.ipv4.conf.all.rp_filter is strict (1): replies from the exit node may be dropped; \
         set it to 2 (loose)"
            .to_string()
    })
}

fn forwarding_problems((v4, v6): (bool, bool)) -> Vec<String> {
    let mut out = Vec::new();
    for (want, path, name) in [
        (v4, FORWARD_V4, "net.ipv4.ip_forward"),
        (v6, FORWARD_V6, "net.ipv6.conf.all.forwarding"),
    ] {
        if want && read_switch(path) == Some(false) {
            out.push(format!(
                "IP forwarding is off ({name}=0): this node cannot forward traffic for its \
                 subnet routes or as an exit node; run `sysctl -w {name}=1`"
            ));
        }
    }
    out
}

/// Runs `nft -f -` with `ruleset` on stdin.
async fn run_nft(ruleset: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "the `nft` program (package nftables) is not installed".to_string()
            }
            _ => format!("cannot run nft: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|e| format!("cannot feed nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft failed: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes [`NFT_TABLE`] if it exists.
async fn delete_nft_table() {
    let script = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    if let Err(e) = run_nft(&script).await {
        tracing::debug!(error = %e, "cannot remove the nftables table");
    }
}

/// The exit node in use as `agent status` reports it: from the netmap when it is there, else
/// what the preferences name.
pub fn exit_node_status(
    prefs: &RoutingPrefs,
    nm: Option<&NetMap>,
) -> Option<crate::ipn::ExitNodeStatus> {
    if !prefs.uses_exit_node() {
        return None;
    }
    match nm.and_then(|nm| find_exit_node(prefs, nm)) {
        Some(n) => Some(crate::ipn::ExitNodeStatus {
            id: n.stable_id.clone(),
            name: n.name.trim_end_matches('.').to_string(),
            addresses: n.addresses.iter().map(|a| a.addr()).collect(),
            online: n.online.unwrap_or(false),
        }),
        None => Some(crate::ipn::ExitNodeStatus {
            id: prefs.exit_node_id.clone().unwrap_or_default(),
            name: prefs
                .exit_node_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            addresses: prefs.exit_node_ip.into_iter().collect(),
            online: false,
        }),
    }
}

/// The routing preferences after `agent up` with `req` (fields it leaves out keep their saved
/// values), or the message for the user. The exit node is resolved against the netmap: by
/// name (FQDN, short name, hostname) or tailnet IP, and it must offer an exit node; before the
/// first netmap only an IP can be given.
pub fn routing_from_up(
    saved: &RoutingPrefs,
    req: &crate::ipn::UpRequest,
    nm: Option<&NetMap>,
) -> Result<RoutingPrefs, String> {
    let mut next = saved.clone();
    if let Some(routes) = &req.advertise_routes {
        next.advertise_routes = crate::ipn::parse_advertise_routes(routes)?;
    }
    if let Some(v) = req.advertise_exit_node {
        next.advertise_exit_node = v;
    }
    if let Some(v) = req.snat_subnet_routes {
        next.no_snat_subnet_routes = !v;
    }
    if let Some(v) = req.accept_routes {
        next.accept_routes = v;
    }
    if let Some(v) = req.exit_node_allow_lan_access {
        next.exit_node_allow_lan_access = v;
    }
    if let Some(target) = req.exit_node.as_deref().map(str::trim) {
        next.exit_node_id = None;
        next.exit_node_ip = None;
        if !target.is_empty() {
            let ip: Option<IpAddr> = target.parse().ok();
            match nm {
                Some(nm) => {
                    let is_self = nm.self_node.as_ref().is_some_and(|me| {
                        let fqdn = me.name.trim_end_matches('.').to_ascii_lowercase();
                        let want = target.trim_end_matches('.').to_ascii_lowercase();
                        fqdn == want
                            || fqdn.split('.').next() == Some(want.as_str())
                            || ip.is_some_and(|ip| me.addresses.iter().any(|a| a.addr() == ip))
                    });
                    if is_self {
                        return Err("cannot use this node as its own exit node".into());
                    }
                    let node = super::status::find_peer(nm, target).ok_or_else(|| {
                        format!(
                            "no node named or addressed {target:?} in the tailnet; see \
                             `agent exit-node list`"
                        )
                    })?;
                    let name = node.name.trim_end_matches('.');
                    if !wgcfg::offers_exit_node(node) {
                        return Err(format!(
                            "{name} is not offering an exit node (run `agent up \
                             --advertise-exit-node` there, and have its routes approved); see \
                             `agent exit-node list`"
                        ));
                    }
                    next.exit_node_id = Some(node.stable_id.clone());
                    next.exit_node_ip = node.addresses.first().map(|a| a.addr());
                }
                None => match ip {
                    Some(ip) => next.exit_node_ip = Some(ip),
                    None => {
                        return Err(format!(
                            "cannot look up the exit node {target:?} before this node is \
                             connected: give its tailnet IP, or run the command again once \
                             `agent status` shows Running"
                        ));
                    }
                },
            }
        }
    }
    if next.advertise_exit_node && next.uses_exit_node() {
        return Err(
            "cannot advertise an exit node and use an exit node at the same time; clear one \
             (--advertise-exit-node=false or --exit-node=)"
                .into(),
        );
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::UpRequest;
    use proto::keys::NodePrivate;
    use proto::tailcfg::NodeId;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn node(id: i64, name: &str, ip: &str, allowed_extra: &[&str]) -> Node {
        let addr: IpNet = format!("{ip}/32").parse().unwrap();
        let mut allowed = vec![addr];
        allowed.extend(nets(allowed_extra));
        Node {
            id: NodeId(id),
            stable_id: id.to_string(),
            name: format!("{name}.example.ts.net."),
            key: NodePrivate::generate(&mut rand_core::OsRng).public(),
            addresses: vec![addr],
            allowed_ips: Some(allowed),
            online: Some(true),
            ..Default::default()
        }
    }

    /// A laptop's map: an office router, a second router for the same LAN, two exit nodes.
    fn netmap() -> NetMap {
        let mut nm = NetMap::new();
        nm.self_node = Some(node(1, "laptop", "100.64.0.1", &[]));
        for n in [
            node(2, "office", "100.64.0.2", &["192.168.1.0/24"]),
            node(3, "web", "100.64.0.3", &[]),
            node(4, "egress", "100.64.0.4", &["0.0.0.0/0", "::/0"]),
            node(5, "egress2", "100.64.0.5", &["0.0.0.0/0", "::/0"]),
        ] {
            nm.peers.insert(n.id, n);
        }
        nm
    }

    fn lan() -> LocalNets {
        LocalNets {
            lan: nets(&["10.0.0.0/24", "2001:db8:1::/64"]),
            host_ips: vec!["10.0.0.7".parse().unwrap()],
            ipv6: true,
        }
    }

    fn up(f: impl FnOnce(&mut UpRequest)) -> UpRequest {
        let mut r = UpRequest::default();
        f(&mut r);
        r
    }

    fn allowed_of(c: &Composition, nm: &NetMap, id: i64) -> Vec<IpNet> {
        c.peers[&nm.peers[&NodeId(id)].key].clone()
    }

    #[test]
    fn plain_client_routes_only_the_tailnet() {
        let nm = netmap();
        let c = compose("ts0", &RoutingPrefs::default(), &nm, &lan(), Utc::now());
        assert_eq!(allowed_of(&c, &nm, 2), nets(&["100.64.0.2/32"]));
        assert_eq!(allowed_of(&c, &nm, 4), nets(&["100.64.0.4/32"]));
        assert!(c.local_routes.is_empty());
        let routes: Vec<_> = c.plan.routes.iter().copied().collect();
        assert_eq!(
            routes,
            vec![
                PlannedRoute::Tun("100.64.0.0/10".parse().unwrap()),
                PlannedRoute::Tun("fd7a:115c:a1e0::/48".parse().unwrap()),
            ]
        );
        // tailscaled's rules, for both families.
        let shown: Vec<String> = c.plan.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            shown,
            [
                "ip rule 5210 fwmark 0x80000/0xff0000 lookup 254",
                "ip rule 5230 fwmark 0x80000/0xff0000 lookup 253",
                "ip rule 5250 fwmark 0x80000/0xff0000 unreachable",
                "ip rule 5270 lookup 52",
                "ip -6 rule 5210 fwmark 0x80000/0xff0000 lookup 254",
                "ip -6 rule 5230 fwmark 0x80000/0xff0000 lookup 253",
                "ip -6 rule 5250 fwmark 0x80000/0xff0000 unreachable",
                "ip -6 rule 5270 lookup 52",
            ]
        );
        assert_eq!(c.plan.nft, None);
        assert!(!c.plan.forward_v4 && !c.plan.forward_v6);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Without IPv6 on the host, nothing IPv6 is planned.
        let v4only = LocalNets {
            ipv6: false,
            ..lan()
        };
        let c = compose("ts0", &RoutingPrefs::default(), &nm, &v4only, Utc::now());
        assert_eq!(c.plan.rules.len(), 4);
        assert_eq!(c.plan.routes.len(), 1);
    }

    #[test]
    fn accepted_routes_reach_engine_and_table() {
        let nm = netmap();
        let prefs = routing_from_up(
            &RoutingPrefs::default(),
            &up(|r| r.accept_routes = Some(true)),
            Some(&nm),
        )
        .unwrap();
        let c = compose("ts0", &prefs, &nm, &lan(), Utc::now());
        assert_eq!(
            allowed_of(&c, &nm, 2),
            nets(&["100.64.0.2/32", "192.168.1.0/24"])
        );
        assert!(
            c.plan
                .routes
                .contains(&PlannedRoute::Tun("192.168.1.0/24".parse().unwrap()))
        );
        // Failover: control moves the primary route to another router; the table keeps the
        // prefix, the engine follows the new owner.
        let mut moved = nm.clone();
        moved
            .peers
            .get_mut(&NodeId(2))
            .unwrap()
            .allowed_ips
            .as_mut()
            .unwrap()
            .truncate(1);
        moved
            .peers
            .get_mut(&NodeId(3))
            .unwrap()
            .allowed_ips
            .as_mut()
            .unwrap()
            .push("192.168.1.0/24".parse().unwrap());
        let c = compose("ts0", &prefs, &moved, &lan(), Utc::now());
        assert_eq!(allowed_of(&c, &moved, 2), nets(&["100.64.0.2/32"]));
        assert_eq!(
            allowed_of(&c, &moved, 3),
            nets(&["100.64.0.3/32", "192.168.1.0/24"])
        );
        // An expired router is left out entirely.
        let mut expired = nm.clone();
        expired.peers.get_mut(&NodeId(2)).unwrap().expired = true;
        let c = compose("ts0", &prefs, &expired, &lan(), Utc::now());
        assert!(!c.peers.contains_key(&nm.peers[&NodeId(2)].key));
        assert!(
            !c.plan
                .routes
                .contains(&PlannedRoute::Tun("192.168.1.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn subnet_router_forwards_and_masquerades() {
        let nm = netmap();
        let req = up(|r| r.advertise_routes = Some(vec!["192.168.1.0/24".into()]));
        let prefs = routing_from_up(&RoutingPrefs::default(), &req, Some(&nm)).unwrap();
        assert_eq!(prefs.routable_ips(), nets(&["192.168.1.0/24"]));
        let c = compose("ts0", &prefs, &nm, &lan(), Utc::now());
        assert_eq!(c.local_routes, nets(&["192.168.1.0/24"]));
        assert!(c.plan.forward_v4 && !c.plan.forward_v6);
        let nft = c.plan.nft.unwrap();
        assert!(
            nft.starts_with("table inet agent\ndelete table inet agent\n"),
            "{nft}"
        );
        assert!(nft.contains("oifname != \"ts0\" ip saddr 100.64.0.0/10 masquerade"));
        assert!(nft.contains("iifname \"ts0\" accept"));
        // --snat-subnet-routes=false keeps the forward rules, drops the masquerade.
        let nosnat = routing_from_up(
            &prefs,
            &up(|r| r.snat_subnet_routes = Some(false)),
            Some(&nm),
        )
        .unwrap();
        assert_eq!(nosnat.advertise_routes, prefs.advertise_routes, "kept");
        let nft = compose("ts0", &nosnat, &nm, &lan(), Utc::now())
            .plan
            .nft
            .unwrap();
        assert!(!nft.contains("masquerade") && nft.contains("chain forward"));
        // An empty --advertise-routes= stops forwarding.
        let none = routing_from_up(
            &prefs,
            &up(|r| r.advertise_routes = Some(vec![String::new()])),
            Some(&nm),
        )
        .unwrap();
        assert!(none.advertise_routes.is_empty());
        assert_eq!(
            compose("ts0", &none, &nm, &lan(), Utc::now()).plan.nft,
            None
        );
    }

    #[test]
    fn exit_node_advertiser_offers_default_routes() {
        let nm = netmap();
        let prefs = routing_from_up(
            &RoutingPrefs::default(),
            &up(|r| r.advertise_exit_node = Some(true)),
            Some(&nm),
        )
        .unwrap();
        assert_eq!(prefs.routable_ips(), nets(&["0.0.0.0/0", "::/0"]));
        let c = compose("ts0", &prefs, &nm, &lan(), Utc::now());
        assert!(c.plan.forward_v4 && c.plan.forward_v6);
        assert!(c.plan.nft.is_some());
        let has = |s: &str| {
            let ip: IpAddr = s.parse().unwrap();
            c.local_routes.iter().any(|n| n.contains(&ip))
        };
        // The internet, but not the LAN (private ranges stay out even for its own address).
        assert!(has("198.51.100.1") && !has("10.0.0.7") && !has("10.0.0.1"));
    }

    #[test]
    fn selecting_and_clearing_an_exit_node() {
        let nm = netmap();
        let base = RoutingPrefs::default();
        let by_name = routing_from_up(
            &base,
            &up(|r| r.exit_node = Some("egress".into())),
            Some(&nm),
        )
        .unwrap();
        assert_eq!(by_name.exit_node_id.as_deref(), Some("4"));
        let by_ip = routing_from_up(
            &base,
            &up(|r| r.exit_node = Some("100.64.0.4".into())),
            Some(&nm),
        )
        .unwrap();
        assert_eq!(by_ip.exit_node_id.as_deref(), Some("4"));
        let c = compose("ts0", &by_name, &nm, &lan(), Utc::now());
        assert_eq!(
            allowed_of(&c, &nm, 4),
            nets(&["100.64.0.4/32", "0.0.0.0/0", "::/0"])
        );
        assert_eq!(allowed_of(&c, &nm, 5), nets(&["100.64.0.5/32"]));
        for p in ["0.0.0.0/0", "::/0"] {
            assert!(
                c.plan
                    .routes
                    .contains(&PlannedRoute::Tun(p.parse().unwrap()))
            );
        }
        assert!(
            !c.plan
                .routes
                .contains(&PlannedRoute::Throw("10.0.0.0/24".parse().unwrap()))
        );
        assert_eq!(
            exit_node_status(&by_name, Some(&nm)).map(|e| e.name),
            Some("egress.example.ts.net".into())
        );
        // With LAN access the host's LANs get throw routes (back to the main table).
        let lan_ok = routing_from_up(
            &by_name,
            &up(|r| r.exit_node_allow_lan_access = Some(true)),
            Some(&nm),
        )
        .unwrap();
        let c = compose("ts0", &lan_ok, &nm, &lan(), Utc::now());
        for p in ["10.0.0.0/24", "2001:db8:1::/64", "fe80::/10"] {
            assert!(
                c.plan
                    .routes
                    .contains(&PlannedRoute::Throw(p.parse().unwrap())),
                "{p}"
            );
        }
        // --exit-node= clears it: the default routes go, routing is back to normal.
        let cleared = routing_from_up(
            &lan_ok,
            &up(|r| r.exit_node = Some(String::new())),
            Some(&nm),
        )
        .unwrap();
        assert!(!cleared.uses_exit_node());
        let c = compose("ts0", &cleared, &nm, &lan(), Utc::now());
        assert!(
            !c.plan
                .routes
                .iter()
                .any(|r| matches!(r, PlannedRoute::Tun(p) if p.prefix_len() == 0))
        );
        assert_eq!(allowed_of(&c, &nm, 4), nets(&["100.64.0.4/32"]));
        assert_eq!(exit_node_status(&cleared, Some(&nm)), None);
    }

    #[test]
    fn exit_node_choices_are_checked() {
        let nm = netmap();
        let base = RoutingPrefs::default();
        let err = |target: &str| {
            routing_from_up(&base, &up(|r| r.exit_node = Some(target.into())), Some(&nm))
                .unwrap_err()
        };
        assert!(err("nosuch").contains("no node named"), "{}", err("nosuch"));
        assert!(
            err("web").contains("not offering an exit node"),
            "{}",
            err("web")
        );
        assert!(err("laptop").contains("its own exit node"));
        assert!(err("100.64.0.1").contains("its own exit node"));
        // Before the first netmap, only an IP works; it is resolved when the map arrives.
        let early = routing_from_up(
            &base,
            &up(|r| r.exit_node = Some("100.64.0.4".into())),
            None,
        )
        .unwrap();
        assert_eq!(early.exit_node_ip, Some("100.64.0.4".parse().unwrap()));
        let c = compose("ts0", &early, &nm, &lan(), Utc::now());
        assert_eq!(c.exit_node.map(|n| n.stable_id), Some("4".into()));
        assert!(
            routing_from_up(&base, &up(|r| r.exit_node = Some("egress".into())), None)
                .unwrap_err()
                .contains("tailnet IP")
        );
        // Advertising and using an exit node at once is refused, also across two `up`s.
        let exit = routing_from_up(
            &base,
            &up(|r| r.exit_node = Some("egress".into())),
            Some(&nm),
        )
        .unwrap();
        assert!(
            routing_from_up(
                &exit,
                &up(|r| r.advertise_exit_node = Some(true)),
                Some(&nm)
            )
            .unwrap_err()
            .contains("at the same time")
        );
    }

    #[test]
    fn a_vanished_exit_node_fails_closed_with_a_warning() {
        let mut nm = netmap();
        let prefs = routing_from_up(
            &RoutingPrefs::default(),
            &up(|r| r.exit_node = Some("egress".into())),
            Some(&nm),
        )
        .unwrap();
        nm.peers.remove(&NodeId(4));
        let c = compose("ts0", &prefs, &nm, &lan(), Utc::now());
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("not in the network map"))
        );
        // The default routes stay, so internet traffic is dropped rather than leaking out.
        assert!(
            c.plan
                .routes
                .contains(&PlannedRoute::Tun("0.0.0.0/0".parse().unwrap()))
        );
        let status = exit_node_status(&prefs, Some(&nm)).unwrap();
        assert!(!status.online && status.id == "4");
    }
}
