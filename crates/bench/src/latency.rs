//! Submit latency: one client submitting one small job at a time (p50/p99, durable: each
//! answer means a quorum has it on disk), then 64 concurrent clients (throughput). Baseline:
//! one durable redb commit on this machine's disk, measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::api::SubmitRequest;

use crate::common::{figure, ms, percentile, Bench};

/// The durable-write floor: p50 of single-row redb commits (fsync) in a temp dir.
fn durable_commit_floor(samples: usize) -> anyhow::Result<Duration> {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("floor.redb"))?;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let t0 = Instant::now();
        let txn = db.begin_write()?;
        txn.open_table(T)?.insert(i, [0u8; 64].as_slice())?;
        txn.commit()?;
        times.push(t0.elapsed());
    }
    Ok(percentile(&times, 50.0))
}

/// Submit latencies of one client, one job at a time.
async fn submit_times(client: &flotilla_client::Client, requests: usize) -> anyhow::Result<Vec<Duration>> {
    let job = SubmitRequest { command: vec!["true".into()], ..Default::default() };
    for _ in 0..20 {
        client.submit(&job).await?; // warm up: connections, leader hint
    }
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t0 = Instant::now();
        client.submit(&job).await?;
        times.push(t0.elapsed());
    }
    Ok(times)
}

pub async fn run(requests: usize) -> anyhow::Result<Duration> {
    let floor = tokio::task::spawn_blocking(move || durable_commit_floor(requests.min(500))).await??;
    // Two more baselines that split the figure: an HTTP round trip that touches no Raft, and
    // the same submit on a single master (a durable commit with no replication).
    let single = {
        let bench = Bench::start(1, &[]).await?;
        let client = bench.client()?;
        percentile(&submit_times(&client, requests.min(1000)).await?, 50.0)
    };
    let bench = Bench::start(3, &[]).await?;
    let client = Arc::new(bench.client()?);
    let job = SubmitRequest { command: vec!["true".into()], ..Default::default() };
    let (leader, _) = bench.leader_pid().await?;
    let address = bench.cluster.address(leader);
    let mut http = Vec::new();
    for _ in 0..requests.min(1000) {
        let t0 = Instant::now();
        client.node(&address).await?;
        http.push(t0.elapsed());
    }
    let times = submit_times(&client, requests).await?;
    let p50 = percentile(&times, 50.0);
    figure("latency", "bare durable commit (redb fsync), p50", ms(floor), "");
    figure("latency", "HTTP round trip to the leader, no Raft, p50", ms(percentile(&http, 50.0)), "");
    figure("latency", "submit to a single master (no replication), p50", ms(single), "");
    figure("latency", &format!("submit, 1 client, {requests} jobs: p50"), ms(p50), "< 2 ms");
    figure("latency", "submit, 1 client: p99", ms(percentile(&times, 99.0)), "");
    figure("latency", "ratio p50 / bare durable commit", format!("{:.2}", p50.as_secs_f64() / floor.as_secs_f64()), "");

    let total = requests * 4;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let client = client.clone();
        let job = job.clone();
        let n = total / 64 + usize::from(c < total % 64);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                client.submit(&job).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    figure("latency", &format!("submit, 64 concurrent clients, {total} jobs"), format!("{rate:.0} jobs/s"), "");
    Ok(p50)
}
