//! Backups and disaster recovery: a checksummed copy of a master's state, and new data
//! directories seeded from one.
//!
//! A backup is a snapshot file (the in-memory state, then every record row; see
//! [`crate::state_machine`]) followed by `FLOTSUM1` and the SHA-256 of everything before it.
//! [`export`] writes one from a running master without stopping apply (the same clone and
//! barrier a snapshot build takes). [`seed`] turns one into the data directory of a master of
//! a *new* cluster: the state as of the backup's entry, the given masters as its membership, a
//! new cluster identity (so its masters and the original's refuse each other's RPCs) and a vote
//! in the backup's term (so the next election starts above it). [`recover`] does the same in
//! place from a surviving master's own data, after applying every entry its log holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::{Membership, SnapshotMeta, StoredMembership, Vote};
use sha2::{Digest, Sha256};

use crate::log_store::LogStore;
use crate::state_machine::{
    read_header, write_header, write_snapshot, FileError, Header, Shared, StateMachineStore, MAGIC,
};
use crate::{Node, NodeId};

const FOOTER: &[u8; 8] = b"FLOTSUM1";
const FOOTER_LEN: u64 = 8 + 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Flotilla backup ({why})")]
    NotABackup { path: PathBuf, why: String },
    #[error("{path} is damaged: its checksum is {found}, the file says {expected}")]
    Checksum { path: PathBuf, found: String, expected: String },
    #[error("{0}")]
    Snapshot(String),
    #[error("{dir} already holds a master's data ({file}); seed an empty directory")]
    NotEmpty { dir: PathBuf, file: String },
    #[error("{0}")]
    Storage(String),
    #[error("the membership must list master {id} (it lists {listed})")]
    NotListed { id: NodeId, listed: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

fn snapshot_error(e: FileError) -> BackupError {
    BackupError::Snapshot(e.to_string())
}

/// What a backup holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupInfo {
    /// The last entry the state includes.
    pub index: u64,
    pub term: u64,
    pub jobs: usize,
    pub workers: usize,
    pub bytes: u64,
    pub sha256: String,
    /// The cluster it came from (hex), and its masters then.
    pub cluster: String,
    pub masters: BTreeMap<NodeId, String>,
}

fn info_of(header: &Header, bytes: u64, sha256: String) -> BackupInfo {
    let last = header.data.last_applied;
    BackupInfo {
        index: last.map_or(0, |l| l.index),
        term: last.map_or(0, |l| l.leader_id.term),
        jobs: header.data.state.jobs().count(),
        workers: header.data.state.workers().count(),
        bytes,
        sha256,
        cluster: format!("{:016x}", header.data.state.cluster_id()),
        masters: header.data.membership.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes the first `len` bytes of `path`.
fn sha256_of(path: &Path, len: u64) -> Result<[u8; 32], BackupError> {
    let mut r = BufReader::with_capacity(1 << 20, fs::File::open(path).map_err(io(path))?).take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Writes a backup of the running master's state to `path` (through a temporary file beside
/// it, renamed when complete).
pub async fn export(shared: &Shared, path: &Path) -> Result<BackupInfo, BackupError> {
    let (data, ticket) = {
        let data = shared.read();
        (data.clone(), shared.store.barrier())
    };
    let records = ticket.wait_async().await;
    let meta = SnapshotMeta {
        last_log_id: data.last_applied,
        last_membership: data.membership.clone(),
        snapshot_id: format!("backup-{}", flotilla_proto::time::now_ms()),
    };
    let header = Header { meta, data };
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<BackupInfo, BackupError> {
        let partial = path.with_extension("partial");
        let written = write_snapshot(&partial, &header, &records).map_err(snapshot_error)?;
        let digest = sha256_of(&partial, written.bytes)?;
        let mut f = fs::OpenOptions::new().append(true).open(&partial).map_err(io(&partial))?;
        f.write_all(FOOTER).and_then(|_| f.write_all(&digest)).and_then(|_| f.sync_all()).map_err(io(&partial))?;
        fs::rename(&partial, &path).map_err(io(&path))?;
        Ok(info_of(&header, written.bytes + FOOTER_LEN, hex(&digest)))
    })
    .await
    .map_err(|e| BackupError::Storage(e.to_string()))?
}

/// Checks a backup's checksum and reads what it holds.
pub fn verify(path: &Path) -> Result<BackupInfo, BackupError> {
    let len = fs::metadata(path).map_err(io(path))?.len();
    if len < FOOTER_LEN + MAGIC.len() as u64 {
        return Err(BackupError::NotABackup { path: path.into(), why: format!("only {len} bytes") });
    }
    let mut f = fs::File::open(path).map_err(io(path))?;
    f.seek(std::io::SeekFrom::Start(len - FOOTER_LEN)).map_err(io(path))?;
    let mut footer = [0u8; FOOTER_LEN as usize];
    f.read_exact(&mut footer).map_err(io(path))?;
    if &footer[..8] != FOOTER {
        return Err(BackupError::NotABackup { path: path.into(), why: "no checksum at its end".into() });
    }
    let found = sha256_of(path, len - FOOTER_LEN)?;
    if found[..] != footer[8..] {
        return Err(BackupError::Checksum { path: path.into(), found: hex(&found), expected: hex(&footer[8..]) });
    }
    let mut r = BufReader::new(fs::File::open(path).map_err(io(path))?);
    let header =
        read_header(&mut r, len).map_err(|e| BackupError::NotABackup { path: path.into(), why: e.to_string() })?;
    Ok(info_of(&header, len, hex(&found)))
}

/// Seeds `dir` (empty) as master `id` of a new cluster made of `masters`, from `backup`.
pub async fn seed(
    backup: &Path,
    dir: &Path,
    id: NodeId,
    masters: &BTreeMap<NodeId, String>,
    cluster_id: u64,
) -> Result<BackupInfo, BackupError> {
    if !masters.contains_key(&id) {
        let listed = masters.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
        return Err(BackupError::NotListed { id, listed });
    }
    let info = verify(backup)?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    for file in std::iter::once("raft-log.redb").chain(crate::state_machine::STATE_FILES) {
        if dir.join(file).exists() {
            return Err(BackupError::NotEmpty { dir: dir.into(), file: file.into() });
        }
    }
    let len = fs::metadata(backup).map_err(io(backup))?.len();
    let mut r = BufReader::with_capacity(1 << 20, fs::File::open(backup).map_err(io(backup))?);
    let mut header = read_header(&mut r, len).map_err(snapshot_error)?;
    let rows_start = r.stream_position().map_err(io(backup))?;
    let last = header.data.last_applied;
    let voters: BTreeSet<NodeId> = masters.keys().copied().collect();
    let nodes: BTreeMap<NodeId, Node> = masters.iter().map(|(id, addr)| (*id, Node { addr: addr.clone() })).collect();
    let membership = StoredMembership::new(last, Membership::new(vec![voters], nodes));
    header.data.membership = membership.clone();
    header.data.state.reidentify(cluster_id);
    header.meta = SnapshotMeta {
        last_log_id: last,
        last_membership: membership,
        snapshot_id: format!("restored-{cluster_id:016x}"),
    };
    // The new header, then the backup's rows as they are.
    let staged = dir.join("snapshot.restore");
    {
        let mut w = std::io::BufWriter::new(fs::File::create(&staged).map_err(io(&staged))?);
        write_header(&mut w, &header).map_err(snapshot_error)?;
        let mut rows = r.take(len - FOOTER_LEN - rows_start);
        std::io::copy(&mut rows, &mut w).map_err(io(&staged))?;
        let f = w.into_inner().map_err(|e| io(&staged)(e.into_error()))?;
        f.sync_all().map_err(io(&staged))?;
    }
    let mut sm = StateMachineStore::open(dir).map_err(|e| BackupError::Storage(e.to_string()))?;
    let file = tokio::fs::File::open(&staged).await.map_err(io(&staged))?;
    sm.install_snapshot(&header.meta, Box::new(file)).await.map_err(|e| BackupError::Storage(e.to_string()))?;
    let _ = fs::remove_file(&staged);
    // The next election must start above the backup's term.
    let mut log = LogStore::open(dir).map_err(|e| BackupError::Storage(e.to_string()))?;
    let term = last.map_or(0, |l| l.leader_id.term);
    log.save_vote(&Vote::new(term, id)).await.map_err(|e| BackupError::Storage(e.to_string()))?;
    Ok(BackupInfo { cluster: format!("{cluster_id:016x}"), masters: masters.clone(), ..info })
}

/// What a recovery found and did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recovered {
    /// The last entry this master knew committed, and the last its log held (all applied).
    pub committed: u64,
    pub last: u64,
    pub info: BackupInfo,
    /// Where the data from before the recovery was moved.
    pub moved_to: PathBuf,
}

/// Rebuilds a group from the data of one surviving master (stopped): applies every entry its
/// log holds, moves its files aside, and seeds `dir` as master `id` of a new cluster made of
/// `masters`. Unsafe by nature: entries the lost masters committed without this one are lost,
/// and entries here that were never committed are kept.
pub async fn recover(
    dir: &Path,
    id: NodeId,
    masters: &BTreeMap<NodeId, String>,
    cluster_id: u64,
) -> Result<Recovered, BackupError> {
    let storage = |e: &dyn std::fmt::Display| BackupError::Storage(e.to_string());
    if !masters.contains_key(&id) {
        let listed = masters.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
        return Err(BackupError::NotListed { id, listed });
    }
    let backup = dir.join("recovery.backup");
    let (committed, last) = {
        let mut log = LogStore::open(dir).map_err(|e| storage(&e))?;
        let mut sm = StateMachineStore::open(dir).map_err(|e| storage(&e))?;
        let committed = log.read_committed().await.map_err(|e| storage(&e))?.map_or(0, |l| l.index);
        let state = log.get_log_state().await.map_err(|e| storage(&e))?;
        let last = state.last_log_id.map_or(0, |l| l.index);
        let (applied, _) = sm.applied_state().await.map_err(|e| storage(&e))?;
        let from = applied.map_or(0, |l| l.index) + 1;
        if from <= last {
            let entries = log.try_get_log_entries(from..last + 1).await.map_err(|e| storage(&e))?;
            sm.apply(entries).await.map_err(|e| storage(&e))?;
        }
        export(&sm.shared(), &backup).await?;
        (committed, last)
    };
    let moved_to = dir.join(format!("pre-recovery-{}", flotilla_proto::time::now_ms()));
    fs::create_dir_all(&moved_to).map_err(io(&moved_to))?;
    for file in std::iter::once("raft-log.redb").chain(crate::state_machine::STATE_FILES) {
        let from = dir.join(file);
        if from.exists() {
            fs::rename(&from, moved_to.join(file)).map_err(io(&from))?;
        }
    }
    let info = seed(&backup, dir, id, masters, cluster_id).await?;
    fs::rename(&backup, moved_to.join("recovery.backup")).map_err(io(&backup))?;
    Ok(Recovered { committed, last, info, moved_to })
}
