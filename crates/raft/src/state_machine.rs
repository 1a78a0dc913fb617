//! The state machine openraft drives: the in-memory [`ClusterState`] (what scheduling and the
//! API need), the finished tasks' records in `state.redb` ([`crate::state_store`]), the last
//! applied log id and membership, and the current snapshot in `snapshot.bin`.
//!
//! Apply changes the memory and stores the same batch's records before it releases the state
//! lock, so a reader that opens the records while it holds the lock sees both at one index.
//!
//! Snapshots never stop apply for long: building one holds the lock only to clone the
//! in-memory part (small: it has no records) and to open a read transaction of the records;
//! the file is written from those on a blocking thread while apply goes on. The file is the
//! in-memory part followed by every record; openraft sends it in chunks, a follower writes the
//! chunks to `snapshot.incoming` and installs it record by record into the spare records table
//! (memory stays bounded at both ends).
//!
//! Restart reads only the in-memory part from `snapshot.bin` (the records stay on disk), and
//! openraft re-applies the committed log after it. The records are at least as new as the
//! snapshot (they are persisted before a snapshot is kept), and re-applying an entry whose
//! records are already stored rewrites the same records. Data that fails to decode stops the
//! master with an error naming the file: a replica never serves state it cannot trust.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use flotilla_core::{ApplyCtx, ClusterState};
use flotilla_proto::codec;

use crate::state_store::{Records, StateStore, StoreError, Ticket};
use crate::{storage_error, Applied, LogId, Node, NodeId, StorageError, TypeConfig};

/// The files of a master's replicated state in its data directory (besides the Raft log).
pub const STATE_FILES: [&str; 3] = ["state.redb", "snapshot.bin", "snapshot.incoming"];
const SNAPSHOT_FILE: &str = "snapshot.bin";
const INCOMING_FILE: &str = "snapshot.incoming";
const BUILDING_FILE: &str = "snapshot.building";
/// The last digit is the snapshot format: the header's encoding of the state (its bytes as each
/// release wrote them are checked by `crates/proto/tests/formats.rs`). A release that changes
/// the state's encoding writes the next digit, reads the previous one by converting it, and
/// writes the new one only once every voter reads it (a follower installs the leader's file).
pub(crate) const MAGIC: &[u8; 8] = b"FLOTSNP1";
/// Format 2 (0.2.0): format 1's header, then a length and the state 0.2.0 added
/// (`flotilla_core::state::Added`: named tokens, job owners, task limits). Written only while
/// that holds something, which needs every voter at 0.2.0 or later (`Feature::Tokens`,
/// `Feature::TaskLimits`): a cluster that never used them still writes format 1, which 0.1.0
/// reads.
pub(crate) const MAGIC_2: &[u8; 8] = b"FLOTSNP2";
/// Frame that ends the rows of a snapshot file (no row has this key).
const END_KEY: (u64, u64, u64) = (u64::MAX, u64::MAX, u64::MAX);

/// The replicated data a master holds in memory: a snapshot's header.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, Node>,
    pub state: ClusterState,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) meta: SnapshotMeta<NodeId, Node>,
    pub(crate) data: SmData,
}

/// Figures of the snapshots this master built or installed (for metrics and the soak).
#[derive(Default)]
pub struct SnapshotFigures {
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    pub build_micros: AtomicU64,
    /// Longest time building a snapshot held the state lock (apply waits that long at most).
    pub longest_hold_micros: AtomicU64,
    pub built: AtomicU64,
    pub installed: AtomicU64,
}

/// The part shared with the rest of the master: read access and change notification.
pub struct Shared {
    data: RwLock<SmData>,
    pub(crate) store: StateStore,
    applied: watch::Sender<u64>,
    /// An apply panicked: the state may be half-applied.
    poisoned: std::sync::atomic::AtomicBool,
    pub snapshots: SnapshotFigures,
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

    /// The finished tasks' records as of the last applied batch, on their way. Take the
    /// ticket while holding [`Shared::read`] and the records match exactly that state (it is
    /// fine to let go of the state before waiting).
    pub fn records(&self) -> Ticket {
        self.store.barrier()
    }

    /// [`Shared::records`] taken only when first read, and waited for then: for callers that
    /// rarely need records (the leader's session core reads them only to send a reduce step
    /// its input). Read it only while holding [`Shared::read`].
    pub fn records_when_read(&self) -> LazyRecords<'_> {
        LazyRecords { store: &self.store, records: std::sync::OnceLock::new() }
    }

    /// Whether an apply panicked (the master is stopping).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Fires with the last applied log index after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Bytes of the records store file.
    pub fn store_bytes(&self) -> u64 {
        self.store.file_bytes()
    }
}

/// See [`Shared::records_when_read`].
pub struct LazyRecords<'a> {
    store: &'a StateStore,
    records: std::sync::OnceLock<Records>,
}

impl LazyRecords<'_> {
    fn get(&self) -> &Records {
        self.records.get_or_init(|| self.store.barrier().wait())
    }
}

impl flotilla_core::records::RecordReader for LazyRecords<'_> {
    fn record(
        &self,
        task: flotilla_core::TaskId,
    ) -> Result<Option<flotilla_core::state::Task>, flotilla_core::records::RecordError> {
        self.get().record(task)
    }

    fn array_records(
        &self,
        job: flotilla_core::JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, flotilla_core::state::Task)>, flotilla_core::records::RecordError> {
        self.get().array_records(job, from, limit)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path} was written by an older Flotilla whose snapshot format this version does not read; \
         start this master with an empty data directory (it catches up from its peers)"
    )]
    OldFormat { path: PathBuf },
}

impl OpenError {
    /// The stored data is damaged (as opposed to, say, held by another process).
    pub fn is_corruption(&self) -> bool {
        match self {
            OpenError::Corrupt { .. } => true,
            OpenError::Store(e) => e.is_corruption(),
            OpenError::Io { .. } | OpenError::OldFormat { .. } => false,
        }
    }
}

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    dir: PathBuf,
    /// The snapshot in `snapshot.bin`; builds and installs replace it only by a newer one.
    current: Arc<Mutex<Option<SnapshotMeta<NodeId, Node>>>>,
    snapshot_seq: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state in `dir`: the records store, and the in-memory part from the snapshot
    /// file, if any.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let snapshot = dir.join(SNAPSHOT_FILE);
        let old = dir.join("snapshot.redb");
        if old.exists() && !snapshot.exists() {
            // Written by an older version (its snapshot held every result in one value): starting
            // without it would lose the state the purged log no longer has.
            return Err(OpenError::OldFormat { path: old });
        }
        let store = StateStore::open(&dir.join("state.redb"))?;
        finish_interrupted_install(dir, &store)?;
        let _ = fs::remove_file(dir.join(BUILDING_FILE));
        let (data, current) = if snapshot.exists() {
            let header = read_header_of(&snapshot)?;
            (header.data, Some(header.meta))
        } else {
            (SmData::default(), None)
        };
        let index = data.last_applied.map(|l| l.index).unwrap_or(0);
        let (applied, _) = watch::channel(index);
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                store,
                applied,
                poisoned: Default::default(),
                snapshots: SnapshotFigures::default(),
            }),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.shared.data.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn open_snapshot(&self, meta: SnapshotMeta<NodeId, Node>) -> Result<Snapshot<TypeConfig>, StorageError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| storage_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

/// A crash after an install made the new records live but before its file was renamed into
/// place: the file goes with the records, so it becomes the snapshot. Any other leftover of an
/// install is dropped (the leader sends the snapshot again).
fn finish_interrupted_install(dir: &Path, store: &StateStore) -> Result<(), OpenError> {
    let incoming = dir.join(INCOMING_FILE);
    if !incoming.exists() {
        return Ok(());
    }
    let installed = store.installed()?;
    // The same snapshot may have been sent again after its install and cut short by the
    // crash: only a complete file goes with the records.
    let matches = match read_header_of(&incoming) {
        Ok(header) => {
            installed.as_deref() == Some(header.meta.snapshot_id.as_str()) && check_complete(&incoming).is_ok()
        }
        Err(_) => false,
    };
    let io = |source| OpenError::Io { path: incoming.clone(), source };
    if matches {
        fs::rename(&incoming, dir.join(SNAPSHOT_FILE)).map_err(io)?;
        sync_dir(dir).map_err(io)?;
    } else {
        fs::remove_file(&incoming).map_err(io)?;
    }
    Ok(())
}

fn read_header_of(path: &Path) -> Result<Header, OpenError> {
    let file = fs::File::open(path).map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?;
    let len = file.metadata().map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?.len();
    read_header(&mut BufReader::new(file), len)
        .map_err(|reason| OpenError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() })
}

/// Reads a whole snapshot file through its end frame: it was written or received completely.
fn check_complete(path: &Path) -> Result<(), FileError> {
    let file = fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    read_header(&mut r, file_len)?;
    let mut rows = 0;
    loop {
        let key = (read_u64(&mut r)?, read_u64(&mut r)?, read_u64(&mut r)?);
        let len = u64::from(read_u32(&mut r)?);
        if key == END_KEY {
            break;
        }
        std::io::copy(&mut (&mut r).take(len), &mut std::io::sink())?;
        rows += 1;
    }
    let expected = read_u64(&mut r)?;
    if rows != expected {
        return Err(FileError::Count { found: rows, expected });
    }
    Ok(())
}

/// Why a snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a snapshot file (bad magic)")]
    Magic,
    #[error(transparent)]
    Decode(#[from] codec::DecodeError),
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a length of {len} bytes in a file of {file_len}")]
    Length { len: u64, file_len: u64 },
    #[error("the file holds {found} rows but says {expected}")]
    Count { found: u64, expected: u64 },
    #[error("snapshot data is at {data:?} but its meta says {meta:?}")]
    Mismatch { data: Option<LogId>, meta: Option<LogId> },
}

pub(crate) fn read_header(r: &mut impl Read, file_len: u64) -> Result<Header, FileError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    let with_access = match &magic {
        m if m == MAGIC => false,
        m if m == MAGIC_2 => true,
        _ => return Err(FileError::Magic),
    };
    let mut header: Header = codec::decode("snapshot header", &read_section(r, file_len)?)?;
    if with_access {
        let added = codec::decode("snapshot section of 0.2.0's state", &read_section(r, file_len)?)?;
        header.data.state.restore_added(added);
    }
    Ok(header)
}

/// A length, then that many bytes.
fn read_section(r: &mut impl Read, file_len: u64) -> Result<Vec<u8>, FileError> {
    let len = read_u64(r)?;
    // A length read from disk is checked before anything is allocated for it.
    if len > file_len {
        return Err(FileError::Length { len, file_len });
    }
    let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| FileError::Magic)?];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Writes the magic and the header (format 2 only when the state holds something of 0.2.0's);
/// returns the bytes written.
pub(crate) fn write_header(w: &mut impl Write, header: &Header) -> Result<u64, FileError> {
    let head = codec::encode("snapshot header", header)?;
    let added = header.data.state.added();
    let sections = if added.is_empty() {
        w.write_all(MAGIC)?;
        vec![head]
    } else {
        w.write_all(MAGIC_2)?;
        vec![head, codec::encode("snapshot section of 0.2.0's state", added)?]
    };
    let mut bytes = MAGIC.len() as u64;
    for section in sections {
        w.write_all(&(section.len() as u64).to_le_bytes())?;
        w.write_all(&section)?;
        bytes += 8 + section.len() as u64;
    }
    Ok(bytes)
}

pub(crate) fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// What writing a snapshot file produced.
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) records: u64,
}

/// Writes `header` and every row of records to `path`, and fsyncs it. Each row is a frame:
/// `[job u64][bucket u64][part u64][length u32][row]`; then an end frame and the row count.
pub(crate) fn write_snapshot(path: &Path, header: &Header, records: &Records) -> Result<Written, FileError> {
    let file = fs::File::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut bytes = write_header(&mut w, header)?;
    let mut rows = 0u64;
    let mut count = 0u64;
    for item in records.raw()? {
        let ((job, bucket, part), value) = item?;
        w.write_all(&job.to_le_bytes())?;
        w.write_all(&bucket.to_le_bytes())?;
        w.write_all(&part.to_le_bytes())?;
        w.write_all(&(value.len() as u32).to_le_bytes())?;
        w.write_all(&value)?;
        bytes += 28 + value.len() as u64;
        rows += 1;
        count += crate::state_store::row_len(&value);
    }
    w.write_all(&END_KEY.0.to_le_bytes())?;
    w.write_all(&END_KEY.1.to_le_bytes())?;
    w.write_all(&END_KEY.2.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&rows.to_le_bytes())?;
    bytes += 36;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Written { bytes, records: count })
}

/// Whether `file` is the file at `path`.
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = Instant::now();
        // The only moment apply waits: the in-memory part is cloned and the records' read
        // transaction opened at the same applied index.
        let (data, ticket) = {
            let data = self.shared.read();
            (data.clone(), self.shared.store.barrier())
        };
        let held = started.elapsed();
        let records = ticket.wait_async().await;
        if held > HOLD_WARNING {
            tracing::warn!(held_ms = held.as_millis() as u64, "building a snapshot held the state lock long");
        }
        self.shared.snapshots.longest_hold_micros.fetch_max(held.as_micros() as u64, Ordering::Relaxed);
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match data.last_applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("empty-{seq}"),
        };
        let meta =
            SnapshotMeta { last_log_id: data.last_applied, last_membership: data.membership.clone(), snapshot_id };
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let dir = self.dir.clone();
        let shared = self.shared.clone();
        let current = self.current.clone();
        let header = Header { meta: meta.clone(), data };
        let built = tokio::task::spawn_blocking(move || -> Result<Option<Written>, FileError> {
            let building = dir.join(BUILDING_FILE);
            let written = write_snapshot(&building, &header, &records)?;
            drop(records);
            // The snapshot is kept only once the records it covers are durable.
            shared.store.persist()?;
            let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
            if current.as_ref().is_some_and(|c| c.last_log_id > header.meta.last_log_id) {
                // An installed snapshot overtook this one meanwhile.
                fs::remove_file(&building)?;
                return Ok(None);
            }
            fs::rename(&building, dir.join(SNAPSHOT_FILE))?;
            sync_dir(&dir)?;
            *current = Some(header.meta);
            Ok(Some(written))
        })
        .await
        .map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?
        .map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?;
        let took = started.elapsed();
        if let Some(w) = &built {
            let f = &self.shared.snapshots;
            f.bytes.store(w.bytes, Ordering::Relaxed);
            f.records.store(w.records, Ordering::Relaxed);
            f.build_micros.store(took.as_micros() as u64, Ordering::Relaxed);
            f.built.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                last_applied = ?meta.last_log_id,
                bytes = w.bytes,
                records = w.records,
                took_ms = took.as_millis() as u64,
                lock_held_us = held.as_micros() as u64,
                "snapshot built"
            );
        }
        let newest = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or(meta);
        self.open_snapshot(newest).await
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
            // Queued before the lock goes: a reader taken under the lock sees these records.
            let ops = data.state.take_record_ops();
            if let Err(e) = self.shared.store.queue(ops) {
                // The memory moved on without its records: stop rather than serve it.
                self.shared.poisoned.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot store task records; stopping this master");
                return Err(storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, &e));
            }
            data.last_applied.map(|l| l.index).unwrap_or(0)
        };
        self.shared.applied.send_replace(last_index);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.dir.join(INCOMING_FILE);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        snapshot.flush().await.map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?;
        snapshot.sync_all().await.map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?;
        let received = snapshot.into_std().await;
        let dir = self.dir.clone();
        let shared = self.shared.clone();
        let current = self.current.clone();
        let want = meta.clone();
        let installed = tokio::task::spawn_blocking(move || -> Result<(u64, u64, u64), FileError> {
            let incoming = dir.join(INCOMING_FILE);
            if !same_file(&received, &incoming) {
                // Handed a snapshot that did not arrive through `begin_receiving_snapshot`
                // (openraft's storage tests do that): it becomes the incoming file first.
                let mut from = received;
                from.seek(std::io::SeekFrom::Start(0))?;
                let mut to = fs::File::create(&incoming)?;
                std::io::copy(&mut from, &mut to)?;
                to.sync_all()?;
            }
            let bytes = fs::metadata(&incoming)?.len();
            let mut r = BufReader::with_capacity(1 << 20, fs::File::open(&incoming)?);
            let header = read_header(&mut r, bytes)?;
            if header.data.last_applied != want.last_log_id || header.meta.last_log_id != want.last_log_id {
                return Err(FileError::Mismatch { data: header.data.last_applied, meta: want.last_log_id });
            }
            let mut install = shared.store.install()?;
            let mut records = 0;
            loop {
                let key = (read_u64(&mut r)?, read_u64(&mut r)?, read_u64(&mut r)?);
                let len = read_u32(&mut r)?;
                if key == END_KEY {
                    break;
                }
                if u64::from(len) > bytes {
                    return Err(FileError::Length { len: u64::from(len), file_len: bytes });
                }
                let mut value = vec![0u8; len as usize];
                r.read_exact(&mut value)?;
                records += crate::state_store::row_len(&value);
                install.put(key, value)?;
            }
            let expected = read_u64(&mut r)?;
            if install.count() != expected {
                return Err(FileError::Count { found: install.count(), expected });
            }
            // Records, file and memory change together, under the lock readers take.
            // A snapshot build renames its file under `current` too: it cannot put an older
            // snapshot over this one.
            let mut data = shared.data.write().unwrap_or_else(|p| p.into_inner());
            let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
            install.finish(&want.snapshot_id)?;
            fs::rename(&incoming, dir.join(SNAPSHOT_FILE))?;
            sync_dir(&dir)?;
            let index = header.data.last_applied.map(|l| l.index).unwrap_or(0);
            *data = header.data;
            *current = Some(header.meta);
            Ok((index, bytes, records))
        })
        .await
        .map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, &e))?;
        let (index, bytes, records) = installed.map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, &e))?;
        self.shared.applied.send_replace(index);
        let f = &self.shared.snapshots;
        f.installed.fetch_add(1, Ordering::Relaxed);
        f.bytes.store(bytes, Ordering::Relaxed);
        f.records.store(records, Ordering::Relaxed);
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            bytes,
            records,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match current {
            Some(meta) => Ok(Some(self.open_snapshot(meta).await?)),
            None => Ok(None),
        }
    }
}

/// How long building a snapshot may hold the state lock before it is worth a warning.
pub const HOLD_WARNING: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::access::{Role, TokenHash};
    use flotilla_core::{Command, Proposal};

    fn header_of(state: ClusterState) -> Header {
        Header { meta: SnapshotMeta::default(), data: SmData { state, ..SmData::default() } }
    }

    fn round_trip(header: &Header) -> (Vec<u8>, Header) {
        let mut bytes = Vec::new();
        let written = write_header(&mut bytes, header).expect("write");
        assert_eq!(written, bytes.len() as u64);
        let back = read_header(&mut bytes.as_slice(), bytes.len() as u64).expect("read");
        (bytes, back)
    }

    /// Invariant: a state without anything of 0.2.0's is written as format 1 (what 0.1.0
    /// reads), one with tokens or task limits as format 2, and each reads back the same.
    #[test]
    fn the_second_section_is_written_only_when_it_holds_something() {
        let plain = ClusterState::default();
        let (bytes, back) = round_trip(&header_of(plain.clone()));
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(back.data.state, plain);

        let mut with_tokens = ClusterState::default();
        let create = Command::CreateToken {
            name: "ci".into(),
            role: Role::Submit,
            hash: TokenHash([7; 32]),
            by: "bootstrap".into(),
        };
        let ctx = flotilla_core::ApplyCtx { index: 1, term: 1, at_ms: 5 };
        with_tokens.apply(ctx, &Proposal::new(5, vec![create]));
        assert!(!with_tokens.access().is_empty());
        let (bytes, back) = round_trip(&header_of(with_tokens.clone()));
        assert_eq!(&bytes[..8], MAGIC_2);
        assert_eq!(back.data.state, with_tokens);
        assert_eq!(back.data.state.access().find(&TokenHash([7; 32])).map(|(n, _)| n), Some("ci"));

        // Task limits, without any token, need format 2 too.
        let mut limited = ClusterState::default();
        let limits = flotilla_core::model::TaskLimits { open_files: Some(64), ..Default::default() };
        let submit = Command::SubmitJobWith {
            spec: flotilla_core::model::JobSpec { command: vec!["true".into()], ..Default::default() },
            request_id: None,
            owner: None,
            options: flotilla_core::workflow::JobOptions { limits: limits.clone(), ..Default::default() },
        };
        limited.apply(ctx, &Proposal::new(5, vec![submit]));
        assert!(limited.access().is_empty());
        let (bytes, back) = round_trip(&header_of(limited.clone()));
        assert_eq!(&bytes[..8], MAGIC_2);
        assert_eq!(back.data.state, limited);
        assert_eq!(back.data.state.task_limits(1), Some(&limits));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3_000, ..Default::default() })]

        /// Invariant: a damaged snapshot header (a byte changed, the file cut short, a length
        /// that claims more than the file holds) is refused with an error, never a panic or an
        /// allocation of the claimed size.
        #[test]
        fn a_damaged_snapshot_header_is_an_error_not_a_panic(
            at in proptest::prelude::any::<usize>(),
            xor in 1..=255u8,
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut state = ClusterState::default();
            let create = Command::CreateToken {
                name: "ci".into(),
                role: Role::Submit,
                hash: TokenHash([7; 32]),
                by: "bootstrap".into(),
            };
            state.apply(flotilla_core::ApplyCtx { index: 1, term: 1, at_ms: 5 }, &Proposal::new(5, vec![create]));
            let mut bytes = Vec::new();
            write_header(&mut bytes, &header_of(state)).expect("write");
            let i = at % bytes.len();
            bytes[i] ^= xor;
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = read_header(&mut bytes.as_slice(), bytes.len() as u64);
        }
    }
}
