//! Fleet scale: thousands of simulated workers connected and heartbeating (default interval)
//! to a 3-master group; the leader's CPU share and memory while idle otherwise.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{figure, Bench};
use crate::procfs;

pub async fn run(workers: usize) -> anyhow::Result<f64> {
    let bench = Bench::start(3, &[]).await?;
    let (mut leader, mut pid) = bench.leader_pid().await?;
    let t0 = Instant::now();
    let mut fleet =
        crate::fleet::start(&bench.worker_connector()?, &bench.cluster.address(leader), workers, 1, 200).await?;
    let mut checked = Instant::now();
    while fleet.stats.connected.load(Ordering::Relaxed) < workers as u64 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(300),
            "only {} of {workers} workers connected to master {leader} ({} sessions turned away, {} failed to open)",
            fleet.stats.connected.load(Ordering::Relaxed),
            fleet.stats.refused.load(Ordering::Relaxed),
            fleet.stats.failed.load(Ordering::Relaxed)
        );
        // The simulated workers only know one address: if leadership moved (an election on
        // a loaded machine), start the fleet again against the new leader.
        if checked.elapsed() > Duration::from_secs(10) {
            checked = Instant::now();
            let (now_leader, now_pid) = bench.leader_pid().await?;
            if now_leader != leader {
                eprintln!("fleet: leadership moved from master {leader} to {now_leader}; reconnecting the fleet");
                drop(fleet);
                (leader, pid) = (now_leader, now_pid);
                fleet =
                    crate::fleet::start(&bench.worker_connector()?, &bench.cluster.address(leader), workers, 1, 200)
                        .await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined = t0.elapsed();
    // Let registration settle, then measure a quiet window of heartbeats.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(15);
    let cpu0 = procfs::cpu_time(pid).unwrap_or_default();
    let beats0 = fleet.stats.heartbeats.load(Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let cpu = (procfs::cpu_time(pid).unwrap_or_default().saturating_sub(cpu0)).as_secs_f64() / window.as_secs_f64();
    let beats = (fleet.stats.heartbeats.load(Ordering::Relaxed) - beats0) as f64 / window.as_secs_f64();
    let rss = procfs::rss_bytes(pid).unwrap_or(0);
    let lost = bench
        .client()?
        .status(false)
        .await?
        .workers
        .iter()
        .filter(|w| w.state != flotilla_proto::api::WorkerState::Ready)
        .count();
    figure(
        "fleet",
        &format!("{workers} simulated workers registered in"),
        format!("{:.1} s", joined.as_secs_f64()),
        "",
    );
    figure("fleet", "heartbeats per second at the leader", format!("{beats:.0}"), "");
    figure("fleet", "leader cpu (share of one core)", format!("{:.1}%", cpu * 100.0), "< 25%");
    figure("fleet", "leader RSS", format!("{:.0} MiB", procfs::mib(rss)), "");
    figure("fleet", "workers declared lost during the window", lost.to_string(), "0");
    drop(fleet);
    Ok(cpu)
}
