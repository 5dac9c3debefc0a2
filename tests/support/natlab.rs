//! The NAT lab: an "internet" of network namespaces with two DERP regions, and hosts behind NAT
//! routers of several kinds (nftables), each running our `agent daemon`. Used by
//! `tests/nat_lab.rs` and by the time-to-direct benchmark.
//!
//! ```text
//!  internet namespace: br0 11.0.0.254/24 (core router, ip_forward)
//!    11.0.0.1  control serve: control :8080, DERP :8443 (region 999 "control"), STUN :3478
//!    11.0.0.2  control derp: DERP :8443 (region 902 "lab2"), STUN :3478
//!    11.0.0.k  WAN of router k  --  router k: lan 192.168.k.1/24 -- host k: eth0 192.168.k.2
//!    double:   carrier WAN 11.0.0.k, carrier lan 10.64.k.1 -- home router WAN 10.64.k.2 ...
//!    firewall: router WAN 11.0.0.k, lan 11.1.k.1/24, host 11.1.k.2 (public, routed by the core)
//! ```
//!
//! The "internet" is 11.0.0.0/24 rather than a documentation prefix because miniupnpd refuses
//! to map ports when its external address is reserved ("Port forwarding is impossible"). It is
//! never routed off the machine: every namespace is a fresh `tsr-<pid>-<n>` (see `netns.rs`),
//! the only links are veth pairs and a bridge between lab namespaces, and default routes point
//! only at lab routers ([`Lab::check_no_route_out`] checks that every gateway is a lab
//! address). The tailnet uses 100.64.0.0/10, so carrier-grade NAT here uses 10.64.k.0/24.
//!
//! NAT kinds follow `shared/reference/nat-lab-notes.md` (measured recipes): easy = `masquerade`
//! (endpoint-independent mapping), hard = `masquerade random`, double = masquerade twice,
//! firewall = no NAT but a stateful forward chain, udp-blocked = easy plus
//! `meta l4proto udp drop`, port-mapped = hard NAT plus miniupnpd (NAT-PMP, PCP, UPnP IGD).
//! Every router drops unsolicited input on its WAN (the notes' first pitfall).
//!
//! Drop stops every process the lab started (by PID, newest first: agents, miniupnpd, control,
//! derper) and then deletes the namespaces, on success, error and panic alike. Logs go to the
//! test's run directory and are registered with the [`TestEnv`] so a failure prints their tails.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::control::BASE_DOMAIN;
use crate::netns::ip;
use crate::topology::{PATH, python3, run_in};
use crate::{
    AuthKey, Check, Host, Netns, Proc, Spawn, TestEnv, path_kind, peer, report, wait_until,
};

/// The core router's address on the internet bridge (default gateway of every router).
pub const CORE_IP: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 254);
/// `control serve` with the embedded DERP relay (region 999) and STUN.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 1);
/// `control derp`: the second region (902) with its own STUN server.
pub const DERPER_IP: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 2);
/// Control protocol port on [`CONTROL_IP`].
pub const LAB_CONTROL_PORT: u16 = 8080;
/// DERP (TLS) port of both relays.
pub const LAB_DERP_PORT: u16 = 8443;
/// STUN port of both relays.
pub const LAB_STUN_PORT: u16 = 3478;
/// Region id of the embedded relay.
pub const REGION_CONTROL: u16 = 999;
/// Region id of the `control derp` relay.
pub const REGION_DERPER: u16 = 902;
/// The agents' UDP port.
pub const LAB_AGENT_PORT: u16 = 41641;
/// The agents' TUN device.
const TUN: &str = "agent0";

/// PATH for everything started here (`ip`, `nft`, `conntrack` live in sbin).
/// How long a one-shot command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server or daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// nftables table the cut of direct UDP lives in (one per peer).
const CUT_TABLE_PREFIX: &str = "natlab_cut_";

/// The kinds of network a lab host can sit behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping (`masquerade`), like most home routers.
    Easy,
    /// Endpoint-dependent mapping (`masquerade random`): a new port per destination.
    Hard,
    /// A home router (easy) behind a carrier router (easy).
    Double,
    /// No NAT: a public address behind a stateful firewall that drops unsolicited inbound.
    Firewall,
    /// Easy NAT that drops all outbound UDP; only TCP (DERP) gets out.
    UdpBlocked,
    /// Hard NAT whose router runs miniupnpd (NAT-PMP, PCP, UPnP IGD).
    PortMapped,
}

impl NatKind {
    pub const ALL: [NatKind; 6] = [
        NatKind::Easy,
        NatKind::Hard,
        NatKind::Double,
        NatKind::Firewall,
        NatKind::UdpBlocked,
        NatKind::PortMapped,
    ];

    /// Short label for tables and host names.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::Easy => "easy",
            NatKind::Hard => "hard",
            NatKind::Double => "double",
            NatKind::Firewall => "fw",
            NatKind::UdpBlocked => "udpblk",
            NatKind::PortMapped => "pmap",
        }
    }

    /// True if the mapping changes with the destination (hard NAT, also behind miniupnpd).
    pub fn mapping_varies(self) -> bool {
        matches!(self, NatKind::Hard | NatKind::PortMapped)
    }

    /// True if a host behind this kind can reach a DERP-announced STUN server over UDP.
    pub fn udp_works(self) -> bool {
        !matches!(self, NatKind::UdpBlocked)
    }

    /// Whether a direct path between hosts behind `self` and `other` can exist: both need UDP,
    /// and at least one side must offer a port the other can hit without guessing blindly
    /// (endpoint-independent mapping, a public address, or a port mapping). Hard against hard
    /// has neither and stays on DERP (see nat-lab-notes.md, "Port guessing").
    pub fn direct_possible_with(self, other: NatKind) -> bool {
        let stable = |k: NatKind| {
            matches!(
                k,
                NatKind::Easy | NatKind::Double | NatKind::Firewall | NatKind::PortMapped
            )
        };
        self.udp_works() && other.udp_works() && (stable(self) || stable(other))
    }
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The lab: internet namespace, relays, control server, routers and hosts.
#[derive(Debug)]
pub struct Lab<'a> {
    env: &'a TestEnv,
    /// Processes in start order; stopped newest first.
    procs: Vec<Proc>,
    inet: Arc<Netns>,
    sites: Vec<Site>,
    /// Every namespace, so Drop deletes them after the processes are gone.
    namespaces: Vec<Arc<Netns>>,
    dir: PathBuf,
    /// Unix sockets need short paths.
    sockets: tempfile::TempDir,
    db: PathBuf,
    control_url: String,
    control_proc: usize,
    next_index: u8,
    /// Host name -> index of its newest agent daemon in `procs`.
    agents: HashMap<String, usize>,
    spawn_counts: HashMap<String, u32>,
}

impl<'a> Lab<'a> {
    /// Builds the internet namespace, starts `control derp` (region 902) and `control serve`
    /// (region 999, with the derper's region merged in through `--derp-map`) and waits until
    /// control answers.
    pub fn start(env: &'a TestEnv) -> anyhow::Result<Self> {
        let started = Instant::now();
        let inet = Arc::new(Netns::new_bare()?);
        let n = inet.name();
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"])?;
        for addr in [CORE_IP, CONTROL_IP, DERPER_IP] {
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "br0"])?;
        }
        ip(&["-n", n, "link", "set", "br0", "up"])?;
        sh(
            &inet,
            "echo 1 > /proc/sys/net/ipv6/conf/br0/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv4/ip_forward; \
             echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects; \
             echo 0 > /proc/sys/net/ipv4/conf/br0/send_redirects",
        )?;
        let dir = env.path("natlab");
        std::fs::create_dir_all(&dir)?;
        let sockets = tempfile::Builder::new().prefix("tsr-nl-").tempdir()?;
        let mut lab = Lab {
            env,
            procs: Vec::new(),
            namespaces: vec![Arc::clone(&inet)],
            inet,
            sites: Vec::new(),
            db: dir.join("control.db"),
            dir,
            sockets,
            control_url: format!("http://{CONTROL_IP}:{LAB_CONTROL_PORT}"),
            control_proc: 0,
            next_index: 10,
            agents: HashMap::new(),
            spawn_counts: HashMap::new(),
        };
        let derper_dir = lab.dir.join("derper");
        let map_file = derper_dir.join("derp-map.json");
        let spec = Spawn::new(env.control()?)
            .clear_env()
            .env("PATH", PATH)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("E2E_DERPER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg("derp")
            .args(["--listen", &format!("{DERPER_IP}:{LAB_DERP_PORT}")])
            .args(["--hostname", &DERPER_IP.to_string()])
            .args(["--stun-port", &LAB_STUN_PORT.to_string()])
            .args(["--region-id", &REGION_DERPER.to_string()])
            .args(["--region-code", "lab2"])
            .arg("--state-dir")
            .arg(&derper_dir)
            .arg("--write-map")
            .arg(&map_file);
        let inet = Arc::clone(&lab.inet);
        let derper = lab.spawn_in(&inet, "derper", &spec)?;
        wait_until("control derp to write its DERP map", READY_TIMEOUT, || {
            lab.procs
                .get_mut(derper)
                .context("no derper")?
                .ensure_running()?;
            Ok(if map_file.is_file() {
                Check::Ready(())
            } else {
                Check::NotYet("no derp-map.json yet".into())
            })
        })?;

        let data = lab.dir.join("control-data");
        std::fs::create_dir_all(&data)?;
        let spec = Spawn::new(env.control()?)
            .clear_env()
            .env("PATH", PATH)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("E2E_CONTROL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg("serve")
            .args(["--listen", &format!("{CONTROL_IP}:{LAB_CONTROL_PORT}")])
            .args(["--server-url", &lab.control_url])
            .arg("--db")
            .arg(&lab.db)
            .args(["--base-domain", BASE_DOMAIN])
            .args(["--derp-port", &LAB_DERP_PORT.to_string()])
            .args(["--stun-port", &LAB_STUN_PORT.to_string()])
            .args(["--derp-host", &CONTROL_IP.to_string()])
            .args(["--derp-region-id", &REGION_CONTROL.to_string()])
            .arg("--derp-map")
            .arg(&map_file)
            .arg("--data-dir")
            .arg(&data);
        lab.control_proc = lab.spawn_in(&inet, "control", &spec)?;
        let key_url = format!("{}/key?v=130", lab.control_url);
        wait_until("control to answer GET /key?v=130", READY_TIMEOUT, || {
            lab.procs
                .get_mut(lab.control_proc)
                .context("no control")?
                .ensure_running()?;
            let out = run_in(
                &lab.inet,
                &Spawn::new("curl")
                    .clear_env()
                    .env("PATH", PATH)
                    .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"])
                    .arg(&key_url),
                Duration::from_secs(10),
            )?;
            let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Ok(if code == "200" {
                Check::Ready(())
            } else {
                Check::NotYet(format!(
                    "HTTP {code:?} {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            })
        })?;
        report(format_args!(
            "{}: NAT lab internet {} with control and derper ready after {} ms",
            env.name(),
            lab.inet.name(),
            started.elapsed().as_millis()
        ));
        Ok(lab)
    }

    /// The test environment.
    pub fn env(&self) -> &'a TestEnv {
        self.env
    }

    /// `http://11.0.0.1:8080`.
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    /// The internet namespace (core router, control, derper).
    pub fn inet(&self) -> &Netns {
        &self.inet
    }

    /// The lab's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sites added so far.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Adds a host named `name` behind a fresh network of `kind`, with nothing running on the
    /// host yet (miniupnpd already runs on a port-mapping router).
    pub fn add_site(&mut self, name: &str, kind: NatKind) -> anyhow::Result<Site> {
        ensure!(
            !name.is_empty()
                && name.len() <= 10
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "site name {name:?} must be 1-10 characters of [A-Za-z0-9-]"
        );
        ensure!(
            self.sites.iter().all(|s| s.name != name),
            "site {name} exists already"
        );
        let k = self.next_index;
        ensure!(k < 250, "too many sites in one lab");
        self.next_index += 1;
        let wan_ip = Ipv4Addr::new(11, 0, 0, k);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;

        // The outermost router, attached to the internet bridge.
        let edge = self.new_ns()?;
        self.attach_to_internet(&edge, k, wan_ip)?;
        let (router, router_lan, host_ip, carrier) = match kind {
            NatKind::Double => {
                // Carrier router: its "lan" faces the home router's WAN.
                let carrier_lan = Ipv4Addr::new(10, 64, k, 1);
                let home_wan = Ipv4Addr::new(10, 64, k, 2);
                let home = self.new_ns()?;
                link_pair(&edge, "lan", &home, "wan")?;
                addr_up(&edge, "lan", carrier_lan, 24)?;
                addr_up(&home, "wan", home_wan, 24)?;
                ip(&[
                    "-n",
                    home.name(),
                    "route",
                    "add",
                    "default",
                    "via",
                    &carrier_lan.to_string(),
                ])?;
                load_rules(
                    &edge,
                    &dir.join("carrier.nft"),
                    &router_rules(NatKind::Easy),
                )?;
                enable_forwarding(&edge)?;
                (
                    home,
                    Ipv4Addr::new(192, 168, k, 1),
                    Ipv4Addr::new(192, 168, k, 2),
                    Some(edge),
                )
            }
            NatKind::Firewall => (
                edge,
                Ipv4Addr::new(11, 1, k, 1),
                Ipv4Addr::new(11, 1, k, 2),
                None,
            ),
            _ => (
                edge,
                Ipv4Addr::new(192, 168, k, 1),
                Ipv4Addr::new(192, 168, k, 2),
                None,
            ),
        };
        let host = self.new_ns()?;
        link_pair(&router, "lan", &host, "eth0")?;
        addr_up(&router, "lan", router_lan, 24)?;
        addr_up(&host, "eth0", host_ip, 24)?;
        ip(&[
            "-n",
            host.name(),
            "route",
            "add",
            "default",
            "via",
            &router_lan.to_string(),
        ])?;
        if kind == NatKind::Firewall {
            // The core routes the public LAN to the firewall's WAN.
            ip(&[
                "-n",
                self.inet.name(),
                "route",
                "add",
                &format!("11.1.{k}.0/24"),
                "via",
                &wan_ip.to_string(),
            ])?;
        }
        load_rules(&router, &dir.join("router.nft"), &router_rules(kind))?;
        enable_forwarding(&router)?;

        let site = Site {
            node: Host {
                name: name.to_owned(),
                lan_ip: host_ip,
                ns: Arc::clone(&host),
                agent_bin: self.env.agent().ok().map(Path::to_path_buf),
                socket: self.sockets.path().join(format!("{name}.sock")),
                state_dir: dir.join("state"),
                dir,
                login_server: self.control_url.clone(),
            },
            kind,
            host,
            router,
            carrier,
            host_ip: Arc::new(std::sync::Mutex::new(host_ip)),
            router_lan,
            wan_ip,
        };
        if kind == NatKind::PortMapped {
            self.start_miniupnpd(&site, k)?;
        }
        report(format_args!(
            "{}: site {name} ({kind}): host {host_ip} in {}, router {}, public {wan_ip}",
            self.env.name(),
            site.host.name(),
            site.router.name(),
        ));
        self.sites.push(site.clone());
        Ok(site)
    }

    /// [`Lab::add_site`] plus [`Lab::start_agent`].
    pub fn add_agent(&mut self, name: &str, kind: NatKind) -> anyhow::Result<Site> {
        let site = self.add_site(name, kind)?;
        self.start_agent(&site)?;
        Ok(site)
    }

    /// Starts `agent daemon` on the site's host and waits until it answers `agent status`.
    pub fn start_agent(&mut self, site: &Site) -> anyhow::Result<()> {
        let spec = Spawn::new(site.agent_bin()?)
            .clear_env()
            .env("PATH", PATH)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("E2E_AGENT_LOG").unwrap_or_else(|_| "info,agent=debug".into()),
            )
            .arg("daemon")
            .arg("--state-dir")
            .arg(&site.state_dir)
            .arg("--socket")
            .arg(&site.socket)
            .args(["--tun", TUN, "--port", &LAB_AGENT_PORT.to_string()]);
        let host = Arc::clone(&site.host);
        let idx = self.spawn_in(&host, &format!("{}-agent", site.name), &spec)?;
        self.agents.insert(site.name.clone(), idx);
        wait_until(
            &format!("agent daemon on {} to answer", site.name),
            READY_TIMEOUT,
            || {
                self.procs
                    .get_mut(idx)
                    .context("no such process")?
                    .ensure_running()?;
                let out = site.agent(&["status", "--json"])?;
                Ok(if out.status.success() {
                    Check::Ready(())
                } else {
                    Check::NotYet(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                })
            },
        )
    }

    /// Stops the site's agent daemon (SIGTERM, then SIGKILL after a grace period).
    pub fn stop_agent(&mut self, site: &Site) -> anyhow::Result<()> {
        let idx = self
            .agents
            .remove(&site.name)
            .with_context(|| format!("no agent running on {}", site.name))?;
        self.procs
            .get_mut(idx)
            .context("no such process")?
            .stop()
            .map(|_| ())
    }

    /// Starts a long-running process on the site's host, logging to `<lab dir>/<name>.log`.
    /// Returns a handle for [`Lab::proc_mut`].
    pub fn spawn(&mut self, site: &Site, name: &str, spec: &Spawn) -> anyhow::Result<usize> {
        let ns = Arc::clone(&site.host);
        self.spawn_in(&ns, name, spec)
    }

    /// A process started with [`Lab::spawn`].
    pub fn proc_mut(&mut self, handle: usize) -> anyhow::Result<&mut Proc> {
        self.procs.get_mut(handle).context("no such process")
    }

    /// Starts the TCP echo server on the site's host, bound to `addr:port`.
    pub fn start_tcp_echo(&mut self, site: &Site, addr: IpAddr, port: u16) -> anyhow::Result<()> {
        let script = self.write_script("tcp_echo.py", TCP_ECHO_PY)?;
        let spec = Spawn::new(python3()?)
            .clear_env()
            .env("PATH", PATH)
            .arg("-u")
            .arg(&script)
            .args([addr.to_string(), port.to_string(), site.name.clone()]);
        let idx = self.spawn(site, &format!("{}-echo-{port}", site.name), &spec)?;
        self.wait_log(idx, &format!("listening on {addr}:{port}"))
    }

    /// Starts the byte-counting sink for [`Lab::start_stream`] on `addr:port`.
    pub fn start_sink(&mut self, site: &Site, addr: IpAddr, port: u16) -> anyhow::Result<()> {
        let script = self.write_script("tcp_sink.py", TCP_SINK_PY)?;
        let spec = Spawn::new(python3()?)
            .clear_env()
            .env("PATH", PATH)
            .arg("-u")
            .arg(&script)
            .args([addr.to_string(), port.to_string()]);
        let idx = self.spawn(site, &format!("{}-sink-{port}", site.name), &spec)?;
        self.wait_log(idx, &format!("listening on {addr}:{port}"))
    }

    /// Starts streaming `bytes` to a [`Lab::start_sink`] server at `addr:port`, paced evenly
    /// over `over`. The process exits 0 once the sink confirmed every byte, non-zero on any
    /// error (a reset, a timeout); see [`Lab::wait_stream`].
    pub fn start_stream(
        &mut self,
        site: &Site,
        addr: IpAddr,
        port: u16,
        bytes: u64,
        over: Duration,
    ) -> anyhow::Result<usize> {
        let script = self.write_script("tcp_stream.py", TCP_STREAM_PY)?;
        let spec = Spawn::new(python3()?)
            .clear_env()
            .env("PATH", PATH)
            .arg("-u")
            .arg(&script)
            .args([
                addr.to_string(),
                port.to_string(),
                bytes.to_string(),
                format!("{:.1}", over.as_secs_f64()),
            ]);
        self.spawn(site, &format!("{}-stream-{port}", site.name), &spec)
    }

    /// Waits for a [`Lab::start_stream`] client to finish; returns its log (which ends with
    /// `sink got <n> bytes`). Fails if it exited non-zero or is still running at `timeout`.
    pub fn wait_stream(&mut self, handle: usize, timeout: Duration) -> anyhow::Result<String> {
        let proc = self.proc_mut(handle)?;
        let status = proc
            .wait_exit(timeout)?
            .with_context(|| format!("{} still running after {timeout:?}", proc.name()))?;
        let log = proc.log_text();
        ensure!(
            status.success(),
            "{} failed ({status}):\n{log}",
            proc.name()
        );
        Ok(log)
    }

    fn write_script(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
        Ok(path)
    }

    fn wait_log(&mut self, idx: usize, needle: &str) -> anyhow::Result<()> {
        wait_until(&format!("log line {needle:?}"), READY_TIMEOUT, || {
            let p = self.procs.get_mut(idx).context("no such process")?;
            p.ensure_running()?;
            Ok(if p.log_text().contains(needle) {
                Check::Ready(())
            } else {
                Check::NotYet("not yet".into())
            })
        })
    }

    /// `control <args> --db <db> --base-domain tail.test` in the internet namespace; stdout.
    pub fn control_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let spec = Spawn::new(self.env.control()?)
            .clear_env()
            .env("PATH", PATH)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .args(args)
            .arg("--db")
            .arg(&self.db)
            .args(["--base-domain", BASE_DOMAIN]);
        let out = run_in(&self.inet, &spec, CMD_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "`control {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A reusable auth key.
    pub fn create_key(&self) -> anyhow::Result<AuthKey> {
        self.create_key_with(false)
    }

    /// A reusable auth key; with `ephemeral`, nodes joining with it vanish after logout (what
    /// tsnet nodes of the official client use).
    pub fn create_key_with(&self, ephemeral: bool) -> anyhow::Result<AuthKey> {
        let mut args = vec!["keys", "create", "--reusable", "--json"];
        if ephemeral {
            args.push("--ephemeral");
        }
        let out = self.control_cli(&args)?;
        let v: Value = serde_json::from_str(&out)
            .context("`control keys create --json` did not print JSON")?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .context("`control keys create --json` printed no \"key\"")?;
        Ok(AuthKey::from_secret(key.to_owned()))
    }

    /// The endpoints control last heard from node `name` (`control nodes list --json`,
    /// `clientConnectivity.endpoints`).
    pub fn control_endpoints(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let out = self.control_cli(&["nodes", "list", "--json"])?;
        let v: Value = serde_json::from_str(&out).context("nodes list printed no JSON")?;
        let list = v
            .as_array()
            .or_else(|| v.get("nodes").and_then(Value::as_array))
            .or_else(|| v.get("devices").and_then(Value::as_array))
            .context("nodes list JSON holds no list")?;
        let node = list
            .iter()
            .find(|n| {
                ["name", "hostname", "givenName"].iter().any(|k| {
                    n.get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| s == name || s.split('.').next() == Some(name))
                })
            })
            .with_context(|| format!("control does not list {name}"))?;
        Ok(node
            .pointer("/clientConnectivity/endpoints")
            .or_else(|| node.get("endpoints"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Fails if control, the derper or an agent daemon has exited on its own.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let mut idx: Vec<usize> = self.agents.values().copied().collect();
        idx.push(self.control_proc);
        for i in idx {
            self.procs
                .get_mut(i)
                .context("no such process")?
                .ensure_running()?;
        }
        Ok(())
    }

    /// Fails if any lab namespace has a route through a gateway outside the lab, or a default
    /// route without a gateway.
    pub fn check_no_route_out(&self) -> anyhow::Result<()> {
        for ns in &self.namespaces {
            let routes = ip(&["-n", ns.name(), "-4", "route", "show", "table", "all"])?;
            for line in routes.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let via = words
                    .iter()
                    .position(|w| *w == "via")
                    .and_then(|i| words.get(i + 1));
                match via {
                    Some(gw) => {
                        let gw: Ipv4Addr = gw
                            .parse()
                            .with_context(|| format!("route {line:?} in {}", ns.name()))?;
                        ensure!(
                            is_lab_address(gw),
                            "namespace {} routes through {gw}, outside the lab: {line}",
                            ns.name()
                        );
                    }
                    None => ensure!(
                        !line.starts_with("default"),
                        "namespace {} has a default route without a lab gateway: {line}",
                        ns.name()
                    ),
                }
            }
            let v6 = ip(&["-n", ns.name(), "-6", "route", "show", "table", "all"])?;
            for line in v6.lines() {
                ensure!(
                    !line.starts_with("default") && !line.contains(" via "),
                    "namespace {} has an IPv6 route off its links: {line}",
                    ns.name()
                );
            }
        }
        Ok(())
    }

    /// The log of the newest process named `name`.
    pub fn log_text(&self, name: &str) -> Option<String> {
        self.procs
            .iter()
            .rev()
            .find(|p| p.name() == name)
            .map(Proc::log_text)
    }

    fn new_ns(&mut self) -> anyhow::Result<Arc<Netns>> {
        let ns = Arc::new(Netns::new_bare()?);
        self.namespaces.push(Arc::clone(&ns));
        Ok(ns)
    }

    /// Creates `wan` in `router` with its peer `w<k>` on the internet bridge.
    fn attach_to_internet(&self, router: &Netns, k: u8, wan_ip: Ipv4Addr) -> anyhow::Result<()> {
        let peer = format!("w{k}");
        ip(&[
            "-n",
            self.inet.name(),
            "link",
            "add",
            &peer,
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            router.name(),
        ])?;
        ip(&[
            "-n",
            self.inet.name(),
            "link",
            "set",
            &peer,
            "master",
            "br0",
        ])?;
        sh(
            &self.inet,
            &format!("echo 1 > /proc/sys/net/ipv6/conf/{peer}/disable_ipv6"),
        )?;
        ip(&["-n", self.inet.name(), "link", "set", &peer, "up"])?;
        addr_up(router, "wan", wan_ip, 24)?;
        ip(&[
            "-n",
            router.name(),
            "route",
            "add",
            "default",
            "via",
            &CORE_IP.to_string(),
        ])?;
        Ok(())
    }

    fn start_miniupnpd(&mut self, site: &Site, k: u8) -> anyhow::Result<()> {
        let bin = ["/usr/sbin/miniupnpd", "/usr/local/sbin/miniupnpd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("miniupnpd not found; run scripts/install-test-deps.sh")?;
        let conf = site.dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan\nlistening_ip=lan\nenable_natpmp=yes\nenable_upnp=yes\n\
                 secure_mode=yes\nsystem_uptime=no\nmin_lifetime=120\nmax_lifetime=86400\n\
                 uuid=00000000-0000-0000-0000-0000000000{k:02x}\n\
                 lease_file={}\n\
                 allow 1024-65535 192.168.{k}.0/24 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                site.dir.join("miniupnpd.leases").display()
            ),
        )?;
        let spec = Spawn::new(bin)
            .clear_env()
            .env("PATH", PATH)
            .args(["-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(site.dir.join("miniupnpd.pid"));
        let router = Arc::clone(&site.router);
        let idx = self.spawn_in(&router, &format!("{}-miniupnpd", site.name), &spec)?;
        self.wait_log(idx, "Listening for NAT-PMP")
    }

    fn spawn_in(&mut self, ns: &Netns, name: &str, spec: &Spawn) -> anyhow::Result<usize> {
        let count = self.spawn_counts.entry(name.to_owned()).or_insert(0);
        *count += 1;
        let label = if *count == 1 {
            name.to_owned()
        } else {
            format!("{name}-{count}")
        };
        let log = self.dir.join(format!("{label}.log"));
        let proc = Proc::spawn(ns, &label, spec, &log)?;
        report(format_args!(
            "{}: started {label} (pid {}) in {}",
            self.env.name(),
            proc.pid(),
            ns.name()
        ));
        self.env.add_log(&label, &log);
        self.procs.push(proc);
        Ok(self.procs.len() - 1)
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let t = Instant::now();
        while let Some(mut proc) = self.procs.pop() {
            if let Err(e) = proc.stop() {
                report(format_args!("stopping {}: {e:#}", proc.name()));
            }
        }
        self.sites.clear();
        self.namespaces.clear();
        report(format_args!(
            "{}: NAT lab stopped in {} ms",
            self.env.name(),
            t.elapsed().as_millis()
        ));
    }
}

/// One host behind one network of a [`NatKind`]. Cheap to clone and `Send`, so pairs can be
/// driven from threads; namespaces live until the [`Lab`] and every clone are gone.
#[derive(Debug, Clone)]
pub struct Site {
    /// The host behind the router: name, namespace, agent CLI helpers (shared with the plain
    /// LAN's [`Host`], which `Site` derefs to).
    node: Host,
    kind: NatKind,
    host: Arc<Netns>,
    /// The router the host is attached to (the home router when double).
    router: Arc<Netns>,
    /// The carrier router of a double NAT.
    carrier: Option<Arc<Netns>>,
    host_ip: Arc<std::sync::Mutex<Ipv4Addr>>,
    router_lan: Ipv4Addr,
    wan_ip: Ipv4Addr,
}

impl std::ops::Deref for Site {
    type Target = Host;
    fn deref(&self) -> &Host {
        &self.node
    }
}

impl Site {
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// The router's namespace (the home router of a double NAT).
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The host's current LAN address (changes with [`Site::renumber`]).
    pub fn host_ip(&self) -> Ipv4Addr {
        *self.host_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address the internet sees this host's traffic come from: the outermost router's WAN
    /// address, or the host's own address behind a firewall.
    pub fn public_ip(&self) -> Ipv4Addr {
        if self.kind == NatKind::Firewall {
            self.host_ip()
        } else {
            self.wan_ip
        }
    }

    /// The outermost router's WAN address on the internet bridge.
    pub fn wan_ip(&self) -> Ipv4Addr {
        self.wan_ip
    }

    /// `agent up` with the key (in the environment) against the lab's control server, then waits
    /// for Running. Returns the status and the instant `agent up` was started.
    pub fn agent_up(&self, key: &AuthKey) -> anyhow::Result<(Value, Instant)> {
        let t = Instant::now();
        let spec = Spawn::new(self.agent_bin()?)
            .clear_env()
            .env("PATH", PATH)
            .env("NO_COLOR", "1")
            .env("AGENT_AUTHKEY", key.expose())
            .args(["up", "--login-server", &self.login_server])
            .args(["--hostname", &self.name])
            .arg("--socket")
            .arg(&self.socket);
        let out = run_in(&self.host, &spec, Duration::from_secs(60))?;
        ensure!(
            out.status.success(),
            "`agent up` on {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let status = wait_until(
            &format!("{} to be Running", self.name),
            READY_TIMEOUT,
            || {
                let s = self.status()?;
                Ok(if crate::backend_state(&s) == "Running" {
                    Check::Ready(s)
                } else {
                    Check::NotYet(format!(
                        "{}",
                        s.get("backend_state").unwrap_or(&Value::Null)
                    ))
                })
            },
        )?;
        Ok((status, t))
    }

    /// The tailnet IPv4 address.
    pub fn tailnet_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let s = self.status()?;
        crate::node_ipv4(s.get("self").unwrap_or(&Value::Null))
            .with_context(|| format!("{} has no tailnet IPv4", self.name))
    }

    /// The path entry of peer `name` (`{"kind": "direct", "addr": ...}` or a relay), or `None`
    /// when the peer is not listed.
    pub fn path_to(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let s = self.status()?;
        Ok(peer(&s, name).map(|p| p.get("path").cloned().unwrap_or(Value::Null)))
    }

    /// Waits until the peer `name` is listed.
    pub fn wait_peer(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_until(&format!("{} to list {name}", self.name), timeout, || {
            let s = self.status()?;
            Ok(if peer(&s, name).is_some() {
                Check::Ready(())
            } else {
                Check::NotYet(format!("peers {:?}", crate::peer_names(&s)))
            })
        })
    }

    /// `agent netcheck --json`, parsed.
    pub fn netcheck(&self) -> anyhow::Result<Value> {
        let out = self.agent(&["netcheck", "--json"])?;
        ensure!(
            out.status.success(),
            "`agent netcheck --json` on {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`agent netcheck --json` on {} printed no JSON: {}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Flushes the connection tracking (and so every NAT mapping) of the site's routers, as a
    /// router reboot or a NAT timeout would.
    pub fn flush_conntrack(&self) -> anyhow::Result<()> {
        for ns in std::iter::once(&self.router).chain(self.carrier.as_ref()) {
            let out = run_in(
                ns,
                &Spawn::new("conntrack")
                    .clear_env()
                    .env("PATH", PATH)
                    .arg("-F"),
                CMD_TIMEOUT,
            )?;
            ensure!(
                out.status.success(),
                "conntrack -F in {} failed: {} (install the conntrack package)",
                ns.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        report(format_args!("{}: router conntrack flushed", self.name));
        Ok(())
    }

    /// Gives the host a new LAN address (the old one is removed, the default route re-added),
    /// as a laptop moving to another network would see. Returns the new address.
    pub fn renumber(&self) -> anyhow::Result<Ipv4Addr> {
        let old = self.host_ip();
        let last = old.octets()[3];
        let next = if last >= 200 { 3 } else { last + 1 };
        let [a, b, c, _] = old.octets();
        let new = Ipv4Addr::new(a, b, c, next);
        sh(
            &self.host,
            &format!(
                "ip addr del {old}/24 dev eth0 && ip addr add {new}/24 dev eth0 && \
                 ip route replace default via {gw}",
                gw = self.router_lan
            ),
        )?;
        *self.host_ip.lock().unwrap_or_else(|p| p.into_inner()) = new;
        report(format_args!("{}: renumbered {old} -> {new}", self.name));
        Ok(new)
    }

    /// Drops UDP between this host and `peer`'s public address (both ways) in this host's
    /// namespace, so only DERP (TCP) connects them.
    pub fn cut_udp_with(&self, peer: &Site) -> anyhow::Result<()> {
        let table = format!("{CUT_TABLE_PREFIX}{}", peer.name.replace('-', "_"));
        let rules = format!(
            "table inet {table} {{\n  chain out {{ type filter hook output priority 0;\n    \
             ip daddr {ip} meta l4proto udp counter drop\n  }}\n  \
             chain in {{ type filter hook input priority 0;\n    \
             ip saddr {ip} meta l4proto udp counter drop\n  }}\n}}\n",
            ip = peer.public_ip()
        );
        load_rules(&self.host, &self.dir.join(format!("{table}.nft")), &rules)?;
        report(format_args!(
            "{}: UDP with {} ({}) cut",
            self.name,
            peer.name,
            peer.public_ip()
        ));
        Ok(())
    }

    /// Removes what [`Site::cut_udp_with`] installed.
    pub fn restore_udp_with(&self, peer: &Site) -> anyhow::Result<()> {
        let table = format!("{CUT_TABLE_PREFIX}{}", peer.name.replace('-', "_"));
        sh(&self.host, &format!("nft delete table inet {table}"))?;
        report(format_args!(
            "{}: UDP with {} restored",
            self.name, peer.name
        ));
        Ok(())
    }
}

/// What [`measure_pair`] saw.
#[derive(Debug, Clone, Default)]
pub struct PairResult {
    /// From `agent up` (of the later side) to the first answered ping.
    pub first_packet: Option<Duration>,
    /// From `agent up` to `agent status` on `a` showing a direct path to `b`.
    pub direct: Option<Duration>,
    /// From `agent up` to `agent status` on `b` showing a direct path to `a`.
    pub direct_b: Option<Duration>,
    /// `a`'s path to `b` at the end (`direct`, `relay`/`derp`, ...).
    pub path_a: String,
    /// `b`'s path to `a` at the end.
    pub path_b: String,
    /// `a`'s direct address for `b`, if direct.
    pub addr: String,
}

/// Pings `b` from `a` (one ICMP echo per poll) from `since` until both sides show a direct
/// path or `bound` has passed since `since`; records the time to the first answered ping and
/// to the direct path on each side. Never fails on a missing direct path: the caller decides
/// what was expected.
pub fn measure_pair(
    a: &Site,
    b: &Site,
    b_ip: IpAddr,
    since: Instant,
    bound: Duration,
) -> anyhow::Result<PairResult> {
    let mut r = PairResult::default();
    loop {
        if a.ping_once(b_ip)? && r.first_packet.is_none() {
            r.first_packet = Some(since.elapsed());
        }
        let path = a.path_to(b.name())?.unwrap_or(Value::Null);
        let kind = path.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "direct" && r.direct.is_none() {
            r.direct = Some(since.elapsed());
            r.addr = path
                .get("addr")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
        }
        if r.direct_b.is_none() && path_name(&b.status()?, a.name()) == "direct" {
            r.direct_b = Some(since.elapsed());
        }
        let done = r.first_packet.is_some() && r.direct.is_some() && r.direct_b.is_some();
        if done || since.elapsed() >= bound {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r.path_a = path_name(&a.status()?, b.name());
    r.path_b = path_name(&b.status()?, a.name());
    Ok(r)
}

/// `kind` of the path to `peer_name` in a status document, `-` when unlisted.
pub fn path_name(status: &Value, peer_name: &str) -> String {
    peer(status, peer_name).map_or_else(|| "-".to_owned(), |p| path_kind(p).to_owned())
}

/// True for a relayed path, whichever name the agent uses for it.
pub fn is_relay(kind: &str) -> bool {
    matches!(kind, "relay" | "derp")
}

/// Formats an optional duration as seconds with one decimal, `-` when absent.
pub fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// True for addresses the lab hands out (internet, firewall LANs, carrier LANs, home LANs).
fn is_lab_address(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    (a == 11 && (b == 0 || b == 1)) || (a == 10 && b == 64) || (a == 192 && b == 168)
}

/// The nftables ruleset of a router of `kind` (see nat-lab-notes.md for the recipes).
fn router_rules(kind: NatKind) -> String {
    let udp_block = if kind == NatKind::UdpBlocked {
        "    meta l4proto udp counter drop\n"
    } else {
        ""
    };
    let nat = match kind {
        NatKind::Easy | NatKind::Double | NatKind::UdpBlocked => "    oifname \"wan\" masquerade\n",
        NatKind::Hard | NatKind::PortMapped => "    oifname \"wan\" masquerade random\n",
        NatKind::Firewall => "",
    };
    // miniupnpd (nftables backend) adds its rules to these chains of `table inet filter`.
    let (upnp_fwd, upnp_pre, upnp_post, upnp_chains) = if kind == NatKind::PortMapped {
        (
            "    jump miniupnpd\n",
            "    jump prerouting_miniupnpd\n",
            "    jump postrouting_miniupnpd\n",
            "  chain miniupnpd {\n  }\n  chain prerouting_miniupnpd {\n  }\n  \
             chain postrouting_miniupnpd {\n  }\n",
        )
    } else {
        ("", "", "", "")
    };
    format!(
        "table inet filter {{\n\
         \x20 chain input {{\n    type filter hook input priority 0; policy drop;\n\
         \x20   iifname \"lo\" accept\n    iifname \"lan\" accept\n\
         \x20   ct state established,related accept\n  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority 0; policy drop;\n\
         {udp_block}\
         \x20   iifname \"lan\" accept\n    ct state established,related accept\n\
         \x20   ct status dnat accept\n{upnp_fwd}  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n\
         {upnp_pre}  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
         {upnp_post}{nat}  }}\n\
         {upnp_chains}}}\n"
    )
}

fn load_rules(ns: &Netns, file: &Path, rules: &str) -> anyhow::Result<()> {
    std::fs::write(file, rules)?;
    let out = run_in(
        ns,
        &Spawn::new("nft")
            .clear_env()
            .env("PATH", PATH)
            .arg("-f")
            .arg(file),
        CMD_TIMEOUT,
    )?;
    ensure!(
        out.status.success(),
        "nft -f {} in {} failed: {}",
        file.display(),
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn enable_forwarding(ns: &Netns) -> anyhow::Result<()> {
    sh(ns, "echo 1 > /proc/sys/net/ipv4/ip_forward").map(|_| ())
}

/// A veth pair: `a_name` in `a` and `b_name` in `b` (addresses come from [`addr_up`]).
fn link_pair(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    Ok(())
}

/// Adds `addr/prefix` to `link` in `ns`, turns IPv6 off on it and brings it up.
fn addr_up(ns: &Netns, link: &str, addr: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    sh(
        ns,
        &format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{link}/disable_ipv6 && \
             ip addr add {addr}/{prefix} dev {link} && ip link set {link} up"
        ),
    )
    .map(|_| ())
}

/// Runs a shell snippet in `ns`, failing with its stderr.
fn sh(ns: &Netns, script: &str) -> anyhow::Result<String> {
    let out = run_in(
        ns,
        &Spawn::new("/bin/sh")
            .clear_env()
            .env("PATH", PATH)
            .args(["-c", script]),
        CMD_TIMEOUT,
    )?;
    ensure!(
        out.status.success(),
        "`{script}` in {} failed ({}): {}",
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Answers each connection with `<tag> saw <peer ip>: <first line>`.
const TCP_ECHO_PY: &str = r#"
import socket, sys, threading
addr, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(64)
print(f"listening on {addr}:{port}", flush=True)
def serve(conn, peer):
    with conn:
        conn.settimeout(10)
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        conn.sendall(f"{tag} saw {peer[0]}: ".encode() + data)
while True:
    conn, peer = srv.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

/// Counts the bytes of each connection until EOF and answers `sink got <n> bytes`.
const TCP_SINK_PY: &str = r#"
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(8)
print(f"listening on {addr}:{port}", flush=True)
def serve(conn, peer):
    n = 0
    try:
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                n += len(chunk)
            conn.sendall(f"sink got {n} bytes\n".encode())
        print(f"{peer[0]}: {n} bytes", flush=True)
    except OSError as e:
        print(f"{peer[0]}: {type(e).__name__}: {e} after {n} bytes", flush=True)
while True:
    conn, peer = srv.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

/// Streams N bytes paced over T seconds, half-closes, and checks the sink's count. Prints
/// progress each second; exit 0 only if the sink confirmed every byte.
const TCP_STREAM_PY: &str = r#"
import socket, sys, time
addr, port, total, over = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
try:
    conn = socket.create_connection((addr, port), timeout=10)
    conn.settimeout(60)
    chunk = b"x" * 16384
    start = time.monotonic()
    sent, last = 0, 0.0
    while sent < total:
        due = total * min(1.0, (time.monotonic() - start) / over)
        if sent >= due:
            time.sleep(0.01)
            continue
        n = min(len(chunk), total - sent)
        conn.sendall(chunk[:n])
        sent += n
        now = time.monotonic() - start
        if now - last >= 1.0:
            print(f"t={now:.1f}s sent={sent}", flush=True)
            last = now
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = conn.recv(4096)
        if not b:
            break
        reply += b
    text = reply.decode().strip()
    print(f"sent {sent} bytes in {time.monotonic() - start:.1f}s; {text}", flush=True)
    sys.exit(0 if text == f"sink got {total} bytes" else 3)
except OSError as e:
    print(f"{type(e).__name__}: {e}", flush=True)
    sys.exit(2)
"#;
