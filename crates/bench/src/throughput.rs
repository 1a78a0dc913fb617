//! Control-plane throughput: no processes. An in-process fleet of simulated workers completes
//! every task at once, so the cluster itself (3 masters) is measured: tasks per second end to
//! end, Raft entries and bytes per task, master CPU and peak memory, and the leader memory each
//! finished task kept in the state costs. That last one is measured across the main job, after
//! a warm-up job of a quarter of its size has paid for what does not grow (caches, buffers, the
//! allocator's pools): it is what one more retained task costs.

use std::time::{Duration, Instant};

use flotilla_proto::api::SubmitRequest;

use crate::common::{figure, wait_job, Bench};
use crate::procfs;

pub async fn run(tasks: u64, workers: usize, cpus: u32) -> anyhow::Result<f64> {
    let bench = Bench::start(3, &[]).await?;
    let client = bench.client()?;
    let (leader, _) = bench.leader_pid().await?;
    let fleet =
        crate::fleet::start(&bench.worker_connector()?, &bench.cluster.address(leader), workers, cpus, 100).await?;
    let wait_from = Instant::now();
    while fleet.stats.connected.load(std::sync::atomic::Ordering::Relaxed) < workers as u64 {
        anyhow::ensure!(wait_from.elapsed() < Duration::from_secs(120), "fleet did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader_pid = bench.cluster.masters[&leader].id();
    let warm_up =
        SubmitRequest { command: vec!["noop".into()], array: Some(format!("1-{}", tasks / 4)), ..Default::default() };
    wait_job(&client, client.submit(&warm_up).await?.id, Duration::from_secs(3600)).await?;
    let pids: Vec<u32> = bench.cluster.masters.values().map(|c| c.id()).collect();
    let cpu_before: Vec<Duration> = pids.iter().map(|p| procfs::cpu_time(*p).unwrap_or_default()).collect();
    let fleet_before = procfs::cpu_time(std::process::id()).unwrap_or_default();
    let leader_info = client.node(&bench.cluster.address(leader)).await?;
    let rss_before = procfs::rss_bytes(leader_pid).unwrap_or(0);
    let job = SubmitRequest { command: vec!["noop".into()], array: Some(format!("1-{tasks}")), ..Default::default() };
    let t0 = Instant::now();
    let id = client.submit(&job).await?.id;
    let done = wait_job(&client, id, Duration::from_secs(3600)).await?;
    let elapsed = done - t0;
    let after = client.node(&bench.cluster.address(leader)).await?;
    let entries = after.last_log_index.unwrap_or(0) - leader_info.last_log_index.unwrap_or(0);
    let bytes = after.log_bytes_written - leader_info.log_bytes_written;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| {
            (procfs::cpu_time(*p).unwrap_or_default().saturating_sub(*b)).as_secs_f64() / elapsed.as_secs_f64()
        })
        .collect();
    let fleet_cpu = procfs::cpu_time(std::process::id()).unwrap_or_default().saturating_sub(fleet_before).as_secs_f64()
        / elapsed.as_secs_f64();
    let peak = pids.iter().filter_map(|p| procfs::peak_rss_bytes(*p)).max().unwrap_or(0);
    // The finished job stays (retention), with every task's result: what one kept task costs.
    let retained = procfs::rss_bytes(leader_pid).unwrap_or(0).saturating_sub(rss_before);
    let rate = tasks as f64 / elapsed.as_secs_f64();
    figure(
        "throughput",
        &format!("{tasks} tasks, {workers} simulated workers x {cpus} slots"),
        format!("{:.2} s", elapsed.as_secs_f64()),
        "",
    );
    figure("throughput", "tasks per second, end to end", format!("{rate:.0}"), ">= 50,000 (stretch 100,000)");
    figure("throughput", "raft entries per task", format!("{:.4}", entries as f64 / tasks as f64), "");
    figure("throughput", "raft log bytes per task", format!("{:.1}", bytes as f64 / tasks as f64), "");
    figure(
        "throughput",
        "master cpu (share of one core, per master)",
        cpu.iter().map(|c| format!("{:.0}%", c * 100.0)).collect::<Vec<_>>().join(" "),
        "",
    );
    figure(
        "throughput",
        "simulated fleet and benchmark cpu (same machine)",
        format!("{:.0}% of one core", fleet_cpu * 100.0),
        "",
    );
    figure("throughput", "peak master RSS", format!("{:.0} MiB", procfs::mib(peak)), "");
    figure(
        "throughput",
        "leader RSS per retained finished task",
        format!("{:.0} bytes", retained as f64 / tasks as f64),
        "<= 64 bytes (issue 12)",
    );
    drop(fleet);
    Ok(rate)
}
