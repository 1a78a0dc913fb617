//! The HTTP/JSON client API under `/v1/`, served by every master.
//!
//! | method | path | body / query | answer |
//! | --- | --- | --- | --- |
//! | POST | `/v1/jobs` | [`SubmitRequest`] | [`Submitted`] |
//! | GET | `/v1/jobs` | `?stale` | `[JobSummary]` |
//! | GET | `/v1/jobs/{id}` | `?stale` | [`JobDetail`] |
//! | GET | `/v1/jobs/{id}/results` | `?stale&offset&limit` | `[TaskResultView]` |
//! | GET | `/v1/jobs/{id}/result` | `?stale` | [`JobResult`] |
//! | GET | `/v1/jobs/{id}/outputs` | `?stale` | [`JobOutputs`] |
//! | GET | `/v1/jobs/{id}/outputs/{sha256}` | `?attempt&stale` | the file's bytes, read from a worker holding a copy |
//! | POST | `/v1/jobs/{id}/cancel` | | [`Cancelled`] |
//! | GET | `/v1/status` | `?stale` | [`Status`] |
//! | GET | `/v1/events` | `?after&limit&wait_ms&stale` | [`Events`] |
//! | GET | `/v1/node` | | [`NodeInfo`] (this master's own view, never forwarded) |
//! | GET | `/v1/cluster/members` | | `[MemberView]` (this master's view of the Raft membership) |
//! | POST | `/v1/cluster/members` | [`AddMaster`] | `[MemberView]` (after the new master votes) |
//! | DELETE | `/v1/cluster/members/{id}` | | `[MemberView]` |
//! | POST | `/v1/cluster/leader` | [`TransferLeadership`] | [`LeadershipMoved`] |
//! | GET | `/v1/workers` | `?stale` | `[WorkerView]` |
//! | POST | `/v1/workers/{name}/cordon` | | [`WorkerView`] |
//! | POST | `/v1/workers/{name}/drain` | [`DrainRequest`] | [`WorkerView`] |
//! | POST | `/v1/workers/{name}/uncordon` | | [`WorkerView`] |
//!
//! Every answer carries the group's masters in the `x-flotilla-masters` header
//! ([`MASTERS_HEADER`]), so clients learn of masters they were not given.
//!
//! Reads are linearizable unless `stale=true`. A follower answers writes and linearizable reads
//! with `421 Misdirected Request` and an [`ApiError`] naming the leader; clients retry there.

use flotilla_core::records::{self, RecordError, RecordReader};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use flotilla_core::autoscale;
use flotilla_core::index_set::IndexSet;
/// The body of `PUT /v1/events/retention`.
pub use flotilla_core::journal::Retention;
use flotilla_core::journal::{self, Event};
use flotilla_core::model::{Affinity, JobSpec, TaskLimits, TaskSlot};
use flotilla_core::scheduler::Unschedulable;
use flotilla_core::state::{self, Job, Task, TaskCounts, Worker};
use flotilla_core::units;

use crate::time::rfc3339;

/// Error body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
    pub code: ApiErrorCode,
    /// For `not_leader`: the leader's address, when known.
    #[serde(default)]
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(code: ApiErrorCode, error: impl Into<String>) -> Self {
        ApiError { error: error.into(), code, leader: None }
    }
}

/// The closed set of error codes (the `code` of an [`ApiError`]), each with its HTTP status.
/// Shared by the masters, which answer with them, and the client, which reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 421: this master is a follower; `leader` names the leader when it is known.
    NotLeader,
    /// 503: no leader is elected right now.
    NoLeader,
    /// 404: no such job (or endpoint).
    NotFound,
    /// 400: the request is malformed or refused as invalid.
    BadRequest,
    /// 401: no credential, or one this cluster does not know.
    Unauthorized,
    /// 403: a known credential whose role may not do this.
    Forbidden,
    /// 409: the request does not fit the current state (cancelling a finished job).
    Conflict,
    /// 503: the master cannot serve the request now (leadership changed, storage failed).
    Unavailable,
    /// 500: a bug.
    Internal,
    /// 410: the job existed but was removed (retention or purge).
    Gone,
    /// 413: the request's body is larger than a master accepts.
    TooLarge,
    /// 408: the request's body did not arrive in time.
    Timeout,
    /// A code this client does not know (a newer master), or an answer without a JSON error
    /// body. Never sent by a master.
    #[serde(other)]
    Unknown,
}

impl ApiErrorCode {
    pub const ALL: [ApiErrorCode; 13] = [
        ApiErrorCode::NotLeader,
        ApiErrorCode::NoLeader,
        ApiErrorCode::NotFound,
        ApiErrorCode::BadRequest,
        ApiErrorCode::Unauthorized,
        ApiErrorCode::Forbidden,
        ApiErrorCode::Conflict,
        ApiErrorCode::Unavailable,
        ApiErrorCode::Internal,
        ApiErrorCode::Gone,
        ApiErrorCode::TooLarge,
        ApiErrorCode::Timeout,
        ApiErrorCode::Unknown,
    ];

    /// The HTTP status a master answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ApiErrorCode::NotLeader => 421,
            ApiErrorCode::NoLeader | ApiErrorCode::Unavailable => 503,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::BadRequest => 400,
            ApiErrorCode::Unauthorized => 401,
            ApiErrorCode::Forbidden => 403,
            ApiErrorCode::Conflict => 409,
            ApiErrorCode::Gone => 410,
            ApiErrorCode::TooLarge => 413,
            ApiErrorCode::Timeout => 408,
            ApiErrorCode::Internal | ApiErrorCode::Unknown => 500,
        }
    }

    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::NotLeader => "not_leader",
            ApiErrorCode::NoLeader => "no_leader",
            ApiErrorCode::NotFound => "not_found",
            ApiErrorCode::BadRequest => "bad_request",
            ApiErrorCode::Unauthorized => "unauthorized",
            ApiErrorCode::Forbidden => "forbidden",
            ApiErrorCode::Conflict => "conflict",
            ApiErrorCode::Unavailable => "unavailable",
            ApiErrorCode::Internal => "internal",
            ApiErrorCode::Gone => "gone",
            ApiErrorCode::TooLarge => "too_large",
            ApiErrorCode::Timeout => "timeout",
            ApiErrorCode::Unknown => "unknown",
        }
    }
}

/// Implements `Display` (padding like a `&str`) for an enum with an `as_str`.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}

display_as_str!(ApiErrorCode, Role, JobState, TaskState, WorkerState, EventType);

/// A master's Raft role, as `/v1/node`, `/v1/status` and the dashboard report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    /// The dashboard: the master did not answer.
    Unreachable,
    /// `/v1/status`: the master did not answer (also any role this build does not know).
    #[serde(other)]
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Unknown => "unknown",
            Role::Unreachable => "unreachable",
        }
    }
}

/// A job's state in the API (the replicated [`state::JobState`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Waiting,
    Running,
    Reducing,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Waiting,
        JobState::Running,
        JobState::Reducing,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        state::JobState::from(self).name()
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn is_terminal(self) -> bool {
        state::JobState::from(self).is_terminal()
    }
}

impl From<state::JobState> for JobState {
    fn from(s: state::JobState) -> Self {
        match s {
            state::JobState::Waiting => JobState::Waiting,
            state::JobState::Running => JobState::Running,
            state::JobState::Reducing => JobState::Reducing,
            state::JobState::Succeeded => JobState::Succeeded,
            state::JobState::Failed => JobState::Failed,
            state::JobState::Cancelled => JobState::Cancelled,
        }
    }
}

impl From<JobState> for state::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Waiting => state::JobState::Waiting,
            JobState::Running => state::JobState::Running,
            JobState::Reducing => state::JobState::Reducing,
            JobState::Succeeded => state::JobState::Succeeded,
            JobState::Failed => state::JobState::Failed,
            JobState::Cancelled => state::JobState::Cancelled,
        }
    }
}

/// A task's state in the API (the replicated [`state::TaskState`] without its attempt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Only a reduce step: not started, its job's tasks are not all done.
    Pending,
    Waiting,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Waiting => "waiting",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl From<&state::TaskState> for TaskState {
    fn from(s: &state::TaskState) -> Self {
        match s {
            state::TaskState::Waiting => TaskState::Waiting,
            state::TaskState::Assigned { .. } => TaskState::Assigned,
            state::TaskState::Running { .. } => TaskState::Running,
            state::TaskState::Succeeded => TaskState::Succeeded,
            state::TaskState::Failed => TaskState::Failed,
            state::TaskState::Cancelled => TaskState::Cancelled,
        }
    }
}

/// A worker's state in the API: in service (`ready`), out of service by an operator's or
/// its own decision (`cordoned`, `draining`, `drained`), or `lost`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Ready,
    Cordoned,
    Draining,
    Drained,
    Lost,
}

impl WorkerState {
    pub const ALL: [WorkerState; 5] =
        [WorkerState::Ready, WorkerState::Cordoned, WorkerState::Draining, WorkerState::Drained, WorkerState::Lost];

    pub fn as_str(self) -> &'static str {
        state::WorkerCondition::from(self).name()
    }
}

impl From<state::WorkerCondition> for WorkerState {
    fn from(s: state::WorkerCondition) -> Self {
        match s {
            state::WorkerCondition::Ready => WorkerState::Ready,
            state::WorkerCondition::Cordoned => WorkerState::Cordoned,
            state::WorkerCondition::Draining => WorkerState::Draining,
            state::WorkerCondition::Drained => WorkerState::Drained,
            state::WorkerCondition::Lost => WorkerState::Lost,
        }
    }
}

impl From<WorkerState> for state::WorkerCondition {
    fn from(s: WorkerState) -> Self {
        match s {
            WorkerState::Ready => state::WorkerCondition::Ready,
            WorkerState::Cordoned => state::WorkerCondition::Cordoned,
            WorkerState::Draining => state::WorkerCondition::Draining,
            WorkerState::Drained => state::WorkerCondition::Drained,
            WorkerState::Lost => state::WorkerCondition::Lost,
        }
    }
}

/// The `kind` of an [`EventView`]: which [`journal::EventKind`] it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    LeaderElected,
    MasterUnreachable,
    MasterReachable,
    MembershipChanged,
    WorkerCordoned,
    WorkerDraining,
    WorkerUncordoned,
    WorkerDrained,
    WorkerJoined,
    WorkerLost,
    JobSubmitted,
    TaskRescheduled,
    TaskFailed,
    ResultRejected,
    JobFinished,
    JobRemoved,
    Audit,
    OutputsCopied,
    OutputCopiesGone,
    OutputsLost,
    ScheduleLaunched,
    ScheduleSkipped,
    TasksNotRun,
    ScaledUp,
    ScaledDown,
    LaunchFailed,
    LaunchEnded,
    /// A kind this build does not know (from a newer master).
    #[default]
    #[serde(other)]
    Unknown,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LeaderElected => "leader_elected",
            EventType::MasterUnreachable => "master_unreachable",
            EventType::MasterReachable => "master_reachable",
            EventType::MembershipChanged => "membership_changed",
            EventType::WorkerCordoned => "worker_cordoned",
            EventType::WorkerDraining => "worker_draining",
            EventType::WorkerUncordoned => "worker_uncordoned",
            EventType::WorkerDrained => "worker_drained",
            EventType::WorkerJoined => "worker_joined",
            EventType::WorkerLost => "worker_lost",
            EventType::JobSubmitted => "job_submitted",
            EventType::TaskRescheduled => "task_rescheduled",
            EventType::TaskFailed => "task_failed",
            EventType::ResultRejected => "result_rejected",
            EventType::JobFinished => "job_finished",
            EventType::JobRemoved => "job_removed",
            EventType::Audit => "audit",
            EventType::OutputsCopied => "outputs_copied",
            EventType::OutputCopiesGone => "output_copies_gone",
            EventType::OutputsLost => "outputs_lost",
            EventType::ScheduleLaunched => "schedule_launched",
            EventType::ScheduleSkipped => "schedule_skipped",
            EventType::TasksNotRun => "tasks_not_run",
            EventType::ScaledUp => "scaled_up",
            EventType::ScaledDown => "scaled_down",
            EventType::LaunchFailed => "launch_failed",
            EventType::LaunchEnded => "launch_ended",
            EventType::Unknown => "unknown",
        }
    }
}

impl From<&journal::EventKind> for EventType {
    fn from(kind: &journal::EventKind) -> Self {
        use journal::EventKind as K;
        match kind {
            K::LeaderElected { .. } => EventType::LeaderElected,
            K::MasterUnreachable { .. } => EventType::MasterUnreachable,
            K::MasterReachable { .. } => EventType::MasterReachable,
            K::MembershipChanged(_) => EventType::MembershipChanged,
            K::WorkerMaintenance { change, .. } => match change {
                state::MaintenanceChange::Cordon => EventType::WorkerCordoned,
                state::MaintenanceChange::Drain { .. } => EventType::WorkerDraining,
                state::MaintenanceChange::Uncordon => EventType::WorkerUncordoned,
            },
            K::WorkerDrained { .. } => EventType::WorkerDrained,
            K::WorkerJoined { .. } => EventType::WorkerJoined,
            K::WorkerLost { .. } => EventType::WorkerLost,
            K::JobSubmitted { .. } => EventType::JobSubmitted,
            K::TaskRescheduled { .. } => EventType::TaskRescheduled,
            K::TaskFailed { .. } => EventType::TaskFailed,
            K::ResultRejected { .. } => EventType::ResultRejected,
            K::JobFinished { .. } => EventType::JobFinished,
            K::JobRemoved { .. } => EventType::JobRemoved,
            K::Audit(_) => EventType::Audit,
            K::OutputsCopied { .. } => EventType::OutputsCopied,
            K::OutputCopiesGone { .. } => EventType::OutputCopiesGone,
            K::OutputsLost { .. } => EventType::OutputsLost,
            K::ScheduleLaunched { .. } => EventType::ScheduleLaunched,
            K::ScheduleSkipped { .. } => EventType::ScheduleSkipped,
            K::TasksNotRun { .. } => EventType::TasksNotRun,
            K::ScaledUp { .. } => EventType::ScaledUp,
            K::ScaledDown { .. } => EventType::ScaledDown,
            K::LaunchFailed { .. } => EventType::LaunchFailed,
            K::LaunchEnded { .. } => EventType::LaunchEnded,
        }
    }
}

/// What a schedule does when the previous period's job still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Skip the period (journalled `schedule_skipped`).
    #[default]
    Skip,
    /// Submit the period's job anyway.
    Allow,
}

impl From<OverlapPolicy> for flotilla_core::schedule::Overlap {
    fn from(o: OverlapPolicy) -> Self {
        match o {
            OverlapPolicy::Skip => flotilla_core::schedule::Overlap::Skip,
            OverlapPolicy::Allow => flotilla_core::schedule::Overlap::Allow,
        }
    }
}

impl From<flotilla_core::schedule::Overlap> for OverlapPolicy {
    fn from(o: flotilla_core::schedule::Overlap) -> Self {
        match o {
            flotilla_core::schedule::Overlap::Skip => OverlapPolicy::Skip,
            flotilla_core::schedule::Overlap::Allow => OverlapPolicy::Allow,
        }
    }
}

/// A periodic job to add (`POST /v1/schedules`, `flotilla schedule add`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// 1 to 64 letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: String,
    /// An IANA time zone the expression is read in; default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub overlap: OverlapPolicy,
    /// The job each period submits (no `after`/`after_finished`).
    pub job: SubmitRequest,
}

/// A periodic job as the cluster keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub overlap: OverlapPolicy,
    pub paused: bool,
    pub command: Vec<String>,
    pub created_at: String,
    /// When the next period starts (RFC 3339); none while paused.
    pub next: Option<String>,
    /// The start of the last period launched or skipped, and the last job submitted.
    pub last_period: Option<String>,
    pub last_job: Option<u64>,
    pub launched: u64,
    pub skipped: u64,
}

impl ScheduleView {
    pub fn new(name: &str, s: &flotilla_core::schedule::Schedule, now_ms: u64) -> Self {
        let next = match s.paused {
            true => None,
            false => s.timing().and_then(|t| t.next_after(s.done_until.max(now_ms))).map(rfc3339),
        };
        ScheduleView {
            name: name.to_string(),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            overlap: s.overlap.into(),
            paused: s.paused,
            command: s.spec.command.clone(),
            created_at: rfc3339(s.created_at),
            next,
            last_period: s.last_period.map(rfc3339),
            last_job: s.last_job,
            launched: s.launched,
            skipped: s.skipped,
        }
    }
}

/// Every schedule (`GET /v1/schedules`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedules {
    pub schedules: Vec<ScheduleView>,
}

/// Which provider starts a pool's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// Worker processes on the leading master's machine.
    Local,
    /// Your commands: `add_command` starts the workers named in `$FLOTILLA_WORKER_NAMES`,
    /// `remove_command` stops `$FLOTILLA_WORKER_NAME`.
    Command,
    /// One Slurm job per worker (`sbatch`, `squeue`, `scancel`).
    Slurm,
    /// The replica count of a worker StatefulSet.
    Kubernetes,
}

/// An autoscaling policy to set (`POST /v1/autoscale`, `flotilla autoscale set`). Durations
/// are written like `30s`, `5m`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleRequest {
    /// The pool's name (default `auto`); its workers are named `POOL-1`, `POOL-2`, …
    #[serde(default)]
    pub pool: Option<String>,
    pub provider: ProviderName,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// Labels the pool's workers carry; the work counted is that of jobs they can run.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Cpus each new worker offers (default: what its machine has).
    #[serde(default)]
    pub worker_cpus: Option<u32>,
    /// `work-per-cpu=10s` (the default: at most that much waiting work per cpu) or
    /// `oldest-waiting=30s` (one more worker whenever a task has waited that long).
    #[serde(default)]
    pub target: Option<String>,
    /// Idle time before a worker is drained and stopped (default `5m`).
    #[serde(default)]
    pub idle: Option<String>,
    /// After a scale-in, no scale-up for this long (default `10s`).
    #[serde(default)]
    pub cooldown_up: Option<String>,
    /// After a scale-up, no scale-in for this long (default `10s`).
    #[serde(default)]
    pub cooldown_down: Option<String>,
    /// A started worker that has not joined by then is cancelled (default `5m`).
    #[serde(default)]
    pub join_timeout: Option<String>,
    /// `command` provider.
    #[serde(default)]
    pub add_command: Option<String>,
    #[serde(default)]
    pub remove_command: Option<String>,
    /// `slurm` provider: partition, time limit (`1h`; the worker drains before it) and more
    /// `sbatch` arguments.
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub time_limit: Option<String>,
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// `kubernetes` provider: the API server (default: the in-cluster one), namespace and
    /// the workers' StatefulSet.
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub statefulset: Option<String>,
}

fn duration_ms(what: &str, text: &Option<String>, default_ms: u64) -> Result<u64, String> {
    match text {
        None => Ok(default_ms),
        Some(t) => units::parse_duration(t).map(|d| d.as_millis() as u64).map_err(|e| format!("invalid {what}: {e}")),
    }
}

/// `work-per-cpu=10s` or `oldest-waiting=30s`.
pub fn parse_target(text: &str) -> Result<autoscale::Target, String> {
    let (kind, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid target '{text}': write work-per-cpu=DURATION or oldest-waiting=DURATION"))?;
    let ms = units::parse_duration(value).map_err(|e| format!("invalid target '{text}': {e}"))?.as_millis() as u64;
    match kind.trim() {
        "work-per-cpu" => Ok(autoscale::Target::WorkPerCpu { ms }),
        "oldest-waiting" => Ok(autoscale::Target::OldestWaiting { ms }),
        other => Err(format!("invalid target kind '{other}': work-per-cpu or oldest-waiting")),
    }
}

pub fn format_target(target: autoscale::Target) -> String {
    match target {
        autoscale::Target::WorkPerCpu { ms } => format!("work-per-cpu={}", setting(ms)),
        autoscale::Target::OldestWaiting { ms } => format!("oldest-waiting={}", setting(ms)),
    }
}

/// A duration as a setting is written: `5m`, `10s`, `1500ms` (read back by the same parser).
fn setting(ms: u64) -> String {
    match ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

impl AutoscaleRequest {
    /// The pool's name and its policy; what does not fit says which field and why.
    pub fn to_policy(&self) -> Result<(String, autoscale::Policy), String> {
        let pool = self.pool.clone().unwrap_or_else(|| autoscale::DEFAULT_POOL.to_string());
        let misplaced = |field: &str, provider: &str| format!("{field} is an option of the {provider} provider");
        let provider = match self.provider {
            ProviderName::Local => autoscale::ProviderSpec::Local,
            ProviderName::Command => autoscale::ProviderSpec::Command {
                add: self.add_command.clone().ok_or("the command provider needs an add command (--add-command)")?,
                remove: self
                    .remove_command
                    .clone()
                    .ok_or("the command provider needs a remove command (--remove-command)")?,
            },
            ProviderName::Slurm => {
                let time_limit_min = match &self.time_limit {
                    None => None,
                    Some(t) => {
                        let d = units::parse_duration(t).map_err(|e| format!("invalid time limit: {e}"))?;
                        let min = d.as_secs().div_ceil(60);
                        Some(
                            u32::try_from(min)
                                .ok()
                                .filter(|m| *m >= 1)
                                .ok_or("the time limit must be 1 minute to years")?,
                        )
                    }
                };
                autoscale::ProviderSpec::Slurm {
                    partition: self.partition.clone(),
                    time_limit_min,
                    args: self.sbatch_args.clone(),
                }
            }
            ProviderName::Kubernetes => autoscale::ProviderSpec::Kubernetes {
                api: self.api.clone(),
                namespace: self.namespace.clone().unwrap_or_else(|| "default".to_string()),
                statefulset: self
                    .statefulset
                    .clone()
                    .ok_or("the kubernetes provider needs the workers' StatefulSet (--statefulset)")?,
            },
        };
        let kind = provider.kind();
        if kind != autoscale::ProviderKind::Command && (self.add_command.is_some() || self.remove_command.is_some()) {
            return Err(misplaced("--add-command/--remove-command", "command"));
        }
        if kind != autoscale::ProviderKind::Slurm
            && (self.partition.is_some() || self.time_limit.is_some() || !self.sbatch_args.is_empty())
        {
            return Err(misplaced("--partition/--time-limit/--sbatch-arg", "slurm"));
        }
        if kind != autoscale::ProviderKind::Kubernetes
            && (self.api.is_some() || self.namespace.is_some() || self.statefulset.is_some())
        {
            return Err(misplaced("--api/--namespace/--statefulset", "kubernetes"));
        }
        let mut policy = autoscale::Policy::new(provider, self.min, self.max);
        policy.selector = self.selector.clone();
        policy.worker_cpus = self.worker_cpus;
        if let Some(t) = &self.target {
            policy.target = parse_target(t)?;
        }
        policy.idle_ms = duration_ms("idle time", &self.idle, policy.idle_ms)?;
        policy.cooldown_up_ms = duration_ms("up cooldown", &self.cooldown_up, policy.cooldown_up_ms)?;
        policy.cooldown_down_ms = duration_ms("down cooldown", &self.cooldown_down, policy.cooldown_down_ms)?;
        policy.join_timeout_ms = duration_ms("join timeout", &self.join_timeout, policy.join_timeout_ms)?;
        if !autoscale::valid_name(&pool) {
            return Err(autoscale::AutoscaleRefusal::BadName.to_string());
        }
        policy.check().map_err(|e| e.to_string())?;
        Ok((pool, policy))
    }
}

/// One worker a pool asked for.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolWorkerView {
    pub name: String,
    /// `requested`, `started` (the provider took it; not joined yet), `joined` or `retiring`.
    pub stage: String,
    /// What the provider calls it (a Slurm job id, a process id).
    pub handle: Option<String>,
    pub requested_at: String,
    /// `ready`, `cordoned`, `draining`, `drained` or `lost`, once it joined.
    pub state: Option<String>,
    /// Tasks it holds (running or queued).
    pub tasks: u64,
}

/// An autoscaling pool: its policy and what it has under way (`GET /v1/autoscale`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    pub pool: String,
    pub provider: ProviderName,
    pub min: u32,
    pub max: u32,
    pub selector: BTreeMap<String, String>,
    pub worker_cpus: Option<u32>,
    pub target: String,
    pub idle: String,
    pub cooldown_up: String,
    pub cooldown_down: String,
    pub join_timeout: String,
    /// Provider options (commands, partition, time limit, StatefulSet).
    pub options: BTreeMap<String, String>,
    pub workers: Vec<PoolWorkerView>,
    /// Workers joined and in the pool, on their way, and draining to leave.
    pub joined: u32,
    pub pending: u32,
    pub retiring: u32,
    pub paused: bool,
    /// Failed launches in a row, the last failure, and when the next launch may be tried.
    pub failures: u32,
    pub last_failure: Option<String>,
    pub retry_at: Option<String>,
    pub last_up: Option<String>,
    pub last_down: Option<String>,
    /// The pool's latest decision and why.
    pub last_decision: Option<String>,
    pub launched: u64,
    pub retired: u64,
    pub failed: u64,
}

impl PoolView {
    pub fn new(name: &str, pool: &autoscale::Pool, state: &flotilla_core::ClusterState) -> Self {
        let p = &pool.policy;
        let mut options = BTreeMap::new();
        let provider = match &p.provider {
            autoscale::ProviderSpec::Local => ProviderName::Local,
            autoscale::ProviderSpec::Command { add, remove } => {
                options.insert("add_command".to_string(), add.clone());
                options.insert("remove_command".to_string(), remove.clone());
                ProviderName::Command
            }
            autoscale::ProviderSpec::Slurm { partition, time_limit_min, args } => {
                if let Some(part) = partition {
                    options.insert("partition".to_string(), part.clone());
                }
                if let Some(m) = time_limit_min {
                    options.insert("time_limit".to_string(), format!("{m}m"));
                }
                if !args.is_empty() {
                    options.insert("sbatch_args".to_string(), args.join(" "));
                }
                ProviderName::Slurm
            }
            autoscale::ProviderSpec::Kubernetes { api, namespace, statefulset } => {
                if let Some(api) = api {
                    options.insert("api".to_string(), api.clone());
                }
                options.insert("namespace".to_string(), namespace.clone());
                options.insert("statefulset".to_string(), statefulset.clone());
                ProviderName::Kubernetes
            }
        };
        let workers = pool
            .launches
            .iter()
            .map(|(worker, l)| {
                let w = state.worker(worker);
                PoolWorkerView {
                    name: worker.clone(),
                    stage: l.stage.name().to_string(),
                    handle: l.handle.clone(),
                    requested_at: rfc3339(l.requested_at),
                    state: w.map(|w| w.condition().name().to_string()),
                    tasks: w.map_or(0, |w| w.tasks.len() as u64),
                }
            })
            .collect();
        let last_decision = pool.last_decision.as_ref().map(|(at, d)| format!("{}: {d}", rfc3339(*at)));
        PoolView {
            pool: name.to_string(),
            provider,
            min: p.min,
            max: p.max,
            selector: p.selector.clone(),
            worker_cpus: p.worker_cpus,
            target: format_target(p.target),
            idle: setting(p.idle_ms),
            cooldown_up: setting(p.cooldown_up_ms),
            cooldown_down: setting(p.cooldown_down_ms),
            join_timeout: setting(p.join_timeout_ms),
            options,
            workers,
            joined: pool.count(autoscale::LaunchStage::Joined),
            pending: pool.pending(),
            retiring: pool.count(autoscale::LaunchStage::Retiring),
            paused: pool.paused,
            failures: pool.failures,
            last_failure: pool.last_failure.as_ref().map(|f| f.to_string()),
            retry_at: pool.retry_at.map(rfc3339),
            last_up: pool.last_up.map(rfc3339),
            last_down: pool.last_down.map(rfc3339),
            last_decision,
            launched: pool.launched,
            retired: pool.retired,
            failed: pool.failed,
        }
    }
}

/// Every autoscaling pool (`GET /v1/autoscale`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pools {
    pub pools: Vec<PoolView>,
}

/// A job as submitted over the API or from a job file (`flotilla submit --file job.toml`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Named resources each task holds, e.g. `{"gpu": 1}`.
    #[serde(default)]
    pub resources: BTreeMap<String, u32>,
    /// Memory each task holds, e.g. `2G`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Soft: workers with these labels first.
    #[serde(default)]
    pub prefer: BTreeMap<String, String>,
    /// Soft: workers with these labels last.
    #[serde(default)]
    pub avoid: BTreeMap<String, String>,
    /// Spread the tasks evenly over this label's values, e.g. `zone`.
    #[serde(default)]
    pub spread: Option<String>,
    /// Makes retries of the same submission idempotent.
    #[serde(default)]
    pub request_id: Option<String>,
    /// What each task may use at most; the worker enforces it on the process. Left out of
    /// the JSON when absent: a 0.1.0 master refuses fields it does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsRequest>,
    /// Jobs that must succeed before this one starts; if one fails or is cancelled, this one
    /// is cancelled. Its tasks read their outputs in `$FLOTILLA_INPUT_DIR/JOB/INDEX/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
    /// Jobs that must end (however they end) before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_finished: Vec<u64>,
    /// Copies of each task's outputs kept on other workers (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Bytes of outputs each task may leave, e.g. `10G` (default 1G).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_quota: Option<String>,
    /// Jobs whose tasks pair with this job's: task `i` starts once task `i` of each has
    /// succeeded, and reads only its outputs (in `$FLOTILLA_INPUT_DIR/JOB/i/`). If one of them
    /// fails or is cancelled, this job is cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub each: Vec<u64>,
    /// Dependencies between this job's tasks: each key is a set of tasks (`7`, `5-9`,
    /// `1,3`), its value the tasks they need (they start once those succeeded, and read their
    /// outputs). `{"10": "1-9"}`: task 10 runs after tasks 1 to 9.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub needs: BTreeMap<String, String>,
}

/// A job's task limits as a client writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Address space of each task's process, e.g. `512M`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Open file descriptors.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// Processes and threads of the task's user.
    #[serde(default)]
    pub processes: Option<u64>,
}

impl LimitsRequest {
    pub fn is_empty(&self) -> bool {
        *self == LimitsRequest::default()
    }
}

impl SubmitRequest {
    /// Checks and converts to the core spec; the error is a one-line message for the user.
    pub fn to_spec(&self) -> Result<JobSpec, String> {
        self.check_sizes()?;
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
        let memory = match &self.memory {
            Some(m) => Some(units::parse_size(m).map_err(|e| format!("invalid memory: {e}"))?),
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
            resources: self.resources.clone(),
            memory,
            affinity: Affinity { prefer: self.prefer.clone(), avoid: self.avoid.clone(), spread: self.spread.clone() },
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    /// The task limits asked for, checked (empty when none).
    pub fn to_limits(&self) -> Result<TaskLimits, String> {
        let Some(asked) = &self.limits else { return Ok(TaskLimits::default()) };
        let memory = match &asked.memory {
            Some(m) => Some(units::parse_size(m).map_err(|e| format!("invalid memory limit: {e}"))?),
            None => None,
        };
        let limits = TaskLimits { memory, open_files: asked.open_files, processes: asked.processes };
        limits.validate().map_err(|e| e.to_string())?;
        Ok(limits)
    }

    /// What the job asks for beyond its spec (limits, dependencies, outputs' policy).
    pub fn to_options(&self) -> Result<flotilla_core::workflow::JobOptions, String> {
        let output_quota = match &self.output_quota {
            Some(q) => Some(units::parse_size(q).map_err(|e| format!("invalid output quota: {e}"))?),
            None => None,
        };
        let mut needs = Vec::with_capacity(self.needs.len());
        for (tasks, needed) in &self.needs {
            let parse = |text: &str| IndexSet::parse(text).map_err(|e| format!("invalid needs entry {tasks:?}: {e}"));
            needs.push(flotilla_core::workflow::TaskNeeds { tasks: parse(tasks)?, needs: parse(needed)? });
        }
        let options = flotilla_core::workflow::JobOptions {
            limits: self.to_limits()?,
            after: self.after.clone(),
            after_finished: self.after_finished.clone(),
            replicas: self.replicas,
            output_quota,
            each: self.each.clone(),
            needs,
        };
        options.validate().map_err(|e| e.to_string())?;
        if !options.needs.is_empty() {
            let indices = self.to_spec()?.indices();
            options.check_needs(&indices).map_err(|e| e.to_string())?;
        }
        Ok(options)
    }

    /// Bounds on how many entries each map holds and how long its strings are, checked here
    /// at the API edge rather than in the replicated state, so that no replica of an older
    /// version judges a logged submission differently.
    fn check_sizes(&self) -> Result<(), String> {
        let maps = [
            ("env", &self.env, MAX_ENV_ENTRIES),
            ("selector", &self.selector, MAX_LABEL_ENTRIES),
            ("prefer", &self.prefer, MAX_LABEL_ENTRIES),
            ("avoid", &self.avoid, MAX_LABEL_ENTRIES),
        ];
        for (field, map, limit) in maps {
            if map.len() > limit {
                return Err(format!("{field} has {} entries (limit {limit})", map.len()));
            }
            if let Some((key, _)) = map.iter().find(|(k, v)| k.len() > MAX_KEY_BYTES || v.len() > MAX_VALUE_BYTES) {
                let shown: String = key.chars().take(40).collect();
                return Err(format!(
                    "{field} entry '{shown}' is too long (keys up to {MAX_KEY_BYTES} bytes, values up to {MAX_VALUE_BYTES})"
                ));
            }
        }
        if self.request_id.as_ref().is_some_and(|r| r.len() > MAX_KEY_BYTES) {
            return Err(format!("request_id is longer than {MAX_KEY_BYTES} bytes"));
        }
        if self.spread.as_ref().is_some_and(|r| r.len() > MAX_KEY_BYTES) {
            return Err(format!("spread is longer than {MAX_KEY_BYTES} bytes"));
        }
        if self.command.iter().any(|a| a.len() > MAX_VALUE_BYTES) {
            return Err(format!("a command argument is longer than {MAX_VALUE_BYTES} bytes"));
        }
        if self.reduce.as_ref().is_some_and(|r| r.len() > MAX_VALUE_BYTES) {
            return Err(format!("reduce is longer than {MAX_VALUE_BYTES} bytes"));
        }
        Ok(())
    }
}

/// Environment variables one submission may set.
pub const MAX_ENV_ENTRIES: usize = 256;
/// Entries of a job's `selector`, `prefer` or `avoid`.
pub const MAX_LABEL_ENTRIES: usize = 64;
/// Bytes of a map key, a label name or a request id.
pub const MAX_KEY_BYTES: usize = 256;
/// Bytes of one value: an environment value, a label value, a command argument.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// One page of `GET /v1/jobs`: newest first. Pass `next` back as `before` for the next page;
/// `None`: this was the last.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    pub next: Option<String>,
}

/// What `GET /v1/jobs` selects: `limit` (default [`JobQuery::DEFAULT_LIMIT`], at most
/// [`JobQuery::MAX_LIMIT`]), `before` (a page token), `state`, `name` (exact).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub limit: Option<u64>,
    pub before: Option<String>,
    pub state: Option<JobState>,
    pub name: Option<String>,
}

impl JobQuery {
    pub const DEFAULT_LIMIT: u64 = 1_000;
    pub const MAX_LIMIT: u64 = 10_000;

    /// The query string (without `?`), URL-encoded.
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(b) = &self.before {
            parts.push(format!("before={}", url_encode(b)));
        }
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.as_str()));
        }
        if let Some(n) = &self.name {
            parts.push(format!("name={}", url_encode(n)));
        }
        parts.join("&")
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Submitted {
    pub id: u64,
}

pub use flotilla_core::access::Role as TokenRole;

/// `GET /v1/cluster/read-index` (masters only): the leader's commit index, confirmed by a
/// quorum. A follower that has applied it may answer a linearizable read itself.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadIndex {
    pub index: u64,
}

/// `POST /v1/tokens`: a new named token.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: TokenRole,
}

/// The answer to `POST /v1/tokens`: the only time the token itself is shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub name: String,
    pub role: TokenRole,
    pub token: String,
}

/// One credential in `GET /v1/tokens` (never the token, nor its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: TokenRole,
    /// When it was made (ms since the epoch); none for the bootstrap token.
    pub created_ms: Option<u64>,
    /// The credential that made it; none for the bootstrap token.
    pub created_by: Option<String>,
    /// The bootstrap token (`admin.token` or `--token-file`), which masters hold in a file.
    pub bootstrap: bool,
}

/// The answer to `DELETE /v1/tokens/NAME`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRevoked {
    pub name: String,
    pub role: TokenRole,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cancelled {
    pub id: u64,
    /// Running attempts told to stop.
    pub stopped: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: u64,
    pub name: Option<String>,
    pub state: JobState,
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
            state: job.state.into(),
            priority: job.spec.priority,
            tasks: Counts::new(job.total, &job.counts),
            submitted_at: rfc3339(job.submitted_at),
            finished_at: job.finished_at.map(rfc3339),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobDetail {
    pub id: u64,
    pub name: Option<String>,
    pub state: JobState,
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
    pub reduce_state: Option<TaskState>,
    pub submitted_at: String,
    pub finished_at: Option<String>,
    /// Why the job failed.
    pub failure: Option<String>,
    /// Set when no connected worker could ever run the job's waiting tasks.
    pub unschedulable: Option<String>,
    /// Named resources each task holds.
    #[serde(default)]
    pub resources: BTreeMap<String, u32>,
    /// Bytes of memory each task holds.
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub prefer: BTreeMap<String, String>,
    #[serde(default)]
    pub avoid: BTreeMap<String, String>,
    #[serde(default)]
    pub spread: Option<String>,
    /// What each task may use at most (bytes of memory, open files, processes), if the job
    /// asked.
    #[serde(default)]
    pub limits: Option<TaskLimits>,
    /// Jobs that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
    /// Jobs that must end, however they end, before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_finished: Vec<u64>,
    /// Of those, the jobs that have not ended yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_on: Vec<u64>,
    /// Jobs its tasks pair with (`--each`): task `i` waits for their task `i`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub each: Vec<u64>,
    /// Dependencies between its tasks: tasks (`5-9`) and the tasks they need.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub needs: BTreeMap<String, String>,
    /// Its waiting tasks that wait for tasks they need (pair with, or need in this job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Set when the job was cancelled because a job it needed did not succeed.
    #[serde(default)]
    pub upstream_failed: Option<UpstreamFailed>,
    /// Copies of each task's outputs kept on other workers.
    #[serde(default)]
    pub replicas: u32,
    /// Bytes of outputs each task may leave.
    #[serde(default)]
    pub output_quota: u64,
    /// Files its tasks left, and their bytes.
    #[serde(default)]
    pub output_files: u64,
    #[serde(default)]
    pub output_bytes: u64,
    /// Set for a job the cluster submitted itself to run again tasks of this job whose every
    /// output copy was lost: their outputs become that job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<u64>,
    /// Kept jobs that wait or waited for this one (`--after`, `--after-finished`, `--each`),
    /// and the re-runs of its lost outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downstream: Vec<u64>,
}

/// The job that a cancelled dependent needed to succeed, and how it ended instead.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UpstreamFailed {
    pub job: u64,
    pub state: JobState,
}

impl JobDetail {
    /// With what the state keeps beside the job: its limits, dependencies and outputs.
    pub fn with_extras(mut self, state: &state::ClusterState) -> Self {
        let options = state.job_options(self.id).cloned().unwrap_or_default();
        self.limits = state.task_limits(self.id).cloned();
        self.after = options.after.clone();
        self.after_finished = options.after_finished.clone();
        self.waiting_on = state.waiting_on(self.id).map(|w| w.iter().copied().collect()).unwrap_or_default();
        self.each = options.each.clone();
        self.needs = options.needs.iter().map(|r| (r.tasks.to_string(), r.needs.to_string())).collect();
        self.held = state.held_tasks(self.id).map(ToString::to_string);
        self.upstream_failed = state.unmet(self.id).map(|u| UpstreamFailed { job: u.upstream, state: u.state.into() });
        self.replicas = options.replicas();
        self.output_quota = options.output_quota();
        self.rerun_of = state.rerun_of(self.id);
        self.downstream = state.downstream_of(self.id);
        for (_, outputs) in state.job_outputs(self.id) {
            self.output_files += outputs.files.len() as u64;
            self.output_bytes += outputs.files.iter().map(|f| f.size).sum::<u64>();
        }
        self
    }

    pub fn from_job(job: &Job, unschedulable: Option<Unschedulable>) -> Self {
        let reduce_state = job.spec.reduce.as_ref().map(|_| match (&job.reduce, job.reduce_pending) {
            (_, true) => TaskState::Waiting,
            (Some(t), false) => TaskState::from(&t.state),
            (None, false) => TaskState::Pending,
        });
        JobDetail {
            id: job.id,
            name: job.spec.name.clone(),
            state: job.state.into(),
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
            failure: job.failure.as_ref().map(|f| f.to_string()),
            unschedulable: unschedulable.map(|u| u.to_string()),
            resources: job.spec.resources.clone(),
            memory: job.spec.memory,
            prefer: job.spec.affinity.prefer.clone(),
            avoid: job.spec.affinity.avoid.clone(),
            spread: job.spec.affinity.spread.clone(),
            limits: None,
            after: Vec::new(),
            after_finished: Vec::new(),
            waiting_on: Vec::new(),
            each: Vec::new(),
            needs: BTreeMap::new(),
            held: None,
            upstream_failed: None,
            replicas: flotilla_core::workflow::DEFAULT_REPLICAS,
            output_quota: flotilla_core::workflow::DEFAULT_OUTPUT_QUOTA,
            output_files: 0,
            output_bytes: 0,
            rerun_of: None,
            downstream: Vec::new(),
        }
    }
}

/// Part of a task's stream while an attempt of it runs (`GET /v1/jobs/{id}/logs/{task}/live`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveLog {
    /// Whether an attempt of the task is in flight; when not, the task waits to be placed or
    /// has ended (its log is then at `GET /v1/jobs/{id}/logs/{task}`, or in its result).
    pub running: bool,
    /// The running attempt, `TERM.ATTEMPT` (a new one starts its stream from 0).
    #[serde(default)]
    pub attempt: Option<String>,
    /// The worker running it.
    #[serde(default)]
    pub worker: Option<String>,
    /// The stream's text from the offset asked for (a character cut by the read's end comes
    /// with the next read).
    #[serde(default)]
    pub text: String,
    /// The offset to ask for next.
    pub next_offset: u64,
    /// The stream's length so far.
    pub total: u64,
}

impl LiveLog {
    /// `bytes` read at `offset`: the text up to the last whole character (all of it, made
    /// valid, when it is not UTF-8 at all).
    pub fn text_of(bytes: &[u8], offset: u64) -> (String, u64) {
        match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), offset + bytes.len() as u64),
            // Cut inside a character at the end: the rest comes with the next read.
            Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
                let valid = e.valid_up_to();
                (String::from_utf8_lossy(&bytes[..valid]).into_owned(), offset + valid as u64)
            }
            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), offset + bytes.len() as u64),
        }
    }
}

/// The outputs of a job's tasks (`GET /v1/jobs/{id}/outputs`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobOutputs {
    pub job: u64,
    pub tasks: Vec<TaskOutputsView>,
}

/// The files one task left and the workers holding a copy of each.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskOutputsView {
    /// The task's index; absent for the reduce step.
    pub index: Option<u64>,
    pub files: Vec<OutputFileView>,
    /// Workers that hold every file, in the order they got them.
    pub holders: Vec<String>,
    /// Of those, the ones in service now (a fetch reads from these).
    pub available: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OutputFileView {
    /// Relative to the task's output directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex: the name to fetch it by.
    pub sha256: String,
}

impl JobOutputs {
    pub fn of(state: &state::ClusterState, job: u64) -> Self {
        let tasks = state
            .job_outputs(job)
            .map(|(task, outputs)| TaskOutputsView {
                index: match task.slot {
                    TaskSlot::Array(i) => Some(i),
                    TaskSlot::Reduce => None,
                },
                files: outputs
                    .files
                    .iter()
                    .map(|f| OutputFileView { path: f.path.clone(), size: f.size, sha256: f.sha256.to_hex() })
                    .collect(),
                holders: outputs.holders.clone(),
                available: outputs.holders.iter().filter(|h| serves_now(state, h)).cloned().collect(),
            })
            .collect();
        JobOutputs { job, tasks }
    }
}

/// Whether `worker` is in service and has said where it serves what it holds.
pub fn serves_now(state: &state::ClusterState, worker: &str) -> bool {
    state.worker(worker).is_some_and(|w| w.state == state::WorkerState::Ready) && state.endpoint(worker).is_some()
}

/// One task's state and recorded result (`job results --json` prints an array of these).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskResultView {
    pub index: u64,
    pub state: TaskState,
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
    /// Fills in why an attempt whose process succeeded still failed: its outputs could not
    /// be kept (the state keeps that beside the result).
    pub fn note_output_errors(rows: &mut [TaskResultView], state: &state::ClusterState, job: u64) {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            if let Some(e) = state.output_error(flotilla_core::model::TaskId::array(job, row.index)) {
                row.error = Some(e.to_string());
            }
        }
    }

    pub fn from_task(index: u64, task: &Task) -> Self {
        let r = task.result.as_ref();
        let worker = match task.state.in_flight() {
            Some((w, _)) => Some(w.to_string()),
            None => r.map(|r| r.worker.clone()),
        };
        TaskResultView {
            index,
            state: TaskState::from(&task.state),
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
                state::TaskState::Succeeded | state::TaskState::Failed => r.map(|r| rfc3339(r.finished_at)),
                _ => None,
            },
        }
    }

    /// A task that never left the queue (or was cancelled before it ran).
    pub fn never_ran(index: u64, state: TaskState) -> Self {
        TaskResultView {
            index,
            state,
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

    /// Every task of a job in index order, `offset`/`limit` applied: those in flight from the
    /// state, finished ones from the stored records.
    pub fn list(job: &Job, offset: u64, limit: u64, records: &dyn RecordReader) -> Result<Vec<Self>, RecordError> {
        let never_ran_state =
            if job.state == state::JobState::Cancelled { TaskState::Cancelled } else { TaskState::Waiting };
        let indices = job.spec.indices();
        let page: Vec<u64> = indices.iter().skip(offset as usize).take(limit.min(usize::MAX as u64) as usize).collect();
        // The page's finished tasks are among the first `page.len()` records from its start.
        let stored: BTreeMap<u64, state::Task> = match page.first() {
            Some(&first) => records.array_records(job.id, first, page.len())?.into_iter().collect(),
            None => BTreeMap::new(),
        };
        Ok(page
            .into_iter()
            .map(|index| match (job.tasks.get(&index), stored.get(&index)) {
                (Some(task), _) => Self::from_task(index, task),
                (None, Some(task)) if job.finished(index).is_some() => Self::from_task(index, task),
                _ => Self::never_ran(index, never_ran_state),
            })
            .collect())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobResult {
    pub id: u64,
    pub state: JobState,
    /// The reduce step's stdout (or the tasks' stdout concatenated when the job has no reduce);
    /// absent until the job succeeded.
    pub result: Option<String>,
    pub truncated: bool,
}

impl JobResult {
    pub fn from_job(job: &Job, records: &dyn RecordReader) -> Result<Self, RecordError> {
        let (result, truncated) = match records::job_result(job, records)? {
            Some((text, truncated)) => (Some(text), truncated),
            None => (None, false),
        };
        Ok(JobResult { id: job.id, state: job.state.into(), result, truncated })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MasterStatus {
    pub id: u64,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, or `unknown` when unreachable.
    pub role: Role,
    pub term: Option<u64>,
    pub last_applied: Option<u64>,
    pub reachable: bool,
    /// Smoothed round trip from the answering master to this one, in milliseconds (`null` for
    /// the answering master itself, or before it has measured the link).
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Its `--labels` (zone, region, …), as it reported them; empty when unreachable.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its release as it reported it (`0.1.0` did not: shown as such).
    #[serde(default)]
    pub version: Option<String>,
}

/// Something in the cluster's health that needs an operator's attention. Tagged by `kind`,
/// so new kinds can be added without breaking readers that skip the ones they do not know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusWarning {
    /// The link from master `from` to master `to` has a smoothed round trip close to the
    /// longest a replication call may take (`timeout_ms`): a little more and calls time out,
    /// the leader cannot commit and followers start elections. Raise `--election-timeout`
    /// and `--heartbeat` (README: "Masters across regions").
    SlowPeer { from: u64, to: u64, rtt_ms: f64, timeout_ms: f64 },
    /// One zone (the masters' `zone` label) holds a majority of the voting masters: losing
    /// that zone loses the cluster's quorum.
    ZoneMajority { zone: String, masters: Vec<u64>, voters: u64 },
}

impl StatusWarning {
    /// The warnings about where the voting masters run: `masters` lists each voter with its
    /// labels when known (an unreachable master's are not). Only with 3 or more voters (fewer
    /// survive no failure anyway) and only zones that the labels name.
    pub fn zone_majorities<'a>(
        masters: impl IntoIterator<Item = (u64, Option<&'a BTreeMap<String, String>>)>,
    ) -> Vec<Self> {
        let mut voters = 0u64;
        let mut by_zone: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (id, labels) in masters {
            voters += 1;
            if let Some(zone) = labels.and_then(|l| l.get("zone")) {
                by_zone.entry(zone.as_str()).or_default().push(id);
            }
        }
        if voters < 3 {
            return Vec::new();
        }
        by_zone
            .into_iter()
            .filter(|(_, ids)| ids.len() as u64 * 2 > voters)
            .map(|(zone, mut ids)| {
                ids.sort_unstable();
                StatusWarning::ZoneMajority { zone: zone.to_string(), masters: ids, voters }
            })
            .collect()
    }
}

impl std::fmt::Display for StatusWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusWarning::SlowPeer { from, to, rtt_ms, timeout_ms } => write!(
                f,
                "round trip from master {from} to master {to} is {rtt_ms:.0} ms, close to the {timeout_ms:.0} ms \
                 replication timeout: raise --election-timeout and --heartbeat (README: \"Masters across regions\")"
            ),
            StatusWarning::ZoneMajority { zone, masters, voters } => write!(
                f,
                "zone {zone} holds {} of the {voters} voting masters ({}): losing that zone loses the cluster; \
                 run the masters in at least 3 zones",
                masters.len(),
                masters.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    pub labels: BTreeMap<String, String>,
    /// Cpus of the attempts it holds, running or queued (`cpus_busy + cpus_queued`).
    pub cpus_used: u32,
    pub cpus_total: u32,
    /// Cpus running attempts (at most `cpus_total`).
    pub cpus_busy: u32,
    /// Cpus' worth of attempts queued on it, waiting for a free cpu.
    pub cpus_queued: u32,
    /// Cpus with nothing to run.
    pub cpus_free: u32,
    /// Bytes of memory offered to tasks that ask for memory, and held by them.
    pub memory: Option<u64>,
    #[serde(default)]
    pub memory_held: u64,
    /// Named resources offered, and units held by its attempts.
    #[serde(default)]
    pub resources: BTreeMap<String, u32>,
    #[serde(default)]
    pub resources_held: BTreeMap<String, u32>,
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
            state: w.condition().into(),
            labels: w.labels.clone(),
            cpus_used: w.cpus_used,
            cpus_total: w.cpus,
            cpus_busy: w.cpus_busy(),
            cpus_queued: w.cpus_queued(),
            cpus_free: w.free_cpus(),
            memory: w.memory,
            memory_held: w.memory_held(),
            resources: w.resources.clone(),
            resources_held: w.resources.keys().map(|n| (n.clone(), w.units_held(n))).collect(),
            tasks: w.tasks.len(),
            joined_at: rfc3339(w.joined_at),
            last_heartbeat: last_heartbeat_ms.map(rfc3339),
            last_heartbeat_ms_ago: last_heartbeat_ms.map(|t| now_ms.saturating_sub(t)),
            lost_reason: w.lost_reason.map(|r| r.to_string()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// What needs attention (slow links between masters, ...); empty when all is well.
    #[serde(default)]
    pub warnings: Vec<StatusWarning>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub id: u64,
    pub address: String,
    pub role: Role,
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
    /// This master's smoothed round trip to each peer it has measured, in milliseconds.
    #[serde(default)]
    // JSON object keys are strings: the peer's id, written out.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub peer_rtt_ms: BTreeMap<u64, f64>,
    /// The master's own `--labels` (zone, region, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The longest this master lets a replication call take, in milliseconds.
    #[serde(default)]
    pub replication_timeout_ms: Option<f64>,
    /// The cluster's identity (hex) as this master knows it; a restored or recovered copy has
    /// a new one.
    #[serde(default)]
    pub cluster: Option<String>,
    /// This master's release (`null`: 0.1.0, which did not report it).
    #[serde(default)]
    pub version: Option<String>,
}

/// This build's release, as masters and workers report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub seq: u64,
    pub time: String,
    pub at_ms: u64,
    pub kind: EventType,
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
    /// Why, for `worker_lost`, `task_rescheduled`, `task_failed`, `result_rejected`
    /// (`worker_lost` or `corrupt` for `output_copies_gone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `job_finished`: succeeded, failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// For `audit`: the token's name, or the certificate that made the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// For `audit`: the token's role (none for a certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<TokenRole>,
    /// For `audit`: method and path, `POST /v1/jobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// For `audit`: the HTTP status it was answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `audit`: the caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For `outputs_copied`, `output_copies_gone`, `outputs_lost`: how many tasks' outputs;
    /// for `tasks_not_run`, how many tasks (and `task`, the failed one they needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u64>,
    /// For `outputs_lost`: the job that runs those tasks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<u64>,
    /// For `schedule_launched` and `schedule_skipped`: the schedule, and the start of the
    /// period (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// For `schedule_skipped`: the previous period's job, still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// For `scaled_up`, `scaled_down`, `launch_failed` and `launch_ended`: the autoscaling
    /// pool, and the workers it started or stops (`worker`, for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<String>>,
}

impl EventView {
    pub fn from_event(e: &Event) -> Self {
        let mut v = EventView {
            seq: e.seq,
            time: rfc3339(e.at_ms),
            at_ms: e.at_ms,
            kind: EventType::from(&e.kind),
            message: e.kind.message(),
            job: e.kind.job(),
            ..Default::default()
        };
        let index_of = |slot: TaskSlot| match slot {
            TaskSlot::Array(i) => Some(i),
            TaskSlot::Reduce => None,
        };
        match &e.kind {
            journal::EventKind::LeaderElected { node, term, quiet_ms } => {
                v.node = Some(*node);
                v.term = Some(*term);
                v.quiet_ms = *quiet_ms;
            }
            journal::EventKind::MasterUnreachable { node } | journal::EventKind::MasterReachable { node } => {
                v.node = Some(*node)
            }
            journal::EventKind::WorkerMaintenance { worker, .. } | journal::EventKind::WorkerDrained { worker } => {
                v.worker = Some(worker.clone())
            }
            journal::EventKind::MembershipChanged(change) => {
                v.node = Some(match change {
                    flotilla_core::MemberChange::LearnerAdded { node, .. }
                    | flotilla_core::MemberChange::Promoted { node }
                    | flotilla_core::MemberChange::Removed { node } => *node,
                })
            }
            journal::EventKind::WorkerJoined { worker, cpus } => {
                v.worker = Some(worker.clone());
                v.cpus = Some(*cpus);
            }
            journal::EventKind::WorkerLost { worker, reason, requeued } => {
                v.worker = Some(worker.clone());
                v.reason = Some(reason.to_string());
                v.requeued = Some(*requeued);
            }
            journal::EventKind::TaskRescheduled { task, attempt, reason } => {
                v.task = index_of(task.slot);
                v.attempt = Some(*attempt);
                v.reason = Some(reason.to_string());
            }
            journal::EventKind::TaskFailed { task, attempt, reason } => {
                v.task = index_of(task.slot);
                v.attempt = Some(*attempt);
                v.reason = Some(reason.to_string());
            }
            journal::EventKind::ResultRejected { task, fence, worker, reason } => {
                v.task = index_of(task.slot);
                v.attempt = Some(fence.attempt);
                v.term = Some(fence.term);
                v.worker = Some(worker.clone());
                v.reason = Some(reason.to_string());
            }
            journal::EventKind::JobFinished { state, .. } => v.state = Some((*state).into()),
            journal::EventKind::JobRemoved { state, reason, .. } => {
                v.state = Some((*state).into());
                v.reason = Some(reason.name().to_string());
            }
            journal::EventKind::JobSubmitted { .. } => {}
            journal::EventKind::Audit(a) => {
                v.who = Some(a.who.clone());
                v.role = a.role;
                v.request = Some(format!("{} {}", a.method.name(), a.path));
                v.status = Some(a.status);
                v.from = Some(a.from.clone());
            }
            journal::EventKind::OutputsCopied { tasks, worker, .. } => {
                v.worker = Some(worker.clone());
                v.tasks = Some(*tasks);
            }
            journal::EventKind::OutputCopiesGone { tasks, worker, reason, .. } => {
                v.worker = Some(worker.clone());
                v.tasks = Some(*tasks);
                v.reason = Some(reason.name().to_string());
            }
            journal::EventKind::OutputsLost { tasks, rerun, .. } => {
                v.tasks = Some(*tasks);
                v.rerun = *rerun;
            }
            journal::EventKind::ScheduleLaunched { name, period, .. } => {
                v.schedule = Some(name.clone());
                v.period = Some(rfc3339(*period));
            }
            journal::EventKind::ScheduleSkipped { name, period, running } => {
                v.schedule = Some(name.clone());
                v.period = Some(rfc3339(*period));
                v.running = Some(*running);
            }
            journal::EventKind::TasksNotRun { tasks, needed, .. } => {
                v.tasks = Some(*tasks);
                v.task = index_of(needed.slot);
            }
            journal::EventKind::ScaledUp { pool, workers, reason } => {
                v.pool = Some(pool.clone());
                v.workers = Some(workers.clone());
                v.reason = Some(reason.to_string());
            }
            journal::EventKind::ScaledDown { pool, workers, reason } => {
                v.pool = Some(pool.clone());
                v.workers = Some(workers.clone());
                v.reason = Some(reason.to_string());
            }
            journal::EventKind::LaunchFailed { pool, worker, failure, .. } => {
                v.pool = Some(pool.clone());
                v.worker = Some(worker.clone());
                v.reason = Some(failure.to_string());
            }
            journal::EventKind::LaunchEnded { pool, worker, why } => {
                v.pool = Some(pool.clone());
                v.worker = Some(worker.clone());
                v.reason = Some(
                    match why {
                        autoscale::LaunchEnd::Retired => "retired",
                        autoscale::LaunchEnd::Lost => "lost",
                        autoscale::LaunchEnd::NeverJoined => "never_joined",
                        autoscale::LaunchEnd::EndedBeforeJoining => "ended_before_joining",
                    }
                    .to_string(),
                );
            }
        }
        v
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Events {
    pub events: Vec<EventView>,
    /// Pass as `after` to get the next events.
    pub last_seq: u64,
}

/// The body of `PUT /v1/jobs/retention`.
pub use flotilla_core::state::{JobRetention, PurgeOutcome};

/// Finished jobs' retention and what is kept now (`GET /v1/jobs/retention`; `PUT` takes a
/// [`JobRetention`]).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRetentionView {
    /// Finished jobs older than this are removed (`null`: no age limit).
    pub max_age_ms: Option<u64>,
    /// Finished jobs kept at most (the oldest go first).
    pub max_finished: u64,
    /// Finished jobs kept now.
    pub finished_kept: u64,
    /// Jobs in the state now, finished or not.
    pub jobs_kept: u64,
}

impl JobRetentionView {
    pub fn from_state(state: &flotilla_core::state::ClusterState) -> Self {
        let r = state.job_retention();
        JobRetentionView {
            max_age_ms: r.max_age_ms,
            max_finished: r.max_finished,
            finished_kept: state.finished_jobs() as u64,
            jobs_kept: state.jobs().count() as u64,
        }
    }
}

/// The body of `POST /v1/jobs/purge`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub jobs: Vec<u64>,
}

/// Why a job id answers 410: when and why it was removed, if still remembered.
pub fn removed_message(id: u64, removal: Option<flotilla_core::state::Removal>) -> String {
    use flotilla_core::state::RemovalReason;
    match removal {
        Some(r) => {
            let why = match r.reason {
                RemovalReason::Expired => "its retention age ran out",
                RemovalReason::Excess => "more finished jobs than the retention keeps",
                RemovalReason::Purged => "purged",
            };
            format!("job {id} was removed at {} ({why}); its summary is in `flotilla events`", rfc3339(r.at_ms))
        }
        None => format!("job {id} was removed (long ago; its summary may still be in `flotilla events`)"),
    }
}

/// The journal's retention setting and what it keeps now (`GET /v1/events/retention`; `PUT`
/// takes a [`Retention`]).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    #[test]
    fn a_live_read_cut_inside_a_character_leaves_it_for_the_next() {
        let bytes = "né".as_bytes();
        assert_eq!(LiveLog::text_of(bytes, 10), ("né".to_string(), 13));
        assert_eq!(LiveLog::text_of(&bytes[..2], 10), ("n".to_string(), 11));
        assert_eq!(LiveLog::text_of(&bytes[1..], 11), ("é".to_string(), 13));
        // Not text at all: given whole, made valid.
        assert_eq!(LiveLog::text_of(&[0xff, b'a'], 0), ("\u{fffd}a".to_string(), 2));
    }

    #[test]
    fn status_warnings_are_tagged_by_kind() {
        let zone = |z: &str| -> BTreeMap<String, String> { [("zone".to_string(), z.to_string())].into() };
        let (a, b, c) = (zone("a"), zone("b"), zone("c"));
        // Two of three voters in zone a: warned; one per zone, or a zone unknown: not.
        let w = StatusWarning::zone_majorities([(1, Some(&a)), (2, Some(&a)), (3, Some(&b))]);
        assert_eq!(w, vec![StatusWarning::ZoneMajority { zone: "a".into(), masters: vec![1, 2], voters: 3 }]);
        assert!(w[0].to_string().starts_with("zone a holds 2 of the 3 voting masters (1, 2)"));
        assert!(StatusWarning::zone_majorities([(1, Some(&a)), (2, Some(&b)), (3, Some(&c))]).is_empty());
        assert!(StatusWarning::zone_majorities([(1, Some(&a)), (2, None), (3, Some(&b))]).is_empty());
        // Three of five is a majority; unlabelled masters count as voters in no zone.
        let none = BTreeMap::new();
        let five = [(1, Some(&a)), (2, Some(&a)), (3, Some(&a)), (4, Some(&b)), (5, Some(&none))];
        assert_eq!(StatusWarning::zone_majorities(five).len(), 1);
        assert!(StatusWarning::zone_majorities([(1, Some(&a))]).is_empty(), "a single master is not warned about");
        let w = StatusWarning::SlowPeer { from: 1, to: 2, rtt_ms: 160.4, timeout_ms: 250.0 };
        assert_eq!(json(&w), r#"{"kind":"slow_peer","from":1,"to":2,"rtt_ms":160.4,"timeout_ms":250.0}"#);
        let back: StatusWarning = serde_json::from_str(&json(&w)).unwrap();
        assert_eq!(back, w);
        assert!(w.to_string().contains("master 1 to master 2 is 160 ms"), "{w}");
    }

    #[test]
    fn error_codes_keep_their_json_names_and_http_statuses() {
        let expected = [
            (ApiErrorCode::NotLeader, "not_leader", 421),
            (ApiErrorCode::NoLeader, "no_leader", 503),
            (ApiErrorCode::NotFound, "not_found", 404),
            (ApiErrorCode::BadRequest, "bad_request", 400),
            (ApiErrorCode::Unauthorized, "unauthorized", 401),
            (ApiErrorCode::Forbidden, "forbidden", 403),
            (ApiErrorCode::Conflict, "conflict", 409),
            (ApiErrorCode::Unavailable, "unavailable", 503),
            (ApiErrorCode::Internal, "internal", 500),
            (ApiErrorCode::Gone, "gone", 410),
            (ApiErrorCode::TooLarge, "too_large", 413),
            (ApiErrorCode::Timeout, "timeout", 408),
            (ApiErrorCode::Unknown, "unknown", 500),
        ];
        assert_eq!(expected.len(), ApiErrorCode::ALL.len());
        for ((code, name, status), listed) in expected.into_iter().zip(ApiErrorCode::ALL) {
            assert_eq!(code, listed);
            assert_eq!(json(&code), format!("\"{name}\""));
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
            assert_eq!(code.http_status(), status, "{name}");
            assert_eq!(serde_json::from_str::<ApiErrorCode>(&json(&code)).unwrap(), code);
        }
        // A code from a newer master still decodes.
        assert_eq!(serde_json::from_str::<ApiErrorCode>("\"too_many_requests\"").unwrap(), ApiErrorCode::Unknown);
    }

    #[test]
    fn error_bodies_are_byte_for_byte_as_before() {
        let body = ApiError { error: "no job 7".into(), code: ApiErrorCode::NotFound, leader: None };
        assert_eq!(json(&body), r#"{"error":"no job 7","code":"not_found","leader":null}"#);
        let redirect = r#"{"error":"master 1 is not the leader; master 2 is","code":"not_leader","leader":"h:2"}"#;
        let back: ApiError = serde_json::from_str(redirect).unwrap();
        assert_eq!((back.code, back.leader.as_deref()), (ApiErrorCode::NotLeader, Some("h:2")));
        assert_eq!(json(&back), redirect);
    }

    #[test]
    fn kinds_serialize_as_the_strings_they_replaced() {
        use flotilla_core::model::{Fence, TaskId};
        for s in [
            state::JobState::Waiting,
            state::JobState::Running,
            state::JobState::Reducing,
            state::JobState::Succeeded,
            state::JobState::Failed,
            state::JobState::Cancelled,
        ] {
            let api = JobState::from(s);
            assert_eq!(json(&api), format!("\"{}\"", s.name()));
            assert_eq!(api.to_string(), s.name());
            assert_eq!(api.is_terminal(), s.is_terminal());
            assert_eq!(state::JobState::from(api), s);
        }
        let fence = Fence { term: 1, attempt: 1 };
        for s in [
            state::TaskState::Waiting,
            state::TaskState::Assigned { worker: "a".into(), fence, since: 0 },
            state::TaskState::Running { worker: "a".into(), fence, since: 0 },
            state::TaskState::Succeeded,
            state::TaskState::Failed,
            state::TaskState::Cancelled,
        ] {
            assert_eq!(json(&TaskState::from(&s)), format!("\"{}\"", s.name()));
        }
        assert_eq!(json(&TaskState::Pending), "\"pending\"");
        for s in WorkerState::ALL {
            assert_eq!(json(&s), format!("\"{}\"", state::WorkerCondition::from(s).name()));
        }
        for role in [
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::Learner,
            Role::Shutdown,
            Role::Unknown,
            Role::Unreachable,
        ] {
            assert_eq!(json(&role), format!("\"{}\"", role.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&json(&role)).unwrap(), role);
        }
        let task = TaskId::array(1, 2);
        use flotilla_core::reason::*;
        let kinds = [
            journal::EventKind::LeaderElected { node: 1, term: 1, quiet_ms: None },
            journal::EventKind::MasterUnreachable { node: 1 },
            journal::EventKind::MasterReachable { node: 1 },
            journal::EventKind::WorkerJoined { worker: "a".into(), cpus: 1 },
            journal::EventKind::WorkerLost { worker: "a".into(), reason: LostReason::Restarted, requeued: 0 },
            journal::EventKind::JobSubmitted { job: 1, tasks: 1 },
            journal::EventKind::TaskRescheduled { task, attempt: 1, reason: RescheduleReason::WorkerLost("a".into()) },
            journal::EventKind::TaskFailed { task, attempt: 1, reason: TaskFailure::Process(ProcessFailure::TimedOut) },
            journal::EventKind::ResultRejected {
                task,
                fence,
                worker: "a".into(),
                reason: StaleReason::NeverAssigned(task),
            },
            journal::EventKind::JobFinished { job: 1, state: state::JobState::Failed },
            journal::EventKind::MembershipChanged(flotilla_core::MemberChange::Promoted { node: 4 }),
            journal::EventKind::WorkerMaintenance { worker: "a".into(), change: state::MaintenanceChange::Cordon },
            journal::EventKind::WorkerMaintenance {
                worker: "a".into(),
                change: state::MaintenanceChange::Drain { deadline_ms: None, by_worker: true },
            },
            journal::EventKind::WorkerMaintenance { worker: "a".into(), change: state::MaintenanceChange::Uncordon },
            journal::EventKind::WorkerDrained { worker: "a".into() },
        ];
        for kind in &kinds {
            let t = EventType::from(kind);
            assert_eq!(t.as_str(), kind.name());
            assert_eq!(json(&t), format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<EventType>(&json(&t)).unwrap(), t);
        }
        assert_eq!(serde_json::from_str::<EventType>("\"worker_teleported\"").unwrap(), EventType::Unknown);
        // Padding works as it did on the strings (the CLI's columns).
        assert_eq!(format!("{:<10}|", JobState::Running), "running   |");
    }

    #[test]
    fn an_event_view_renders_its_typed_reason_as_text() {
        use flotilla_core::reason::LostReason;
        let event = Event {
            seq: 3,
            at_ms: 0,
            kind: journal::EventKind::WorkerLost {
                worker: "a".into(),
                reason: LostReason::Silent { silent_ms: 3_000 },
                requeued: 2,
            },
        };
        let v = json(&EventView::from_event(&event));
        assert_eq!(
            v,
            r#"{"seq":3,"time":"1970-01-01T00:00:00.000Z","at_ms":0,"kind":"worker_lost","message":"worker a lost (no heartbeat for 3.0s); 2 tasks re-queued","job":null,"task":null,"attempt":null,"worker":"a","node":null,"term":null,"requeued":2,"reason":"no heartbeat for 3.0s"}"#
        );
        let finished = Event {
            seq: 4,
            at_ms: 0,
            kind: journal::EventKind::JobFinished { job: 1, state: state::JobState::Cancelled },
        };
        assert!(json(&EventView::from_event(&finished)).ends_with(r#""state":"cancelled"}"#));
    }
}

/// `GET`/`PUT /v1/scheduling`: how jobs of the same priority share the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scheduling {
    pub sharing: flotilla_core::model::Sharing,
}

/// The header in which every master names every master of the group (comma-separated
/// addresses), so clients keep finding the group after its members change.
pub const MASTERS_HEADER: &str = "x-flotilla-masters";

/// Whether a master votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Voter,
    /// Receives the log but does not vote (a new master catching up).
    Learner,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// One master of the group (`flotilla cluster members --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    pub role: MemberRole,
    pub leader: bool,
    /// Its release, as last reported to the answering master (`null` until it answered one
    /// of its probes).
    #[serde(default)]
    pub version: Option<String>,
}

/// `POST /v1/cluster/members`: add a master; it joins as a learner and votes once current.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMaster {
    pub id: u64,
    pub address: String,
}

/// `POST /v1/cluster/leader`: hand leadership to `to`, or to the most up-to-date voter.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeadership {
    #[serde(default)]
    pub to: Option<u64>,
}

/// Where leadership went.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeadershipMoved {
    pub from: u64,
    pub to: u64,
    pub term: u64,
    /// From the request to the new leader being known here.
    pub took_ms: u64,
}

/// One worker, as `flotilla worker list --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    pub name: String,
    pub state: WorkerState,
    /// Attempts running on it, and queued on it waiting for a free cpu.
    pub running: usize,
    pub queued: usize,
    pub cpus: u32,
    pub labels: BTreeMap<String, String>,
    /// When a draining worker's running tasks are stopped and re-queued (RFC 3339), if it
    /// has a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<String>,
    /// Whether the worker drained itself because it was asked to stop (SIGTERM).
    #[serde(default)]
    pub stopping: bool,
    /// Its release as it reported it to the leader (`0.1.0` did not report one; `null` while
    /// it has no session with this leader).
    #[serde(default)]
    pub version: Option<String>,
}

impl WorkerView {
    pub fn of(state: &state::ClusterState, w: &Worker) -> Self {
        let (mut running, mut queued) = (0, 0);
        for task in w.tasks.keys() {
            match state.job(task.job).and_then(|j| j.task(task.slot)).map(|t| &t.state) {
                Some(state::TaskState::Running { .. }) => running += 1,
                Some(state::TaskState::Assigned { .. }) => queued += 1,
                _ => {}
            }
        }
        let (drain_deadline, stopping) = match w.maintenance {
            state::Maintenance::Draining { deadline, by_worker } => (deadline.map(crate::time::rfc3339), by_worker),
            state::Maintenance::Drained { by_worker } => (None, by_worker),
            _ => (None, false),
        };
        WorkerView {
            name: w.name.clone(),
            state: w.condition().into(),
            running,
            queued,
            cpus: w.cpus,
            labels: w.labels.clone(),
            drain_deadline,
            stopping,
            version: None,
        }
    }
}

/// `POST /v1/workers/{name}/drain`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// How long running tasks may take before they are stopped and re-queued elsewhere
    /// (none: as long as they take).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}
