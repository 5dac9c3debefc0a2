//! The `agent` binary: `agent daemon` runs the service, every other subcommand talks to it over
//! the local API socket. All logic lives in the library ([`agent::cli::main`]).

fn main() -> std::process::ExitCode {
    agent::cli::main()
}
