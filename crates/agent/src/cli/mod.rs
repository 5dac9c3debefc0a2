//! The `agent` command line: `agent daemon` runs the service; every other subcommand is a thin
//! client that makes one local API call over the daemon's socket and prints the answer.
//!
//! [`main`] parses arguments, runs the command on a tokio runtime and turns failures into a
//! message on stderr and exit status 1. Usage errors exit with clap's status 2; the daemon exits
//! with 78 when its configuration or state needs a human (see [`daemon::DaemonError`]).
//!
//! - [`client`]: the HTTP-over-Unix-socket client and its user-facing errors.
//! - [`commands`]: one function per subcommand.
//! - [`format`]: the status table and other human-readable output.

pub mod client;
pub mod commands;
pub mod dns;
pub mod exitnode;
pub mod format;
pub mod netcheck;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::daemon::{self, DEFAULT_PORT, DEFAULT_SOCKET, DEFAULT_STATE_DIR, DEFAULT_TUN};

/// Join servers and laptops to a tailnet.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about)]
pub struct Cli {
    /// The daemon's local API socket.
    #[arg(long, global = true, env = "AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the background service (normally started by systemd).
    Daemon(DaemonArgs),
    /// Log in (if needed) and connect to the tailnet.
    Up(UpArgs),
    /// Disconnect from the tailnet, keeping the login.
    Down,
    /// Disconnect and forget the login; the next `up` needs a new auth key.
    Logout,
    /// Show this node and its peers.
    Status {
        /// Print the daemon's full status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the tailnet IP addresses of this node or of a peer.
    Ip(IpArgs),
    /// Check the path to a peer with disco pings.
    Ping(PingArgs),
    /// Show which node (and user) owns a tailnet IP address.
    Whois {
        /// A tailnet IP, optionally with a port (100.64.0.2:22).
        addr: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List and inspect exit nodes.
    #[command(subcommand)]
    ExitNode(exitnode::ExitNodeCommand),
    /// MagicDNS: show its settings or ask the daemon's resolver.
    #[command(subcommand)]
    Dns(dns::DnsCommand),
    /// Report on this node's network: UDP, public addresses, NAT kind, port mapping, DERP
    /// latencies.
    Netcheck(netcheck::NetcheckArgs),
    /// Print the version of this CLI (and, with --daemon, of the running daemon).
    Version {
        /// Also ask the daemon for its version.
        #[arg(long)]
        daemon: bool,
    },
}

/// `agent daemon` flags; each can also be set through the environment (see systemd/agent.env).
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Directory for prefs.json and keys.json (created with mode 0700).
    #[arg(long, env = "AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Name of the TUN interface to create.
    #[arg(long, env = "AGENT_TUN", default_value = DEFAULT_TUN)]
    pub tun: String,
    /// UDP port for WireGuard and path discovery (0 picks a free port).
    #[arg(long, env = "AGENT_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// A group (name or GID) whose members may use the socket without root.
    #[arg(long, env = "AGENT_SOCKET_GROUP")]
    pub socket_group: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Pre-authorized key; `file:PATH` reads it from a file, keeping it out of `ps`.
    #[arg(
        long = "authkey",
        alias = "auth-key",
        env = "AGENT_AUTHKEY",
        hide_env_values = true
    )]
    pub auth_key: Option<String>,
    /// Control server URL (default: the one used last time).
    #[arg(long)]
    pub login_server: Option<String>,
    /// Name for this node in the tailnet (default: the OS hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// ACL tags to request, comma-separated (tag:server,tag:prod).
    #[arg(long, value_delimiter = ',')]
    pub advertise_tags: Vec<String>,
    /// Remove this node from the tailnet soon after it goes offline.
    #[arg(long)]
    pub ephemeral: bool,
    /// Point this host's DNS at MagicDNS (100.100.100.100); `--accept-dns=false` leaves the
    /// OS's DNS settings alone. Default: on (or what the last `up` set).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub accept_dns: Option<bool>,
    /// Offer these subnets to the tailnet, comma-separated (192.168.1.0/24,10.0.0.0/16);
    /// `--advertise-routes=` stops offering any. Default: what the last `up` set.
    #[arg(long, value_delimiter = ',', num_args = 0..=1, require_equals = true)]
    pub advertise_routes: Option<Vec<String>>,
    /// Offer this node as an exit node (0.0.0.0/0 and ::/0) once control approves it.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub advertise_exit_node: Option<bool>,
    /// Masquerade traffic forwarded to advertised subnets (and as an exit node) behind this
    /// node's own address; `--snat-subnet-routes=false` keeps tailnet source addresses.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub snat_subnet_routes: Option<bool>,
    /// Use the subnet routes other nodes offer.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub accept_routes: Option<bool>,
    /// Send all internet traffic through this exit node (name or tailnet IP);
    /// `--exit-node=` stops using one. See `agent exit-node list`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub exit_node: Option<String>,
    /// Keep the directly connected LANs reachable while an exit node is in use.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub exit_node_allow_lan_access: Option<bool>,
}

#[derive(Debug, Clone, Args)]
pub struct IpArgs {
    /// Only IPv4 addresses.
    #[arg(short = '4', conflicts_with = "v6")]
    pub v4: bool,
    /// Only IPv6 addresses.
    #[arg(short = '6')]
    pub v6: bool,
    /// A peer's name, hostname or IP (default: this node).
    pub peer: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PingArgs {
    /// A peer's name, hostname or tailnet IP.
    pub target: String,
    /// How many pings to send.
    #[arg(long, short = 'c', default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::ipn::MAX_PING_COUNT)))]
    pub count: u32,
}

/// Entry point of the `agent` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("agent: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Command::Daemon(args) = cli.command {
        daemon::init_logging();
        let config = daemon::DaemonConfig {
            state_dir: args.state_dir,
            socket: cli.socket,
            socket_group: args.socket_group,
            tun: args.tun,
            port: args.port,
        };
        let rt = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start tokio: {e}"))?;
        return Ok(match rt.block_on(daemon::run(config)) {
            Ok(()) => ExitCode::SUCCESS,
            // Logged rather than returned: under systemd, stderr is the journal, and the exit
            // status tells systemd whether a restart can help.
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(e.exit_code())
            }
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    rt.block_on(commands::run(&cli.socket, cli.command))
}
