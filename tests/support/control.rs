//! Driving our coordination server `control` through its command line, the contract the tests
//! rely on:
//!
//! * `control serve --listen 127.0.0.1:<P> --server-url http://127.0.0.1:<P> --db <run>/control.db
//!   --base-domain tail.test --derp-port <D> --stun-port <S> --derp-host 127.0.0.1
//!   --data-dir <run>/data`, ready once `GET /key?v=130` answers 200;
//! * `control keys create --db <db> --base-domain tail.test --reusable --ephemeral --json`,
//!   printing a JSON object whose `"key"` field holds `tskey-auth-...`;
//! * `control nodes list --db <db> --base-domain tail.test --json`, printing the nodes (see
//!   [`NodeStatus`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Check, Spawn, TestEnv, free_port, report, wait_until};

/// How long `control serve` may take to answer `/key`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// MagicDNS suffix the tests run the server with.
pub const BASE_DOMAIN: &str = "tail.test";

/// How long a one-shot CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Skips when the binary has no `serve` subcommand yet (the crate is still a skeleton), so the
/// suite stays green while the server is being written. `E2E_STRICT=1` turns this into a failure.
pub(crate) fn check_serve_support(bin: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .map_err(|e| format!("cannot run {} --help: {e}", bin.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    let has_serve = help
        .lines()
        .any(|l| l.split_whitespace().next() == Some("serve"));
    if has_serve {
        Ok(())
    } else {
        Err(format!(
            "{} does not offer a `serve` subcommand yet (`control --help` lists none)",
            bin.display()
        ))
    }
}

/// An auth key. Debug output is redacted so the key never lands in a test log.
#[derive(Clone)]
pub struct AuthKey(String);

impl AuthKey {
    /// Wraps a key read from `control keys create` output (see `topology.rs`).
    pub(crate) fn from_secret(key: String) -> Self {
        AuthKey(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// One row of `control nodes list --json`, as far as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Host name or node name as the server reports it (`nodea` or `nodea.tail.test`).
    pub name: String,
    pub online: bool,
}

impl NodeStatus {
    /// True if this node is `short`, by bare name or FQDN.
    pub fn is(&self, short: &str) -> bool {
        let name = self.name.trim_end_matches('.');
        name == short || name.split('.').next() == Some(short)
    }
}

/// A running `control serve` inside a test namespace.
#[derive(Debug)]
pub struct ControlServer {
    proc_index: usize,
    pub port: u16,
    pub derp_port: u16,
    pub stun_port: u16,
    pub db: PathBuf,
    pub url: String,
}

impl ControlServer {
    /// Starts `control serve` on fresh ports and waits until `GET /key?v=130` answers 200.
    pub fn start(env: &mut TestEnv) -> anyhow::Result<Self> {
        let bin = env.control()?.to_path_buf();
        let port = free_port()?;
        let derp_port = free_port()?;
        let stun_port = free_port()?;
        let db = env.path("control.db");
        let data = env.path("data");
        std::fs::create_dir_all(&data)?;
        let url = format!("http://127.0.0.1:{port}");
        let spec = Spawn::new(&bin)
            .clear_env()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_BACKTRACE", "1")
            // The log is a file; escape codes would only make it harder to read.
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("E2E_CONTROL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--server-url", &url])
            .arg("--db")
            .arg(&db)
            .args(["--base-domain", BASE_DOMAIN])
            .args(["--derp-port", &derp_port.to_string()])
            .args(["--stun-port", &stun_port.to_string()])
            .args(["--derp-host", "127.0.0.1"])
            .arg("--data-dir")
            .arg(&data);
        let proc_index = env.spawn("control", &spec)?;
        let started = Instant::now();
        let key_url = format!("{url}/key?v=130");
        wait_until("control to answer GET /key?v=130", READY_TIMEOUT, || {
            env.proc_mut(proc_index)?.ensure_running()?;
            Ok(match env.curl(&key_url, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Check::Ready(r),
                Ok(r) => Check::NotYet(format!("HTTP {}: {}", r.status, r.body)),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        })
        .and_then(|reply| check_key_reply(&reply.body))?;
        report(format_args!(
            "{}: control ready on {url} after {} ms",
            env.name(),
            started.elapsed().as_millis()
        ));
        Ok(ControlServer {
            proc_index,
            port,
            derp_port,
            stun_port,
            db,
            url,
        })
    }

    /// Fails if the server process has exited.
    pub fn ensure_running(&self, env: &mut TestEnv) -> anyhow::Result<()> {
        env.proc_mut(self.proc_index)?.ensure_running()
    }

    /// `control keys create --reusable --ephemeral --json`; returns the key.
    pub fn create_auth_key(&self, env: &TestEnv) -> anyhow::Result<AuthKey> {
        let out = self.cli(
            env,
            &["keys", "create", "--reusable", "--ephemeral", "--json"],
        )?;
        let v: Value = serde_json::from_slice(&out)
            .context("`control keys create --json` did not print JSON")?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .context("`control keys create --json` printed no string field \"key\"")?;
        if !key.starts_with("tskey-auth-") {
            bail!("`control keys create` returned a key not starting with tskey-auth-");
        }
        Ok(AuthKey(key.to_owned()))
    }

    /// `control nodes list --json`, reduced to name and online state.
    pub fn list_nodes(&self, env: &TestEnv) -> anyhow::Result<Vec<NodeStatus>> {
        let out = self.cli(env, &["nodes", "list", "--json"])?;
        let v: Value = serde_json::from_slice(&out)
            .context("`control nodes list --json` did not print JSON")?;
        parse_nodes(&v)
    }

    /// Runs `control <args> --db <db>` in the namespace; returns stdout. stdout is not logged
    /// because it can hold secrets.
    fn cli(&self, env: &TestEnv, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let spec = Spawn::new(env.control()?)
            .clear_env()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .args(args)
            .arg("--db")
            .arg(&self.db)
            // Database mode derives names and the default key owner from the base domain; give
            // the one the server runs with.
            .args(["--base-domain", BASE_DOMAIN]);
        let out = env.run(&spec, CLI_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "`control {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }
}

/// `/key` must be JSON with a non-zero Noise key, or the official client refuses to log in
/// ("control server is too old; no noise key"); checking here gives a clearer failure.
fn check_key_reply(body: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_str(body)
        .with_context(|| format!("GET /key did not return JSON: {body:?}"))?;
    let key = v.get("publicKey").and_then(Value::as_str).unwrap_or("");
    let Some(hex) = key.strip_prefix("mkey:") else {
        bail!("GET /key has no \"publicKey\":\"mkey:<hex>\": {body}");
    };
    if hex.len() != 64 || hex.bytes().all(|b| b == b'0') {
        bail!("GET /key publicKey is not a non-zero 32-byte hex key: {body}");
    }
    Ok(())
}

/// Accepts a JSON array of node objects, or an object with a `"nodes"` array. A node's name is
/// the first string among `name`, `hostname`, `given_name`, `givenName`, `host_name`; its state
/// is the boolean `online`.
fn parse_nodes(v: &Value) -> anyhow::Result<Vec<NodeStatus>> {
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => o
            .get("nodes")
            .and_then(Value::as_array)
            .context("nodes list JSON is an object without a \"nodes\" array")?,
        _ => bail!("nodes list JSON is neither an array nor an object"),
    };
    list.iter()
        .map(|n| {
            let name = ["name", "hostname", "given_name", "givenName", "host_name"]
                .iter()
                .find_map(|k| n.get(*k).and_then(Value::as_str))
                .with_context(|| format!("node without a name field: {n}"))?;
            let online = n.get("online").and_then(Value::as_bool).unwrap_or(false);
            Ok(NodeStatus {
                name: name.to_owned(),
                online,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_node_list_shapes() {
        let array = serde_json::json!([
            {"id": 1, "name": "nodea.tail.test", "online": true},
            {"id": 2, "hostname": "nodeb", "online": false}
        ]);
        let nodes = parse_nodes(&array).unwrap();
        assert!(nodes[0].is("nodea") && nodes[0].online);
        assert!(nodes[1].is("nodeb") && !nodes[1].online);
        let object = serde_json::json!({"nodes": [{"givenName": "nodea", "online": true}]});
        assert!(parse_nodes(&object).unwrap()[0].is("nodea"));
    }

    #[test]
    fn key_reply_needs_a_noise_key() {
        let good = format!(
            r#"{{"legacyPublicKey":"mkey:{0}","publicKey":"mkey:{0}"}}"#,
            "ab".repeat(32)
        );
        assert!(check_key_reply(&good).is_ok());
        assert!(check_key_reply(&format!("mkey:{}", "ab".repeat(32))).is_err());
        let zero = format!(r#"{{"publicKey":"mkey:{}"}}"#, "0".repeat(64));
        assert!(check_key_reply(&zero).is_err());
    }

    #[test]
    fn auth_key_debug_is_redacted() {
        let k = AuthKey("tskey-auth-secret".into());
        assert!(!format!("{k:?}").contains("secret"));
    }
}
