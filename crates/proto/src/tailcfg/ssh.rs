//! Tailscale SSH policy (`tailcfg.SSHPolicy`). These types use lowercase JSON keys on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The SSH rules a node enforces for incoming Tailscale SSH connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshPolicy {
    #[serde(default, deserialize_with = "super::null_as_default")]
    pub rules: Vec<SshRule>,
}

/// One SSH rule: who (principals) may log in as whom (sshUsers) and what happens (action).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshRule {
    /// Unix time after which the rule no longer applies; absent = forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_expires: Option<String>,
    #[serde(default, deserialize_with = "super::null_as_default")]
    pub principals: Vec<SshPrincipal>,
    /// Maps SSH user names to local user names. `"*"` matches any; a value of `"="` means "the
    /// same name"; an empty value denies that user.
    #[serde(default, deserialize_with = "super::null_as_default")]
    pub ssh_users: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<SshAction>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_as_default"
    )]
    pub accept_env: Vec<String>,
}

/// Who a rule applies to. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshPrincipal {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(rename = "nodeIP", default, skip_serializing_if = "String::is_empty")]
    pub node_ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_login: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any: bool,
}

/// What to do with a matching connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshAction {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reject: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept: bool,
    /// Nanoseconds (Go `time.Duration`); 0 = no limit.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub session_duration: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_agent_forwarding: bool,
    /// For `check` rules: URL the node asks before accepting (re-authentication).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hold_and_delegate: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_local_port_forwarding: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote_port_forwarding: bool,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
