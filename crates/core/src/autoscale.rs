//! Autoscaling: pools of workers that follow the waiting work.
//!
//! A pool's [`Policy`] is replicated (`Command::SetAutoscale`): which provider starts its
//! workers, how few and how many it keeps, the target it steers by, its cooldowns and how long
//! a worker may sit idle before it goes. So is what the pool has under way ([`Pool`]): the
//! workers it asked for, under names chosen when the decision was committed, so that a new
//! leader knows what is on its way and never starts the same worker twice.
//!
//! ```text
//!  leader duty ──▶ plan(state, pool, now, idle timers) ──▶ Decision
//!     │                        (pure)                        │
//!     │   ScaleUp (names chosen, launches recorded) ◀────────┤ Up
//!     │   provider.launch(names) ──▶ LaunchReported          │
//!     │   ScaleDown (idle workers drain) ◀───────────────────┤ Down
//!     │   provider.remove(name)  ──▶ LaunchEnded ◀───────────┘ Abandon / Forget
//! ```
//!
//! Scale-in is a drain: only a worker that holds no task, has been idle for the policy's idle
//! time and holds no output that has no other copy is chosen, and it is drained (by the same
//! `Draining` state an operator's drain uses) before its provider is asked to stop it. The
//! workers a provider starts exit by themselves once drained (`flotilla worker
//! --exit-when-drained`).
//!
//! Flapping is ruled out by construction: a scale-up follows a scale-in only after
//! `cooldown_up`, a scale-in follows a scale-up only after `cooldown_down`, and a worker goes
//! only after `idle` without work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Millis;
use crate::state::{ClusterState, Maintenance, WorkerState};

/// Pools one cluster keeps at most.
pub const MAX_POOLS: usize = 64;
/// Bytes of a pool's name.
pub const MAX_POOL_NAME: usize = 32;
/// Workers a pool may have at most.
pub const MAX_POOL_WORKERS: u32 = 10_000;
/// Workers asked for in one decision at most: a burst beyond it is met over a few rounds.
pub const MAX_LAUNCH_BATCH: u32 = 64;
/// A retiring worker still there this long after it was drained did not exit by itself (one
/// started without `--exit-when-drained`): its provider is asked to stop it.
pub const RETIRE_GRACE_MS: u64 = 30_000;
/// Failed launches in a row after which a pool pauses until an operator resumes it
/// (HyperQueue pauses an allocation queue after as many failed submissions).
pub const FAILURES_BEFORE_PAUSE: u32 = 10;
/// The first retry after a failed launch waits this long; each further failure doubles it.
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// Retries never wait longer than this.
pub const MAX_BACKOFF_MS: u64 = 300_000;
/// Bytes of a provider's error kept with the pool.
pub const MAX_ERROR_BYTES: usize = 2_048;
/// The name of the pool `autoscale set` configures when none is named.
pub const DEFAULT_POOL: &str = "auto";

/// What starts and stops a pool's workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderSpec {
    /// Worker processes on the leading master's machine (what `flotilla up` uses).
    Local,
    /// User commands: `add` starts the workers named in `$FLOTILLA_WORKER_NAMES` (one per
    /// line), `remove` stops the one named in `$FLOTILLA_WORKER_NAME`. Both run under `sh -c`.
    Command { add: String, remove: String },
    /// One Slurm job per worker (`sbatch`), followed with `squeue`, cancelled with `scancel`.
    Slurm {
        partition: Option<String>,
        /// The job's time limit, minutes; the worker drains before it.
        time_limit_min: Option<u32>,
        /// More `sbatch` arguments, passed as given.
        args: Vec<String>,
    },
    /// The replica count of a worker StatefulSet, through the Kubernetes API server.
    Kubernetes {
        /// `https://host:port`; none: the in-cluster service account's API server.
        api: Option<String>,
        namespace: String,
        statefulset: String,
    },
}

impl ProviderSpec {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSpec::Local => ProviderKind::Local,
            ProviderSpec::Command { .. } => ProviderKind::Command,
            ProviderSpec::Slurm { .. } => ProviderKind::Slurm,
            ProviderSpec::Kubernetes { .. } => ProviderKind::Kubernetes,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderKind {
    Local,
    Command,
    Slurm,
    Kubernetes,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Command => "command",
            ProviderKind::Slurm => "slurm",
            ProviderKind::Kubernetes => "kubernetes",
        }
    }
}

/// What the pool steers by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// At most this much waiting work per cpu (run time, as measured for each job; a task of a
    /// job not measured yet counts as this much): a burst asks for many workers at once, a
    /// trickle of short tasks for few.
    WorkPerCpu { ms: u64 },
    /// One more worker whenever the oldest waiting task has waited this long.
    OldestWaiting { ms: u64 },
}

impl Default for Target {
    fn default() -> Self {
        Target::WorkPerCpu { ms: 10_000 }
    }
}

/// A pool's policy, as `autoscale set` replicates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub provider: ProviderSpec,
    pub min: u32,
    pub max: u32,
    /// Labels each of the pool's workers carries (its label selector): they are started with
    /// them, and the work counted is that of jobs whose selector these labels meet.
    pub selector: BTreeMap<String, String>,
    /// Cpus each started worker offers; none: what its machine has (the leader's estimate
    /// until one has joined).
    pub worker_cpus: Option<u32>,
    pub target: Target,
    /// After a scale-in, the pool does not grow again for this long.
    pub cooldown_up_ms: u64,
    /// After a scale-up, the pool does not shrink for this long.
    pub cooldown_down_ms: u64,
    /// A worker that held no task for this long is drained and stopped.
    pub idle_ms: u64,
    /// A started worker that has not joined by then is cancelled (and counts as a failure).
    pub join_timeout_ms: u64,
}

impl Policy {
    /// The defaults `autoscale set` starts from.
    pub fn new(provider: ProviderSpec, min: u32, max: u32) -> Policy {
        Policy {
            provider,
            min,
            max,
            selector: BTreeMap::new(),
            worker_cpus: None,
            target: Target::default(),
            cooldown_up_ms: 10_000,
            cooldown_down_ms: 10_000,
            idle_ms: 300_000,
            join_timeout_ms: 300_000,
        }
    }

    pub fn check(&self) -> Result<(), AutoscaleRefusal> {
        if self.min > self.max {
            return Err(AutoscaleRefusal::MinAboveMax { min: self.min, max: self.max });
        }
        if self.max > MAX_POOL_WORKERS {
            return Err(AutoscaleRefusal::TooManyWorkers { max: self.max });
        }
        if self.max == 0 {
            return Err(AutoscaleRefusal::NoWorkers);
        }
        if self.worker_cpus == Some(0) {
            return Err(AutoscaleRefusal::NoCpus);
        }
        let target_ms = match self.target {
            Target::WorkPerCpu { ms } | Target::OldestWaiting { ms } => ms,
        };
        if target_ms == 0 || self.join_timeout_ms == 0 {
            return Err(AutoscaleRefusal::ZeroDuration);
        }
        match &self.provider {
            ProviderSpec::Command { add, remove } if add.trim().is_empty() || remove.trim().is_empty() => {
                Err(AutoscaleRefusal::MissingCommand)
            }
            ProviderSpec::Kubernetes { namespace, statefulset, .. }
                if !dns_label(namespace) || !dns_label(statefulset) =>
            {
                Err(AutoscaleRefusal::MissingStatefulSet)
            }
            _ => Ok(()),
        }
    }
}

/// Where one worker the pool asked for is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchStage {
    /// Decided and committed; the provider is being asked.
    Requested,
    /// The provider took the request (its handle is kept); the worker has not joined yet.
    Started,
    /// The worker joined and is the pool's.
    Joined,
    /// Leaving: chosen for scale-in (draining), or it drained itself to stop (a Slurm job's
    /// time limit coming). The pool lets go of it once it is gone.
    Retiring,
}

impl LaunchStage {
    pub fn name(self) -> &'static str {
        match self {
            LaunchStage::Requested => "requested",
            LaunchStage::Started => "started",
            LaunchStage::Joined => "joined",
            LaunchStage::Retiring => "retiring",
        }
    }

    /// Still on its way: capacity that is coming.
    pub fn pending(self) -> bool {
        matches!(self, LaunchStage::Requested | LaunchStage::Started)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub requested_at: Millis,
    /// When it reached its stage (leader clock).
    pub since: Millis,
    /// What the provider calls it (a Slurm job id, a process id), once it said.
    pub handle: Option<String>,
    pub stage: LaunchStage,
}

/// Why a launch failed, as kept with the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchFailure {
    /// The provider refused or failed; `detail` is what it said (its own words, cut).
    Provider { detail: String },
    /// The provider started the worker but it did not join within the join timeout.
    NeverJoined { waited_ms: u64 },
    /// What the provider started ended before the worker joined (its Slurm job, its process).
    EndedBeforeJoining,
}

impl std::fmt::Display for LaunchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchFailure::Provider { detail } => write!(f, "the provider failed: {detail}"),
            LaunchFailure::NeverJoined { waited_ms } => {
                write!(f, "the worker did not join within {}", crate::units::format_millis(*waited_ms))
            }
            LaunchFailure::EndedBeforeJoining => {
                write!(f, "what the provider started ended before the worker joined (see its log)")
            }
        }
    }
}

/// How a launch left the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchEnd {
    /// Drained and stopped (scale-in).
    Retired,
    /// The worker was lost; its provider was asked to stop whatever is left of it.
    Lost,
    /// It never joined; the provider was asked to cancel it.
    NeverJoined,
    /// What the provider started ended before the worker joined.
    EndedBeforeJoining,
}

/// One pool: its policy and what it has under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub policy: Policy,
    pub created_at: Millis,
    /// The number in the next worker's name (`POOL-N`).
    pub next_serial: u64,
    /// The workers it asked for and has not let go of, by name.
    pub launches: BTreeMap<String, Launch>,
    pub last_up: Option<Millis>,
    pub last_down: Option<Millis>,
    /// Launches that failed in a row; a worker that joins resets it.
    pub failures: u32,
    /// No launch before this (backing off after a failure).
    pub retry_at: Option<Millis>,
    /// Paused after [`FAILURES_BEFORE_PAUSE`] failures in a row, until resumed.
    pub paused: bool,
    pub last_failure: Option<LaunchFailure>,
    /// The latest scale-up or scale-in, and why.
    pub last_decision: Option<(Millis, Scaled)>,
    pub launched: u64,
    pub retired: u64,
    pub failed: u64,
}

impl Pool {
    pub fn new(policy: Policy, at: Millis) -> Pool {
        Pool {
            policy,
            created_at: at,
            next_serial: 1,
            launches: BTreeMap::new(),
            last_up: None,
            last_down: None,
            failures: 0,
            retry_at: None,
            paused: false,
            last_failure: None,
            last_decision: None,
            launched: 0,
            retired: 0,
            failed: 0,
        }
    }

    /// Workers asked for or in service, not retiring: what `min` and `max` count.
    pub fn active(&self) -> u32 {
        self.launches.values().filter(|l| l.stage != LaunchStage::Retiring).count() as u32
    }

    pub fn pending(&self) -> u32 {
        self.launches.values().filter(|l| l.stage.pending()).count() as u32
    }

    pub fn count(&self, stage: LaunchStage) -> u32 {
        self.launches.values().filter(|l| l.stage == stage).count() as u32
    }

    /// A failed launch: back off, doubling each time; pause after too many in a row.
    pub(crate) fn failed(&mut self, at: Millis, failure: LaunchFailure) {
        self.failures = self.failures.saturating_add(1);
        self.failed += 1;
        let backoff = FIRST_BACKOFF_MS.saturating_mul(1 << (self.failures - 1).min(20)).min(MAX_BACKOFF_MS);
        self.retry_at = Some(at.saturating_add(backoff));
        self.paused |= self.failures >= FAILURES_BEFORE_PAUSE;
        self.last_failure = Some(failure);
    }
}

/// What a provider said of a launch it was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchOutcome {
    /// Started, or submitted (a Slurm job waiting in the queue): the worker is on its way.
    Started {
        handle: Option<String>,
    },
    Failed(LaunchFailure),
}

/// A decision the pool committed, as `autoscale show` recalls it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scaled {
    Up { workers: u32, reason: ScaleUpReason },
    Down { workers: u32, reason: ScaleDownReason },
}

impl std::fmt::Display for Scaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scaled::Up { workers, reason } => write!(f, "up by {workers}: {reason}"),
            Scaled::Down { workers, reason } => write!(f, "down by {workers}: {reason}"),
        }
    }
}

/// Why the pool grows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleUpReason {
    /// Fewer workers than the policy's minimum.
    Minimum { have: u32, min: u32 },
    /// Waiting work wants more cpus than the pool's workers (and those on their way) have.
    Demand { waiting_tasks: u64, want_cpus: u64, have_cpus: u64 },
    /// The oldest waiting task waited longer than the target.
    OldestWaiting { waited_ms: u64 },
}

impl std::fmt::Display for ScaleUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleUpReason::Minimum { have, min } => write!(f, "{have} workers, fewer than the minimum {min}"),
            ScaleUpReason::Demand { waiting_tasks, want_cpus, have_cpus } => {
                write!(f, "{waiting_tasks} tasks waiting want {want_cpus} cpus, {have_cpus} can take them soon")
            }
            ScaleUpReason::OldestWaiting { waited_ms } => {
                write!(f, "the oldest waiting task has waited {}", crate::units::format_millis(*waited_ms))
            }
        }
    }
}

/// Why the pool shrinks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleDownReason {
    /// Held no task for at least the policy's idle time.
    Idle { idle_ms: u64 },
    /// More workers than the policy's maximum (it was lowered).
    AboveMaximum { have: u32, max: u32 },
}

impl std::fmt::Display for ScaleDownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleDownReason::Idle { idle_ms } => write!(f, "idle for {}", crate::units::format_millis(*idle_ms)),
            ScaleDownReason::AboveMaximum { have, max } => write!(f, "{have} workers, more than the maximum {max}"),
        }
    }
}

/// Why an autoscaling command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AutoscaleRefusal {
    #[error("no autoscaling pool named '{0}'")]
    Unknown(String),
    #[error("a pool's name is 1 to {MAX_POOL_NAME} letters, digits, '_' or '-'")]
    BadName,
    #[error("at most {MAX_POOLS} pools")]
    TooManyPools,
    #[error("--min {min} is above --max {max}")]
    MinAboveMax { min: u32, max: u32 },
    #[error("--max {max} is above the limit of {MAX_POOL_WORKERS} workers")]
    TooManyWorkers { max: u32 },
    #[error("--max must be at least 1")]
    NoWorkers,
    #[error("--worker-cpus must be at least 1")]
    NoCpus,
    #[error("the target and the join timeout must be longer than 0")]
    ZeroDuration,
    #[error("the command provider needs both --add-command and --remove-command")]
    MissingCommand,
    #[error("the kubernetes provider needs --statefulset and --namespace, each a Kubernetes name (lower-case letters, digits, '-')")]
    MissingStatefulSet,
    #[error("pool '{pool}' is paused after {failures} failed launches in a row; `autoscale resume {pool}` first")]
    Paused { pool: String, failures: u32 },
    #[error("pool '{pool}' has no launch named '{name}'")]
    NoLaunch { pool: String, name: String },
    #[error("pool '{pool}' may not grow by {count} now")]
    CannotGrow { pool: String, count: u32 },
}

/// A Kubernetes name: 1 to 63 lower-case letters, digits and '-', not starting or ending with '-'.
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` may name a pool.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POOL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What the leader's duty sees beside the replicated state: its clock, how long each worker
/// has held nothing (its own watch: a new leader starts the watch again, which only delays a
/// scale-in), and the cpus a worker it starts will offer.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub now: Millis,
    /// Since when each worker has held no task (workers that hold some are absent).
    pub idle_since: &'a BTreeMap<String, Millis>,
    /// Launches not joined yet whose provider says what it started has ended (a Slurm job
    /// gone from the queue, a process gone).
    pub vanished: &'a std::collections::BTreeSet<String>,
    pub launch_cpus: u32,
}

/// What the leader's duty does for one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Propose `ScaleUp` for this many workers, then ask the provider to start them.
    Up { count: u32, reason: ScaleUpReason },
    /// Propose `ScaleDown` for these workers (they drain; their provider stops them later).
    Down { workers: Vec<String>, reason: ScaleDownReason },
    /// Ask the provider to stop or cancel this launch, then propose `LaunchEnded`.
    End { name: String, why: LaunchEnd },
}

/// The waiting work the pool's workers could take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub waiting_tasks: u64,
    /// Milliseconds of it (cpus times run time; a task of a job not measured yet counts as
    /// the target).
    pub work_ms: u64,
    /// Cpus the waiting work asks for by the pool's target.
    pub want_cpus: u64,
    /// When the oldest of it was submitted.
    pub oldest: Option<Millis>,
}

/// Whether a worker with these labels meets a job's selector.
fn meets(labels: &BTreeMap<String, String>, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The waiting work of jobs whose tasks a worker of the pool could run: their selector is met
/// by the pool's labels, each task fits the cpus of one worker, and they ask for no named
/// resource or memory (a started worker offers none). Tasks waiting for the jobs or tasks they
/// need are not counted; tasks queued on a worker behind its running ones are.
pub fn demand(state: &ClusterState, policy: &Policy, launch_cpus: u32) -> Demand {
    let per_cpu_ms = match policy.target {
        Target::WorkPerCpu { ms } | Target::OldestWaiting { ms } => ms.max(1),
    };
    let mut d = Demand::default();
    let mut work_ms: u128 = 0;
    for job in state.queued_jobs() {
        let spec = &job.spec;
        if !meets(&policy.selector, &spec.selector) || spec.holds_resources() || spec.cpus > launch_cpus.max(1) {
            continue;
        }
        let held = state.held_tasks(job.id).map_or(0, |h| h.intersection(&job.pending).len());
        let waiting = job.pending.len().saturating_sub(held) + u64::from(job.reduce_pending);
        if waiting == 0 {
            continue;
        }
        d.waiting_tasks += waiting;
        let each_ms = job.measured.mean_ms().unwrap_or(per_cpu_ms).max(1);
        work_ms += u128::from(waiting) * u128::from(each_ms) * u128::from(spec.cpus.max(1));
        d.oldest = Some(d.oldest.map_or(job.submitted_at, |o| o.min(job.submitted_at)));
    }
    // Attempts queued on busy workers wait as much as those in the queue, each as long as its
    // job's tasks take (a worker keeps about 250 ms of known work queued: that is no demand).
    for w in state.workers().filter(|w| w.takes_work() && w.cpus_queued() > 0 && meets(&w.labels, &policy.selector)) {
        let (sum, n) = w
            .tasks
            .keys()
            .filter_map(|t| {
                let job = state.job(t.job)?;
                matches!(job.task(t.slot)?.state, crate::model::TaskState::Assigned { .. })
                    .then(|| u128::from(job.measured.mean_ms().unwrap_or(per_cpu_ms).max(1)))
            })
            .fold((0u128, 0u128), |(s, n), ms| (s + ms, n + 1));
        let each = sum.checked_div(n).unwrap_or(u128::from(per_cpu_ms));
        work_ms += u128::from(w.cpus_queued()) * each;
    }
    d.want_cpus = u64::try_from(work_ms.div_ceil(u128::from(per_cpu_ms))).unwrap_or(u64::MAX);
    d.work_ms = u64::try_from(work_ms).unwrap_or(u64::MAX);
    d
}

/// Cpus that take waiting work within the target: free ones, those of workers on their way,
/// and busy ones whose running task's job takes less than the target (they turn over soon).
/// A cpu running a long task, or one of a job not measured yet, is not counted.
fn soon_free_cpus(state: &ClusterState, serving: &[&crate::state::Worker], pending_cpus: u64, target_ms: u64) -> u64 {
    let mut cpus = pending_cpus;
    for w in serving {
        cpus += u64::from(w.free_cpus());
        let turning: u64 = w
            .tasks
            .keys()
            .filter_map(|t| {
                let job = state.job(t.job)?;
                let running = matches!(job.task(t.slot)?.state, crate::model::TaskState::Running { .. });
                (running && job.measured.mean_ms().is_some_and(|m| m <= target_ms)).then_some(u64::from(job.spec.cpus))
            })
            .sum();
        cpus += turning.min(u64::from(w.cpus_busy()));
    }
    cpus
}

/// Whether `worker` holds the only copy of some kept task's outputs: it is not removed then.
pub fn holds_last_copy(state: &ClusterState, worker: &str) -> bool {
    state.all_outputs().any(|o| o.holders.len() == 1 && o.holders[0] == worker)
}

/// The leader's decisions for one pool at `input.now`. Deterministic: the same state, pool
/// and input give the same decisions.
pub fn plan(state: &ClusterState, pool: &Pool, input: &PlanInput<'_>) -> Vec<Decision> {
    let now = input.now;
    let policy = &pool.policy;
    let mut out = Vec::new();

    // Launches that are over: retired workers drained or gone, lost workers, and workers that
    // never joined.
    for (name, launch) in &pool.launches {
        let worker = state.worker(name);
        let why = match launch.stage {
            LaunchStage::Started if input.vanished.contains(name) => Some(LaunchEnd::EndedBeforeJoining),
            LaunchStage::Requested | LaunchStage::Started => {
                (now.saturating_sub(launch.requested_at) >= policy.join_timeout_ms).then_some(LaunchEnd::NeverJoined)
            }
            LaunchStage::Joined => match worker {
                None => Some(LaunchEnd::Lost),
                Some(w) if w.state == WorkerState::Lost => Some(LaunchEnd::Lost),
                Some(_) => None,
            },
            // Gone once drained (it exits by itself: its provider is told only then, so that it
            // never cuts a worker's last words short), or drained and still there long after.
            // A StatefulSet's pod is stopped (SIGTERM, after its grace period) by lowering the
            // count, so it is told as soon as the worker is drained.
            LaunchStage::Retiring => match worker {
                None => Some(LaunchEnd::Retired),
                Some(w) if w.state == WorkerState::Lost => Some(LaunchEnd::Retired),
                Some(w)
                    if matches!(policy.provider, ProviderSpec::Kubernetes { .. })
                        && w.tasks.is_empty()
                        && matches!(w.maintenance, Maintenance::Drained { .. }) =>
                {
                    Some(LaunchEnd::Retired)
                }
                Some(w)
                    if w.tasks.is_empty()
                        && w.maintenance != Maintenance::InService
                        && now.saturating_sub(launch.since) >= RETIRE_GRACE_MS =>
                {
                    Some(LaunchEnd::Retired)
                }
                Some(_) => None,
            },
        };
        if let Some(why) = why {
            out.push(Decision::End { name: name.clone(), why });
        }
    }

    let active = pool.active();
    let pending = pool.pending();
    // Capacity: the pool's own workers in service and those on the way, and any other worker
    // in service that carries the pool's labels (it takes the same work).

    let serving: Vec<&crate::state::Worker> =
        state.workers().filter(|w| w.takes_work() && meets(&w.labels, &policy.selector)).collect();
    let pending_cpus = u64::from(pending) * u64::from(input.launch_cpus.max(1));
    let d = demand(state, policy, input.launch_cpus);

    let may_grow = !pool.paused
        && pool.retry_at.is_none_or(|r| r <= now)
        && pool.last_down.is_none_or(|t| now.saturating_sub(t) >= policy.cooldown_up_ms);
    let room = policy.max.saturating_sub(active);
    let up = if active < policy.min {
        Some((policy.min - active, ScaleUpReason::Minimum { have: active, min: policy.min }))
    } else {
        match policy.target {
            // More than the target's worth of waiting work per cpu that takes it soon: enough
            // cpus for all of it within the target.
            Target::WorkPerCpu { ms } => {
                let have_cpus = soon_free_cpus(state, &serving, pending_cpus, ms.max(1));
                let over = u128::from(d.work_ms) > u128::from(ms.max(1)) * u128::from(have_cpus);
                (d.waiting_tasks > 0 && over && d.want_cpus > have_cpus).then(|| {
                    let missing = (d.want_cpus - have_cpus).div_ceil(u64::from(input.launch_cpus.max(1)));
                    let reason =
                        ScaleUpReason::Demand { waiting_tasks: d.waiting_tasks, want_cpus: d.want_cpus, have_cpus };
                    (u32::try_from(missing).unwrap_or(u32::MAX), reason)
                })
            }
            Target::OldestWaiting { ms } => {
                let waited = d.oldest.map(|o| now.saturating_sub(o));
                waited
                    .filter(|w| *w >= ms && pending == 0)
                    .map(|waited_ms| (1, ScaleUpReason::OldestWaiting { waited_ms }))
            }
        }
    };
    if let Some((count, reason)) = up {
        let count = count.min(room).min(MAX_LAUNCH_BATCH);
        if count > 0 && may_grow {
            out.push(Decision::Up { count, reason });
        }
        // Work is waiting (or the pool is short of its minimum): nothing goes.
        return out;
    }

    // Scale-in: the pool's joined workers that hold nothing and no last copy of an output.
    if pool.last_up.is_some_and(|t| now.saturating_sub(t) < policy.cooldown_down_ms) {
        return out;
    }
    // Longest idle first.
    let mut idle: Vec<(Millis, &str)> = pool
        .launches
        .iter()
        .filter(|(_, l)| l.stage == LaunchStage::Joined)
        .filter_map(|(name, _)| {
            let w = state.worker(name)?;
            let since = *input.idle_since.get(name.as_str())?;
            (w.state == WorkerState::Ready && w.maintenance == Maintenance::InService && w.tasks.is_empty())
                .then_some((since, name.as_str()))
        })
        .collect();
    idle.sort();
    let above_max = active.saturating_sub(policy.max);
    let (count, due): (u32, Vec<(Millis, &str)>) = if above_max > 0 {
        (above_max, idle)
    } else {
        let due = idle.into_iter().filter(|(since, _)| now.saturating_sub(*since) >= policy.idle_ms).collect();
        (active.saturating_sub(policy.min), due)
    };
    let removable: Vec<(Millis, &str)> = due.into_iter().filter(|(_, n)| !holds_last_copy(state, n)).collect();
    let chosen: Vec<(Millis, &str)> = match &policy.provider {
        // A StatefulSet shrinks from its highest ordinals: only a run of removable workers at
        // the top may go.
        ProviderSpec::Kubernetes { statefulset, .. } => {
            let mut active: Vec<(u32, &str)> = pool
                .launches
                .iter()
                .filter(|(_, l)| l.stage != LaunchStage::Retiring)
                .filter_map(|(n, _)| Some((statefulset_ordinal(statefulset, n)?, n.as_str())))
                .collect();
            active.sort_by(|a, b| b.cmp(a));
            active
                .iter()
                .map_while(|(_, n)| removable.iter().find(|(_, m)| m == n).copied())
                .take(count as usize)
                .collect()
        }
        _ => removable.into_iter().take(count as usize).collect(),
    };
    if chosen.is_empty() {
        return out;
    }
    let reason = if above_max > 0 {
        ScaleDownReason::AboveMaximum { have: active, max: policy.max }
    } else {
        let oldest = chosen.iter().map(|(since, _)| *since).min().unwrap_or(now);
        ScaleDownReason::Idle { idle_ms: now.saturating_sub(oldest) }
    };
    out.push(Decision::Down { workers: chosen.into_iter().map(|(_, n)| n.to_string()).collect(), reason });
    out
}

/// A StatefulSet pod's ordinal, from its name (`flotilla-worker-3` → 3).
pub fn statefulset_ordinal(statefulset: &str, pod: &str) -> Option<u32> {
    pod.strip_prefix(statefulset)?.strip_prefix('-')?.parse().ok()
}

/// The replica count that keeps every worker the pool has (and has not chosen to let go):
/// one past the highest ordinal among its launches that are not retiring.
pub fn statefulset_replicas(pool: &Pool) -> Option<u32> {
    let ProviderSpec::Kubernetes { statefulset, .. } = &pool.policy.provider else { return None };
    let highest = pool
        .launches
        .iter()
        .filter(|(_, l)| l.stage != LaunchStage::Retiring)
        .filter_map(|(n, _)| statefulset_ordinal(statefulset, n))
        .max();
    Some(highest.map_or(0, |h| h + 1))
}

/// A worker's name in a pool: `POOL-N`.
pub fn worker_name(pool: &str, serial: u64) -> String {
    format!("{pool}-{serial}")
}
