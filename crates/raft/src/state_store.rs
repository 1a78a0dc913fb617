//! The masters' on-disk state store, `state.redb`: the finished tasks' records
//! ([`flotilla_core::records`]) that the in-memory state hands out as it applies entries.
//!
//! There are two record tables, `records.a` and `records.b`, and `meta.live` names the one in
//! use. Applying entries writes the live table, one transaction per applied batch, without an
//! fsync: the Raft log is the durable copy, and replaying it rewrites the same records (the ops
//! are idempotent). [`StateStore::persist`] makes everything written so far durable; a snapshot
//! is only kept once what it covers is durable here.
//!
//! Installing a snapshot from the leader fills the other table in bounded transactions and then
//! flips `live` in one durable commit, so a crash at any point leaves a live table that goes
//! with the snapshot on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use flotilla_core::model::{JobId, TaskId, TaskIndex, TaskSlot};
use flotilla_core::records::{RecordError, RecordOp, RecordReader};
use flotilla_core::state::Task;
use flotilla_proto::codec;

/// A row of records: (job, bucket, part). Records are stored in rows, not one per task: a row
/// holds the records of one job's bucket ([`BUCKET`] consecutive indices) that one log entry
/// produced, so an entry that finishes a thousand tasks writes a few rows, not a thousand.
/// `part` is the entry's index shifted left by 16, plus the row's number within the entry (a
/// large group is split at [`ROW_BYTES`]); replaying an entry rewrites the same rows.
pub type RowKey = (u64, u64, u64);
/// Consecutive array indices per bucket.
const BUCKET: u64 = 64;
/// The reduce step's bucket and slot; array buckets and indices stay below it.
const REDUCE: u64 = u64::MAX;
/// A row is closed once its records reach this many bytes.
const ROW_BYTES: usize = 1 << 20;

const RECORDS_A: TableDefinition<RowKey, &[u8]> = TableDefinition::new("records.a");
const RECORDS_B: TableDefinition<RowKey, &[u8]> = TableDefinition::new("records.b");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_LIVE: &str = "live";
/// The id of the snapshot whose records the live table was filled from by an install.
const KEY_INSTALLED: &str = "installed";

/// Records copied into the spare table per transaction while installing a snapshot: at most
/// this many, and about this many bytes, so memory stays bounded whatever the snapshot's size.
const INSTALL_BATCH: usize = 8_192;
const INSTALL_BATCH_BYTES: usize = 16 << 20;
/// Memory redb may use for its page cache and write buffer. Its default (1 GiB) would make
/// the master's memory grow with the records, the very thing the store exists to avoid.
const CACHE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("state store {path}: a stored record of {task} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        task: TaskId,
        #[source]
        source: codec::DecodeError,
    },
    #[error("state store {path}: a stored row of job {job} is corrupt: {reason}")]
    CorruptRow { path: PathBuf, job: JobId, reason: String },
    #[error("cannot encode the record of {task}: {source}")]
    Encode {
        task: TaskId,
        #[source]
        source: codec::EncodeError,
    },
    #[error("the task records writer failed earlier: {0}")]
    Failed(#[source] Arc<StoreError>),
    #[error("the task records writer stopped")]
    Stopped,
}

impl StoreError {
    /// The stored data is damaged (as opposed to, say, held by another process).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } | StoreError::CorruptRow { .. } => true,
            StoreError::Db { source, .. } => matches!(source, redb::Error::Corrupted(_)),
            StoreError::Failed(e) => e.is_corruption(),
            StoreError::Encode { .. } | StoreError::Stopped => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn table(self) -> TableDefinition<'static, RowKey, &'static [u8]> {
        match self {
            Side::A => RECORDS_A,
            Side::B => RECORDS_B,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn name(self) -> &'static [u8] {
        match self {
            Side::A => b"a",
            Side::B => b"b",
        }
    }
}

/// A task's slot in a row, and its bucket.
fn slot_of(task: TaskId) -> (u64, u64) {
    match task.slot {
        TaskSlot::Array(i) => (i, i / BUCKET),
        TaskSlot::Reduce => (REDUCE, REDUCE),
    }
}

fn task_of(job: JobId, slot: u64) -> TaskId {
    match slot {
        REDUCE => TaskId::reduce(job),
        i => TaskId::array(job, i),
    }
}

/// A row's value: records one after another, each `[slot u64][length u32][postcard Task]`.
fn row_entries(row: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), String>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= row.len() {
            return None;
        }
        let head = row.get(at..at + 12)?;
        let slot = u64::from_le_bytes(head[..8].try_into().ok()?);
        let len = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
        let Some(bytes) = row.get(at + 12..at + 12 + len) else {
            at = row.len();
            return Some(Err(format!("a row is cut short at byte {at}")));
        };
        at += 12 + len;
        Some(Ok((slot, bytes)))
    })
}

/// How many records a row holds.
pub fn row_len(row: &[u8]) -> u64 {
    row_entries(row).filter(|e| e.is_ok()).count() as u64
}

/// The database itself; [`StateStore`] puts a writer thread in front of it.
struct Store {
    db: Database,
    path: PathBuf,
    live: Mutex<Side>,
}

impl Store {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source: redb::Error| StoreError::Db { path: path.to_path_buf(), source };
        let db = open_database(path).map_err(|e| err(e.into()))?;
        let live = {
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            let live = {
                let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                let live = match meta.get(KEY_LIVE).map_err(|e| err(e.into()))? {
                    Some(v) if v.value() == b"b" => Side::B,
                    _ => Side::A,
                };
                meta.insert(KEY_LIVE, live.name()).map_err(|e| err(e.into()))?;
                live
            };
            txn.open_table(RECORDS_A).map_err(|e| err(e.into()))?;
            txn.open_table(RECORDS_B).map_err(|e| err(e.into()))?;
            txn.commit().map_err(|e| err(e.into()))?;
            live
        };
        Ok(Store { db, path: path.to_path_buf(), live: Mutex::new(live) })
    }

    fn err(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Db { path: self.path.clone(), source: source.into() }
    }

    fn live(&self) -> Side {
        *self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the record changes of applied entries, in order, in one transaction (no fsync
    /// unless `durable`).
    fn apply(&self, batches: &[Vec<RecordOp>], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        if !durable {
            txn.set_durability(Durability::None).map_err(|e| self.err(e))?;
        }
        {
            let mut table = txn.open_table(self.live().table()).map_err(|e| self.err(e))?;
            // Rows being filled: (job, bucket, entry) -> their bytes so far (last one open).
            let mut rows: BTreeMap<(u64, u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
            // Rows written per group so far: a group flushed early (before a job's removal in
            // the same entry) goes on numbering, never overwriting its own rows.
            let mut written: BTreeMap<(u64, u64, u64), u64> = BTreeMap::new();
            let mut flush = |rows: &mut BTreeMap<(u64, u64, u64), Vec<Vec<u8>>>,
                             table: &mut redb::Table<RowKey, &[u8]>|
             -> Result<(), StoreError> {
                for (group, parts) in std::mem::take(rows) {
                    let (job, bucket, entry) = group;
                    let n = written.entry(group).or_default();
                    for row in parts {
                        table.insert((job, bucket, entry << 16 | *n), row.as_slice()).map_err(|e| self.err(e))?;
                        *n += 1;
                    }
                }
                Ok(())
            };
            for op in batches.iter().flatten() {
                match op {
                    RecordOp::Put { entry, task, record } => {
                        let bytes = codec::encode("task record", record)
                            .map_err(|source| StoreError::Encode { task: *task, source })?;
                        let (slot, bucket) = slot_of(*task);
                        let parts = rows.entry((task.job, bucket, *entry)).or_default();
                        if parts.last().is_none_or(|row| row.len() >= ROW_BYTES) {
                            parts.push(Vec::new());
                        }
                        if let Some(row) = parts.last_mut() {
                            row.extend_from_slice(&slot.to_le_bytes());
                            row.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                            row.extend_from_slice(&bytes);
                        }
                    }
                    RecordOp::RemoveJob(job) => {
                        flush(&mut rows, &mut table)?;
                        table
                            .retain_in((*job, 0, 0)..=(*job, REDUCE, u64::MAX), |_, _| false)
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            flush(&mut rows, &mut table)?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Makes everything stored so far durable.
    fn persist(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// A consistent view of `side`'s records as of the last [`Store::apply`].
    fn reader(&self, side: Side) -> Records {
        let open = || -> Result<Reader, StoreError> {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let table = txn.open_table(side.table()).map_err(|e| self.err(e))?;
            Ok(Reader { _txn: txn, table, path: self.path.clone() })
        };
        Records(open().map_err(Arc::new))
    }

    fn install(&self) -> Result<Install<'_>, StoreError> {
        let side = self.live().other();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.delete_table(side.table()).map_err(|e| self.err(e))?;
        txn.open_table(side.table()).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(Install { store: self, side, batch: Vec::new(), batch_bytes: 0, count: 0 })
    }

    fn installed(&self) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let value = meta.get(KEY_INSTALLED).map_err(|e| self.err(e))?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }
}

/// Work for the writer thread, done in the order queued.
enum Work {
    Ops(Vec<RecordOp>),
    /// Open a reader that sees exactly the ops queued before this, on the table that was live
    /// when it was queued (an install may switch tables before the writer gets to it).
    Barrier(mpsc::SyncSender<Records>, Side),
    /// Make everything queued before this durable.
    Persist(mpsc::SyncSender<Result<(), StoreError>>),
}

/// Batches of ops the writer may hold queued before apply waits for it (backpressure).
const QUEUED_BATCHES: usize = 256;
/// Ops the writer puts in one transaction at most when it finds several batches queued.
const OPS_PER_COMMIT: usize = 32_768;
/// The writer commits durably at least this often. redb frees the pages a commit replaced
/// only after a durable commit: with none for long, the file and the allocator's bookkeeping
/// grow with every commit and writes slow down.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The records store with its writer thread. Apply only queues an entry batch's ops (under
/// the state lock, so the queue's order is the log's); the thread stores them, several batches
/// per transaction when it finds them waiting. A reader is opened through the same queue
/// ([`StateStore::barrier`]), so it sees exactly the ops queued before it: take the barrier
/// while holding the state lock and the reader matches that state.
pub struct StateStore {
    store: Arc<Store>,
    tx: mpsc::SyncSender<Work>,
    /// Set when the writer failed: nothing is stored after that, and apply stops the master.
    failed: Arc<Mutex<Option<Arc<StoreError>>>>,
}

/// A reader on its way: see [`StateStore::barrier`].
pub struct Ticket(Result<mpsc::Receiver<Records>, Arc<StoreError>>);

impl Ticket {
    /// Waits for the reader, blocking the thread (the writer runs on its own thread).
    pub fn wait(self) -> Records {
        match self.0 {
            Ok(rx) => rx.recv().unwrap_or_else(|_| Records(Err(Arc::new(StoreError::Stopped)))),
            Err(e) => Records(Err(e)),
        }
    }

    /// Waits for the reader without blocking the async runtime.
    pub async fn wait_async(self) -> Records {
        match tokio::task::spawn_blocking(move || self.wait()).await {
            Ok(records) => records,
            Err(_) => Records(Err(Arc::new(StoreError::Stopped))),
        }
    }
}

impl StateStore {
    /// Opens or creates `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Arc::new(Store::open(path)?);
        let (tx, rx) = mpsc::sync_channel(QUEUED_BATCHES);
        let failed: Arc<Mutex<Option<Arc<StoreError>>>> = Arc::default();
        let (writer_store, writer_failed) = (store.clone(), failed.clone());
        std::thread::Builder::new()
            .name("records-writer".into())
            .spawn(move || write_loop(&writer_store, &rx, &writer_failed))
            .map_err(|e| StoreError::Db { path: path.to_path_buf(), source: e.into() })?;
        Ok(StateStore { store, tx, failed })
    }

    fn failure(&self) -> Option<Arc<StoreError>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues one applied batch's record changes; waits only if the writer is far behind.
    pub fn queue(&self, ops: Vec<RecordOp>) -> Result<(), StoreError> {
        if let Some(e) = self.failure() {
            return Err(StoreError::Failed(e));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.tx.send(Work::Ops(ops)).map_err(|_| StoreError::Stopped)
    }

    /// A reader of the records as of every op queued so far.
    pub fn barrier(&self) -> Ticket {
        if let Some(e) = self.failure() {
            return Ticket(Err(e));
        }
        let (reply, rx) = mpsc::sync_channel(1);
        match self.tx.send(Work::Barrier(reply, self.store.live())) {
            Ok(()) => Ticket(Ok(rx)),
            Err(_) => Ticket(Err(Arc::new(StoreError::Stopped))),
        }
    }

    /// Makes every op queued so far durable (blocks until it is).
    pub fn persist(&self) -> Result<(), StoreError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(Work::Persist(reply)).map_err(|_| StoreError::Stopped)?;
        rx.recv().map_err(|_| StoreError::Stopped)?
    }

    /// Starts replacing every record by a snapshot's: the spare table is emptied, then filled
    /// with [`Install::put`]; nothing changes for readers until [`Install::finish`]. Waits for
    /// the writer to store what is queued first (nothing is queued meanwhile: apply does not
    /// run during an install).
    pub fn install(&self) -> Result<Install<'_>, StoreError> {
        self.persist()?;
        self.store.install()
    }

    /// The id of the snapshot the live records were last installed from.
    pub fn installed(&self) -> Result<Option<String>, StoreError> {
        self.store.installed()
    }

    /// Bytes of the database file.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.store.path).map(|m| m.len()).unwrap_or(0)
    }
}

fn write_loop(store: &Store, rx: &mpsc::Receiver<Work>, failed: &Mutex<Option<Arc<StoreError>>>) {
    let fail = |e: StoreError| {
        tracing::error!(error = %e, "cannot store task records");
        let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get_or_insert(Arc::new(e)).clone()
    };
    let failure = || failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut last_durable = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        let mut batches = Vec::new();
        let mut then = None;
        match first {
            Work::Ops(ops) => {
                let mut count = ops.len();
                batches.push(ops);
                // Batches queued meanwhile go in the same transaction, up to a barrier.
                while count < OPS_PER_COMMIT {
                    match rx.try_recv() {
                        Ok(Work::Ops(ops)) => {
                            count += ops.len();
                            batches.push(ops);
                        }
                        Ok(other) => {
                            then = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            other => then = Some(other),
        }
        if !batches.is_empty() && failure().is_none() {
            let durable = last_durable.elapsed() >= DURABLE_EVERY;
            match store.apply(&batches, durable) {
                Ok(()) if durable => last_durable = std::time::Instant::now(),
                Ok(()) => {}
                Err(e) => {
                    fail(e);
                }
            }
        }
        match then {
            Some(Work::Barrier(reply, side)) => {
                let records = match failure() {
                    Some(e) => Records(Err(e)),
                    None => store.reader(side),
                };
                let _ = reply.send(records);
            }
            Some(Work::Persist(reply)) => {
                let result = match failure() {
                    Some(e) => Err(StoreError::Failed(e)),
                    None => store.persist(),
                };
                let _ = reply.send(result);
            }
            Some(Work::Ops(_)) | None => {}
        }
    }
}

/// A snapshot's records going into the spare table.
pub struct Install<'a> {
    store: &'a Store,
    side: Side,
    batch: Vec<(RowKey, Vec<u8>)>,
    batch_bytes: usize,
    count: u64,
}

impl Install<'_> {
    pub fn put(&mut self, key: RowKey, value: Vec<u8>) -> Result<(), StoreError> {
        self.batch_bytes += value.len();
        self.batch.push((key, value));
        self.count += 1;
        if self.batch.len() >= INSTALL_BATCH || self.batch_bytes >= INSTALL_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let store = self.store;
        let mut txn = store.db.begin_write().map_err(|e| store.err(e))?;
        txn.set_durability(Durability::None).map_err(|e| store.err(e))?;
        {
            let mut table = txn.open_table(self.side.table()).map_err(|e| store.err(e))?;
            for (key, value) in self.batch.drain(..) {
                table.insert(key, value.as_slice()).map_err(|e| store.err(e))?;
            }
        }
        self.batch_bytes = 0;
        txn.commit().map_err(|e| store.err(e))
    }

    /// Rows put so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Makes the new records the live ones, durably, noting the snapshot they came from.
    pub fn finish(mut self, snapshot_id: &str) -> Result<(), StoreError> {
        self.flush()?;
        let store = self.store;
        let txn = store.db.begin_write().map_err(|e| store.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| store.err(e))?;
            meta.insert(KEY_LIVE, self.side.name()).map_err(|e| store.err(e))?;
            meta.insert(KEY_INSTALLED, snapshot_id.as_bytes()).map_err(|e| store.err(e))?;
        }
        txn.commit().map_err(|e| store.err(e))?;
        *store.live.lock().unwrap_or_else(|p| p.into_inner()) = self.side;
        Ok(())
    }
}

struct Reader {
    _txn: ReadTransaction,
    table: redb::ReadOnlyTable<RowKey, &'static [u8]>,
    path: PathBuf,
}

/// Read access to the records as they were when it was opened. Opening cannot fail; if it
/// did, every read reports why.
pub struct Records(Result<Reader, Arc<StoreError>>);

impl Records {
    fn reader(&self) -> Result<&Reader, RecordError> {
        self.0.as_ref().map_err(|e| RecordError(Box::new(ArcError(e.clone()))))
    }

    /// Every row, key order, as stored (for a snapshot).
    pub fn raw(&self) -> Result<impl Iterator<Item = Result<(RowKey, Vec<u8>), StoreError>> + '_, StoreError> {
        let reader = self.0.as_ref().map_err(|e| StoreError::Db {
            path: PathBuf::new(),
            source: redb::Error::Io(std::io::Error::other(e.to_string())),
        })?;
        let err = |source: redb::StorageError| StoreError::Db { path: reader.path.clone(), source: source.into() };
        let iter = reader.table.iter().map_err(err)?;
        Ok(iter.map(move |item| {
            let (k, v) = item.map_err(err)?;
            Ok((k.value(), v.value().to_vec()))
        }))
    }

    /// Number of distinct records (reads every row: for tests and checks).
    pub fn count_records(&self) -> Result<u64, RecordError> {
        let reader = self.reader()?;
        let mut seen = std::collections::BTreeSet::new();
        for item in reader.table.iter().map_err(|e| read_error(reader, e))? {
            let (k, v) = item.map_err(|e| read_error(reader, e))?;
            let (job, ..) = k.value();
            for entry in row_entries(v.value()) {
                let (slot, _) = entry.map_err(|reason| corrupt_row(reader, job, reason))?;
                seen.insert((job, slot));
            }
        }
        Ok(seen.len() as u64)
    }

    /// The records of one bucket of a job, by slot, as stored bytes.
    fn bucket(&self, reader: &Reader, job: JobId, bucket: u64) -> Result<BTreeMap<u64, Vec<u8>>, RecordError> {
        let mut out = BTreeMap::new();
        for item in reader.table.range((job, bucket, 0)..=(job, bucket, u64::MAX)).map_err(|e| read_error(reader, e))? {
            let (_, v) = item.map_err(|e| read_error(reader, e))?;
            for entry in row_entries(v.value()) {
                let (slot, bytes) = entry.map_err(|reason| corrupt_row(reader, job, reason))?;
                // A replayed entry may have written a record twice: the copies are equal.
                out.insert(slot, bytes.to_vec());
            }
        }
        Ok(out)
    }
}

fn corrupt_row(reader: &Reader, job: JobId, reason: String) -> RecordError {
    RecordError(Box::new(StoreError::CorruptRow { path: reader.path.clone(), job, reason }))
}

fn decode(reader: &Reader, task: TaskId, bytes: &[u8]) -> Result<Task, RecordError> {
    codec::decode("task record", bytes)
        .map_err(|source| RecordError(Box::new(StoreError::Corrupt { path: reader.path.clone(), task, source })))
}

fn read_error(reader: &Reader, source: redb::StorageError) -> RecordError {
    RecordError(Box::new(StoreError::Db { path: reader.path.clone(), source: source.into() }))
}

impl RecordReader for Records {
    fn record(&self, task: TaskId) -> Result<Option<Task>, RecordError> {
        let reader = self.reader()?;
        let (slot, bucket) = slot_of(task);
        match self.bucket(reader, task.job, bucket)?.get(&slot) {
            Some(bytes) => Ok(Some(decode(reader, task, bytes)?)),
            None => Ok(None),
        }
    }

    fn array_records(&self, job: JobId, from: TaskIndex, limit: usize) -> Result<Vec<(TaskIndex, Task)>, RecordError> {
        let reader = self.reader()?;
        let mut out = Vec::new();
        let mut bucket = from / BUCKET;
        while out.len() < limit {
            // The next bucket of this job that has rows.
            let next = reader
                .table
                .range((job, bucket, 0)..(job, REDUCE, 0))
                .map_err(|e| read_error(reader, e))?
                .next()
                .transpose()
                .map_err(|e| read_error(reader, e))?
                .map(|(k, _)| k.value().1);
            let Some(found) = next else { break };
            for (slot, bytes) in self.bucket(reader, job, found)? {
                if slot >= from && out.len() < limit {
                    out.push((slot, decode(reader, task_of(job, slot), &bytes)?));
                }
            }
            bucket = found + 1;
        }
        Ok(out)
    }
}

/// A shared open error, as an error of each read that meets it.
#[derive(Debug)]
struct ArcError(Arc<StoreError>);

impl std::fmt::Display for ArcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Opens the database; waits a little if this process still holds it (a store just dropped
/// releases the file shortly after).
fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::model::{Captured, Outcome};
    use flotilla_core::state::{TaskResult, TaskState};

    fn put(entry: u64, job: u64, i: u64) -> RecordOp {
        let outcome = Outcome {
            exit_code: Some(0),
            stdout: Captured::from_bytes(format!("{i}\n").as_bytes(), 2),
            ..Default::default()
        };
        let record = Task {
            state: TaskState::Succeeded,
            attempts: 1,
            failures: 0,
            losses: 0,
            result: Some(TaskResult {
                fence: flotilla_core::Fence { term: 1, attempt: 1 },
                worker: "w".into(),
                outcome,
                finished_at: 0,
            }),
        };
        RecordOp::Put { entry, task: TaskId::array(job, i), record: Box::new(record) }
    }

    /// Invariants: records grouped in rows read back one by one and by page; a job removed in
    /// the middle of an entry takes only its own records, and the entry's rows written before
    /// and after the removal do not overwrite each other; a replayed entry changes nothing.
    #[test]
    fn rows_of_records_read_back_and_go_with_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.redb")).unwrap();
        let mut ops: Vec<RecordOp> = (1..=100).map(|i| put(5, 1, i)).collect();
        ops.extend((1..=10).map(|i| put(5, 2, i)));
        ops.push(RecordOp::RemoveJob(2));
        ops.extend((101..=130).map(|i| put(5, 1, i)));
        store.queue(ops.clone()).unwrap();
        store.barrier().wait();
        // The same entry again (a replay after a restart).
        store.queue(ops).unwrap();
        let records = store.barrier().wait();
        assert_eq!(records.count_records().unwrap(), 130);
        for i in [1, 63, 64, 100, 101, 127, 128, 130] {
            let r = records.record(TaskId::array(1, i)).unwrap().expect("a record");
            assert_eq!(r.result.unwrap().outcome.stdout.text, format!("{i}\n"));
        }
        assert!(records.record(TaskId::array(2, 1)).unwrap().is_none());
        assert!(records.record(TaskId::reduce(1)).unwrap().is_none());
        let page = records.array_records(1, 60, 10).unwrap();
        assert_eq!(page.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (60..70).collect::<Vec<_>>());
        assert_eq!(records.array_records(1, 0, usize::MAX).unwrap().len(), 130);
        store.queue(vec![RecordOp::RemoveJob(1)]).unwrap();
        assert_eq!(store.barrier().wait().count_records().unwrap(), 0);
    }
}
