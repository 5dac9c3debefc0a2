//! `control derp`: a standalone relay (placeholder).

/// Flags of `control derp`.
#[derive(clap::Args)]
pub struct DerpArgs {}

pub async fn run(_args: DerpArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
