//! Property-based fuzzing of every decoder that reads bytes from another process or from
//! disk: worker session messages (both ways), Raft RPC payloads, log entries, the state and
//! its records as snapshots hold them, and job files and JSON bodies as users write them.
//!
//! Invariant: no input makes a decoder panic (or abort on an allocation it was talked into);
//! it answers with a value or an error. Inputs are random bytes, and valid encodings with
//! bytes flipped, inserted, removed or cut off (which reach far deeper into a decoder than
//! noise does).

use std::collections::BTreeMap;

use flotilla_core::command::{Command, Proposal, WorkerInfo};
use flotilla_core::model::{Captured, Fence, JobSpec, Outcome, TaskId, TaskLimits};
use flotilla_proto::api::SubmitRequest;
use flotilla_proto::codec;
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};
use flotilla_raft::TypeConfig;
use proptest::prelude::*;
use serde::de::DeserializeOwned;

/// Decodes `bytes` as every type a peer or a file can hand a member. Only a panic fails.
fn decode_all(bytes: &[u8]) {
    fn one<T: DeserializeOwned>(bytes: &[u8]) {
        let _ = codec::decode::<T>("fuzz", bytes);
    }
    one::<WorkerMsg>(bytes);
    one::<MasterMsg>(bytes);
    one::<Proposal>(bytes);
    one::<Command>(bytes);
    one::<openraft::raft::AppendEntriesRequest<TypeConfig>>(bytes);
    one::<openraft::raft::VoteRequest<u64>>(bytes);
    one::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(bytes);
    one::<Result<openraft::raft::AppendEntriesResponse<u64>, String>>(bytes);
    one::<openraft::Entry<TypeConfig>>(bytes);
    one::<flotilla_core::ClusterState>(bytes);
    one::<flotilla_core::state::Added>(bytes);
    one::<flotilla_core::state::Task>(bytes);
}

fn task() -> TaskId {
    TaskId::array(7, 3)
}

fn fence() -> Fence {
    Fence { term: 2, attempt: 1 }
}

/// Valid encodings of each kind, to be damaged.
fn samples() -> Vec<Vec<u8>> {
    let info = WorkerInfo {
        name: "w1".into(),
        instance: 9,
        cpus: 2,
        queue: 1,
        memory: Some(1 << 30),
        resources: BTreeMap::from([("gpu".into(), 1)]),
        labels: BTreeMap::from([("zone".into(), "a".into())]),
    };
    let outcome = Outcome {
        exit_code: Some(0),
        stdout: Captured { text: "4\n".into(), truncated: false, total_bytes: 2 },
        ..Default::default()
    };
    let run = RunTask {
        task: task(),
        fence: fence(),
        command: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec![("K".into(), "V".into())],
        cpus: 1,
        timeout_ms: Some(1000),
        stdin: Some("in".into()),
        limits: TaskLimits::default(),
        inputs: Vec::new(),
        outputs: Default::default(),
    };
    let spec = JobSpec { command: vec!["true".into()], ..JobSpec::default() };
    let commands = vec![
        Command::SubmitJob { spec: spec.clone(), request_id: Some("r".into()) },
        Command::RegisterWorker(info.clone()),
        Command::TaskFinished { task: task(), fence: fence(), worker: "w1".into(), outcome: outcome.clone() },
        Command::SubmitJobWith {
            spec,
            request_id: None,
            owner: Some("ci".into()),
            options: flotilla_core::workflow::JobOptions {
                limits: TaskLimits { memory: Some(64 << 20), open_files: Some(64), processes: Some(8) },
                after: vec![1, 2],
                after_finished: vec![3],
                replicas: Some(3),
                output_quota: None,
                each: vec![4],
                needs: vec![flotilla_core::workflow::TaskNeeds {
                    tasks: flotilla_core::index_set::IndexSet::range(5, 9),
                    needs: flotilla_core::index_set::IndexSet::range(1, 4),
                }],
            },
        },
        Command::TaskFinishedWith {
            task: task(),
            fence: fence(),
            worker: "w1".into(),
            outcome: outcome.clone(),
            outputs: flotilla_core::workflow::Outputs {
                files: vec![flotilla_core::workflow::OutputFile {
                    path: "a/b.txt".into(),
                    size: 3,
                    sha256: flotilla_core::workflow::Digest([7; 32]),
                }],
                holders: vec!["w1".into(), "w2".into()],
                error: None,
                logs: Vec::new(),
            },
        },
        Command::SetWorkerEndpoint { worker: "w1".into(), address: "127.0.0.1:9".into() },
    ];
    let mut out = vec![
        codec::encode(
            "s",
            &WorkerMsg::Hello { protocol: PROTOCOL_VERSION, info, known: vec![(task(), fence())], highest_term: 2 },
        ),
        codec::encode("s", &WorkerMsg::Finished { task: task(), fence: fence(), outcome }),
        codec::encode(
            "s",
            &WorkerMsg::Batch(vec![WorkerMsg::Heartbeat, WorkerMsg::Started { task: task(), fence: fence() }]),
        ),
        codec::encode("s", &MasterMsg { term: 2, body: MasterBody::Run(run.clone()) }),
        codec::encode(
            "s",
            &MasterMsg {
                term: 2,
                body: MasterBody::Batch(vec![
                    MasterBody::Ack { task: task(), fence: fence() },
                    RunTask { limits: TaskLimits { open_files: Some(64), ..Default::default() }, ..run }.into_body(),
                ]),
            },
        ),
        codec::encode("s", &Proposal::new(1_700_000_000_000, commands.clone())),
        codec::encode("s", &flotilla_core::ClusterState::default()),
    ];
    out.extend(commands.iter().map(|c| codec::encode("s", c)));
    out.into_iter().map(|r| r.expect("samples encode")).collect()
}

/// One way of damaging an encoding.
#[derive(Clone, Debug)]
enum Damage {
    Flip { at: usize, xor: u8 },
    Insert { at: usize, byte: u8 },
    Remove { at: usize },
    Cut { at: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Insert { at, byte }),
        any::<usize>().prop_map(|at| Damage::Remove { at }),
        any::<usize>().prop_map(|at| Damage::Cut { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match *d {
        Damage::Flip { at, xor } => {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
        Damage::Insert { at, byte } => {
            let i = at % (bytes.len() + 1);
            bytes.insert(i, byte);
        }
        Damage::Remove { at } => {
            let i = at % bytes.len();
            bytes.remove(i);
        }
        Damage::Cut { at } => bytes.truncate(at % bytes.len()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn damaged_encodings_never_panic_a_decoder(
        which in any::<usize>(),
        damages in proptest::collection::vec(damage(), 1..6),
    ) {
        let all = samples();
        let mut bytes = all[which % all.len()].clone();
        for d in &damages {
            apply(&mut bytes, d);
        }
        decode_all(&bytes);
    }

    /// Job files and API bodies: any text is parsed and checked without a panic.
    #[test]
    fn any_job_file_or_body_is_refused_or_checked_without_a_panic(text in job_text()) {
        if let Ok(request) = toml::from_str::<SubmitRequest>(&text) {
            let _ = request.to_spec();
            let _ = request.to_limits();
        }
        if let Ok(request) = serde_json::from_str::<SubmitRequest>(&text) {
            let _ = request.to_spec();
            let _ = request.to_limits();
        }
    }
}

/// Text shaped like a job file or a JSON body often enough to get past the parser: known
/// keys with odd values, as well as noise.
fn job_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[a-z0-9\\-,]{0,12}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        "\"[0-9]{0,20}[smhKMGT]?\"",
        Just("[\"sh\", \"-c\", \"true\"]".to_string()),
        Just("[]".to_string()),
        "\"[0-9]{1,19}-[0-9]{1,19}\"",
    ];
    let key = prop_oneof![
        Just("name"),
        Just("command"),
        Just("array"),
        Just("cpus"),
        Just("retries"),
        Just("timeout"),
        Just("priority"),
        Just("memory"),
        Just("spread"),
        Just("reduce"),
        Just("request_id"),
    ];
    let toml = proptest::collection::vec((key.clone(), value.clone()), 0..8)
        .prop_map(|pairs| pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>());
    let json = proptest::collection::vec((key, value), 0..8).prop_map(|pairs| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("{{{}}}", body.join(", "))
    });
    prop_oneof![toml, json, ".{0,200}"]
}
