//! The leader's side of a worker session, as pure decisions over the state: what to tell a
//! worker that (re)connects, and how to answer its reports once they are applied. The master's
//! session loop and the deterministic simulator both use these.

use std::collections::BTreeMap;

use crate::command::Response;
use crate::model::{Fence, TaskId};
use crate::state::ClusterState;

/// Directives for a worker that just connected, given the attempts it says it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Committed assignments the worker does not know: send them (again).
    pub run: Vec<(TaskId, Fence)>,
    /// Attempts the worker holds that the state no longer gives it: stop them.
    pub stop: Vec<(TaskId, Fence)>,
}

/// Makes a worker hold exactly the attempts the state assigns to it. Only valid on a leader
/// whose state has applied everything committed before it took over.
pub fn reconcile(state: &ClusterState, worker: &str, known: &[(TaskId, Fence)]) -> Reconcile {
    let known: BTreeMap<TaskId, Fence> = known.iter().copied().collect();
    let assigned = state.worker(worker).map(|w| w.tasks.clone()).unwrap_or_default();
    let run = assigned.iter().filter(|(t, f)| known.get(t) != Some(f)).map(|(t, f)| (*t, *f)).collect();
    let stop = known.iter().filter(|(t, f)| assigned.get(t) != Some(f)).map(|(t, f)| (*t, *f)).collect();
    Reconcile { run, stop }
}

/// How the leader answers a worker's report once the command it made was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The result is settled (recorded, already recorded, or rejected as stale and
    /// journalled): the worker may forget it.
    Ack,
    /// The attempt is fenced off: the worker must kill it.
    Stop,
    /// Nothing to say.
    Nothing,
}

/// `finished`: the report was a result or a confirmed revocation (otherwise a "started").
pub fn reply(response: &Response, finished: bool) -> Reply {
    match (response, finished) {
        (Response::ResultRecorded | Response::Duplicate | Response::Revoked | Response::Stale { .. }, true) => {
            Reply::Ack
        }
        (Response::Stale { .. }, false) => Reply::Stop,
        _ => Reply::Nothing,
    }
}
