//! TLS for every Flotilla connection: clients, workers, peers and the dashboard.
//!
//! - [`authority`]: the cluster CA, a certificate per role, the first admin token
//!   (`flotilla certs init`), and renewed certificates (`flotilla certs issue`);
//! - [`identity`]: a member's certificates loaded into rustls configs, reloaded when the
//!   files change or on SIGHUP (rotation without a restart);
//! - [`listener`]: the master's accept loop: TLS, with the caller's role taken from its
//!   certificate, and a clear refusal of plain text;
//! - [`connector`]: outgoing connections (HTTP clients and gRPC channels) over TLS.
//!
//! The crypto is rustls with ring (no C build); nothing here implements any of it.

pub mod authority;
pub mod connector;
pub mod identity;
pub mod listener;

use std::path::PathBuf;

pub use connector::Connector;
pub use identity::{Alpn, Identity};
pub use listener::{Connection, Peer, Transport};

/// What a certificate lets its holder be. The role is the certificate's DNS name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Worker,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Master, Role::Worker, Role::Client];

    /// The name in the role's certificates; masters are verified by it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master.flotilla",
            Role::Worker => "worker.flotilla",
            Role::Client => "client.flotilla",
        }
    }

    /// The role's certificate and key files in a certificates directory.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            Role::Master => ("master.pem", "master.key"),
            Role::Worker => ("worker.pem", "worker.key"),
            Role::Client => ("client.pem", "client.key"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.label() == text)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} already exists: this directory holds a cluster CA already (renew a member's certificate with \
         `flotilla certs issue`)"
    )]
    Exists { path: PathBuf },
    #[error("cannot generate a certificate: {0}")]
    Generate(rcgen::Error),
    #[error("{path}: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("the operating system's random source failed")]
    Random,
}

#[cfg(test)]
mod tests;
