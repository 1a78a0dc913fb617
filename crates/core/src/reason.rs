//! Why things happened: the typed reasons kept in responses, in the replicated state and in
//! the journal. Only data is stored; the human text is each reason's `Display`, rendered at
//! the edge (API, CLI, logs), so a later version may word it differently while replicas of two
//! versions apply the same log.
//!
//! These types travel in the Raft log and in snapshots (postcard, by variant order): new
//! variants are only ever appended.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::journal::RetentionError;
use crate::model::{Fence, JobId, SpecError, TaskId};
use crate::model::{JobState, TaskState};

/// Why a command was refused ([`crate::Response::Invalid`]); nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("no job {0}")]
    NoJob(JobId),
    /// Cancelling a job that already finished (cancelling a cancelled job is not refused).
    #[error("job {job} already {}", state.name())]
    JobFinished { job: JobId, state: JobState },
    #[error("no ready worker named {0}")]
    NoReadyWorker(String),
    #[error("a worker needs at least 1 cpu")]
    WorkerWithoutCpus,
    #[error("{0}")]
    BadSpec(SpecError),
    #[error("{0}")]
    BadRetention(RetentionError),
    #[error("invalid resource name '{0}' offered (lower-case letters, digits, '_' and '-'; not cpus or memory)")]
    BadResourceName(String),
    #[error("{0}")]
    BadJobRetention(crate::state::JobRetentionError),
    #[error("{0}")]
    Access(crate::access::AccessRefusal),
    #[error("{0}")]
    Dependency(crate::workflow::DependencyError),
    #[error("{0}")]
    Schedule(crate::schedule::ScheduleRefusal),
    #[error("{0}")]
    Autoscale(crate::autoscale::AutoscaleRefusal),
}

/// Why an attempt's message is fenced off ([`crate::Response::Stale`], and the journal's
/// `result_rejected`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StaleReason {
    #[error("no job {0}")]
    NoJob(JobId),
    #[error("no task {0}")]
    NoTask(TaskId),
    #[error("no attempt of task {0} was ever assigned")]
    NeverAssigned(TaskId),
    /// Another attempt holds the task now.
    #[error("{fence} is stale: the task now runs {current} on {worker}")]
    Superseded { fence: Fence, current: Fence, worker: String },
    /// No attempt is in flight: the task is waiting or finished (`state` is one of
    /// `Waiting`, `Succeeded`, `Failed`, `Cancelled`).
    #[error("{fence} is stale: the task is {}", state.name())]
    NotInFlight { fence: Fence, state: TaskState },
}

impl StaleReason {
    /// Why `fence` does not name the attempt `state` is in.
    pub fn for_state(state: &TaskState, fence: Fence) -> Self {
        match state.in_flight() {
            Some((worker, current)) => StaleReason::Superseded { fence, current, worker: worker.to_string() },
            None => StaleReason::NotInFlight { fence, state: state.clone() },
        }
    }
}

/// Why a worker was declared lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LostReason {
    /// The leader heard nothing from it for this long.
    Silent { silent_ms: u64 },
    /// A new process registered under its name.
    Restarted,
}

impl LostReason {
    /// The leader heard nothing from the worker for `silence`.
    pub fn silent(silence: Duration) -> Self {
        LostReason::Silent { silent_ms: u64::try_from(silence.as_millis()).unwrap_or(u64::MAX) }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Silent { silent_ms } => write!(f, "no heartbeat for {:.1}s", *silent_ms as f64 / 1000.0),
            LostReason::Restarted => f.write_str("worker restarted"),
        }
    }
}

/// How a process failed, from its [`crate::Outcome`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProcessFailure {
    /// The worker could not start it; the text is the worker's error.
    #[error("could not start: {0}")]
    CouldNotStart(String),
    #[error("timed out")]
    TimedOut,
    #[error("exit code {0}")]
    Exit(i32),
    #[error("killed by signal {0}")]
    Signal(i32),
    #[error("ended without status")]
    NoStatus,
    /// It exited 0 but what it left in its output directory could not be kept.
    #[error("{0}")]
    Outputs(crate::workflow::OutputError),
}

/// Why a task failed for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TaskFailure {
    /// Its last run failed and no retry was left.
    #[error("{0}")]
    Process(ProcessFailure),
    /// Its worker was lost while holding it more than `MAX_WORKER_LOSSES` times.
    #[error("its worker was lost {times} times (last: {last_worker})")]
    WorkerLost { times: u32, last_worker: String },
}

/// Why a task went back to the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RescheduleReason {
    /// Its run failed and the job allows another.
    #[error("{failure}; retry {retry} of {retries}")]
    Retry { failure: ProcessFailure, retry: u32, retries: u32 },
    /// The worker holding it was lost.
    #[error("worker {0} lost")]
    WorkerLost(String),
    /// Its worker was draining and the drain's deadline passed.
    #[error("worker {0} drained past its deadline")]
    DrainDeadline(String),
    /// An input was not available because every copy of it was lost, and the task that made
    /// it runs again (by job `rerun`): this task waits for that instead of failing (0.2.0).
    #[error("its inputs from job {job} are being made again by job {rerun}")]
    InputRerun { job: crate::model::JobId, rerun: crate::model::JobId },
}

/// Why a job failed: the first of its tasks that failed for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("task {task} failed: {reason}")]
pub struct JobFailure {
    pub task: TaskId,
    pub reason: TaskFailure,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_ones_users_saw_before_reasons_were_typed() {
        let fence = Fence { term: 2, attempt: 3 };
        let task = TaskId::array(7, 4);
        let cases: Vec<(String, &str)> = vec![
            (Refusal::NoJob(9).to_string(), "no job 9"),
            (Refusal::JobFinished { job: 9, state: JobState::Succeeded }.to_string(), "job 9 already succeeded"),
            (Refusal::NoReadyWorker("w1".into()).to_string(), "no ready worker named w1"),
            (Refusal::WorkerWithoutCpus.to_string(), "a worker needs at least 1 cpu"),
            (Refusal::BadSpec(SpecError::ZeroCpus).to_string(), "cpus must be at least 1"),
            (
                Refusal::BadRetention(RetentionError::AgeTooShort).to_string(),
                "the journal's age limit must be at least 1 minute",
            ),
            (StaleReason::NoJob(7).to_string(), "no job 7"),
            (StaleReason::NoTask(task).to_string(), "no task 7[4]"),
            (
                StaleReason::NeverAssigned(TaskId::reduce(7)).to_string(),
                "no attempt of task 7[reduce] was ever assigned",
            ),
            (
                StaleReason::for_state(
                    &TaskState::Running { worker: "b".into(), fence: Fence { term: 3, attempt: 4 }, since: 0 },
                    fence,
                )
                .to_string(),
                "attempt 3 (term 2) is stale: the task now runs attempt 4 (term 3) on b",
            ),
            (
                StaleReason::for_state(&TaskState::Succeeded, fence).to_string(),
                "attempt 3 (term 2) is stale: the task is succeeded",
            ),
            (LostReason::silent(Duration::from_millis(3_040)).to_string(), "no heartbeat for 3.0s"),
            (LostReason::Restarted.to_string(), "worker restarted"),
            (ProcessFailure::CouldNotStart("No such file".into()).to_string(), "could not start: No such file"),
            (ProcessFailure::TimedOut.to_string(), "timed out"),
            (ProcessFailure::Exit(2).to_string(), "exit code 2"),
            (ProcessFailure::Signal(9).to_string(), "killed by signal 9"),
            (ProcessFailure::NoStatus.to_string(), "ended without status"),
            (
                RescheduleReason::Retry { failure: ProcessFailure::Exit(1), retry: 1, retries: 2 }.to_string(),
                "exit code 1; retry 1 of 2",
            ),
            (RescheduleReason::WorkerLost("a".into()).to_string(), "worker a lost"),
            (
                JobFailure { task, reason: TaskFailure::WorkerLost { times: 4, last_worker: "a".into() } }.to_string(),
                "task 7[4] failed: its worker was lost 4 times (last: a)",
            ),
            (
                JobFailure { task, reason: TaskFailure::Process(ProcessFailure::TimedOut) }.to_string(),
                "task 7[4] failed: timed out",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
