//! MagicDNS in the agent: the [`DnsManager`] the engine driver owns, and the driver's DNS
//! commands (`agent dns status`, `agent dns query`).
//!
//! Driven by the driver task:
//! - [`DnsManager::new`] at daemon start: crash recovery (a resolv.conf still carrying our
//!   marker is put back from the backup in the state directory);
//! - [`Driver::sync_dns`] after every network map and every `up`: rebuild the
//!   [`::dns::DnsConfig`] and swap it into the resolver; once the TUN is up, add 100.100.100.100
//!   and fd7a:115c:a1e0::53 to it and serve DNS there (UDP and TCP, port 53); point the OS at
//!   it when `--accept-dns` is on and the DNS config asks for it (MagicDNS, global resolvers or
//!   split routes), and leave or restore the OS otherwise;
//! - [`DnsManager::stop`] when the data plane goes away (down, logout, key expiry, daemon exit):
//!   restore the OS and stop the server.
//!
//! File and `resolvectl` work is blocking but small and only happens on DNS changes, so it runs
//! on the driver task itself; that also keeps apply and revert strictly ordered.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use ::dns::os::{OsConfigurator, OsDnsSettings, OsMode, OsPaths};
use ::dns::{DnsConfig, DnsServer, MAGIC_IPV4, MAGIC_IPV6, Resolver};
use ipnet::IpNet;
use proto::netmap::NetMap;
use tokio::sync::oneshot;

use super::Driver;
use crate::daemon::backend::BackendError;
use crate::ipn::{BackendState, DnsName, DnsQueryReply, DnsStatus};

/// The DNS commands the local API sends the driver.
pub(super) enum DnsCmd {
    Status(oneshot::Sender<DnsStatus>),
    Query(
        String,
        String,
        oneshot::Sender<Result<DnsQueryReply, BackendError>>,
    ),
}

/// MagicDNS state owned by the driver.
pub(super) struct DnsManager {
    resolver: Arc<Resolver>,
    server: Option<DnsServer>,
    tun: String,
    paths: OsPaths,
    /// The OS integration found on this host (detected once, on first use).
    detected: Option<OsConfigurator>,
    /// What the OS was told, while it is configured.
    applied: Option<OsDnsSettings>,
    /// The MagicDNS addresses are on the TUN device.
    tun_addrs: bool,
    accept_dns: bool,
    health: Vec<String>,
}

impl DnsManager {
    /// A manager for the TUN link `tun` with the resolv.conf backup in `state_dir`; restores
    /// the OS's DNS if a previous run crashed while it was ours.
    pub(super) fn new(tun: &str, state_dir: &Path) -> Self {
        Self::with_paths(tun, OsPaths::system(state_dir))
    }

    fn with_paths(tun: &str, paths: OsPaths) -> Self {
        match ::dns::os::recover(&paths) {
            Ok(::dns::os::Restored::Restored) => {
                tracing::info!("restored the original resolv.conf left by a previous run")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot restore resolv.conf from a previous run"),
        }
        Self {
            resolver: Arc::new(Resolver::default()),
            server: None,
            tun: tun.to_string(),
            paths,
            detected: None,
            applied: None,
            tun_addrs: false,
            accept_dns: true,
            health: Vec::new(),
        }
    }

    /// Problems to show in `agent status`.
    pub(super) fn health(&self) -> &[String] {
        &self.health
    }

    fn os(&mut self) -> &OsConfigurator {
        let paths = &self.paths;
        let tun = &self.tun;
        self.detected
            .get_or_insert_with(|| OsConfigurator::detect(paths, tun))
    }

    /// Brings resolver, server and OS in line with `nm`.
    pub(super) async fn update(&mut self, nm: &NetMap, accept_dns: bool, tun_up: bool) {
        self.health.clear();
        self.accept_dns = accept_dns;
        let cfg = DnsConfig::from_netmap(nm);
        self.resolver.set_config(cfg.clone());
        if tun_up {
            self.start_serving().await;
        }
        let upstreams = self.os().original_upstreams();
        self.resolver.set_os_upstreams(upstreams);

        // The OS gets 100.100.100.100 only (as Tailscale writes it): always reachable once
        // served, whereas the IPv6 address may be unusable on a host without IPv6.
        let v4 = IpAddr::V4(MAGIC_IPV4);
        let nameservers: Vec<IpAddr> = self
            .server
            .as_ref()
            .filter(|s| s.local_addrs().iter().any(|a| a.ip() == v4))
            .map(|_| vec![v4])
            .unwrap_or_default();
        let want = if accept_dns {
            OsDnsSettings::from_config(&cfg, nameservers)
        } else {
            None
        };
        if want == self.applied {
            return;
        }
        match want {
            Some(settings) => {
                let res = self.os().apply(&settings);
                match res {
                    Ok(()) => self.applied = Some(settings),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot point the OS's DNS at MagicDNS");
                        self.health
                            .push(format!("MagicDNS: cannot configure the OS's DNS: {e}"));
                        // A half-done apply (resolv.conf written, say) is undone right away.
                        self.applied = Some(settings);
                        self.revert_os();
                    }
                }
            }
            None => self.revert_os(),
        }
        // In direct mode the backup now holds the original upstreams.
        let upstreams = self.os().original_upstreams();
        self.resolver.set_os_upstreams(upstreams);
    }

    /// Adds the MagicDNS addresses to the TUN device and starts the server, once.
    async fn start_serving(&mut self) {
        if !self.tun_addrs {
            let v4 = IpNet::from(IpAddr::V4(MAGIC_IPV4));
            match dataplane::tun::add_service_address(&self.tun, v4).await {
                Ok(()) => self.tun_addrs = true,
                Err(e) => {
                    self.health.push(format!(
                        "MagicDNS: cannot add {MAGIC_IPV4} to {}: {e}",
                        self.tun
                    ));
                    return;
                }
            }
            let v6 = IpNet::from(IpAddr::V6(MAGIC_IPV6));
            if let Err(e) = dataplane::tun::add_service_address(&self.tun, v6).await {
                // IPv6 may be disabled on the host; IPv4 alone is enough.
                tracing::info!(error = %e, "MagicDNS serves IPv4 only");
            }
        }
        if self.server.is_some() {
            return;
        }
        let v4 = SocketAddr::new(IpAddr::V4(MAGIC_IPV4), 53);
        let v6 = SocketAddr::new(IpAddr::V6(MAGIC_IPV6), 53);
        let server = match DnsServer::bind(Arc::clone(&self.resolver), &[v4, v6]) {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::info!(error = %e, "MagicDNS over IPv6 unavailable; serving IPv4 only");
                DnsServer::bind(Arc::clone(&self.resolver), &[v4])
            }
        };
        match server {
            Ok(s) => self.server = Some(s),
            Err(e) => {
                tracing::error!(error = %e, "MagicDNS server cannot start");
                self.health.push(format!("MagicDNS: {e}"));
            }
        }
    }

    fn revert_os(&mut self) {
        if self.applied.take().is_none() {
            return;
        }
        let res = self.os().revert();
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot restore the OS's DNS settings");
            self.health.push(format!(
                "MagicDNS: cannot restore the OS's DNS settings: {e}"
            ));
        } else {
            tracing::info!("OS DNS settings restored");
        }
    }

    /// Restores the OS, stops the server and forgets the tailnet's names (down, logout,
    /// key expiry, daemon exit). The TUN addresses go away with the device.
    pub(super) async fn stop(&mut self) {
        self.revert_os();
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.tun_addrs = false;
        self.resolver.set_config(DnsConfig::default());
    }

    /// `agent dns status`.
    pub(super) fn status(&self) -> DnsStatus {
        let cfg = self.resolver.config();
        let mut short_of: std::collections::BTreeMap<&str, &str> = Default::default();
        for (short, fqdn) in &cfg.short_names {
            short_of.entry(fqdn.as_str()).or_insert(short.as_str());
        }
        let os_mode = match (&self.applied, &self.detected) {
            (Some(_), Some(os)) => os.mode(),
            _ => OsMode::Off,
        };
        let resolv_conf =
            (os_mode == OsMode::Direct).then(|| self.paths.resolv_conf.display().to_string());
        DnsStatus {
            magic_dns: cfg.magic_dns,
            base_domain: cfg.base_domain.clone(),
            accept_dns: self.accept_dns,
            os_mode,
            resolv_conf,
            listening: self
                .server
                .as_ref()
                .map(|s| s.local_addrs().to_vec())
                .unwrap_or_default(),
            search_domains: cfg.search_domains.clone(),
            resolvers: cfg.resolvers.clone(),
            fallback_resolvers: cfg.fallback_resolvers.clone(),
            os_upstreams: self.resolver.os_upstreams(),
            split_routes: cfg.routes.clone(),
            unsupported_resolvers: cfg.unsupported_resolvers.clone(),
            names: cfg
                .hosts
                .iter()
                .map(|(name, addrs)| DnsName {
                    name: name.clone(),
                    short: short_of.get(name.as_str()).map(|s| s.to_string()),
                    addresses: addrs.clone(),
                })
                .collect(),
            health: self.health.clone(),
        }
    }
}

impl Driver {
    /// Re-syncs MagicDNS with the current map and preferences (after a map or an `up`).
    pub(super) async fn sync_dns(&mut self) {
        let Some(nm) = self.netmap.clone() else {
            return;
        };
        let tun_up = self.tun.is_some();
        let accept_dns = !self.prefs.no_accept_dns;
        self.dns.update(&nm, accept_dns, tun_up).await;
    }

    /// Answers a DNS command. Queries run on their own task: a forwarded query may wait
    /// seconds for an upstream, and the driver must not.
    pub(super) fn handle_dns_cmd(&mut self, cmd: DnsCmd) {
        match cmd {
            DnsCmd::Status(tx) => {
                let _ = tx.send(self.dns.status());
            }
            DnsCmd::Query(name, qtype, tx) => {
                if self.backend_state != BackendState::Running {
                    let _ = tx.send(Err(BackendError::NotRunning {
                        state: self.backend_state,
                    }));
                    return;
                }
                let resolver = Arc::clone(&self.dns.resolver);
                tokio::spawn(async move {
                    let res = resolver
                        .query(&name, &qtype)
                        .await
                        .map_err(|e| BackendError::InvalidRequest(e.to_string()));
                    let _ = tx.send(res);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> OsPaths {
        OsPaths {
            resolv_conf: dir.join("resolv.conf"),
            backup: dir.join("resolv.conf.agent-backup"),
            resolved_upstreams: dir.join("resolved-resolv.conf"),
        }
    }

    fn netmap() -> NetMap {
        let mut nm = NetMap::new();
        nm.self_node = Some(proto::tailcfg::Node {
            name: "laptop.example.ts.net.".into(),
            addresses: vec!["100.64.0.1/32".parse().unwrap()],
            ..Default::default()
        });
        nm.dns.proxied = true;
        nm
    }

    #[test]
    fn a_crashed_runs_resolv_conf_is_restored_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths(tmp.path());
        std::fs::write(&p.resolv_conf, "nameserver 10.0.0.1\n").unwrap();
        let direct = ::dns::os::DirectManager::new(&p.resolv_conf, &p.backup);
        direct
            .apply(&OsDnsSettings {
                nameservers: vec![IpAddr::V4(MAGIC_IPV4)],
                search_domains: vec!["example.ts.net".into()],
                match_domains: vec![],
                default_route: false,
            })
            .unwrap();
        let _m = DnsManager::with_paths("agent-test0", p.clone());
        assert_eq!(
            std::fs::read_to_string(&p.resolv_conf).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        assert!(!p.backup.exists());
    }

    #[tokio::test]
    async fn without_the_tun_the_os_is_left_alone_but_names_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let p = paths(tmp.path());
        std::fs::write(&p.resolv_conf, "nameserver 10.0.0.1\n").unwrap();
        let mut m = DnsManager::with_paths("agent-test0", p.clone());
        // No TUN: no server, so the OS must not be pointed at an address nobody serves.
        m.update(&netmap(), true, false).await;
        assert_eq!(
            std::fs::read_to_string(&p.resolv_conf).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        let st = m.status();
        assert_eq!(st.os_mode, OsMode::Off);
        assert!(st.magic_dns);
        assert_eq!(st.base_domain.as_deref(), Some("example.ts.net"));
        assert_eq!(st.names[0].name, "laptop.example.ts.net");
        assert_eq!(st.names[0].short.as_deref(), Some("laptop"));
        assert_eq!(st.os_upstreams, ["10.0.0.1:53".parse().unwrap()]);
        let a = m.resolver.query("laptop", "A").await.unwrap();
        assert_eq!(a.answers[0].data, "100.64.0.1");
        m.stop().await;
        let gone = m.resolver.query("laptop", "A").await.unwrap();
        assert!(gone.answers.is_empty());
    }
}
