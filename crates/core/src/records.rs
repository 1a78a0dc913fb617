//! Finished tasks' records: a task's final state, attempts and recorded result (stdout and
//! stderr up to 64 KiB each). They are most of what a cluster accumulates, and nothing schedules
//! by them, so [`crate::ClusterState`] does not keep them: applying an entry hands them out as
//! [`RecordOp`]s, and the shell stores them on disk as part of applying that same entry (the
//! masters' `state.redb`; the simulation and tests keep a [`MemRecords`]). Reads go through
//! [`RecordReader`], consistent with the in-memory state as long as the reader was opened while
//! the state was read.
//!
//! Every replica applies the same ops in the same order, so every master stores the same
//! records. Applying an op twice changes nothing (a replayed log converges on the same records).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{JobId, TaskId, TaskIndex, TaskSlot};
use crate::state::{Job, JobState, Task};

/// A change to the stored records, made by applying one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOp {
    /// A task reached its final state at log entry `entry`: this is its record for good.
    /// (Stores may group records by entry: replaying the log then rewrites the same groups.)
    Put { entry: u64, task: TaskId, record: Box<Task> },
    /// A job was removed: every record of it goes.
    RemoveJob(JobId),
}

/// Reading the stored records failed (the disk, not the request).
#[derive(Debug, thiserror::Error)]
#[error("cannot read task records: {0}")]
pub struct RecordError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Read access to the stored records.
pub trait RecordReader {
    /// One task's record, if it finished (and its job was not removed).
    fn record(&self, task: TaskId) -> Result<Option<Task>, RecordError>;
    /// Records of `job`'s array tasks with index `from` or above, lowest first, at most `limit`.
    fn array_records(&self, job: JobId, from: TaskIndex, limit: usize) -> Result<Vec<(TaskIndex, Task)>, RecordError>;
}

/// Records kept in memory: the simulation's and the tests' store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemRecords {
    records: BTreeMap<TaskId, Task>,
}

impl MemRecords {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, ops: impl IntoIterator<Item = RecordOp>) {
        for op in ops {
            match op {
                RecordOp::Put { task, record, .. } => {
                    self.records.insert(task, *record);
                }
                RecordOp::RemoveJob(job) => {
                    let keys: Vec<TaskId> =
                        self.records.range(TaskId::array(job, 0)..=TaskId::reduce(job)).map(|(k, _)| *k).collect();
                    for k in keys {
                        self.records.remove(&k);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The jobs that have records, each once, in order.
    pub fn job_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        let mut last = None;
        self.records.keys().filter_map(move |k| {
            let new = last != Some(k.job);
            last = Some(k.job);
            new.then_some(k.job)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl RecordReader for MemRecords {
    fn record(&self, task: TaskId) -> Result<Option<Task>, RecordError> {
        Ok(self.records.get(&task).cloned())
    }

    fn array_records(&self, job: JobId, from: TaskIndex, limit: usize) -> Result<Vec<(TaskIndex, Task)>, RecordError> {
        Ok(self
            .records
            .range(TaskId::array(job, from)..TaskId::reduce(job))
            .take(limit)
            .filter_map(|(k, t)| match k.slot {
                TaskSlot::Array(i) => Some((i, t.clone())),
                TaskSlot::Reduce => None,
            })
            .collect())
    }
}

/// Records are read in pages of this many when a whole job's are needed.
const PAGE: usize = 4096;

/// Every array task's stdout in index order: the reduce step's stdin, and the result of a job
/// without a reduce step.
pub fn concatenated_stdout(job: &Job, records: &dyn RecordReader) -> Result<String, RecordError> {
    Ok(stdout_of_array(job, records)?.0)
}

/// Every array task's stdout in index order, and whether any of it was cut at the limit.
fn stdout_of_array(job: &Job, records: &dyn RecordReader) -> Result<(String, bool), RecordError> {
    let mut text = String::new();
    let mut truncated = false;
    let mut from = 0;
    loop {
        let page = records.array_records(job.id, from, PAGE)?;
        for (_, task) in &page {
            if let Some(r) = &task.result {
                text.push_str(&r.outcome.stdout.text);
                truncated |= r.outcome.stdout.truncated;
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => from = last + 1,
            _ => return Ok((text, truncated)),
        }
    }
}

/// The job's result once it succeeded: the reduce step's stdout, or without a reduce the tasks'
/// stdout concatenated in index order. Also whether any of it was cut at the output limit.
pub fn job_result(job: &Job, records: &dyn RecordReader) -> Result<Option<(String, bool)>, RecordError> {
    if job.state != JobState::Succeeded {
        return Ok(None);
    }
    if job.spec.reduce.is_some() {
        let reduce = records.record(TaskId::reduce(job.id))?;
        return Ok(reduce.and_then(|t| t.result).map(|r| (r.outcome.stdout.text, r.outcome.stdout.truncated)));
    }
    stdout_of_array(job, records).map(Some)
}
