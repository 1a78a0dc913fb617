//! Flotilla's functional core: the replicated state machine and the scheduler.
//!
//! Everything in this crate is plain, synchronous, deterministic Rust: no I/O, no clock, no
//! randomness. The masters run it inside Raft (the imperative shell lives in `flotilla-raft` and
//! `flotilla-master`); tests and simulations run it directly.
//!
//! - [`access`]: named tokens, their roles, and who submitted which job.
//! - [`model`]: jobs, tasks, attempts and their fencing tokens.
//! - [`index_set`]: task index sets as ranges (a million-task array is one range).
//! - [`command`]: the commands in the Raft log and their responses.
//! - [`state`]: [`state::ClusterState`] and `apply`, the transition function.
//! - [`scheduler`]: state snapshot in, placement plan out.
//! - [`session`]: the leader's decisions in a worker session (reconcile, replies).
//! - [`journal`]: the replicated event journal.
//! - [`records`]: finished tasks' records, stored outside the in-memory state.
//! - [`reason`]: why things happened (refusals, failures, losses), as data; text at the edge.
//! - [`units`]: durations and sizes as users write them.
//! - [`rng`]: a seeded generator for tests, simulations and fault schedules.
//! - [`workflow`]: jobs that wait for jobs, and tasks' outputs kept on workers.
//! - [`schedule`]: periodic jobs (cron expressions in a time zone) and when each is due.
//! - [`autoscale`]: pools of workers that follow the waiting work, and the leader's decisions.

pub mod access;
pub mod autoscale;
pub mod command;
pub mod index_set;
pub mod journal;
pub mod model;
pub mod reason;
pub mod records;
pub mod rng;
pub mod schedule;
pub mod scheduler;
pub mod session;
pub mod state;
pub mod units;
pub mod version;
pub mod workflow;

pub use command::{Assigned, Command, MemberChange, Placement, Proposal, Response, WorkerInfo};
pub use index_set::IndexSet;
pub use model::{Fence, JobId, JobSpec, Outcome, TaskId, TaskSlot};
pub use reason::Refusal;
pub use state::{ApplyCtx, ClusterState};
