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

use crate::index_set::IndexSet;
use crate::model::{JobId, JobState, TaskIndex, TaskLimits};

/// Copies of a task's outputs kept on workers other than the one that ran it, by default.
pub const DEFAULT_REPLICAS: u32 = 2;
/// The most copies a job may ask for.
pub const MAX_REPLICAS: u32 = 16;
/// Jobs one job may wait for.
pub const MAX_UPSTREAM: usize = 256;
/// Rules of task-level dependencies one job may have (`needs`).
pub const MAX_NEED_RULES: usize = 1024;
/// Index ranges all of one job's `needs` rules may hold together (they are compared pairwise
/// at submit to find cycles).
pub const MAX_NEED_RANGES: usize = 4096;
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
    /// Jobs whose tasks pair with this job's (`--each`): task `i` here starts once task `i`
    /// of each of them has succeeded, and reads only that task's outputs. If one of them
    /// fails or is cancelled, this job is cancelled, as with `after`.
    pub each: Vec<JobId>,
    /// Dependencies between this job's own tasks.
    pub needs: Vec<TaskNeeds>,
}

/// Tasks of a job that wait for other tasks of the same job: each task in `tasks` starts once
/// every task in `needs` has succeeded, and reads their outputs. Kept as index ranges, so a
/// rule over a million tasks costs bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNeeds {
    pub tasks: IndexSet,
    pub needs: IndexSet,
}

impl JobOptions {
    pub fn is_empty(&self) -> bool {
        *self == JobOptions::default()
    }

    /// Whether anything here needs a release that knows workflows (beyond limits).
    pub fn uses_workflows(&self) -> bool {
        !self.after.is_empty()
            || !self.after_finished.is_empty()
            || !self.each.is_empty()
            || !self.needs.is_empty()
            || self.replicas.is_some()
            || self.output_quota.is_some()
    }

    /// Every job this one waits for or pairs its tasks with, each once.
    pub fn upstream(&self) -> Vec<JobId> {
        let mut all: Vec<JobId> = self.after.iter().chain(&self.after_finished).chain(&self.each).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The jobs whose every output each task of this one reads (`after`, `after_finished`).
    pub fn whole_upstream(&self) -> Vec<JobId> {
        let mut all: Vec<JobId> = self.after.iter().chain(&self.after_finished).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether this job is cancelled if `job` does not succeed.
    pub fn needs_success_of(&self, job: JobId) -> bool {
        self.after.contains(&job) || self.each.contains(&job)
    }

    /// The tasks of its own job that task `index` needs (the union of the rules naming it).
    pub fn needed_by(&self, index: TaskIndex) -> IndexSet {
        let mut all = IndexSet::new();
        for rule in self.needs.iter().filter(|r| r.tasks.contains(index)) {
            all.union_with(&rule.needs);
        }
        all
    }

    /// What the `needs` rules must satisfy given the job's indices: every index they name is
    /// one of its tasks, and no task waits for itself through any chain of rules.
    pub fn check_needs(&self, indices: &IndexSet) -> Result<(), DependencyError> {
        if self.needs.len() > MAX_NEED_RULES {
            return Err(DependencyError::TooManyRules { max: MAX_NEED_RULES });
        }
        let ranges: usize = self.needs.iter().map(|r| r.tasks.range_count() + r.needs.range_count()).sum();
        if ranges > MAX_NEED_RANGES {
            return Err(DependencyError::TooManyRanges { max: MAX_NEED_RANGES });
        }
        for rule in &self.needs {
            if rule.tasks.is_empty() || rule.needs.is_empty() {
                return Err(DependencyError::EmptyRule);
            }
            for set in [&rule.tasks, &rule.needs] {
                if let Some(task) = set.difference(indices).first() {
                    return Err(DependencyError::NoSuchTask(task));
                }
            }
        }
        match needs_cycle(&self.needs) {
            Some(cycle) => Err(DependencyError::Cycle(cycle)),
            None => Ok(()),
        }
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
    /// `--each` pairs task `i` with task `i` of the other job, which has none.
    #[error("task {task} has no task {task} in job {job} to wait for (--each pairs task i with task i)")]
    EachMissing { job: JobId, task: TaskIndex },
    #[error("needs names task {0}, which is not a task of this job")]
    NoSuchTask(TaskIndex),
    #[error("tasks wait for each other in a cycle: {}", cycle_text(.0))]
    Cycle(Vec<TaskIndex>),
    #[error("a needs rule must name tasks and the tasks they need")]
    EmptyRule,
    #[error("a job may have at most {max} needs rules")]
    TooManyRules { max: usize },
    #[error("a job's needs rules may hold at most {max} index ranges together")]
    TooManyRanges { max: usize },
}

/// `3 needs 5 needs 3`.
fn cycle_text(cycle: &[TaskIndex]) -> String {
    match cycle {
        [one] => format!("task {one} needs itself"),
        _ => {
            let mut parts: Vec<String> = cycle.iter().map(|t| format!("task {t}")).collect();
            if let Some(first) = cycle.first() {
                parts.push(format!("task {first}"));
            }
            parts.join(" needs ")
        }
    }
}

/// A cycle among the rules' tasks, as the tasks on it (each needs the next, the last the
/// first), or `None`. Rule `a` leads to rule `b` when `a` needs one of `b`'s tasks; since every
/// task of a rule needs every task it names, a cycle of rules is a cycle of tasks, and the
/// other way round.
fn needs_cycle(rules: &[TaskNeeds]) -> Option<Vec<TaskIndex>> {
    let n = rules.len();
    let edges: Vec<Vec<usize>> =
        rules.iter().map(|a| (0..n).filter(|&b| a.needs.intersects(&rules[b].tasks)).collect()).collect();
    // Iterative depth-first search: 0 unvisited, 1 on the path, 2 done.
    let mut mark = vec![0u8; n];
    for root in 0..n {
        if mark[root] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&mut (rule, ref mut next)) = path.last_mut() {
            if let Some(&to) = edges[rule].get(*next) {
                *next += 1;
                match mark[to] {
                    0 => {
                        mark[to] = 1;
                        path.push((to, 0));
                    }
                    1 => {
                        let start = path.iter().position(|(r, _)| *r == to).unwrap_or(0);
                        let on_cycle: Vec<usize> = path[start..].iter().map(|(r, _)| *r).collect();
                        return Some(cycle_tasks(rules, &on_cycle));
                    }
                    _ => {}
                }
            } else {
                mark[rule] = 2;
                path.pop();
            }
        }
    }
    None
}

/// One task per step of a cycle of rules `r0 -> r1 -> … -> r0`: `x(k)`, the task of `r(k+1)`
/// that `rk` needs. Being `r(k+1)`'s, `x(k)` needs `x(k+1)`, so the list reads "needs" left
/// to right, and the last needs the first (it is `r0`'s).
fn cycle_tasks(rules: &[TaskNeeds], on_cycle: &[usize]) -> Vec<TaskIndex> {
    let m = on_cycle.len();
    let mut tasks: Vec<TaskIndex> = (0..m)
        .filter_map(|k| {
            let (from, to) = (&rules[on_cycle[k]], &rules[on_cycle[(k + 1) % m]]);
            from.needs.intersection(&to.tasks).first()
        })
        .collect();
    tasks.dedup();
    tasks
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

    fn rule(tasks: &str, needs: &str) -> TaskNeeds {
        TaskNeeds { tasks: IndexSet::parse(tasks).unwrap(), needs: IndexSet::parse(needs).unwrap() }
    }

    fn with_needs(rules: Vec<TaskNeeds>) -> JobOptions {
        JobOptions { needs: rules, ..Default::default() }
    }

    #[test]
    fn task_needs_name_tasks_of_the_job_and_form_no_cycle() {
        let indices = IndexSet::parse("1-10").unwrap();
        let chain = with_needs(vec![rule("10", "1-9"), rule("2-9", "1")]);
        assert_eq!(chain.check_needs(&indices), Ok(()));
        assert_eq!(chain.needed_by(10).to_string(), "1-9");
        assert!(chain.needed_by(1).is_empty());
        assert_eq!(with_needs(vec![rule("11", "1")]).check_needs(&indices), Err(DependencyError::NoSuchTask(11)));
        assert_eq!(with_needs(vec![rule("3", "0-2")]).check_needs(&indices), Err(DependencyError::NoSuchTask(0)));
        let itself = with_needs(vec![rule("2-9", "5")]).check_needs(&indices);
        assert_eq!(itself, Err(DependencyError::Cycle(vec![5])));
        assert_eq!(itself.unwrap_err().to_string(), "tasks wait for each other in a cycle: task 5 needs itself");
        // 3 needs 7, 7 needs 4-5, 5 needs 3: a cycle through three rules.
        let three = with_needs(vec![rule("3", "7"), rule("7", "4-5"), rule("5", "3"), rule("1", "2")]);
        let Err(DependencyError::Cycle(cycle)) = three.check_needs(&indices) else { panic!("no cycle found") };
        assert_eq!(cycle, vec![7, 5, 3]);
        assert_eq!(
            DependencyError::Cycle(cycle).to_string(),
            "tasks wait for each other in a cycle: task 7 needs task 5 needs task 3 needs task 7"
        );
        // A million tasks each needing the one before, as two rules: no cycle, no per-task work.
        let big = IndexSet::parse("1-1000000").unwrap();
        let stages = with_needs(vec![rule("500001-1000000", "1-500000"), rule("2-500000", "1")]);
        assert_eq!(stages.check_needs(&big), Ok(()));
    }
}
