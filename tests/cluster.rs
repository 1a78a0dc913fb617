//! Real clusters on loopback: masters and workers are `flotilla` processes, killed for real.
//! Each test states the invariant it checks.

mod common;

use std::time::Duration;

use common::*;
use flotilla_proto::api::{EventType, JobState, TaskState, WorkerState};

/// 3 masters + 2 workers run a 500-task array job with a reduce.
/// Invariant: every task's result is recorded exactly once and is correct; the reduce sees all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_task_job_with_reduce_runs_to_completion() {
    let t = cluster(3, &[("a", 2), ("b", 2)], &[]).await;
    let client = t.client();
    let id = client.submit(&squares_job(500, "0")).await.expect("submit").id;
    let job = wait_job(&t, &client, id, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.tasks.succeeded, 500);
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 500, |i| (i * i).to_string());
    let result = client.result(id, false).await.expect("result").result.expect("a result");
    assert_eq!(result.trim(), sum_of_squares(500).to_string());
    let workers: std::collections::BTreeSet<_> = rows.iter().filter_map(|r| r.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "load is spread over both workers");
}

/// SIGKILL the leader mid-job.
/// Invariants: a new leader takes over (one leader per term), the job completes with every
/// task recorded exactly once and correct, and the killed master restarts from its data
/// directory and catches up (a snapshot install, as the log is compacted every 50 entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_mid_job_loses_nothing_and_the_master_rejoins() {
    let mut t = cluster(3, &[("a", 2), ("b", 2)], &["--snapshot-every", "50"]).await;
    let client = t.client();
    let id = client.submit(&squares_job(300, "0.05")).await.expect("submit").id;
    wait_until(&t, "a quarter of the tasks done", LONG, || async {
        client.job(id, false).await.is_ok_and(|j| j.tasks.succeeded >= 75)
    })
    .await;
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    t.cluster.kill_master(leader);
    let new_leader = match t.cluster.wait_leader(LONG).await {
        Some(l) => l,
        None => t.fail("no new leader after the kill"),
    };
    assert_ne!(new_leader, leader);
    let job = wait_job(&t, &client, id, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 300, |i| (i * i).to_string());
    let result = client.result(id, false).await.expect("result").result.expect("a result");
    assert_eq!(result.trim(), sum_of_squares(300).to_string());
    assert_one_leader_per_term(&client).await;

    t.cluster.start_master(leader).expect("restart");
    let log = wait_caught_up(&t, &client, leader, new_leader, "the restarted master catches up as a follower").await;
    assert!(log.contains("snapshot installed"), "the lagging master was caught up by a snapshot");
    // Its replica holds the same job: ask it directly with a stale read.
    let follower = flotilla_client::Client::new(vec![t.cluster.address(leader)], None).expect("client");
    let replica = follower.job(id, true).await.expect("stale read from the restarted master");
    assert_eq!(replica.state, JobState::Succeeded);
}

/// SIGKILL a worker mid-job.
/// Invariant: its tasks are re-queued and complete on the other worker; each recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_mid_job_its_tasks_complete_elsewhere() {
    let mut t = cluster(3, &[("a", 2), ("b", 2)], &[]).await;
    let client = t.client();
    let id = client.submit(&squares_job(40, "0.5")).await.expect("submit").id;
    wait_until(&t, "worker a runs tasks", LONG, || async {
        client
            .results(id, 0, None, false)
            .await
            .is_ok_and(|rows| rows.iter().any(|r| r.state == TaskState::Running && r.worker.as_deref() == Some("a")))
    })
    .await;
    t.cluster.kill_worker("a");
    let job = wait_job(&t, &client, id, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 40, |i| (i * i).to_string());
    assert!(rows.iter().any(|r| r.attempts > 1), "some task was re-run after the loss");
    let events = client.events(0, 10_000, Duration::ZERO, false).await.expect("events");
    assert!(events.events.iter().any(|e| e.kind == EventType::WorkerLost && e.worker.as_deref() == Some("a")));
    let status = client.status(false).await.expect("status");
    let a = status.workers.iter().find(|w| w.name == "a").expect("worker a listed");
    assert_eq!(a.state, WorkerState::Lost);
}

/// A single master (no HA) restarts.
/// Invariant: no job or result is lost; an unfinished job finishes after the restart. The log
/// is compacted every 20 entries, so the restart loads a snapshot and replays the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_master_restarts_without_losing_jobs_or_results() {
    let mut t = cluster(1, &[("a", 2)], &["--snapshot-every", "20"]).await;
    let client = t.client();
    let first = client.submit(&squares_job(30, "0")).await.expect("submit").id;
    wait_job(&t, &client, first, LONG).await;
    let second = client.submit(&squares_job(20, "0.3")).await.expect("submit").id;
    wait_until(&t, "the second job starts", LONG, || async {
        client.job(second, false).await.is_ok_and(|j| j.tasks.succeeded >= 2)
    })
    .await;
    t.cluster.kill_master(1);
    t.cluster.start_master(1).expect("restart");
    let job = wait_job(&t, &client, second, LONG).await;
    assert_eq!(job.state, JobState::Succeeded);
    for (id, n) in [(first, 30), (second, 20)] {
        let rows = client.results(id, 0, None, false).await.expect("results");
        assert_each_task_recorded_once(&rows, n, |i| (i * i).to_string());
        let r = client.result(id, false).await.expect("result").result.expect("a result");
        assert_eq!(r.trim(), sum_of_squares(n).to_string());
    }
    let ids: Vec<u64> = client.jobs(false).await.expect("jobs").iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![second, first], "newest first");
}
