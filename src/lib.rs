//! The `flotilla` command: one binary for every role (master, worker, client, local cluster).
//!
//! - [`cli`]: argument definitions.
//! - [`commands`]: client commands (submit, job, status, events).
//! - [`roles`]: `flotilla master` and `flotilla worker`, thin wrappers over their crates.
//! - [`config_file`]: `--config FILE` of a master or worker, expanded into flags.
//! - [`local`]: a cluster of real local processes, used by `up`, `demo` and the tests.
//! - [`demo`]: the end-to-end demonstration with fault injection.
//! - [`fetch`]: a job's task outputs, listed or downloaded.

pub mod backup;
pub mod cli;
pub mod commands;
pub mod config_file;
pub mod demo;
pub mod fetch;
pub mod incident;
pub mod local;
pub mod progress;
pub mod roles;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Cmd};

/// Parses the command line, sets up logging and runs the command; the binary's `main`.
pub fn main_entry() -> ExitCode {
    let args = match config_file::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let server = matches!(&cli.command, Cmd::Master(m) if m.command.is_none())
        || matches!(&cli.command, Cmd::Worker(w) if w.command.is_none());
    let default_level = if server { "info" } else { "warn" };
    // RUST_LOG takes `level` and `target=level` items, e.g. `info,flotilla_master=debug`.
    let default = format!("{default_level},openraft=warn,openraft::core::raft_core=off");
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().unwrap_or_else(|_| tracing_subscriber::filter::Targets::new()));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let log_format = match &cli.command {
        Cmd::Master(m) if m.command.is_none() => m.run.log_format,
        Cmd::Worker(w) if w.command.is_none() => w.run.log_format,
        _ => cli::LogFormat::Text,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match log_format {
        cli::LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
            .init(),
        cli::LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The token a client or master uses: `--token-file`, `FLOTILLA_TOKEN`, or else the admin
/// token in the certificates directory (`--certs`).
pub fn token_or_admin(file: Option<&Path>, certs: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(token) = read_token(file)? {
        return Ok(Some(token));
    }
    match certs.map(|dir| dir.join(flotilla_tls::authority::ADMIN_TOKEN)) {
        Some(path) if path.exists() => read_token(Some(&path)),
        _ => Ok(None),
    }
}

/// The cluster token from `--token-file FILE` or the `FLOTILLA_TOKEN` environment variable.
pub fn read_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            anyhow::bail!("token file {} is empty", path.display());
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("FLOTILLA_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}
