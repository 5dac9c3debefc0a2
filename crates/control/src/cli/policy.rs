//! `control policy get|set|check`.
//!
//! `get` prints the policy as written (HuJSON, comments kept); with `--json` it prints
//! `{"etag", "isDefault", "policy"}` with the policy parsed. `set FILE` installs a new policy
//! (`-` reads stdin) unless it fails to parse, names unknown things or fails its own tests; the
//! old one then stays in force. `--if-match ETAG` refuses to overwrite a policy someone else
//! changed since you read it. `check FILE` runs the same validation without installing.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use control::api::acl::{PolicyText, to_json};
use serde_json::json;

use super::Target;
use super::output;

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(clap::Subcommand)]
enum PolicyCmd {
    /// Print the policy in force.
    Get,
    /// Replace the policy with the HuJSON file FILE (`-` for stdin).
    Set {
        file: PathBuf,
        /// Only if the policy in force still has this ETag (from `control policy get --json`).
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Validate a policy file against the tailnet without installing it.
    Check { file: PathBuf },
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the policy from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read policy file {}", file.display()))
}

fn print_json(p: &PolicyText) -> anyhow::Result<()> {
    let policy = to_json(&p.text).map_err(|e| anyhow::anyhow!(e.message))?;
    output::json(&json!({ "etag": p.etag, "isDefault": p.is_default, "policy": policy }))
}

pub async fn run(a: PolicyArgs) -> anyhow::Result<()> {
    let json = a.target.json;
    match a.cmd {
        PolicyCmd::Get => {
            let p = a.target.backend().await?.policy().await?;
            if json {
                return print_json(&p);
            }
            print!("{}", p.text);
            if !p.text.ends_with('\n') {
                println!();
            }
            if p.is_default {
                eprintln!("(no policy set yet: this is the default, which allows all traffic)");
            }
            Ok(())
        }
        PolicyCmd::Set { file, if_match } => {
            let text = read(&file)?;
            let p = a
                .target
                .backend()
                .await?
                .set_policy(&text, if_match.as_deref())
                .await
                .with_context(|| {
                    format!(
                        "policy from {} refused; the previous policy stays in force",
                        file.display()
                    )
                })?;
            if json {
                return print_json(&p);
            }
            println!("policy updated (etag {})", p.etag);
            Ok(())
        }
        PolicyCmd::Check { file } => {
            let text = read(&file)?;
            a.target
                .backend()
                .await?
                .check_policy(&text)
                .await
                .with_context(|| format!("{} is not a valid policy", file.display()))?;
            if json {
                return output::json(&json!({ "ok": true }));
            }
            println!(
                "{}: policy OK (parses, and its tests pass against the current tailnet)",
                file.display()
            );
            Ok(())
        }
    }
}
