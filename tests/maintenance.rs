//! Worker maintenance with real processes: cordon, drain (with a deadline, and across a leader
//! SIGKILL), uncordon, and a worker that drains itself on SIGTERM.
//!
//! Invariants checked: every task of a job running through the maintenance is recorded
//! exactly once with the right output; a cordoned, draining or drained worker starts no new
//! task; a drained worker holds nothing; an operator's cordon outlives the worker's restart;
//! a worker sent SIGTERM exits 0 once its running tasks finished and its queued ones moved.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::Client;
use flotilla_proto::api::{EventType, JobState, WorkerState, WorkerView};

async fn worker(client: &Client, name: &str) -> Option<WorkerView> {
    client.workers(false).await.ok()?.into_iter().find(|w| w.name == name)
}

async fn wait_state(t: &TestCluster, client: &Client, name: &str, want: WorkerState) {
    wait_until(t, &format!("worker {name} {}", want.as_str()), LONG, || async {
        worker(client, name).await.is_some_and(|w| w.state == want)
    })
    .await;
}

/// Results recorded by `name`'s attempts, by task index.
fn recorded_on(rows: &[flotilla_proto::api::TaskResultView], name: &str) -> Vec<u64> {
    rows.iter().filter(|r| r.worker.as_deref() == Some(name)).map(|r| r.index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_queued_tasks_stops_late_ones_and_survives_a_leader_kill() {
    let mut t = cluster(3, &[("a", 2), ("b", 2)], &[]).await;
    let client = t.client();
    let n = 16;
    let job = client.submit(&squares_job(n, "3")).await.expect("submit").id;
    wait_until(&t, "a runs tasks", LONG, || async {
        worker(&client, "a").await.is_some_and(|w| w.running > 0 && w.queued > 0)
    })
    .await;
    let drained = client.maintain_worker("a", "drain", Some(1_000)).await.expect("drain a");
    assert_eq!(drained.state, WorkerState::Draining);
    assert!(drained.drain_deadline.is_some());
    // The leader dies during the drain: the next one carries it on from the replicated state.
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    t.cluster.kill_master(leader);
    // A worker that joins during the drain takes its share of what a gives back.
    t.cluster.start_worker("c", 2, "").expect("start c");
    wait_state(&t, &client, "a", WorkerState::Drained).await;
    let a = worker(&client, "a").await.expect("a");
    assert_eq!((a.running, a.queued), (0, 0), "a drained worker holds nothing");
    assert_eq!(wait_job(&t, &client, job, LONG).await.state, JobState::Succeeded);
    let rows = client.results(job, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, n, |i| (i * i).to_string());
    // Only what a ran when the drain began can have been recorded there (at most its 2 cpus).
    assert!(recorded_on(&rows, "a").len() <= 2, "a recorded {:?} after its drain", recorded_on(&rows, "a"));
    assert!(!recorded_on(&rows, "c").is_empty(), "the worker that joined during the drain ran nothing");
    let events = client.events(0, 10_000, Duration::ZERO, false).await.expect("events");
    let kinds: Vec<EventType> = events.events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventType::WorkerDraining) && kinds.contains(&EventType::WorkerDrained), "{kinds:?}");
    // The 3 s tasks a ran at the drain outlived its 1 s deadline: stopped and run elsewhere.
    let late = events.events.iter().filter(|e| e.message.contains("drained past its deadline")).count();
    assert!(late >= 1, "no task was stopped at the drain's deadline");

    // A drained worker stays out of service until uncordoned.
    let more = client.submit(&squares_job(4, "0")).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, more, LONG).await.state, JobState::Succeeded);
    let rows = client.results(more, 0, None, false).await.expect("results");
    assert!(recorded_on(&rows, "a").is_empty(), "a drained worker ran {:?}", recorded_on(&rows, "a"));

    // Cordon b and c, uncordon a: new work goes to a only; b's own tasks finish.
    client.maintain_worker("b", "cordon", None).await.expect("cordon b");
    client.maintain_worker("c", "cordon", None).await.expect("cordon c");
    let view = client.maintain_worker("a", "uncordon", None).await.expect("uncordon a");
    assert_eq!(view.state, WorkerState::Ready);
    let third = client.submit(&squares_job(6, "0")).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, third, LONG).await.state, JobState::Succeeded);
    let rows = client.results(third, 0, None, false).await.expect("results");
    assert_eq!(recorded_on(&rows, "a").len(), 6, "a cordoned worker ran tasks: {rows:?}");

    // The operator's cordon outlives a restart of the worker.
    t.cluster.kill_worker("b");
    t.cluster.start_worker("b", 2, "").expect("restart b");
    wait_until(&t, "b registered again", LONG, || async {
        worker(&client, "b").await.is_some_and(|w| w.state != WorkerState::Lost)
    })
    .await;
    assert_eq!(worker(&client, "b").await.expect("b").state, WorkerState::Cordoned);

    // Refusals: an unknown worker, a bad deadline.
    match client.maintain_worker("nobody", "cordon", None).await {
        Err(flotilla_client::ClientError::Api { status: 404, .. }) => {}
        other => panic!("cordoning an unknown worker: {other:?}"),
    }
    let (code, _, err) = cli(&t.cluster.master_list(), &["worker", "drain", "a", "--deadline", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--deadline"), "{err}");
    let (code, out, err) = cli(&t.cluster.master_list(), &["worker", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let names: Vec<&str> = listed.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert!(listed.iter().all(|w| w["state"].is_string() && w["running"].is_u64() && w["queued"].is_u64()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sent_sigterm_finishes_its_running_tasks_and_exits_0() {
    let mut t = cluster(3, &[("a", 2), ("b", 2)], &[]).await;
    let client = t.client();
    let n = 12;
    let job = client.submit(&squares_job(n, "1")).await.expect("submit").id;
    wait_until(&t, "a runs tasks", LONG, || async {
        worker(&client, "a").await.is_some_and(|w| w.running > 0 && w.queued > 0)
    })
    .await;
    let mut a = t.cluster.workers.remove("a").expect("a");
    flotilla::local::signal(&a, libc::SIGTERM);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = a.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < LONG, "worker a did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "a drained worker exits 0");
    assert_eq!(wait_job(&t, &client, job, LONG).await.state, JobState::Succeeded);
    let rows = client.results(job, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, n, |i| (i * i).to_string());
    // Its running tasks finished there; none was stopped and re-run (only queued ones moved,
    // taken back before they started).
    assert!(!recorded_on(&rows, "a").is_empty(), "a's running tasks did not finish there");
    let events = client.events(0, 10_000, Duration::ZERO, false).await.expect("events");
    let rescheduled: Vec<&str> =
        events.events.iter().filter(|e| e.kind == EventType::TaskRescheduled).map(|e| e.message.as_str()).collect();
    assert!(rescheduled.is_empty(), "tasks were re-run: {rescheduled:?}");
    let log = std::fs::read_to_string(t.dir.path().join("logs/worker-a.log")).unwrap_or_default();
    assert!(log.contains("drained: every task finished or moved"), "{log}");
    // Restarted, it is in service again (it drained itself; no operator took it out).
    t.cluster.start_worker("a", 2, "").expect("restart a");
    wait_state(&t, &client, "a", WorkerState::Ready).await;
}
