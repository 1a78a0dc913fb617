//! Flotilla's Raft plumbing around `openraft`: how the masters' replicated log is stored and
//! carried. The state machine logic itself is `flotilla-core`; this crate only feeds it.
//!
//! - [`TypeConfig`]: the openraft type configuration (a log entry carries one
//!   [`flotilla_core::Proposal`]; its result is one [`Applied`]).
//! - [`log_store`]: the Raft log, vote and committed index in `redb`, fsynced before openraft
//!   is told they are durable.
//! - [`state_machine`]: the in-memory [`flotilla_core::ClusterState`] and snapshot files,
//!   built without stopping apply, sent and installed in chunks; rebuilt on restart from the
//!   last snapshot and the committed log.
//! - [`state_store`]: finished tasks' records on disk (`state.redb`), written as entries apply.
//! - [`network`]: openraft's RPCs over gRPC to the peers.
//! - [`rtt`]: round trips to the peers, and the replication timeouts that follow them.
//! - [`config`]: timing defaults.

// openraft's error types are large by design; boxing them at our boundary would only obscure them.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod config;
pub mod log_store;
pub mod network;
pub mod rtt;
pub mod state_machine;
pub mod state_store;

use serde::{Deserialize, Serialize};

use flotilla_core::{Proposal, Response};

/// What applying one log entry produced: one response per command of the proposal (empty for
/// Raft's own blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub responses: Vec<Response>,
}

openraft::declare_raft_types!(
    /// Flotilla's openraft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A storage error for openraft, with the failing operation and its cause.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: &(dyn std::error::Error + 'static),
) -> StorageError {
    openraft::StorageError::IO {
        source: openraft::StorageIOError::new(subject, verb, openraft::AnyError::from_dyn(error, None)),
    }
}

/// A master's Raft role as the API and the metrics name it.
pub fn role(state: &openraft::ServerState) -> flotilla_proto::api::Role {
    use flotilla_proto::api::Role;
    match state {
        openraft::ServerState::Leader => Role::Leader,
        openraft::ServerState::Follower => Role::Follower,
        openraft::ServerState::Candidate => Role::Candidate,
        openraft::ServerState::Learner => Role::Learner,
        openraft::ServerState::Shutdown => Role::Shutdown,
    }
}
