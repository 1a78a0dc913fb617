//! Artifacts: what keeping task outputs costs, on a real local cluster (1 master, 3 workers).
//!
//! - Replication: one task writes N MB into `$FLOTILLA_OUTPUT_DIR`, with `--replicas 0` (the
//!   worker's own store only) and `--replicas 2` (copied to two peers over TLS before the task
//!   counts as done). The difference is the replication; its throughput (2 × N MB over that
//!   time) is set against the baseline: two plain copies of the same bytes on the same disk
//!   (`std::fs::copy`), measured in the same run.
//! - Dependencies: a chain of K one-task jobs, each `--after` the previous, against the same
//!   chain driven by a client that waits for each job before submitting the next (what users
//!   do without dependencies): milliseconds per edge, and their ratio.

use std::time::{Duration, Instant};

use flotilla_proto::api::SubmitRequest;

use crate::common::{figure, wait_job, Bench};

fn shell(script: &str) -> SubmitRequest {
    SubmitRequest { command: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() }
}

/// Fastest of `runs` submit-to-finished times of `request`.
async fn best_of(client: &flotilla_client::Client, request: &SubmitRequest, runs: usize) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t0 = Instant::now();
        let id = client.submit(request).await?.id;
        wait_job(client, id, Duration::from_secs(600)).await?;
        best = best.min(t0.elapsed());
    }
    Ok(best)
}

/// Two plain copies of an `mb`-MB file on the disk the cluster uses (fastest of 3), the
/// source in the page cache as a task's fresh output is.
fn plain_copies(dir: &std::path::Path, mb: u64) -> anyhow::Result<Duration> {
    let source = dir.join("plain-source");
    std::fs::write(&source, vec![0u8; (mb << 20) as usize])?;
    let mut best = Duration::MAX;
    for run in 0..3 {
        let t0 = Instant::now();
        for copy in 0..2 {
            let dest = dir.join(format!("plain-{run}-{copy}"));
            // Not synced: neither are the stores' copies (see the README).
            std::fs::copy(&source, &dest)?;
        }
        best = best.min(t0.elapsed());
        for copy in 0..2 {
            let _ = std::fs::remove_file(dir.join(format!("plain-{run}-{copy}")));
        }
    }
    let _ = std::fs::remove_file(&source);
    Ok(best)
}

pub async fn run(mb: u64, chain: usize) -> anyhow::Result<()> {
    let mut bench = Bench::start(1, &[]).await?;
    for name in ["w1", "w2", "w3"] {
        bench.cluster.start_worker(name, 2, "")?;
    }
    bench.cluster.wait_workers(3, Duration::from_secs(60)).await?;
    let client = bench.client()?;
    // Every worker learns its peers before the measured runs.
    let mut warm = shell("echo warm > \"$FLOTILLA_OUTPUT_DIR/w\"");
    warm.array = Some("1-6".into());
    for _ in 0..3 {
        let id = client.submit(&warm).await?.id;
        wait_job(&client, id, Duration::from_secs(120)).await?;
    }

    // Different bytes every run (the job id first): a store that already holds a blob is
    // not sent it again, which would measure nothing.
    let write = format!("{{ echo $FLOTILLA_JOB_ID; head -c {} /dev/zero; }} > \"$FLOTILLA_OUTPUT_DIR/blob\"", mb << 20);
    let mut local = shell(&write);
    local.replicas = Some(0);
    let mut replicated = shell(&write);
    replicated.replicas = Some(2);
    let t_local = best_of(&client, &local, 3).await?;
    let t_replicated = best_of(&client, &replicated, 3).await?;
    let copying = t_replicated.saturating_sub(t_local).max(Duration::from_micros(1));
    let plain = tokio::task::spawn_blocking({
        let dir = bench.cluster.dir.clone();
        move || plain_copies(&dir, mb)
    })
    .await??;
    let moved = (2 * mb) as f64;
    let rate = moved / copying.as_secs_f64();
    let plain_rate = moved / plain.as_secs_f64();
    figure(
        "artifacts",
        &format!("task with {mb} MB output, --replicas 0"),
        format!("{:.0} ms", t_local.as_secs_f64() * 1e3),
        "",
    );
    figure("artifacts", "same, --replicas 2", format!("{:.0} ms", t_replicated.as_secs_f64() * 1e3), "");
    figure("artifacts", "replication throughput (2 copies, TLS)", format!("{rate:.0} MB/s"), "");
    figure("artifacts", "baseline: 2 plain copies on the same disk", format!("{plain_rate:.0} MB/s"), "");
    figure("artifacts", "replication / plain copy", format!("{:.2}x", rate / plain_rate), "");

    // Dependencies: the chain as the cluster runs it, then as a client drives it.
    let step = SubmitRequest { command: vec!["true".into()], ..Default::default() };
    let t0 = Instant::now();
    let mut previous = None;
    for _ in 0..chain {
        let mut job = step.clone();
        job.after = previous.into_iter().collect();
        previous = Some(client.submit(&job).await?.id);
    }
    if let Some(last) = previous {
        wait_job(&client, last, Duration::from_secs(600)).await?;
    }
    let with_after = t0.elapsed();
    let t0 = Instant::now();
    for _ in 0..chain {
        let id = client.submit(&step).await?.id;
        wait_job(&client, id, Duration::from_secs(600)).await?;
    }
    let by_client = t0.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e3 / chain as f64;
    figure(
        "artifacts",
        &format!("chain of {chain} jobs with --after, per edge"),
        format!("{:.2} ms", per(with_after)),
        "",
    );
    figure("artifacts", "baseline: client waits and submits, per edge", format!("{:.2} ms", per(by_client)), "");
    figure("artifacts", "--after / client-driven", format!("{:.2}x", per(with_after) / per(by_client)), "");
    Ok(())
}
