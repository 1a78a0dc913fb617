//! The `flotilla` command: one binary for every role (master, worker, client, local cluster).
//!
//! - [`cli`]: argument definitions.
//! - [`commands`]: client commands (submit, job, status, events).
//! - [`roles`]: `flotilla master` and `flotilla worker`, thin wrappers over their crates.
//! - [`local`]: a cluster of real local processes, used by `up`, `demo` and the tests.
//! - [`demo`]: the end-to-end demonstration with fault injection.

pub mod cli;
pub mod commands;
pub mod demo;
pub mod local;
pub mod roles;

use std::path::Path;

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
