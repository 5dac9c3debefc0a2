//! The admin commands: `control keys|nodes|routes|users|policy|apikeys|audit`.
//!
//! Each command works either on the database directly (`--db`, default
//! `/var/lib/control/control.db`; what first-time setup and tests use) or through a running
//! server's API (`--server URL --api-key KEY`). In both modes it ends in the same operations
//! of [`control::api`] ([`backend`]), and prints a table for people or, with `--json`, the API's
//! JSON shapes for scripts ([`output`]). Errors name the fix, e.g.
//! "node web not found; see `control nodes list`".

mod audit;
mod backend;
pub mod derp;
mod keys;
mod nodes;
mod output;
mod policy;
mod remote;
mod users;

use std::path::PathBuf;

use anyhow::Context as _;
use control::state::Tailnet;
use control::store::sqlite::SqliteStore;

use backend::Backend;

/// Admin subcommands (flattened into `control`'s top-level commands).
#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Auth keys that register devices: create, list, revoke.
    Keys(keys::KeysArgs),
    /// Devices: list, approve, expire, delete, rename, tag.
    Nodes(nodes::NodesArgs),
    /// Subnet routes and exit nodes: list, approve.
    Routes(nodes::RoutesArgs),
    /// Users: create, list, delete.
    Users(users::UsersArgs),
    /// The ACL policy: get, set, check.
    Policy(policy::PolicyArgs),
    /// API keys for the admin REST API and `--server`: create, list, revoke.
    Apikeys(keys::ApiKeysArgs),
    /// Show the audit log of administrative changes.
    Audit(audit::AuditArgs),
}

/// Where a command acts and how it prints; accepted after any admin subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// SQLite database to work on directly [default: /var/lib/control/control.db].
    #[arg(long, global = true, env = "CONTROL_DB")]
    db: Option<PathBuf>,
    /// Work through a running server's API instead, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "CONTROL_SERVER")]
    server: Option<String>,
    /// API key for --server (`control apikeys create` makes one).
    #[arg(long, global = true, env = "CONTROL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// MagicDNS suffix, as given to `control serve` (database mode) [default: tailnet.internal].
    #[arg(long, global = true)]
    base_domain: Option<String>,
    /// The server's TOML settings file; database mode takes `db` and `base_domain` from it.
    #[arg(long, global = true, env = "CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Target {
    /// Opens the database or connects to the server.
    async fn backend(&self) -> anyhow::Result<Backend> {
        if let Some(url) = &self.server {
            let remote = remote::Remote::new(url, self.api_key.as_deref().unwrap_or_default())?;
            return Ok(Backend::Remote(Box::new(remote)));
        }
        let args = control::config::ServeArgs {
            config: self.config.clone(),
            db: self.db.clone(),
            base_domain: self.base_domain.clone(),
            ..Default::default()
        };
        let settings = args.resolve()?;
        let db = settings.db;
        // A mistyped --db must not quietly become a new, empty tailnet: refuse a path whose
        // directory does not exist, and say so when a new database file is created (creating
        // one is legitimate, e.g. to mint the first API key before `control serve` runs).
        if !db.exists() {
            let parent = db
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            anyhow::ensure!(
                parent.is_dir(),
                "no database at {} (directory {} does not exist); pass the server's database \
                 with --db PATH or CONTROL_DB, or use --server",
                db.display(),
                parent.display()
            );
            eprintln!(
                "note: {} did not exist; created a new, empty database there",
                db.display()
            );
        }
        let store = SqliteStore::open(&db).with_context(|| {
            format!(
                "cannot open the database {} (pass --db PATH or set CONTROL_DB, or use --server)",
                db.display()
            )
        })?;
        let mut tailnet = Tailnet::load(Box::new(store), settings.tailnet)
            .with_context(|| format!("cannot load the tailnet from {}", db.display()))?;
        // Who is online (and so which subnet router is primary) is known only to the running
        // server, which publishes it next to the database; replay it so `routes list` and
        // `nodes list` agree with the server.
        if let Some(online) = control::api::presence::read(&db, chrono::Utc::now()) {
            for id in online {
                tailnet.session_started(id);
            }
        }
        Ok(Backend::Local {
            tailnet: Box::new(tailnet),
            db,
        })
    }
}

/// Runs one admin command.
pub async fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Keys(a) => keys::run_keys(a).await,
        AdminCommand::Nodes(a) => nodes::run_nodes(a).await,
        AdminCommand::Routes(a) => nodes::run_routes(a).await,
        AdminCommand::Users(a) => users::run(a).await,
        AdminCommand::Policy(a) => policy::run(a).await,
        AdminCommand::Apikeys(a) => keys::run_api_keys(a).await,
        AdminCommand::Audit(a) => audit::run(a).await,
    }
}

/// `90d`, `12h`, `never`: `None` for never.
fn parse_expiry(s: &str) -> anyhow::Result<Option<chrono::Duration>> {
    match s.trim() {
        "never" | "0" => Ok(None),
        s => control::config::parse_duration(s)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--expiry {e}")),
    }
}
