//! How long finished jobs stay: a cluster-wide setting in the log, applied as part of every
//! committed entry (the entry's leader clock decides what has expired), so every replica drops
//! the same jobs at the same index. `PurgeJobs` removes named jobs at once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ClusterState;
use crate::journal::EventKind;
use crate::model::{JobId, Millis};

/// Removed jobs whose removal time and reason are remembered, for `job show`; older removals
/// are still recognised (their id is below the next one) but without the details.
pub const REMOVALS_KEPT: usize = 100_000;

/// Finished jobs kept: none older than `max_age_ms` (counted from when they finished), and at
/// most `max_finished` (the oldest go first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRetention {
    /// `None`: no age limit.
    pub max_age_ms: Option<u64>,
    pub max_finished: u64,
}

impl JobRetention {
    pub const DEFAULT_MAX_AGE_MS: u64 = 24 * 3_600_000;
    pub const DEFAULT_MAX_FINISHED: u64 = 10_000;
    /// Shorter would remove a job before a person or script has read its results.
    pub const MIN_AGE_MS: u64 = 60_000;
    pub const MIN_FINISHED: u64 = 10;
    pub const MAX_FINISHED: u64 = 10_000_000;

    pub fn validate(&self) -> Result<(), JobRetentionError> {
        if self.max_age_ms.is_some_and(|a| a < Self::MIN_AGE_MS) {
            return Err(JobRetentionError::AgeTooShort);
        }
        if !(Self::MIN_FINISHED..=Self::MAX_FINISHED).contains(&self.max_finished) {
            return Err(JobRetentionError::CountOutOfBounds(self.max_finished));
        }
        Ok(())
    }
}

impl Default for JobRetention {
    fn default() -> Self {
        JobRetention { max_age_ms: Some(Self::DEFAULT_MAX_AGE_MS), max_finished: Self::DEFAULT_MAX_FINISHED }
    }
}

/// A job retention setting out of bounds. Travels in the Raft log inside a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JobRetentionError {
    #[error("finished jobs must be kept at least 1 minute")]
    AgeTooShort,
    #[error(
        "between {min} and {max} finished jobs are kept, not {0}",
        min = JobRetention::MIN_FINISHED,
        max = JobRetention::MAX_FINISHED
    )]
    CountOutOfBounds(u64),
}

/// Why a job was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemovalReason {
    /// Finished longer ago than the retention's age.
    Expired,
    /// More finished jobs than the retention's count; the oldest went.
    Excess,
    /// Removed on request (`job purge`).
    Purged,
}

impl RemovalReason {
    pub fn name(self) -> &'static str {
        match self {
            RemovalReason::Expired => "expired",
            RemovalReason::Excess => "excess",
            RemovalReason::Purged => "purged",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub at_ms: Millis,
    pub reason: RemovalReason,
}

/// What a purge did with each id it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurgeOutcome {
    pub purged: Vec<JobId>,
    /// Removed before (a retried purge, or expired meanwhile): nothing to do.
    pub already_removed: Vec<JobId>,
    /// Still running or waiting: cancel it first.
    pub unfinished: Vec<JobId>,
    /// No job ever had this id.
    pub unknown: Vec<JobId>,
}

/// Where a job id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPresence {
    Present,
    /// Removed; the details while still remembered.
    Removed(Option<Removal>),
    Unknown,
}

/// The removal bookkeeping of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub(super) setting: JobRetention,
    /// Finished jobs by when they finished: the next to expire first.
    pub(super) finished: BTreeSet<(Millis, JobId)>,
    pub(super) removals: BTreeMap<JobId, Removal>,
}

impl ClusterState {
    pub fn job_retention(&self) -> JobRetention {
        self.retained.setting
    }

    /// Finished jobs kept now.
    pub fn finished_jobs(&self) -> usize {
        self.retained.finished.len()
    }

    pub fn job_presence(&self, id: JobId) -> JobPresence {
        if self.jobs.contains_key(&id) {
            JobPresence::Present
        } else if id >= 1 && id < self.next_job_id {
            JobPresence::Removed(self.retained.removals.get(&id).copied())
        } else {
            JobPresence::Unknown
        }
    }

    pub(super) fn set_job_retention(&mut self, setting: JobRetention, now: Millis) {
        self.retained.setting = setting;
        self.expire_jobs(now);
    }

    /// Notes that a job finished, so that retention removes it in its turn.
    pub(super) fn note_finished(&mut self, id: JobId, at: Millis) {
        self.retained.finished.insert((at, id));
    }

    /// Removes finished jobs beyond the retention, oldest first. Runs after every entry.
    pub(super) fn expire_jobs(&mut self, now: Millis) {
        let setting = self.retained.setting;
        while let Some(&(finished_at, id)) = self.retained.finished.first() {
            let reason = if self.retained.finished.len() as u64 > setting.max_finished {
                RemovalReason::Excess
            } else if setting.max_age_ms.is_some_and(|age| now.saturating_sub(finished_at) >= age) {
                RemovalReason::Expired
            } else {
                break;
            };
            self.remove_job(id, now, reason);
        }
    }

    pub(super) fn purge_jobs(&mut self, ids: &[JobId], now: Millis) -> PurgeOutcome {
        let mut out = PurgeOutcome::default();
        for &id in ids {
            match (self.job_presence(id), self.jobs.get(&id)) {
                (JobPresence::Present, Some(job)) if job.state.is_terminal() => {
                    self.remove_job(id, now, RemovalReason::Purged);
                    out.purged.push(id);
                }
                (JobPresence::Present, _) => out.unfinished.push(id),
                (JobPresence::Removed(_), _) => out.already_removed.push(id),
                (JobPresence::Unknown, _) => out.unknown.push(id),
            }
        }
        out
    }

    /// Drops a finished job and everything it holds; journals its summary.
    fn remove_job(&mut self, id: JobId, now: Millis, reason: RemovalReason) {
        let Some(job) = self.jobs.remove(&id) else { return };
        self.forget_job_extras(id);
        debug_assert!(job.state.is_terminal(), "removing unfinished job {id}");
        self.record_ops.0.push(crate::records::RecordOp::RemoveJob(id));
        if let Some(at) = job.finished_at {
            self.retained.finished.remove(&(at, id));
        }
        self.retained.removals.insert(id, Removal { at_ms: now, reason });
        while self.retained.removals.len() > REMOVALS_KEPT {
            self.retained.removals.pop_first();
        }
        let c = &job.counts;
        self.journal.record(
            now,
            EventKind::JobRemoved {
                job: id,
                reason,
                state: job.state,
                succeeded: c.succeeded,
                failed: c.failed,
                cancelled: c.cancelled,
            },
        );
    }
}
