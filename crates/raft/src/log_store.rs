//! The Raft log, vote and committed index, stored in one `redb` database (`raft-log.redb`).
//!
//! Durability: appended entries and the vote are written in transactions with redb's default
//! (immediate) durability, which fsyncs before the commit returns; only then is openraft told
//! the entries are flushed (or `save_vote` returns). The committed index is saved without an
//! fsync: losing it is safe (it only means more entries are re-applied after a crash).
//!
//! Every write goes through one writer thread, in order (openraft requires write IO to be
//! serialised). `append` only puts the entries in the in-memory tail and queues their write:
//! the entries are readable at once and openraft hears of the fsync through the callback, so
//! the leader replicates an entry to its followers while its own fsync runs instead of after
//! it. The tail never drops an entry that is not on disk yet, so a read finds every entry in
//! the tail or in redb. Reads run on tokio's blocking pool.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{storage_error, LogId, NodeId, StorageError, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open raft log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot initialise raft log {path}: {source}")]
    Init {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("raft log {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl OpenError {
    /// The stored data is damaged (as opposed to, say, held by another process).
    pub fn is_corruption(&self) -> bool {
        match self {
            OpenError::Corrupt { .. } => true,
            OpenError::Open { source, .. } => {
                matches!(source, redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)))
            }
            OpenError::Init { source, .. } => matches!(source, redb::Error::Corrupted(_)),
        }
    }
}

/// Called with the duration of each write (and fsync) of appended entries.
pub type WriteObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

/// A write to run on the writer thread.
type WriteJob = Box<dyn FnOnce(&Database) + Send>;

/// The writer thread's queue. The thread ends (and releases the database) when the last
/// handle is dropped.
#[derive(Clone)]
struct Writer {
    tx: std::sync::mpsc::Sender<WriteJob>,
}

impl Writer {
    fn start(db: Arc<Database>) -> std::io::Result<Writer> {
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || {
            for job in rx {
                job(&db);
            }
        })?;
        Ok(Writer { tx })
    }

    /// Queues `job` after every write queued before it.
    fn queue(&self, job: WriteJob) -> Result<(), BoxError> {
        self.tx.send(job).map_err(|_| "the raft log writer thread stopped".into())
    }

    /// Runs `f` after every write queued before it and waits for its result.
    async fn run<T, F>(&self, f: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, BoxError> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        self.queue(Box::new(move |db| {
            let _ = done.send(f(db));
        }))?;
        result.await.map_err(|_| BoxError::from("the raft log writer thread stopped"))?
    }
}

/// The log store. Cloning shares the database; openraft uses a clone as its log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    writer: Writer,
    /// Told how long each write of appended entries took (metrics), once set.
    write_observer: Arc<std::sync::OnceLock<WriteObserver>>,
    bytes_written: Arc<AtomicU64>,
    /// The newest entries, as appended: replication reads them from here instead of reading
    /// and decoding them from disk once per follower. Entries share their commands, so a
    /// copy is cheap.
    cache: Arc<Mutex<Cache>>,
}

/// At most this many entries are kept in memory…
const CACHE_ENTRIES: usize = 8_192;
/// …and at most about this many encoded bytes of them, so big entries (a plan for thousands
/// of tasks) do not pin a lot of memory.
const CACHE_BYTES: usize = 16 << 20;

#[derive(Default)]
struct Cache {
    /// Each entry with its encoded size, newest last.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    /// Entries up to this index are on disk; newer ones are only here and are never evicted.
    flushed: u64,
    /// Bumped by every truncate, so a write queued before it cannot mark the entries that
    /// replaced the truncated ones as flushed.
    generation: u64,
}

impl Cache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// The cached entries in `[start, end)` (a suffix of that range: everything older than
    /// the cache is on disk).
    fn get(&self, start: u64, end: u64) -> Vec<Entry> {
        let (Some(first), Some(last)) = (self.first_index(), self.entries.back().map(|(e, _)| e.log_id.index)) else {
            return Vec::new();
        };
        let (start, end) = (start.max(first), end.min(last + 1));
        if start >= end {
            return Vec::new();
        }
        let from = (start - first) as usize;
        self.entries.range(from..from + (end - start) as usize).map(|(e, _)| e.clone()).collect()
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|(e, _)| e.log_id)
    }

    fn flushed_to(&mut self, index: u64, generation: u64) {
        if generation == self.generation {
            self.flushed = self.flushed.max(index);
            self.evict();
        }
    }

    fn evict(&mut self) {
        while (self.entries.len() > CACHE_ENTRIES || (self.bytes > CACHE_BYTES && self.entries.len() > 1))
            && self.entries.front().is_some_and(|(e, _)| e.log_id.index <= self.flushed)
        {
            self.pop_front();
        }
    }

    fn append(&mut self, entries: &[Entry], sizes: &[usize]) {
        for (e, &size) in entries.iter().zip(sizes) {
            // Entries arrive contiguous (after a truncate or purge if need be); anything else
            // means the log restarts after a snapshot, and what is cached is purged anyway.
            if self.entries.back().is_some_and(|(b, _)| b.log_id.index + 1 != e.log_id.index) {
                self.entries.clear();
                self.bytes = 0;
            }
            self.entries.push_back((e.clone(), size));
            self.bytes += size;
        }
        self.evict();
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
        self.flushed = self.flushed.min(index.saturating_sub(1));
        self.generation += 1;
    }

    fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            self.pop_front();
        }
    }
}

impl LogStore {
    /// Opens or creates `raft-log.redb` in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join("raft-log.redb");
        let db = create_database(&path)?;
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|source| OpenError::Init { path: path.clone(), source })?;
        let db = Arc::new(db);
        let writer = Writer::start(db.clone()).map_err(|e| OpenError::Open {
            path: path.clone(),
            source: redb::DatabaseError::Storage(redb::StorageError::Io(e)),
        })?;
        let store = LogStore {
            db,
            writer,
            write_observer: Arc::new(std::sync::OnceLock::new()),
            bytes_written: Arc::new(AtomicU64::new(0)),
            cache: Arc::new(Mutex::new(Cache::default())),
        };
        store.verify().map_err(|reason| OpenError::Corrupt { path, reason })?;
        Ok(store)
    }

    /// Reads back everything stored: every entry decodes, sits at its own index, and the
    /// entries are contiguous after the purge point; the metadata decodes. A master never
    /// starts on a log it cannot trust.
    fn verify(&self) -> Result<(), String> {
        let check = || -> Result<(), BoxError> {
            let _: Option<Vote<NodeId>> = read_meta(&self.db, KEY_VOTE)?;
            let _: Option<Option<LogId>> = read_meta(&self.db, KEY_COMMITTED)?;
            let purged: Option<LogId> = read_meta(&self.db, KEY_PURGED)?;
            let txn = self.db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let mut expected = purged.map(|p| p.index + 1);
            for item in table.iter()? {
                let (k, v) = item?;
                let entry = decode_entry(v.value())?;
                if entry.log_id.index != k.value() {
                    return Err(format!("entry stored at index {} says it is {}", k.value(), entry.log_id.index).into());
                }
                if let Some(e) = expected {
                    if k.value() != e {
                        return Err(format!("log has a gap: expected index {e}, found {}", k.value()).into());
                    }
                }
                expected = Some(k.value() + 1);
            }
            Ok(())
        };
        check().map_err(|e| e.to_string())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the observer of write durations (the first call wins; shared by clones).
    pub fn observe_writes(&self, observer: WriteObserver) {
        let _ = self.write_observer.set(observer);
    }

    /// Bytes of log entries appended since this store was opened (shared by clones).
    pub fn bytes_written(&self) -> Arc<AtomicU64> {
        self.bytes_written.clone()
    }

    /// True when nothing was ever written: no vote, no entry, nothing purged.
    pub async fn is_pristine(&mut self) -> Result<bool, StorageError> {
        let vote = self.read_vote().await?;
        let state = self.get_log_state().await?;
        Ok(vote.is_none() && state.last_log_id.is_none())
    }

    /// Runs redb work on the blocking pool; any failure becomes a storage error about
    /// `subject`, which stops this master's Raft loudly.
    async fn blocking<T, F>(&self, subject: ErrorSubject<NodeId>, verb: ErrorVerb, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, BoxError> + Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(storage_error(subject, verb, &*e)),
            Err(join) => Err(storage_error(subject, verb, &join)),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the database; waits a little if this process still holds it (a store just dropped
/// releases the file when its writer thread ends).
fn create_database(path: &Path) -> Result<Database, OpenError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        // redb's default cache is 1 GiB: the log is read back from the in-memory tail, so a
        // small cache is enough and keeps the master's memory flat.
        match Database::builder().set_cache_size(16 << 20).create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.map_err(|source| OpenError::Open { path: path.to_path_buf(), source }),
        }
    }
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, BoxError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let Some(bytes) = table.get(key)? else {
        return Ok(None);
    };
    Ok(Some(flotilla_proto::codec::decode("raft metadata", bytes.value())?))
}

fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T, durability: Durability) -> Result<(), BoxError> {
    let bytes = flotilla_proto::codec::encode("raft metadata", value)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    {
        let mut table = txn.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, BoxError> {
    Ok(flotilla_proto::codec::decode("raft log entry", bytes)?)
}

fn to_owned_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = to_owned_bounds(&range);
        let start = match bounds.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match bounds.1 {
            Bound::Included(e) => e + 1,
            Bound::Excluded(e) => e,
            Bound::Unbounded => u64::MAX,
        };
        // The newest entries come from memory (some may not be on disk yet); older ones,
        // if the range reaches below the cache, from redb.
        let cached = self.cache().get(start, end);
        let disk_end = cached.first().map_or(end, |e| e.log_id.index);
        if start >= disk_end {
            return Ok(cached);
        }
        let mut entries = self
            .blocking(ErrorSubject::Logs, ErrorVerb::Read, move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let mut entries = Vec::new();
                for item in table.range::<u64>((bounds.0, Bound::Excluded(disk_end)))? {
                    let (_, v) = item?;
                    entries.push(decode_entry(v.value())?);
                }
                Ok(entries)
            })
            .await?;
        entries.extend(cached);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let cached_last = self.cache().last_log_id();
        let mut state = self
            .blocking(ErrorSubject::Logs, ErrorVerb::Read, |db| {
                let last_purged: Option<LogId> = read_meta(db, KEY_PURGED)?;
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let last = match table.last()? {
                    Some((_, v)) => Some(decode_entry(v.value())?.log_id),
                    None => last_purged,
                };
                Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
            })
            .await?;
        // Entries still on their way to disk are part of the log already.
        if cached_last.is_some_and(|c| state.last_log_id.is_none_or(|d| c.index > d.index)) {
            state.last_log_id = cached_last;
        }
        Ok(state)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.writer
            .run(move |db| write_meta(db, KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &*e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.blocking(ErrorSubject::Vote, ErrorVerb::Read, |db| read_meta(db, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.writer
            .run(move |db| write_meta(db, KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &*e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let stored: Option<Option<LogId>> =
            self.blocking(ErrorSubject::Store, ErrorVerb::Read, |db| read_meta(db, KEY_COMMITTED)).await?;
        Ok(stored.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes = flotilla_proto::codec::encode("raft log entry", entry)
                .map_err(|e| storage_error(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let sizes: Vec<usize> = encoded.iter().map(|(_, b)| b.len()).collect();
        let total: usize = sizes.iter().sum();
        self.bytes_written.fetch_add(total as u64, Ordering::Relaxed);
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Readable from now on, before it is on disk (see the module comment).
        let generation = {
            let mut cache = self.cache();
            cache.append(&entries, &sizes);
            cache.generation
        };
        let cache = self.cache.clone();
        let observer = self.write_observer.clone();
        let write = move |db: &Database| -> Result<(), BoxError> {
            let started = std::time::Instant::now();
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            // Immediate durability: fsynced when commit returns.
            txn.commit()?;
            if let Some(observe) = observer.get() {
                observe(started.elapsed());
            }
            Ok(())
        };
        self.writer
            .queue(Box::new(move |db| match write(db) {
                Ok(()) => {
                    cache.lock().unwrap_or_else(|p| p.into_inner()).flushed_to(last.index, generation);
                    callback.log_io_completed(Ok(()));
                }
                // openraft stops this master's Raft on a failed write (for example a full disk).
                Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            }))
            .map_err(|e| storage_error(ErrorSubject::Log(last), ErrorVerb::Write, &*e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.cache().truncate(log_id.index);
        self.writer
            .run(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(log_id.index.., |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &*e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.cache().purge(log_id.index);
        self.writer
            .run(move |db| {
                let bytes = flotilla_proto::codec::encode("raft metadata", &log_id)?;
                let txn = db.begin_write()?;
                {
                    // The purge point is recorded in the same transaction that removes the entries,
                    // so a crash can never leave a gap that the log state does not explain.
                    let mut meta = txn.open_table(META)?;
                    meta.insert(KEY_PURGED, bytes.as_slice())?;
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(..=log_id.index, |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &*e))
    }
}
