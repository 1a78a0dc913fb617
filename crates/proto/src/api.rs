//! The HTTP/JSON client API under `/v1/`, served by every master.
//!
//! | method | path | body / query | answer |
//! | --- | --- | --- | --- |
//! | POST | `/v1/jobs` | [`SubmitRequest`] | [`Submitted`] |
//! | GET | `/v1/jobs` | `?stale` | `[JobSummary]` |
//! | GET | `/v1/jobs/{id}` | `?stale` | [`JobDetail`] |
//! | GET | `/v1/jobs/{id}/results` | `?stale&offset&limit` | `[TaskResultView]` |
//! | GET | `/v1/jobs/{id}/result` | `?stale` | [`JobResult`] |
//! | POST | `/v1/jobs/{id}/cancel` | | [`Cancelled`] |
//! | GET | `/v1/status` | `?stale` | [`Status`] |
//! | GET | `/v1/events` | `?after&limit&wait_ms&stale` | [`Events`] |
//! | GET | `/v1/node` | | [`NodeInfo`] (this master's own view, never forwarded) |
//!
//! Reads are linearizable unless `stale=true`. A follower answers writes and linearizable reads
//! with `421 Misdirected Request` and an [`ApiError`] naming the leader; clients retry there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use flotilla_core::index_set::IndexSet;
/// The body of `PUT /v1/events/retention`.
pub use flotilla_core::journal::Retention;
use flotilla_core::journal::{Event, EventKind};
use flotilla_core::model::{JobSpec, TaskSlot};
use flotilla_core::state::{Job, Task, TaskCounts, TaskState, Worker};
use flotilla_core::units;

use crate::time::rfc3339;

/// Error body of every non-2xx answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// Stable code: `not_leader`, `no_leader`, `not_found`, `bad_request`, `unauthorized`,
    /// `unavailable`, `internal`.
    pub code: String,
    /// For `not_leader`: the leader's address, when known.
    #[serde(default)]
    pub leader: Option<String>,
}

/// A job as submitted over the API or from a job file (`flotilla submit --file job.toml`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub command: Vec<String>,
    /// `1-1000` or `1,5,9-12`; absent for a single task with index 0.
    #[serde(default)]
    pub array: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub retries: Option<u32>,
    /// `30s`, `500ms`, `5m`.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub reduce: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Makes retries of the same submission idempotent.
    #[serde(default)]
    pub request_id: Option<String>,
}

impl SubmitRequest {
    /// Checks and converts to the core spec; the error is a one-line message for the user.
    pub fn to_spec(&self) -> Result<JobSpec, String> {
        let array = match &self.array {
            Some(a) => Some(IndexSet::parse(a).map_err(|e| format!("invalid array: {e}"))?),
            None => None,
        };
        let timeout_ms = match &self.timeout {
            Some(t) => {
                let d = units::parse_duration(t).map_err(|e| format!("invalid timeout: {e}"))?;
                Some(d.as_millis() as u64)
            }
            None => None,
        };
        let spec = JobSpec {
            name: self.name.clone(),
            command: self.command.clone(),
            array,
            cpus: self.cpus.unwrap_or(1),
            retries: self.retries.unwrap_or(0),
            timeout_ms,
            priority: self.priority.unwrap_or(0),
            selector: self.selector.clone(),
            reduce: self.reduce.clone(),
            env: self.env.clone(),
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submitted {
    pub id: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cancelled {
    pub id: u64,
    /// Running attempts told to stop.
    pub stopped: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub waiting: u64,
    pub assigned: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Counts {
    fn new(total: u64, c: &TaskCounts) -> Self {
        Counts {
            total,
            waiting: c.waiting,
            assigned: c.assigned,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: u64,
    pub name: Option<String>,
    pub state: String,
    pub priority: i32,
    pub tasks: Counts,
    pub submitted_at: String,
    pub finished_at: Option<String>,
}

impl JobSummary {
    pub fn from_job(job: &Job) -> Self {
        JobSummary {
            id: job.id,
            name: job.spec.name.clone(),
            state: job.state.name().to_string(),
            priority: job.spec.priority,
            tasks: Counts::new(job.total, &job.counts),
            submitted_at: rfc3339(job.submitted_at),
            finished_at: job.finished_at.map(rfc3339),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobDetail {
    pub id: u64,
    pub name: Option<String>,
    pub state: String,
    pub tasks: Counts,
    pub command: Vec<String>,
    pub array: Option<String>,
    pub cpus: u32,
    pub retries: u32,
    pub timeout_ms: Option<u64>,
    pub priority: i32,
    pub selector: BTreeMap<String, String>,
    pub reduce: Option<String>,
    /// State of the reduce step: `pending`, `waiting`, `running`, `succeeded`, `failed`, …
    pub reduce_state: Option<String>,
    pub submitted_at: String,
    pub finished_at: Option<String>,
    /// Why the job failed.
    pub failure: Option<String>,
    /// Set when no connected worker could ever run the job's waiting tasks.
    pub unschedulable: Option<String>,
}

impl JobDetail {
    pub fn from_job(job: &Job, unschedulable: Option<String>) -> Self {
        let reduce_state = job.spec.reduce.as_ref().map(|_| match (&job.reduce, job.reduce_pending) {
            (_, true) => "waiting".to_string(),
            (Some(t), false) => t.state.name().to_string(),
            (None, false) => "pending".to_string(),
        });
        JobDetail {
            id: job.id,
            name: job.spec.name.clone(),
            state: job.state.name().to_string(),
            tasks: Counts::new(job.total, &job.counts),
            command: job.spec.command.clone(),
            array: job.spec.array.as_ref().map(|a| a.to_string()),
            cpus: job.spec.cpus,
            retries: job.spec.retries,
            timeout_ms: job.spec.timeout_ms,
            priority: job.spec.priority,
            selector: job.spec.selector.clone(),
            reduce: job.spec.reduce.clone(),
            reduce_state,
            submitted_at: rfc3339(job.submitted_at),
            finished_at: job.finished_at.map(rfc3339),
            failure: job.failure.clone(),
            unschedulable,
        }
    }
}

/// One task's state and recorded result (`job results --json` prints an array of these).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResultView {
    pub index: u64,
    pub state: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub error: Option<String>,
    pub attempts: u32,
    /// Fencing token of the recorded result: the attempt that produced it and the term of
    /// the leader that assigned it.
    pub attempt: Option<u32>,
    pub term: Option<u64>,
    pub worker: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: Option<u64>,
    pub finished_at: Option<String>,
}

impl TaskResultView {
    pub fn from_task(index: u64, task: &Task) -> Self {
        let r = task.result.as_ref();
        let worker = match task.state.in_flight() {
            Some((w, _)) => Some(w.to_string()),
            None => r.map(|r| r.worker.clone()),
        };
        TaskResultView {
            index,
            state: task.state.name().to_string(),
            exit_code: r.and_then(|r| r.outcome.exit_code),
            signal: r.and_then(|r| r.outcome.signal),
            timed_out: r.is_some_and(|r| r.outcome.timed_out),
            error: r.and_then(|r| r.outcome.spawn_error.clone()),
            attempts: task.attempts,
            attempt: r.map(|r| r.fence.attempt),
            term: r.map(|r| r.fence.term),
            worker,
            stdout: r.map(|r| r.outcome.stdout.text.clone()).unwrap_or_default(),
            stderr: r.map(|r| r.outcome.stderr.text.clone()).unwrap_or_default(),
            stdout_truncated: r.is_some_and(|r| r.outcome.stdout.truncated),
            stderr_truncated: r.is_some_and(|r| r.outcome.stderr.truncated),
            duration_ms: r.map(|r| r.outcome.duration_ms),
            finished_at: match task.state {
                TaskState::Succeeded | TaskState::Failed => r.map(|r| rfc3339(r.finished_at)),
                _ => None,
            },
        }
    }

    /// A task that never left the queue (or was cancelled before it ran).
    pub fn never_ran(index: u64, state: &str) -> Self {
        TaskResultView {
            index,
            state: state.to_string(),
            exit_code: None,
            signal: None,
            timed_out: false,
            error: None,
            attempts: 0,
            attempt: None,
            term: None,
            worker: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: None,
            finished_at: None,
        }
    }

    /// Every task of a job in index order, `offset`/`limit` applied.
    pub fn list(job: &Job, offset: u64, limit: u64) -> Vec<Self> {
        let mut out = Vec::new();
        let never_ran_state =
            if job.state == flotilla_core::state::JobState::Cancelled { "cancelled" } else { "waiting" };
        let indices = job.spec.indices();
        for index in indices.iter().skip(offset as usize).take(limit as usize) {
            out.push(match job.tasks.get(&index) {
                Some(task) => Self::from_task(index, task),
                None => Self::never_ran(index, never_ran_state),
            });
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    pub id: u64,
    pub state: String,
    /// The reduce step's stdout (or the tasks' stdout concatenated when the job has no reduce);
    /// absent until the job succeeded.
    pub result: Option<String>,
    pub truncated: bool,
}

impl JobResult {
    pub fn from_job(job: &Job) -> Self {
        let truncated = match &job.reduce {
            Some(t) => t.result.as_ref().is_some_and(|r| r.outcome.stdout.truncated),
            None => job.tasks.values().any(|t| t.result.as_ref().is_some_and(|r| r.outcome.stdout.truncated)),
        };
        JobResult { id: job.id, state: job.state.name().to_string(), result: job.result_text(), truncated }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MasterStatus {
    pub id: u64,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, or `unknown` when unreachable.
    pub role: String,
    pub term: Option<u64>,
    pub last_applied: Option<u64>,
    pub reachable: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub cpus_used: u32,
    pub cpus_total: u32,
    pub memory: Option<u64>,
    pub tasks: usize,
    pub joined_at: String,
    /// Last message the leader received from the worker (leader memory; `null` if not seen
    /// since this leader took over, or for lost workers).
    pub last_heartbeat: Option<String>,
    pub last_heartbeat_ms_ago: Option<u64>,
    pub lost_reason: Option<String>,
}

impl WorkerStatus {
    pub fn from_worker(w: &Worker, last_heartbeat_ms: Option<u64>, now_ms: u64) -> Self {
        WorkerStatus {
            name: w.name.clone(),
            state: w.state.name().to_string(),
            labels: w.labels.clone(),
            cpus_used: w.cpus_used,
            cpus_total: w.cpus,
            memory: w.memory,
            tasks: w.tasks.len(),
            joined_at: rfc3339(w.joined_at),
            last_heartbeat: last_heartbeat_ms.map(rfc3339),
            last_heartbeat_ms_ago: last_heartbeat_ms.map(|t| now_ms.saturating_sub(t)),
            lost_reason: w.lost_reason.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub leader: Option<u64>,
    pub term: u64,
    pub masters: Vec<MasterStatus>,
    pub workers: Vec<WorkerStatus>,
    /// Jobs by state.
    pub jobs: BTreeMap<String, u64>,
    /// The master that answered, and whether the answer may be stale.
    pub answered_by: u64,
    pub stale: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    pub address: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub leader_address: Option<String>,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    /// Term of the last assignment this master has applied.
    #[serde(default)]
    pub last_assignment_term: u64,
    /// Bytes of Raft log this master has written since it started.
    #[serde(default)]
    pub log_bytes_written: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    pub time: String,
    pub at_ms: u64,
    pub kind: String,
    pub message: String,
    pub job: Option<u64>,
    pub task: Option<u64>,
    pub attempt: Option<u32>,
    pub worker: Option<String>,
    pub node: Option<u64>,
    pub term: Option<u64>,
    /// For `leader_elected`: milliseconds since the previous term's last commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_ms: Option<u64>,
    /// For `worker_joined`: the cpus it offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// For `worker_lost`: tasks put back in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued: Option<u64>,
    /// Why, for `worker_lost`, `task_rescheduled`, `task_failed`, `result_rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `job_finished`: succeeded, failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl EventView {
    pub fn from_event(e: &Event) -> Self {
        let mut v = EventView {
            seq: e.seq,
            time: rfc3339(e.at_ms),
            at_ms: e.at_ms,
            kind: e.kind.name().to_string(),
            message: e.kind.message(),
            job: e.kind.job(),
            ..Default::default()
        };
        let index_of = |slot: TaskSlot| match slot {
            TaskSlot::Array(i) => Some(i),
            TaskSlot::Reduce => None,
        };
        match &e.kind {
            EventKind::LeaderElected { node, term, quiet_ms } => {
                v.node = Some(*node);
                v.term = Some(*term);
                v.quiet_ms = *quiet_ms;
            }
            EventKind::MasterUnreachable { node } | EventKind::MasterReachable { node } => v.node = Some(*node),
            EventKind::WorkerJoined { worker, cpus } => {
                v.worker = Some(worker.clone());
                v.cpus = Some(*cpus);
            }
            EventKind::WorkerLost { worker, reason, requeued } => {
                v.worker = Some(worker.clone());
                v.reason = Some(reason.clone());
                v.requeued = Some(*requeued);
            }
            EventKind::TaskRescheduled { task, attempt, reason } | EventKind::TaskFailed { task, attempt, reason } => {
                v.task = index_of(task.slot);
                v.attempt = Some(*attempt);
                v.reason = Some(reason.clone());
            }
            EventKind::ResultRejected { task, fence, worker, reason } => {
                v.task = index_of(task.slot);
                v.attempt = Some(fence.attempt);
                v.term = Some(fence.term);
                v.worker = Some(worker.clone());
                v.reason = Some(reason.clone());
            }
            EventKind::JobFinished { state, .. } => v.state = Some(state.name().to_string()),
            EventKind::JobSubmitted { .. } => {}
        }
        v
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<EventView>,
    /// Pass as `after` to get the next events.
    pub last_seq: u64,
}

/// The journal's retention setting and what it keeps now (`GET /v1/events/retention`; `PUT`
/// takes a [`Retention`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetentionView {
    /// Events kept at most.
    pub max_events: u64,
    /// Events older than this are dropped (`null`: no age limit).
    pub max_age_ms: Option<u64>,
    /// Events kept now, and the oldest one's time.
    pub kept: u64,
    pub oldest: Option<String>,
    /// Events ever recorded (the sequence number of the newest).
    pub recorded: u64,
}

impl RetentionView {
    pub fn from_journal(journal: &flotilla_core::journal::Journal) -> Self {
        let r = journal.retention();
        RetentionView {
            max_events: r.max_events,
            max_age_ms: r.max_age_ms,
            kept: journal.len() as u64,
            oldest: journal.oldest().map(|e| rfc3339(e.at_ms)),
            recorded: journal.last_seq(),
        }
    }
}
