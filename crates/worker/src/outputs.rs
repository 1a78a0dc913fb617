//! What a task leaves and what it reads: after a successful attempt the files in its
//! `$FLOTILLA_OUTPUT_DIR` are checked (names, links, quota), stored content-addressed here
//! and copied to `replicas` peers the leader named before the result is reported; before an
//! attempt with inputs starts, each input is copied into `$FLOTILLA_INPUT_DIR` from this
//! worker's store or fetched from a worker holding it, its digest checked either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_blobs::{BlobClient, Store, StoreError};
use flotilla_core::model::TaskId;
use flotilla_core::workflow::{valid_output_path, OutputError, OutputFile, Outputs, MAX_OUTPUT_FILES};
use flotilla_proto::wire::RunTask;

/// The store and the means to reach other workers' stores.
pub struct Data {
    pub store: Arc<Store>,
    /// The running attempts' streams, read by `job logs --follow` through the leader.
    pub live: Arc<flotilla_blobs::live::LiveLogs>,
    pub client: BlobClient,
    pub runtime: tokio::runtime::Handle,
    pub name: Arc<str>,
}

fn store_error(e: StoreError) -> OutputError {
    match e {
        StoreError::DiskFull => OutputError::DiskFull,
        other => OutputError::Store { kind: other.to_string() },
    }
}

/// The files under `dir`, checked, by path relative to it (sorted), with their sizes.
fn list(dir: &Path, quota: u64) -> Result<Vec<(String, PathBuf, u64)>, OutputError> {
    let mut found = Vec::new();
    let mut total = 0u64;
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = todo.pop() {
        let entries = std::fs::read_dir(&at).map_err(|e| OutputError::Store { kind: e.to_string() })?;
        for entry in entries {
            let entry = entry.map_err(|e| OutputError::Store { kind: e.to_string() })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                let path = format!("{prefix}{}", name.to_string_lossy());
                return Err(OutputError::BadName { path });
            };
            let path = format!("{prefix}{name}");
            if !valid_output_path(&path) {
                return Err(OutputError::BadName { path });
            }
            // Not followed: the link's own type, never its target's.
            let meta = entry.metadata().map_err(|e| OutputError::Store { kind: e.to_string() })?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                return Err(OutputError::Symlink { path });
            } else if kind.is_dir() {
                todo.push((entry.path(), format!("{path}/")));
            } else if kind.is_file() {
                total = total.saturating_add(meta.len());
                if total > quota {
                    return Err(OutputError::OverQuota { quota });
                }
                found.push((path, entry.path(), meta.len()));
                if found.len() > MAX_OUTPUT_FILES {
                    return Err(OutputError::TooManyFiles { max: MAX_OUTPUT_FILES });
                }
            } else {
                return Err(OutputError::NotAFile { path });
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Stores what `dir` holds; the files it names, or why they cannot be kept.
pub fn collect(store: &Store, dir: &Path, quota: u64) -> Result<Vec<OutputFile>, OutputError> {
    let mut left = quota;
    let mut files = Vec::new();
    for (path, full, _) in list(dir, quota)? {
        // The quota again while copying: a file could have grown since it was listed (a
        // process of the task's user outside its group).
        let (sha256, size) = store.put_file(&full, left).map_err(|e| match e {
            StoreError::TooLarge { .. } => OutputError::OverQuota { quota },
            other => store_error(other),
        })?;
        left -= size;
        files.push(OutputFile { path, size, sha256 });
    }
    Ok(files)
}

impl Data {
    /// Keeps a successful attempt's outputs: stored here, then copied to up to `replicas` of
    /// `peers` (from a place in their list that depends on the task, so copies spread).
    /// Copies go on to the next peer when one fails; fewer peers than asked for (a small
    /// cluster) means fewer copies, not a failed task.
    pub fn keep(&self, task: &RunTask, dir: &Path, peers: Vec<(String, String)>) -> Outputs {
        let files = match collect(&self.store, dir, task.outputs.quota) {
            Ok(files) => files,
            Err(error) => return Outputs { error: Some(error), ..Default::default() },
        };
        let mut holders = vec![self.name.to_string()];
        let wanted = task.outputs.replicas as usize;
        if wanted > 0 && !peers.is_empty() && !files.is_empty() {
            let start = (task.task.job as usize).wrapping_mul(31).wrapping_add(slot_number(task)) % peers.len();
            let order: Vec<(String, String)> = peers.iter().cycle().skip(start).take(peers.len()).cloned().collect();
            holders.extend(self.runtime.block_on(self.replicate(&files, order, wanted)));
        }
        if holders.len() <= wanted {
            tracing::debug!(task = %task.task, copies = holders.len() - 1, wanted, "fewer copies of outputs than asked");
        }
        Outputs { files, holders, error: None, logs: Vec::new() }
    }

    /// Copies every file to peers, `wanted` at a time, until `wanted` hold all of them or
    /// none is left to try. Returns the names of those that do.
    async fn replicate(&self, files: &[OutputFile], order: Vec<(String, String)>, wanted: usize) -> Vec<String> {
        let mut done = Vec::new();
        let mut next = order.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let start = |running: &mut tokio::task::JoinSet<_>, (name, address): (String, String)| {
            let client = self.client.clone();
            let store = self.store.clone();
            let files = files.to_vec();
            running.spawn(async move {
                for file in &files {
                    if let Err(e) = client.put(&address, &store, file).await {
                        tracing::warn!(peer = %name, error = %e, "could not copy an output; trying another worker");
                        return None;
                    }
                }
                Some(name)
            });
        };
        for _ in 0..wanted {
            if let Some(peer) = next.next() {
                start(&mut running, peer);
            }
        }
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(Some(name)) => done.push(name),
                _ => {
                    if let Some(peer) = next.next() {
                        start(&mut running, peer);
                    }
                }
            }
        }
        done.truncate(wanted);
        done
    }

    /// Takes a copy of one task's outputs into this worker's store, as the leader asked:
    /// each file this store does not hold soundly is fetched from the first of `sources`
    /// that serves a copy matching its digest.
    pub async fn take_copy(&self, task: TaskId, files: &[OutputFile], sources: &[String]) -> Result<(), OutputError> {
        for file in files {
            let unavailable = || OutputError::InputUnavailable { task, path: file.path.clone() };
            if self.store.contains(&file.sha256) {
                let store = self.store.clone();
                let digest = file.sha256;
                let sound = tokio::task::spawn_blocking(move || {
                    let sound = store.verify(&digest);
                    store.touch(&digest);
                    sound
                })
                .await;
                if matches!(sound, Ok(Ok(true))) {
                    continue;
                }
            }
            let mut placed = false;
            for source in sources {
                match self.client.fetch(source, &self.store, file).await {
                    Ok(()) => {
                        placed = true;
                        break;
                    }
                    Err(flotilla_blobs::TransferError::Local(StoreError::DiskFull)) => {
                        return Err(OutputError::DiskFull)
                    }
                    Err(e) => tracing::warn!(%task, path = %file.path, error = %e, "cannot copy an output from there"),
                }
            }
            if !placed {
                return Err(unavailable());
            }
        }
        Ok(())
    }

    /// Places each input in `dir` under `JOB/INDEX/PATH`: from this worker's store when it
    /// holds a sound copy, else from the first holder that serves one.
    pub fn stage(&self, task: &RunTask, dir: &Path) -> Result<(), OutputError> {
        for input in &task.inputs {
            let unavailable = || OutputError::InputUnavailable { task: input.from, path: input.file.path.clone() };
            if !valid_output_path(&input.file.path) {
                return Err(OutputError::BadName { path: input.file.path.clone() });
            }
            let dest = dir.join(input.relative_path());
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| store_error(e.into()))?;
            }
            if self.store.contains(&input.file.sha256)
                && self.store.copy_out(&input.file.sha256, &dest).map_err(store_error)?
            {
                continue;
            }
            let mut placed = false;
            for source in &input.sources {
                match self.runtime.block_on(self.client.fetch(source, &self.store, &input.file)) {
                    Ok(()) => {
                        if self.store.copy_out(&input.file.sha256, &dest).map_err(store_error)? {
                            placed = true;
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(input = %input.relative_path(), error = %e, "cannot fetch an input here"),
                }
            }
            if !placed {
                return Err(unavailable());
            }
        }
        Ok(())
    }
}

fn slot_number(task: &RunTask) -> usize {
    match task.task.slot {
        flotilla_core::model::TaskSlot::Array(i) => i as usize,
        flotilla_core::model::TaskSlot::Reduce => usize::MAX / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_before_they_are_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("sub")).expect("mkdir");
        std::fs::write(out.join("a.txt"), b"aaa").expect("write");
        std::fs::write(out.join("sub/b.txt"), b"bb").expect("write");
        let files = collect(&store, &out, 1 << 20).expect("collect");
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["a.txt", "sub/b.txt"]);
        assert!(files.iter().all(|f| store.contains(&f.sha256)));
        assert_eq!(collect(&store, &out, 4), Err(OutputError::OverQuota { quota: 4 }));
        std::os::unix::fs::symlink("/etc/passwd", out.join("link")).expect("symlink");
        assert_eq!(collect(&store, &out, 1 << 20), Err(OutputError::Symlink { path: "link".into() }));
    }
}
