//! Messages of a worker session: one gRPC bidirectional stream between a worker and the leader.
//!
//! ```text
//! worker                                 leader
//!   Hello{info, known attempts} ───────▶  (register or re-attach, reconcile)
//!   ◀─────── Welcome | NotLeader{addr} | Refused
//!   ◀─────── Run{task, fence, command…}   (only committed assignments)
//!   Started / Finished ────────────────▶  (proposed to Raft, then…)
//!   ◀─────── Ack{task, fence} | Stop{task, fence}
//!   ◀─────── Revoke{task, fence}          (an idle worker elsewhere could run it)
//!   Revoked{task, fence} ──────────────▶  (only if not started; proposed, then Ack)
//!   Heartbeat ─────────────────────────▶  (liveness, leader memory only)
//!   ◀─────── Replicate{task, files, sources}  (a task's outputs are short of copies)
//!   Holds{tasks} | CopyFailed ─────────▶  (proposed: the copies count)
//!   Corrupt{digests} ──────────────────▶  (a read found a stored copy damaged)
//!   Inventory{digests} ────────────────▶  (what it has held for a while)
//!   ◀─────── Discard{digests}             (what no kept output counts on it for)
//! ```
//!
//! Every master message carries the sender's Raft term; a worker ignores messages from a term
//! lower than the highest it has seen, so a deposed leader cannot make it act.

use flotilla_core::records::{self, RecordError, RecordReader};
use serde::{Deserialize, Serialize};

use flotilla_core::model::{Fence, NodeId, Outcome, TaskId, TaskLimits, TaskSlot};
use flotilla_core::state::ClusterState;
use flotilla_core::version::Feature;
use flotilla_core::workflow::{Digest, OutputError, OutputFile, Outputs, DEFAULT_OUTPUT_QUOTA, DEFAULT_REPLICAS};
use flotilla_core::WorkerInfo;

/// Bumped when session messages change incompatibly (3: queued attempts can be revoked).
pub const PROTOCOL_VERSION: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerMsg {
    Hello {
        protocol: u32,
        info: WorkerInfo,
        /// Attempts the worker is running or has finished without an ack.
        known: Vec<(TaskId, Fence)>,
        highest_term: u64,
    },
    Heartbeat,
    Started {
        task: TaskId,
        fence: Fence,
    },
    Finished {
        task: TaskId,
        fence: Fence,
        outcome: Outcome,
    },
    /// Several reports in one message (a busy worker sends what is ready together).
    Batch(Vec<WorkerMsg>),
    /// The worker wants a different queue depth (see `WorkerInfo::queue`): it sizes its
    /// queue to cover a fixed time of work at the task durations it measures.
    Queue {
        queue: u32,
    },
    /// A heartbeat carrying the worker's key figures (shown per worker on the masters'
    /// `/metrics`).
    Stats {
        running: u32,
        queued: u32,
        /// Processes started since the worker started, and microseconds spent starting them.
        spawned: u64,
        spawn_micros: u64,
        /// Asks the leader to send this token straight back ([`MasterBody::Echo`]): the
        /// worker measures the session's round trip (sampled, not every heartbeat).
        echo: Option<u64>,
        /// The last round trip the worker measured, in microseconds.
        rtt_micros: Option<u64>,
    },
    /// The worker took this queued attempt out of its queue without starting it, as asked
    /// ([`MasterBody::Revoke`]); it will never start it. Sent again after a reconnect until
    /// acknowledged.
    Revoked {
        task: TaskId,
        fence: Fence,
    },
    /// This worker is stopping (it was sent SIGTERM): take it out of service and drain it;
    /// running attempts may take `deadline_ms` before they are stopped and re-queued.
    Drain {
        deadline_ms: Option<u64>,
    },
    /// The worker's release, sent after each welcome (0.2.0 on; a worker that never sends it
    /// runs 0.1.0). Masters are upgraded before workers: a 0.1.0 master does not know it.
    Version {
        version: String,
    },
    /// [`WorkerMsg::Finished`] for an attempt that left outputs (kept on this worker and
    /// copied to others) or could not keep them: `outcome.outputs` travels here (0.2.0 on).
    FinishedWith {
        task: TaskId,
        fence: Fence,
        outcome: Outcome,
        outputs: Outputs,
    },
    /// Where this worker serves the outputs it holds, sent after each welcome (0.2.0 on).
    Serves {
        address: String,
    },
    /// This worker now holds whole copies of these tasks' outputs, as asked
    /// ([`MasterBody::Replicate`]).
    Holds {
        tasks: Vec<TaskId>,
    },
    /// Copying a task's outputs as asked failed (no holder served a sound copy, or this
    /// worker could not store it).
    CopyFailed {
        task: TaskId,
        error: OutputError,
    },
    /// A read found these stored blobs damaged (this worker discarded them) or missing.
    Corrupt {
        digests: Vec<Digest>,
    },
    /// Blobs this worker has held for a while (sent in parts, now and then): the leader
    /// answers with the ones no kept task's outputs count on it for ([`MasterBody::Discard`]).
    Inventory {
        digests: Vec<Digest>,
    },
}

impl WorkerMsg {
    /// The report of a finished attempt: [`WorkerMsg::FinishedWith`] when it carries
    /// outputs, the 0.1.0 message otherwise.
    pub fn finished(task: TaskId, fence: Fence, outcome: Outcome) -> WorkerMsg {
        if outcome.outputs.is_empty() {
            WorkerMsg::Finished { task, fence, outcome }
        } else {
            let outputs = outcome.outputs.clone();
            WorkerMsg::FinishedWith { task, fence, outcome, outputs }
        }
    }

    /// The messages inside, flattened.
    pub fn flatten(self) -> Vec<WorkerMsg> {
        match self {
            WorkerMsg::Batch(msgs) => msgs.into_iter().flat_map(WorkerMsg::flatten).collect(),
            other => vec![other],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterMsg {
    pub term: u64,
    pub body: MasterBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterBody {
    Welcome {
        leader: NodeId,
        incarnation: u64,
        heartbeat_ms: u64,
    },
    /// This master does not lead; try the leader's address if known.
    NotLeader {
        leader: Option<String>,
    },
    /// The session is refused for good (bad protocol, bad registration).
    Refused {
        reason: String,
    },
    Run(RunTask),
    /// Stop this attempt: it was cancelled or fenced off.
    Stop {
        task: TaskId,
        fence: Fence,
    },
    /// The result of this attempt is committed; the worker may forget it.
    Ack {
        task: TaskId,
        fence: Fence,
    },
    /// Several of the above in one message.
    Batch(Vec<MasterBody>),
    /// The answer to a heartbeat's `echo` token.
    Echo {
        token: u64,
    },
    /// Give back this queued attempt if it has not started (answered by
    /// [`WorkerMsg::Revoked`]); one that has started stays and runs.
    Revoke {
        task: TaskId,
        fence: Fence,
    },
    /// The addresses of every master of the group, sent after `Welcome` and again when the
    /// membership changes: the worker reconnects through these, not only the ones it was
    /// started with.
    Members {
        addresses: Vec<String>,
    },
    /// This worker is drained: it holds nothing and is given nothing (a worker that asked to
    /// drain may now exit).
    Drained,
    /// [`MasterBody::Run`] for a task of a job with options: limits (the worker sets them on
    /// the process), inputs to fetch before it starts, its outputs' policy. Sent only to
    /// workers of 0.2.0 or later, and the scheduler places such tasks on those alone.
    RunWith {
        // Boxed: the largest body by far, and every other message would pay for its size.
        run: Box<RunTask>,
        limits: TaskLimits,
        inputs: Vec<Input>,
        outputs: OutputPolicy,
    },
    /// Workers this one may copy its tasks' outputs to (name, address), sent after the
    /// welcome and when they change.
    Peers {
        peers: Vec<(String, String)>,
    },
    /// Take a copy of this task's outputs from one of `sources` (worker addresses, in the
    /// order to try), each file checked against its digest; answered by
    /// [`WorkerMsg::Holds`] or [`WorkerMsg::CopyFailed`].
    Replicate {
        task: TaskId,
        files: Vec<OutputFile>,
        sources: Vec<String>,
    },
    /// Delete these blobs: no kept task's outputs count on this worker for them (their job
    /// was removed, or the copy is one the cluster stopped counting).
    Discard {
        digests: Vec<Digest>,
    },
}

impl MasterBody {
    /// The feature this message belongs to if a worker of a release still supported cannot
    /// decode it: the leader sends it only on sessions whose worker reported that release
    /// (see `flotilla_core::version`). Every variant is listed, so a new one must choose.
    pub fn feature(&self) -> Option<Feature> {
        match self {
            MasterBody::Batch(bodies) => bodies.iter().find_map(MasterBody::feature),
            MasterBody::Welcome { .. }
            | MasterBody::NotLeader { .. }
            | MasterBody::Refused { .. }
            | MasterBody::Run(_)
            | MasterBody::Stop { .. }
            | MasterBody::Ack { .. }
            | MasterBody::Echo { .. }
            | MasterBody::Revoke { .. }
            | MasterBody::Members { .. }
            | MasterBody::Drained => None,
            MasterBody::RunWith { inputs, outputs, .. }
                if !inputs.is_empty() || *outputs != OutputPolicy::default() =>
            {
                Some(Feature::Workflows)
            }
            MasterBody::RunWith { .. } => Some(Feature::TaskLimits),
            MasterBody::Peers { .. } | MasterBody::Replicate { .. } | MasterBody::Discard { .. } => {
                Some(Feature::Workflows)
            }
        }
    }

    /// One message for a list of bodies (none for an empty list).
    pub fn batch(mut bodies: Vec<MasterBody>) -> Option<MasterBody> {
        match bodies.len() {
            0 => None,
            1 => bodies.pop(),
            _ => Some(MasterBody::Batch(bodies)),
        }
    }

    /// The bodies inside, flattened.
    pub fn flatten(self) -> Vec<MasterBody> {
        match self {
            MasterBody::Batch(bodies) => bodies.into_iter().flat_map(MasterBody::flatten).collect(),
            other => vec![other],
        }
    }
}

/// One committed assignment, with everything the worker needs to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTask {
    pub task: TaskId,
    pub fence: Fence,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cpus: u32,
    pub timeout_ms: Option<u64>,
    /// Bytes for the process's stdin (the reduce step's input); none means /dev/null.
    pub stdin: Option<String>,
    /// The job's limits. Not in `Run`'s encoding, which 0.1.0 workers read: it travels in
    /// [`MasterBody::RunWith`] (see [`RunTask::into_body`]), as do the two below.
    #[serde(skip)]
    pub limits: TaskLimits,
    /// Outputs of upstream tasks to place in `$FLOTILLA_INPUT_DIR` before the task starts.
    #[serde(skip)]
    pub inputs: Vec<Input>,
    #[serde(skip)]
    pub outputs: OutputPolicy,
}

/// One file a task reads in `$FLOTILLA_INPUT_DIR/JOB/INDEX/PATH`, and where to get it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// The task that left it.
    pub from: TaskId,
    pub file: OutputFile,
    /// Addresses of workers holding a copy, the likeliest first.
    pub sources: Vec<String>,
}

impl Input {
    /// Where it goes under the input directory: `JOB/INDEX/PATH` (`JOB/reduce/PATH` for a
    /// reduce step's).
    pub fn relative_path(&self) -> String {
        let slot = match self.from.slot {
            TaskSlot::Array(i) => i.to_string(),
            TaskSlot::Reduce => "reduce".to_string(),
        };
        format!("{}/{slot}/{}", self.from.job, self.file.path)
    }
}

/// How a task's outputs are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPolicy {
    /// Copies on other workers before the task counts as done.
    pub replicas: u32,
    /// Bytes the task may leave.
    pub quota: u64,
}

impl Default for OutputPolicy {
    fn default() -> Self {
        OutputPolicy { replicas: DEFAULT_REPLICAS, quota: DEFAULT_OUTPUT_QUOTA }
    }
}

impl RunTask {
    /// The message that makes a worker run one committed attempt, built from the state:
    /// the job's command, or for the reduce step `/bin/sh -c REDUCE` with the tasks' stdout
    /// on its stdin.
    /// `None` if the state has no such job (or no reduce step); an error if the stored records
    /// the reduce step reads could not be read.
    pub fn for_attempt(
        state: &ClusterState,
        records: &dyn RecordReader,
        task: TaskId,
        fence: Fence,
    ) -> Result<Option<RunTask>, RecordError> {
        let Some(job) = state.job(task.job) else { return Ok(None) };
        let (command, stdin) = match task.slot {
            TaskSlot::Array(_) => (job.spec.command.clone(), None),
            TaskSlot::Reduce => {
                let Some(reduce) = job.spec.reduce.clone() else { return Ok(None) };
                let input = records::concatenated_stdout(job, records)?;
                (vec!["/bin/sh".to_string(), "-c".to_string(), reduce], Some(input))
            }
        };
        let mut env: Vec<(String, String)> = job.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // The units this attempt holds, so the task uses those and no others. The job's own
        // variables cannot collide: names starting with FLOTILLA_ are refused.
        let worker = job.task(task.slot).and_then(|t| t.state.in_flight()).map(|(w, _)| w);
        if let Some(grant) = worker.and_then(|w| state.worker(w)).and_then(|w| w.grants.get(&task)) {
            for (name, units) in &grant.units {
                let list = units.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                if name == "gpu" {
                    env.push(("CUDA_VISIBLE_DEVICES".to_string(), list.clone()));
                }
                env.push((resource_env_name(name), list));
            }
            if grant.memory > 0 {
                env.push(("FLOTILLA_MEMORY".to_string(), grant.memory.to_string()));
            }
        }
        if let Some(original) = state.rerun_of(task.job) {
            env.push(("FLOTILLA_RERUN_OF".to_string(), original.to_string()));
        }
        let options = state.job_options(task.job);
        let limits = options.map(|o| o.limits.clone()).unwrap_or_default();
        let outputs =
            options.map(|o| OutputPolicy { replicas: o.replicas(), quota: o.output_quota() }).unwrap_or_default();
        let mut upstream = options.map(|o| o.whole_upstream()).unwrap_or_default();
        if task.slot == TaskSlot::Reduce {
            // The reduce step reads what its own job's tasks left, too.
            upstream.push(task.job);
        }
        let mut inputs = inputs_of(state, &upstream);
        if let (Some(options), TaskSlot::Array(index)) = (options, task.slot) {
            // Task-level dependencies: the paired tasks' outputs, and those of the tasks of its
            // own job it needs (a re-run's are the original job's).
            let mut tasks: Vec<TaskId> = options.each.iter().map(|&up| TaskId::array(up, index)).collect();
            let own = state.rerun_of(task.job).unwrap_or(task.job);
            let needed = options.needed_by(index);
            if !needed.is_empty() {
                tasks.extend(
                    state
                        .job_outputs(own)
                        .map(|(t, _)| *t)
                        .filter(|t| t.slot.array_index().is_some_and(|i| needed.contains(i))),
                );
            }
            inputs.extend(inputs_of_tasks(state, &tasks));
        }
        Ok(Some(RunTask {
            task,
            fence,
            command,
            env,
            cpus: job.spec.cpus,
            timeout_ms: job.spec.timeout_ms,
            stdin,
            limits,
            inputs,
            outputs,
        }))
    }

    /// The message that carries this attempt: `Run`, or `RunWith` when it has options.
    pub fn into_body(mut self) -> MasterBody {
        if self.limits.is_empty() && self.inputs.is_empty() && self.outputs == OutputPolicy::default() {
            MasterBody::Run(self)
        } else {
            // Beside the run, not in it: its encoding drops them (the worker puts them back).
            let limits = std::mem::take(&mut self.limits);
            let inputs = std::mem::take(&mut self.inputs);
            let outputs = self.outputs;
            MasterBody::RunWith { run: Box::new(self), limits, inputs, outputs }
        }
    }
}

/// Every output of the tasks of `jobs`, with the addresses of the workers in service that
/// hold a copy (workers lost or leaving are not asked).
pub fn inputs_of(state: &ClusterState, jobs: &[flotilla_core::model::JobId]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for &job in jobs {
        for (from, outputs) in state.job_outputs(job) {
            push_inputs(state, &mut inputs, *from, outputs);
        }
    }
    inputs
}

/// The outputs of these tasks (those that left any), as [`inputs_of`] gives them.
pub fn inputs_of_tasks(state: &ClusterState, tasks: &[TaskId]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for &task in tasks {
        if let Some(outputs) = state.task_outputs(task) {
            push_inputs(state, &mut inputs, task, outputs);
        }
    }
    inputs
}

fn push_inputs(
    state: &ClusterState,
    inputs: &mut Vec<Input>,
    from: TaskId,
    outputs: &flotilla_core::workflow::TaskOutputs,
) {
    let sources: Vec<String> = outputs
        .holders
        .iter()
        .filter(|h| state.worker(h).is_some_and(|w| w.state == flotilla_core::state::WorkerState::Ready))
        .filter_map(|h| state.endpoint(h).map(str::to_string))
        .collect();
    for file in &outputs.files {
        inputs.push(Input { from, file: file.clone(), sources: sources.clone() });
    }
}

/// `FLOTILLA_RESOURCE_GPU` for `gpu`: upper case, `-` as `_`.
pub fn resource_env_name(resource: &str) -> String {
    format!("FLOTILLA_RESOURCE_{}", resource.to_ascii_uppercase().replace('-', "_"))
}
