//! The streams of attempts still running on this worker, for `flotilla job logs --follow`.
//!
//! The runner appends what it reads from a task's pipes; the server answers a read at an
//! offset. Only the start of each stream (what a result keeps) is held in memory: past that
//! the runner writes the whole stream to a spill file anyway, and reads come from there.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_core::model::{Fence, TaskId, MAX_OUTPUT_BYTES};
use flotilla_core::workflow::LogStream;

/// The most bytes one read returns.
pub const MAX_READ: usize = 1 << 20;

/// Attempts running on this worker, by task.
#[derive(Default)]
pub struct LiveLogs {
    attempts: Mutex<HashMap<TaskId, Arc<LiveAttempt>>>,
}

impl LiveLogs {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<LiveAttempt>>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt starts: its streams can be read from now on (a newer attempt of the task
    /// replaces an older one).
    pub fn start(&self, task: TaskId, fence: Fence) -> Arc<LiveAttempt> {
        let attempt = Arc::new(LiveAttempt { fence, streams: Default::default() });
        self.lock().insert(task, attempt.clone());
        attempt
    }

    /// The attempt ended: its streams are in its result (and kept logs) now.
    pub fn end(&self, task: TaskId, fence: Fence) {
        let mut attempts = self.lock();
        if attempts.get(&task).is_some_and(|a| a.fence == fence) {
            attempts.remove(&task);
        }
    }

    pub fn get(&self, task: TaskId) -> Option<Arc<LiveAttempt>> {
        self.lock().get(&task).cloned()
    }
}

/// One running attempt's two streams.
pub struct LiveAttempt {
    pub fence: Fence,
    streams: [Mutex<LiveStream>; 2],
}

#[derive(Default)]
struct LiveStream {
    /// The stream's start, up to what a result keeps.
    head: Vec<u8>,
    /// Bytes read from the pipe so far.
    total: u64,
    /// Where the whole stream is written once it outgrew `head`.
    spill: Option<PathBuf>,
}

fn slot(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

impl LiveAttempt {
    fn stream(&self, stream: LogStream) -> MutexGuard<'_, LiveStream> {
        self.streams[slot(stream)].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The runner read `bytes` from the stream (after writing them to the spill file, if
    /// there is one).
    pub fn append(&self, stream: LogStream, bytes: &[u8]) {
        let mut s = self.stream(stream);
        let room = MAX_OUTPUT_BYTES.saturating_sub(s.head.len());
        s.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        s.total += bytes.len() as u64;
    }

    /// The whole stream goes to `path` from now on (it holds every byte read so far).
    pub fn spilled(&self, stream: LogStream, path: &Path) {
        self.stream(stream).spill = Some(path.to_path_buf());
    }

    /// The spill file is gone (a full disk): bytes past the head are not readable.
    pub fn unspilled(&self, stream: LogStream) {
        self.stream(stream).spill = None;
    }

    /// Up to [`MAX_READ`] bytes from `offset`, and how many bytes the stream has so far.
    pub fn read(&self, stream: LogStream, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
        let (total, path) = {
            let s = self.stream(stream);
            let want = (s.total.saturating_sub(offset) as usize).min(MAX_READ);
            match &s.spill {
                // The spill file holds the whole stream: read past the head there.
                Some(path) if offset + want as u64 > s.head.len() as u64 => (s.total, path.clone()),
                // The head alone (without a spill file, a full disk: no more than it holds).
                _ => {
                    let start = (offset as usize).min(s.head.len());
                    let end = (start + want).min(s.head.len());
                    return Ok((s.head[start..end].to_vec(), s.total));
                }
            }
        };
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let want = (total.saturating_sub(offset) as usize).min(MAX_READ);
        let mut out = Vec::with_capacity(want);
        file.take(want as u64).read_to_end(&mut out)?;
        Ok((out, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_come_from_the_head_then_the_spill_file() {
        let logs = LiveLogs::default();
        let task = TaskId::array(1, 2);
        let fence = Fence { term: 1, attempt: 1 };
        let live = logs.start(task, fence);
        live.append(LogStream::Stdout, b"hello ");
        live.append(LogStream::Stdout, b"world");
        assert_eq!(live.read(LogStream::Stdout, 0).unwrap(), (b"hello world".to_vec(), 11));
        assert_eq!(live.read(LogStream::Stdout, 6).unwrap(), (b"world".to_vec(), 11));
        assert_eq!(live.read(LogStream::Stdout, 11).unwrap(), (Vec::new(), 11));
        assert_eq!(live.read(LogStream::Stderr, 0).unwrap(), (Vec::new(), 0));

        // Past the head, the spill file holds the whole stream.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        let mut whole = b"hello world".to_vec();
        whole.resize(MAX_OUTPUT_BYTES + 100, b'x');
        std::fs::File::create(&path).unwrap().write_all(&whole).unwrap();
        live.spilled(LogStream::Stdout, &path);
        live.append(LogStream::Stdout, &whole[11..]);
        let (bytes, total) = live.read(LogStream::Stdout, MAX_OUTPUT_BYTES as u64).unwrap();
        assert_eq!((bytes.len(), total), (100, whole.len() as u64));

        // Without the spill file (a full disk), what the head holds from the offset.
        live.unspilled(LogStream::Stdout);
        let (bytes, _) = live.read(LogStream::Stdout, MAX_OUTPUT_BYTES as u64 - 5).unwrap();
        assert_eq!(bytes, b"xxxxx");

        logs.end(task, Fence { term: 1, attempt: 2 });
        assert!(logs.get(task).is_some(), "another attempt's end leaves it");
        logs.end(task, fence);
        assert!(logs.get(task).is_none());
    }
}
