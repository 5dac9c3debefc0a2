//! `control keys …` (auth keys for devices) and `control apikeys …` (keys for the admin API).
//!
//! A new key's secret is printed once, alone on the first line of stdout, so
//! `KEY=$(control keys create)` works; what the key allows goes to stderr. With `--json` the
//! whole API answer, secret included, is printed instead.

use chrono::Utc;
use control::api::keys::CreateKeyRequest;
use control::api::views::{CreateCapabilities, DeviceCapabilities, KeyCapabilities, KeyInfo};

use super::output::{self, Table, when};
use super::{Target, parse_expiry};

#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: KeysCmd,
}

#[derive(clap::Subcommand)]
enum KeysCmd {
    /// Create an auth key; the key is printed once.
    Create(CreateKey),
    /// List auth keys (valid ones unless --all).
    List {
        /// Include revoked, expired and used-up keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an auth key by id (see `control keys list`).
    Revoke { id: String },
}

#[derive(clap::Args)]
struct CreateKey {
    /// Owner of devices registered with the key [default: admin@<base domain>, or none when tagged].
    #[arg(long)]
    user: Option<String>,
    /// The key can register more than one device.
    #[arg(long)]
    reusable: bool,
    /// Devices registered with it are removed soon after they disconnect.
    #[arg(long)]
    ephemeral: bool,
    /// Devices registered with it get these tags, e.g. tag:server,tag:web.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// How long the key is valid: 30m, 24h, 90d, or never.
    #[arg(long, default_value = "90d")]
    expiry: String,
    /// Devices registered with it need no approval (with --device-approval on the server).
    #[arg(long)]
    preauthorized: bool,
    /// A note shown in `control keys list`.
    #[arg(long, default_value = "")]
    description: String,
}

#[derive(clap::Args)]
pub struct ApiKeysArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: ApiKeysCmd,
}

#[derive(clap::Subcommand)]
enum ApiKeysCmd {
    /// Create an API key; the key is printed once.
    Create {
        /// A note shown in `control apikeys list`.
        #[arg(long, default_value = "")]
        description: String,
        /// How long the key is valid: 24h, 90d, or never.
        #[arg(long, default_value = "90d")]
        expiry: String,
    },
    /// List API keys (valid ones unless --all).
    List {
        /// Include revoked and expired keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an API key by id (see `control apikeys list`).
    Revoke { id: String },
}

fn request(key_type: &str, expiry: &str, description: String) -> anyhow::Result<CreateKeyRequest> {
    let expiry = parse_expiry(expiry)?;
    Ok(CreateKeyRequest {
        expiry_seconds: expiry.map(|d| d.num_seconds()),
        never_expires: expiry.is_none(),
        description,
        key_type: Some(key_type.to_string()),
        ..Default::default()
    })
}

pub async fn run_keys(a: KeysArgs) -> anyhow::Result<()> {
    let mut b = a.target.backend().await?;
    let json = a.target.json;
    match a.cmd {
        KeysCmd::Create(c) => {
            let mut req = request("auth", &c.expiry, c.description)?;
            req.user = c.user;
            req.capabilities = KeyCapabilities {
                devices: DeviceCapabilities {
                    create: CreateCapabilities {
                        reusable: c.reusable,
                        ephemeral: c.ephemeral,
                        preauthorized: c.preauthorized,
                        tags: c
                            .tags
                            .into_iter()
                            .map(|t| t.trim().to_string())
                            .filter(|t| !t.is_empty())
                            .collect(),
                    },
                },
            };
            let k = b.create_key(req).await?;
            print_created(&k, json)
        }
        KeysCmd::List { all } => {
            let keys: Vec<KeyInfo> = b
                .keys(all)
                .await?
                .into_iter()
                .filter(|k| k.key_type == "auth")
                .collect();
            print_list(
                &keys,
                json,
                "no auth keys; create one with `control keys create`",
            )
        }
        KeysCmd::Revoke { id } => {
            let k = b.revoke_key(&id).await?;
            print_revoked(&k, json)
        }
    }
}

pub async fn run_api_keys(a: ApiKeysArgs) -> anyhow::Result<()> {
    let mut b = a.target.backend().await?;
    let json = a.target.json;
    match a.cmd {
        ApiKeysCmd::Create {
            description,
            expiry,
        } => {
            let k = b.create_key(request("api", &expiry, description)?).await?;
            print_created(&k, json)
        }
        ApiKeysCmd::List { all } => {
            let keys: Vec<KeyInfo> = b
                .keys(all)
                .await?
                .into_iter()
                .filter(|k| k.key_type == "api")
                .collect();
            print_list(
                &keys,
                json,
                "no API keys; create one with `control apikeys create`",
            )
        }
        ApiKeysCmd::Revoke { id } => {
            let k = b.revoke_key(&id).await?;
            print_revoked(&k, json)
        }
    }
}

/// What a key does, in a few words.
fn summary(k: &KeyInfo) -> String {
    let Some(c) = k.capabilities.as_ref().map(|c| &c.devices.create) else {
        return "admin API access".into();
    };
    let mut parts = vec![if c.reusable { "reusable" } else { "single-use" }.to_string()];
    if c.ephemeral {
        parts.push("ephemeral".into());
    }
    if c.preauthorized {
        parts.push("pre-approved".into());
    }
    if c.tags.is_empty() {
        parts.push(format!("owner {}", k.user.as_deref().unwrap_or("-")));
    } else {
        parts.push(format!("tags {}", c.tags.join(",")));
    }
    parts.join(", ")
}

fn status(k: &KeyInfo, now: chrono::DateTime<Utc>) -> &'static str {
    let expired = k
        .expires
        .as_deref()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .is_some_and(|e| e.to_utc() <= now);
    match (k.revoked.is_some(), expired, k.invalid) {
        (true, _, _) => "revoked",
        (false, true, _) => "expired",
        (false, false, true) => "used",
        _ => "valid",
    }
}

fn print_created(k: &KeyInfo, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(k);
    }
    let Some(secret) = &k.key else {
        anyhow::bail!("the server did not return the new key's secret");
    };
    println!("{secret}");
    let kind = if k.key_type == "api" {
        "API key"
    } else {
        "auth key"
    };
    eprintln!(
        "{kind} {} created ({}); expires {}",
        k.id,
        summary(k),
        when(k.expires.as_deref(), Utc::now())
    );
    eprintln!("the key is shown only this once; store it safely");
    Ok(())
}

fn print_list(keys: &[KeyInfo], json: bool, empty: &str) -> anyhow::Result<()> {
    if json {
        return output::json(&keys);
    }
    let now = Utc::now();
    let mut t = Table::new(&[
        "ID",
        "KIND",
        "USES",
        "CREATED",
        "EXPIRES",
        "STATUS",
        "DESCRIPTION",
    ]);
    for k in keys {
        t.row(vec![
            k.id.clone(),
            summary(k),
            if k.key_type == "api" {
                "-".into()
            } else {
                k.uses.to_string()
            },
            when(Some(&k.created), now),
            when(k.expires.as_deref(), now),
            status(k, now).into(),
            k.description.clone(),
        ]);
    }
    t.print_or(empty);
    Ok(())
}

fn print_revoked(k: &KeyInfo, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(k);
    }
    let kind = if k.key_type == "api" {
        "API key"
    } else {
        "auth key"
    };
    println!("revoked {kind} {}", k.id);
    Ok(())
}
