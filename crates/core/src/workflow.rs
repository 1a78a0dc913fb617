//! Workflows and data: jobs that wait for other jobs (`--after`, `--after-finished`), and the
//! files tasks leave in `$FLOTILLA_OUTPUT_DIR`, stored content-addressed on workers and
//! copied to others.
//!
//! Only metadata is replicated: which jobs a job waits for, and for each task that left
//! files, their names, sizes and SHA-256 digests and the workers holding a copy. The bytes go
//! from worker to worker, never through the Raft log.
//!
//! A job that waits costs one entry here until its upstream jobs end, whatever its size: its
//! tasks exist only as the index range they always are.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{JobId, JobState, TaskLimits};

/// Copies of a task's outputs kept on workers other than the one that ran it, by default.
pub const DEFAULT_REPLICAS: u32 = 2;
/// The most copies a job may ask for.
pub const MAX_REPLICAS: u32 = 16;
/// Jobs one job may wait for.
pub const MAX_UPSTREAM: usize = 256;
/// Bytes of outputs one task may leave, by default (`--output-quota`).
pub const DEFAULT_OUTPUT_QUOTA: u64 = 1 << 30;
/// Files one task may leave.
pub const MAX_OUTPUT_FILES: usize = 10_000;
/// Bytes of one output file's path.
pub const MAX_OUTPUT_PATH: usize = 1024;

/// What a job asks for beyond its spec (release 0.2.0 on): limits, the jobs it waits for, how
/// its outputs are kept. Kept in the replicated state only for jobs that ask for any of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    pub limits: TaskLimits,
    /// Jobs that must succeed first; if one fails or is cancelled, this job is cancelled.
    pub after: Vec<JobId>,
    /// Jobs that must end first, however they end.
    pub after_finished: Vec<JobId>,
    /// Copies of each task's outputs on other workers; `None`: [`DEFAULT_REPLICAS`].
    pub replicas: Option<u32>,
    /// Bytes of outputs each task may leave; `None`: [`DEFAULT_OUTPUT_QUOTA`].
    pub output_quota: Option<u64>,
}

impl JobOptions {
    pub fn is_empty(&self) -> bool {
        *self == JobOptions::default()
    }

    /// Whether anything here needs a release that knows workflows (beyond limits).
    pub fn uses_workflows(&self) -> bool {
        !self.after.is_empty()
            || !self.after_finished.is_empty()
            || self.replicas.is_some()
            || self.output_quota.is_some()
    }

    /// Every job this one waits for, each once.
    pub fn upstream(&self) -> Vec<JobId> {
        let mut all: Vec<JobId> = self.after.iter().chain(&self.after_finished).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(DEFAULT_REPLICAS)
    }

    pub fn output_quota(&self) -> u64 {
        self.output_quota.unwrap_or(DEFAULT_OUTPUT_QUOTA)
    }

    /// What can be checked without the state.
    pub fn validate(&self) -> Result<(), DependencyError> {
        self.limits.validate().map_err(DependencyError::Limits)?;
        if self.upstream().len() > MAX_UPSTREAM {
            return Err(DependencyError::TooMany { max: MAX_UPSTREAM });
        }
        if let Some(r) = self.replicas.filter(|r| *r > MAX_REPLICAS) {
            return Err(DependencyError::TooManyReplicas { asked: r, max: MAX_REPLICAS });
        }
        if self.output_quota == Some(0) {
            return Err(DependencyError::ZeroQuota);
        }
        Ok(())
    }
}

/// Why a job's options were refused at submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DependencyError {
    #[error("{0}")]
    Limits(crate::model::LimitsError),
    /// The id was never given to a job (jobs can only wait for jobs submitted before them, so
    /// no cycle can form between jobs).
    #[error("no job {0} to wait for")]
    UnknownJob(JobId),
    /// The job existed but is gone (retention or purge): how it ended is no longer known.
    #[error("job {0} is no longer kept (removed by retention or purge): its outcome is unknown")]
    Removed(JobId),
    #[error("a job may wait for at most {max} jobs")]
    TooMany { max: usize },
    #[error("{asked} replicas asked for; at most {max}")]
    TooManyReplicas { asked: u32, max: u32 },
    #[error("the output quota must be at least 1 byte")]
    ZeroQuota,
}

/// Why a job was cancelled without anyone asking: a job it waited for did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmet {
    pub upstream: JobId,
    /// `Failed` or `Cancelled`.
    pub state: JobState,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} it waited for {}", self.upstream, self.state.name())
    }
}

/// A SHA-256 digest: the name of an output's bytes wherever they are stored.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 64 hex digits; `None` otherwise.
    pub fn parse(hex: &str) -> Option<Digest> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

/// One file a task left in its output directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the output directory, `/`-separated, without `.` or `..` parts.
    pub path: String,
    pub size: u64,
    pub sha256: Digest,
}

/// What a task left, as its worker reports it with the task's result: the files, and the
/// workers that hold a copy of every one of them (its own first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    pub files: Vec<OutputFile>,
    pub holders: Vec<String>,
    /// Why the outputs could not be kept: the attempt failed, whatever its exit status.
    pub error: Option<OutputError>,
    /// The attempt's whole stdout or stderr, when longer than the result keeps, stored on its
    /// worker (whatever the attempt's outcome).
    pub logs: Vec<LogFile>,
}

/// Which of a process's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One stream of an attempt kept whole, as a blob in its worker's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFile {
    pub stream: LogStream,
    pub size: u64,
    pub sha256: Digest,
}

/// The whole logs of a task's latest attempt that had long ones, and the worker holding them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLogs {
    pub files: Vec<LogFile>,
    pub holder: String,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.holders.is_empty() && self.error.is_none() && self.logs.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Whether `path` may name an output: relative, `/`-separated, no empty, `.` or `..` part,
/// no control character, at most [`MAX_OUTPUT_PATH`] bytes. Checked where outputs are
/// collected and again wherever a path from the state becomes a file (inputs, `job fetch`).
pub fn valid_output_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_OUTPUT_PATH
        && !path.chars().any(char::is_control)
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Why a task's outputs were refused or could not be stored; the attempt fails with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OutputError {
    #[error("its outputs exceed the job's quota of {quota} bytes")]
    OverQuota { quota: u64 },
    #[error("it left more than {max} output files")]
    TooManyFiles { max: usize },
    /// A name that is not UTF-8, too long, or holds a control character.
    #[error("output {path:?} has a name that cannot be kept")]
    BadName { path: String },
    /// Symbolic links are not followed: one could lead anywhere on the worker.
    #[error("output {path:?} is a symbolic link (outputs must be regular files)")]
    Symlink { path: String },
    #[error("output {path:?} is not a regular file")]
    NotAFile { path: String },
    #[error("the worker's disk is full: its outputs could not be stored")]
    DiskFull,
    #[error("its outputs could not be stored on the worker: {kind}")]
    Store { kind: String },
    /// An input could not be read from any worker holding it (the task did not run).
    #[error("input {path:?} of task {task} is not available from any worker holding it")]
    InputUnavailable { task: crate::model::TaskId, path: String },
}

/// The outputs of one finished task as the cluster keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutputs {
    pub files: Vec<OutputFile>,
    /// Workers that hold every file, in the order they got them. A worker lost, or one whose
    /// copy was found damaged, is taken off; an empty list means every copy is gone.
    pub holders: Vec<String>,
}

impl TaskOutputs {
    pub fn holds(&self, digest: &Digest) -> bool {
        self.files.iter().any(|f| f.sha256 == *digest)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Why a worker's copy of a task's outputs stopped counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyLoss {
    /// The worker was declared lost.
    WorkerLost,
    /// A read found the bytes no longer match their digest (the worker discarded them), or
    /// not there at all.
    Corrupt,
}

impl CopyLoss {
    pub fn name(self) -> &'static str {
        match self {
            CopyLoss::WorkerLost => "worker_lost",
            CopyLoss::Corrupt => "corrupt",
        }
    }
}

impl fmt::Display for CopyLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyLoss::WorkerLost => "the worker was lost",
            CopyLoss::Corrupt => "the copy was found damaged or missing",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_hex() {
        let d = Digest([0xab; 32]);
        assert_eq!(Digest::parse(&d.to_hex()), Some(d));
        assert_eq!(Digest::parse("xyz"), None);
        assert_eq!(Digest::parse(&"g".repeat(64)), None);
    }

    #[test]
    fn output_paths_stay_inside_their_directory() {
        for good in ["a", "a/b.txt", "deep/er/x", ".hidden", "a..b"] {
            assert!(valid_output_path(good), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\nb", "x\u{7}"] {
            assert!(!valid_output_path(bad), "{bad:?}");
        }
        assert!(!valid_output_path(&"a".repeat(MAX_OUTPUT_PATH + 1)));
    }

    #[test]
    fn options_check_what_needs_no_state() {
        assert!(JobOptions::default().validate().is_ok());
        let many = JobOptions { after: (1..=300).collect(), ..Default::default() };
        assert_eq!(many.validate(), Err(DependencyError::TooMany { max: MAX_UPSTREAM }));
        let replicas = JobOptions { replicas: Some(99), ..Default::default() };
        assert!(matches!(replicas.validate(), Err(DependencyError::TooManyReplicas { .. })));
        let both = JobOptions { after: vec![3, 1], after_finished: vec![1, 2], ..Default::default() };
        assert_eq!(both.upstream(), vec![1, 2, 3]);
        assert!(both.uses_workflows());
        assert!(!JobOptions { limits: TaskLimits { processes: Some(3), ..Default::default() }, ..Default::default() }
            .uses_workflows());
    }
}
