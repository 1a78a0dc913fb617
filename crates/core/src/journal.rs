//! The replicated event journal: what happened in the cluster, with the leader's timestamps.
//! It lives in the replicated state, so the history survives the failures it describes.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{Fence, JobId, JobState, Millis, NodeId, TaskId};
use crate::reason::{LostReason, RescheduleReason, StaleReason, TaskFailure};

/// How much history the replicated state keeps. A cluster-wide setting, itself changed by a
/// command in the log, so every master prunes the same events at the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Retention {
    /// Events kept at most; the oldest go first.
    pub max_events: u64,
    /// Events older than this, counted back from the newest event's time, are dropped;
    /// `None`: no age limit.
    pub max_age_ms: Option<u64>,
}

impl Retention {
    /// The default cap: about 20,000 events (a few MB in every master's memory and snapshot).
    pub const DEFAULT_MAX_EVENTS: u64 = 20_000;
    /// Bounds for `max_events`: the journal lives in memory on every master and in every snapshot.
    pub const MIN_EVENTS: u64 = 100;
    pub const MAX_EVENTS: u64 = 1_000_000;
    /// The shortest age limit (shorter would lose an incident before anyone reads it).
    pub const MIN_AGE_MS: u64 = 60_000;

    pub fn validate(&self) -> Result<(), RetentionError> {
        if !(Self::MIN_EVENTS..=Self::MAX_EVENTS).contains(&self.max_events) {
            return Err(RetentionError::EventsOutOfBounds(self.max_events));
        }
        if self.max_age_ms.is_some_and(|a| a < Self::MIN_AGE_MS) {
            return Err(RetentionError::AgeTooShort);
        }
        Ok(())
    }
}

/// A retention setting out of bounds. Travels in the Raft log inside a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RetentionError {
    #[error("the journal keeps between {min} and {max} events, not {0}", min = Retention::MIN_EVENTS, max = Retention::MAX_EVENTS)]
    EventsOutOfBounds(u64),
    #[error("the journal's age limit must be at least 1 minute")]
    AgeTooShort,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_events: Self::DEFAULT_MAX_EVENTS, max_age_ms: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: Millis,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    LeaderElected {
        node: NodeId,
        term: u64,
        /// Milliseconds since the previous term's last committed entry (None for the first).
        quiet_ms: Option<u64>,
    },
    MasterUnreachable {
        node: NodeId,
    },
    MasterReachable {
        node: NodeId,
    },
    MembershipChanged(crate::command::MemberChange),
    WorkerMaintenance {
        worker: String,
        change: crate::state::MaintenanceChange,
    },
    /// A draining worker holds nothing any more.
    WorkerDrained {
        worker: String,
    },
    WorkerJoined {
        worker: String,
        cpus: u32,
    },
    WorkerLost {
        worker: String,
        reason: LostReason,
        requeued: u64,
    },
    JobSubmitted {
        job: JobId,
        tasks: u64,
    },
    TaskRescheduled {
        task: TaskId,
        attempt: u32,
        reason: RescheduleReason,
    },
    TaskFailed {
        task: TaskId,
        attempt: u32,
        reason: TaskFailure,
    },
    ResultRejected {
        task: TaskId,
        fence: Fence,
        worker: String,
        reason: StaleReason,
    },
    JobFinished {
        job: JobId,
        state: JobState,
    },
    /// A finished job left the state (retention or purge); its summary stays here.
    JobRemoved {
        job: JobId,
        reason: crate::state::RemovalReason,
        state: JobState,
        succeeded: u64,
        failed: u64,
        cancelled: u64,
    },
    /// A request that asked to change something (0.2.0, `Feature::Audit`).
    Audit(crate::access::AuditRecord),
    /// A worker took copies of the outputs of `tasks` tasks of a job, to make up for copies
    /// lost or damaged (0.2.0, `Feature::Workflows`, like the three below).
    OutputsCopied {
        job: JobId,
        tasks: u64,
        worker: String,
    },
    /// A worker's copies of the outputs of `tasks` tasks of a job stopped counting.
    OutputCopiesGone {
        job: JobId,
        tasks: u64,
        worker: String,
        reason: crate::workflow::CopyLoss,
    },
    /// The last copy of the outputs of `tasks` tasks of a job is gone; job `rerun`, if
    /// any, runs those tasks again to make them anew.
    OutputsLost {
        job: JobId,
        tasks: u64,
        rerun: Option<JobId>,
    },
    /// A schedule's period started and its job was submitted.
    ScheduleLaunched {
        name: String,
        period: Millis,
        job: JobId,
    },
    /// A schedule's period started while the previous period's job still ran (`--overlap skip`).
    ScheduleSkipped {
        name: String,
        period: Millis,
        running: JobId,
    },
    /// Tasks of a job will not run: `needed`, a task of the same job they need (directly or
    /// through others), failed for good.
    TasksNotRun {
        job: JobId,
        tasks: u64,
        needed: TaskId,
    },
    /// An autoscaling pool asked its provider for these workers (0.2.0, `Feature::Autoscale`,
    /// like the three below).
    ScaledUp {
        pool: String,
        workers: Vec<String>,
        reason: crate::autoscale::ScaleUpReason,
    },
    /// An autoscaling pool drains these workers, to stop them.
    ScaledDown {
        pool: String,
        workers: Vec<String>,
        reason: crate::autoscale::ScaleDownReason,
    },
    /// A worker a pool asked for did not come; `failures` in a row now (`paused`: the pool
    /// stopped asking until resumed).
    LaunchFailed {
        pool: String,
        worker: String,
        failure: crate::autoscale::LaunchFailure,
        failures: u32,
        paused: bool,
    },
    /// A pool let go of a worker it started: stopped after its drain, lost, or never joined.
    LaunchEnded {
        pool: String,
        worker: String,
        why: crate::autoscale::LaunchEnd,
    },
}

impl EventKind {
    /// Stable machine-readable name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::LeaderElected { .. } => "leader_elected",
            EventKind::MasterUnreachable { .. } => "master_unreachable",
            EventKind::MasterReachable { .. } => "master_reachable",
            EventKind::MembershipChanged(_) => "membership_changed",
            EventKind::WorkerMaintenance { change, .. } => match change {
                crate::state::MaintenanceChange::Cordon => "worker_cordoned",
                crate::state::MaintenanceChange::Drain { .. } => "worker_draining",
                crate::state::MaintenanceChange::Uncordon => "worker_uncordoned",
            },
            EventKind::WorkerDrained { .. } => "worker_drained",
            EventKind::WorkerJoined { .. } => "worker_joined",
            EventKind::WorkerLost { .. } => "worker_lost",
            EventKind::JobSubmitted { .. } => "job_submitted",
            EventKind::TaskRescheduled { .. } => "task_rescheduled",
            EventKind::TaskFailed { .. } => "task_failed",
            EventKind::ResultRejected { .. } => "result_rejected",
            EventKind::JobFinished { .. } => "job_finished",
            EventKind::JobRemoved { .. } => "job_removed",
            EventKind::Audit(_) => "audit",
            EventKind::OutputsCopied { .. } => "outputs_copied",
            EventKind::OutputCopiesGone { .. } => "output_copies_gone",
            EventKind::OutputsLost { .. } => "outputs_lost",
            EventKind::ScheduleLaunched { .. } => "schedule_launched",
            EventKind::ScheduleSkipped { .. } => "schedule_skipped",
            EventKind::TasksNotRun { .. } => "tasks_not_run",
            EventKind::ScaledUp { .. } => "scaled_up",
            EventKind::ScaledDown { .. } => "scaled_down",
            EventKind::LaunchFailed { .. } => "launch_failed",
            EventKind::LaunchEnded { .. } => "launch_ended",
        }
    }

    /// One human sentence.
    pub fn message(&self) -> String {
        match self {
            EventKind::LeaderElected { node, term, quiet_ms } => match quiet_ms {
                Some(q) => format!(
                    "master {node} elected leader for term {term}, {:.2} s after the previous term's last commit",
                    *q as f64 / 1000.0
                ),
                None => format!("master {node} elected leader for term {term}"),
            },
            EventKind::MasterUnreachable { node } => format!("master {node} is unreachable"),
            EventKind::MasterReachable { node } => format!("master {node} is reachable again"),
            EventKind::WorkerMaintenance { worker, change } => match change {
                crate::state::MaintenanceChange::Cordon => format!("worker {worker} cordoned: it takes no new tasks"),
                crate::state::MaintenanceChange::Drain { deadline_ms, by_worker } => {
                    let who = if *by_worker { "is stopping and drains itself" } else { "is draining" };
                    match deadline_ms {
                        Some(d) => format!(
                            "worker {worker} {who}: no new tasks, queued ones move, running ones have {} s",
                            d / 1000
                        ),
                        None => format!("worker {worker} {who}: no new tasks, queued ones move, running ones finish"),
                    }
                }
                crate::state::MaintenanceChange::Uncordon => format!("worker {worker} uncordoned: it takes tasks again"),
            },
            EventKind::WorkerDrained { worker } => format!("worker {worker} is drained: it holds no tasks"),
            EventKind::MembershipChanged(change) => match change {
                crate::command::MemberChange::LearnerAdded { node, address } => {
                    format!("master {node} at {address} joined as a learner")
                }
                crate::command::MemberChange::Promoted { node } => {
                    format!("master {node} caught up and became a voter")
                }
                crate::command::MemberChange::Removed { node } => format!("master {node} was removed from the group"),
            },
            EventKind::WorkerJoined { worker, cpus } => {
                format!("worker {worker} joined with {cpus} cpus")
            }
            EventKind::WorkerLost { worker, reason, requeued } => {
                format!("worker {worker} lost ({reason}); {requeued} tasks re-queued")
            }
            EventKind::JobSubmitted { job, tasks } => {
                format!("job {job} submitted with {tasks} tasks")
            }
            EventKind::TaskRescheduled { task, attempt, reason } => {
                format!("task {task} rescheduled after attempt {attempt}: {reason}")
            }
            EventKind::TaskFailed { task, attempt, reason } => {
                format!("task {task} failed on attempt {attempt}: {reason}")
            }
            EventKind::ResultRejected { task, fence, worker, reason } => {
                format!("result of task {task} {fence} from worker {worker} rejected: {reason}")
            }
            EventKind::JobFinished { job, state } => {
                format!("job {job} finished: {}", state.name())
            }
            EventKind::JobRemoved { job, reason, state, succeeded, failed, cancelled } => format!(
                "job {job} removed ({}): it had {} with {succeeded} tasks succeeded, {failed} failed, {cancelled} cancelled",
                reason.name(),
                state.name()
            ),
            EventKind::Audit(a) => {
                let who = match a.role {
                    Some(role) => format!("token '{}' ({role})", a.who),
                    None => a.who.clone(),
                };
                format!("{who} from {}: {} {} answered {}", a.from, a.method.name(), a.path, a.status)
            }
            EventKind::OutputsCopied { job, tasks, worker } => {
                format!("worker {worker} took a copy of the outputs of {tasks} tasks of job {job} (repair)")
            }
            EventKind::OutputCopiesGone { job, tasks, worker, reason } => {
                format!("copies of the outputs of {tasks} tasks of job {job} on worker {worker} are gone: {reason}")
            }
            EventKind::OutputsLost { job, tasks, rerun } => match rerun {
                Some(rerun) => format!(
                    "every copy of the outputs of {tasks} tasks of job {job} is gone; job {rerun} runs them again"
                ),
                None => format!("every copy of the outputs of {tasks} tasks of job {job} is gone"),
            },
            EventKind::ScheduleLaunched { name, job, .. } => format!("schedule {name} submitted job {job}"),
            EventKind::TasksNotRun { job, tasks, needed } => {
                format!("{tasks} tasks of job {job} are cancelled: task {needed} they need failed")
            }
            EventKind::ScheduleSkipped { name, running, .. } => {
                format!("schedule {name} skipped a period: job {running} of the previous one still runs")
            }
            EventKind::ScaledUp { pool, workers, reason } => {
                format!("pool {pool} starts {} ({reason})", names(workers))
            }
            EventKind::ScaledDown { pool, workers, reason } => {
                format!("pool {pool} drains and stops {} ({reason})", names(workers))
            }
            EventKind::LaunchFailed { pool, worker, failure, failures, paused } => {
                let then = if *paused {
                    format!("{failures} failures in a row: the pool is paused until `autoscale resume {pool}`")
                } else {
                    format!("{failures} in a row; it backs off")
                };
                format!("pool {pool} could not start worker {worker}: {failure}; {then}")
            }
            EventKind::LaunchEnded { pool, worker, why } => match why {
                crate::autoscale::LaunchEnd::Retired => format!("pool {pool} stopped worker {worker} after its drain"),
                crate::autoscale::LaunchEnd::Lost => format!("pool {pool} let go of worker {worker}, which was lost"),
                crate::autoscale::LaunchEnd::NeverJoined => {
                    format!("pool {pool} cancelled worker {worker}, which never joined")
                }
                crate::autoscale::LaunchEnd::EndedBeforeJoining => {
                    format!("pool {pool} let go of worker {worker}, which ended before it joined")
                }
            },
        }
    }

    pub fn job(&self) -> Option<JobId> {
        match self {
            EventKind::JobSubmitted { job, .. }
            | EventKind::JobFinished { job, .. }
            | EventKind::JobRemoved { job, .. }
            | EventKind::OutputsCopied { job, .. }
            | EventKind::OutputCopiesGone { job, .. }
            | EventKind::OutputsLost { job, .. }
            | EventKind::ScheduleLaunched { job, .. }
            | EventKind::TasksNotRun { job, .. } => Some(*job),
            EventKind::TaskRescheduled { task, .. }
            | EventKind::TaskFailed { task, .. }
            | EventKind::ResultRejected { task, .. } => Some(task.job),
            _ => None,
        }
    }
}

/// `a`, `a and b`, `a, b and c`; long lists end with how many more.
fn names(workers: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<&str> = workers.iter().take(SHOWN).map(String::as_str).collect();
    let label = if workers.len() == 1 { "worker" } else { "workers" };
    match (shown.split_last(), workers.len().saturating_sub(SHOWN)) {
        (None, _) => "no workers".to_string(),
        (Some((only, [])), _) => format!("{label} {only}"),
        (Some((last, rest)), 0) => format!("{label} {} and {last}", rest.join(", ")),
        (Some(_), more) => format!("{label} {} and {more} more", shown.join(", ")),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    next_seq: u64,
    events: VecDeque<Event>,
    /// Events ever recorded, by kind: totals that outlive the retention window (metrics).
    #[serde(default)]
    totals: BTreeMap<String, u64>,
    #[serde(default)]
    retention: Retention,
}

impl Journal {
    pub fn record(&mut self, at_ms: Millis, kind: EventKind) {
        self.next_seq += 1;
        match self.totals.get_mut(kind.name()) {
            Some(n) => *n += 1,
            None => {
                self.totals.insert(kind.name().to_string(), 1);
            }
        }
        self.events.push_back(Event { seq: self.next_seq, at_ms, kind });
        self.prune(at_ms);
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Applies a new retention (already validated) at time `now_ms`.
    pub fn set_retention(&mut self, retention: Retention, now_ms: Millis) {
        self.retention = retention;
        self.prune(now_ms);
    }

    fn prune(&mut self, now_ms: Millis) {
        let max = usize::try_from(self.retention.max_events).unwrap_or(usize::MAX);
        while self.events.len() > max {
            self.events.pop_front();
        }
        if let Some(age) = self.retention.max_age_ms {
            let oldest_kept = now_ms.saturating_sub(age);
            while self.events.front().is_some_and(|e| e.at_ms < oldest_kept) {
                self.events.pop_front();
            }
        }
    }

    /// The newest `n` events, oldest first (without walking the older ones).
    pub fn newest(&self, n: usize) -> impl Iterator<Item = &Event> {
        self.events.range(self.events.len().saturating_sub(n)..)
    }

    /// The oldest event still kept.
    pub fn oldest(&self) -> Option<&Event> {
        self.events.front()
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn since(&self, after: u64, limit: usize) -> impl Iterator<Item = &Event> {
        let skip = self.events.partition_point(|e| e.seq <= after);
        self.events.range(skip..).take(limit)
    }

    /// Events ever recorded, by kind name.
    pub fn totals(&self) -> &BTreeMap<String, u64> {
        &self.totals
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(job: JobId) -> EventKind {
        EventKind::JobSubmitted { job, tasks: 1 }
    }

    #[test]
    fn keeps_at_most_max_events_newest_first_and_counts_everything() {
        let mut j = Journal::default();
        j.set_retention(Retention { max_events: 100, max_age_ms: None }, 0);
        for i in 0..250 {
            j.record(i, submitted(i));
        }
        assert_eq!(j.len(), 100);
        assert_eq!(j.oldest().map(|e| e.seq), Some(151), "the oldest go first");
        let newest: Vec<u64> = j.newest(3).map(|e| e.seq).collect();
        assert_eq!(newest, vec![248, 249, 250]);
        assert_eq!(j.newest(1000).count(), 100);
        assert_eq!(j.last_seq(), 250, "sequence numbers keep counting");
        assert_eq!(j.totals().get("job_submitted"), Some(&250), "totals outlive retention");
    }

    #[test]
    fn drops_events_older_than_the_age_limit() {
        let mut j = Journal::default();
        for i in 0..10 {
            j.record(i * 60_000, submitted(i)); // one a minute
        }
        assert_eq!(j.len(), 10, "no age limit by default");
        // 5 minutes, counted back from the time of the change.
        j.set_retention(Retention { max_events: 1000, max_age_ms: Some(300_000) }, 9 * 60_000);
        assert_eq!(j.oldest().map(|e| e.at_ms), Some(4 * 60_000));
        j.record(12 * 60_000, submitted(12));
        assert_eq!(j.oldest().map(|e| e.at_ms), Some(7 * 60_000));
    }

    #[test]
    fn refuses_settings_out_of_bounds() {
        assert!(Retention::default().validate().is_ok());
        assert!(Retention { max_events: 10, max_age_ms: None }.validate().is_err());
        assert!(Retention { max_events: 10_000_000, max_age_ms: None }.validate().is_err());
        assert!(Retention { max_events: 1000, max_age_ms: Some(1000) }.validate().is_err());
        assert!(Retention { max_events: 1000, max_age_ms: Some(3_600_000) }.validate().is_ok());
        let refused = Retention { max_events: 10, max_age_ms: None }.validate().unwrap_err();
        assert_eq!(refused.to_string(), "the journal keeps between 100 and 1000000 events, not 10");
    }
}
