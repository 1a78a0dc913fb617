//! The vocabulary shared by every role: jobs, tasks, attempts and their fencing tokens, workers.
//!
//! These types travel in the Raft log, in snapshots and on the wire, so they are encoded with a
//! compact non-self-describing format: no `#[serde(tag)]`, `flatten` or `skip_serializing_if`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::index_set::{IndexSet, IndexSetError};
use crate::reason::ProcessFailure;

pub type JobId = u64;
pub type TaskIndex = u64;
/// Wall-clock milliseconds since the Unix epoch, stamped by the leader into each proposal so that
/// every replica applies the same time.
pub type Millis = u64;
/// A master's Raft node id.
pub type NodeId = u64;

/// Each task's stdout and stderr are kept up to this many bytes in the replicated state.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// A task whose worker is lost this many times fails instead of being re-queued again, so a task
/// that crashes its worker cannot loop forever.
pub const MAX_WORKER_LOSSES: u32 = 3;
pub const MAX_COMMAND_ARGS: usize = 4096;
pub const MAX_NAME_LEN: usize = 256;

/// Which task of a job: one element of the array, or the job's reduce step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskSlot {
    Array(TaskIndex),
    Reduce,
}

impl TaskSlot {
    /// The array index, if this is an array task.
    pub fn array_index(self) -> Option<TaskIndex> {
        match self {
            TaskSlot::Array(i) => Some(i),
            TaskSlot::Reduce => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub job: JobId,
    pub slot: TaskSlot,
}

impl TaskId {
    pub fn array(job: JobId, index: TaskIndex) -> Self {
        TaskId { job, slot: TaskSlot::Array(index) }
    }
    pub fn reduce(job: JobId) -> Self {
        TaskId { job, slot: TaskSlot::Reduce }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot {
            TaskSlot::Array(i) => write!(f, "{}[{}]", self.job, i),
            TaskSlot::Reduce => write!(f, "{}[reduce]", self.job),
        }
    }
}

/// The fencing token of one attempt of a task: the Raft term whose leader committed the
/// assignment, and the task's attempt number (unique per task, increasing). Anything that
/// names another token than the task's current one is stale and is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub term: u64,
    pub attempt: u32,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt {} (term {})", self.attempt, self.term)
    }
}

/// What a user submits. Validated by [`JobSpec::validate`] before it is proposed, and again when
/// applied so that a bad entry can never corrupt the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: Option<String>,
    /// Program and arguments, passed verbatim (no shell).
    pub command: Vec<String>,
    /// Task indices; `None` is a single task with index 0.
    pub array: Option<IndexSet>,
    pub cpus: u32,
    /// How many times a failed process (non-zero exit, timeout) is run again.
    pub retries: u32,
    pub timeout_ms: Option<u64>,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
    /// Labels a worker must carry (all of them) to run this job's tasks.
    pub selector: BTreeMap<String, String>,
    /// A shell command run once after all tasks succeed, with their stdout on its stdin.
    pub reduce: Option<String>,
    /// Extra environment variables for the tasks.
    pub env: BTreeMap<String, String>,
    /// Named resources each task holds from its worker while assigned, e.g. `gpu=1`: placement
    /// never gives out more units than a worker offers.
    pub resources: BTreeMap<String, u32>,
    /// Bytes of the worker's memory each task holds while assigned; `None`: not accounted.
    pub memory: Option<u64>,
    /// Soft placement wishes, weighed after the hard `selector`.
    pub affinity: Affinity,
}

/// What each of a job's tasks may use at most, enforced by the worker on the task's process
/// (resource limits set before it starts). Kept beside the job rather than in its
/// [`JobSpec`], whose encoding release 0.1.0 reads (see `Feature::TaskLimits`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskLimits {
    /// Bytes of address space (`RLIMIT_AS`): an allocation beyond it fails.
    pub memory: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes and threads of the task's user (`RLIMIT_NPROC`): a task's own count only
    /// when its user runs nothing else (`--run-as` a user of its own); root ignores it.
    pub processes: Option<u64>,
}

/// Smallest open-files limit a task may ask for: fewer leaves no room for the dynamic loader
/// and the standard streams.
pub const MIN_OPEN_FILES: u64 = 16;
/// Smallest memory limit: the loader and libc of a small program fit in it.
pub const MIN_TASK_MEMORY: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitsError {
    #[error("the memory limit must be at least {} MiB", MIN_TASK_MEMORY >> 20)]
    TooLittleMemory,
    #[error("the open-files limit must be at least {MIN_OPEN_FILES}")]
    TooFewFiles,
    #[error("the processes limit must be at least 1")]
    NoProcesses,
}

impl TaskLimits {
    pub fn is_empty(&self) -> bool {
        *self == TaskLimits::default()
    }

    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.memory.is_some_and(|m| m < MIN_TASK_MEMORY) {
            return Err(LimitsError::TooLittleMemory);
        }
        if self.open_files.is_some_and(|n| n < MIN_OPEN_FILES) {
            return Err(LimitsError::TooFewFiles);
        }
        if self.processes == Some(0) {
            return Err(LimitsError::NoProcesses);
        }
        Ok(())
    }
}

/// Soft placement: these only order the workers a task may run on, so a task still runs at
/// once on any eligible worker with room when the wished-for ones are full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// Workers carrying these labels go first (each matching label counts).
    pub prefer: BTreeMap<String, String>,
    /// Workers carrying these labels go last (each matching label counts).
    pub avoid: BTreeMap<String, String>,
    /// Spread the job's tasks evenly over the values of this label (e.g. `zone`): the next task
    /// goes where the job holds the fewest attempts. Workers without the label form one group.
    pub spread: Option<String>,
}

impl Affinity {
    pub fn is_empty(&self) -> bool {
        self.prefer.is_empty() && self.avoid.is_empty() && self.spread.is_none()
    }

    /// Lower is better: avoided labels a worker carries minus preferred ones it carries.
    pub fn rank(&self, labels: &BTreeMap<String, String>) -> i32 {
        let carries = |wanted: &BTreeMap<String, String>| {
            wanted.iter().filter(|(k, v)| labels.get(*k) == Some(*v)).count() as i32
        };
        carries(&self.avoid) - carries(&self.prefer)
    }
}

/// Most named resources a job may ask for, or a worker offer.
pub const MAX_RESOURCES: usize = 32;

/// Whether `name` can name a resource: short, lower-case letters, digits, `_` and `-`, not
/// one of the built-in `cpus` and `memory` (they have their own flags). It becomes part of an
/// environment variable name (`FLOTILLA_RESOURCE_GPU`).
pub fn valid_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name != "cpus"
        && name != "memory"
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: None,
            command: Vec::new(),
            array: None,
            cpus: 1,
            retries: 0,
            timeout_ms: None,
            priority: 0,
            selector: BTreeMap::new(),
            reduce: None,
            env: BTreeMap::new(),
            resources: BTreeMap::new(),
            memory: None,
            affinity: Affinity::default(),
        }
    }
}

/// Travels in the Raft log inside a refusal ([`crate::reason::Refusal::BadSpec`]): new variants
/// are only ever appended.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecError {
    #[error("no command given (put it after --, for example: flotilla submit -- echo hello)")]
    NoCommand,
    #[error("the command is empty")]
    EmptyProgram,
    #[error("too many command arguments ({0}; limit {MAX_COMMAND_ARGS})")]
    TooManyArgs(usize),
    #[error("cpus must be at least 1")]
    ZeroCpus,
    #[error("timeout must be more than 0")]
    ZeroTimeout,
    #[error("invalid array: {0}")]
    Array(#[from] IndexSetError),
    #[error("the array is empty")]
    EmptyArray,
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("the reduce command is empty")]
    EmptyReduce,
    #[error("invalid environment variable name '{0}'")]
    BadEnvName(String),
    #[error("invalid resource name '{0}' (lower-case letters, digits, '_' and '-'; not cpus or memory)")]
    BadResourceName(String),
    #[error("resource '{0}' is asked for 0 units")]
    ZeroResource(String),
    #[error("too many resources (limit {MAX_RESOURCES})")]
    TooManyResources,
    #[error("memory must be more than 0")]
    ZeroMemory,
    #[error("the spread label is empty")]
    EmptySpread,
}

impl JobSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.command.is_empty() {
            return Err(SpecError::NoCommand);
        }
        if self.command[0].is_empty() {
            return Err(SpecError::EmptyProgram);
        }
        if self.command.len() > MAX_COMMAND_ARGS {
            return Err(SpecError::TooManyArgs(self.command.len()));
        }
        if self.cpus == 0 {
            return Err(SpecError::ZeroCpus);
        }
        if self.timeout_ms == Some(0) {
            return Err(SpecError::ZeroTimeout);
        }
        if let Some(array) = &self.array {
            if array.is_empty() {
                return Err(SpecError::EmptyArray);
            }
        }
        if self.name.as_ref().is_some_and(|n| n.len() > MAX_NAME_LEN) {
            return Err(SpecError::NameTooLong);
        }
        if self.reduce.as_ref().is_some_and(|r| r.trim().is_empty()) {
            return Err(SpecError::EmptyReduce);
        }
        for key in self.env.keys() {
            let valid = !key.is_empty() && !key.contains('=') && !key.contains('\0') && !key.starts_with("FLOTILLA_");
            if !valid {
                return Err(SpecError::BadEnvName(key.clone()));
            }
        }
        if self.resources.len() > MAX_RESOURCES {
            return Err(SpecError::TooManyResources);
        }
        for (name, units) in &self.resources {
            if !valid_resource_name(name) {
                return Err(SpecError::BadResourceName(name.clone()));
            }
            if *units == 0 {
                return Err(SpecError::ZeroResource(name.clone()));
            }
        }
        if self.memory == Some(0) {
            return Err(SpecError::ZeroMemory);
        }
        if self.affinity.spread.as_ref().is_some_and(|l| l.trim().is_empty()) {
            return Err(SpecError::EmptySpread);
        }
        Ok(())
    }

    /// Whether `index` is one of this job's task indices (without copying them).
    pub fn has_index(&self, index: u64) -> bool {
        self.array.as_ref().map_or(index == 0, |a| a.contains(index))
    }

    /// The task indices this job runs.
    pub fn indices(&self) -> IndexSet {
        self.array.clone().unwrap_or_else(|| IndexSet::range(0, 0))
    }

    /// Whether a worker's labels satisfy this job's selector.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether its tasks hold anything beyond cpus (named resources or memory).
    pub fn holds_resources(&self) -> bool {
        !self.resources.is_empty() || self.memory.is_some()
    }
}

/// Captured output of a stream, cut at [`MAX_OUTPUT_BYTES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    pub text: String,
    /// True when the process wrote more than was kept.
    pub truncated: bool,
    /// Total bytes the process wrote, kept or not.
    pub total_bytes: u64,
}

impl Captured {
    /// Keeps at most [`MAX_OUTPUT_BYTES`] of `bytes`, cut on a character boundary.
    pub fn from_bytes(bytes: &[u8], total_bytes: u64) -> Self {
        let mut end = bytes.len().min(MAX_OUTPUT_BYTES);
        // Step back out of a UTF-8 sequence the cut fell into, so no replacement char appears.
        if end < bytes.len() {
            while end > 0 && (bytes[end] & 0xC0) == 0x80 {
                end -= 1;
            }
        }
        let kept = &bytes[..end];
        // Invalid UTF-8 is replaced, which can grow the text; cut again to stay within bounds.
        let mut text = String::from_utf8_lossy(kept).into_owned();
        while text.len() > MAX_OUTPUT_BYTES {
            text.pop();
        }
        Captured { text, truncated: total_bytes > kept.len() as u64 || end < bytes.len(), total_bytes }
    }
}

/// How one attempt of a task ended, as the worker observed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Exit status when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended the process, if any.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The process could not be started (for example, the program does not exist).
    pub spawn_error: Option<String>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration_ms: u64,
    /// What the task left in its output directory. Not in this struct's encoding, which
    /// release 0.1.0 reads: it travels beside the outcome (`WorkerMsg::FinishedWith`,
    /// `Command::TaskFinishedWith`) and is kept apart from the task's record.
    #[serde(skip)]
    pub outputs: crate::workflow::Outputs,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.spawn_error.is_none() && self.outputs.error.is_none()
    }

    /// How the process failed (meaningful when it did not succeed), for events and `job show`.
    pub fn failure(&self) -> ProcessFailure {
        if let Some(e) = &self.spawn_error {
            return ProcessFailure::CouldNotStart(e.clone());
        }
        if self.timed_out {
            return ProcessFailure::TimedOut;
        }
        if let Some(e) = &self.outputs.error {
            return ProcessFailure::Outputs(e.clone());
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => ProcessFailure::Exit(c),
            (None, Some(s)) => ProcessFailure::Signal(s),
            (None, None) => ProcessFailure::NoStatus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_bad_specs() {
        let ok = JobSpec { command: vec!["true".into()], ..Default::default() };
        assert!(ok.validate().is_ok());
        assert_eq!(JobSpec::default().validate(), Err(SpecError::NoCommand));
        let zero = JobSpec { cpus: 0, ..ok.clone() };
        assert_eq!(zero.validate(), Err(SpecError::ZeroCpus));
        let env = JobSpec { env: [("FLOTILLA_JOB_ID".to_string(), "x".to_string())].into(), ..ok.clone() };
        assert!(matches!(env.validate(), Err(SpecError::BadEnvName(_))));
    }

    #[test]
    fn output_is_cut_on_a_char_boundary() {
        let big = "aé".repeat(MAX_OUTPUT_BYTES);
        let c = Captured::from_bytes(big.as_bytes(), big.len() as u64);
        assert!(c.truncated);
        assert!(c.text.len() <= MAX_OUTPUT_BYTES);
        assert!(c.text.chars().all(|ch| ch == 'é' || ch == 'a'));
    }
}

/// Where a job is in its life (replicated; rendered by name at the edges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Waiting,
    Running,
    Reducing,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Reducing => "reducing",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// Where one task is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Waiting,
    Assigned { worker: String, fence: Fence, since: Millis },
    Running { worker: String, fence: Fence, since: Millis },
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Assigned { .. } => "assigned",
            TaskState::Running { .. } => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// The worker and fence of the attempt in flight, if any.
    pub fn in_flight(&self) -> Option<(&str, Fence)> {
        match self {
            TaskState::Assigned { worker, fence, .. } | TaskState::Running { worker, fence, .. } => {
                Some((worker, *fence))
            }
            _ => None,
        }
    }
}

/// How jobs of the same priority share the workers (a cluster-wide, replicated setting).
/// JSON names: `fair`, `fifo` (the replicated encoding is by position, not name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Jobs take turns: the one holding the fewest attempts is placed next, so a short job
    /// behind a huge array starts at once.
    #[default]
    Fair,
    /// Strictly in submission order: a job gets nothing until every earlier one is placed.
    Fifo,
}

impl Sharing {
    pub fn name(self) -> &'static str {
        match self {
            Sharing::Fair => "fair",
            Sharing::Fifo => "fifo",
        }
    }

    pub fn from_name(name: &str) -> Option<Sharing> {
        match name {
            "fair" => Some(Sharing::Fair),
            "fifo" => Some(Sharing::Fifo),
            _ => None,
        }
    }
}
