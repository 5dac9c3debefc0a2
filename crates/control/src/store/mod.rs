//! Persistence behind one interface, so that PostgreSQL can join SQLite later.
//!
//! The server keeps the whole tailnet in memory ([`crate::state`]) and writes every change
//! through to the store at once, row by row. Admin commands run against the database directly
//! may write from another process; [`Store::data_version`] changes when that happens, and the
//! server then reloads its snapshot.

pub mod sqlite;

use crate::model::{
    ApiKey, ApiKeyId, AuditEvent, AuthKey, AuthKeyId, Node, NodeId, PolicyRecord, ServerKeys,
    Snapshot, User, UserId,
};

/// What went wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("database error: {0}")]
    Db(String),
    /// A schema migration failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// A unique constraint was violated (e.g. duplicate user login or node key).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The row to change does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// Which audit entries to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub limit: Option<usize>,
    pub since: Option<crate::model::Timestamp>,
    pub action_prefix: Option<String>,
}

/// The storage interface. Implementations are synchronous: SQLite calls take microseconds to
/// milliseconds and the server holds them only briefly.
///
/// Ids are assigned by the store on insert: callers pass records with id 0 and get the id back.
pub trait Store: Send {
    /// Loads everything (used at start and after an external write).
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// A number that changes whenever another connection committed a write.
    fn data_version(&mut self) -> Result<i64, StoreError>;

    /// Loads the server's private keys, creating and saving them with `make` on first start.
    fn server_keys(
        &mut self,
        make: &mut dyn FnMut() -> ServerKeys,
    ) -> Result<ServerKeys, StoreError>;

    fn insert_user(&mut self, user: &User) -> Result<UserId, StoreError>;
    fn update_user(&mut self, user: &User) -> Result<(), StoreError>;
    fn delete_user(&mut self, id: UserId) -> Result<(), StoreError>;

    fn insert_node(&mut self, node: &Node) -> Result<NodeId, StoreError>;
    fn update_node(&mut self, node: &Node) -> Result<(), StoreError>;
    fn delete_node(&mut self, id: NodeId) -> Result<(), StoreError>;

    fn insert_auth_key(&mut self, key: &AuthKey) -> Result<AuthKeyId, StoreError>;
    fn update_auth_key(&mut self, key: &AuthKey) -> Result<(), StoreError>;
    fn delete_auth_key(&mut self, id: AuthKeyId) -> Result<(), StoreError>;

    fn insert_api_key(&mut self, key: &ApiKey) -> Result<ApiKeyId, StoreError>;
    fn update_api_key(&mut self, key: &ApiKey) -> Result<(), StoreError>;

    fn set_policy(&mut self, policy: &PolicyRecord) -> Result<(), StoreError>;

    /// Appends an audit entry (its `id` is ignored and assigned).
    fn append_audit(&mut self, event: &AuditEvent) -> Result<i64, StoreError>;
    fn list_audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;
}
