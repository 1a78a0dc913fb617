//! Task storm: N `/bin/true` tasks through a 3-master cluster with one 2-slot worker, against
//! the physical limit measured in the same run: the same N processes started with
//! `posix_spawn`, 2 in flight, by a bare loop with no scheduler.

use std::ffi::CString;
use std::time::{Duration, Instant};

use anyhow::bail;

use flotilla_proto::api::SubmitRequest;

use crate::common::{figure, wait_job, Bench};
use crate::procfs;

/// The bare loop: posix_spawn + waitpid, `parallel` in flight. Runs before the cluster exists,
/// so `waitpid(-1)` only ever reaps its own children.
pub fn spawn_limit(n: u64, parallel: u64) -> anyhow::Result<Duration> {
    let path = CString::new("/bin/true")?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let started = Instant::now();
    let (mut launched, mut done, mut in_flight) = (0u64, 0u64, 0u64);
    while done < n {
        while in_flight < parallel && launched < n {
            let mut pid: libc::pid_t = 0;
            // SAFETY: valid NUL-terminated argv/envp arrays that outlive the call.
            let rc = unsafe {
                libc::posix_spawn(
                    &mut pid,
                    path.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    argv.as_ptr() as *const *mut libc::c_char,
                    envp.as_ptr() as *const *mut libc::c_char,
                )
            };
            if rc != 0 {
                bail!("posix_spawn failed: {rc}");
            }
            launched += 1;
            in_flight += 1;
        }
        let mut status = 0;
        // SAFETY: plain waitpid on our children.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid <= 0 {
            bail!("waitpid failed");
        }
        in_flight -= 1;
        done += 1;
    }
    Ok(started.elapsed())
}

pub async fn run(n: u64) -> anyhow::Result<f64> {
    let limit = tokio::task::spawn_blocking(move || spawn_limit(n, 2)).await??;
    let mut bench = Bench::start(3, &[]).await?;
    bench.cluster.start_worker("storm", 2, "")?;
    bench.cluster.wait_workers(1, Duration::from_secs(60)).await?;
    let client = bench.client()?;
    let job = SubmitRequest { command: vec!["/bin/true".into()], array: Some(format!("1-{n}")), ..Default::default() };
    let pids: Vec<(String, u32)> = bench
        .cluster
        .masters
        .iter()
        .map(|(id, c)| (format!("master {id}"), c.id()))
        .chain(bench.cluster.workers.iter().map(|(n, c)| (format!("worker {n}"), c.id())))
        .collect();
    let cpu0: Vec<_> = pids.iter().map(|(_, p)| procfs::cpu_time(*p).unwrap_or_default()).collect();
    let (leader, _) = bench.leader_pid().await?;
    let before = client.node(&bench.cluster.address(leader)).await?;
    let t0 = Instant::now();
    let id = client.submit(&job).await?.id;
    let finished = wait_job(&client, id, Duration::from_secs(1800)).await?;
    let after = client.node(&bench.cluster.address(leader)).await?;
    let entries = after.last_log_index.unwrap_or(0).saturating_sub(before.last_log_index.unwrap_or(0));
    let makespan = finished - t0;
    let limit_rate = n as f64 / limit.as_secs_f64();
    let rate = n as f64 / makespan.as_secs_f64();
    let ratio = rate / limit_rate;
    figure(
        "storm",
        &format!("bare posix_spawn loop, {n} x /bin/true, 2 in flight"),
        format!("{:.2} s ({limit_rate:.0} tasks/s)", limit.as_secs_f64()),
        "",
    );
    figure(
        "storm",
        "flotilla: 3 masters, 1 worker with 2 slots",
        format!("{:.2} s ({rate:.0} tasks/s)", makespan.as_secs_f64()),
        "",
    );
    figure("storm", "ratio to the limit", format!("{ratio:.2}"), ">= 0.85");
    figure("storm", "tasks per raft entry", format!("{:.1}", n as f64 / entries.max(1) as f64), "");
    figure("storm", "leader elections during the storm", (after.term - before.term).to_string(), "0");
    let shares: Vec<String> = pids
        .iter()
        .zip(&cpu0)
        .map(|((name, pid), c0)| {
            let used = procfs::cpu_time(*pid).unwrap_or_default().saturating_sub(*c0);
            format!("{name} {:.0}%", used.as_secs_f64() / makespan.as_secs_f64() * 100.0)
        })
        .collect();
    figure("storm", "cpu during the run (share of one core)", shares.join(", "), "");
    Ok(ratio)
}
