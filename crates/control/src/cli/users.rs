//! `control users create|list|delete`.
//!
//! Users are identities that own devices (through the auth keys made for them). Deleting a user
//! deletes its devices and revokes its auth keys, so the command lists what it removed.

use chrono::Utc;
use control::api::users::CreateUserRequest;

use super::Target;
use super::output::{self, Table, when};

#[derive(clap::Args)]
pub struct UsersArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: UsersCmd,
}

#[derive(clap::Subcommand)]
enum UsersCmd {
    /// Create a user, e.g. `control users create alice@example.com`.
    Create {
        login: String,
        /// Name shown in clients [default: the part of the login before @].
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// List users.
    List,
    /// Delete a user with its devices and auth keys.
    Delete { user: String },
}

pub async fn run(a: UsersArgs) -> anyhow::Result<()> {
    let mut b = a.target.backend().await?;
    let json = a.target.json;
    match a.cmd {
        UsersCmd::Create {
            login,
            display_name,
        } => {
            let u = b
                .create_user(CreateUserRequest {
                    login_name: login,
                    display_name,
                })
                .await?;
            if json {
                return output::json(&u);
            }
            println!("created user {} (id {})", u.login_name, u.id);
            eprintln!(
                "make a key for their devices with `control keys create --user {}`",
                u.login_name
            );
            Ok(())
        }
        UsersCmd::List => {
            let users = b.users().await?;
            if json {
                return output::json(&users);
            }
            let now = Utc::now();
            let mut t = Table::new(&["ID", "LOGIN", "NAME", "DEVICES", "LAST SEEN", "CREATED"]);
            for u in &users {
                t.row(vec![
                    u.id.clone(),
                    u.login_name.clone(),
                    u.display_name.clone(),
                    u.device_count.to_string(),
                    if u.currently_connected {
                        "now".into()
                    } else {
                        u.last_seen
                            .as_deref()
                            .map_or("-".into(), |s| when(Some(s), now))
                    },
                    when(Some(&u.created), now),
                ]);
            }
            t.print_or("no users; create one with `control users create <login>`");
            Ok(())
        }
        UsersCmd::Delete { user } => {
            let d = b.delete_user(&user).await?;
            if json {
                return output::json(&d);
            }
            let names: Vec<&str> = d.deleted_devices.iter().map(|d| d.short_name()).collect();
            if names.is_empty() {
                println!("deleted user {}", d.user.login_name);
            } else {
                println!(
                    "deleted user {} and {} device(s): {}",
                    d.user.login_name,
                    names.len(),
                    names.join(", ")
                );
            }
            Ok(())
        }
    }
}
