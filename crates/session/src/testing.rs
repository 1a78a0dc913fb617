//! Test harness for the cores: a recording outbox that sends every message through the wire
//! encoding (so a message the codec cannot carry fails here, not on a real stream), and a
//! replicated state driven the way the Raft log drives it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_core::command::{Command, Proposal, Response, WorkerInfo};
use flotilla_core::model::JobSpec;
use flotilla_core::records::{MemRecords, RecordReader};
use flotilla_core::state::{ApplyCtx, ClusterState};
use flotilla_proto::codec;

/// Encodes and decodes `value`, asserting it comes back the same.
pub fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode("test message", value).expect("encodes");
    let back: T = codec::decode("test message", &bytes).expect("decodes");
    assert_eq!(&back, value, "a message changed through the wire encoding");
    back
}

/// Collects the effects of one input; `take` hands them over, each message round-tripped.
pub struct Outbox<E> {
    pub effects: Vec<E>,
}

impl<E> Default for Outbox<E> {
    fn default() -> Self {
        Outbox { effects: Vec::new() }
    }
}

pub trait Wire {
    /// Sends the effect's message (if any) through the encoding.
    fn through_wire(self) -> Self;
}

impl Wire for crate::leader::Effect {
    fn through_wire(self) -> Self {
        match self {
            crate::leader::Effect::Send { session, msg } => {
                crate::leader::Effect::Send { session, msg: round_trip(&msg) }
            }
            other => other,
        }
    }
}

impl Wire for crate::agent::Effect {
    fn through_wire(self) -> Self {
        match self {
            crate::agent::Effect::Send(msg) => crate::agent::Effect::Send(round_trip(&msg)),
            other => other,
        }
    }
}

impl<E: Wire> Outbox<E> {
    pub fn take(&mut self) -> Vec<E> {
        std::mem::take(&mut self.effects).into_iter().map(Wire::through_wire).collect()
    }

    /// Every effect was looked at.
    pub fn assert_empty(&self)
    where
        E: std::fmt::Debug,
    {
        assert!(self.effects.is_empty(), "effects left unchecked: {:?}", self.effects);
    }
}

/// A replicated state and a clock, applying commands as committed entries.
pub struct Cluster {
    pub state: ClusterState,
    pub records: MemRecords,
    pub t0: Instant,
    index: u64,
}

impl crate::leader::Replica for Cluster {
    fn read<R>(&self, f: impl FnOnce(&ClusterState, &dyn RecordReader) -> R) -> R {
        f(&self.state, &self.records)
    }
}

impl Cluster {
    pub fn new() -> Self {
        Cluster { state: ClusterState::new(), records: MemRecords::new(), t0: Instant::now(), index: 0 }
    }

    pub fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Commits one entry in `term`.
    pub fn commit(&mut self, term: u64, commands: Vec<Command>) -> Vec<Response> {
        self.index += 1;
        let at_ms = 1_000 + self.index;
        let responses = self.state.apply(ApplyCtx { index: self.index, term, at_ms }, &Proposal::new(at_ms, commands));
        self.records.apply(self.state.take_record_ops());
        self.state.sanity_check();
        responses
    }

    pub fn submit(&mut self, tasks: u64) -> u64 {
        let spec = JobSpec {
            command: vec!["true".into()],
            array: Some(flotilla_core::index_set::IndexSet::range(1, tasks)),
            ..Default::default()
        };
        match self.commit(1, vec![Command::SubmitJob { spec, request_id: None }]).pop() {
            Some(Response::JobSubmitted { job, .. }) => job,
            other => panic!("submit refused: {other:?}"),
        }
    }

    /// A job of `tasks` tasks whose tasks run under `limits`.
    pub fn submit_limited(&mut self, tasks: u64, limits: flotilla_core::model::TaskLimits) -> u64 {
        let spec = JobSpec {
            command: vec!["true".into()],
            array: Some(flotilla_core::index_set::IndexSet::range(1, tasks)),
            ..Default::default()
        };
        let options = flotilla_core::workflow::JobOptions { limits, ..Default::default() };
        let command = Command::SubmitJobWith { spec, request_id: None, owner: None, options };
        match self.commit(1, vec![command]).pop() {
            Some(Response::JobSubmitted { job, .. }) => job,
            other => panic!("submit refused: {other:?}"),
        }
    }
}

pub fn info(name: &str, instance: u64, cpus: u32) -> WorkerInfo {
    WorkerInfo {
        name: name.to_string(),
        instance,
        cpus,
        queue: 0,
        memory: None,
        resources: Default::default(),
        labels: BTreeMap::new(),
    }
}
