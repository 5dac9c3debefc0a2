//! The coordination server's data model: plain records, as stored and as held in memory.
//!
//! These types carry no behaviour beyond small derived facts; the rules that change them live
//! in [`crate::state`], persistence in [`crate::store`], and policy in [`crate::policy`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use proto::keys::{DiscoPublic, MachinePublic, NodePublic};
use serde::{Deserialize, Serialize};

/// Wall-clock time as stored (UTC).
pub type Timestamp = DateTime<Utc>;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A user's database id (also `tailcfg.UserID`).
    UserId
);
id_type!(
    /// A node's database id (also `tailcfg.NodeID`; `StableID` is its decimal form).
    NodeId
);
id_type!(
    /// An auth key's database id.
    AuthKeyId
);
id_type!(
    /// An API key's database id.
    ApiKeyId
);

/// A human identity. Nodes registered with a user's auth key belong to that user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    /// Login name, usually an email address (`alice@example.com`). Unique.
    pub login_name: String,
    pub display_name: String,
    pub created: Timestamp,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub machine_key: MachinePublic,
    pub node_key: NodePublic,
    pub disco_key: DiscoPublic,
    /// Owning user; `None` for tagged nodes (tags own them).
    pub user_id: Option<UserId>,
    /// ACL tags (`tag:server`), sorted, unique. Non-empty means the node is "tagged".
    pub tags: Vec<String>,
    /// Hostname as the client reported it.
    pub hostname: String,
    /// MagicDNS label (sanitised hostname, unique in the tailnet, admin-renamable).
    pub given_name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Last reported UDP endpoints (`ip:port`).
    pub endpoints: Vec<String>,
    /// Last reported Hostinfo, as the client's JSON object.
    pub hostinfo: serde_json::Value,
    /// Home DERP region reported in NetInfo (0 = unknown).
    pub home_derp: i32,
    pub created: Timestamp,
    pub last_seen: Option<Timestamp>,
    /// When the node key expires; `None` = never (expiry disabled or tagged).
    pub key_expiry: Option<Timestamp>,
    pub ephemeral: bool,
    /// Device approval: an unauthorized node gets no peers and no traffic.
    pub authorized: bool,
    /// Subnet and exit routes approved by an admin or autoApprovers.
    pub approved_routes: Vec<IpNet>,
    /// The auth key it registered with, if any.
    pub auth_key_id: Option<AuthKeyId>,
}

impl Node {
    /// Whether the node is tagged (tag-owned rather than user-owned).
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }

    /// Whether the node key has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.key_expiry.is_some_and(|e| e <= now)
    }

    /// Routes the client advertises (`Hostinfo.RoutableIPs`), unparseable entries skipped.
    pub fn advertised_routes(&self) -> Vec<IpNet> {
        self.hostinfo
            .get("RoutableIPs")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Routes both advertised and approved: the ones that may carry traffic.
    pub fn enabled_routes(&self) -> Vec<IpNet> {
        self.advertised_routes()
            .into_iter()
            .filter(|r| self.approved_routes.contains(r))
            .collect()
    }
}

/// A pre-authentication key (`tskey-auth-…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKey {
    pub id: AuthKeyId,
    /// Public identifier, shown in listings and used in the API path (`k…`).
    pub key_id: String,
    /// SHA-256 of the full secret key text, hex. The secret itself is never stored.
    pub secret_hash: String,
    /// Owner for untagged nodes; tagged keys may have none.
    pub user_id: Option<UserId>,
    pub reusable: bool,
    pub ephemeral: bool,
    /// Nodes registered with it need no device approval.
    pub preauthorized: bool,
    pub tags: Vec<String>,
    pub description: String,
    pub created: Timestamp,
    pub expires: Option<Timestamp>,
    pub revoked: Option<Timestamp>,
    /// How many registrations used it.
    pub uses: i64,
}

/// An admin API key (`tskey-api-…`), used as a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub key_id: String,
    pub secret_hash: String,
    pub description: String,
    pub created: Timestamp,
    pub expires: Option<Timestamp>,
    pub revoked: Option<Timestamp>,
}

/// The current ACL policy text (HuJSON) and when it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub text: String,
    pub updated: Timestamp,
}

/// One audit-log entry: who did what to which object, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: Timestamp,
    /// `cli`, `api:<key_id>`, `node:<id>`, `system`.
    pub actor: String,
    /// Dotted verb, e.g. `node.register`, `policy.set`, `authkey.create`.
    pub action: String,
    /// The object acted on, e.g. `node:12`, `user:alice@example.com`.
    pub target: String,
    /// Free-form details (a policy diff, old and new names, …). Never holds secrets.
    pub detail: serde_json::Value,
}

/// Server-wide settings that must survive restarts (the Noise and DERP private keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub noise: proto::keys::MachinePrivate,
    pub derp: proto::keys::NodePrivate,
}

/// Everything the server loads at start and after another process wrote to the database.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub users: Vec<User>,
    pub nodes: Vec<Node>,
    pub auth_keys: Vec<AuthKey>,
    pub api_keys: Vec<ApiKey>,
    pub policy: Option<PolicyRecord>,
}
