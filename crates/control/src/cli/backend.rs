//! Where admin commands act: on the database directly, or through a running server's API.
//!
//! [`Backend::Local`] loads the tailnet from the SQLite file and calls the very functions the
//! API handlers call ([`control::api`]); a running server notices the write and reloads.
//! [`Backend::Remote`] sends the matching `/api/v2` request. Both return the API's view types,
//! so the printing code cannot tell them apart.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::Utc;
use control::api::acl::PolicyText;
use control::api::keys::CreateKeyRequest;
use control::api::users::{CreateUserRequest, DeletedUser};
use control::api::views::{Device, DeviceRoutes, KeyInfo, LogEntry, UserInfo};
use control::api::{self, ApiError};
use control::model::Timestamp;
use control::state::{Actor, Tailnet};
use http::{Method, header};
use serde::Deserialize;
use serde_json::json;

use super::remote::{Remote, seg};

/// The tailnet the commands act on.
pub enum Backend {
    Local { tailnet: Box<Tailnet>, db: PathBuf },
    Remote(Box<Remote>),
}

/// Turns an API error into the CLI's error type (the message is already user-facing).
fn local<T>(r: Result<T, ApiError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!(e.message))
}

#[derive(Deserialize)]
struct DevicesReply {
    devices: Vec<Device>,
}

#[derive(Deserialize)]
struct KeysReply {
    keys: Vec<KeyInfo>,
}

#[derive(Deserialize)]
struct UsersReply {
    users: Vec<UserInfo>,
}

#[derive(Deserialize)]
struct LogsReply {
    logs: Vec<LogEntry>,
}

impl Backend {
    fn now() -> Timestamp {
        Utc::now()
    }

    fn actor() -> Actor {
        Actor::cli()
    }

    // ----- devices -----

    /// Every device, with routes and connectivity.
    pub async fn devices(&mut self) -> anyhow::Result<Vec<Device>> {
        match self {
            Backend::Local { tailnet, db } => {
                let now = Self::now();
                let mut list = api::devices::list(tailnet, now, true);
                // Only the server knows who is online; it publishes that next to the database.
                if let Some(online) = api::presence::read(db, now) {
                    for d in &mut list {
                        if d.id
                            .parse()
                            .is_ok_and(|id| online.contains(&control::model::NodeId(id)))
                        {
                            d.online = true;
                            d.connected_to_control = true;
                            d.last_seen = Some(api::views::ts(now));
                        }
                    }
                }
                Ok(list)
            }
            Backend::Remote(r) => Ok(r
                .get::<DevicesReply>("/tailnet/-/devices?fields=all")
                .await?
                .devices),
        }
    }

    /// One device by id, name or IP.
    pub async fn device(&mut self, what: &str) -> anyhow::Result<Device> {
        let id = match self {
            Backend::Local { tailnet, .. } => {
                local(api::devices::find(tailnet, what))?.id.to_string()
            }
            Backend::Remote(r) => return r.get(&format!("/device/{}?fields=all", seg(what))).await,
        };
        let all = self.devices().await?;
        all.into_iter()
            .find(|d| d.id == id)
            .with_context(|| format!("node {what} not found; see `control nodes list`"))
    }

    pub async fn approve(&mut self, what: &str) -> anyhow::Result<()> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::authorize(
                tailnet,
                what,
                true,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                let _: serde_json::Value = r
                    .json(
                        Method::POST,
                        &format!("/device/{}/authorized", seg(what)),
                        Some(&json!({"authorized": true})),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn expire(&mut self, what: &str) -> anyhow::Result<()> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::expire(
                tailnet,
                what,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                let _: serde_json::Value = r
                    .json(
                        Method::POST,
                        &format!("/device/{}/expire", seg(what)),
                        None::<&()>,
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Deletes a device; returns how it looked.
    pub async fn delete_device(&mut self, what: &str) -> anyhow::Result<Device> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::delete(
                tailnet,
                what,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                let d: Device = r.get(&format!("/device/{}", seg(what))).await?;
                let _: serde_json::Value = r
                    .json(
                        Method::DELETE,
                        &format!("/device/{}", seg(&d.id)),
                        None::<&()>,
                    )
                    .await?;
                Ok(d)
            }
        }
    }

    pub async fn rename(&mut self, what: &str, name: &str) -> anyhow::Result<()> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::rename(
                tailnet,
                what,
                name,
                &Self::actor(),
                Self::now(),
            ))
            .map(drop),
            Backend::Remote(r) => {
                let _: serde_json::Value = r
                    .json(
                        Method::POST,
                        &format!("/device/{}/name", seg(what)),
                        Some(&json!({"name": name})),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn set_tags(&mut self, what: &str, tags: Vec<String>) -> anyhow::Result<()> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::set_tags(
                tailnet,
                what,
                tags,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                let _: serde_json::Value = r
                    .json(
                        Method::POST,
                        &format!("/device/{}/tags", seg(what)),
                        Some(&json!({"tags": tags})),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn routes(&mut self, what: &str) -> anyhow::Result<DeviceRoutes> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::routes(tailnet, what)),
            Backend::Remote(r) => r.get(&format!("/device/{}/routes", seg(what))).await,
        }
    }

    pub async fn set_routes(
        &mut self,
        what: &str,
        routes: &[String],
    ) -> anyhow::Result<DeviceRoutes> {
        match self {
            Backend::Local { tailnet, .. } => local(api::devices::set_routes(
                tailnet,
                what,
                routes,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                r.json(
                    Method::POST,
                    &format!("/device/{}/routes", seg(what)),
                    Some(&json!({"routes": routes})),
                )
                .await
            }
        }
    }

    // ----- keys -----

    /// Auth and API keys; `all` includes invalid ones.
    pub async fn keys(&mut self, all: bool) -> anyhow::Result<Vec<KeyInfo>> {
        match self {
            Backend::Local { tailnet, .. } => Ok(api::keys::list(tailnet, Self::now(), all)),
            Backend::Remote(r) => {
                let q = if all { "?all=true" } else { "" };
                Ok(r.get::<KeysReply>(&format!("/tailnet/-/keys{q}"))
                    .await?
                    .keys)
            }
        }
    }

    pub async fn create_key(&mut self, req: CreateKeyRequest) -> anyhow::Result<KeyInfo> {
        match self {
            Backend::Local { tailnet, .. } => local(api::keys::create(
                tailnet,
                req,
                &Self::actor(),
                Self::now(),
                &mut rand::thread_rng(),
            )),
            Backend::Remote(r) => r.json(Method::POST, "/tailnet/-/keys", Some(&req)).await,
        }
    }

    pub async fn revoke_key(&mut self, id: &str) -> anyhow::Result<KeyInfo> {
        match self {
            Backend::Local { tailnet, .. } => {
                local(api::keys::revoke(tailnet, id, &Self::actor(), Self::now()))
            }
            Backend::Remote(r) => {
                let _: serde_json::Value = r
                    .json(
                        Method::DELETE,
                        &format!("/tailnet/-/keys/{}", seg(id)),
                        None::<&()>,
                    )
                    .await?;
                r.get(&format!("/tailnet/-/keys/{}", seg(id))).await
            }
        }
    }

    // ----- users -----

    pub async fn users(&mut self) -> anyhow::Result<Vec<UserInfo>> {
        match self {
            Backend::Local { tailnet, .. } => Ok(api::users::list(tailnet, Self::now())),
            Backend::Remote(r) => Ok(r.get::<UsersReply>("/tailnet/-/users").await?.users),
        }
    }

    pub async fn create_user(&mut self, req: CreateUserRequest) -> anyhow::Result<UserInfo> {
        match self {
            Backend::Local { tailnet, .. } => local(api::users::create(
                tailnet,
                &req,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => r.json(Method::POST, "/tailnet/-/users", Some(&req)).await,
        }
    }

    pub async fn delete_user(&mut self, what: &str) -> anyhow::Result<DeletedUser> {
        match self {
            Backend::Local { tailnet, .. } => local(api::users::delete(
                tailnet,
                what,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                r.json(
                    Method::POST,
                    &format!("/users/{}/delete", seg(what)),
                    None::<&()>,
                )
                .await
            }
        }
    }

    // ----- policy -----

    /// The policy text in force (HuJSON, as written) and its ETag.
    pub async fn policy(&mut self) -> anyhow::Result<PolicyText> {
        match self {
            Backend::Local { tailnet, .. } => Ok(api::acl::current(tailnet)),
            Backend::Remote(r) => {
                let reply = r
                    .send(
                        Method::GET,
                        "/tailnet/-/acl",
                        None,
                        &[("accept", "application/hujson")],
                    )
                    .await?;
                Self::policy_reply(reply)
            }
        }
    }

    fn policy_reply(reply: super::remote::Reply) -> anyhow::Result<PolicyText> {
        let text = String::from_utf8(reply.body.to_vec())
            .context("the server sent a policy that is not UTF-8")?;
        let etag = reply
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let is_default = text == api::acl::DEFAULT_POLICY;
        Ok(PolicyText {
            text,
            etag,
            is_default,
        })
    }

    pub async fn set_policy(
        &mut self,
        text: &str,
        if_match: Option<&str>,
    ) -> anyhow::Result<PolicyText> {
        match self {
            Backend::Local { tailnet, .. } => local(api::acl::set(
                tailnet,
                text,
                if_match,
                &Self::actor(),
                Self::now(),
            )),
            Backend::Remote(r) => {
                let mut extra = vec![("accept", "application/hujson")];
                if let Some(m) = if_match {
                    extra.push(("if-match", m));
                }
                let body = Some(("application/hujson", text.as_bytes().to_vec()));
                let reply = r.send(Method::POST, "/tailnet/-/acl", body, &extra).await?;
                Self::policy_reply(reply)
            }
        }
    }

    /// Checks a policy without installing it.
    pub async fn check_policy(&mut self, text: &str) -> anyhow::Result<()> {
        if text.trim().is_empty() {
            anyhow::bail!("the policy is empty: send a HuJSON or JSON object");
        }
        // Both ways run the same validation as `POST /acl/validate` (a policy, or an array of
        // tests run against the current policy), so local and remote answers agree.
        match self {
            Backend::Local { tailnet, .. } => match api::acl::validate(tailnet, text) {
                Some(e) => local(Err(e)),
                None => Ok(()),
            },
            Backend::Remote(r) => {
                let reply = r
                    .send(
                        Method::POST,
                        "/tailnet/-/acl/validate",
                        Some(("application/hujson", text.as_bytes().to_vec())),
                        &[],
                    )
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                match v.get("message").and_then(|m| m.as_str()) {
                    Some(m) if !m.is_empty() => Err(anyhow::anyhow!("{m}")),
                    _ => Ok(()),
                }
            }
        }
    }

    // ----- audit -----

    pub async fn audit(
        &mut self,
        since: Option<Timestamp>,
        limit: usize,
        action: Option<String>,
    ) -> anyhow::Result<Vec<LogEntry>> {
        match self {
            Backend::Local { tailnet, .. } => {
                local(api::logs::query(tailnet, since, Some(limit), action))
            }
            Backend::Remote(r) => {
                let mut q = format!("?limit={limit}");
                if let Some(s) = since {
                    q.push_str(&format!("&start={}", seg(&api::views::ts(s))));
                }
                if let Some(a) = action {
                    q.push_str(&format!("&action={}", seg(&a)));
                }
                Ok(
                    r.get::<LogsReply>(&format!("/tailnet/-/logging/configuration{q}"))
                        .await?
                        .logs,
                )
            }
        }
    }
}
