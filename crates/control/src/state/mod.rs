//! The tailnet in memory, and every rule that changes it.
//!
//! [`Tailnet`] holds users, nodes, keys and the policy, loaded from the [`Store`] at start.
//! Each mutation checks its rules, writes the changed rows through to the store, appends an
//! audit entry and bumps the *generation*: map sessions watch the generation and recompute
//! their node's map when it moves (see [`crate::mapper`]).
//!
//! Time is an argument (`now`) everywhere; nothing here reads a clock. The server shares one
//! `Tailnet` behind a mutex that is never held across an `.await`.
//!
//! Another process (the admin CLI) may write to the same database. [`Tailnet::refresh`] checks
//! the store's data version and reloads everything when it moved.

pub mod keys;
pub mod names;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use chrono::Duration;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proto::keys::{DiscoPublic, MachinePublic, NodePublic};
use rand::Rng;

use crate::model::{
    ApiKey, ApiKeyId, AuditEvent, AuthKey, AuthKeyId, Node, NodeId, PolicyRecord, Timestamp, User,
    UserId,
};
use crate::policy::{CompileContext, Compiled, Policy, PolicyError, TagOwnerCheck};
use crate::store::{AuditQuery, Store, StoreError};

pub use routes::Primaries;

/// Settings the tailnet rules depend on.
#[derive(Debug, Clone)]
pub struct TailnetConfig {
    /// MagicDNS suffix, e.g. `tail.test` (no trailing dot).
    pub base_domain: String,
    pub ipv4_pool: Ipv4Net,
    pub ipv6_pool: Ipv6Net,
    /// Default node key lifetime; `None` = keys never expire.
    pub node_key_expiry: Option<Duration>,
    /// New devices need `control nodes approve` unless their auth key is pre-approved.
    pub device_approval: bool,
    /// How long an ephemeral node may stay disconnected before it is deleted.
    pub ephemeral_grace: Duration,
    /// The public server URL (used in SSH check-mode URLs).
    pub server_url: String,
}

impl Default for TailnetConfig {
    fn default() -> Self {
        TailnetConfig {
            base_domain: "tail.test".to_string(),
            ipv4_pool: Ipv4Net::new_assert(std::net::Ipv4Addr::new(100, 64, 0, 0), 10),
            ipv6_pool: Ipv6Net::new_assert(
                std::net::Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0),
                48,
            ),
            node_key_expiry: Some(Duration::days(180)),
            device_approval: false,
            ephemeral_grace: Duration::seconds(120),
            server_url: "http://127.0.0.1:8080".to_string(),
        }
    }
}

/// Why an operation on the tailnet was refused. Messages are shown to users as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// A named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is well-formed but not allowed.
    #[error("{0}")]
    Invalid(String),
    /// The address pools are exhausted.
    #[error("no free IP addresses left in the tailnet's pool")]
    PoolExhausted,
}

/// How a registration attempt failed, in the words the client shows its user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthKeyError {
    #[error("invalid key: this auth key does not exist")]
    Invalid,
    #[error("invalid key: this auth key has expired")]
    Expired,
    #[error("invalid key: this auth key has already been used")]
    AlreadyUsed,
    #[error("invalid key: this auth key has been revoked")]
    Revoked,
}

/// What the client asked for in `/machine/register`, stripped to what the rules need.
#[derive(Debug, Clone, Default)]
pub struct RegisterInput {
    pub node_key: NodePublic,
    pub old_node_key: NodePublic,
    pub auth_key: Option<String>,
    /// A requested expiry; in the past means "log out".
    pub expiry: Option<Timestamp>,
    pub hostinfo: serde_json::Value,
    pub ephemeral: bool,
}

/// The answer to a registration.
#[derive(Debug, Clone, Default)]
pub struct RegisterOutcome {
    pub node_id: Option<NodeId>,
    pub user: Option<User>,
    pub machine_authorized: bool,
    pub node_key_expired: bool,
    /// Non-empty: registration failed; the client shows this text.
    pub error: String,
}

/// Options for a new auth key.
#[derive(Debug, Clone, Default)]
pub struct AuthKeyOptions {
    pub user: Option<String>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub preauthorized: bool,
    pub tags: Vec<String>,
    pub expiry: Option<Duration>,
    pub description: String,
}

/// Who is making an administrative change (for the audit log).
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    pub fn cli() -> Self {
        Actor("cli".to_string())
    }
    pub fn system() -> Self {
        Actor("system".to_string())
    }
}

/// The tailnet: all records plus derived indexes, the compiled policy and liveness.
pub struct Tailnet {
    store: Box<dyn Store>,
    cfg: TailnetConfig,
    users: BTreeMap<UserId, User>,
    nodes: BTreeMap<NodeId, Node>,
    auth_keys: BTreeMap<AuthKeyId, AuthKey>,
    api_keys: BTreeMap<ApiKeyId, ApiKey>,
    policy_record: Option<PolicyRecord>,
    policy: Option<Policy>,
    compiled: Option<Arc<Compiled>>,
    /// Open map streams per node; a node with one or more is online.
    sessions: BTreeMap<NodeId, usize>,
    /// When each offline node was last seen disconnecting (for ephemeral clean-up).
    disconnected_at: BTreeMap<NodeId, Timestamp>,
    primaries: Primaries,
    data_version: i64,
    generation: u64,
    notify: tokio::sync::watch::Sender<u64>,
}

impl Tailnet {
    /// Loads the tailnet from `store`.
    pub fn load(mut store: Box<dyn Store>, cfg: TailnetConfig) -> Result<Self, StateError> {
        let data_version = store.data_version()?;
        let (notify, _) = tokio::sync::watch::channel(0);
        let mut t = Tailnet {
            store,
            cfg,
            users: BTreeMap::new(),
            nodes: BTreeMap::new(),
            auth_keys: BTreeMap::new(),
            api_keys: BTreeMap::new(),
            policy_record: None,
            policy: None,
            compiled: None,
            sessions: BTreeMap::new(),
            disconnected_at: BTreeMap::new(),
            primaries: Primaries::default(),
            data_version,
            generation: 0,
            notify,
        };
        t.reload()?;
        Ok(t)
    }

    fn reload(&mut self) -> Result<(), StateError> {
        let snap = self.store.load()?;
        self.users = snap.users.into_iter().map(|u| (u.id, u)).collect();
        self.nodes = snap.nodes.into_iter().map(|n| (n.id, n)).collect();
        self.auth_keys = snap.auth_keys.into_iter().map(|k| (k.id, k)).collect();
        self.api_keys = snap.api_keys.into_iter().map(|k| (k.id, k)).collect();
        self.policy = match &snap.policy {
            // A stored policy was valid when it was written; if a newer build rejects it, keep
            // serving allow-nothing rather than allow-all, and say so.
            Some(rec) => match Policy::parse(&rec.text) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "stored policy no longer parses; denying all traffic until it is fixed");
                    Policy::parse("{}").ok()
                }
            },
            None => None,
        };
        self.policy_record = snap.policy;
        self.sessions.retain(|id, _| self.nodes.contains_key(id));
        self.changed_topology();
        Ok(())
    }

    /// Reloads if another process wrote to the database. Returns whether it did.
    pub fn refresh(&mut self) -> Result<bool, StateError> {
        let v = self.store.data_version()?;
        if v == self.data_version {
            return Ok(false);
        }
        self.data_version = v;
        self.reload()?;
        Ok(true)
    }

    /// Settings.
    pub fn config(&self) -> &TailnetConfig {
        &self.cfg
    }

    /// A receiver that sees the generation move on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn bump(&mut self) {
        self.generation += 1;
        self.notify.send_replace(self.generation);
    }

    /// Something that affects the policy's view changed (nodes, users, tags, routes, policy).
    fn changed_topology(&mut self) {
        self.compiled = None;
        self.primaries.recompute(&self.nodes, &self.sessions);
        self.bump();
    }

    fn audit(
        &mut self,
        actor: &Actor,
        action: &str,
        target: String,
        detail: serde_json::Value,
        now: Timestamp,
    ) {
        let ev = AuditEvent {
            id: 0,
            at: now,
            actor: actor.0.clone(),
            action: action.to_string(),
            target,
            detail,
        };
        if let Err(e) = self.store.append_audit(&ev) {
            tracing::error!(error = %e, action, "could not write audit entry");
        }
    }

    // ----- reads -----

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
    pub fn user(&self, id: UserId) -> Option<&User> {
        self.users.get(&id)
    }
    pub fn user_by_login(&self, login: &str) -> Option<&User> {
        self.users
            .values()
            .find(|u| u.login_name.eq_ignore_ascii_case(login))
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }
    pub fn node_by_key(&self, key: &NodePublic) -> Option<&Node> {
        self.nodes.values().find(|n| &n.node_key == key)
    }
    /// Finds a node by id, MagicDNS name, hostname or tailnet IP.
    pub fn find_node(&self, what: &str) -> Option<&Node> {
        if let Ok(id) = what.parse::<i64>()
            && let Some(n) = self.nodes.get(&NodeId(id))
        {
            return Some(n);
        }
        let ip: Option<IpAddr> = what.parse().ok();
        let fqdn_suffix = format!(".{}", self.cfg.base_domain);
        let short = what
            .trim_end_matches('.')
            .trim_end_matches(fqdn_suffix.as_str());
        self.nodes.values().find(|n| {
            n.given_name == short
                || ip.is_some_and(|ip| {
                    n.ipv4.map(IpAddr::V4) == Some(ip) || n.ipv6.map(IpAddr::V6) == Some(ip)
                })
        })
    }
    pub fn auth_keys(&self) -> impl Iterator<Item = &AuthKey> {
        self.auth_keys.values()
    }
    pub fn api_keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.api_keys.values()
    }
    pub fn policy_record(&self) -> Option<&PolicyRecord> {
        self.policy_record.as_ref()
    }
    pub fn is_online(&self, id: NodeId) -> bool {
        self.sessions.get(&id).is_some_and(|n| *n > 0)
    }
    pub fn primaries(&self) -> &Primaries {
        &self.primaries
    }
    pub fn audit_log(&mut self, q: &AuditQuery) -> Result<Vec<AuditEvent>, StateError> {
        Ok(self.store.list_audit(q)?)
    }

    /// The policy compiled for the current topology (cached until something changes).
    /// `now` decides which keys count as expired; the cache is dropped when one expires.
    pub fn compiled(&mut self, now: Timestamp) -> Arc<Compiled> {
        if let Some(c) = &self.compiled {
            return Arc::clone(c);
        }
        let users: Vec<User> = self.users.values().cloned().collect();
        let nodes: Vec<Node> = self.nodes.values().cloned().collect();
        let ctx = CompileContext {
            now,
            server_url: self.cfg.server_url.clone(),
        };
        let c = Arc::new(match &self.policy {
            Some(p) => p.compile(&users, &nodes, &ctx),
            None => Policy::allow_all().compile(&users, &nodes, &ctx),
        });
        self.compiled = Some(Arc::clone(&c));
        c
    }

    // ----- registration -----

    /// Handles `/machine/register` from the machine `machine` at `now`.
    pub fn register(
        &mut self,
        machine: MachinePublic,
        req: RegisterInput,
        now: Timestamp,
        rng: &mut impl Rng,
    ) -> Result<RegisterOutcome, StateError> {
        // Logout: an expiry in the past.
        if let Some(exp) = req.expiry
            && exp <= now
        {
            return self.logout(machine, req.node_key, now);
        }

        if let Some(existing) = self.node_by_key(&req.node_key).cloned() {
            if existing.machine_key != machine {
                return Ok(fail("this node key is registered to another machine"));
            }
            if !existing.is_expired(now) {
                // A restart or a repeated login: the node keeps its identity and settings.
                return Ok(self.outcome_for(&existing, now));
            }
            if req.auth_key.is_none() {
                return Ok(RegisterOutcome {
                    node_id: Some(existing.id),
                    node_key_expired: true,
                    ..fail("node key expired; log in again with an auth key")
                });
            }
        }

        // Rotation: same machine, a new node key replacing `old_node_key`.
        let rotating = (!req.old_node_key.is_zero())
            .then(|| {
                self.node_by_key(&req.old_node_key)
                    .filter(|n| n.machine_key == machine)
                    .cloned()
            })
            .flatten();
        if let Some(old) = &rotating
            && !old.is_expired(now)
            && req.auth_key.is_none()
        {
            return self.rekey(old.id, req.node_key, now);
        }

        let Some(auth_text) = req.auth_key.as_deref().filter(|k| !k.is_empty()) else {
            return Ok(fail(
                "this control server needs an auth key: run `agent up --authkey <key>` with a key from `control keys create`",
            ));
        };
        let key = match self.validate_auth_key(auth_text, now) {
            Ok(k) => k,
            Err(e) => {
                tracing::info!(reason = %e, "registration refused");
                return Ok(fail(&e.to_string()));
            }
        };

        // Tags: the key's, plus any the client requests that the key's owner may own.
        let requested: Vec<String> = req
            .hostinfo
            .get("RequestTags")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut tags: BTreeSet<String> = key.tags.iter().cloned().collect();
        for t in requested {
            if tags.contains(&t) {
                continue;
            }
            if !self.may_own_tag(&t, key.user_id, &key.tags) {
                return Ok(fail(&format!(
                    "requested tags [{t}] are invalid or not permitted: the auth key's owner is not in tagOwners for {t}"
                )));
            }
            tags.insert(t);
        }
        let tags: Vec<String> = tags.into_iter().collect();

        let expiry = if !tags.is_empty() {
            None
        } else {
            match req.expiry {
                Some(e) => Some(e),
                None => self.cfg.node_key_expiry.map(|d| now + d),
            }
        };

        // Reuse a node of this machine (re-login after expiry or rotation), else create one.
        let reuse = rotating.or_else(|| {
            self.nodes
                .values()
                .find(|n| n.machine_key == machine)
                .cloned()
        });
        let node = match reuse {
            Some(mut n) => {
                n.node_key = req.node_key;
                n.key_expiry = expiry;
                n.tags = tags;
                n.user_id = if n.tags.is_empty() { key.user_id } else { None };
                n.auth_key_id = Some(key.id);
                n.hostinfo = req.hostinfo.clone();
                n.ephemeral = key.ephemeral || req.ephemeral;
                if key.preauthorized || !self.cfg.device_approval {
                    n.authorized = true;
                }
                self.store.update_node(&n)?;
                self.audit(
                    &Actor(format!("node:{}", n.id)),
                    "node.relogin",
                    format!("node:{}", n.id),
                    serde_json::json!({"auth_key": key.key_id}),
                    now,
                );
                n
            }
            None => self.create_node(machine, &req, &key, tags, expiry, now)?,
        };
        self.use_auth_key(key.id)?;
        let id = node.id;
        self.nodes.insert(id, node);
        self.auto_approve_routes(id, now)?;
        self.changed_topology();
        let node = self
            .nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("node {id}")))?;
        let _ = rng; // randomness is reserved for random IP allocation (a later option)
        Ok(self.outcome_for(&node, now))
    }

    fn create_node(
        &mut self,
        machine: MachinePublic,
        req: &RegisterInput,
        key: &AuthKey,
        tags: Vec<String>,
        expiry: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Node, StateError> {
        let used: BTreeSet<IpAddr> = self
            .nodes
            .values()
            .flat_map(|n| {
                n.ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(n.ipv6.map(IpAddr::V6))
            })
            .collect();
        let ipv4 =
            names::allocate_v4(self.cfg.ipv4_pool, &used).ok_or(StateError::PoolExhausted)?;
        let ipv6 =
            names::allocate_v6(self.cfg.ipv6_pool, &used).ok_or(StateError::PoolExhausted)?;
        let hostname = req
            .hostinfo
            .get("Hostname")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let taken: BTreeSet<&str> = self.nodes.values().map(|n| n.given_name.as_str()).collect();
        let given_name = names::unique_name(&names::sanitize_hostname(&hostname), &taken);
        let mut node = Node {
            id: NodeId(0),
            machine_key: machine,
            node_key: req.node_key,
            disco_key: DiscoPublic::zero(),
            user_id: if tags.is_empty() { key.user_id } else { None },
            tags,
            hostname,
            given_name,
            ipv4: Some(ipv4),
            ipv6: Some(ipv6),
            endpoints: Vec::new(),
            hostinfo: req.hostinfo.clone(),
            home_derp: 0,
            created: now,
            last_seen: None,
            key_expiry: expiry,
            ephemeral: key.ephemeral || req.ephemeral,
            authorized: key.preauthorized || !self.cfg.device_approval,
            approved_routes: Vec::new(),
            auth_key_id: Some(key.id),
        };
        node.id = self.store.insert_node(&node)?;
        tracing::info!(node = %node.id, name = %node.given_name, "node registered");
        self.audit(
            &Actor(format!("authkey:{}", key.key_id)),
            "node.register",
            format!("node:{}", node.id),
            serde_json::json!({"name": node.given_name, "ipv4": ipv4, "ipv6": ipv6, "tags": node.tags, "ephemeral": node.ephemeral}),
            now,
        );
        Ok(node)
    }

    fn rekey(
        &mut self,
        id: NodeId,
        new_key: NodePublic,
        now: Timestamp,
    ) -> Result<RegisterOutcome, StateError> {
        let Some(mut n) = self.nodes.get(&id).cloned() else {
            return Err(StateError::NotFound(format!("node {id}")));
        };
        n.node_key = new_key;
        if n.key_expiry.is_some() {
            n.key_expiry = self.cfg.node_key_expiry.map(|d| now + d);
        }
        self.store.update_node(&n)?;
        self.audit(
            &Actor(format!("node:{id}")),
            "node.rotate_key",
            format!("node:{id}"),
            serde_json::json!({}),
            now,
        );
        self.nodes.insert(id, n.clone());
        self.changed_topology();
        Ok(self.outcome_for(&n, now))
    }

    fn logout(
        &mut self,
        machine: MachinePublic,
        key: NodePublic,
        now: Timestamp,
    ) -> Result<RegisterOutcome, StateError> {
        let Some(n) = self.node_by_key(&key).cloned() else {
            return Ok(RegisterOutcome {
                node_key_expired: true,
                ..Default::default()
            });
        };
        if n.machine_key != machine {
            return Ok(fail("this node key is registered to another machine"));
        }
        if n.ephemeral {
            self.delete_node_inner(n.id, &Actor(format!("node:{}", n.id)), "node.logout", now)?;
            return Ok(RegisterOutcome {
                node_key_expired: true,
                ..Default::default()
            });
        }
        let mut n2 = n.clone();
        n2.key_expiry = Some(now);
        self.store.update_node(&n2)?;
        self.audit(
            &Actor(format!("node:{}", n.id)),
            "node.logout",
            format!("node:{}", n.id),
            serde_json::json!({}),
            now,
        );
        self.nodes.insert(n.id, n2.clone());
        self.changed_topology();
        Ok(RegisterOutcome {
            node_key_expired: true,
            ..self.outcome_for(&n2, now)
        })
    }

    fn outcome_for(&self, n: &Node, now: Timestamp) -> RegisterOutcome {
        RegisterOutcome {
            node_id: Some(n.id),
            user: n.user_id.and_then(|u| self.users.get(&u).cloned()),
            machine_authorized: n.authorized,
            node_key_expired: n.is_expired(now),
            error: String::new(),
        }
    }

    fn validate_auth_key(&self, text: &str, now: Timestamp) -> Result<AuthKey, AuthKeyError> {
        let id = keys::key_id_of(keys::KeyKind::Auth, text).ok_or(AuthKeyError::Invalid)?;
        let key = self
            .auth_keys
            .values()
            .find(|k| k.key_id == id)
            .ok_or(AuthKeyError::Invalid)?;
        if !keys::verify(text, &key.secret_hash) {
            return Err(AuthKeyError::Invalid);
        }
        if key.revoked.is_some() {
            return Err(AuthKeyError::Revoked);
        }
        if key.expires.is_some_and(|e| e <= now) {
            return Err(AuthKeyError::Expired);
        }
        if !key.reusable && key.uses > 0 {
            return Err(AuthKeyError::AlreadyUsed);
        }
        Ok(key.clone())
    }

    fn use_auth_key(&mut self, id: AuthKeyId) -> Result<(), StateError> {
        if let Some(k) = self.auth_keys.get_mut(&id) {
            k.uses += 1;
            let k = k.clone();
            self.store.update_auth_key(&k)?;
        }
        Ok(())
    }

    fn may_own_tag(&self, tag: &str, user: Option<UserId>, held: &[String]) -> bool {
        let Some(p) = &self.policy else {
            // No policy: like an empty tagOwners, nobody may claim tags on their own.
            return false;
        };
        if !held.is_empty() && p.may_own_tag(tag, TagOwnerCheck::Tags(held)) {
            return true;
        }
        user.and_then(|u| self.users.get(&u)).is_some_and(|u| {
            p.may_own_tag(
                tag,
                TagOwnerCheck::User {
                    login_name: &u.login_name,
                    is_admin: false,
                },
            )
        })
    }

    // ----- map sessions -----

    /// Applies what a map request reports (disco key, endpoints, Hostinfo). Returns the node id.
    pub fn update_from_map_request(
        &mut self,
        machine: MachinePublic,
        node_key: NodePublic,
        disco_key: Option<DiscoPublic>,
        endpoints: Option<Vec<String>>,
        hostinfo: Option<serde_json::Value>,
        now: Timestamp,
    ) -> Result<NodeId, StateError> {
        let Some(mut n) = self.node_by_key(&node_key).cloned() else {
            return Err(StateError::NotFound("node for this node key".into()));
        };
        if n.machine_key != machine {
            return Err(StateError::Invalid(
                "node key does not belong to this machine".into(),
            ));
        }
        let before = n.clone();
        if let Some(d) = disco_key.filter(|d| !d.is_zero()) {
            n.disco_key = d;
        }
        if let Some(e) = endpoints {
            n.endpoints = e;
        }
        let mut topology = false;
        if let Some(mut h) = hostinfo {
            // Since v1.66 the client may omit an unchanged NetInfo: keep the previous one.
            if h.get("NetInfo").is_none()
                && let (Some(obj), Some(prev)) = (h.as_object_mut(), before.hostinfo.get("NetInfo"))
            {
                obj.insert("NetInfo".into(), prev.clone());
            }
            if let Some(d) = h.pointer("/NetInfo/PreferredDERP").and_then(|v| v.as_i64()) {
                n.home_derp = i32::try_from(d).unwrap_or(0);
            }
            topology = before.hostinfo.get("RoutableIPs") != h.get("RoutableIPs");
            if let Some(hn) = h.get("Hostname").and_then(|v| v.as_str()) {
                n.hostname = hn.to_string();
            }
            n.hostinfo = h;
        }
        n.last_seen = Some(now);
        let id = n.id;
        let material = before.disco_key != n.disco_key
            || before.endpoints != n.endpoints
            || before.hostinfo != n.hostinfo
            || before.home_derp != n.home_derp;
        if material {
            self.store.update_node(&n)?;
        }
        self.nodes.insert(id, n);
        if topology {
            self.auto_approve_routes(id, now)?;
            self.changed_topology();
        } else if material {
            self.bump();
        }
        Ok(id)
    }

    /// A map stream for `id` opened.
    pub fn session_started(&mut self, id: NodeId) {
        *self.sessions.entry(id).or_default() += 1;
        self.disconnected_at.remove(&id);
        if self.sessions.get(&id) == Some(&1) {
            self.primaries.recompute(&self.nodes, &self.sessions);
            self.bump();
        }
    }

    /// A map stream for `id` closed at `now`.
    pub fn session_ended(&mut self, id: NodeId, now: Timestamp) {
        let left = match self.sessions.get_mut(&id) {
            Some(c) => {
                *c = c.saturating_sub(1);
                *c
            }
            None => 0,
        };
        if left == 0 {
            self.sessions.remove(&id);
            self.disconnected_at.insert(id, now);
            if let Some(n) = self.nodes.get_mut(&id) {
                n.last_seen = Some(now);
                let n = n.clone();
                if let Err(e) = self.store.update_node(&n) {
                    tracing::warn!(error = %e, "could not record last-seen time");
                }
            }
            self.primaries.recompute(&self.nodes, &self.sessions);
            self.bump();
        }
    }

    /// Periodic housekeeping: removes ephemeral nodes disconnected past the grace period and
    /// announces keys that expired since the last tick. Returns whether anything changed.
    pub fn tick(&mut self, now: Timestamp, last_tick: Timestamp) -> Result<bool, StateError> {
        let grace = self.cfg.ephemeral_grace;
        let stale: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.ephemeral && !self.is_online(n.id))
            .filter(|n| {
                let since = self
                    .disconnected_at
                    .get(&n.id)
                    .copied()
                    .or(n.last_seen)
                    .unwrap_or(n.created);
                since + grace <= now
            })
            .map(|n| n.id)
            .collect();
        let mut changed = false;
        for id in stale {
            self.delete_node_inner(id, &Actor::system(), "node.ephemeral_expire", now)?;
            changed = true;
        }
        let expired_now = self
            .nodes
            .values()
            .any(|n| n.key_expiry.is_some_and(|e| e > last_tick && e <= now));
        if expired_now {
            self.changed_topology();
            changed = true;
        }
        Ok(changed)
    }

    // ----- administration -----

    pub fn create_user(
        &mut self,
        login: &str,
        display: &str,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<User, StateError> {
        let login = login.trim();
        if login.is_empty() || login.chars().any(char::is_whitespace) {
            return Err(StateError::Invalid(format!(
                "invalid user name {login:?}: use a login like alice@example.com"
            )));
        }
        if self.user_by_login(login).is_some() {
            return Err(StateError::Invalid(format!("user {login} already exists")));
        }
        let mut u = User {
            id: UserId(0),
            login_name: login.to_string(),
            display_name: if display.is_empty() {
                login.split('@').next().unwrap_or(login).to_string()
            } else {
                display.to_string()
            },
            created: now,
        };
        u.id = self.store.insert_user(&u)?;
        self.audit(
            actor,
            "user.create",
            format!("user:{login}"),
            serde_json::json!({}),
            now,
        );
        self.users.insert(u.id, u.clone());
        self.changed_topology();
        Ok(u)
    }

    /// Deletes a user and every node it owns.
    pub fn delete_user(
        &mut self,
        login: &str,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let u = self
            .user_by_login(login)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("user {login}")))?;
        let owned: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.user_id == Some(u.id))
            .map(|n| n.id)
            .collect();
        for id in owned {
            self.delete_node_inner(id, actor, "node.delete", now)?;
        }
        for k in self
            .auth_keys
            .values_mut()
            .filter(|k| k.user_id == Some(u.id) && k.revoked.is_none())
        {
            k.revoked = Some(now);
            let k = k.clone();
            self.store.update_auth_key(&k)?;
        }
        self.store.delete_user(u.id)?;
        self.users.remove(&u.id);
        self.audit(
            actor,
            "user.delete",
            format!("user:{login}"),
            serde_json::json!({}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    /// Creates an auth key; returns the record and the secret text (shown once).
    pub fn create_auth_key(
        &mut self,
        opts: AuthKeyOptions,
        actor: &Actor,
        now: Timestamp,
        rng: &mut impl Rng,
    ) -> Result<(AuthKey, String), StateError> {
        for t in &opts.tags {
            check_tag_syntax(t)?;
        }
        let user_id = match &opts.user {
            Some(login) => Some(
                self.user_by_login(login)
                    .ok_or_else(|| {
                        StateError::NotFound(format!(
                            "user {login} (create it with `control users create {login}`)"
                        ))
                    })?
                    .id,
            ),
            None if opts.tags.is_empty() => Some(self.default_user(actor, now)?.id),
            None => None,
        };
        if let Some(p) = &self.policy {
            let login = user_id
                .and_then(|u| self.users.get(&u))
                .map(|u| u.login_name.clone());
            for t in &opts.tags {
                if !p.defined_tags().any(|d| d == t) {
                    return Err(StateError::Invalid(format!(
                        "tag {t} is not defined in the policy's tagOwners"
                    )));
                }
                // An admin minting a tagged key is allowed; a user-bound key only for tags it owns.
                if let (Some(login), Some(_)) = (&login, &opts.user)
                    && !p.may_own_tag(
                        t,
                        TagOwnerCheck::User {
                            login_name: login,
                            is_admin: false,
                        },
                    )
                {
                    return Err(StateError::Invalid(format!(
                        "user {login} may not own {t} (see tagOwners)"
                    )));
                }
            }
        }
        let minted = keys::mint(keys::KeyKind::Auth, rng);
        let mut key = AuthKey {
            id: AuthKeyId(0),
            key_id: minted.key_id,
            secret_hash: minted.secret_hash,
            user_id,
            reusable: opts.reusable,
            ephemeral: opts.ephemeral,
            preauthorized: opts.preauthorized,
            tags: opts.tags,
            description: opts.description,
            created: now,
            expires: opts.expiry.map(|d| now + d),
            revoked: None,
            uses: 0,
        };
        key.id = self.store.insert_auth_key(&key)?;
        self.audit(actor, "authkey.create", format!("authkey:{}", key.key_id), serde_json::json!({
            "reusable": key.reusable, "ephemeral": key.ephemeral, "preauthorized": key.preauthorized,
            "tags": key.tags, "expires": key.expires,
        }), now);
        self.auth_keys.insert(key.id, key.clone());
        Ok((key, minted.text))
    }

    fn default_user(&mut self, actor: &Actor, now: Timestamp) -> Result<User, StateError> {
        let login = format!("admin@{}", self.cfg.base_domain);
        if let Some(u) = self.user_by_login(&login) {
            return Ok(u.clone());
        }
        self.create_user(&login, "Admin", actor, now)
    }

    pub fn revoke_auth_key(
        &mut self,
        key_id: &str,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let k = self
            .auth_keys
            .values_mut()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| StateError::NotFound(format!("auth key {key_id}")))?;
        k.revoked = Some(now);
        let k = k.clone();
        self.store.update_auth_key(&k)?;
        self.audit(
            actor,
            "authkey.revoke",
            format!("authkey:{key_id}"),
            serde_json::json!({}),
            now,
        );
        Ok(())
    }

    pub fn create_api_key(
        &mut self,
        description: &str,
        expiry: Option<Duration>,
        actor: &Actor,
        now: Timestamp,
        rng: &mut impl Rng,
    ) -> Result<(ApiKey, String), StateError> {
        let minted = keys::mint(keys::KeyKind::Api, rng);
        let mut key = ApiKey {
            id: ApiKeyId(0),
            key_id: minted.key_id,
            secret_hash: minted.secret_hash,
            description: description.to_string(),
            created: now,
            expires: expiry.map(|d| now + d),
            revoked: None,
        };
        key.id = self.store.insert_api_key(&key)?;
        self.audit(
            actor,
            "apikey.create",
            format!("apikey:{}", key.key_id),
            serde_json::json!({"expires": key.expires}),
            now,
        );
        self.api_keys.insert(key.id, key.clone());
        Ok((key, minted.text))
    }

    pub fn revoke_api_key(
        &mut self,
        key_id: &str,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let k = self
            .api_keys
            .values_mut()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| StateError::NotFound(format!("API key {key_id}")))?;
        k.revoked = Some(now);
        let k = k.clone();
        self.store.update_api_key(&k)?;
        self.audit(
            actor,
            "apikey.revoke",
            format!("apikey:{key_id}"),
            serde_json::json!({}),
            now,
        );
        Ok(())
    }

    /// Checks a bearer token; returns the key id on success.
    pub fn verify_api_key(&self, token: &str, now: Timestamp) -> Option<String> {
        let id = keys::key_id_of(keys::KeyKind::Api, token)?;
        let k = self.api_keys.values().find(|k| k.key_id == id)?;
        (keys::verify(token, &k.secret_hash)
            && k.revoked.is_none()
            && k.expires.is_none_or(|e| e > now))
        .then(|| k.key_id.clone())
    }

    fn with_node(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Node) -> Result<(), StateError>,
    ) -> Result<Node, StateError> {
        let mut n = self
            .nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("node {id}")))?;
        f(&mut n)?;
        self.store.update_node(&n)?;
        self.nodes.insert(id, n.clone());
        Ok(n)
    }

    pub fn approve_node(
        &mut self,
        id: NodeId,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        self.with_node(id, |n| {
            n.authorized = true;
            Ok(())
        })?;
        self.audit(
            actor,
            "node.approve",
            format!("node:{id}"),
            serde_json::json!({}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    /// Sets a node's key expiry: `Some(t)` expires it at `t` (now to expire at once); `None`
    /// disables expiry.
    pub fn set_node_expiry(
        &mut self,
        id: NodeId,
        expiry: Option<Timestamp>,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        self.with_node(id, |n| {
            n.key_expiry = expiry;
            Ok(())
        })?;
        self.audit(
            actor,
            "node.set_expiry",
            format!("node:{id}"),
            serde_json::json!({"expiry": expiry}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    pub fn delete_node(
        &mut self,
        id: NodeId,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        self.delete_node_inner(id, actor, "node.delete", now)
    }

    fn delete_node_inner(
        &mut self,
        id: NodeId,
        actor: &Actor,
        action: &str,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let n = self
            .nodes
            .remove(&id)
            .ok_or_else(|| StateError::NotFound(format!("node {id}")))?;
        self.store.delete_node(id)?;
        self.sessions.remove(&id);
        self.disconnected_at.remove(&id);
        tracing::info!(node = %id, name = %n.given_name, action, "node removed");
        self.audit(
            actor,
            action,
            format!("node:{id}"),
            serde_json::json!({"name": n.given_name}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    pub fn rename_node(
        &mut self,
        id: NodeId,
        name: &str,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let name = name.trim().to_ascii_lowercase();
        if !names::is_valid_label(&name) {
            return Err(StateError::Invalid(format!(
                "invalid name {name:?}: use lowercase letters, digits and hyphens, at most 63"
            )));
        }
        if self
            .nodes
            .values()
            .any(|n| n.id != id && n.given_name == name)
        {
            return Err(StateError::Invalid(format!(
                "name {name} is already used by another node"
            )));
        }
        let old = self.with_node(id, |n| {
            n.given_name = name.clone();
            Ok(())
        })?;
        self.audit(
            actor,
            "node.rename",
            format!("node:{id}"),
            serde_json::json!({"name": old.given_name}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    pub fn set_node_tags(
        &mut self,
        id: NodeId,
        tags: Vec<String>,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        for t in &tags {
            check_tag_syntax(t)?;
            if let Some(p) = &self.policy
                && !p.defined_tags().any(|d| d == t)
            {
                return Err(StateError::Invalid(format!(
                    "tag {t} is not defined in the policy's tagOwners"
                )));
            }
        }
        let mut tags = tags;
        tags.sort();
        tags.dedup();
        let node_expiry = self.cfg.node_key_expiry;
        self.with_node(id, |n| {
            if tags.is_empty() && n.user_id.is_none() {
                return Err(StateError::Invalid(
                    "a tagged node without an owner cannot drop all its tags".into(),
                ));
            }
            if !tags.is_empty() {
                // Tagged nodes belong to their tags and do not expire.
                n.user_id = None;
                n.key_expiry = None;
            } else if n.key_expiry.is_none() {
                n.key_expiry = node_expiry.map(|d| now + d);
            }
            n.tags = tags.clone();
            Ok(())
        })?;
        self.audit(
            actor,
            "node.set_tags",
            format!("node:{id}"),
            serde_json::json!({"tags": tags}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    /// Replaces a node's approved routes (they take effect only where also advertised).
    pub fn set_approved_routes(
        &mut self,
        id: NodeId,
        routes: Vec<IpNet>,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let mut routes: Vec<IpNet> = routes.into_iter().map(|r| r.trunc()).collect();
        routes.sort();
        routes.dedup();
        self.with_node(id, |n| {
            n.approved_routes = routes.clone();
            Ok(())
        })?;
        self.audit(
            actor,
            "node.routes",
            format!("node:{id}"),
            serde_json::json!({"approved": routes}),
            now,
        );
        self.changed_topology();
        Ok(())
    }

    fn auto_approve_routes(&mut self, id: NodeId, now: Timestamp) -> Result<(), StateError> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        let Some(node) = self.nodes.get(&id) else {
            return Ok(());
        };
        let pending: Vec<IpNet> = node
            .advertised_routes()
            .into_iter()
            .filter(|r| !node.approved_routes.contains(r))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let users: Vec<User> = self.users.values().cloned().collect();
        let new: Vec<IpNet> = pending
            .into_iter()
            .filter(|r| policy.auto_approved(node, &users, *r))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.with_node(id, |n| {
            n.approved_routes.extend(new.iter().copied());
            n.approved_routes.sort();
            n.approved_routes.dedup();
            Ok(())
        })?;
        self.audit(
            &Actor("autoApprovers".into()),
            "node.routes.auto_approve",
            format!("node:{id}"),
            serde_json::json!({"approved": new}),
            now,
        );
        Ok(())
    }

    /// Validates and installs a new policy. A policy that fails to parse, references undefined
    /// names or fails its `tests` is rejected and the old one stays.
    pub fn set_policy(
        &mut self,
        text: &str,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let policy = self.check_policy(text)?;
        let old = self
            .policy_record
            .as_ref()
            .map(|p| p.text.clone())
            .unwrap_or_default();
        let rec = PolicyRecord {
            text: text.to_string(),
            updated: now,
        };
        self.store.set_policy(&rec)?;
        self.audit(
            actor,
            "policy.set",
            "policy".into(),
            serde_json::json!({"diff": line_diff(&old, text)}),
            now,
        );
        self.policy = Some(policy);
        self.policy_record = Some(rec);
        // Routes that the new autoApprovers cover are approved now.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.auto_approve_routes(id, now)?;
        }
        self.changed_topology();
        Ok(())
    }

    /// Parses `text` and runs its tests against the current tailnet, without installing it.
    pub fn check_policy(&self, text: &str) -> Result<Policy, StateError> {
        let policy = Policy::parse(text)?;
        let users: Vec<User> = self.users.values().cloned().collect();
        let nodes: Vec<Node> = self.nodes.values().cloned().collect();
        policy.run_tests(&users, &nodes)?;
        Ok(policy)
    }
}

fn fail(msg: &str) -> RegisterOutcome {
    RegisterOutcome {
        error: msg.to_string(),
        ..Default::default()
    }
}

fn check_tag_syntax(t: &str) -> Result<(), StateError> {
    let ok = t.strip_prefix("tag:").is_some_and(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "invalid tag {t:?}: tags look like tag:name"
        )))
    }
}

/// A minimal line diff for the audit log: lines removed (`-`) and added (`+`).
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let old_lines: BTreeSet<&str> = old.lines().collect();
    let new_lines: BTreeSet<&str> = new.lines().collect();
    let mut out: Vec<String> = old
        .lines()
        .filter(|l| !new_lines.contains(l))
        .map(|l| format!("-{l}"))
        .collect();
    out.extend(
        new.lines()
            .filter(|l| !old_lines.contains(l))
            .map(|l| format!("+{l}")),
    );
    out
}
