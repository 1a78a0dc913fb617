//! Runs one task attempt as a child process in its own process group.
//!
//! Arguments are passed verbatim (no shell). stdout and stderr are kept up to
//! [`MAX_OUTPUT_BYTES`] each and drained beyond that so the child never blocks on a full pipe.
//! On timeout or stop the whole group is killed; when the main process exits, whatever it left
//! running in its group is killed too, so a task never outlives its attempt.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use flotilla_core::model::{Captured, Outcome, TaskSlot, MAX_OUTPUT_BYTES};
use flotilla_proto::wire::RunTask;

/// How the attempt ended from the worker's point of view.
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

/// Where the process group ids of running tasks are recorded, so that a restarted worker can
/// kill what its previous incarnation left behind.
#[derive(Clone)]
pub struct PgidDir(pub PathBuf);

impl PgidDir {
    fn path(&self, task: &RunTask) -> PathBuf {
        let slot = match task.task.slot {
            TaskSlot::Array(i) => i.to_string(),
            TaskSlot::Reduce => "reduce".to_string(),
        };
        self.0.join(format!("{}-{}-{}.pgid", task.task.job, slot, task.fence.attempt))
    }

    /// Kills every group recorded by an earlier run of this worker and forgets them.
    pub fn kill_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.0) else { return 0 };
        let mut killed = 0;
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                if let Ok(pgid) = text.trim().parse::<i32>() {
                    kill_group(pgid);
                    killed += 1;
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        killed
    }
}

/// Reads a stream to its end, keeping the first `MAX_OUTPUT_BYTES`.
async fn capture<R: AsyncRead + Unpin>(mut reader: R) -> Captured {
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    Captured::from_bytes(&kept, total)
}

/// Runs the attempt to its end. `on_start` is called once the process exists.
pub async fn run(
    task: &RunTask,
    worker_name: &str,
    pgids: &PgidDir,
    stop: CancellationToken,
    on_start: impl FnOnce(),
) -> Ended {
    let started = Instant::now();
    let mut cmd = Command::new(&task.command[0]);
    cmd.args(&task.command[1..])
        .envs(task.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLOTILLA_JOB_ID", task.task.job.to_string())
        .env("FLOTILLA_ATTEMPT", task.fence.attempt.to_string())
        .env("FLOTILLA_WORKER", worker_name)
        .stdin(if task.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    match task.task.slot {
        TaskSlot::Array(i) => cmd.env("FLOTILLA_TASK_INDEX", i.to_string()),
        TaskSlot::Reduce => cmd.env("FLOTILLA_REDUCE", "1"),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            on_start();
            return Ended::Finished(Outcome {
                spawn_error: Some(format!("{}: {e}", task.command[0])),
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            });
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let pgid_file = pgids.path(task);
    let _ = std::fs::write(&pgid_file, pgid.to_string());
    on_start();

    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), task.stdin.clone()) {
        tokio::spawn(async move {
            // A task that does not read its input closes the pipe; that is not an error.
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }
    let stdout = child.stdout.take().map(|s| tokio::spawn(capture(s)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(capture(s)));

    let timeout = task.timeout_ms.map(Duration::from_millis).unwrap_or(Duration::MAX);
    let mut timed_out = false;
    let mut stopped = false;
    let status = tokio::select! {
        s = child.wait() => s,
        _ = tokio::time::sleep(timeout) => {
            timed_out = true;
            kill_group(pgid);
            child.wait().await
        }
        _ = stop.cancelled() => {
            stopped = true;
            kill_group(pgid);
            child.wait().await
        }
    };
    // Whatever the task left running in its group goes with it; this also closes the pipes.
    kill_group(pgid);
    let _ = std::fs::remove_file(&pgid_file);
    let grace = Duration::from_secs(2);
    let collect = |h: Option<tokio::task::JoinHandle<Captured>>| async move {
        match h {
            Some(h) => tokio::time::timeout(grace, h).await.ok().and_then(|r| r.ok()).unwrap_or_default(),
            None => Captured::default(),
        }
    };
    let (stdout, stderr) = (collect(stdout).await, collect(stderr).await);
    if stopped {
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
        stdout,
        stderr,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::model::{Fence, TaskId};

    fn task(command: &[&str]) -> RunTask {
        RunTask {
            task: TaskId::array(1, 7),
            fence: Fence { term: 1, attempt: 1 },
            command: command.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cpus: 1,
            timeout_ms: None,
            stdin: None,
        }
    }

    fn dir() -> (tempfile::TempDir, PgidDir) {
        let d = tempfile::tempdir().unwrap();
        let p = PgidDir(d.path().to_path_buf());
        (d, p)
    }

    async fn finish(t: &RunTask) -> Outcome {
        let (_d, p) = dir();
        match run(t, "w", &p, CancellationToken::new(), || {}).await {
            Ended::Finished(o) => o,
            Ended::Stopped => panic!("stopped"),
        }
    }

    #[tokio::test]
    async fn runs_with_the_task_environment_and_no_shell() {
        let o = finish(&task(&["sh", "-c", "echo $FLOTILLA_JOB_ID:$FLOTILLA_TASK_INDEX:$FLOTILLA_ATTEMPT"])).await;
        assert_eq!(o.exit_code, Some(0));
        assert_eq!(o.stdout.text, "1:7:1\n");
        let o = finish(&task(&["echo", "$HOME", "a b"])).await;
        assert_eq!(o.stdout.text, "$HOME a b\n", "arguments are verbatim");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let o = finish(&task(&["/no/such/program"])).await;
        assert!(o.spawn_error.as_deref().unwrap().contains("/no/such/program"));
        assert!(!o.succeeded());
    }

    #[tokio::test]
    async fn huge_output_is_truncated_and_marked() {
        let o = finish(&task(&["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"])).await;
        assert!(o.stdout.truncated);
        assert_eq!(o.stdout.text.len(), MAX_OUTPUT_BYTES);
        assert_eq!(o.stdout.total_bytes, 1_000_000);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let mut t = task(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        t.timeout_ms = Some(200);
        let started = Instant::now();
        let o = finish(&t).await;
        assert!(o.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10), "background child must not hold the pipes");
    }

    #[tokio::test]
    async fn stdin_is_fed_and_a_stop_reports_nothing() {
        let mut t = task(&["wc", "-l"]);
        t.stdin = Some("a\nb\nc\n".into());
        assert_eq!(finish(&t).await.stdout.text.trim(), "3");
        let (_d, p) = dir();
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let t = task(&["sleep", "30"]);
        let h = tokio::spawn(async move { run(&t, "w", &p, s2, || {}).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        assert!(matches!(h.await.unwrap(), Ended::Stopped));
    }
}
