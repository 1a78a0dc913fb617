//! Task-level dependencies: tasks that wait for tasks rather than jobs. A job with `--each`
//! pairs task `i` with task `i` of other jobs; `needs` rules make some of a job's tasks wait
//! for others of the same job (see [`crate::workflow::TaskNeeds`]).
//!
//! Such a task is *held*: it stays among its job's pending tasks (it is waiting) but is not
//! placed until what it needs has succeeded. Being held follows from the state alone, since
//! what a task needs only ever moves one way (a success is final): a pending task never
//! attempted is held exactly when something it needs has not succeeded. So nothing here is
//! encoded; [`ClusterState::restore_added`] works it out, and a task is released the moment
//! its last need succeeds. All of it is index ranges and one counter per rule: a million-task
//! array pairing with another costs bytes until its tasks run.
//!
//! A needed task of the same job that fails for good cancels the tasks needing it (in turn,
//! those needing them), so the job can end, as failed. A paired job that fails or is
//! cancelled cancels the job, as `--after` does.

use std::collections::{BTreeMap, BTreeSet};

use super::{ApplyCtx, ClusterState, Job};
use crate::index_set::IndexSet;
use crate::journal::EventKind;
use crate::model::{JobId, JobState, TaskId, TaskIndex, TaskState};
use crate::workflow::JobOptions;

/// Below this many candidates, each is looked up in the paired jobs one by one; above, the
/// paired jobs' unfinished tasks are gathered as ranges once.
const LOOKUP_ONE_BY_ONE: u64 = 64;

impl Job {
    /// Array tasks that have not succeeded (yet or for good): waiting, in flight, failed,
    /// cancelled. Ranges: cheap however many tasks the job has.
    pub(super) fn not_succeeded(&self) -> IndexSet {
        let mut out = self.pending.clone();
        out.union_with(&self.never_ran);
        for &i in self.tasks.keys() {
            out.insert(i);
        }
        for (&i, s) in &self.settled {
            if s.state != TaskState::Succeeded {
                out.insert(i);
            }
        }
        out
    }

    fn has_succeeded(&self, index: TaskIndex) -> bool {
        self.finished(index).is_some_and(|s| s.state == TaskState::Succeeded)
    }
}

/// What task-level dependencies keep beside the jobs; derived, never encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// Array tasks of unfinished jobs waiting for tasks they need (a subset of the job's
    /// pending tasks, none of them ever attempted).
    pub(crate) tasks: BTreeMap<JobId, IndexSet>,
    /// For each unfinished job with `needs` rules, per rule, how many of the tasks it needs
    /// have not succeeded.
    pub(crate) left: BTreeMap<JobId, Vec<u64>>,
    /// Unfinished jobs and the unfinished jobs pairing their tasks with theirs (`--each`).
    pub(crate) pairing: BTreeMap<JobId, BTreeSet<JobId>>,
}

impl ClusterState {
    /// Whether `job`'s task-level dependencies are followed (a re-run's are not: what it
    /// makes again was needed before, and it reads the original job's).
    fn follows_needs(&self, job: JobId, options: &JobOptions) -> bool {
        (!options.each.is_empty() || !options.needs.is_empty()) && !self.added.reruns.contains_key(&job)
    }

    /// A job just submitted (and not cancelled at once): holds the tasks whose needs have not
    /// succeeded.
    pub(super) fn hold_new_job(&mut self, job: JobId, options: &JobOptions) {
        if !self.follows_needs(job, options) {
            return;
        }
        let Some(j) = self.jobs.get(&job) else { return };
        let mut held = IndexSet::new();
        let mut left = Vec::with_capacity(options.needs.len());
        for rule in &options.needs {
            held.union_with(&rule.tasks);
            left.push(rule.needs.len());
        }
        let indices = j.pending.clone();
        for &up in &options.each {
            let Some(upstream) = self.jobs.get(&up).filter(|u| !u.state.is_terminal()) else { continue };
            held.union_with(&indices.intersection(&upstream.not_succeeded()));
            self.added.held.pairing.entry(up).or_default().insert(job);
        }
        if !left.is_empty() {
            self.added.held.left.insert(job, left);
        }
        if !held.is_empty() {
            self.added.held.tasks.insert(job, held);
        }
        self.refresh_queue(job);
    }

    /// Array task `task` succeeded: it counts for the rules of its job that need it, and the
    /// tasks paired with it or needing it start if it was the last thing they waited for.
    pub(super) fn needed_task_succeeded(&mut self, task: TaskId) {
        let Some(index) = task.slot.array_index() else { return };
        let pairing: Vec<JobId> =
            self.added.held.pairing.get(&task.job).map(|d| d.iter().copied().collect()).unwrap_or_default();
        for dependent in pairing {
            self.release_ready(dependent, IndexSet::range(index, index));
        }
        let Some(left) = self.added.held.left.get_mut(&task.job) else { return };
        let Some(options) = self.added.options.get(&task.job) else { return };
        let mut candidates = IndexSet::new();
        for (rule, left) in options.needs.iter().zip(left.iter_mut()) {
            if rule.needs.contains(index) {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    candidates.union_with(&rule.tasks);
                }
            }
        }
        if !candidates.is_empty() {
            self.release_ready(task.job, candidates);
        }
    }

    /// Array task `task` failed for good: the tasks of its job that need it will never run, nor
    /// those needing them in turn. They are cancelled without running, so the job can end.
    pub(super) fn needed_task_failed(&mut self, ctx: ApplyCtx, task: TaskId) {
        let Some(index) = task.slot.array_index() else { return };
        if !self.added.held.left.contains_key(&task.job) {
            return;
        }
        let Some(options) = self.added.options.get(&task.job) else { return };
        let mut gone = IndexSet::range(index, index);
        let mut broken = vec![false; options.needs.len()];
        let mut cancelled = IndexSet::new();
        // A worklist over the rules: each breaks at most once.
        loop {
            let held = self.added.held.tasks.get(&task.job).cloned().unwrap_or_default();
            let mut more = IndexSet::new();
            for (k, rule) in options.needs.iter().enumerate() {
                if !broken[k] && rule.needs.intersects(&gone) {
                    broken[k] = true;
                    more.union_with(&rule.tasks.intersection(&held));
                }
            }
            more.subtract(&cancelled);
            if more.is_empty() {
                break;
            }
            cancelled.union_with(&more);
            gone = more;
        }
        if cancelled.is_empty() {
            return;
        }
        let Some(job) = self.jobs.get_mut(&task.job) else { return };
        job.pending.subtract(&cancelled);
        job.never_ran.union_with(&cancelled);
        job.counts.waiting -= cancelled.len();
        job.counts.cancelled += cancelled.len();
        if let Some(held) = self.added.held.tasks.get_mut(&task.job) {
            held.subtract(&cancelled);
            if held.is_empty() {
                self.added.held.tasks.remove(&task.job);
            }
        }
        self.journal.record(ctx.at_ms, EventKind::TasksNotRun { job: task.job, tasks: cancelled.len(), needed: task });
        self.refresh_queue(task.job);
    }

    /// Releases those of `candidates` held for `job` whose every need has succeeded now.
    fn release_ready(&mut self, job: JobId, candidates: IndexSet) {
        let Some(held) = self.added.held.tasks.get(&job) else { return };
        let Some(options) = self.added.options.get(&job) else { return };
        let mut ready = candidates.intersection(held);
        if ready.is_empty() {
            return;
        }
        if let Some(left) = self.added.held.left.get(&job) {
            for (rule, left) in options.needs.iter().zip(left) {
                if *left > 0 {
                    ready.subtract(&rule.tasks);
                }
            }
        }
        for up in &options.each {
            let Some(upstream) = self.jobs.get(up).filter(|u| !u.state.is_terminal()) else { continue };
            if ready.len() <= LOOKUP_ONE_BY_ONE {
                let waiting: Vec<TaskIndex> = ready.iter().filter(|&i| !upstream.has_succeeded(i)).collect();
                for i in waiting {
                    ready.remove(i);
                }
            } else {
                ready.subtract(&upstream.not_succeeded());
            }
        }
        if ready.is_empty() {
            return;
        }
        if let Some(held) = self.added.held.tasks.get_mut(&job) {
            held.subtract(&ready);
            if held.is_empty() {
                self.added.held.tasks.remove(&job);
            }
        }
        self.refresh_queue(job);
    }

    /// `job` ended: it pairs with nothing any more, and the jobs pairing with it are either
    /// free of it (it succeeded: all they waited for there is done) or cancelled.
    pub(super) fn needs_job_ended(&mut self, ctx: ApplyCtx, job: JobId, state: JobState) {
        self.added.held.tasks.remove(&job);
        self.added.held.left.remove(&job);
        let each = self.added.options.get(&job).map(|o| o.each.clone()).unwrap_or_default();
        for up in each {
            if let Some(d) = self.added.held.pairing.get_mut(&up) {
                d.remove(&job);
                if d.is_empty() {
                    self.added.held.pairing.remove(&up);
                }
            }
        }
        let Some(dependents) = self.added.held.pairing.remove(&job) else { return };
        for dependent in dependents {
            if state == JobState::Succeeded {
                let everything = self.added.held.tasks.get(&dependent).cloned().unwrap_or_default();
                self.release_ready(dependent, everything);
            } else if self.jobs.get(&dependent).is_some_and(|d| !d.state.is_terminal()) {
                self.added.unmet.insert(dependent, crate::workflow::Unmet { upstream: job, state });
                self.cancel(ctx, dependent);
            }
        }
    }

    /// Whether `job` has waiting work other than tasks held for what they need (held tasks
    /// are pending too).
    pub(super) fn has_placeable_work(&self, job: &Job) -> bool {
        let held = self.added.held.tasks.get(&job.id).map_or(0, IndexSet::len);
        job.has_waiting_work() && (job.reduce_pending || job.pending.len() > held)
    }

    /// Whether array task `index` of `job` waits for tasks it needs.
    pub fn is_held(&self, job: JobId, index: TaskIndex) -> bool {
        self.added.held.tasks.get(&job).is_some_and(|h| h.contains(index))
    }

    /// `job`'s held tasks, if any.
    pub fn held_tasks(&self, job: JobId) -> Option<&IndexSet> {
        self.added.held.tasks.get(&job)
    }

    /// What follows from the jobs and their options (after a restore, or to check).
    pub(super) fn derive_held(&self) -> Held {
        let mut out = Held::default();
        for (&id, options) in &self.added.options {
            let Some(job) = self.jobs.get(&id).filter(|j| !j.state.is_terminal()) else { continue };
            if !self.follows_needs(id, options) {
                continue;
            }
            let mut waiting = IndexSet::new();
            if !options.needs.is_empty() {
                let not_succeeded = job.not_succeeded();
                let left: Vec<u64> = options.needs.iter().map(|r| r.needs.intersection(&not_succeeded).len()).collect();
                for (rule, left) in options.needs.iter().zip(&left) {
                    if *left > 0 {
                        waiting.union_with(&rule.tasks);
                    }
                }
                out.left.insert(id, left);
            }
            for &up in &options.each {
                let Some(upstream) = self.jobs.get(&up).filter(|u| !u.state.is_terminal()) else { continue };
                waiting.union_with(&upstream.not_succeeded());
                out.pairing.entry(up).or_default().insert(id);
            }
            let mut never_attempted = job.pending.clone();
            for &i in job.tasks.keys() {
                never_attempted.remove(i);
            }
            let held = never_attempted.intersection(&waiting);
            if !held.is_empty() {
                out.tasks.insert(id, held);
            }
        }
        out
    }
}

impl Held {
    /// The held tasks are pending ones; `derived` is what the jobs say it should be.
    pub(super) fn sanity_check(&self, jobs: &BTreeMap<JobId, Job>, derived: &Held) {
        for (id, held) in &self.tasks {
            let job = jobs.get(id).unwrap_or_else(|| panic!("held tasks of removed job {id}"));
            assert!(!held.is_empty(), "job {id} holds an empty set");
            assert!(held.is_subset(&job.pending), "job {id} holds tasks not pending");
        }
        assert_eq!(self, derived, "held tasks differ from what the state implies");
    }
}
