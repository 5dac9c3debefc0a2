//! A small LAN of network namespaces for agent tests: a hub running `control serve` on a bridge,
//! and hosts joined to that bridge, each running our `agent daemon` (or anything else).
//!
//! ```text
//!   hub namespace:  br0 10.99.0.254/24, control on :8080, DERP on :8443 (TLS), STUN on :3478
//!      |-- h1 (veth in hub) <-> eth0 10.99.0.1/24 in host namespace 1
//!      |-- h2 (veth in hub) <-> eth0 10.99.0.2/24 in host namespace 2   ...
//! ```
//!
//! A test builds one with [`Lan::start`] inside [`crate::run_test`], adds hosts with
//! [`Lan::add_agent`] (namespace + `agent daemon`) or [`Lan::add_host`] (namespace only, e.g. for
//! the official client), and drives them through [`Host`]: `agent up`, `agent status --json`,
//! ICMP and TCP probes run with `ip netns exec`, and nftables rules that cut UDP between two hosts.
//!
//! Isolation: every namespace is a fresh `tsr-<pid>-<n>` (see `netns.rs`, which also sweeps what
//! a killed run left behind). The only links are `lo`, the bridge and the veth pairs, all inside
//! these namespaces, and no namespace has a default route, so nothing can leave the machine; the
//! LAN is IPv4 only (IPv6 is switched off on the LAN links, the tailnet's own IPv6 still works).
//! Drop stops every process the LAN started (newest first, SIGTERM then SIGKILL) and then deletes
//! the namespaces, on success, error and panic alike; nftables tables live in the host
//! namespaces and go with them. Logs go to the test's run directory and are registered with the
//! [`TestEnv`], so a failing test prints their tails.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::control::BASE_DOMAIN;
use crate::netns::ip;
use crate::{AuthKey, Check, HttpReply, Netns, Proc, Spawn, TestEnv, report, wait_until};

/// The hub's address on the bridge: control, DERP and STUN listen here.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
/// Control protocol and admin HTTP port on [`HUB_IP`].
pub const CONTROL_PORT: u16 = 8080;
/// Embedded DERP relay (TLS) port on [`HUB_IP`].
pub const DERP_PORT: u16 = 8443;
/// Embedded STUN port on [`HUB_IP`].
pub const STUN_PORT: u16 = 3478;
/// The agents' WireGuard/disco UDP port (each host has its own namespace, so all share it).
pub const AGENT_PORT: u16 = 41641;
/// The agents' TUN device.
pub const TUN_NAME: &str = "agent0";

/// How long a one-shot command (CLI, ping, nft) may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `control serve` may take to answer `/key`, and a daemon to answer on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the nftables table [`Host::block_udp_with`] installs (one per peer).
const NFT_TABLE_PREFIX: &str = "e2e_udp_block_";

/// PATH for everything started here: `ip` (used by the agent for its TUN device) is in sbin.
pub(crate) const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A TCP server for [`Lan::start_tcp_echo`]: answers each connection with
/// `<tag> saw <peer ip>: <first line received>` so the client learns which source address arrived.
const TCP_ECHO_PY: &str = r#"
import socket, sys, threading
addr, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
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
        print(f"served {peer[0]}", flush=True)
while True:
    conn, peer = srv.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

/// The client side: connect (with a timeout), send one line, print the reply. Exit status 2 and
/// the error on stderr when the connection fails.
const TCP_CLIENT_PY: &str = r#"
import socket, sys
addr, port, msg, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    conn = socket.create_connection((addr, port), timeout=timeout)
    conn.sendall(msg.encode() + b"\n")
    reply = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    sys.stdout.write(reply.decode())
except OSError as e:
    sys.stderr.write(f"{type(e).__name__}: {e}\n")
    sys.exit(2)
"#;

/// What `control keys create` should make.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    pub reusable: bool,
    pub ephemeral: bool,
    /// e.g. `["tag:web"]`; needs a policy with matching `tagOwners`.
    pub tags: Vec<String>,
}

impl KeyOptions {
    /// A reusable, non-ephemeral key: what most tests join with.
    pub fn reusable() -> Self {
        KeyOptions {
            reusable: true,
            ..KeyOptions::default()
        }
    }
}

/// The hub, its control server and the hosts on the bridge. Dropping it stops everything it
/// started and deletes its namespaces.
#[derive(Debug)]
pub struct Lan<'a> {
    env: &'a TestEnv,
    /// Processes in start order; stopped newest first.
    procs: Vec<Proc>,
    hosts: Vec<Host>,
    hub: Arc<Netns>,
    /// Where the LAN's files go: `<run dir>/lan`.
    dir: PathBuf,
    /// Unix sockets need short paths (108 bytes), which run directories may exceed.
    sockets: tempfile::TempDir,
    control_proc: usize,
    control_url: String,
    db: PathBuf,
    /// How many times each process name was used, so a restarted daemon gets a fresh log file.
    spawn_counts: HashMap<String, u32>,
    /// Per host: the index of its newest agent daemon in `procs`, and whether it was stopped.
    agents: HashMap<String, (usize, bool)>,
}

impl<'a> Lan<'a> {
    /// Creates the hub namespace with the bridge and starts `control serve` on it.
    pub fn start(env: &'a TestEnv) -> anyhow::Result<Self> {
        Lan::start_with(env, &[])
    }

    /// Like [`Lan::start`], with extra `control serve` flags (e.g. `--ephemeral-grace 5s`).
    pub fn start_with(env: &'a TestEnv, control_args: &[&str]) -> anyhow::Result<Self> {
        let started = Instant::now();
        let hub = Arc::new(Netns::new_bare()?);
        let n = hub.name();
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"])?;
        disable_ipv6(&hub, "br0")?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", n, "link", "set", "br0", "up"])?;
        let dir = env.path("lan");
        std::fs::create_dir_all(&dir)?;
        let sockets = tempfile::Builder::new().prefix("tsr-lan-").tempdir()?;
        let control_url = format!("http://{HUB_IP}:{CONTROL_PORT}");
        let mut lan = Lan {
            env,
            procs: Vec::new(),
            hosts: Vec::new(),
            hub,
            db: dir.join("control.db"),
            dir,
            sockets,
            control_proc: 0,
            control_url,
            spawn_counts: HashMap::new(),
            agents: HashMap::new(),
        };
        let data = lan.dir.join("control-data");
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
            .args(["--listen", &format!("{HUB_IP}:{CONTROL_PORT}")])
            .args(["--server-url", &lan.control_url])
            .arg("--db")
            .arg(&lan.db)
            .args(["--base-domain", BASE_DOMAIN])
            .args(["--derp-port", &DERP_PORT.to_string()])
            .args(["--stun-port", &STUN_PORT.to_string()])
            .args(["--derp-host", &HUB_IP.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(control_args);
        let hub = Arc::clone(&lan.hub);
        lan.control_proc = lan.spawn_in(&hub, "control", &spec)?;
        let key_url = format!("{}/key?v=130", lan.control_url);
        wait_until("control to answer GET /key?v=130", READY_TIMEOUT, || {
            lan.ensure_control_running()?;
            Ok(match curl_in(&lan.hub, &key_url, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Check::Ready(()),
                Ok(r) => Check::NotYet(format!("HTTP {}: {}", r.status, r.body)),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        })?;
        report(format_args!(
            "{}: LAN hub {} with control on {} ready after {} ms",
            env.name(),
            lan.hub.name(),
            lan.control_url,
            started.elapsed().as_millis()
        ));
        Ok(lan)
    }

    /// The test environment this LAN belongs to.
    pub fn env(&self) -> &'a TestEnv {
        self.env
    }

    /// `http://10.99.0.254:8080`.
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    /// The control server's database (for `control ... --db`).
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The LAN's scratch directory inside the run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hub namespace (bridge, control server).
    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds a namespace joined to the bridge as `10.99.0.<n>` (n = 1, 2, ...), with nothing
    /// running in it yet.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        ensure!(
            !name.is_empty()
                && name.len() <= 12
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "host name {name:?} must be 1-12 characters of [A-Za-z0-9-] (it names a veth)"
        );
        ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists already"
        );
        let index = u8::try_from(self.hosts.len() + 1)
            .ok()
            .filter(|i| *i < 254)
            .context("too many hosts on one LAN")?;
        let lan_ip = Ipv4Addr::new(10, 99, 0, index);
        let ns = Arc::new(Netns::new_bare()?);
        // The hub end is named after the host; interface names are per namespace, so parallel
        // tests never collide, and nothing is created in the root namespace.
        ip(&[
            "-n",
            self.hub.name(),
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        ip(&["-n", self.hub.name(), "link", "set", name, "master", "br0"])?;
        ip(&["-n", self.hub.name(), "link", "set", name, "up"])?;
        disable_ipv6(&ns, "eth0")?;
        ip(&[
            "-n",
            ns.name(),
            "addr",
            "add",
            &format!("{lan_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns.name(), "link", "set", "eth0", "up"])?;
        ns.check_no_route_out()?;
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let host = Host {
            name: name.to_owned(),
            lan_ip,
            ns,
            agent_bin: self.env.agent().ok().map(Path::to_path_buf),
            socket: self.sockets.path().join(format!("{name}.sock")),
            state_dir: dir.join("state"),
            dir,
            login_server: self.control_url.clone(),
        };
        report(format_args!(
            "{}: host {name} = {lan_ip} in namespace {}",
            self.env.name(),
            host.ns.name()
        ));
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds a namespace that is NOT joined to the bridge: only `lo` is up, and the test wires it
    /// to other hosts itself (see `lab5.rs`). `addr` is what [`Host::lan_ip`] reports (the test
    /// assigns it to a link); the host is stopped and deleted with the LAN like the others.
    pub fn add_isolated_host(&mut self, name: &str, addr: Ipv4Addr) -> anyhow::Result<Host> {
        ensure!(
            !name.is_empty()
                && name.len() <= 12
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "host name {name:?} must be 1-12 characters of [A-Za-z0-9-]"
        );
        ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists already"
        );
        let ns = Arc::new(Netns::new_bare()?);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let host = Host {
            name: name.to_owned(),
            lan_ip: addr,
            ns,
            agent_bin: self.env.agent().ok().map(Path::to_path_buf),
            socket: self.sockets.path().join(format!("{name}.sock")),
            state_dir: dir.join("state"),
            dir,
            login_server: self.control_url.clone(),
        };
        report(format_args!(
            "{}: isolated host {name} ({addr}) in namespace {}",
            self.env.name(),
            host.ns.name()
        ));
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// [`Lan::add_host`] plus [`Lan::start_agent`].
    pub fn add_agent(&mut self, name: &str) -> anyhow::Result<Host> {
        let host = self.add_host(name)?;
        self.start_agent(&host)?;
        Ok(host)
    }

    /// Starts `agent daemon` on the host (state dir and socket are the host's, so a restart keeps
    /// the login) and waits until it answers `agent status`.
    pub fn start_agent(&mut self, host: &Host) -> anyhow::Result<()> {
        let bin = host.agent_bin()?.to_path_buf();
        let spec = Spawn::new(bin)
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
            .arg(&host.state_dir)
            .arg("--socket")
            .arg(&host.socket)
            .args(["--tun", TUN_NAME, "--port", &AGENT_PORT.to_string()]);
        let name = format!("{}-agent", host.name);
        let idx = self.spawn_in(&host.ns, &name, &spec)?;
        self.agents.insert(host.name.clone(), (idx, false));
        wait_until(
            &format!("agent daemon on {} to answer", host.name),
            READY_TIMEOUT,
            || {
                self.procs
                    .get_mut(idx)
                    .context("no such process")?
                    .ensure_running()?;
                let out = host.agent(&["status", "--json"])?;
                Ok(if out.status.success() {
                    Check::Ready(())
                } else {
                    Check::NotYet(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                })
            },
        )
    }

    /// Stops the host's agent daemon with SIGTERM (SIGKILL after a grace period); returns its
    /// exit status and how long it took to exit.
    pub fn stop_agent(&mut self, host: &Host) -> anyhow::Result<(ExitStatus, Duration)> {
        let (idx, stopped) = self
            .agents
            .get_mut(&host.name)
            .with_context(|| format!("no agent daemon was started on {}", host.name))?;
        *stopped = true;
        let proc = self.procs.get_mut(*idx).context("no such process")?;
        let t = Instant::now();
        let status = proc.stop()?;
        Ok((status, t.elapsed()))
    }

    /// Kills the host's agent daemon with SIGKILL, as a crash or power loss would: no logout,
    /// no goodbye to control.
    pub fn kill_agent(&mut self, host: &Host) -> anyhow::Result<ExitStatus> {
        let (idx, stopped) = self
            .agents
            .get_mut(&host.name)
            .with_context(|| format!("no agent daemon was started on {}", host.name))?;
        *stopped = true;
        let proc = self.procs.get_mut(*idx).context("no such process")?;
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &proc.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        // Reaps it (SIGTERM to a dead process is harmless).
        proc.stop()
    }

    /// Starts a long-running process on `host`, logging to `<lan dir>/<name>.log`.
    pub fn spawn(&mut self, host: &Host, name: &str, spec: &Spawn) -> anyhow::Result<()> {
        let ns = Arc::clone(&host.ns);
        self.spawn_in(&ns, name, spec).map(|_| ())
    }

    /// Starts the TCP echo server on `host`, bound to `addr:port` (e.g. the host's tailnet IP).
    /// Answers are `<host name> saw <client ip>: <line>`; see [`Host::tcp_echo`].
    pub fn start_tcp_echo(&mut self, host: &Host, addr: IpAddr, port: u16) -> anyhow::Result<()> {
        let script = self.dir.join("tcp_echo.py");
        std::fs::write(&script, TCP_ECHO_PY)?;
        let spec = Spawn::new(python3()?)
            .clear_env()
            .env("PATH", PATH)
            .arg("-u")
            .arg(&script)
            .args([addr.to_string(), port.to_string(), host.name.clone()]);
        let name = format!("{}-tcp-echo-{port}", host.name);
        let ns = Arc::clone(&host.ns);
        let idx = self.spawn_in(&ns, &name, &spec)?;
        let needle = format!("listening on {addr}:{port}");
        wait_until(&format!("{name} to listen"), READY_TIMEOUT, || {
            let p = self.procs.get_mut(idx).context("no such process")?;
            p.ensure_running()?;
            Ok(if p.log_text().contains(&needle) {
                Check::Ready(())
            } else {
                Check::NotYet("not listening yet".into())
            })
        })
    }

    /// Starts `python3 -m http.server` on `host`, bound to `addr:port` and serving `dir`, and
    /// waits until it listens.
    pub fn start_http_server(
        &mut self,
        host: &Host,
        addr: IpAddr,
        port: u16,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let spec = Spawn::new(python3()?)
            .clear_env()
            .env("PATH", PATH)
            .args(["-u", "-m", "http.server", &port.to_string()])
            .args(["--bind", &addr.to_string()])
            .arg("--directory")
            .arg(dir);
        let name = format!("{}-http-{port}", host.name);
        let ns = Arc::clone(&host.ns);
        let idx = self.spawn_in(&ns, &name, &spec)?;
        wait_until(&format!("{name} to listen"), READY_TIMEOUT, || {
            let p = self.procs.get_mut(idx).context("no such process")?;
            p.ensure_running()?;
            Ok(if p.log_text().contains("Serving HTTP") {
                Check::Ready(())
            } else {
                Check::NotYet("not listening yet".into())
            })
        })
    }

    fn spawn_in(&mut self, ns: &Netns, name: &str, spec: &Spawn) -> anyhow::Result<usize> {
        let count = self.spawn_counts.entry(name.to_owned()).or_insert(0);
        *count += 1;
        // A restarted process keeps its first log and writes a new one next to it.
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

    fn ensure_control_running(&mut self) -> anyhow::Result<()> {
        self.procs
            .get_mut(self.control_proc)
            .context("control was not started")?
            .ensure_running()
    }

    /// Fails if control or any agent daemon has exited on its own (ones stopped with
    /// [`Lan::stop_agent`] excepted).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.ensure_control_running()?;
        let running: Vec<usize> = self
            .agents
            .values()
            .filter_map(|(i, stopped)| (!stopped).then_some(*i))
            .collect();
        for i in running {
            self.procs
                .get_mut(i)
                .context("no such process")?
                .ensure_running()?;
        }
        Ok(())
    }

    /// Runs `control <args> --db <db> --base-domain tail.test` (database mode) and returns its
    /// stdout. Output is not logged: it may hold a fresh auth key.
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
        let out = run_in(&self.hub, &spec, CMD_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "`control {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `control keys create --json` with the given options.
    pub fn create_key(&self, opts: &KeyOptions) -> anyhow::Result<AuthKey> {
        let mut args = vec!["keys", "create", "--json"];
        if opts.reusable {
            args.push("--reusable");
        }
        if opts.ephemeral {
            args.push("--ephemeral");
        }
        let tags = opts.tags.join(",");
        if !tags.is_empty() {
            args.extend(["--tags", &tags]);
        }
        let out = self.control_cli(&args)?;
        let v: Value = serde_json::from_str(&out)
            .context("`control keys create --json` did not print JSON")?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .context("`control keys create --json` printed no string field \"key\"")?;
        ensure!(
            key.starts_with("tskey-auth-"),
            "`control keys create` returned a key not starting with tskey-auth-"
        );
        Ok(AuthKey::from_secret(key.to_owned()))
    }

    /// Installs `policy` (HuJSON) with `control policy set`.
    pub fn set_policy(&self, name: &str, policy: &str) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{name}.hujson"));
        std::fs::write(&file, policy)?;
        let file = file.to_string_lossy().into_owned();
        self.control_cli(&["policy", "set", &file]).map(|_| ())
    }

    /// `control nodes list --json`, parsed.
    pub fn nodes(&self) -> anyhow::Result<Value> {
        let out = self.control_cli(&["nodes", "list", "--json"])?;
        serde_json::from_str(&out).context("`control nodes list --json` did not print JSON")
    }

    /// Fails if any of the LAN's namespaces has a route off the machine.
    pub fn check_no_route_out(&self) -> anyhow::Result<()> {
        self.hub.check_no_route_out()?;
        self.hosts
            .iter()
            .try_for_each(|h| h.ns.check_no_route_out())
    }

    /// The current log text of a process started by this LAN (newest of that name).
    pub fn log_text(&self, name: &str) -> Option<String> {
        self.procs
            .iter()
            .rev()
            .find(|p| p.name() == name)
            .map(Proc::log_text)
    }
}

impl Drop for Lan<'_> {
    fn drop(&mut self) {
        let t = Instant::now();
        while let Some(mut proc) = self.procs.pop() {
            if let Err(e) = proc.stop() {
                report(format_args!("stopping {}: {e:#}", proc.name()));
            }
        }
        // Namespaces go when the last `Arc` does: here, unless a test still holds a `Host`.
        self.hosts.clear();
        report(format_args!(
            "{}: LAN stopped in {} ms",
            self.env.name(),
            t.elapsed().as_millis()
        ));
    }
}

/// One host namespace on the LAN. Cheap to clone; the namespace lives until the [`Lan`] and all
/// clones are gone.
#[derive(Debug, Clone)]
pub struct Host {
    pub(crate) name: String,
    pub(crate) lan_ip: Ipv4Addr,
    pub(crate) ns: Arc<Netns>,
    pub(crate) agent_bin: Option<PathBuf>,
    pub(crate) socket: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) login_server: String,
}

impl Host {
    /// The name given to [`Lan::add_host`]; also the tailnet hostname [`Host::agent_up`] uses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the bridge.
    pub fn lan_ip(&self) -> Ipv4Addr {
        self.lan_ip
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// A scratch directory for this host inside the run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent daemon's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub(crate) fn agent_bin(&self) -> anyhow::Result<&Path> {
        self.agent_bin
            .as_deref()
            .context("test did not declare Needs::agent")
    }

    /// Runs `spec` in the host's namespace to completion (30 s bound).
    pub fn exec(&self, spec: &Spawn) -> anyhow::Result<Output> {
        run_in(&self.ns, spec, CMD_TIMEOUT)
    }

    /// Runs `program args...` in the host's namespace with a clean environment.
    pub fn exec_args(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.exec(&Spawn::new(program).clear_env().env("PATH", PATH).args(args))
    }

    /// Runs the agent CLI against this host's daemon: `agent <args> --socket <socket>`.
    pub fn agent(&self, args: &[&str]) -> anyhow::Result<Output> {
        let spec = Spawn::new(self.agent_bin()?)
            .clear_env()
            .env("PATH", PATH)
            .env("NO_COLOR", "1")
            .args(args)
            .arg("--socket")
            .arg(&self.socket);
        self.exec(&spec)
    }

    /// Like [`Host::agent`], failing (with stderr) unless it exits 0; returns stdout.
    pub fn agent_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.agent(args)?;
        ensure!(
            out.status.success(),
            "`agent {}` on {} failed ({}): {}{}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `agent up --authkey <key> --login-server http://10.99.0.254:8080 --hostname <name>
    /// <extra...>` (the key passed in the environment, not on the command line), then waits
    /// until `agent status` says Running. Returns the status.
    pub fn agent_up(&self, key: &AuthKey, extra: &[&str]) -> anyhow::Result<Value> {
        let t = Instant::now();
        let spec = Spawn::new(self.agent_bin()?)
            .clear_env()
            .env("PATH", PATH)
            .env("NO_COLOR", "1")
            .env("AGENT_AUTHKEY", key.expose())
            .args(["up", "--login-server", &self.login_server])
            .args(["--hostname", &self.name])
            .args(extra)
            .arg("--socket")
            .arg(&self.socket);
        let out = run_in(&self.ns, &spec, Duration::from_secs(60))?;
        ensure!(
            out.status.success(),
            "`agent up` on {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let status = self.wait_running(Duration::from_secs(30))?;
        report(format_args!(
            "{}: up and Running after {} ms",
            self.name,
            t.elapsed().as_millis()
        ));
        Ok(status)
    }

    /// `agent status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = self.agent_ok(&["status", "--json"])?;
        serde_json::from_str(&out)
            .with_context(|| format!("`agent status --json` on {} printed no JSON", self.name))
    }

    /// Waits until `backend_state` is `Running`; returns that status.
    pub fn wait_running(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_state("Running", timeout)
    }

    /// Waits until `backend_state` is `state`; returns that status.
    pub fn wait_state(&self, state: &str, timeout: Duration) -> anyhow::Result<Value> {
        wait_until(
            &format!("{} to report backend_state {state}", self.name),
            timeout,
            || {
                let s = self.status()?;
                Ok(if backend_state(&s) == state {
                    Check::Ready(s)
                } else {
                    Check::NotYet(format!(
                        "backend_state {:?}, health {}",
                        backend_state(&s),
                        s.get("health").unwrap_or(&Value::Null)
                    ))
                })
            },
        )
    }

    /// The host's tailnet IPv4 address from `agent status`.
    pub fn tailnet_ipv4(&self) -> anyhow::Result<Ipv4Addr> {
        let s = self.status()?;
        node_ipv4(s.get("self").unwrap_or(&Value::Null))
            .with_context(|| format!("{} has no tailnet IPv4 address yet: {s}", self.name))
    }

    /// Waits until `agent status` lists every one of `peers` (by host name); returns the status.
    pub fn wait_peers(&self, peers: &[&str], timeout: Duration) -> anyhow::Result<Value> {
        wait_until(
            &format!("{} to list peers {peers:?}", self.name),
            timeout,
            || {
                let s = self.status()?;
                let missing: Vec<&&str> = peers.iter().filter(|p| peer(&s, p).is_none()).collect();
                Ok(if missing.is_empty() {
                    Check::Ready(s)
                } else {
                    Check::NotYet(format!("missing {missing:?}; listed {:?}", peer_names(&s)))
                })
            },
        )
    }

    /// Waits until `agent status` no longer lists `name`; returns the time it took.
    pub fn wait_peer_gone(&self, name: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        wait_until(
            &format!("{} to stop listing {name}", self.name),
            timeout,
            || {
                let s = self.status()?;
                Ok(if peer(&s, name).is_none() {
                    Check::Ready(t.elapsed())
                } else {
                    Check::NotYet(format!("still listed: {:?}", peer_names(&s)))
                })
            },
        )
    }

    /// The path kind (`direct`, `relay`, `none`, ...) `agent status` shows for peer `name`.
    pub fn path_to(&self, name: &str) -> anyhow::Result<String> {
        let s = self.status()?;
        let p = peer(&s, name).with_context(|| format!("{} does not list {name}", self.name))?;
        Ok(path_kind(p).to_owned())
    }

    /// Waits until the path to `peer_name` is of `kind`. Every `nudge_every` it runs
    /// `agent ping -c 1` to the peer (disco pings drive path discovery, as a user would). Returns
    /// the time it took and the peer's status entry.
    pub fn wait_path(
        &self,
        peer_name: &str,
        kind: &str,
        timeout: Duration,
        nudge_every: Option<Duration>,
    ) -> anyhow::Result<(Duration, Value)> {
        let t = Instant::now();
        // The first nudge comes only after `nudge_every`, so a path that is already right is
        // seen as it is.
        let mut last_nudge = Instant::now();
        wait_until(
            &format!("{}'s path to {peer_name} to be {kind}", self.name),
            timeout,
            || {
                if let Some(every) = nudge_every
                    && last_nudge.elapsed() >= every
                {
                    last_nudge = Instant::now();
                    // Its result does not matter; the status below is what is checked.
                    let _ = self.agent(&["ping", "-c", "1", peer_name]);
                }
                let s = self.status()?;
                Ok(match peer(&s, peer_name) {
                    Some(p) if path_kind(p) == kind => Check::Ready((t.elapsed(), p.clone())),
                    Some(p) => {
                        Check::NotYet(format!("path {}", p.get("path").unwrap_or(&Value::Null)))
                    }
                    None => Check::NotYet(format!("{peer_name} not listed")),
                })
            },
        )
    }

    /// One ICMP echo to `ip` with a 1 s reply timeout: true if answered.
    pub fn ping_once(&self, ip: IpAddr) -> anyhow::Result<bool> {
        let ip = ip.to_string();
        let out = self.exec_args("ping", &["-n", "-c", "1", "-W", "1", &ip])?;
        Ok(out.status.success())
    }

    /// Pings `ip` until an echo is answered; returns how long that took.
    pub fn wait_ping(&self, ip: IpAddr, timeout: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        wait_until(
            &format!("{} to get an ICMP reply from {ip}", self.name),
            timeout,
            || {
                Ok(if self.ping_once(ip)? {
                    Check::Ready(t.elapsed())
                } else {
                    Check::NotYet("no reply".into())
                })
            },
        )
    }

    /// Pings `ip` until `count` consecutive echoes go unanswered; returns how long that took.
    pub fn wait_ping_fails(&self, ip: IpAddr, timeout: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut misses = 0;
        wait_until(
            &format!("{}'s pings to {ip} to go unanswered", self.name),
            timeout,
            || {
                if self.ping_once(ip)? {
                    misses = 0;
                    Ok(Check::NotYet("still answered".into()))
                } else {
                    misses += 1;
                    Ok(if misses >= 3 {
                        Check::Ready(t.elapsed())
                    } else {
                        Check::NotYet(format!("{misses} unanswered in a row"))
                    })
                }
            },
        )
    }

    /// Connects to a [`Lan::start_tcp_echo`] server at `ip:port`, sends `msg` and returns the
    /// reply (`<server host> saw <our ip>: <msg>`). A failed connection is an `Err`.
    pub fn tcp_echo(
        &self,
        ip: IpAddr,
        port: u16,
        msg: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let script = self.dir.join("tcp_client.py");
        if !script.exists() {
            std::fs::write(&script, TCP_CLIENT_PY)?;
        }
        let spec = Spawn::new(python3()?)
            .clear_env()
            .env("PATH", PATH)
            .arg(&script)
            .args([
                ip.to_string(),
                port.to_string(),
                msg.to_owned(),
                format!("{:.1}", timeout.as_secs_f64()),
            ]);
        let out = run_in(&self.ns, &spec, timeout + Duration::from_secs(10))?;
        ensure!(
            out.status.success(),
            "TCP {} -> {ip}:{port}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET url` with curl in the host's namespace; transport errors are `Err`.
    pub fn curl(&self, url: &str, timeout: Duration) -> anyhow::Result<HttpReply> {
        curl_in(&self.ns, url, timeout)
    }

    /// Drops all UDP between this host and `peer`'s LAN address, both ways, with an nftables
    /// table in this host's namespace. Traffic with the hub (STUN, DERP) is untouched, so the two
    /// can then only meet through the DERP relay.
    pub fn block_udp_with(&self, peer: &Host) -> anyhow::Result<()> {
        let table = nft_table(peer);
        let rules = format!(
            "table inet {table} {{\n  \
               chain out {{\n    type filter hook output priority 0;\n    \
                 ip daddr {ip} meta l4proto udp counter drop\n  }}\n  \
               chain in {{\n    type filter hook input priority 0;\n    \
                 ip saddr {ip} meta l4proto udp counter drop\n  }}\n}}\n",
            ip = peer.lan_ip
        );
        let file = self.dir.join(format!("{table}.nft"));
        std::fs::write(&file, rules)?;
        let file = file.to_string_lossy().into_owned();
        let out = self.exec_args("nft", &["-f", &file])?;
        ensure!(
            out.status.success(),
            "nft -f on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        report(format_args!(
            "{}: UDP to and from {} ({}) dropped",
            self.name, peer.name, peer.lan_ip
        ));
        Ok(())
    }

    /// Removes what [`Host::block_udp_with`] installed.
    pub fn unblock_udp_with(&self, peer: &Host) -> anyhow::Result<()> {
        let table = nft_table(peer);
        let out = self.exec_args("nft", &["delete", "table", "inet", &table])?;
        ensure!(
            out.status.success(),
            "nft delete table on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        report(format_args!(
            "{}: UDP with {} allowed again",
            self.name, peer.name
        ));
        Ok(())
    }

    /// Packets dropped so far by [`Host::block_udp_with`] for `peer` (both directions).
    pub fn udp_dropped_with(&self, peer: &Host) -> anyhow::Result<u64> {
        let table = nft_table(peer);
        let out = self.exec_args("nft", &["list", "table", "inet", &table])?;
        ensure!(
            out.status.success(),
            "nft list table on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w.first() == Some(&"packets"))
            .filter_map(|w| w.get(1).and_then(|n| n.parse::<u64>().ok()))
            .sum())
    }
}

fn nft_table(peer: &Host) -> String {
    format!("{NFT_TABLE_PREFIX}{}", peer.name.replace('-', "_"))
}

/// `backend_state` of an `agent status --json` document.
pub fn backend_state(status: &Value) -> &str {
    status
        .get("backend_state")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The entry for peer `name` (host name, or first label of the MagicDNS name) in an
/// `agent status --json` document.
pub fn peer<'v>(status: &'v Value, name: &str) -> Option<&'v Value> {
    status
        .get("peers")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| {
            let host = p.get("hostname").and_then(Value::as_str);
            let fqdn = p.get("name").and_then(Value::as_str).unwrap_or("");
            host == Some(name) || fqdn.split('.').next() == Some(name)
        })
}

/// Host names of all peers in an `agent status --json` document.
pub fn peer_names(status: &Value) -> Vec<String> {
    status
        .get("peers")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    p.get("hostname")
                        .or_else(|| p.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `path.kind` of a peer entry (`direct`, `relay`, `none`).
pub fn path_kind(peer: &Value) -> &str {
    peer.get("path")
        .and_then(|p| p.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The first IPv4 address of a node entry (`self` or a peer).
pub fn node_ipv4(node: &Value) -> Option<Ipv4Addr> {
    node.get("addresses")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .next()
}

/// The Python interpreter used for the TCP helpers.
pub(crate) fn python3() -> anyhow::Result<PathBuf> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("python3 not found (needed for the TCP echo helpers); install python3")
}

/// Turns IPv6 off on one link, keeping the LAN IPv4-only (no link-local endpoints a UDP block
/// would have to know about).
fn disable_ipv6(ns: &Netns, link: &str) -> anyhow::Result<()> {
    let spec = Spawn::new("/bin/sh").clear_env().env("PATH", PATH).args([
        "-c",
        &format!("echo 1 > /proc/sys/net/ipv6/conf/{link}/disable_ipv6"),
    ]);
    let out = run_in(ns, &spec, CMD_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "disabling IPv6 on {link} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `GET url` with curl in `ns`. Transport errors are `Err` with curl's message.
fn curl_in(ns: &Netns, url: &str, timeout: Duration) -> anyhow::Result<HttpReply> {
    let spec = Spawn::new("curl")
        .clear_env()
        .env("PATH", PATH)
        .args(["-sS", "--noproxy", "*", "-m"])
        .arg(format!("{:.1}", timeout.as_secs_f64()))
        .args(["-w", "\n%{http_code}", url]);
    let out = run_in(ns, &spec, timeout + Duration::from_secs(5))?;
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code
        .trim()
        .parse()
        .with_context(|| format!("curl status {code:?}"))?;
    Ok(HttpReply {
        status,
        body: body.to_owned(),
    })
}

/// Runs `spec` in `ns` to completion, killing it after `timeout`; returns its output.
pub(crate) fn run_in(ns: &Netns, spec: &Spawn, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = spec
        .command(ns)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", spec.program().display()))?;
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} in {} did not finish within {} s",
                spec.program().display(),
                ns.name(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}
