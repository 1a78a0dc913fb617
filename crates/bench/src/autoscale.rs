//! Autoscale: a `local` pool on 3 real masters with no worker at first (the local provider
//! starts this very binary as `flotilla worker`).
//!
//! - Burst: N one-second tasks submitted at once; the pool grows from 0 to its maximum. The
//!   figure is the time from the submission to the first task running, against the baseline of
//!   the same run: a worker started by hand on an idle cluster, from its spawn to its first
//!   running task (what starting a worker costs at all). Also the makespan against the ideal
//!   (the work spread over every cpu the pool may have).
//! - Shrink: after the burst the idle pool drains and stops its workers; the figure is the time
//!   from the last task's end to the pool holding none, against its idle time (target: within
//!   idle + 5 s), and the tasks re-queued meanwhile (a scale-in never takes a task: 0).
//! - Square wave: short tasks for `on`, nothing for `off`, five periods, with `off` shorter
//!   than the idle time; then five periods with `off` longer than idle + cooldowns. The
//!   figure is the count of scale-in/scale-out pairs closer than the policy's cooldown
//!   (target 0), from the journal, and the scale actions in all.

use std::time::{Duration, Instant};

use anyhow::Context;

use flotilla_client::Client;
use flotilla_proto::api::{AutoscaleRequest, EventView, ProviderName, SubmitRequest};
use flotilla_proto::time::parse_rfc3339;

use crate::common::{figure, wait_job, Bench};

const MAX_WORKERS: u32 = 4;
const WORKER_CPUS: u32 = 4;
const IDLE: &str = "5s";
const IDLE_MS: u64 = 5_000;
const COOLDOWN_MS: u64 = 10_000;

fn sleeper(n: u64, seconds: &str) -> SubmitRequest {
    SubmitRequest { command: vec!["sleep".into(), seconds.into()], array: Some(format!("1-{n}")), ..Default::default() }
}

async fn events(client: &Client, kind: &str) -> anyhow::Result<Vec<EventView>> {
    let all = client.events(0, 1_000_000, Duration::ZERO, false).await?.events;
    Ok(all.into_iter().filter(|e| e.kind.as_str() == kind).collect())
}

/// Polls until `check` holds (every 20 ms), or fails after `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn running_or_done(client: &Client, job: u64) -> bool {
    client.job(job, true).await.is_ok_and(|j| j.tasks.running + j.tasks.succeeded > 0)
}

async fn pool_empty(client: &Client) -> bool {
    client.pools(true).await.is_ok_and(|p| p.pools.iter().all(|p| p.workers.is_empty()))
}

/// The baseline: a worker started by hand, from its spawn to its first running task.
async fn by_hand(bench: &mut Bench, client: &Client) -> anyhow::Result<Duration> {
    let job = client.submit(&sleeper(4, "0.2")).await?.id;
    let t0 = Instant::now();
    bench.cluster.start_worker("by-hand", WORKER_CPUS, "")?;
    until("the hand-started worker's first task", Duration::from_secs(60), || running_or_done(client, job)).await?;
    let took = t0.elapsed();
    wait_job(client, job, Duration::from_secs(120)).await?;
    bench.cluster.kill_worker("by-hand");
    Ok(took)
}

pub async fn run(tasks: u64, smoke: bool) -> anyhow::Result<()> {
    let mut bench = Bench::start(3, &[]).await?;
    let client = bench.client()?;
    let baseline = by_hand(&mut bench, &client).await?;
    // The hand-started worker is lost before the pool is set, so only the pool's count.
    until("the hand-started worker gone", Duration::from_secs(60), || async {
        client.workers(true).await.is_ok_and(|ws| ws.iter().all(|w| w.state.as_str() == "lost"))
    })
    .await?;

    let policy = AutoscaleRequest {
        pool: None,
        provider: ProviderName::Local,
        min: 0,
        max: MAX_WORKERS,
        selector: Default::default(),
        worker_cpus: Some(WORKER_CPUS),
        target: None,
        idle: Some(IDLE.into()),
        cooldown_up: Some(format!("{}s", COOLDOWN_MS / 1000)),
        cooldown_down: Some(format!("{}s", COOLDOWN_MS / 1000)),
        join_timeout: None,
        add_command: None,
        remove_command: None,
        partition: None,
        time_limit: None,
        sbatch_args: Vec::new(),
        api: None,
        namespace: None,
        statefulset: None,
    };
    client.set_autoscale(&policy).await.context("autoscale set")?;

    // Burst.
    let t0 = Instant::now();
    let job = client.submit(&sleeper(tasks, "1")).await?.id;
    let first = until("the first task of the burst running", Duration::from_secs(60), || running_or_done(&client, job))
        .await?
        .duration_since(t0);
    wait_job(&client, job, Duration::from_secs(3_600)).await?;
    let makespan = t0.elapsed();
    let ideal = Duration::from_secs_f64(tasks as f64 / f64::from(MAX_WORKERS * WORKER_CPUS));
    figure(
        "autoscale",
        &format!("burst of {tasks} 1-s tasks, 0 -> {MAX_WORKERS} workers: first task"),
        format!("{:.2} s", first.as_secs_f64()),
        "< 2 s",
    );
    figure(
        "autoscale",
        "  a worker started by hand: spawn to first task",
        format!("{:.2} s (ratio {:.2})", baseline.as_secs_f64(), first.as_secs_f64() / baseline.as_secs_f64()),
        "",
    );
    figure(
        "autoscale",
        "  makespan / ideal on every cpu the pool may have",
        format!(
            "{:.1} s / {:.1} s = {:.2}",
            makespan.as_secs_f64(),
            ideal.as_secs_f64(),
            makespan.as_secs_f64() / ideal.as_secs_f64().max(0.001)
        ),
        "",
    );

    // Shrink: from the last task's end to no worker left.
    let mut last_end = 0;
    let mut offset = 0;
    loop {
        let rows = client.results(job, offset, None, false).await?;
        if rows.is_empty() {
            break;
        }
        offset += rows.len() as u64;
        let ends = rows.iter().filter_map(|r| r.finished_at.as_deref().and_then(parse_rfc3339));
        last_end = last_end.max(ends.max().unwrap_or(0));
    }
    until("the pool back to 0 workers", Duration::from_secs(120), || pool_empty(&client)).await?;
    let empty_at = flotilla_proto::time::now_ms();
    let shrink_ms = empty_at.saturating_sub(last_end);
    let requeued = events(&client, "task_rescheduled").await?.len();
    figure(
        "autoscale",
        &format!("idle pool back to 0 after the last task (idle {IDLE})"),
        format!("{:.1} s", shrink_ms as f64 / 1000.0),
        &format!("<= {:.0} s", (IDLE_MS + 5_000) as f64 / 1000.0),
    );
    figure("autoscale", "  tasks stopped or re-queued by a scale-in", requeued.to_string(), "0");

    // Square wave: off shorter than idle (no scale-in expected), then longer (a scale-in and
    // a scale-out each period, never within a cooldown of each other).
    let periods = if smoke { 1 } else { 5 };
    for (on, off) in
        [(Duration::from_secs(4), Duration::from_secs(3)), (Duration::from_secs(4), Duration::from_secs(22))]
    {
        for _ in 0..periods {
            let until_off = Instant::now() + on;
            while Instant::now() < until_off {
                let j = client.submit(&sleeper(2 * u64::from(WORKER_CPUS), "0.5")).await?.id;
                wait_job(&client, j, Duration::from_secs(120)).await?;
            }
            tokio::time::sleep(off).await; // the off half of the wave
        }
    }
    let ups = events(&client, "scaled_up").await?;
    let downs = events(&client, "scaled_down").await?;
    let mut actions: Vec<(u64, bool)> =
        ups.iter().map(|e| (e.at_ms, true)).chain(downs.iter().map(|e| (e.at_ms, false))).collect();
    actions.sort();
    let pairs = actions.windows(2).filter(|w| w[0].1 != w[1].1 && w[1].0.saturating_sub(w[0].0) < COOLDOWN_MS).count();
    figure(
        "autoscale",
        &format!("square wave ({periods}+{periods} periods): in/out pairs within a cooldown"),
        pairs.to_string(),
        "0",
    );
    figure("autoscale", "  scale-ups and scale-ins in all", format!("{} up, {} in", ups.len(), downs.len()), "");
    until("the pool back to 0 workers", Duration::from_secs(120), || pool_empty(&client)).await?;
    Ok(())
}
