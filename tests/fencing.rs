//! Fencing and split-brain, tested directly on real processes.

mod common;

use std::time::Duration;

use common::*;
use flotilla::local::signal;
use flotilla_proto::api::{EventType, SubmitRequest, TaskState, WorkerState};

/// A worker paused past the timeout comes back after its tasks were rescheduled.
/// Invariants: it is told to stop those attempts; the results it still delivers are rejected
/// and journalled (`result_rejected`); every task is recorded exactly once, from its latest
/// attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_worker_is_fenced_off_and_its_late_results_journalled() {
    let t = cluster(1, &[("a", 2), ("b", 2)], &["--worker-timeout", "1500ms"]).await;
    let client = t.client();
    // Long enough that the paused worker's processes finish while it is paused (they are in
    // their own process groups and keep running), short enough for the test.
    let job = SubmitRequest {
        command: vec!["sh".into(), "-c".into(), "sleep 1.5; echo $FLOTILLA_TASK_INDEX".into()],
        array: Some("1-4".into()),
        ..Default::default()
    };
    let id = client.submit(&job).await.expect("submit").id;
    wait_until(&t, "worker a runs tasks", LONG, || async {
        client
            .results(id, 0, None, false)
            .await
            .is_ok_and(|rows| rows.iter().any(|r| r.state == TaskState::Running && r.worker.as_deref() == Some("a")))
    })
    .await;
    let a = &t.cluster.workers["a"];
    signal(a, libc::SIGSTOP);
    wait_until(&t, "worker a declared lost", LONG, || async {
        client
            .status(false)
            .await
            .is_ok_and(|s| s.workers.iter().any(|w| w.name == "a" && w.state == WorkerState::Lost))
    })
    .await;
    wait_until(&t, "its tasks finished elsewhere", LONG, || async {
        client.job(id, false).await.is_ok_and(|j| j.tasks.succeeded == 4)
    })
    .await;
    signal(a, libc::SIGCONT);
    wait_until(&t, "the late results rejected and journalled", LONG, || async {
        client.events(0, 10_000, Duration::ZERO, false).await.is_ok_and(|e| {
            e.events.iter().any(|e| e.kind == EventType::ResultRejected && e.worker.as_deref() == Some("a"))
        })
    })
    .await;
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 4, |i| i.to_string());
    for r in &rows {
        assert_eq!(r.attempt, Some(r.attempts), "task {} recorded from its latest attempt", r.index);
    }
    // It rejoins as a new incarnation and is usable again.
    wait_until(&t, "worker a ready again", LONG, || async {
        client
            .status(false)
            .await
            .is_ok_and(|s| s.workers.iter().any(|w| w.name == "a" && w.state == WorkerState::Ready))
    })
    .await;
}

/// A leader paused past the election timeout, resumed after a new leader took over.
/// Invariants: one leader per term; the old leader commits nothing of its own (a write sent
/// to it straight after it resumes is either refused or, if acknowledged, really committed);
/// the cluster keeps every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_cannot_commit_or_lead_after_it_resumes() {
    let t = cluster(3, &[("a", 2)], &[]).await;
    let client = t.client();
    let first = client.submit(&squares_job(10, "0")).await.expect("submit").id;
    wait_job(&t, &client, first, LONG).await;
    let old = t.cluster.wait_leader(LONG).await.expect("leader");
    signal(&t.cluster.masters[&old], libc::SIGSTOP);
    let new = loop {
        match t.cluster.wait_leader(LONG).await {
            Some(l) if l != old => break l,
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            None => t.fail("no new leader while the old one is paused"),
        }
    };
    let second = client.submit(&squares_job(10, "0")).await.expect("submit under the new leader").id;
    signal(&t.cluster.masters[&old], libc::SIGCONT);
    // Straight to the old leader, before it has heard of the new term.
    let (status, body) = raw_http(
        &t.cluster.address(old),
        "POST",
        "/v1/jobs",
        &[("Content-Type", "application/json")],
        br#"{"command": ["true"], "request_id": "to-the-old-leader"}"#,
    );
    let acknowledged: Option<u64> = if status == 200 {
        serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["id"].as_u64())
    } else {
        assert!(matches!(status, 421 | 503), "unexpected answer {status}: {body}");
        None
    };
    wait_job(&t, &client, second, LONG).await;
    let jobs = client.jobs(false).await.expect("jobs");
    let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    assert!(ids.contains(&first) && ids.contains(&second));
    if let Some(id) = acknowledged {
        assert!(ids.contains(&id), "the old leader acknowledged job {id}, which was never committed");
    }
    assert!(ids.len() <= 3);
    assert_one_leader_per_term(&client).await;
    let _ = new;
}
