use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use flotilla::cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(cli.command, Cmd::Master(_) | Cmd::Worker(_));
    let default_level = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},openraft=warn,openraft::core::raft_core=off"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(flotilla::commands::dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
