//! The replicated cluster state and its deterministic transition function.
//!
//! ```text
//!  HTTP submit ─┐                      ┌─ Response (job id, runs to push, attempts to kill)
//!  worker msgs ─┼─▶ Command ─▶ Raft log ─▶ ClusterState::apply(ctx, proposal)
//!  scheduler ───┘   (batched)  (quorum)    same result on every master
//! ```
//!
//! Nothing here does I/O or reads a clock: the leader's time arrives in [`ApplyCtx`], so every
//! replica that applies the same log reaches the same state.

mod apply;
mod autoscale;
mod needs;
mod retention;
mod workflow;

pub use retention::{JobPresence, JobRetention, JobRetentionError, PurgeOutcome, Removal, RemovalReason};

pub use crate::model::{JobState, TaskState};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::index_set::IndexSet;
use crate::journal::Journal;
use crate::model::{Fence, JobId, JobSpec, Millis, NodeId, Outcome, TaskId, TaskIndex, TaskSlot};
use crate::reason::{JobFailure, LostReason};
use crate::records::RecordOp;

/// Submission request ids remembered for idempotent retries.
pub const REQUEST_ID_WINDOW: usize = 100_000;
/// Lost workers kept for `status` before the oldest are forgotten.
pub const LOST_WORKERS_KEPT: usize = 1_000;

/// Where a command is applied: its log position and the leader's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyCtx {
    pub index: u64,
    /// Term of the leader that wrote the entry; becomes the term of assignments' fences.
    pub term: u64,
    pub at_ms: Millis,
}

/// Array tasks of a job by state. The reduce task is not counted here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub waiting: u64,
    pub assigned: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl TaskCounts {
    pub fn unfinished(&self) -> u64 {
        self.waiting + self.assigned + self.running
    }
}

/// The outcome recorded for one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub fence: Fence,
    pub worker: String,
    pub outcome: Outcome,
    pub finished_at: Millis,
}

/// A task that has been assigned at least once. Tasks that never left the queue exist only as
/// indices in [`Job::pending`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub state: TaskState,
    /// Attempts started so far; the current attempt's number.
    pub attempts: u32,
    /// Failed runs, counted against the job's retries.
    pub failures: u32,
    /// Times the task's worker was lost while holding it.
    pub losses: u32,
    /// The latest recorded outcome: the final one once the task is finished.
    pub result: Option<TaskResult>,
}

impl Task {
    fn new() -> Self {
        Task { state: TaskState::Waiting, attempts: 0, failures: 0, losses: 0, result: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub submitted_at: Millis,
    pub finished_at: Option<Millis>,
    pub state: JobState,
    pub total: u64,
    /// Array tasks waiting to be assigned (new or re-queued).
    pub pending: IndexSet,
    /// Array tasks assigned at least once and not finished. A finished task's record goes to
    /// the stored records ([`crate::records`]); memory keeps only [`Job::settled`] for it.
    pub tasks: BTreeMap<TaskIndex, Task>,
    /// Finished array tasks other than those that succeeded at their first attempt (by far the
    /// most): their final state and attempts, so that a late or repeated report is answered
    /// exactly as if the record were in memory. A finished task in neither map succeeded at
    /// attempt 1.
    pub settled: BTreeMap<TaskIndex, Settled>,
    /// Array tasks cancelled before any attempt of them was assigned.
    pub never_ran: IndexSet,
    /// The reduce step, once it has been assigned. Once finished its result is in the stored
    /// records and `result` here is empty; `reduce_recorded` keeps that result's fence.
    pub reduce: Option<Task>,
    pub reduce_recorded: Option<Fence>,
    /// The reduce step is waiting to be assigned.
    pub reduce_pending: bool,
    pub counts: TaskCounts,
    /// Why the job failed (the first task that exhausted its retries).
    pub failure: Option<JobFailure>,
    /// Run times of its array tasks' recorded attempts, for placement by expected work.
    pub measured: Measured,
}

/// What memory keeps of a finished array task whose record is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub state: TaskState,
    pub attempts: u32,
    /// The fence of its recorded result, if one was recorded: a report naming it is a repeat.
    pub recorded: Option<Fence>,
}

/// A running sum of task run times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    pub total_ms: u64,
    pub count: u64,
}

impl Measured {
    /// The mean run time, once there is one.
    pub fn mean_ms(&self) -> Option<u64> {
        self.total_ms.checked_div(self.count)
    }
}

impl Job {
    pub fn task(&self, slot: TaskSlot) -> Option<&Task> {
        match slot {
            TaskSlot::Array(i) => self.tasks.get(&i),
            TaskSlot::Reduce => self.reduce.as_ref(),
        }
    }

    pub fn has_waiting_work(&self) -> bool {
        !self.state.is_terminal() && (!self.pending.is_empty() || self.reduce_pending)
    }

    /// Where a finished array task ended, from what memory keeps: `None` if `index` is not a
    /// finished task of this job (unknown, waiting or in flight, or never ran).
    pub fn finished(&self, index: TaskIndex) -> Option<Settled> {
        if let Some(s) = self.settled.get(&index) {
            return Some(s.clone());
        }
        let finished = self.spec.has_index(index)
            && !self.pending.contains(index)
            && !self.tasks.contains_key(&index)
            && !self.never_ran.contains(index);
        // Its result came from attempt 1; the term of that attempt is not kept.
        finished.then_some(Settled { state: TaskState::Succeeded, attempts: 1, recorded: None })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Ready,
    Lost,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Ready => "ready",
            WorkerState::Lost => "lost",
        }
    }
}

/// Whether a worker is in service: an operator's decision (`worker cordon`, `worker drain`),
/// or the worker's own when it was asked to stop (SIGTERM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Maintenance {
    #[default]
    InService,
    /// Takes no new tasks; what it holds runs on.
    Cordoned,
    /// Takes no new tasks; its queued ones move elsewhere, its running ones finish until
    /// `deadline` (leader clock), after which they are stopped and re-queued.
    Draining { deadline: Option<Millis>, by_worker: bool },
    /// Drained: holds nothing and takes nothing until uncordoned (or, when it drained itself
    /// to stop, until it registers again).
    Drained { by_worker: bool },
}

/// A worker's condition as status, the CLI and the dashboard name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerCondition {
    Ready,
    Cordoned,
    Draining,
    Drained,
    Lost,
}

impl WorkerCondition {
    pub fn name(self) -> &'static str {
        match self {
            WorkerCondition::Ready => "ready",
            WorkerCondition::Cordoned => "cordoned",
            WorkerCondition::Draining => "draining",
            WorkerCondition::Drained => "drained",
            WorkerCondition::Lost => "lost",
        }
    }
}

/// A change of a worker's [`Maintenance`], as commanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaintenanceChange {
    Cordon,
    /// `deadline_ms`: how long running tasks may take before they are stopped and re-queued
    /// (none: they may take as long as they take).
    Drain {
        deadline_ms: Option<u64>,
        by_worker: bool,
    },
    Uncordon,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub name: String,
    pub instance: u64,
    /// Cluster-assigned number of this join; assignments are only valid for the incarnation
    /// they were made to.
    pub incarnation: u64,
    pub cpus: u32,
    /// Cpus' worth of tasks it may hold queued beyond `cpus` (see `WorkerInfo::queue`).
    pub queue: u32,
    /// Bytes of memory it offers to tasks that ask for memory.
    pub memory: Option<u64>,
    /// Named resources it offers: units `0..count` of each.
    pub resources: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub state: WorkerState,
    /// Cpus of the attempts it holds, running or queued: at most `cpus + queue`.
    pub cpus_used: u32,
    /// Attempts this worker holds (assigned or running).
    pub tasks: BTreeMap<TaskId, Fence>,
    pub joined_at: Millis,
    pub lost_at: Option<Millis>,
    pub lost_reason: Option<LostReason>,
    /// What each attempt that asked for resources holds (units by resource, memory).
    pub grants: BTreeMap<TaskId, Grant>,
    pub maintenance: Maintenance,
}

/// The resources one attempt holds on its worker while assigned or running.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Unit numbers held, by resource name (e.g. gpu -> [0, 1]).
    pub units: BTreeMap<String, Vec<u32>>,
    pub memory: u64,
}

impl Worker {
    /// Units of `resource` held by the attempts it holds.
    pub fn units_held(&self, resource: &str) -> u32 {
        self.grants.values().filter_map(|g| g.units.get(resource)).map(|u| u.len() as u32).sum()
    }

    /// Bytes of memory held by the attempts it holds.
    pub fn memory_held(&self) -> u64 {
        self.grants.values().map(|g| g.memory).sum()
    }

    /// Whether it offers enough of each resource the spec asks for, were it idle.
    pub fn could_ever_hold(&self, spec: &JobSpec) -> bool {
        spec.resources.iter().all(|(name, units)| self.resources.get(name).is_some_and(|have| have >= units))
            && spec.memory.is_none_or(|m| self.memory.is_some_and(|have| have >= m))
    }

    /// Whether the resources the spec asks for are free now (cpus are checked apart).
    pub fn has_resources_for(&self, spec: &JobSpec) -> bool {
        if !spec.holds_resources() {
            return true;
        }
        spec.resources.iter().all(|(name, units)| {
            self.resources.get(name).is_some_and(|have| have.saturating_sub(self.units_held(name)) >= *units)
        }) && spec.memory.is_none_or(|m| self.memory.is_some_and(|have| have.saturating_sub(self.memory_held()) >= m))
    }

    /// Hands `task` the lowest free units of each resource the spec asks for, and its memory.
    /// The caller checked [`Worker::has_resources_for`].
    fn grant(&mut self, task: TaskId, spec: &JobSpec) {
        if !spec.holds_resources() {
            return;
        }
        let mut grant = Grant { units: BTreeMap::new(), memory: spec.memory.unwrap_or(0) };
        for (name, wanted) in &spec.resources {
            let taken: BTreeSet<u32> =
                self.grants.values().filter_map(|g| g.units.get(name)).flatten().copied().collect();
            let offered = self.resources.get(name).copied().unwrap_or(0);
            let units: Vec<u32> = (0..offered).filter(|u| !taken.contains(u)).take(*wanted as usize).collect();
            grant.units.insert(name.clone(), units);
        }
        self.grants.insert(task, grant);
    }

    /// Cpus not taken by the attempts it holds: room to start tasks at once.
    pub fn free_cpus(&self) -> u32 {
        self.cpus.saturating_sub(self.cpus_used)
    }

    /// Cpus busy running attempts: a worker starts what it holds as soon as a cpu frees, so
    /// the attempts it holds fill its cpus first.
    pub fn cpus_busy(&self) -> u32 {
        self.cpus_used.min(self.cpus)
    }

    /// Cpus' worth of attempts it holds queued, waiting for a free cpu.
    pub fn cpus_queued(&self) -> u32 {
        self.cpus_used.saturating_sub(self.cpus)
    }

    /// Room left for attempts, counting its queue.
    pub fn free_capacity(&self) -> u32 {
        (self.cpus + self.queue).saturating_sub(self.cpus_used)
    }

    /// Whether the scheduler may give it new tasks.
    pub fn takes_work(&self) -> bool {
        self.state == WorkerState::Ready && self.maintenance == Maintenance::InService
    }

    pub fn condition(&self) -> WorkerCondition {
        match (self.state, self.maintenance) {
            (WorkerState::Lost, _) => WorkerCondition::Lost,
            (WorkerState::Ready, Maintenance::InService) => WorkerCondition::Ready,
            (WorkerState::Ready, Maintenance::Cordoned) => WorkerCondition::Cordoned,
            (WorkerState::Ready, Maintenance::Draining { .. }) => WorkerCondition::Draining,
            (WorkerState::Ready, Maintenance::Drained { .. }) => WorkerCondition::Drained,
        }
    }

    /// The drain deadline, once passed, while it still holds attempts.
    pub fn drain_overdue(&self, now_ms: Millis) -> bool {
        matches!(self.maintenance, Maintenance::Draining { deadline: Some(d), .. } if d <= now_ms)
            && self.state == WorkerState::Ready
            && !self.tasks.is_empty()
    }
}

/// Everything the masters agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    next_job_id: JobId,
    jobs: BTreeMap<JobId, Job>,
    /// Jobs with work waiting, in scheduling order: higher priority first, then older first.
    queue: BTreeSet<(Reverse<i32>, JobId)>,
    /// How jobs of one priority share the workers.
    sharing: crate::model::Sharing,
    workers: BTreeMap<String, Worker>,
    next_incarnation: u64,
    request_ids: BTreeMap<String, JobId>,
    request_order: VecDeque<String>,
    journal: Journal,
    /// Leader and term as of the last `LeaderElected` entry.
    leader: Option<(NodeId, u64)>,
    unreachable_masters: BTreeSet<NodeId>,
    /// Index of the last applied entry.
    applied_index: u64,
    /// Term of the last committed assignment (shows when scheduling resumed after a failover).
    last_assignment_term: u64,
    /// Term and leader clock of the last applied entry: a new leader's first entry measures
    /// how long the cluster went without a commit (journalled with its election).
    last_entry: Option<(u64, Millis)>,
    /// Which finished jobs stay, and which were removed.
    retained: retention::Retained,
    /// Ids of masters removed from the group: never accepted again, so a stale process with
    /// an old id cannot come back as the new member.
    retired_masters: BTreeSet<NodeId>,
    /// The cluster's identity (0 until its first leader chose one).
    cluster_id: u64,
    /// What 0.2.0 added: tokens, job owners, task limits. Not in this struct's encoding,
    /// which 0.1.0 reads: a snapshot carries it in a section of its own, written only once it
    /// holds something (so only once every voter runs a release that reads it, see
    /// `version::Feature`).
    #[serde(skip)]
    added: Added,
    /// Record changes made by entries applied since the shell last took them.
    #[serde(skip)]
    record_ops: RecordOutbox,
    /// Jobs that ended in the command being applied, whose dependents are seen to before
    /// the command's response (empty between commands).
    #[serde(skip)]
    ended_now: Transient<Vec<(JobId, JobState)>>,
}

/// Working data of one `apply`, not part of the replicated state: two replicas at the same
/// index are equal whatever it holds.
#[derive(Clone, Debug, Default)]
struct Transient<T>(T);

impl<T> PartialEq for Transient<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Transient<T> {}

/// The replicated state release 0.2.0 added, encoded apart from the rest (snapshot format 2's
/// second section) so that a state without any of it is still one 0.1.0 reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub(crate) access: crate::access::Access,
    /// The options (limits, dependencies, output policy) of each kept job that asked for any.
    pub(crate) options: BTreeMap<JobId, crate::workflow::JobOptions>,
    /// Jobs waiting for others to end, with the ones they still wait for. Such a job is out
    /// of the scheduling queue.
    pub(crate) waiting_on: BTreeMap<JobId, BTreeSet<JobId>>,
    /// The reverse: unfinished jobs and the jobs waiting for them.
    pub(crate) dependents: BTreeMap<JobId, BTreeSet<JobId>>,
    /// Jobs cancelled because a job they waited for did not succeed.
    pub(crate) unmet: BTreeMap<JobId, crate::workflow::Unmet>,
    /// What each finished task left in its output directory, and where copies are.
    pub(crate) outputs: BTreeMap<TaskId, crate::workflow::TaskOutputs>,
    /// Tasks whose last attempt failed because its outputs could not be kept, and why (the
    /// result's encoding, 0.1.0's, has no room for it).
    pub(crate) output_errors: BTreeMap<TaskId, crate::workflow::OutputError>,
    /// Where each worker serves the outputs it holds.
    pub(crate) endpoints: BTreeMap<String, String>,
    /// Log index of the last change to which workers can take copies (endpoints, workers
    /// joining or lost): the leader tells workers their peers again after it.
    pub(crate) peers_changed: u64,
    /// Tasks whose outputs have fewer copies than their job asks for (a copy lost with its
    /// worker or found damaged, or too few peers when the task ended): the leader has
    /// workers copy them from a holder until they have enough. Follows from `outputs` and
    /// `options`, so it is not encoded: [`ClusterState::restore_added`] works it out.
    #[serde(skip)]
    pub(crate) short_of_copies: BTreeSet<TaskId>,
    /// Jobs that run tasks again whose every output copy was lost, and the job whose tasks
    /// they are (their outputs become that job's when they succeed).
    pub(crate) reruns: BTreeMap<JobId, JobId>,
    /// Periodic jobs by name.
    pub(crate) schedules: BTreeMap<String, crate::schedule::Schedule>,
    /// Whole stdout/stderr of tasks whose latest recorded attempt wrote more than its result
    /// keeps.
    pub(crate) logs: BTreeMap<TaskId, crate::workflow::TaskLogs>,
    /// Tasks waiting for the tasks they need (`--each`, `needs`). Follows from the jobs and
    /// `options`, so it is not encoded: [`ClusterState::restore_added`] works it out.
    #[serde(skip)]
    pub(crate) held: needs::Held,
    /// Autoscaling pools by name: policy and what each has under way.
    pub(crate) pools: BTreeMap<String, crate::autoscale::Pool>,
}

impl Added {
    /// Whether nothing was ever recorded here (a state an older release can still read).
    pub fn is_empty(&self) -> bool {
        self.access.is_empty()
            && self.options.is_empty()
            && self.unmet.is_empty()
            && self.outputs.is_empty()
            && self.output_errors.is_empty()
            && self.endpoints.is_empty()
            && self.reruns.is_empty()
            && self.schedules.is_empty()
            && self.logs.is_empty()
            && self.pools.is_empty()
    }
}

/// The record changes `apply` made, waiting for the shell to store them. Not part of the
/// replicated state: two replicas at the same index are equal whatever their outboxes hold.
#[derive(Clone, Debug, Default)]
struct RecordOutbox(Vec<RecordOp>);

impl PartialEq for RecordOutbox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RecordOutbox {}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            next_job_id: 1,
            jobs: BTreeMap::new(),
            queue: BTreeSet::new(),
            sharing: crate::model::Sharing::default(),
            workers: BTreeMap::new(),
            next_incarnation: 1,
            request_ids: BTreeMap::new(),
            request_order: VecDeque::new(),
            journal: Journal::default(),
            leader: None,
            unreachable_masters: BTreeSet::new(),
            applied_index: 0,
            last_assignment_term: 0,
            last_entry: None,
            retained: retention::Retained::default(),
            retired_masters: BTreeSet::new(),
            cluster_id: 0,
            added: Added::default(),
            record_ops: RecordOutbox::default(),
            ended_now: Transient::default(),
        }
    }
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The record changes of the entries applied since the last call, in order: the shell
    /// stores them before anyone reads the state of those entries.
    pub fn take_record_ops(&mut self) -> Vec<RecordOp> {
        std::mem::take(&mut self.record_ops.0)
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.jobs.values()
    }

    /// Jobs with ids below `before`, newest first.
    pub fn jobs_before(&self, before: JobId) -> impl Iterator<Item = &Job> {
        self.jobs.range(..before).rev().map(|(_, j)| j)
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.get(name)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// Jobs with waiting work, in the order the scheduler serves them.
    pub fn queued_jobs(&self) -> impl Iterator<Item = &Job> {
        self.queue.iter().filter_map(|(_, id)| self.jobs.get(id))
    }

    pub fn sharing(&self) -> crate::model::Sharing {
        self.sharing
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn leader(&self) -> Option<(NodeId, u64)> {
        self.leader
    }

    /// The leader clock of the last applied entry (milliseconds; 0 before any).
    pub fn clock_ms(&self) -> Millis {
        self.last_entry.map_or(0, |(_, at)| at)
    }

    /// The cluster's identity (0 until its first leader chose one).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Gives a restored or recovered copy of a cluster a new identity and membership history:
    /// the start of a new cluster from a snapshot, never an apply.
    pub fn reidentify(&mut self, cluster_id: u64) {
        self.cluster_id = cluster_id;
        self.retired_masters.clear();
        self.unreachable_masters.clear();
    }

    /// Whether the state holds what only `feature`'s commands make: they were committed, so
    /// every voter read them then (releases are never downgraded).
    pub fn in_use(&self, feature: crate::version::Feature) -> bool {
        match feature {
            // Both came with 0.2.0, and only they fill the access section: anything in it
            // shows every voter read 0.2.0's commands.
            crate::version::Feature::Tokens | crate::version::Feature::Audit => !self.added.access.is_empty(),
            crate::version::Feature::TaskLimits => self.added.options.values().any(|o| !o.limits.is_empty()),
            crate::version::Feature::Workflows => {
                self.added.options.values().any(|o| o.uses_workflows())
                    || !self.added.outputs.is_empty()
                    || !self.added.output_errors.is_empty()
                    || !self.added.endpoints.is_empty()
                    || !self.added.schedules.is_empty()
                    || !self.added.logs.is_empty()
            }
            crate::version::Feature::Autoscale => !self.added.pools.is_empty(),
        }
    }

    pub fn access(&self) -> &crate::access::Access {
        &self.added.access
    }

    /// What each task of `job` may use at most, if the job asked for limits.
    pub fn task_limits(&self, job: JobId) -> Option<&crate::model::TaskLimits> {
        self.added.options.get(&job).map(|o| &o.limits).filter(|l| !l.is_empty())
    }

    /// What `job` asked for beyond its spec, if anything.
    pub fn job_options(&self, job: JobId) -> Option<&crate::workflow::JobOptions> {
        self.added.options.get(&job)
    }

    /// Whether a task of `job` may run only on a worker of release 0.2.0 or later (its
    /// limits, its inputs or its output policy travel in a message older workers cannot read).
    pub fn needs_current_workers(&self, job: JobId) -> bool {
        self.added.options.contains_key(&job)
    }

    /// The jobs `job` still waits for (empty when it waits for none).
    pub fn waiting_on(&self, job: JobId) -> Option<&BTreeSet<JobId>> {
        self.added.waiting_on.get(&job)
    }

    /// Why `job` was cancelled, if a job it waited for did not succeed.
    pub fn unmet(&self, job: JobId) -> Option<crate::workflow::Unmet> {
        self.added.unmet.get(&job).copied()
    }

    /// Every kept job that named `job` in `--after`/`--after-finished`, and the re-runs of
    /// its lost outputs, in id order (whether or not they still wait).
    pub fn downstream_of(&self, job: JobId) -> Vec<JobId> {
        let mut out: Vec<JobId> = self
            .added
            .options
            .iter()
            .filter(|(_, o)| o.upstream().contains(&job))
            .map(|(id, _)| *id)
            .chain(self.added.reruns.iter().filter(|(_, o)| **o == job).map(|(r, _)| *r))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The jobs that wait for `job` while it has not ended.
    pub fn dependents(&self, job: JobId) -> Option<&BTreeSet<JobId>> {
        self.added.dependents.get(&job)
    }

    /// What the task left in its output directory, if it left anything.
    pub fn task_outputs(&self, task: TaskId) -> Option<&crate::workflow::TaskOutputs> {
        self.added.outputs.get(&task)
    }

    /// The outputs of every task that left any.
    pub fn all_outputs(&self) -> impl Iterator<Item = &crate::workflow::TaskOutputs> {
        self.added.outputs.values()
    }

    /// The outputs of every task of `job` that left any, by task.
    pub fn job_outputs(&self, job: JobId) -> impl Iterator<Item = (&TaskId, &crate::workflow::TaskOutputs)> {
        self.added.outputs.range(TaskId::array(job, 0)..=TaskId::reduce(job))
    }

    /// Where `worker` serves its outputs, if it said.
    /// Why the task's last attempt failed to keep its outputs, if that is why it failed.
    pub fn output_error(&self, task: TaskId) -> Option<&crate::workflow::OutputError> {
        self.added.output_errors.get(&task)
    }

    pub fn endpoint(&self, worker: &str) -> Option<&str> {
        self.added.endpoints.get(worker).map(String::as_str)
    }

    /// The whole logs of the task's latest attempt, if they were longer than its result keeps.
    pub fn task_logs(&self, task: TaskId) -> Option<&crate::workflow::TaskLogs> {
        self.added.logs.get(&task)
    }

    /// Every task's whole logs, with the worker holding them.
    pub fn all_logs(&self) -> impl Iterator<Item = &crate::workflow::TaskLogs> {
        self.added.logs.values()
    }

    pub fn schedules(&self) -> &BTreeMap<String, crate::schedule::Schedule> {
        &self.added.schedules
    }

    /// The job whose lost outputs `job` makes again, if it is such a re-run.
    pub fn rerun_of(&self, job: JobId) -> Option<JobId> {
        self.added.reruns.get(&job).copied()
    }

    /// Tasks whose outputs have fewer copies than their job asks for, in task order.
    pub fn short_of_copies(&self) -> &BTreeSet<TaskId> {
        &self.added.short_of_copies
    }

    /// Copies of each output of `job`'s tasks the cluster keeps: the one where it ran and
    /// the job's replicas.
    pub fn wanted_copies(&self, job: JobId) -> usize {
        let replicas = self.added.options.get(&job).map_or(crate::workflow::DEFAULT_REPLICAS, |o| o.replicas());
        1 + replicas as usize
    }

    /// Log index of the last change to the workers that can take copies of outputs.
    pub fn peers_changed(&self) -> u64 {
        self.added.peers_changed
    }

    /// The part of the state a snapshot keeps in a section of its own (see [`Added`]).
    pub fn added(&self) -> &Added {
        &self.added
    }

    /// Puts back the section read from a snapshot (the rest of the state's encoding does not
    /// hold it).
    pub fn restore_added(&mut self, added: Added) {
        self.added = added;
        let short: BTreeSet<TaskId> = self
            .added
            .outputs
            .iter()
            .filter(|(task, outputs)| outputs.holders.len() < self.wanted_copies(task.job))
            .map(|(task, _)| *task)
            .collect();
        self.added.short_of_copies = short;
        self.added.held = self.derive_held();
    }

    pub fn retired_masters(&self) -> &BTreeSet<NodeId> {
        &self.retired_masters
    }

    pub fn unreachable_masters(&self) -> &BTreeSet<NodeId> {
        &self.unreachable_masters
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn last_assignment_term(&self) -> u64 {
        self.last_assignment_term
    }

    /// Counts of jobs by state name.
    pub fn job_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for job in self.jobs.values() {
            *counts.entry(job.state.name()).or_insert(0) += 1;
        }
        counts
    }

    /// Checks every cross-structure invariant; tests call it after each step.
    pub fn sanity_check(&self) {
        let mut held: BTreeMap<&str, (u32, BTreeMap<TaskId, Fence>)> = BTreeMap::new();
        for job in self.jobs.values() {
            job.pending.sanity_check();
            let mut counts = TaskCounts { waiting: job.pending.len(), ..Default::default() };
            for (&index, task) in &job.tasks {
                let id = TaskId::array(job.id, index);
                assert!(task.attempts >= 1, "materialized task {id} never attempted");
                match &task.state {
                    TaskState::Waiting => {
                        assert!(job.pending.contains(index), "waiting task {id} not queued")
                    }
                    TaskState::Assigned { .. } => counts.assigned += 1,
                    TaskState::Running { .. } => counts.running += 1,
                    finished => panic!("finished task {id} ({}) kept in memory", finished.name()),
                }
                if !matches!(task.state, TaskState::Waiting) {
                    assert!(!job.pending.contains(index), "task {id} both queued and {:?}", task.state);
                }
                assert!(!job.settled.contains_key(&index), "task {id} both in flight and settled");
                if let Some((worker, fence)) = task.state.in_flight() {
                    let entry = held.entry(worker).or_default();
                    entry.0 += job.spec.cpus;
                    entry.1.insert(id, fence);
                }
            }
            let mut settled_cancelled = 0;
            for (&index, s) in &job.settled {
                let id = TaskId::array(job.id, index);
                assert!(!job.pending.contains(index) && !job.never_ran.contains(index), "settled task {id} queued");
                match s.state {
                    TaskState::Succeeded => counts.succeeded += 1,
                    TaskState::Failed => counts.failed += 1,
                    TaskState::Cancelled => settled_cancelled += 1,
                    ref other => panic!("task {id} settled as {}", other.name()),
                }
            }
            // Tasks cancelled because a task they needed failed never ran, beside waiting ones.
            let partly_cancelled = self.added.options.get(&job.id).is_some_and(|o| !o.needs.is_empty());
            assert!(
                job.pending.is_empty() || job.never_ran.is_empty() || partly_cancelled,
                "job {} both queued and never ran",
                job.id
            );
            assert_eq!(job.counts.cancelled, settled_cancelled + job.never_ran.len(), "job {} cancelled count", job.id);
            // Tasks in neither map nor set succeeded at their first attempt.
            let accounted =
                counts.waiting + counts.assigned + counts.running + job.settled.len() as u64 + job.never_ran.len();
            assert!(accounted <= job.total, "job {} has more tasks than it was given", job.id);
            counts.succeeded += job.total - accounted;
            if let Some(reduce) = &job.reduce {
                if let Some((worker, fence)) = reduce.state.in_flight() {
                    let entry = held.entry(worker).or_default();
                    entry.0 += job.spec.cpus;
                    entry.1.insert(TaskId::reduce(job.id), fence);
                }
            }
            assert_eq!(counts.waiting, job.counts.waiting, "job {} waiting count", job.id);
            assert_eq!(counts.assigned, job.counts.assigned, "job {} assigned count", job.id);
            assert_eq!(counts.running, job.counts.running, "job {} running count", job.id);
            assert_eq!(counts.succeeded, job.counts.succeeded, "job {} succeeded count", job.id);
            assert_eq!(counts.failed, job.counts.failed, "job {} failed count", job.id);
            let c = &job.counts;
            assert_eq!(
                c.unfinished() + c.succeeded + c.failed + c.cancelled,
                job.total,
                "job {} counts do not add up",
                job.id
            );
            let queued = self.queue.contains(&(Reverse(job.spec.priority), job.id));
            let blocked = self.added.waiting_on.contains_key(&job.id);
            assert_eq!(queued, self.has_placeable_work(job) && !blocked, "job {} queue membership", job.id);
            if blocked {
                assert!(!job.state.is_terminal(), "finished job {} still waits", job.id);
                // A job that reads lost outputs waits for their re-run whatever it started.
                let for_rerun = self.added.waiting_on[&job.id].iter().any(|up| self.added.reruns.contains_key(up));
                if !for_rerun {
                    assert_eq!(job.counts.waiting, job.total, "waiting job {} has started tasks", job.id);
                }
            }
            if job.state.is_terminal() {
                assert!(job.pending.is_empty() && !job.reduce_pending, "finished job {} has work", job.id);
            }
        }
        for worker in self.workers.values() {
            let (cpus, tasks) = held.remove(worker.name.as_str()).unwrap_or_default();
            assert_eq!(worker.cpus_used, cpus, "worker {} cpus_used", worker.name);
            assert_eq!(worker.tasks, tasks, "worker {} task list", worker.name);
            assert!(worker.grants.keys().all(|t| worker.tasks.contains_key(t)), "worker {} grants", worker.name);
            if worker.state == WorkerState::Ready {
                if let Maintenance::Drained { .. } = worker.maintenance {
                    assert!(worker.tasks.is_empty(), "drained worker {} holds {:?}", worker.name, worker.tasks);
                }
                if let Maintenance::Draining { .. } = worker.maintenance {
                    assert!(!worker.tasks.is_empty(), "draining worker {} holds nothing", worker.name);
                }
            }
            for (name, offered) in &worker.resources {
                let mut units: Vec<u32> =
                    worker.grants.values().filter_map(|g| g.units.get(name)).flatten().copied().collect();
                let held = units.len();
                units.sort_unstable();
                units.dedup();
                assert_eq!(units.len(), held, "worker {} gives out a {name} unit twice", worker.name);
                assert!(units.iter().all(|u| u < offered), "worker {} over-commits {name}", worker.name);
            }
            assert!(worker.memory_held() <= worker.memory.unwrap_or(0), "worker {} over-commits memory", worker.name);
            // No capacity check here: a worker may lower its queue below what it already
            // holds. Plans are checked against capacity where they are made and applied.
            if worker.state == WorkerState::Lost {
                assert!(worker.tasks.is_empty(), "lost worker {} holds tasks", worker.name);
            }
        }
        assert!(held.is_empty(), "tasks held by unknown workers: {:?}", held.keys());
        let finished: BTreeSet<(Millis, JobId)> =
            self.jobs.values().filter(|j| j.state.is_terminal()).filter_map(|j| Some((j.finished_at?, j.id))).collect();
        assert_eq!(finished, self.retained.finished, "the retention's index of finished jobs");
        assert!(
            finished.len() as u64 <= self.retained.setting.max_finished,
            "more finished jobs kept than the retention allows"
        );
        assert!(self.retained.removals.keys().all(|id| !self.jobs.contains_key(id)), "a removed job is back");
        assert_eq!(
            self.queue.len(),
            self.jobs
                .values()
                .filter(|j| self.has_placeable_work(j) && !self.added.waiting_on.contains_key(&j.id))
                .count()
        );
        self.added.sanity_check(&self.jobs);
        self.added.held.sanity_check(&self.jobs, &self.derive_held());
    }
}

#[cfg(test)]
pub(crate) mod tests;
