//! Big arrays: one array job of N tasks, nobody to run them. Time until the submission is
//! acknowledged (committed), and the leader's memory per pending task.

use std::time::{Duration, Instant};

use flotilla_proto::api::SubmitRequest;

use crate::common::{figure, Bench};
use crate::procfs;

pub async fn run(tasks: u64) -> anyhow::Result<()> {
    let bench = Bench::start(3, &[]).await?;
    let client = bench.client()?;
    let (_, pid) = bench.leader_pid().await?;
    // Warm up the paths so the figure is about the array, not first use.
    client.submit(&SubmitRequest { command: vec!["true".into()], ..Default::default() }).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procfs::rss_bytes(pid).unwrap_or(0);
    let job = SubmitRequest { command: vec!["true".into()], array: Some(format!("1-{tasks}")), ..Default::default() };
    let t0 = Instant::now();
    client.submit(&job).await?;
    let acked = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procfs::rss_bytes(pid).unwrap_or(0);
    let per_task = after.saturating_sub(before) as f64 / tasks as f64;
    figure(
        "arrays",
        &format!("submit a {tasks}-task array: acknowledged after"),
        format!("{:.2} ms", acked.as_secs_f64() * 1000.0),
        "< 1 s",
    );
    figure(
        "arrays",
        "leader RSS before / after",
        format!("{:.1} / {:.1} MiB", procfs::mib(before), procfs::mib(after)),
        "",
    );
    figure("arrays", "leader memory per pending task", format!("{per_task:.3} bytes"), "< 64 bytes");
    Ok(())
}
