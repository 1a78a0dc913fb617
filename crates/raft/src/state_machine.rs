//! The state machine openraft drives: the in-memory [`ClusterState`], the last applied log id
//! and membership, plus the current snapshot persisted in `snapshot.redb`.
//!
//! Apply is in memory; durability comes from the log. On restart the state is loaded from the
//! last snapshot and openraft re-applies the committed log after it. Snapshot data that fails
//! to decode stops the master with an error naming the file: a replica never serves state it
//! cannot trust.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use flotilla_core::{ApplyCtx, ClusterState};
use flotilla_proto::codec;

use crate::{storage_error, Applied, LogId, Node, NodeId, StorageError, TypeConfig};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// The replicated data a master holds, exactly what a snapshot contains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, Node>,
    pub state: ClusterState,
}

/// The part shared with the rest of the master: read access and change notification.
pub struct Shared {
    data: RwLock<SmData>,
    applied: watch::Sender<u64>,
    /// An apply panicked: the state may be half-applied.
    poisoned: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Read access to the replicated state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        // An apply that panicked may have left the state half-applied: better no answer than
        // one no other replica would give (Raft is stopping this master meanwhile).
        if self.poisoned.load(Ordering::SeqCst) {
            panic!("the replicated state is unusable: applying an entry panicked");
        }
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an apply panicked (the master is stopping).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Fires with the last applied log index after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open snapshot store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("snapshot in {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: codec::DecodeError,
    },
}

impl OpenError {
    /// The stored data is damaged (as opposed to, say, held by another process).
    pub fn is_corruption(&self) -> bool {
        match self {
            OpenError::Corrupt { .. } => true,
            OpenError::Open { source, .. } => matches!(source, redb::Error::Corrupted(_)),
        }
    }
}

struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    db: Arc<Database>,
    snapshot_seq: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens `snapshot.redb` in `dir` and loads the state from the snapshot in it, if any.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join("snapshot.redb");
        let open_err = |source: redb::Error| OpenError::Open { path: path.clone(), source };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
        {
            let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
            txn.open_table(SNAPSHOT).map_err(|e| open_err(e.into()))?;
            txn.commit().map_err(|e| open_err(e.into()))?;
        }
        let stored = load_snapshot(&db).map_err(|e| match e {
            LoadError::Db(source) => open_err(source),
            LoadError::Decode(source) => OpenError::Corrupt { path: path.clone(), source },
        })?;
        let data = match &stored {
            Some(s) => codec::decode::<SmData>("snapshot", &s.data)
                .map_err(|source| OpenError::Corrupt { path: path.clone(), source })?,
            None => SmData::default(),
        };
        let index = data.last_applied.map(|l| l.index).unwrap_or(0);
        let (applied, _) = watch::channel(index);
        Ok(StateMachineStore {
            shared: Arc::new(Shared { data: RwLock::new(data), applied, poisoned: Default::default() }),
            db: Arc::new(db),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.shared.data.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn save_snapshot(&self, meta: SnapshotMeta<NodeId, Node>, data: Vec<u8>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let meta_bytes =
            codec::encode("snapshot meta", &meta).map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?;
        let result = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(SNAPSHOT)?;
                table.insert(KEY_META, meta_bytes.as_slice())?;
                table.insert(KEY_DATA, data.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(storage_error(subject, ErrorVerb::Write, &e)),
            Err(join) => Err(storage_error(subject, ErrorVerb::Write, &join)),
        }
    }
}

enum LoadError {
    Db(redb::Error),
    Decode(codec::DecodeError),
}

fn load_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, LoadError> {
    let txn = db.begin_read().map_err(|e| LoadError::Db(e.into()))?;
    let table = txn.open_table(SNAPSHOT).map_err(|e| LoadError::Db(e.into()))?;
    let meta = table.get(KEY_META).map_err(|e| LoadError::Db(e.into()))?;
    let data = table.get(KEY_DATA).map_err(|e| LoadError::Db(e.into()))?;
    match (meta, data) {
        (Some(meta), Some(data)) => {
            let meta = codec::decode("snapshot meta", meta.value()).map_err(LoadError::Decode)?;
            Ok(Some(StoredSnapshot { meta, data: data.value().to_vec() }))
        }
        _ => Ok(None),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (bytes, last_applied, membership) = {
            let data = self.shared.read();
            let bytes = codec::encode("snapshot", &*data)
                .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
            (bytes, data.last_applied, data.membership.clone())
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        self.save_snapshot(meta.clone(), bytes.clone()).await?;
        tracing::info!(last_applied = ?last_applied, bytes = bytes.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, Node>), StorageError> {
        let data = self.shared.read();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let last_index = {
            let mut data = self.write();
            for entry in entries {
                let log_id = entry.log_id;
                data.last_applied = Some(log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(Applied::default()),
                    EntryPayload::Normal(proposal) => {
                        let ctx = ApplyCtx { index: log_id.index, term: log_id.leader_id.term, at_ms: proposal.at_ms };
                        // A panic part-way through an entry leaves a state no other replica has:
                        // never serve it. The error stops Raft, and the master with it, loudly;
                        // on restart the entry is applied again from the last snapshot.
                        let applied =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| data.state.apply(ctx, &proposal)));
                        let Ok(responses) = applied else {
                            self.shared.poisoned.store(true, Ordering::SeqCst);
                            let e = std::io::Error::other(format!("applying entry {} panicked", log_id.index));
                            tracing::error!(index = log_id.index, "applying an entry panicked; stopping this master");
                            return Err(storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, &e));
                        };
                        out.push(Applied { responses });
                    }
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(log_id), m);
                        out.push(Applied::default());
                    }
                }
            }
            data.last_applied.map(|l| l.index).unwrap_or(0)
        };
        self.shared.applied.send_replace(last_index);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let new_data: SmData =
            codec::decode("snapshot", &bytes).map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, &e))?;
        if new_data.last_applied != meta.last_log_id {
            let e = std::io::Error::other(format!(
                "snapshot data is at {:?} but its meta says {:?}",
                new_data.last_applied, meta.last_log_id
            ));
            return Err(storage_error(subject, ErrorVerb::Read, &e));
        }
        self.save_snapshot(meta.clone(), bytes).await?;
        let index = new_data.last_applied.map(|l| l.index).unwrap_or(0);
        *self.write() = new_data;
        self.shared.applied.send_replace(index);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let loaded = tokio::task::spawn_blocking(move || load_snapshot(&db))
            .await
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        match loaded {
            Ok(Some(s)) => Ok(Some(Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) })),
            Ok(None) => Ok(None),
            Err(LoadError::Db(e)) => Err(storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e)),
            Err(LoadError::Decode(e)) => Err(storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e)),
        }
    }
}
