//! Soak: N tasks (default 20,000,000) with a line of stdout each, through 3 masters and 100
//! simulated workers × 8 slots, as 10,000-task jobs one after another, with a retention that
//! keeps the 10 newest finished jobs. Prints the leader's and a follower's RSS at 10 points and
//! the throughput of each tenth (flat is the goal: memory bounded by what is retained, speed not
//! decaying with history), the follower's data directory size, and at the end the time for a
//! SIGKILLed follower to restart and catch up with the leader.
//!
//! From the leader's metrics it prints the last snapshot's size, records and build time, and
//! the longest time a snapshot build held the state lock (the longest apply stall snapshots
//! cause). At the end it also wipes a follower's data directory and times its rebuild by
//! snapshot install. `FLOTILLA_SOAK_JOB_TASKS` sets the job size (the retention keeps 10 jobs,
//! so this sets how many records are retained); if a job does not finish within two minutes,
//! the masters' logs are kept in `$TMPDIR/flotilla-soak-logs`.

use std::time::{Duration, Instant};

use anyhow::Context;

use flotilla_proto::api::{JobRetention, SubmitRequest};

use crate::common::{figure, wait_job, Bench};
use crate::procfs;

const JOB_TASKS: u64 = 10_000;
const POINTS: u64 = 10;

/// One metric's value from a master's `/metrics` (plain HTTP on loopback, no token needed).
async fn metric(address: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut body)).await.ok()?.ok()?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the master at `address` has applied `target`; the time it took.
async fn caught_up(
    client: &flotilla_client::Client,
    address: &str,
    target: u64,
    from: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(info) = client.node(address).await {
            if info.last_applied.unwrap_or(0) >= target {
                return Ok(from.elapsed());
            }
        }
        anyhow::ensure!(from.elapsed() < Duration::from_secs(300), "the follower did not catch up in 5 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

pub async fn run(tasks: u64) -> anyhow::Result<()> {
    let mut bench = Bench::start(3, &[]).await?;
    let client = bench.client()?;
    let (leader, _) = bench.leader_pid().await?;
    let follower = (1..=3).find(|id| *id != leader).context("no follower")?;
    client.set_job_retention(&JobRetention { max_age_ms: None, max_finished: 10 }).await?;
    let line = b"task output: a line of forty-odd bytes\n".to_vec();
    let fleet =
        crate::fleet::start_with_output(&bench.worker_connector()?, &bench.cluster.address(leader), 100, 8, 100, line)
            .await?;
    let wait_from = Instant::now();
    while fleet.stats.connected.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        anyhow::ensure!(wait_from.elapsed() < Duration::from_secs(120), "fleet did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = |id: u64| bench.cluster.masters[&id].id();
    // FLOTILLA_SOAK_JOB_TASKS: another job size (the retention keeps 10 jobs, so this sets how
    // many results stay in memory).
    let job_tasks = std::env::var("FLOTILLA_SOAK_JOB_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(JOB_TASKS)
        .clamp(1, tasks.max(1));
    let jobs = tasks.div_ceil(job_tasks);
    let per_point = jobs.div_ceil(POINTS).max(1);
    let t0 = Instant::now();
    let mut lap = Instant::now();
    let mut done = 0u64;
    let mut done_at_lap = 0u64;
    let mut rss = Vec::new();
    for j in 0..jobs {
        let n = job_tasks.min(tasks - done);
        let job = SubmitRequest { command: vec!["noop".into()], array: Some(format!("1-{n}")), ..Default::default() };
        // A job takes seconds: two minutes without it finishing is a stall.
        let waited = async { wait_job(&client, client.submit(&job).await?.id, Duration::from_secs(120)).await };
        if let Err(e) = waited.await {
            // Keep the masters' logs: the temp dir goes with the cluster.
            let keep = std::env::temp_dir().join("flotilla-soak-logs");
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(bench.cluster.dir.join("logs")).into_iter().flatten().flatten() {
                let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
            }
            return Err(e.context(format!("after {done} tasks (logs kept in {})", keep.display())));
        }
        done += n;
        if (j + 1) % per_point == 0 || j + 1 == jobs {
            let rate = (done - done_at_lap) as f64 / lap.elapsed().as_secs_f64();
            (lap, done_at_lap) = (Instant::now(), done);
            let (l, f) = (procfs::rss_bytes(pid(leader)).unwrap_or(0), procfs::rss_bytes(pid(follower)).unwrap_or(0));
            rss.push(l);
            figure(
                "soak",
                &format!("after {done} tasks: leader / follower RSS, tasks/s"),
                format!("{:.0} / {:.0} MiB, {rate:.0}", procfs::mib(l), procfs::mib(f)),
                "",
            );
        }
    }
    let elapsed = t0.elapsed();
    figure("soak", "tasks per second over the whole run", format!("{:.0}", tasks as f64 / elapsed.as_secs_f64()), "");
    // After warm-up: the second point against the last.
    if rss.len() >= 3 {
        let ratio = rss[rss.len() - 1] as f64 / rss[1].max(1) as f64;
        figure("soak", "leader RSS, last / second point", format!("{ratio:.2}"), "<= 1.2, below 300 MiB");
    }
    figure(
        "soak",
        "follower data directory",
        format!("{:.0} MiB", procfs::mib(dir_bytes(&bench.cluster.dir.join(format!("master-{follower}"))))),
        "",
    );
    let leader_address = bench.cluster.address(leader);
    let m = |name: &'static str| {
        let address = leader_address.clone();
        async move { metric(&address, name).await.unwrap_or(f64::NAN) }
    };
    figure(
        "soak",
        "leader's last snapshot: size, records, build time",
        format!(
            "{:.1} MiB, {:.0}, {:.0} ms ({:.0} built)",
            m("flotilla_snapshot_bytes").await / (1024.0 * 1024.0),
            m("flotilla_snapshot_records").await,
            m("flotilla_snapshot_build_seconds").await * 1000.0,
            m("flotilla_snapshots_built").await,
        ),
        "",
    );
    figure(
        "soak",
        "longest apply stall from a snapshot build (state lock held)",
        format!("{:.1} ms", m("flotilla_snapshot_lock_hold_max_seconds").await * 1000.0),
        "< 50 ms",
    );
    figure(
        "soak",
        "leader's task records store (state.redb)",
        format!("{:.0} MiB", m("flotilla_state_store_bytes").await / (1024.0 * 1024.0)),
        "",
    );
    drop(fleet);

    // A follower SIGKILLed and restarted from its data directory: time until it has applied
    // everything the leader had committed.
    let target = client.node(&bench.cluster.address(leader)).await?.last_applied.unwrap_or(0);
    bench.cluster.kill_master(follower);
    let restart = Instant::now();
    bench.cluster.start_master(follower)?;
    let address = bench.cluster.address(follower);
    let took = caught_up(&client, &address, target, restart).await?;
    figure("soak", "follower SIGKILL -> restarted and caught up", format!("{:.2} s", took.as_secs_f64()), "< 10 s");

    // The same follower again, its data directory wiped: the leader rebuilds it by snapshot.
    let target = client.node(&leader_address).await?.last_applied.unwrap_or(0);
    bench.cluster.kill_master(follower);
    std::fs::remove_dir_all(bench.cluster.dir.join(format!("master-{follower}")))?;
    let wiped = Instant::now();
    bench.cluster.start_master(follower)?;
    let took = caught_up(&client, &address, target, wiped).await?;
    figure("soak", "follower wiped -> rebuilt by snapshot and caught up", format!("{:.2} s", took.as_secs_f64()), "");
    Ok(())
}
