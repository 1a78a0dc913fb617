//! Encodings that outlive a release: Raft log entries (commands), snapshots (the cluster state
//! and the finished tasks' records) and worker sessions (the messages both ways).
//!
//! Invariant: every encoding an earlier release wrote still decodes, exactly, in this build.
//! A master reads the log and snapshot an older one left on disk or sent it, and talks to
//! workers one release behind, so a changed encoding would strand a rolling upgrade.
//!
//! `formats.golden` keeps, per sample, the bytes as the release named on its line wrote them.
//! The test decodes every line and checks that encoding the value again gives the same bytes
//! (nothing lost or read differently), and that each sample this build makes is on file.
//! `FLOTILLA_BLESS=1` appends the samples not on file yet, under this build's release; it
//! never rewrites a line, so it cannot hide a change that breaks an old one.
//!
//! When a line breaks: a command or message must not change; append a new variant instead
//! (gated by `flotilla_core::version::Feature` so no older member meets it). The state may
//! change only with a new snapshot format that converts the previous one (README "Rolling
//! upgrades"); the state lines then decode through that conversion.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use flotilla_core::command::{Command, MemberChange, Proposal, Response, WorkerInfo};
use flotilla_core::journal::Retention;
use flotilla_core::model::{Affinity, Captured, Fence, JobSpec, Outcome, Sharing, TaskId};
use flotilla_core::reason::LostReason;
use flotilla_core::records::{MemRecords, RecordOp};
use flotilla_core::state::{JobRetention, MaintenanceChange, Task};
use flotilla_core::{scheduler, ApplyCtx, ClusterState, IndexSet};
use flotilla_proto::codec;
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;

const RELEASE: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Command,
    State,
    Record,
    WorkerMsg,
    MasterMsg,
    /// The state 0.2.0 added (snapshot format 2's second section).
    Added,
}

impl Kind {
    const ALL: [Kind; 6] = [Kind::Command, Kind::State, Kind::Record, Kind::WorkerMsg, Kind::MasterMsg, Kind::Added];

    fn name(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::State => "state",
            Kind::Record => "record",
            Kind::WorkerMsg => "worker-msg",
            Kind::MasterMsg => "master-msg",
            Kind::Added => "added",
        }
    }

    /// Decodes `bytes` as this kind and encodes the value again.
    fn round_trip(self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Kind::Command => again::<Command>(bytes),
            Kind::State => again::<ClusterState>(bytes),
            Kind::Record => again::<Task>(bytes),
            Kind::WorkerMsg => again::<WorkerMsg>(bytes),
            Kind::MasterMsg => again::<MasterMsg>(bytes),
            Kind::Added => again::<flotilla_core::state::Added>(bytes),
        }
    }
}

fn again<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let value: T = codec::decode("sample", bytes).map_err(|e| e.to_string())?;
    codec::encode("sample", &value).map_err(|e| e.to_string())
}

/// This build's samples: `(kind, name) → bytes`, one per command, message and body variant
/// (a few twice), the state they lead to, and the task records it stored.
#[derive(Default)]
struct Samples(BTreeMap<(Kind, String), Vec<u8>>);

impl Samples {
    fn add(&mut self, kind: Kind, name: &str, value: &impl Serialize) {
        let bytes = codec::encode("sample", value).expect("samples encode");
        let mut key = name.to_string();
        let mut n = 1;
        while self.0.contains_key(&(kind, key.clone())) {
            n += 1;
            key = format!("{name}#{n}");
        }
        self.0.insert((kind, key), bytes);
    }
}

/// A variant's name, as `Debug` starts it.
fn variant(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}").chars().take_while(|c| c.is_alphanumeric()).collect()
}

/// Applies commands as the leader would and keeps each as a sample.
struct Script {
    state: ClusterState,
    records: MemRecords,
    index: u64,
    samples: Samples,
}

impl Script {
    fn apply(&mut self, command: Command) -> Response {
        self.index += 1;
        let at_ms = 1_700_000_000_000 + self.index * 10;
        let ctx = ApplyCtx { index: self.index, term: 2, at_ms };
        self.samples.add(Kind::Command, &variant(&command), &command);
        let mut responses = self.state.apply(ctx, &Proposal::new(at_ms, vec![command]));
        for op in self.state.take_record_ops() {
            if let RecordOp::Put { record, .. } = &op {
                self.samples.add(Kind::Record, "task", record.as_ref());
            }
            self.records.apply([op]);
        }
        responses.pop().expect("one response per command")
    }
}

fn worker(name: &str, zone: &str) -> WorkerInfo {
    WorkerInfo {
        name: name.into(),
        instance: 0x5eed,
        cpus: 2,
        queue: 1,
        memory: Some(1 << 30),
        resources: BTreeMap::from([("gpu".into(), 1)]),
        labels: BTreeMap::from([("zone".into(), zone.into())]),
    }
}

fn outcome(exit: i32, stdout: &str) -> Outcome {
    Outcome {
        exit_code: Some(exit),
        signal: None,
        timed_out: false,
        spawn_error: None,
        stdout: Captured::from_bytes(stdout.as_bytes(), stdout.len() as u64),
        stderr: Captured::from_bytes(b"warning\n", 8),
        duration_ms: 12,
        outputs: Default::default(),
    }
}

fn output_file() -> flotilla_core::workflow::OutputFile {
    flotilla_core::workflow::OutputFile {
        path: "part/1.txt".into(),
        size: 11,
        sha256: flotilla_core::workflow::Digest([0x5a; 32]),
    }
}

fn samples() -> Samples {
    let mut s =
        Script { state: ClusterState::new(), records: MemRecords::new(), index: 0, samples: Samples::default() };
    s.apply(Command::LeaderElected { node: 1 });
    s.apply(Command::SetClusterIdentity { id: 0x0123_4567_89ab_cdef });
    let incarnation = match s.apply(Command::RegisterWorker(worker("w1", "a"))) {
        Response::WorkerRegistered { incarnation, .. } => incarnation,
        other => panic!("registration refused: {other:?}"),
    };
    s.apply(Command::RegisterWorker(worker("w2", "b")));
    let spec = JobSpec {
        name: Some("sample".into()),
        command: vec!["echo".into(), "hi".into()],
        array: Some(IndexSet::parse("0-3").expect("indices")),
        cpus: 1,
        retries: 1,
        timeout_ms: Some(60_000),
        priority: 3,
        selector: BTreeMap::new(),
        reduce: Some("wc -l".into()),
        env: BTreeMap::from([("MODE".into(), "fast".into())]),
        resources: BTreeMap::new(),
        memory: Some(1 << 20),
        affinity: Affinity {
            prefer: BTreeMap::from([("zone".into(), "a".into())]),
            avoid: BTreeMap::new(),
            spread: Some("zone".into()),
        },
    };
    s.apply(Command::SubmitJob { spec: spec.clone(), request_id: Some("req-1".into()) });
    let second = match s.apply(Command::SubmitJob { spec: JobSpec { reduce: None, ..spec }, request_id: None }) {
        Response::JobSubmitted { job, .. } => job,
        other => panic!("submission refused: {other:?}"),
    };
    let placements = scheduler::plan(&s.state, usize::MAX);
    assert!(placements.len() >= 3, "the sample needs three placements, got {placements:?}");
    let runs = match s.apply(Command::Assign { placements }) {
        Response::Assigned { runs } => runs,
        other => panic!("assignment refused: {other:?}"),
    };
    let (a, b, c) = (&runs[0], &runs[1], &runs[2]);
    s.apply(Command::TaskStarted { task: a.task, fence: a.fence, worker: a.worker.clone() });
    s.apply(Command::TaskFinished {
        task: a.task,
        fence: a.fence,
        worker: a.worker.clone(),
        outcome: outcome(0, "0\n"),
    });
    s.apply(Command::TaskRevoked { task: b.task, fence: b.fence, worker: b.worker.clone() });
    s.apply(Command::TaskStarted { task: c.task, fence: c.fence, worker: c.worker.clone() });
    s.apply(Command::TaskFinished { task: c.task, fence: c.fence, worker: c.worker.clone(), outcome: outcome(1, "") });
    s.apply(Command::SetWorkerQueue { worker: "w1".into(), queue: 4 });
    s.apply(Command::MasterReachability { node: 3, reachable: false });
    s.apply(Command::SetJournalRetention(Retention { max_events: 50_000, max_age_ms: Some(86_400_000) }));
    s.apply(Command::SetSharing(Sharing::Fifo));
    s.apply(Command::SetJobRetention(JobRetention { max_age_ms: Some(3_600_000), max_finished: 500 }));
    s.apply(Command::MembershipChanged(MemberChange::LearnerAdded { node: 4, address: "10.0.0.4:7100".into() }));
    s.apply(Command::MembershipChanged(MemberChange::Promoted { node: 4 }));
    s.apply(Command::MembershipChanged(MemberChange::Removed { node: 3 }));
    s.apply(Command::SetMaintenance { worker: "w2".into(), change: MaintenanceChange::Cordon });
    s.apply(Command::SetMaintenance {
        worker: "w2".into(),
        change: MaintenanceChange::Drain { deadline_ms: Some(600_000), by_worker: false },
    });
    s.apply(Command::DrainOverdue { worker: "w2".into(), incarnation: 2 });
    s.apply(Command::SetMaintenance { worker: "w2".into(), change: MaintenanceChange::Uncordon });
    s.apply(Command::CancelJob { job: second });
    s.apply(Command::PurgeJobs { jobs: vec![second] });
    s.apply(Command::WorkerLost { name: "w2".into(), incarnation: 2, reason: LostReason::Silent { silent_ms: 5_000 } });
    s.apply(Command::WorkerLost { name: "w2".into(), incarnation: 3, reason: LostReason::Restarted });

    let task = TaskId::array(1, 0);
    let fence = Fence { term: 2, attempt: 1 };
    let run =
        RunTask::for_attempt(&s.state, &s.records, a.task, a.fence).expect("records read").expect("the job is there");
    let state = s.state.clone();
    // 0.2.0's tokens come after the state sample: they live in the access section, and the
    // job a token submits would change the state's bytes on file.
    let hash = flotilla_core::access::TokenHash([0xab; 32]);
    let admin = flotilla_core::access::Role::Admin;
    s.apply(Command::CreateToken { name: "alice".into(), role: admin, hash, by: "bootstrap".into() });
    let submit = flotilla_core::access::Role::Submit;
    s.apply(Command::CreateToken { name: "ci".into(), role: submit, hash, by: "alice".into() });
    let spec = JobSpec { command: vec!["true".into()], ..JobSpec::default() };
    s.apply(Command::SubmitJobAs { spec, request_id: Some("r-ci".into()), owner: "ci".into() });
    s.apply(Command::RevokeToken { name: "bootstrap".into() });
    s.apply(Command::Audit(flotilla_core::access::AuditRecord {
        who: "alice".into(),
        role: Some(admin),
        method: flotilla_core::access::Method::Delete,
        path: "/v1/tokens/bootstrap".into(),
        status: 200,
        from: "10.0.0.9:51000".into(),
    }));
    let limits = flotilla_core::model::TaskLimits { memory: Some(64 << 20), open_files: Some(64), processes: None };
    let spec = JobSpec { command: vec!["sleep".into(), "1".into()], ..JobSpec::default() };
    let options = flotilla_core::workflow::JobOptions { limits: limits.clone(), ..Default::default() };
    let limited = s.apply(Command::SubmitJobWith { spec, request_id: None, owner: Some("ci".into()), options });
    let Response::JobSubmitted { job: limited, .. } = limited else { panic!("{limited:?}") };
    assert_eq!(s.state.task_limits(limited), Some(&limits));
    // 0.2.0's workflows: an attempt that leaves outputs, a job that waits for another, and
    // where a worker serves what it holds.
    s.apply(Command::SetWorkerEndpoint { worker: "w1".into(), address: "10.0.0.11:7300".into() });
    let spec = JobSpec { command: vec!["true".into()], ..JobSpec::default() };
    let Response::JobSubmitted { job: producer, .. } = s.apply(Command::SubmitJob { spec, request_id: None }) else {
        panic!("producer refused")
    };
    let placements = scheduler::plan(&s.state, usize::MAX);
    let Response::Assigned { runs } = s.apply(Command::Assign { placements }) else { panic!("no assignment") };
    let made = runs.iter().find(|r| r.task.job == producer).expect("the producer is placed");
    s.apply(Command::TaskStarted { task: made.task, fence: made.fence, worker: made.worker.clone() });
    let file = output_file();
    let outputs = flotilla_core::workflow::Outputs {
        files: vec![file.clone()],
        holders: vec![made.worker.clone(), "w3".into()],
        error: None,
        logs: vec![flotilla_core::workflow::LogFile {
            stream: flotilla_core::workflow::LogStream::Stdout,
            size: 1 << 20,
            sha256: flotilla_core::workflow::Digest([5; 32]),
        }],
    };
    s.apply(Command::TaskFinishedWith {
        task: made.task,
        fence: made.fence,
        worker: made.worker.clone(),
        outcome: outcome(0, ""),
        outputs,
    });
    let options = flotilla_core::workflow::JobOptions {
        after: vec![producer],
        after_finished: vec![limited],
        replicas: Some(3),
        output_quota: Some(1 << 30),
        ..Default::default()
    };
    let spec = JobSpec { command: vec!["cat".into()], ..JobSpec::default() };
    s.apply(Command::SubmitJobWith { spec, request_id: Some("r-after".into()), owner: None, options });
    // Task-level dependencies (0.2.0): pairing with the producer, and tasks needing others.
    let paired = flotilla_core::workflow::JobOptions { each: vec![producer], ..Default::default() };
    let spec = JobSpec { command: vec!["cat".into()], ..JobSpec::default() };
    s.apply(Command::SubmitJobWith { spec, request_id: None, owner: None, options: paired });
    let chained = flotilla_core::workflow::JobOptions {
        needs: vec![flotilla_core::workflow::TaskNeeds {
            tasks: flotilla_core::index_set::IndexSet::range(3, 3),
            needs: flotilla_core::index_set::IndexSet::range(1, 2),
        }],
        ..Default::default()
    };
    let spec = JobSpec {
        command: vec!["cat".into()],
        array: Some(flotilla_core::index_set::IndexSet::range(1, 3)),
        ..JobSpec::default()
    };
    s.apply(Command::SubmitJobWith { spec, request_id: None, owner: None, options: chained });
    // 0.2.0's autoscaling: a pool with a launch on its way and a failed one.
    use flotilla_core::autoscale as scale;
    let mut policy = scale::Policy::new(
        scale::ProviderSpec::Slurm {
            partition: Some("batch".into()),
            time_limit_min: Some(60),
            args: vec!["--mem=4G".into()],
        },
        1,
        4,
    );
    policy.selector = BTreeMap::from([("pool".into(), "big".into())]);
    policy.worker_cpus = Some(8);
    policy.target = scale::Target::OldestWaiting { ms: 30_000 };
    s.apply(Command::SetAutoscale { pool: "auto".into(), policy });
    let reason = scale::ScaleUpReason::Demand { waiting_tasks: 40, want_cpus: 40, have_cpus: 0 };
    s.apply(Command::ScaleUp { pool: "auto".into(), count: 2, reason });
    let started = scale::LaunchOutcome::Started { handle: Some("1234".into()) };
    s.apply(Command::LaunchReported { pool: "auto".into(), worker: "auto-1".into(), outcome: started });
    let failed = scale::LaunchOutcome::Failed(scale::LaunchFailure::Provider { detail: "sbatch: error".into() });
    s.apply(Command::LaunchReported { pool: "auto".into(), worker: "auto-2".into(), outcome: failed });
    let added = s.state.added().clone();
    assert!(!added.is_empty() && s.state.access().bootstrap_revoked());
    let reason = scale::ScaleDownReason::Idle { idle_ms: 300_000 };
    s.apply(Command::ScaleDown { pool: "auto".into(), workers: vec!["auto-1".into()], reason });
    s.apply(Command::LaunchEnded { pool: "auto".into(), worker: "auto-1".into(), why: scale::LaunchEnd::NeverJoined });
    s.apply(Command::ResumeAutoscale { pool: "auto".into() });
    let scripted =
        scale::Policy::new(scale::ProviderSpec::Command { add: "add.sh".into(), remove: "rm.sh".into() }, 0, 1);
    s.apply(Command::SetAutoscale { pool: "spare".into(), policy: scripted });
    s.apply(Command::RemoveAutoscale { pool: "spare".into() });
    // 0.2.0's repair of outputs' copies (after the sample of the state above: they change it).
    s.apply(Command::CopiesAdded { worker: "w2".into(), tasks: vec![made.task] });
    s.apply(Command::CopiesCorrupt { worker: "w3".into(), digests: vec![file.sha256] });
    // 0.2.0's schedules.
    let schedule = flotilla_core::schedule::Schedule::new(
        "0 3 * * *",
        "Europe/Berlin",
        flotilla_core::schedule::Overlap::Skip,
        JobSpec { command: vec!["backup".into()], ..JobSpec::default() },
        Default::default(),
        Some("ci".into()),
    );
    s.apply(Command::AddSchedule { name: "nightly".into(), schedule: Box::new(schedule) });
    s.apply(Command::PauseSchedule { name: "nightly".into(), paused: true });
    s.apply(Command::LaunchPeriod { name: "nightly".into(), period: 1_764_730_800_000 });
    s.apply(Command::RemoveSchedule { name: "nightly".into() });
    let mut samples = s.samples;
    samples.add(Kind::State, "after-script", &state);
    samples.add(Kind::Added, "after-tokens", &added);

    let worker_msgs = vec![
        WorkerMsg::Hello {
            protocol: PROTOCOL_VERSION,
            info: worker("w1", "a"),
            known: vec![(task, fence)],
            highest_term: 2,
        },
        WorkerMsg::Heartbeat,
        WorkerMsg::Started { task, fence },
        WorkerMsg::Finished { task, fence, outcome: outcome(0, "0\n") },
        WorkerMsg::Batch(vec![WorkerMsg::Heartbeat, WorkerMsg::Started { task, fence }]),
        WorkerMsg::Queue { queue: 3 },
        WorkerMsg::Stats {
            running: 1,
            queued: 2,
            spawned: 10,
            spawn_micros: 900,
            echo: Some(7),
            rtt_micros: Some(150),
        },
        WorkerMsg::Revoked { task, fence },
        WorkerMsg::Drain { deadline_ms: Some(60_000) },
        WorkerMsg::Version { version: "0.2.0".into() },
        WorkerMsg::FinishedWith {
            task,
            fence,
            outcome: outcome(0, ""),
            outputs: flotilla_core::workflow::Outputs {
                files: vec![output_file()],
                holders: vec!["w1".into()],
                error: None,
                logs: vec![flotilla_core::workflow::LogFile {
                    stream: flotilla_core::workflow::LogStream::Stderr,
                    size: 70_000,
                    sha256: flotilla_core::workflow::Digest([6; 32]),
                }],
            },
        },
        WorkerMsg::FinishedWith {
            task,
            fence,
            outcome: outcome(0, ""),
            outputs: flotilla_core::workflow::Outputs {
                files: Vec::new(),
                holders: Vec::new(),
                error: Some(flotilla_core::workflow::OutputError::OverQuota { quota: 1024 }),
                logs: Vec::new(),
            },
        },
        WorkerMsg::Serves { address: "10.0.0.11:7300".into() },
        WorkerMsg::Holds { tasks: vec![task] },
        WorkerMsg::CopyFailed {
            task,
            error: flotilla_core::workflow::OutputError::InputUnavailable { task, path: "part-0.txt".into() },
        },
        WorkerMsg::Corrupt { digests: vec![output_file().sha256] },
        WorkerMsg::Inventory { digests: vec![output_file().sha256] },
    ];
    for m in &worker_msgs {
        samples.add(Kind::WorkerMsg, &variant(m), m);
    }
    let bodies = vec![
        MasterBody::Welcome { leader: 1, incarnation, heartbeat_ms: 500 },
        MasterBody::NotLeader { leader: Some("10.0.0.2:7100".into()) },
        MasterBody::Refused { reason: "protocol 2 is not 3".into() },
        MasterBody::Run(run.clone()),
        MasterBody::Stop { task, fence },
        MasterBody::Ack { task, fence },
        MasterBody::Batch(vec![MasterBody::Ack { task, fence }, MasterBody::Drained]),
        MasterBody::Echo { token: 7 },
        MasterBody::Revoke { task, fence },
        MasterBody::Members { addresses: vec!["10.0.0.1:7100".into(), "10.0.0.4:7100".into()] },
        MasterBody::Drained,
        RunTask { limits: limits.clone(), ..run.clone() }.into_body(),
        RunTask {
            inputs: vec![flotilla_proto::wire::Input {
                from: task,
                file: output_file(),
                sources: vec!["10.0.0.11:7300".into()],
            }],
            outputs: flotilla_proto::wire::OutputPolicy { replicas: 1, quota: 4096 },
            ..run.clone()
        }
        .into_body(),
        MasterBody::Peers { peers: vec![("w3".into(), "10.0.0.13:7300".into())] },
        MasterBody::Replicate { task, files: vec![output_file()], sources: vec!["10.0.0.11:7300".into()] },
        MasterBody::Discard { digests: vec![output_file().sha256] },
    ];
    for body in bodies {
        let name = variant(&body);
        samples.add(Kind::MasterMsg, &name, &MasterMsg { term: 2, body });
    }
    samples
}

struct Line {
    number: usize,
    release: String,
    kind: Kind,
    name: String,
    bytes: Vec<u8>,
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("formats.golden")
}

fn read_golden() -> Vec<Line> {
    let text = std::fs::read_to_string(golden_path()).unwrap_or_default();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [release, kind, name, hex] = fields[..] else { panic!("formats.golden line {}: expected 4 fields", i + 1) };
        let kind =
            Kind::ALL.into_iter().find(|k| k.name() == kind).unwrap_or_else(|| panic!("line {}: kind {kind}", i + 1));
        lines.push(Line { number: i + 1, release: release.into(), kind, name: name.into(), bytes: unhex(hex) });
    }
    lines
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn encodings_written_by_earlier_releases_still_decode_exactly() {
    let golden = read_golden();
    let mut broken = Vec::new();
    for line in &golden {
        let problem = match line.kind.round_trip(&line.bytes) {
            Ok(again) if again == line.bytes => continue,
            Ok(_) => "decodes to something else".to_string(),
            Err(e) => format!("no longer decodes: {e}"),
        };
        broken.push(format!(
            "line {}: {} {} written by {} {problem}",
            line.number,
            line.kind.name(),
            line.name,
            line.release
        ));
    }
    assert!(
        broken.is_empty(),
        "encodings changed (see this file's comment for what to do instead):\n{}",
        broken.join("\n")
    );

    let samples = samples();
    let missing: Vec<_> = samples
        .0
        .iter()
        .filter(|((kind, name), bytes)| {
            !golden.iter().any(|l| l.kind == *kind && &l.name == name && &l.bytes == *bytes)
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        let mut text = std::fs::read_to_string(golden_path()).unwrap_or_default();
        for ((kind, name), bytes) in &missing {
            let _ = writeln!(text, "{RELEASE} {} {name} {}", kind.name(), hex(bytes));
        }
        std::fs::write(golden_path(), text).expect("write formats.golden");
        return;
    }
    let names: Vec<String> = missing.iter().map(|((k, n), _)| format!("{} {n}", k.name())).collect();
    panic!(
        "samples not on file in formats.golden: {}. A new variant or a new sample: record it with \
         FLOTILLA_BLESS=1 cargo test -p flotilla-proto --test formats. A changed one: see this file's comment.",
        names.join(", ")
    );
}
