//! Admin commands (placeholder until the admin CLI lands).

pub mod derp;

/// Admin subcommands.
#[derive(clap::Subcommand)]
pub enum AdminCommand {}

pub async fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {}
}
