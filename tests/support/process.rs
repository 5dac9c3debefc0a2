//! Processes started inside a test namespace, with their output captured to a log file.
//!
//! [`Proc::spawn`] runs `ip netns exec <ns> <program> <args>`; `ip netns exec` switches namespace
//! and then execs the program, so the child's PID is the program's own and killing it by PID
//! needs no process-group tricks. stdout and stderr both go to `<run dir>/<name>.log`. Stopping
//! sends SIGTERM (so an ephemeral tsnet node can log out), waits a short grace period and then
//! sends SIGKILL. Drop stops the process if it is still running.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, ip_bin};

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What to start: program, arguments and environment.
#[derive(Debug, Clone)]
pub struct Spawn {
    program: PathBuf,
    args: Vec<OsString>,
    clear_env: bool,
    envs: Vec<(OsString, OsString)>,
}

impl Spawn {
    /// Starts `program` with the test's own environment (see [`Spawn::clear_env`]).
    pub fn new(program: impl AsRef<Path>) -> Self {
        Spawn {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            clear_env: false,
            envs: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Starts from an empty environment, like `env -i`; only variables set with [`Spawn::env`]
    /// reach the program. Proxy settings and the like from the caller then cannot leak in.
    pub fn clear_env(mut self) -> Self {
        self.clear_env = true;
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// The command line `ip netns exec <ns> <program> <args>` with the environment applied.
    pub(crate) fn command(&self, ns: &Netns) -> anyhow::Result<Command> {
        let ip = ip_bin().context("`ip` not found")?;
        let mut cmd = Command::new(ip);
        cmd.args(["netns", "exec", ns.name()])
            .arg(&self.program)
            .args(&self.args);
        if self.clear_env {
            cmd.env_clear();
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// A running process inside a namespace; stopped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `spec` inside `ns`, logging stdout and stderr to `log`.
    pub fn spawn(ns: &Netns, name: &str, spec: &Spawn, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let child = spec
            .command(ns)?
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", spec.program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            started,
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Fails with the log tail if the process has already exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_exit()? {
            bail!(
                "{} exited early ({status}); last log lines:\n{}",
                self.name,
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, a short grace period, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        // std only offers SIGKILL; a graceful stop lets ephemeral nodes log out first.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        if let Some(status) = self.wait_exit(STOP_GRACE)? {
            return Ok(status);
        }
        self.child.kill().or_else(|e| {
            // Already gone between the check and the kill.
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The last `lines` lines of this process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            crate::report(format_args!(
                "stopping {} (pid {}): {e:#}",
                self.name,
                self.pid()
            ));
        }
    }
}

/// The last `lines` lines of a file, or a note saying why it could not be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all.get(start..).unwrap_or_default().join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
