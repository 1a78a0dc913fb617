//! Commands: the only way the replicated state changes. Each Raft log entry carries one
//! [`Proposal`], a batch of commands stamped with the leader's clock, and produces one
//! [`Response`] per command.
//!
//! Commands are versioned by their variant order: new variants are only ever appended (the
//! encodings each release wrote are kept in `crates/proto/tests/formats.golden`), a new one
//! names its [`Feature`] so no older voter is sent it, and an older replica that meets one
//! anyway fails to decode it and stops loudly instead of diverging.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Fence, JobId, JobSpec, Millis, NodeId, Outcome, TaskId};
use crate::reason::{LostReason, Refusal, StaleReason};
use crate::version::Feature;

/// One Raft log entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing leader's wall clock; every replica applies this same time.
    pub at_ms: Millis,
    /// Shared, so that the log cache and replication clone entries without copying them.
    pub commands: Arc<Vec<Command>>,
}

impl Proposal {
    pub fn new(at_ms: Millis, commands: Vec<Command>) -> Self {
        Proposal { at_ms, commands: Arc::new(commands) }
    }
}

/// What a worker says about itself when it joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    /// Random id of the worker process: a different value under the same name means the
    /// worker restarted and lost whatever it was running.
    pub instance: u64,
    pub cpus: u32,
    /// Cpus' worth of tasks the worker keeps queued beyond those it runs, so that a finished
    /// task is replaced at once instead of after a round trip through the leader.
    pub queue: u32,
    /// Bytes of memory it offers to tasks that ask for memory.
    pub memory: Option<u64>,
    /// Named resources it offers, e.g. gpu=2: units 0 and 1.
    pub resources: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
}

/// A scheduler decision: run `task` on `worker`. Checked again when applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub task: TaskId,
    pub worker: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SubmitJob {
        spec: JobSpec,
        /// Client-chosen id that makes a retried submission idempotent.
        request_id: Option<String>,
    },
    CancelJob {
        job: JobId,
    },
    RegisterWorker(WorkerInfo),
    WorkerLost {
        name: String,
        incarnation: u64,
        reason: LostReason,
    },
    Assign {
        placements: Vec<Placement>,
    },
    TaskStarted {
        task: TaskId,
        fence: Fence,
        worker: String,
    },
    TaskFinished {
        task: TaskId,
        fence: Fence,
        worker: String,
        outcome: Outcome,
    },
    /// Written by each new leader first; its term is the entry's term.
    LeaderElected {
        node: NodeId,
    },
    MasterReachability {
        node: NodeId,
        reachable: bool,
    },
    /// A worker asks for a different queue depth (it measured how long its tasks take).
    SetWorkerQueue {
        worker: String,
        queue: u32,
    },
    /// How much of the event journal the cluster keeps (an operator's setting).
    SetJournalRetention(crate::journal::Retention),
    /// The worker confirmed it took this queued attempt out of its queue without starting it
    /// (the leader asked, to run it on an idle worker): the task waits to be placed again.
    TaskRevoked {
        task: TaskId,
        fence: Fence,
        worker: String,
    },
    /// How jobs of the same priority share the workers (an operator's setting).
    SetSharing(crate::model::Sharing),
    /// How long finished jobs stay (an operator's setting).
    SetJobRetention(crate::state::JobRetention),
    /// Remove these finished jobs now (`job purge`).
    PurgeJobs {
        jobs: Vec<JobId>,
    },
    /// The masters' Raft membership changed (committed by openraft before this is proposed):
    /// journalled, and a removed master's id is never accepted again.
    MembershipChanged(MemberChange),
    /// Cordon, drain or uncordon a worker (an operator's request, or the worker's own).
    SetMaintenance {
        worker: String,
        change: crate::state::MaintenanceChange,
    },
    /// The cluster's identity, chosen by its first leader: masters of another cluster (a
    /// restored or recovered copy) are refused by it. Applied only while none is set.
    SetClusterIdentity {
        id: u64,
    },
    /// The leader saw a draining worker's deadline pass: what it still holds is stopped and
    /// re-queued (answered with the attempts to stop).
    DrainOverdue {
        worker: String,
        incarnation: u64,
    },
    /// A named token: only its hash is replicated. `by` names the credential that asked.
    CreateToken {
        name: String,
        role: crate::access::Role,
        hash: crate::access::TokenHash,
        by: String,
    },
    /// Revoke a named token, or the bootstrap one ([`crate::access::BOOTSTRAP`]).
    RevokeToken {
        name: String,
    },
    /// [`Command::SubmitJob`] by a named token: the job remembers which one (a `submit` token
    /// may cancel only its own jobs).
    SubmitJobAs {
        spec: JobSpec,
        request_id: Option<String>,
        owner: String,
    },
    /// A request that asked to change something, for the journal (`events --kind audit`).
    Audit(crate::access::AuditRecord),
    /// [`Command::SubmitJob`] (or [`Command::SubmitJobAs`] with an owner) with what release
    /// 0.2.0 added: limits, the jobs it waits for, how its outputs are kept.
    SubmitJobWith {
        spec: JobSpec,
        request_id: Option<String>,
        owner: Option<String>,
        options: crate::workflow::JobOptions,
    },
    /// [`Command::TaskFinished`] for an attempt that left outputs (or failed to keep them):
    /// `outcome.outputs` travels here, beside the outcome whose encoding 0.1.0 reads.
    TaskFinishedWith {
        task: TaskId,
        fence: Fence,
        worker: String,
        outcome: Outcome,
        outputs: crate::workflow::Outputs,
    },
    /// Where a worker serves the outputs it holds (its own address for other workers and the
    /// masters to fetch from), as it reported after joining.
    SetWorkerEndpoint {
        worker: String,
        address: String,
    },
    /// A worker now holds a whole copy of each task's outputs (the leader asked it to copy
    /// them, to make up for copies lost or damaged).
    CopiesAdded {
        worker: String,
        tasks: Vec<TaskId>,
    },
    /// A worker found its copies of these blobs damaged and discarded them: every task
    /// whose outputs include one no longer counts it as a holder.
    CopiesCorrupt {
        worker: String,
        digests: Vec<crate::workflow::Digest>,
    },
    /// A periodic job (`schedule add`); refused if the name is taken.
    AddSchedule {
        name: String,
        schedule: Box<crate::schedule::Schedule>,
    },
    RemoveSchedule {
        name: String,
    },
    /// Pause or resume: a resumed schedule does not launch the periods it missed.
    PauseSchedule {
        name: String,
        paused: bool,
    },
    /// The leader saw this period of the schedule start: its job is submitted (or the period
    /// skipped), once; a period already done changes nothing.
    LaunchPeriod {
        name: String,
        period: crate::model::Millis,
    },
    /// An autoscaling pool's policy (`autoscale set`): a new pool, or a new policy for one.
    SetAutoscale {
        pool: String,
        policy: crate::autoscale::Policy,
    },
    /// The pool is no longer managed; the workers it started stay.
    RemoveAutoscale {
        pool: String,
    },
    /// A pool paused after failed launches tries again.
    ResumeAutoscale {
        pool: String,
    },
    /// The leader decided to start `count` workers: their names are chosen here (answered),
    /// and they count as on their way before any provider is asked.
    ScaleUp {
        pool: String,
        count: u32,
        reason: crate::autoscale::ScaleUpReason,
    },
    /// What the pool's provider said of starting `worker`.
    LaunchReported {
        pool: String,
        worker: String,
        outcome: crate::autoscale::LaunchOutcome,
    },
    /// The leader chose idle workers to go: each that still holds nothing drains (answered
    /// with those that do).
    ScaleDown {
        pool: String,
        workers: Vec<String>,
        reason: crate::autoscale::ScaleDownReason,
    },
    /// The provider was asked to stop or cancel `worker`: the pool lets go of it.
    LaunchEnded {
        pool: String,
        worker: String,
        why: crate::autoscale::LaunchEnd,
    },
}

impl Command {
    /// The feature this command belongs to if a release still supported during an upgrade
    /// cannot decode it (see [`crate::version`]): the leader proposes it only once every voter
    /// runs that feature's release. Every variant is listed, so a new one must choose.
    pub fn feature(&self) -> Option<Feature> {
        match self {
            Command::SubmitJob { .. }
            | Command::CancelJob { .. }
            | Command::RegisterWorker(_)
            | Command::WorkerLost { .. }
            | Command::Assign { .. }
            | Command::TaskStarted { .. }
            | Command::TaskFinished { .. }
            | Command::LeaderElected { .. }
            | Command::MasterReachability { .. }
            | Command::SetWorkerQueue { .. }
            | Command::SetJournalRetention(_)
            | Command::TaskRevoked { .. }
            | Command::SetSharing(_)
            | Command::SetJobRetention(_)
            | Command::PurgeJobs { .. }
            | Command::MembershipChanged(_)
            | Command::SetMaintenance { .. }
            | Command::SetClusterIdentity { .. }
            | Command::DrainOverdue { .. } => None,
            Command::CreateToken { .. } | Command::RevokeToken { .. } | Command::SubmitJobAs { .. } => {
                Some(Feature::Tokens)
            }
            Command::Audit(_) => Some(Feature::Audit),
            Command::SubmitJobWith { options, .. } if options.uses_workflows() => Some(Feature::Workflows),
            Command::SubmitJobWith { .. } => Some(Feature::TaskLimits),
            Command::TaskFinishedWith { .. }
            | Command::SetWorkerEndpoint { .. }
            | Command::CopiesAdded { .. }
            | Command::CopiesCorrupt { .. }
            | Command::AddSchedule { .. }
            | Command::RemoveSchedule { .. }
            | Command::PauseSchedule { .. }
            | Command::LaunchPeriod { .. } => Some(Feature::Workflows),
            Command::SetAutoscale { .. }
            | Command::RemoveAutoscale { .. }
            | Command::ResumeAutoscale { .. }
            | Command::ScaleUp { .. }
            | Command::LaunchReported { .. }
            | Command::ScaleDown { .. }
            | Command::LaunchEnded { .. } => Some(Feature::Autoscale),
        }
    }

    /// The same command for voters of a release without its feature, if one can say it:
    /// an attempt's outputs are dropped (its result stays; an output error becomes the
    /// text such a release shows). Used only while an upgrade is under way.
    pub fn downgraded(&self) -> Option<Command> {
        match self {
            Command::TaskFinishedWith { task, fence, worker, outcome, outputs } => {
                let mut outcome = outcome.clone();
                outcome.outputs = Default::default();
                if let Some(e) = &outputs.error {
                    outcome.spawn_error.get_or_insert_with(|| e.to_string());
                }
                Some(Command::TaskFinished { task: *task, fence: *fence, worker: worker.clone(), outcome })
            }
            _ => None,
        }
    }

    /// The command that records `outcome`: [`Command::TaskFinishedWith`] when it carries
    /// outputs, the 0.1.0 command otherwise.
    pub fn task_finished(task: TaskId, fence: Fence, worker: String, outcome: Outcome) -> Command {
        if outcome.outputs.is_empty() {
            Command::TaskFinished { task, fence, worker, outcome }
        } else {
            let outputs = outcome.outputs.clone();
            Command::TaskFinishedWith { task, fence, worker, outcome, outputs }
        }
    }
}

/// One change of the masters' group, as the journal records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// A new master joined as a learner (it does not vote yet).
    LearnerAdded { node: NodeId, address: String },
    /// A learner caught up and now votes.
    Promoted { node: NodeId },
    /// A master left the group; its id is retired.
    Removed { node: NodeId },
}

/// One committed assignment, as the leader pushes it to the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub task: TaskId,
    pub worker: String,
    pub fence: Fence,
}

/// A running attempt that must be stopped on its worker.
pub type Kill = Assigned;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    JobSubmitted {
        job: JobId,
        duplicate: bool,
    },
    JobCancelled {
        job: JobId,
        kill: Vec<Kill>,
    },
    WorkerRegistered {
        incarnation: u64,
        kill: Vec<Kill>,
    },
    WorkerLost {
        requeued: u64,
    },
    Assigned {
        runs: Vec<Assigned>,
    },
    Started,
    ResultRecorded,
    /// The same result delivered again (a worker retrying after a lost ack); nothing changed.
    Duplicate,
    /// The attempt is fenced off: the worker must stop it; nothing changed but the journal.
    Stale {
        reason: StaleReason,
    },
    Noted,
    /// A queued attempt was taken back from its worker; the task waits again.
    Revoked,
    /// The command was refused; nothing changed.
    Invalid {
        reason: Refusal,
    },
    JobsPurged(crate::state::PurgeOutcome),
    /// Attempts taken from their worker: the leader tells it to stop them.
    AttemptsTaken {
        kill: Vec<Kill>,
    },
    TokenCreated,
    /// The revoked token had this role.
    TokenRevoked {
        role: crate::access::Role,
    },
    /// The names of the workers a pool now waits for.
    ScaledUp {
        workers: Vec<String>,
    },
    /// The workers that drain to leave the pool.
    ScaledDown {
        workers: Vec<String>,
    },
}
