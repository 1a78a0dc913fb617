//! Runs one task attempt as a child process in its own process group.
//!
//! Arguments are passed verbatim (no shell). stdout and stderr are kept up to
//! [`MAX_OUTPUT_BYTES`] each and drained beyond that so the child never blocks on a full pipe.
//! On timeout or stop the whole group is killed; when the main process exits, whatever it left
//! running in its group is killed too, so a task never outlives its attempt.
//!
//! Each attempt runs on a thread of the blocking pool: `posix_spawn` (through `std`), then one
//! `poll(2)` loop over the pipes and a pidfd that tells when the process exits. This costs
//! about what a bare spawn-and-wait loop costs, which matters when tasks last a millisecond.
//! An attempt that ends within [`QUIET_START`] is never reported as started: its result
//! follows at once, and the leader is spared a message and a log entry.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_core::model::{Captured, Outcome, TaskSlot, MAX_OUTPUT_BYTES};
use flotilla_core::workflow::{LogFile, LogStream, OutputError, Outputs};
use flotilla_proto::wire::RunTask;

use crate::sandbox::{Sandbox, TaskDirs};

/// What the runner asks of the worker's output store around one attempt.
pub trait TaskData {
    /// Places the attempt's inputs in `dir` (fetching the ones not held here).
    fn stage(&self, task: &RunTask, dir: &Path) -> Result<(), OutputError>;
    /// Keeps what a successful attempt left in `dir` (stored, copied to peers).
    fn keep(&self, task: &RunTask, dir: &Path) -> Outputs;
    /// A file for a stream longer than the result keeps (`None`: it is not kept whole).
    fn spill(&self) -> Option<(File, PathBuf)> {
        None
    }
    /// Where the attempt's streams can be read while it runs (`job logs --follow`).
    fn live(&self, _task: &RunTask) -> Option<std::sync::Arc<flotilla_blobs::live::LiveAttempt>> {
        None
    }

    /// The attempt ended: its streams are no longer read live.
    fn live_ended(&self, _task: &RunTask) {}

    /// Keeps a spilled stream whole; `None` if it cannot be.
    fn keep_log(&self, _path: &Path, _stream: LogStream) -> Option<LogFile> {
        None
    }
}

/// A stream written whole to a file as it goes, once it outgrew what the result keeps.
struct Spill {
    file: File,
    path: PathBuf,
}

/// No store: inputs are not placed and outputs not kept (tests of the runner alone).
pub struct NoData;

impl TaskData for NoData {
    fn stage(&self, _: &RunTask, _: &Path) -> Result<(), OutputError> {
        Ok(())
    }

    fn keep(&self, _: &RunTask, _: &Path) -> Outputs {
        Outputs::default()
    }
}

/// Attempts shorter than this are reported only by their result.
pub const QUIET_START: Duration = Duration::from_millis(50);

/// How the attempt ended from the worker's point of view.
// One value per attempt, moved once to its report: boxing the outcome would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Ended {
    /// The process ran (or failed to start); report this outcome.
    Finished(Outcome),
    /// The master told us to stop it; there is nothing to report.
    Stopped,
}

/// Sends SIGKILL to a whole process group. Errors (the group is already gone) are ignored.
pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory is shared.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Stops an attempt from another thread: marks it stopped and kills its group if it has one.
#[derive(Default)]
pub struct Stopper {
    stopped: AtomicBool,
    pgid: AtomicI32,
    /// Microseconds the process took to start, plus one (0: not started).
    spawn_micros: std::sync::atomic::AtomicU64,
}

impl Stopper {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        kill_group(self.pgid.load(Ordering::SeqCst));
    }

    /// How long the process took to start, once it has.
    pub fn spawn_time(&self) -> Option<Duration> {
        match self.spawn_micros.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Records the process groups of running attempts in an append-only file (`+pgid`/`-pgid`
/// lines, no fsync), so that a restarted worker can kill what its previous process left
/// behind. Far cheaper than a file per attempt.
pub struct PgidJournal {
    path: PathBuf,
    inner: Mutex<Journal>,
}

struct Journal {
    file: Option<File>,
    live: HashSet<i32>,
    lines: u64,
}

impl PgidJournal {
    /// Opens `dir/running.pgids`, first killing every group a previous run left recorded as
    /// running. Returns the journal and how many groups were killed.
    pub fn open(dir: &Path) -> std::io::Result<(PgidJournal, usize)> {
        let path = dir.join("running.pgids");
        let mut leftovers = HashSet::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Some(p) = line.strip_prefix('+').and_then(|p| p.parse::<i32>().ok()) {
                    leftovers.insert(p);
                } else if let Some(p) = line.strip_prefix('-').and_then(|p| p.parse::<i32>().ok()) {
                    leftovers.remove(&p);
                }
            }
        }
        for pgid in &leftovers {
            kill_group(*pgid);
        }
        let file = File::create(&path)?;
        let journal =
            PgidJournal { path, inner: Mutex::new(Journal { file: Some(file), live: HashSet::new(), lines: 0 }) };
        Ok((journal, leftovers.len()))
    }

    fn record(&self, pgid: i32, running: bool) {
        let mut j = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if running {
            j.live.insert(pgid);
        } else {
            j.live.remove(&pgid);
        }
        j.lines += 1;
        if j.lines > 100_000 {
            // Compact: rewrite with the groups running now.
            let mut text = String::new();
            for p in &j.live {
                text.push_str(&format!("+{p}\n"));
            }
            if std::fs::write(&self.path, text).is_ok() {
                j.file = File::options().append(true).open(&self.path).ok();
                j.lines = j.live.len() as u64;
            }
            return;
        }
        let line = format!("{}{pgid}\n", if running { '+' } else { '-' });
        if let Some(f) = j.file.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Reads what is available from a non-blocking pipe; false at end of file. Once the stream
/// outgrows what the result keeps, all of it also goes to a spill file (if `open` gives one).
fn drain(
    fd: &mut File,
    kept: &mut Vec<u8>,
    total: &mut u64,
    spill: &mut Option<Spill>,
    open: &dyn Fn() -> Option<(File, PathBuf)>,
    live: Option<(&flotilla_blobs::live::LiveAttempt, LogStream)>,
) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match fd.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let whole_so_far = *total == kept.len() as u64;
                if spill.is_none() && whole_so_far && *total + n as u64 > MAX_OUTPUT_BYTES as u64 {
                    if let Some((mut file, path)) = open() {
                        match file.write_all(kept) {
                            Ok(()) => {
                                if let Some((live, stream)) = live {
                                    live.spilled(stream, &path);
                                }
                                *spill = Some(Spill { file, path })
                            }
                            Err(_) => {
                                let _ = std::fs::remove_file(&path);
                            }
                        }
                    }
                }
                if let Some(s) = spill.as_mut() {
                    if s.file.write_all(&buf[..n]).is_err() {
                        // A full disk: the stream is not kept whole (its start still is).
                        if let Some(s) = spill.take() {
                            let _ = std::fs::remove_file(&s.path);
                            if let Some((live, stream)) = live {
                                live.unspilled(stream);
                            }
                        }
                    }
                }
                *total += n as u64;
                if let Some((live, stream)) = live {
                    live.append(stream, &buf[..n]);
                }
                let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// A descriptor that becomes readable when the process exits (Linux 5.3+), if available.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a fresh descriptor we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Runs the attempt to its end, blocking the calling thread (run it on a blocking pool).
/// `on_start` is called with the process group id once the attempt has run for
/// [`QUIET_START`] (never, if it ends sooner).
#[allow(clippy::too_many_arguments)]
pub fn run(
    task: &RunTask,
    worker_name: &str,
    sandbox: &Sandbox,
    journal: &PgidJournal,
    stopper: &Stopper,
    data: &dyn TaskData,
    on_start: impl FnOnce(),
) -> Ended {
    let mut dirs = None;
    let mut spills = [None, None];
    let live = data.live(task);
    let mut ended =
        run_in(task, worker_name, sandbox, &mut dirs, journal, stopper, data, &mut spills, live.as_deref(), on_start);
    data.live_ended(task);
    if let (Ended::Finished(outcome), Some(d)) = (&mut ended, &dirs) {
        // Only a successful attempt's outputs are kept; a failed one's go with its directory.
        if outcome.succeeded() && has_entries(&d.output) {
            outcome.outputs = data.keep(task, &d.output);
        }
    }
    // Long logs are kept whatever the outcome (a failed attempt's are the ones people read).
    for (spill, stream) in spills.into_iter().zip([LogStream::Stdout, LogStream::Stderr]) {
        let Some(spill) = spill else { continue };
        drop(spill.file);
        match &mut ended {
            Ended::Finished(outcome) => outcome.outputs.logs.extend(data.keep_log(&spill.path, stream)),
            _ => {
                let _ = std::fs::remove_file(&spill.path);
            }
        }
    }
    sandbox.finish(dirs);
    ended
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    task: &RunTask,
    worker_name: &str,
    sandbox: &Sandbox,
    dirs: &mut Option<TaskDirs>,
    journal: &PgidJournal,
    stopper: &Stopper,
    data: &dyn TaskData,
    spills: &mut [Option<Spill>; 2],
    live: Option<&flotilla_blobs::live::LiveAttempt>,
    on_start: impl FnOnce(),
) -> Ended {
    let started = Instant::now();
    let mut cmd = Command::new(&task.command[0]);
    // The sandbox first: the job's own variables come after it and are the job's to set.
    match sandbox.prepare(&mut cmd, task) {
        Ok(d) => *dirs = d,
        Err(e) => {
            return Ended::Finished(Outcome {
                spawn_error: Some(e),
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            })
        }
    }
    if let Some(input) = dirs.as_ref().and_then(|d| d.input.as_deref()) {
        let staged =
            data.stage(task, input).and_then(|()| sandbox.hand_over(input).map_err(|kind| OutputError::Store { kind }));
        if let Err(error) = staged {
            return Ended::Finished(Outcome {
                outputs: Outputs { error: Some(error), ..Default::default() },
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            });
        }
    }
    cmd.args(&task.command[1..])
        .envs(task.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLOTILLA_JOB_ID", task.task.job.to_string())
        .env("FLOTILLA_ATTEMPT", task.fence.attempt.to_string())
        .env("FLOTILLA_WORKER", worker_name)
        .stdin(if task.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    match task.task.slot {
        TaskSlot::Array(i) => cmd.env("FLOTILLA_TASK_INDEX", i.to_string()),
        TaskSlot::Reduce => cmd.env("FLOTILLA_REDUCE", "1"),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ended::Finished(Outcome {
                spawn_error: Some(format!("{}: {e}", task.command[0])),
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            })
        }
    };
    stopper.spawn_micros.store(started.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
    let pgid = child.id() as i32;
    stopper.pgid.store(pgid, Ordering::SeqCst);
    journal.record(pgid, true);
    if stopper.is_stopped() {
        kill_group(pgid); // stopped while it was being started
    }

    // Pipes as plain non-blocking files, watched together with the exit notification.
    let mut stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
    let mut stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
    let mut stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
    for f in [&stdout, &stderr, &stdin].into_iter().flatten() {
        set_nonblocking(f.as_raw_fd());
    }
    let input = task.stdin.as_deref().unwrap_or("").as_bytes();
    let mut written = 0usize;
    let exit_fd = pidfd(child.id());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_total, mut err_total) = (0u64, 0u64);
    let deadline = task.timeout_ms.map(|ms| started + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut reported_start = false;
    let mut on_start = Some(on_start);
    let mut exited = None;
    let mut drain_until: Option<Instant> = None;

    loop {
        if exited.is_none() {
            exited = child.try_wait().ok().flatten();
            if exited.is_some() {
                // Whatever the task left running in its group goes with it; this also closes
                // the pipes those processes held.
                kill_group(pgid);
                drain_until = Some(Instant::now() + Duration::from_secs(2));
            }
        }
        if exited.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        if drain_until.is_some_and(|t| Instant::now() > t) {
            break; // a process outside the group still holds a pipe: stop waiting for it
        }
        let now = Instant::now();
        if !reported_start && now.duration_since(started) >= QUIET_START && exited.is_none() {
            reported_start = true;
            if let Some(f) = on_start.take() {
                f();
            }
        }
        if let Some(d) = deadline {
            if now >= d && exited.is_none() && !timed_out {
                timed_out = true;
                kill_group(pgid);
            }
        }
        // Sleep in poll until something happens or the next timer (start report, deadline).
        let mut wake = Duration::from_millis(if exit_fd.is_some() { 1_000 } else { 20 });
        if !reported_start {
            wake = wake.min(QUIET_START.saturating_sub(now.duration_since(started)) + Duration::from_millis(1));
        }
        if let Some(d) = deadline {
            wake = wake.min(d.saturating_duration_since(now) + Duration::from_millis(1));
        }
        if let Some(t) = drain_until {
            wake = wake.min(t.saturating_duration_since(now) + Duration::from_millis(1));
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut push = |fd: RawFd, events: libc::c_short| fds.push(libc::pollfd { fd, events, revents: 0 });
        if let Some(f) = &stdout {
            push(f.as_raw_fd(), libc::POLLIN);
        }
        if let Some(f) = &stderr {
            push(f.as_raw_fd(), libc::POLLIN);
        }
        if let Some(f) = &stdin {
            push(f.as_raw_fd(), libc::POLLOUT);
        }
        if let (Some(fd), None) = (&exit_fd, &exited) {
            push(fd.as_raw_fd(), libc::POLLIN);
        }
        // SAFETY: `fds` is a valid array of pollfd for its length.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wake.as_millis().min(60_000) as libc::c_int);
        }
        let open = || data.spill();
        if let Some(f) = stdout.as_mut() {
            if !drain(f, &mut out, &mut out_total, &mut spills[0], &open, live.map(|l| (l, LogStream::Stdout))) {
                stdout = None;
            }
        }
        if let Some(f) = stderr.as_mut() {
            if !drain(f, &mut err, &mut err_total, &mut spills[1], &open, live.map(|l| (l, LogStream::Stderr))) {
                stderr = None;
            }
        }
        if let Some(f) = stdin.as_mut() {
            match f.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // A task that does not read its input closes the pipe; that is not an error.
                Err(_) => written = input.len(),
            }
            if written >= input.len() {
                stdin = None; // closes it: end of input
            }
        }
    }
    let status = match exited {
        Some(s) => Ok(s),
        None => child.wait(),
    };
    kill_group(pgid);
    journal.record(pgid, false);
    if stopper.is_stopped() {
        return Ended::Stopped;
    }
    let (exit_code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    Ended::Finished(Outcome {
        exit_code,
        signal,
        timed_out,
        spawn_error: status.err().map(|e| format!("waiting for the process failed: {e}")),
        stdout: Captured::from_bytes(&out, out_total),
        stderr: Captured::from_bytes(&err, err_total),
        duration_ms: started.elapsed().as_millis() as u64,
        outputs: Outputs::default(),
    })
}

/// Runs [`run`] on the blocking pool.
/// [`run`] on the calling thread (a blocking one); a panic in the runner becomes a spawn
/// error of the task instead of a lost report.
pub fn run_catching(
    task: &RunTask,
    worker_name: &str,
    sandbox: &Sandbox,
    journal: &PgidJournal,
    stopper: &Stopper,
    data: &dyn TaskData,
    on_start: impl FnOnce() + Send + 'static,
) -> Ended {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(task, worker_name, sandbox, journal, stopper, data, on_start)
    }));
    result.unwrap_or_else(|_| {
        Ended::Finished(Outcome { spawn_error: Some("the task runner panicked".to_string()), ..Default::default() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::model::{Fence, TaskId};
    use std::sync::Arc;

    fn task(command: &[&str]) -> RunTask {
        RunTask {
            task: TaskId::array(1, 7),
            fence: Fence { term: 1, attempt: 1 },
            command: command.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cpus: 1,
            timeout_ms: None,
            stdin: None,
            limits: Default::default(),
            inputs: Vec::new(),
            outputs: Default::default(),
        }
    }

    fn journal() -> (tempfile::TempDir, PgidJournal) {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = PgidJournal::open(d.path()).unwrap();
        (d, j)
    }

    fn finish(t: &RunTask) -> Outcome {
        let (_d, j) = journal();
        match run(t, "w", &Sandbox::default(), &j, &Stopper::default(), &NoData, || {}) {
            Ended::Finished(o) => o,
            Ended::Stopped => panic!("stopped"),
        }
    }

    #[test]
    fn runs_with_the_task_environment_and_no_shell() {
        let o = finish(&task(&["sh", "-c", "echo $FLOTILLA_JOB_ID:$FLOTILLA_TASK_INDEX:$FLOTILLA_ATTEMPT"]));
        assert_eq!(o.exit_code, Some(0));
        assert_eq!(o.stdout.text, "1:7:1\n");
        let o = finish(&task(&["echo", "$HOME", "a b"]));
        assert_eq!(o.stdout.text, "$HOME a b\n", "arguments are verbatim");
        let o = finish(&task(&["sh", "-c", "echo oops >&2; exit 3"]));
        assert_eq!((o.exit_code, o.stderr.text.as_str()), (Some(3), "oops\n"));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let o = finish(&task(&["/no/such/program"]));
        assert!(o.spawn_error.as_deref().unwrap().contains("/no/such/program"));
        assert!(!o.succeeded());
    }

    #[test]
    fn huge_output_is_truncated_and_marked() {
        let o = finish(&task(&["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"]));
        assert!(o.stdout.truncated);
        assert_eq!(o.stdout.text.len(), MAX_OUTPUT_BYTES);
        assert_eq!(o.stdout.total_bytes, 1_000_000);
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let mut t = task(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        t.timeout_ms = Some(200);
        let started = Instant::now();
        let o = finish(&t);
        assert!(o.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10), "background child must not hold the pipes");
    }

    #[test]
    fn a_background_child_left_behind_does_not_hold_the_attempt() {
        let started = Instant::now();
        let o = finish(&task(&["sh", "-c", "sleep 30 & echo done"]));
        assert_eq!(o.stdout.text, "done\n");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_is_fed_even_when_large() {
        let mut t = task(&["wc", "-l"]);
        t.stdin = Some("line\n".repeat(200_000));
        assert_eq!(finish(&t).stdout.text.trim(), "200000");
    }

    #[test]
    fn a_stop_kills_and_reports_nothing_and_short_tasks_report_no_start() {
        let (_d, j) = journal();
        let j = Arc::new(j);
        let stopper = Arc::new(Stopper::default());
        let (s2, j2) = (stopper.clone(), j.clone());
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let h = std::thread::spawn(move || {
            run(&task(&["sleep", "30"]), "w", &Sandbox::default(), &j2, &s2, &NoData, move || {
                flag.store(true, Ordering::SeqCst)
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(started.load(Ordering::SeqCst), "a task running past the quiet start is reported");
        stopper.stop();
        assert!(matches!(h.join().unwrap(), Ended::Stopped));
        let quiet = Arc::new(AtomicBool::new(false));
        let flag = quiet.clone();
        run(&task(&["true"]), "w", &Sandbox::default(), &j, &Stopper::default(), &NoData, move || {
            flag.store(true, Ordering::SeqCst)
        });
        assert!(!quiet.load(Ordering::SeqCst), "a task shorter than the quiet start is not reported");
    }

    #[test]
    fn the_journal_kills_what_a_previous_run_left() {
        let d = tempfile::tempdir().unwrap();
        let (j, _) = PgidJournal::open(d.path()).unwrap();
        let mut child = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        j.record(child.id() as i32, true);
        drop(j);
        let (_j, killed) = PgidJournal::open(d.path()).unwrap();
        assert_eq!(killed, 1);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
