//! [`TestEnv`]: one test's namespace, run directory and processes.
//!
//! Created by [`crate::run_test`]. Processes are kept in start order and stopped in reverse order
//! (clients before the server they talk to) before the namespace is deleted. The run directory is
//! `<runs dir>/<test>-<pid>-<n>`; it is removed after a passing test and kept after a failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::process::{Proc, Spawn, tail};
use crate::{Netns, Tools, report};

/// Lines of each log printed when a test fails.
const FAILURE_TAIL_LINES: usize = 80;

/// An HTTP answer fetched with curl inside the namespace.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// One test's isolated world. Field order matters for drop: processes go before the namespace.
#[derive(Debug)]
pub struct TestEnv {
    name: String,
    procs: Vec<Proc>,
    /// Logs of processes started outside [`TestEnv::spawn`] (e.g. by a `topology::Lan`), printed
    /// on failure like the others. A mutex because their owner holds only `&TestEnv`.
    extra_logs: Mutex<Vec<(String, PathBuf)>>,
    run_dir: PathBuf,
    tools: Tools,
    netns: Netns,
}

impl TestEnv {
    pub(crate) fn new(name: &str, tools: Tools) -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let runs = std::env::var_os("E2E_RUNS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::target_dir().join("e2e-runs"));
        let run_dir = runs.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)?;
        }
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating run directory {}", run_dir.display()))?;
        let netns = Netns::new()?;
        report(format_args!(
            "{name}: namespace {}, run directory {}",
            netns.name(),
            run_dir.display()
        ));
        Ok(TestEnv {
            name: name.to_owned(),
            procs: Vec::new(),
            extra_logs: Mutex::new(Vec::new()),
            run_dir,
            tools,
            netns,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// This test's scratch directory (logs, databases, client state).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// A path inside the run directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.run_dir.join(rel)
    }

    /// The `caddy` binary; only present when the test asked for it in [`crate::Needs`].
    pub fn caddy(&self) -> anyhow::Result<&Path> {
        self.tools
            .caddy
            .as_deref()
            .context("test did not declare Needs::caddy")
    }

    /// The `control` binary; only present when the test asked for it in [`crate::Needs`].
    pub fn control(&self) -> anyhow::Result<&Path> {
        self.tools
            .control
            .as_deref()
            .context("test did not declare Needs::control")
    }

    /// The `agent` binary; only present when the test asked for it in [`crate::Needs`].
    pub fn agent(&self) -> anyhow::Result<&Path> {
        self.tools
            .agent
            .as_deref()
            .context("test did not declare Needs::agent")
    }

    /// Starts a long-running process in the namespace, logging to `<run dir>/<name>.log`.
    /// Returns its index for [`TestEnv::proc_mut`].
    pub fn spawn(&mut self, name: &str, spec: &Spawn) -> anyhow::Result<usize> {
        let log = self.run_dir.join(format!("{name}.log"));
        let proc = Proc::spawn(&self.netns, name, spec, &log)?;
        report(format_args!(
            "{}: started {name} (pid {})",
            self.name,
            proc.pid()
        ));
        self.procs.push(proc);
        Ok(self.procs.len() - 1)
    }

    pub fn proc_mut(&mut self, index: usize) -> anyhow::Result<&mut Proc> {
        self.procs.get_mut(index).context("no such process")
    }

    /// The processes started so far, in start order.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Fails if any started process has exited.
    pub fn ensure_all_running(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Proc::ensure_running)
    }

    /// Runs a short command in the namespace to completion and returns its output. Output is
    /// returned, not logged, because it may hold secrets (e.g. a freshly created auth key).
    pub fn run(&self, spec: &Spawn, timeout: Duration) -> anyhow::Result<std::process::Output> {
        let mut child = spec
            .command(&self.netns)?
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
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
            buf
        });
        let err_t = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not finish within {} s",
                    spec.program().display(),
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out_t.join().unwrap_or_default();
        let stderr = err_t.join().unwrap_or_default();
        Ok(std::process::Output {
            status,
            stdout,
            stderr,
        })
    }

    /// `GET url` with curl inside the namespace. Transport errors (refused, timeout) are `Err`
    /// with curl's message; any HTTP status is `Ok`. Proxy variables are ignored.
    pub fn curl(&self, url: &str, timeout: Duration) -> anyhow::Result<HttpReply> {
        let spec = Spawn::new(curl_bin())
            .clear_env()
            .env("PATH", "/usr/bin:/bin")
            .args(["-sS", "--noproxy", "*", "-m"])
            .arg(format!("{:.1}", timeout.as_secs_f64()))
            .args(["-w", "\n%{http_code}", url]);
        let out = self.run(&spec, timeout + Duration::from_secs(5))?;
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

    /// Registers the log of a process this environment did not start, so that a failure prints
    /// its tail too.
    pub fn add_log(&self, name: &str, path: &Path) {
        let mut logs = self.extra_logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.push((name.to_owned(), path.to_path_buf()));
    }

    /// Prints the tail of every captured log (used on failure).
    pub fn dump_logs(&self) {
        report(format_args!(
            "{}: logs kept in {}",
            self.name,
            self.run_dir.display()
        ));
        for proc in &self.procs {
            report(format_args!(
                "----- {} ({}), last {FAILURE_TAIL_LINES} lines -----\n{}",
                proc.name(),
                proc.log_path().display(),
                tail(proc.log_path(), FAILURE_TAIL_LINES)
            ));
        }
        let extra = self.extra_logs.lock().unwrap_or_else(|p| p.into_inner());
        for (name, path) in extra.iter() {
            report(format_args!(
                "----- {name} ({}), last {FAILURE_TAIL_LINES} lines -----\n{}",
                path.display(),
                tail(path, FAILURE_TAIL_LINES)
            ));
        }
        report(format_args!("----- end of logs for {} -----", self.name));
    }

    /// Stops every process (newest first), deletes the namespace and, unless the test failed or
    /// `E2E_KEEP_RUNS=1`, removes the run directory.
    pub(crate) fn finish(mut self, failed: bool) {
        while let Some(mut proc) = self.procs.pop() {
            if let Err(e) = proc.stop() {
                report(format_args!(
                    "{}: stopping {}: {e:#}",
                    self.name,
                    proc.name()
                ));
            }
        }
        let keep = failed || std::env::var_os("E2E_KEEP_RUNS").is_some_and(|v| v == "1");
        let run_dir = self.run_dir.clone();
        // Dropping self deletes the namespace.
        drop(self);
        if !keep {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
}

fn curl_bin() -> &'static str {
    if Path::new("/usr/bin/curl").is_file() {
        "/usr/bin/curl"
    } else {
        "curl"
    }
}
