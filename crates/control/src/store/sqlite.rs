//! The SQLite [`Store`]: one file, shared by the server and the admin CLI.
//!
//! [`SqliteStore::open`] creates the file (mode 0600: it holds the server's private keys and
//! secret hashes), switches it to WAL, and applies the embedded migrations from
//! `crates/control/migrations` (refinery; `V1__initial.sql`, later `V2__…`). Each trait call is
//! one statement or one short transaction on a single connection owned by the caller; nothing
//! here spawns threads or caches rows. Two processes may hold the file open at once: writers wait
//! up to [`BUSY_TIMEOUT`] for each other, and [`Store::data_version`] tells the server when the
//! other process committed so that it can [`Store::load`] again.
//!
//! Storage conventions (timestamps as fixed-width RFC 3339 text, lists as JSON, keys as their
//! typed text) are described at the top of the V1 migration.

mod codec;
mod file;
mod read;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use self::codec::{
    Violation, api_key_values, auth_key_values, db, json_text, node_values, ts_text, violation,
    write_err,
};
use super::{AuditQuery, Store, StoreError};
use crate::model::{
    ApiKey, ApiKeyId, AuditEvent, AuthKey, AuthKeyId, Node, NodeId, PolicyRecord, ServerKeys,
    Snapshot, Timestamp, User, UserId,
};
use proto::keys::{MachinePrivate, NodePrivate};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How long a write waits for the other process's write transaction before failing with
/// "database is locked". Transactions here last milliseconds, so this only expires if the other
/// process hangs while holding the lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A policy that was replaced by a later [`Store::set_policy`], kept for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRevision {
    /// Increases with every replacement.
    pub id: i64,
    /// The policy as it was while in force.
    pub policy: PolicyRecord,
    /// When it was replaced (the `updated` time of its successor).
    pub replaced: Timestamp,
}

/// [`Store`] on a SQLite database file (or in memory, for tests).
pub struct SqliteStore {
    conn: Connection,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// A new file and any missing parent directories are created private to the owner (0600 and
    /// 0700). Running it again on an up-to-date file changes nothing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        file::create_private_file(path)?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        let mut store = Self {
            conn,
            path: Some(path.to_owned()),
        };
        store.configure(true)?;
        store.migrate()?;
        Ok(store)
    }

    /// A private in-memory database with the full schema; gone when dropped.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(db)?;
        let mut store = Self { conn, path: None };
        store.configure(false)?;
        store.migrate()?;
        Ok(store)
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Every policy that was replaced, most recently replaced first.
    pub fn policy_history(&mut self) -> Result<Vec<PolicyRevision>, StoreError> {
        read::policy_history(&self.conn)
    }

    fn configure(&mut self, file: bool) -> Result<(), StoreError> {
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        if file {
            // WAL lets the server keep reading while the admin CLI writes, and makes commits
            // cheap appends instead of rewriting pages in place.
            let mode: String = self
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(db)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Db(format!(
                    "cannot switch the database to WAL mode (still {mode}); is it on a network \
                     file system?"
                )));
            }
        }
        // Durability: in WAL mode with synchronous=NORMAL every commit is written to the WAL
        // file before the call returns, but the WAL is fsynced only at checkpoints. A crash of
        // this process (kill -9, panic, OOM) therefore loses nothing committed: the bytes are in
        // the kernel's page cache and the next open replays the WAL. Only an OS crash or power
        // loss can roll back the last few commits, and even then the database stays consistent
        // (never half a transaction, never corruption).
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(db)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let Err(first) = embedded::migrations::runner().run(&mut self.conn) else {
            return Ok(());
        };
        tracing::debug!(error = %first, "schema migration failed; retrying once");
        // Two processes opening a brand-new file at once can both try to apply V1; the loser
        // fails on the tables the winner just created. Running again finds V1 recorded and has
        // nothing left to do. A real failure (a bad or newer schema) fails the same way twice.
        embedded::migrations::runner()
            .run(&mut self.conn)
            .map(|_| ())
            .map_err(|e| migration_error(&e))
    }

    /// Starts a write transaction that takes the write lock at once (waiting up to
    /// [`BUSY_TIMEOUT`]). A deferred transaction that reads first and then writes could fail
    /// immediately with SQLITE_BUSY when the other process committed in between.
    fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)
    }

    /// Says which parent of a node or auth key is missing after a foreign key failure.
    fn missing_parent(
        &self,
        child: &str,
        user: Option<UserId>,
        auth_key: Option<AuthKeyId>,
    ) -> StoreError {
        let exists = |table: &str, id: i64| -> bool {
            let sql = format!("SELECT 1 FROM {table} WHERE id = ?1");
            self.conn
                .query_row(&sql, [id], |_| Ok(()))
                .optional()
                // If the lookup itself fails, claim nothing and fall through to the generic
                // message rather than blame a row that may exist.
                .map_or(true, |row| row.is_some())
        };
        if let Some(u) = user.filter(|u| !exists("users", u.0)) {
            return StoreError::NotFound(format!("user {u} (owner of {child})"));
        }
        if let Some(k) = auth_key.filter(|k| !exists("auth_keys", k.0)) {
            return StoreError::NotFound(format!("auth key {k} (used by {child})"));
        }
        StoreError::NotFound(format!("a user or auth key referred to by {child}"))
    }
}

fn migration_error(e: &refinery::Error) -> StoreError {
    let hint = match e.kind() {
        refinery::error::Kind::MissingVersion(_) => {
            " (the database was written by a newer version of control; upgrade, or restore a \
             backup made before the upgrade)"
        }
        refinery::error::Kind::DivergentVersion(..) => {
            " (this build's migration files differ from the ones applied to the database)"
        }
        _ => "",
    };
    StoreError::Migration(format!("{e}{hint}"))
}

const SERVER_KEY_NOISE: &str = "noise";
const SERVER_KEY_DERP: &str = "derp";

fn read_server_key(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    conn.query_row(
        "SELECT privkey FROM server_keys WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(format!("server key {name:?} is not text"))
        }
        other => db(other),
    })
}

fn write_server_key(conn: &Connection, name: &str, text: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO server_keys (name, privkey) VALUES (?1, ?2)",
        [name, text],
    )
    .map(|_| ())
    .map_err(db)
}

/// The parse error is dropped on purpose: its message quotes the start of the stored text,
/// which would put secret key material into logs.
fn corrupt_key(name: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "server key {name:?} is not a valid privkey: value (withheld)"
    ))
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        // One read transaction, so a concurrent writer cannot make, say, a node appear whose
        // user is missing from this snapshot.
        let tx = self.conn.transaction().map_err(db)?;
        let snapshot = Snapshot {
            users: read::users(&tx)?,
            nodes: read::nodes(&tx)?,
            auth_keys: read::auth_keys(&tx)?,
            api_keys: read::api_keys(&tx)?,
            policy: read::policy(&tx)?,
        };
        tx.commit().map_err(db)?;
        Ok(snapshot)
    }

    fn data_version(&mut self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db)
    }

    fn server_keys(
        &mut self,
        make: &mut dyn FnMut() -> ServerKeys,
    ) -> Result<ServerKeys, StoreError> {
        // Immediate: if the server and the CLI start together on a new file, one of them
        // creates the keys and the other waits and then reads the same keys.
        let tx = self.write_tx()?;
        let noise = read_server_key(&tx, SERVER_KEY_NOISE)?;
        let derp = read_server_key(&tx, SERVER_KEY_DERP)?;
        // Fill in only what is missing, so a key added in a later version never replaces one
        // that clients already trust.
        let fresh = match (&noise, &derp) {
            (Some(_), Some(_)) => None,
            _ => Some(make()),
        };
        let noise = match (noise, &fresh) {
            (Some(t), _) => {
                MachinePrivate::from_text(&t).map_err(|_| corrupt_key(SERVER_KEY_NOISE))?
            }
            (None, Some(f)) => {
                write_server_key(&tx, SERVER_KEY_NOISE, &f.noise.to_text())?;
                f.noise.clone()
            }
            (None, None) => return Err(corrupt_key(SERVER_KEY_NOISE)),
        };
        let derp = match (derp, &fresh) {
            (Some(t), _) => NodePrivate::from_text(&t).map_err(|_| corrupt_key(SERVER_KEY_DERP))?,
            (None, Some(f)) => {
                write_server_key(&tx, SERVER_KEY_DERP, &f.derp.to_text())?;
                f.derp.clone()
            }
            (None, None) => return Err(corrupt_key(SERVER_KEY_DERP)),
        };
        tx.commit().map_err(db)?;
        Ok(ServerKeys { noise, derp })
    }

    fn insert_user(&mut self, user: &User) -> Result<UserId, StoreError> {
        self.conn
            .execute(
                "INSERT INTO users (login_name, display_name, created) VALUES (?1, ?2, ?3)",
                params![user.login_name, user.display_name, ts_text(&user.created)?],
            )
            .map_err(|e| write_err(e, |_| Some(format!("user {}", user.login_name))))?;
        Ok(UserId(self.conn.last_insert_rowid()))
    }

    fn update_user(&mut self, user: &User) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE users SET login_name = ?2, display_name = ?3, created = ?4 WHERE id = ?1",
                params![
                    user.id.0,
                    user.login_name,
                    user.display_name,
                    ts_text(&user.created)?
                ],
            )
            .map_err(|e| write_err(e, |_| Some(format!("user {}", user.login_name))))?;
        found(n, || format!("user {}", user.id))
    }

    fn delete_user(&mut self, id: UserId) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let login: Option<String> = tx
            .query_row("SELECT login_name FROM users WHERE id = ?1", [id.0], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        let Some(login) = login else {
            return Err(StoreError::NotFound(format!("user {id}")));
        };
        let nodes: i64 = tx
            .query_row(
                "SELECT count(*) FROM nodes WHERE user_id = ?1",
                [id.0],
                |r| r.get(0),
            )
            .map_err(db)?;
        if nodes > 0 {
            // Reads with the Conflict prefix: "already exists: 2 node(s) owned by user …".
            return Err(StoreError::Conflict(format!(
                "{nodes} node(s) owned by user {login}; delete them before the user"
            )));
        }
        // The user's auth keys stay (ON DELETE SET NULL clears their owner); callers revoke
        // them first and mirror `user_id = None` in memory.
        tx.execute("DELETE FROM users WHERE id = ?1", [id.0])
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn insert_node(&mut self, node: &Node) -> Result<NodeId, StoreError> {
        let values = node_values(node)?;
        let res = self.conn.execute(
            "INSERT INTO nodes (machine_key, node_key, disco_key, user_id, tags, hostname, \
             given_name, ipv4, ipv6, endpoints, hostinfo, home_derp, created, last_seen, \
             key_expiry, ephemeral, authorized, approved_routes, auth_key_id) \
             VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, ?19, ?20)",
            params_from_iter(values),
        );
        self.node_write_result(node, res)?;
        Ok(NodeId(self.conn.last_insert_rowid()))
    }

    fn update_node(&mut self, node: &Node) -> Result<(), StoreError> {
        let values = node_values(node)?;
        let res = self.conn.execute(
            "UPDATE nodes SET machine_key = ?2, node_key = ?3, disco_key = ?4, user_id = ?5, \
             tags = ?6, hostname = ?7, given_name = ?8, ipv4 = ?9, ipv6 = ?10, endpoints = ?11, \
             hostinfo = ?12, home_derp = ?13, created = ?14, last_seen = ?15, key_expiry = ?16, \
             ephemeral = ?17, authorized = ?18, approved_routes = ?19, auth_key_id = ?20 \
             WHERE id = ?1",
            params_from_iter(values),
        );
        let n = self.node_write_result(node, res)?;
        found(n, || format!("node {}", node.id))
    }

    fn delete_node(&mut self, id: NodeId) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM nodes WHERE id = ?1", [id.0])
            .map_err(db)?;
        found(n, || format!("node {id}"))
    }

    fn insert_auth_key(&mut self, key: &AuthKey) -> Result<AuthKeyId, StoreError> {
        let res = self.conn.execute(
            "INSERT INTO auth_keys (key_id, secret_hash, user_id, reusable, ephemeral, \
             preauthorized, tags, description, created, expires, revoked, uses) \
             VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params_from_iter(auth_key_values(key)?),
        );
        self.auth_key_write_result(key, res)?;
        Ok(AuthKeyId(self.conn.last_insert_rowid()))
    }

    fn update_auth_key(&mut self, key: &AuthKey) -> Result<(), StoreError> {
        let res = self.conn.execute(
            "UPDATE auth_keys SET key_id = ?2, secret_hash = ?3, user_id = ?4, reusable = ?5, \
             ephemeral = ?6, preauthorized = ?7, tags = ?8, description = ?9, created = ?10, \
             expires = ?11, revoked = ?12, uses = ?13 WHERE id = ?1",
            params_from_iter(auth_key_values(key)?),
        );
        let n = self.auth_key_write_result(key, res)?;
        found(n, || format!("auth key {}", key.id))
    }

    fn delete_auth_key(&mut self, id: AuthKeyId) -> Result<(), StoreError> {
        // Nodes that registered with it keep existing; their auth_key_id becomes NULL in the
        // database (ON DELETE SET NULL), which the caller mirrors in memory.
        let n = self
            .conn
            .execute("DELETE FROM auth_keys WHERE id = ?1", [id.0])
            .map_err(db)?;
        found(n, || format!("auth key {id}"))
    }

    fn insert_api_key(&mut self, key: &ApiKey) -> Result<ApiKeyId, StoreError> {
        self.conn
            .execute(
                "INSERT INTO api_keys (key_id, secret_hash, description, created, expires, \
                 revoked) VALUES (?2, ?3, ?4, ?5, ?6, ?7)",
                params_from_iter(api_key_values(key)?),
            )
            .map_err(|e| write_err(e, |_| Some(format!("API key {}", key.key_id))))?;
        Ok(ApiKeyId(self.conn.last_insert_rowid()))
    }

    fn update_api_key(&mut self, key: &ApiKey) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE api_keys SET key_id = ?2, secret_hash = ?3, description = ?4, \
                 created = ?5, expires = ?6, revoked = ?7 WHERE id = ?1",
                params_from_iter(api_key_values(key)?),
            )
            .map_err(|e| write_err(e, |_| Some(format!("API key {}", key.key_id))))?;
        found(n, || format!("API key {}", key.id))
    }

    fn set_policy(&mut self, policy: &PolicyRecord) -> Result<(), StoreError> {
        let updated = ts_text(&policy.updated)?;
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO policy_history (text, updated, replaced) \
             SELECT text, updated, ?1 FROM policy WHERE id = 1",
            [&updated],
        )
        .map_err(db)?;
        tx.execute(
            "INSERT INTO policy (id, text, updated) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, updated = excluded.updated",
            params![policy.text, updated],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn append_audit(&mut self, event: &AuditEvent) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO audit_log (at, actor, action, target, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    ts_text(&event.at)?,
                    event.actor,
                    event.action,
                    event.target,
                    json_text(&event.detail, "audit detail")?,
                ],
            )
            .map_err(db)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn list_audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        read::audit(&self.conn, query)
    }
}

impl SqliteStore {
    fn node_write_result(
        &self,
        node: &Node,
        res: rusqlite::Result<usize>,
    ) -> Result<usize, StoreError> {
        res.map_err(|e| {
            if violation(&e) == Some(Violation::ForeignKey) {
                let child = format!("node {}", node.given_name);
                return self.missing_parent(&child, node.user_id, node.auth_key_id);
            }
            write_err(e, |cols| match cols {
                "nodes.node_key" => Some(format!("node key {} (another node)", node.node_key)),
                "nodes.given_name" => Some(format!("node name {}", node.given_name)),
                "nodes.ipv4" => node.ipv4.map(|ip| format!("node with address {ip}")),
                "nodes.ipv6" => node.ipv6.map(|ip| format!("node with address {ip}")),
                _ => None,
            })
        })
    }

    fn auth_key_write_result(
        &self,
        key: &AuthKey,
        res: rusqlite::Result<usize>,
    ) -> Result<usize, StoreError> {
        res.map_err(|e| {
            if violation(&e) == Some(Violation::ForeignKey) {
                let child = format!("auth key {}", key.key_id);
                return self.missing_parent(&child, key.user_id, None);
            }
            write_err(e, |_| Some(format!("auth key {}", key.key_id)))
        })
    }
}

/// `Ok` if a statement changed a row, else [`StoreError::NotFound`] naming it.
fn found(changed: usize, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if changed == 0 {
        Err(StoreError::NotFound(what()))
    } else {
        Ok(())
    }
}
