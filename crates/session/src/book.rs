//! The worker's bookkeeping as a pure state machine: which attempts it runs, queues and has
//! finished without an acknowledgement, and the highest term it has seen. The session loop
//! (and the deterministic simulator) feed it messages and execute the actions it returns.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use flotilla_core::model::{Fence, Outcome, TaskId};
use flotilla_proto::wire::{RunTask, WorkerMsg};

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start this attempt's process.
    Start(RunTask),
    /// Kill this attempt's process.
    Kill(TaskId, Fence),
}

#[derive(Clone, Debug)]
struct Running {
    fence: Fence,
    cpus: u32,
}

#[derive(Clone, Debug)]
pub struct Book {
    cpus: u32,
    highest_term: u64,
    running: HashMap<TaskId, Running>,
    /// Assignments waiting for free cpus (the master should not over-assign; a guard).
    queued: VecDeque<RunTask>,
    cpus_used: u32,
    /// Finished attempts not yet acknowledged by a leader, resent after each reconnect.
    unacked: BTreeMap<(TaskId, Fence), Outcome>,
    /// Queued attempts given back to a leader that asked (never to be started), until it
    /// acknowledges; resent after each reconnect.
    revoked: BTreeSet<(TaskId, Fence)>,
}

impl Book {
    pub fn new(cpus: u32) -> Self {
        Book {
            cpus,
            highest_term: 0,
            running: HashMap::new(),
            queued: VecDeque::new(),
            cpus_used: 0,
            unacked: BTreeMap::new(),
            revoked: BTreeSet::new(),
        }
    }

    pub fn highest_term(&self) -> u64 {
        self.highest_term
    }

    /// Takes note of a master's term; false if the message comes from a deposed leader
    /// (a lower term than already seen) and must be ignored.
    pub fn accept_term(&mut self, term: u64) -> bool {
        if term < self.highest_term {
            return false;
        }
        self.highest_term = term;
        true
    }

    /// Every attempt this worker holds: running, queued, or finished without an ack.
    pub fn known(&self) -> Vec<(TaskId, Fence)> {
        let mut known: Vec<(TaskId, Fence)> = self.running.iter().map(|(t, r)| (*t, r.fence)).collect();
        known.extend(self.queued.iter().map(|r| (r.task, r.fence)));
        known.extend(self.unacked.keys().copied());
        known.extend(self.revoked.iter().copied());
        known.sort();
        known
    }

    /// Whether it holds nothing at all (a draining worker may exit).
    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.queued.is_empty() && self.unacked.is_empty() && self.revoked.is_empty()
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Assignments waiting for a free cpu.
    pub fn queued_count(&self) -> usize {
        self.queued.len()
    }

    /// The unacknowledged results and revocations, to send again to a new leader.
    pub fn unacked(&self) -> Vec<WorkerMsg> {
        let results =
            self.unacked.iter().map(|((task, fence), outcome)| WorkerMsg::finished(*task, *fence, outcome.clone()));
        let revoked = self.revoked.iter().map(|(task, fence)| WorkerMsg::Revoked { task: *task, fence: *fence });
        results.chain(revoked).collect()
    }

    /// A leader asks for a queued attempt back. True if it was still queued: it is dropped
    /// and will never start here. One that started (or is unknown) stays as it is.
    pub fn on_revoke(&mut self, task: TaskId, fence: Fence) -> bool {
        let Some(at) = self.queued.iter().position(|q| q.task == task && q.fence == fence) else { return false };
        self.queued.remove(at);
        self.revoked.insert((task, fence));
        true
    }

    pub fn on_run(&mut self, run: RunTask) -> Vec<Action> {
        let mut actions = Vec::new();
        let duplicate = self.unacked.contains_key(&(run.task, run.fence))
            || self.revoked.contains(&(run.task, run.fence))
            || self.queued.iter().any(|q| q.task == run.task && q.fence == run.fence)
            || self.running.get(&run.task).is_some_and(|r| r.fence == run.fence);
        if duplicate {
            return actions; // already done, waiting or running: a resend
        }
        if let Some(r) = self.running.get(&run.task) {
            // The task was given to us again under another attempt: the one we run is stale.
            actions.push(Action::Kill(run.task, r.fence));
        }
        self.queued.retain(|q| q.task != run.task);
        self.queued.push_back(run);
        actions.extend(self.start_queued());
        actions
    }

    pub fn on_stop(&mut self, task: TaskId, fence: Fence) -> Vec<Action> {
        self.queued.retain(|q| !(q.task == task && q.fence == fence));
        // The state no longer gives it to this worker: its revocation took effect.
        self.revoked.remove(&(task, fence));
        match self.running.get(&task) {
            Some(r) if r.fence == fence => vec![Action::Kill(task, fence)],
            _ => Vec::new(),
        }
    }

    pub fn on_ack(&mut self, task: TaskId, fence: Fence) {
        self.unacked.remove(&(task, fence));
        self.revoked.remove(&(task, fence));
    }

    /// An attempt's process ended; `outcome` is `None` when it was killed on request (nothing
    /// to report). Returns the result to send and what to start next.
    pub fn on_ended(
        &mut self,
        task: TaskId,
        fence: Fence,
        outcome: Option<Outcome>,
    ) -> (Option<WorkerMsg>, Vec<Action>) {
        if let Some(r) = self.running.get(&task) {
            if r.fence == fence {
                self.cpus_used -= r.cpus;
                self.running.remove(&task);
            }
        }
        let msg = outcome.map(|outcome| {
            self.unacked.insert((task, fence), outcome.clone());
            WorkerMsg::finished(task, fence, outcome)
        });
        (msg, self.start_queued())
    }

    fn start_queued(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(next) = self.queued.front() {
            // A task bigger than the worker may run alone.
            if self.cpus_used + next.cpus > self.cpus && self.cpus_used > 0 {
                break;
            }
            if self.running.contains_key(&next.task) {
                break; // its stale attempt is still being killed
            }
            let Some(run) = self.queued.pop_front() else { break };
            self.cpus_used += run.cpus;
            self.running.insert(run.task, Running { fence: run.fence, cpus: run.cpus });
            actions.push(Action::Start(run));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(index: u64, attempt: u32, cpus: u32) -> RunTask {
        RunTask {
            task: TaskId::array(1, index),
            fence: Fence { term: 1, attempt },
            command: vec!["true".into()],
            env: vec![],
            cpus,
            timeout_ms: None,
            stdin: None,
            limits: Default::default(),
            inputs: Vec::new(),
            outputs: Default::default(),
        }
    }

    #[test]
    fn resends_are_ignored_and_capacity_is_respected() {
        let mut b = Book::new(2);
        assert_eq!(b.on_run(run(1, 1, 1)).len(), 1);
        assert!(b.on_run(run(1, 1, 1)).is_empty(), "a resend starts nothing");
        assert_eq!(b.on_run(run(2, 1, 1)).len(), 1);
        assert!(b.on_run(run(3, 1, 1)).is_empty(), "no free cpu: queued");
        let (msg, next) = b.on_ended(TaskId::array(1, 1), Fence { term: 1, attempt: 1 }, Some(Outcome::default()));
        assert!(matches!(msg, Some(WorkerMsg::Finished { .. })));
        assert_eq!(next, vec![Action::Start(run(3, 1, 1))]);
        assert!(b.on_run(run(1, 1, 1)).is_empty(), "finished but unacked: a resend");
        b.on_ack(TaskId::array(1, 1), Fence { term: 1, attempt: 1 });
        assert_eq!(b.known().len(), 2);
    }

    #[test]
    fn a_newer_attempt_replaces_a_stale_one() {
        let mut b = Book::new(1);
        b.on_run(run(1, 1, 1));
        let actions = b.on_run(run(1, 2, 1));
        assert_eq!(actions, vec![Action::Kill(TaskId::array(1, 1), Fence { term: 1, attempt: 1 })]);
        let (msg, next) = b.on_ended(TaskId::array(1, 1), Fence { term: 1, attempt: 1 }, None);
        assert!(msg.is_none(), "a killed attempt reports nothing");
        assert_eq!(next, vec![Action::Start(run(1, 2, 1))]);
    }

    #[test]
    fn only_a_queued_attempt_is_given_back_and_never_started_after() {
        let mut b = Book::new(1);
        b.on_run(run(1, 1, 1));
        b.on_run(run(2, 1, 1));
        let fence = Fence { term: 1, attempt: 1 };
        assert!(!b.on_revoke(TaskId::array(1, 1), fence), "running: stays");
        assert!(b.on_revoke(TaskId::array(1, 2), fence), "queued: given back");
        assert!(b.on_run(run(2, 1, 1)).is_empty(), "a resent run of a revoked attempt starts nothing");
        let (_, next) = b.on_ended(TaskId::array(1, 1), fence, Some(Outcome::default()));
        assert!(next.is_empty(), "the revoked attempt is not started when a cpu frees");
        assert!(b.unacked().contains(&WorkerMsg::Revoked { task: TaskId::array(1, 2), fence }), "resent until acked");
        assert!(b.known().contains(&(TaskId::array(1, 2), fence)));
        b.on_ack(TaskId::array(1, 2), fence);
        assert!(!b.unacked().contains(&WorkerMsg::Revoked { task: TaskId::array(1, 2), fence }));
    }

    #[test]
    fn messages_from_a_deposed_leader_are_refused() {
        let mut b = Book::new(1);
        assert!(b.accept_term(3));
        assert!(!b.accept_term(2));
        assert!(b.accept_term(3));
        assert_eq!(b.highest_term(), 3);
    }
}
