//! A worker's store of output bytes, named by their SHA-256: `DIR/ab/abcdef…`. A blob is
//! written to a temporary file and renamed into place once its digest is known (and, for a
//! copy received from elsewhere, checked), so a name in the store always holds the whole of
//! what it names unless the disk corrupted it afterwards: every read checks again.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_core::workflow::Digest;
use sha2::{Digest as _, Sha256};

/// Bytes read or written at a time.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the disk is full")]
    DiskFull,
    #[error("the bytes do not match their digest (expected {expected}, got {got})")]
    Mismatch { expected: Digest, got: Digest },
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
            StoreError::DiskFull
        } else {
            StoreError::Io(e)
        }
    }
}

/// Called with the digest of each stored blob a read found damaged (after it is removed).
pub type CorruptHook = Box<dyn Fn(Digest) + Send + Sync>;

pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    next_tmp: AtomicU64,
    on_corrupt: std::sync::OnceLock<CorruptHook>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating) the store in `root`; temporary files a crash left are removed.
    pub fn open(root: &Path) -> io::Result<Store> {
        let tmp = root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        Ok(Store { root: root.to_path_buf(), tmp, next_tmp: AtomicU64::new(0), on_corrupt: Default::default() })
    }

    /// Whom to tell of each damaged blob found (the worker tells its leader); set once.
    pub fn on_corrupt(&self, hook: CorruptHook) {
        let _ = self.on_corrupt.set(hook);
    }

    /// A read found the blob's bytes do not match its name: it is removed, so that it is
    /// fetched again from elsewhere rather than served, and the hook is told.
    pub fn discard_corrupt(&self, digest: &Digest) {
        let path = self.path(digest);
        tracing::warn!(digest = %digest, path = %path.display(), "a stored output copy is damaged; discarded");
        let _ = std::fs::remove_file(&path);
        if let Some(hook) = self.on_corrupt.get() {
            hook(*digest);
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// A new temporary file in the store, for bytes whose digest is not known yet.
    pub fn writer(&self) -> Result<Writer<'_>, StoreError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}", std::process::id()));
        let file = File::create(&path)?;
        Ok(Writer { store: self, path, file: Some(file), hasher: Sha256::new(), size: 0, limit: u64::MAX })
    }

    /// A new empty file in the store's temporary directory (a task's long log, written as the
    /// task runs), to be taken in with [`Store::adopt`] or removed.
    pub fn temp_file(&self) -> io::Result<(File, PathBuf)> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-log-{n}", std::process::id()));
        Ok((File::create(&path)?, path))
    }

    /// Takes a file from the store's temporary directory in under its digest (hashed here,
    /// moved, not copied).
    pub fn adopt(&self, path: &Path) -> Result<(Digest, u64), StoreError> {
        let digest = hash_file(path)?;
        let size = std::fs::metadata(path)?.len();
        let dest = self.path(&digest);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(path, &dest)?;
        Ok((digest, size))
    }

    /// Copies the file at `src` into the store (hashing as it goes); at most `limit` bytes.
    pub fn put_file(&self, src: &Path, limit: u64) -> Result<(Digest, u64), StoreError> {
        let mut input = File::open(src)?;
        let mut writer = self.writer()?;
        writer.limit = limit;
        each_chunk(&mut input, |chunk| writer.write(chunk))?;
        let size = writer.size;
        Ok((writer.finish(None)?, size))
    }

    /// Whether the stored copy still holds the bytes its name says; a damaged one is removed
    /// (so it is fetched again from elsewhere) and `false` returned.
    pub fn verify(&self, digest: &Digest) -> io::Result<bool> {
        let path = self.path(digest);
        let got = hash_file(&path)?;
        if got == *digest {
            return Ok(true);
        }
        self.discard_corrupt(digest);
        Ok(false)
    }

    /// Copies a stored blob to `dest` (a task's input directory), checking its digest on the
    /// way: `Ok(false)` (and the copy discarded) when it is damaged.
    pub fn copy_out(&self, digest: &Digest, dest: &Path) -> Result<bool, StoreError> {
        let mut input = File::open(self.path(digest))?;
        let mut out = File::create(dest)?;
        let mut hasher = Sha256::new();
        each_chunk(&mut input, |chunk| {
            hasher.update(chunk);
            out.write_all(chunk).map_err(StoreError::from)
        })?;
        if Digest(hasher.finalize().into()) != *digest {
            let _ = std::fs::remove_file(dest);
            self.discard_corrupt(digest);
            return Ok(false);
        }
        Ok(true)
    }

    /// Removes a blob (its outputs' job is gone).
    pub fn remove(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.path(digest));
    }

    /// A read was asked for a blob this store does not hold: whoever counts this worker as
    /// a holder of it is told, through the hook, as of a damaged one.
    pub fn report_missing(&self, digest: &Digest) {
        tracing::warn!(digest = %digest, "asked for an output copy this worker does not hold");
        if let Some(hook) = self.on_corrupt.get() {
            hook(*digest);
        }
    }

    /// Marks a blob as just stored (again): it is kept for a new task though it was already
    /// here, so it must not look old to the collection of garbage ([`Store::older_than`]).
    pub fn touch(&self, digest: &Digest) {
        if let Ok(file) = File::options().append(true).open(self.path(digest)) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// Blobs last stored longer ago than `age`.
    pub fn older_than(&self, age: std::time::Duration) -> Vec<Digest> {
        let cutoff = std::time::SystemTime::now() - age;
        self.list()
            .into_iter()
            .filter(|d| std::fs::metadata(self.path(d)).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff))
            .collect()
    }

    /// Removes a blob the leader called garbage, unless it was stored again within `age`
    /// (since the inventory that named it was taken). Returns whether it was removed.
    pub fn discard_if_older(&self, digest: &Digest, age: std::time::Duration) -> bool {
        let path = self.path(digest);
        let cutoff = std::time::SystemTime::now() - age;
        let old = std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
        old && std::fs::remove_file(&path).is_ok()
    }

    /// Every blob held, by digest.
    pub fn list(&self) -> Vec<Digest> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else { return out };
        for dir in dirs.flatten() {
            if dir.file_name().len() != 2 {
                continue;
            }
            let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
            out.extend(files.flatten().filter_map(|f| Digest::parse(f.file_name().to_str()?)));
        }
        out
    }
}

/// Bytes going into the store: hashed as written, named when finished.
pub struct Writer<'a> {
    store: &'a Store,
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Writer<'_> {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            return Err(StoreError::TooLarge { limit: self.limit });
        }
        self.hasher.update(bytes);
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes).map_err(StoreError::from),
            None => Err(StoreError::Io(io::Error::other("writer already finished"))),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Names the bytes by their digest; with `expected`, refuses them unless they match.
    pub fn finish(mut self, expected: Option<Digest>) -> Result<Digest, StoreError> {
        let file = self.file.take();
        drop(file);
        let got = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected.filter(|e| *e != got) {
            return Err(StoreError::Mismatch { expected, got });
        }
        let dest = self.store.path(&got);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&self.path, &dest)?;
        Ok(got)
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Not finished (an error, a refused copy): the temporary file goes.
        if self.file.is_some() || self.path.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The SHA-256 of a file's bytes.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut input = File::open(path)?;
    let mut hasher = Sha256::new();
    each_chunk(&mut input, |chunk| {
        hasher.update(chunk);
        Ok::<(), io::Error>(())
    })?;
    Ok(Digest(hasher.finalize().into()))
}

/// Reads `input` to its end a chunk at a time, handing each to `take`.
fn each_chunk<E: From<io::Error>>(input: &mut File, mut take: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => take(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The SHA-256 of some bytes.
pub fn hash_bytes(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_digest_and_damage_is_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let src = dir.path().join("a.txt");
        std::fs::write(&src, b"hello\n").expect("write");
        let (digest, size) = store.put_file(&src, 1 << 20).expect("put");
        assert_eq!((digest, size), (hash_bytes(b"hello\n"), 6));
        assert!(store.contains(&digest));
        assert_eq!(store.list(), vec![digest]);
        assert!(store.verify(&digest).expect("verify"));
        let dest = dir.path().join("copy");
        assert!(store.copy_out(&digest, &dest).expect("copy"));
        assert_eq!(std::fs::read(&dest).expect("read"), b"hello\n");
        std::fs::write(store.path(&digest), b"hellO\n").expect("damage");
        assert!(!store.verify(&digest).expect("verify"), "damage is seen");
        assert!(!store.contains(&digest), "and the damaged copy discarded");
        assert!(matches!(store.put_file(&src, 3), Err(StoreError::TooLarge { limit: 3 })));
        let mut w = store.writer().expect("writer");
        w.write(b"x").expect("write");
        assert!(matches!(w.finish(Some(digest)), Err(StoreError::Mismatch { .. })));
        assert_eq!(std::fs::read_dir(dir.path().join("store/tmp")).expect("tmp").count(), 0, "no temporary left");
    }
}
