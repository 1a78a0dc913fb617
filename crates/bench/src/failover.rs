//! Failover: SIGKILL the leader under load, again and again; time from the kill to a new
//! leader, to the first assignment it commits, and to the first task result it commits
//! (p50/p99). Then a worker's silent failure (SIGSTOP) with default settings: time until its
//! tasks run elsewhere.

use std::time::{Duration, Instant};

use anyhow::Context;

use flotilla::local::signal;
use flotilla_proto::api::{Role, SubmitRequest, TaskState};

use crate::common::{figure, ms, percentile, Bench};

pub async fn run(kills: usize, master_args: &[&str]) -> anyhow::Result<Duration> {
    let mut bench = Bench::start(3, master_args).await?;
    bench.cluster.start_worker("a", 2, "")?;
    bench.cluster.wait_workers(1, Duration::from_secs(60)).await?;
    let client = bench.client()?;
    let load =
        SubmitRequest { command: vec!["/bin/true".into()], array: Some("1-100000000".into()), ..Default::default() };
    let job = client.submit(&load).await?.id;
    let (mut to_leader, mut to_assign, mut to_result) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (old, _) = bench.leader_pid().await?;
        let old_term = client.node(&bench.cluster.address(old)).await?.term;
        let survivors: Vec<String> =
            bench.cluster.ports.keys().filter(|id| **id != old).map(|id| bench.cluster.address(*id)).collect();
        let watch = bench.cluster.client_of(survivors.clone())?.with_retry_for(Duration::from_secs(30));
        let done_before = watch.job(job, true).await?.tasks.succeeded;
        bench.cluster.kill_master(old);
        let t0 = Instant::now();
        let (mut leader_at, mut assign_at, mut result_at) = (None, None, None);
        while leader_at.is_none() || assign_at.is_none() || result_at.is_none() {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "no recovery within 30 s of killing master {old}");
            for address in &survivors {
                if let Ok(info) = watch.node(address).await {
                    if info.role == Role::Leader && info.term > old_term {
                        leader_at.get_or_insert_with(|| t0.elapsed());
                        if info.last_assignment_term > old_term {
                            assign_at.get_or_insert_with(|| t0.elapsed());
                        }
                    }
                }
            }
            if leader_at.is_some() && result_at.is_none() {
                if let Ok(j) = watch.job(job, true).await {
                    if j.tasks.succeeded > done_before {
                        result_at = Some(t0.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_leader.push(leader_at.context("leader")?);
        to_assign.push(assign_at.context("assign")?);
        to_result.push(result_at.context("result")?);
        bench.cluster.start_master(old)?;
    }
    client.cancel(job).await?;
    let line = |v: &[Duration]| format!("p50 {} / p99 {}", ms(percentile(v, 50.0)), ms(percentile(v, 99.0)));
    figure("failover", &format!("leader SIGKILL x{kills} -> new leader"), line(&to_leader), "");
    figure("failover", "leader SIGKILL -> first assignment committed", line(&to_assign), "p50 < 1 s, p99 < 2 s");
    figure("failover", "leader SIGKILL -> first task result committed", line(&to_result), "");

    // A worker that goes silent.
    bench.cluster.start_worker("b", 2, "")?;
    bench.cluster.start_worker("c", 2, "")?;
    bench.cluster.wait_workers(3, Duration::from_secs(60)).await?;
    let slow =
        SubmitRequest { command: vec!["sleep".into(), "60".into()], array: Some("1-4".into()), ..Default::default() };
    let job = client.submit(&slow).await?.id;
    let held = loop {
        let rows = client.results(job, 0, None, false).await?;
        let running: Vec<_> = rows.iter().filter(|r| r.state == TaskState::Running).collect();
        if running.len() == 4 {
            let victim = running[0].worker.clone().context("worker")?;
            let held: Vec<u64> =
                running.iter().filter(|r| r.worker.as_deref() == Some(victim.as_str())).map(|r| r.index).collect();
            break (victim, held);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (victim, tasks) = held;
    signal(&bench.cluster.workers[&victim], libc::SIGSTOP);
    let t0 = Instant::now();
    let moved = loop {
        let rows = client.results(job, 0, None, false).await?;
        let elsewhere = tasks.iter().all(|i| {
            rows.iter()
                .any(|r| r.index == *i && r.state == TaskState::Running && r.worker.as_deref() != Some(victim.as_str()))
        });
        if elsewhere {
            break t0.elapsed();
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "tasks of the stopped worker never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    signal(&bench.cluster.workers[&victim], libc::SIGCONT);
    client.cancel(job).await?;
    figure("failover", "worker SIGSTOP -> its tasks running elsewhere", ms(moved), "< 5 s (defaults)");
    Ok(percentile(&to_assign, 50.0))
}
