//! `control`: the coordination server and its admin commands.

mod cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "control",
    version,
    about = "Tailnet coordination server",
    propagate_version = true
)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info` or `control=debug`.
    #[arg(long, global = true, env = "CONTROL_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordination server (control protocol, admin API, embedded DERP and STUN).
    Serve(Box<control::config::ServeArgs>),
    /// Run a standalone DERP relay (with STUN) for an extra region.
    Derp(cli::derp::DerpArgs),
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Admin commands print results; their logs stay quiet unless asked for.
    let level = match (&cli.command, cli.log.as_str()) {
        (Command::Admin(_), "info") => "warn",
        (_, l) => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Derp(args) => cli::derp::run(args).await,
            Command::Admin(cmd) => cli::run(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: control::config::ServeArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    let shutdown = CancellationToken::new();
    let running = control::server::start(settings, shutdown.clone())
        .await
        .context("cannot start the server")?;
    let sd = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        sd.cancel();
    });
    running.wait().await;
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, Ctrl-C still ends the process the default way.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
