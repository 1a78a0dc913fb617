//! Queued work moves to idle workers, tested on real processes.

mod common;

use std::collections::BTreeMap;

use common::*;
use flotilla_proto::api::{SubmitRequest, TaskState};

fn sleepers(n: u64, secs: &str) -> SubmitRequest {
    SubmitRequest {
        command: vec!["sh".into(), "-c".into(), format!("sleep {secs}; echo $FLOTILLA_TASK_INDEX")],
        array: Some(format!("1-{n}")),
        ..Default::default()
    }
}

/// Tasks per worker among a job's recorded results.
async fn ran_on(t: &TestCluster, id: u64, n: u64) -> BTreeMap<String, usize> {
    let client = t.client();
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, n, |i| i.to_string());
    let mut by_worker = BTreeMap::new();
    for r in rows {
        *by_worker.entry(r.worker.unwrap_or_default()).or_insert(0) += 1;
    }
    by_worker
}

/// Quick tasks first make the workers' adaptive queues deep; long tasks submitted behind them
/// would otherwise sit in one worker's queue while the other idles.
/// Invariants: both workers run the long tasks; every task is recorded exactly once, from its
/// latest attempt, with its own output (a revoked attempt never runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tasks_behind_quick_ones_are_shared_by_both_workers() {
    let t = cluster(1, &[("a", 2), ("b", 2)], &[]).await;
    let client = t.client();
    let quick = SubmitRequest { command: vec!["true".into()], array: Some("1-100".into()), ..Default::default() };
    client.submit(&quick).await.expect("submit quick");
    let id = client.submit(&sleepers(16, "0.5")).await.expect("submit long").id;
    let detail = wait_job(&t, &client, id, LONG).await;
    if detail.tasks.succeeded != 16 {
        t.fail(&format!("the long job did not succeed: {detail:?}"));
    }
    let by_worker = ran_on(&t, id, 16).await;
    if by_worker.get("a").is_none_or(|n| *n < 3) || by_worker.get("b").is_none_or(|n| *n < 3) {
        t.fail(&format!("the long tasks were not shared: {by_worker:?}"));
    }
}

/// A worker that joins while another holds every task of a job in its queue (nothing waits in
/// the cluster queue, so only a revocation can give the newcomer work) gets part of it.
/// Invariants: status shows the busy, queued and free cpus apart; the newcomer runs tasks of
/// the job submitted before it joined; every task is recorded exactly once with its own output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_late_takes_work_from_a_deep_queue() {
    let mut t = cluster(1, &[("a", 1)], &[]).await;
    let client = t.client();
    // With its default queue (8 per cpu) worker a takes all 8 tasks at once.
    let id = client.submit(&sleepers(8, "0.5")).await.expect("submit").id;
    wait_until(&t, "worker a holds every task", LONG, || async {
        client.results(id, 0, None, false).await.is_ok_and(|rows| {
            rows.iter().filter(|r| matches!(r.state, TaskState::Assigned | TaskState::Running)).count() == 8
        })
    })
    .await;
    // Honest figures: one cpu busy, the rest queued, none free; never "8/1". (A task may
    // finish meanwhile, so the queued count is not pinned.)
    let status = client.status(false).await.expect("status");
    let a = status.workers.iter().find(|w| w.name == "a").expect("worker a");
    assert_eq!((a.cpus_busy, a.cpus_free, a.cpus_total), (1, 0, 1), "{a:?}");
    assert!(a.cpus_queued >= 1 && a.cpus_busy + a.cpus_queued == a.cpus_used, "{a:?}");
    let (code, out, _) = cli(&t.cluster.master_list(), &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("cpus busy 1/1, free 0, queued "), "{out}");
    t.cluster.start_worker("b", 1, "").expect("start worker b");
    let detail = wait_job(&t, &client, id, LONG).await;
    if detail.tasks.succeeded != 8 {
        t.fail(&format!("the job did not succeed: {detail:?}"));
    }
    let by_worker = ran_on(&t, id, 8).await;
    if by_worker.get("b").is_none_or(|n| *n == 0) {
        t.fail(&format!("the late worker got nothing: {by_worker:?}"));
    }
}

/// Fair sharing (the default): a short job submitted behind a large array does not wait for
/// the array. Invariants: the short job succeeds while most of the array has yet to run, with
/// each task recorded once; the cluster setting switches to `fifo` and back through the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_job_behind_a_large_array_runs_at_once() {
    let t = cluster(1, &[("a", 2)], &["--worker-timeout", "5s"]).await;
    let client = t.client();
    let masters = t.cluster.master_list();
    let (code, out, _) = cli(&masters, &["scheduling", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"fair\""), "{out}");
    let array = client.submit(&sleepers(200, "0.2")).await.expect("submit array").id;
    let short = SubmitRequest {
        command: vec!["sh".into(), "-c".into(), "echo $FLOTILLA_TASK_INDEX".into()],
        array: Some("1-3".into()),
        ..Default::default()
    };
    let id = client.submit(&short).await.expect("submit short").id;
    let detail = wait_job(&t, &client, id, LONG).await;
    if detail.tasks.succeeded != 3 {
        t.fail(&format!("the short job did not succeed: {detail:?}"));
    }
    ran_on(&t, id, 3).await;
    let big = client.job(array, false).await.expect("array");
    assert!(big.tasks.succeeded < 150, "the short job waited for most of the array: {big:?}");
    let (code, out, err) = cli(&masters, &["scheduling", "--sharing", "fifo"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sharing: fifo"), "{out}");
    let (code, _, err) = cli(&masters, &["scheduling", "--sharing", "lottery"]);
    assert_ne!(code, 0);
    assert!(err.contains("expected `fair` or `fifo`"), "{err}");
    client.cancel(array).await.expect("cancel");
}
