//! The replicated event journal: what happened in the cluster, with the leader's timestamps.
//! It lives in the replicated state, so the history survives the failures it describes.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{Fence, JobId, Millis, NodeId, TaskId};
use crate::state::JobState;

/// Events kept in the replicated state; older ones are dropped first.
pub const JOURNAL_RETENTION: usize = 20_000;

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
    WorkerJoined {
        worker: String,
        cpus: u32,
    },
    WorkerLost {
        worker: String,
        reason: String,
        requeued: u64,
    },
    JobSubmitted {
        job: JobId,
        tasks: u64,
    },
    TaskRescheduled {
        task: TaskId,
        attempt: u32,
        reason: String,
    },
    TaskFailed {
        task: TaskId,
        attempt: u32,
        reason: String,
    },
    ResultRejected {
        task: TaskId,
        fence: Fence,
        worker: String,
        reason: String,
    },
    JobFinished {
        job: JobId,
        state: JobState,
    },
}

impl EventKind {
    /// Stable machine-readable name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::LeaderElected { .. } => "leader_elected",
            EventKind::MasterUnreachable { .. } => "master_unreachable",
            EventKind::MasterReachable { .. } => "master_reachable",
            EventKind::WorkerJoined { .. } => "worker_joined",
            EventKind::WorkerLost { .. } => "worker_lost",
            EventKind::JobSubmitted { .. } => "job_submitted",
            EventKind::TaskRescheduled { .. } => "task_rescheduled",
            EventKind::TaskFailed { .. } => "task_failed",
            EventKind::ResultRejected { .. } => "result_rejected",
            EventKind::JobFinished { .. } => "job_finished",
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
        }
    }

    pub fn job(&self) -> Option<JobId> {
        match self {
            EventKind::JobSubmitted { job, .. } | EventKind::JobFinished { job, .. } => Some(*job),
            EventKind::TaskRescheduled { task, .. }
            | EventKind::TaskFailed { task, .. }
            | EventKind::ResultRejected { task, .. } => Some(task.job),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    next_seq: u64,
    events: VecDeque<Event>,
    /// Events ever recorded, by kind: totals that outlive the retention window (metrics).
    #[serde(default)]
    totals: BTreeMap<String, u64>,
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
        while self.events.len() > JOURNAL_RETENTION {
            self.events.pop_front();
        }
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
