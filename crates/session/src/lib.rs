//! Both ends of a worker session as synchronous state machines: inputs and `now` in, effects
//! out, no I/O, clock or randomness.
//!
//! - [`leader::LeaderCore`]: the leader's admission of workers, reconciliation, report
//!   handling, liveness, scheduling rounds and what a change of leadership does to sessions;
//! - [`agent::AgentCore`]: the worker's choice of master, hello and welcome, term fencing,
//!   report batching, heartbeats and queue sizing, around its bookkeeping [`book::Book`].
//!
//! The master's `sessions` service, the worker's agent and `flotilla-sim` all drive these same
//! types; the binaries add sockets, timers and processes, the simulation a seeded network,
//! clock and Raft.

pub mod agent;
pub mod book;
pub mod leader;

#[cfg(test)]
pub(crate) mod testing;
