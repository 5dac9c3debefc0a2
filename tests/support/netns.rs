//! A throwaway network namespace that cannot reach anything outside this machine.
//!
//! [`Netns::new`] creates `tsr-<pid>-<n>` with `ip netns add`, brings `lo` up and adds a veth
//! pair whose two ends both live inside the namespace (`veth0` 10.213.0.1/24 and `veth1`, no
//! address): tsnet needs a non-loopback interface to consider the network up, and a pair with
//! both ends inside is a dead end. No default route exists, so connecting to any address other
//! than loopback or 10.213.0.0/24 fails with "network unreachable" before a packet is sent.
//! Drop deletes the namespace. Namespaces left by a test run that was killed (their owner PID is
//! gone) are swept, with the processes still inside them, the next time one is created.
//!
//! Every namespace also gets its own `/etc/netns/<name>/resolv.conf` (and `hosts`): `ip netns
//! exec` bind-mounts those over `/etc/resolv.conf` for the programs it starts, so an agent that
//! manages DNS (MagicDNS) rewrites the namespace's copy and never the machine's own file. The
//! directory is removed with the namespace.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

/// Prefix of every namespace this harness creates.
const PREFIX: &str = "tsr-";

/// Address of the in-namespace end of the dead-end veth pair.
pub const VETH_ADDR: &str = "10.213.0.1/24";

/// A network namespace deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with `lo` up and the dead-end veth pair, and checks that it has
    /// no route off the machine.
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::new_bare()?;
        let n = ns.name.as_str();
        ip(&[
            "-n", n, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ])?;
        ip(&["-n", n, "addr", "add", VETH_ADDR, "dev", "veth0"])?;
        ip(&["-n", n, "link", "set", "veth0", "up"])?;
        ip(&["-n", n, "link", "set", "veth1", "up"])?;
        ns.check_isolated()?;
        Ok(ns)
    }

    /// Creates a fresh namespace holding only `lo` (up), named and swept like the others. The
    /// caller adds its own links (see `topology.rs`) and must keep it free of routes off the
    /// machine.
    pub fn new_bare() -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // The per-namespace /etc comes first: from the moment the namespace exists, anything
        // started in it with `ip netns exec` must see its own resolv.conf.
        write_etc(&name)?;
        if let Err(e) = ip(&["netns", "add", &name]) {
            remove_etc(&name);
            return Err(e);
        }
        // From here on Drop deletes the namespace, even if a later step fails.
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails unless the namespace holds only `lo`, `veth0` and `veth1` and no default route.
    pub fn check_isolated(&self) -> anyhow::Result<()> {
        let links = ip(&["-n", &self.name, "-o", "link", "show"])?;
        for line in links.lines() {
            // "1: lo: <LOOPBACK,UP> ..." or "2: veth0@veth1: <...> ..."
            let ifname = line.split(':').nth(1).unwrap_or("").trim();
            let ifname = ifname.split('@').next().unwrap_or("");
            if !matches!(ifname, "lo" | "veth0" | "veth1") {
                bail!(
                    "namespace {} has an unexpected interface {ifname:?}",
                    self.name
                );
            }
        }
        self.check_no_route_out()
    }

    /// Fails if the namespace has a default route or any route through a gateway, i.e. a way to
    /// send packets anywhere but to directly attached links.
    pub fn check_no_route_out(&self) -> anyhow::Result<()> {
        for family in ["-4", "-6"] {
            let routes = ip(&["-n", &self.name, family, "route", "show", "table", "all"])?;
            for line in routes.lines() {
                if line.starts_with("default") || line.contains(" via ") {
                    bail!(
                        "namespace {} has a route off the machine: {line}",
                        self.name
                    );
                }
            }
        }
        Ok(())
    }

    /// True if a namespace of this name is currently listed by `ip netns list`.
    pub fn exists(name: &str) -> bool {
        ip(&["netns", "list"])
            .map(|list| {
                list.lines()
                    .any(|l| l.split_whitespace().next() == Some(name))
            })
            .unwrap_or(false)
    }

    /// PIDs of the processes currently inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes are the owner's job (they are killed by PID before this runs); anything left
        // would keep sockets alive in a namespace nobody can reach, so report it.
        let left = self.pids();
        if !left.is_empty() {
            crate::report(format_args!(
                "netns {}: processes still inside at teardown: {left:?}; killing them",
                self.name
            ));
            kill_pids(&left);
        }
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            crate::report(format_args!("netns {}: delete failed: {e:#}", self.name));
        }
        remove_etc(&self.name);
    }
}

/// Where `ip netns exec` looks for files to bind-mount over `/etc` in namespace `name`.
pub fn etc_dir(name: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(name)
}

/// Creates `/etc/netns/<name>/{resolv.conf,hosts}`: a resolv.conf pointing at an address that
/// answers nothing (tests that need an upstream resolver write their own) and a minimal hosts.
fn write_etc(name: &str) -> anyhow::Result<()> {
    let dir = etc_dir(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("resolv.conf"),
        "# test namespace resolv.conf (e2e harness)\nnameserver 127.0.0.1\n",
    )
    .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
    std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")
        .with_context(|| format!("writing {}/hosts", dir.display()))?;
    Ok(())
}

fn remove_etc(name: &str) {
    let _ = std::fs::remove_dir_all(etc_dir(name));
}

/// Path of the `ip` binary; `/usr/sbin` is not on every PATH.
pub fn ip_bin() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Runs `ip <args>` and returns its stdout, or an error carrying its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let bin = ip_bin().context("`ip` not found")?;
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pids_in(name: &str) -> Vec<u32> {
    ip(&["netns", "pids", name])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_pids(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output();
    }
}

/// Deletes `tsr-<pid>-<n>` namespaces whose owner process no longer exists, killing what is
/// left inside them. A harness killed with SIGKILL cannot clean up; this keeps such leftovers
/// from piling up across runs.
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        kill_pids(&pids_in(name));
        let _ = ip(&["netns", "delete", name]);
        remove_etc(name);
        crate::report(format_args!("swept stale namespace {name}"));
    }
}
