//! Task outputs as bytes: each worker keeps the outputs it holds in a content-addressed
//! [`store`] and serves them over HTTP ([`server`]) to other workers (copies, inputs of
//! downstream tasks) and to masters (`job fetch`), who use the [`client`].
//!
//! ```text
//!  task ends ─▶ store.put_file (sha256) ─▶ client.put ─▶ peer's server ─▶ peer's store (checked)
//!  task starts ◀─ store.copy_out (checked) ◀─ client.fetch ◀─ any holder's server
//! ```
//!
//! With the cluster's certificates the server speaks TLS and admits only masters and
//! workers of the cluster (their certificates); without them it is plain text and open to
//! whoever reaches its address, like the rest of such a cluster.

pub mod client;
pub mod live;
pub mod server;
pub mod store;

pub use client::{BlobClient, TransferError};
pub use store::{Store, StoreError};
