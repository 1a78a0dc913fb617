//! openraft's storage conformance suite against the redb log store and the state machine store,
//! plus restart and encoding checks of our own.

#![allow(clippy::result_large_err)]

use flotilla_core::{Command, JobSpec, Proposal};
use flotilla_raft::log_store::LogStore;
use flotilla_raft::state_machine::StateMachineStore;
use flotilla_raft::{StorageError, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(dir.path()).expect("open log");
        let sm = StateMachineStore::open(dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload }
}

fn submit(n: u64) -> EntryPayload<TypeConfig> {
    let spec = JobSpec { command: vec!["echo".into(), n.to_string()], ..Default::default() };
    EntryPayload::Normal(Proposal::new(1000 + n, vec![Command::SubmitJob { spec, request_id: None }]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_snapshot_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let entries: Vec<_> = (1..=5).map(|i| entry(1, i, submit(i))).collect();
        sm.apply(entries.clone()).await.unwrap();
        log.blocking_append(entries).await.unwrap();
        use openraft::RaftSnapshotBuilder;
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.unwrap().index, 5);
    assert_eq!(log.try_get_log_entries(1..6).await.unwrap().len(), 5);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 5);
    assert_eq!(sm.shared().read().state.jobs().count(), 5);
}

#[test]
fn raft_messages_round_trip_through_the_wire_codec() {
    let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(3, 2),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
        leader_commit: None,
        entries: vec![entry(3, 10, submit(1)), entry(3, 11, EntryPayload::Blank)],
    };
    let bytes = flotilla_proto::codec::encode("test", &req).unwrap();
    let back: openraft::raft::AppendEntriesRequest<TypeConfig> = flotilla_proto::codec::decode("test", &bytes).unwrap();
    assert_eq!(back.entries.len(), 2);
    assert_eq!(back.vote, req.vote);
    let resp: Result<openraft::raft::AppendEntriesResponse<u64>, String> =
        Ok(openraft::raft::AppendEntriesResponse::HigherVote(openraft::Vote::new(4, 1)));
    let bytes = flotilla_proto::codec::encode("test", &resp).unwrap();
    let back: Result<openraft::raft::AppendEntriesResponse<u64>, String> =
        flotilla_proto::codec::decode("test", &bytes).unwrap();
    assert_eq!(back, resp);
}

/// A long log reads back whole and in order across the in-memory tail and redb, before and
/// after a restart, and a truncate takes effect on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_entries_read_back_whole_across_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    let total = 10_000u64;
    for start in (1..=total).step_by(100) {
        let batch: Vec<_> = (start..start + 100).map(|i| entry(1, i, submit(i))).collect();
        log.blocking_append(batch).await.unwrap();
        assert_eq!(log.try_get_log_entries(start..start + 100).await.unwrap().len(), 100);
    }
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), total - 9)).await.unwrap();
    let all = log.try_get_log_entries(1..=total).await.unwrap();
    assert_eq!(all.len() as u64, total - 10);
    assert!(all.iter().enumerate().all(|(i, e)| e.log_id.index == i as u64 + 1), "contiguous, in order");
    assert_eq!(log.get_log_state().await.unwrap().last_log_id.unwrap().index, total - 10);
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.try_get_log_entries(1..=total).await.unwrap().len() as u64, total - 10);
}
