//! Finished tasks' records live in each master's on-disk state store, not in its memory; tested
//! on real processes killed for real.

mod common;

use std::time::Duration;

use common::*;
use flotilla_client::Client;
use flotilla_proto::api::JobState;

/// Every master's own replica of a job's results and its reduce result (stale reads, so each
/// master answers from its own store).
async fn check_replica(t: &TestCluster, id: u64, job: u64, n: u64) {
    let address = t.cluster.address(id);
    let client = Client::new(vec![address], None).expect("client").with_retry_for(Duration::from_secs(60));
    // A master just restarted re-applies its log after its snapshot only once it learns what
    // is committed: until then its replica may show the job unfinished (stale reads).
    wait_until(t, &format!("master {id}'s replica shows job {job} finished"), LONG, || async {
        client.job(job, true).await.is_ok_and(|j| j.state == JobState::Succeeded)
    })
    .await;
    let rows = match client.results(job, 0, None, true).await {
        Ok(rows) => rows,
        Err(e) => t.fail(&format!("master {id}: results: {e}")),
    };
    assert_each_task_recorded_once(&rows, n, |i| (i * i).to_string());
    let result = client.result(job, true).await.expect("result").result.expect("a result");
    assert_eq!(result.trim(), sum_of_squares(n).to_string(), "master {id}'s reduce result");
    // A page from the middle comes from the store too.
    let page = client.results(job, 100, Some(5), true).await.expect("a page");
    assert_eq!(page.iter().map(|r| r.index).collect::<Vec<_>>(), vec![101, 102, 103, 104, 105]);
}

/// Invariants: results survive a SIGKILL of every master at once (each restarts from its data
/// directory: the in-memory part from its snapshot, the records from its store, the log
/// after the snapshot re-applied); a follower whose data directory was wiped is rebuilt by a
/// snapshot install (the log is compacted every 50 entries) and then holds the same results;
/// a job submitted after all that runs as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_every_master_restarting_and_a_follower_rebuilt_by_snapshot() {
    let mut t = cluster(3, &[("a", 2)], &["--snapshot-every", "50"]).await;
    let client = t.client();
    let n = 300;
    let id = client.submit(&squares_job(n, "0")).await.expect("submit").id;
    let job = wait_job(&t, &client, id, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    for m in 1..=3 {
        wait_until(&t, &format!("master {m} applied the job's end"), LONG, || async {
            let c = Client::new(vec![t.cluster.address(m)], None).expect("client");
            c.job(id, true).await.is_ok_and(|j| j.state == JobState::Succeeded)
        })
        .await;
    }

    for m in 1..=3 {
        t.cluster.kill_master(m);
    }
    for m in 1..=3 {
        t.cluster.start_master(m).expect("restart");
    }
    if t.cluster.wait_leader(LONG).await.is_none() {
        t.fail("no leader after restarting every master");
    }
    for m in 1..=3 {
        check_replica(&t, m, id, n).await;
    }

    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    let wiped = (1..=3).find(|m| *m != leader).expect("a follower");
    t.cluster.kill_master(wiped);
    std::fs::remove_dir_all(t.dir.path().join(format!("master-{wiped}"))).expect("wipe the follower");
    // Enough entries after the wipe that the leader compacts its log past what the follower
    // could catch up from (50 entries are kept behind a snapshot): it must get a snapshot.
    let later = client.submit(&squares_job(100, "0")).await.expect("submit").id;
    let quick = flotilla_proto::api::SubmitRequest { command: vec!["true".into()], ..Default::default() };
    let mut small = Vec::new();
    for _ in 0..150 {
        small.push(client.submit(&quick).await.expect("submit").id);
    }
    wait_job(&t, &client, later, LONG).await;
    for id in small {
        wait_job(&t, &client, id, LONG).await;
    }
    t.cluster.start_master(wiped).expect("restart the wiped follower");
    let log = wait_caught_up(&t, &client, wiped, leader, "the wiped follower catches up").await;
    assert!(log.contains("snapshot installed"), "the wiped follower was rebuilt by a snapshot");
    check_replica(&t, wiped, id, n).await;
    let rows = client.results(later, 0, None, false).await.expect("results of the later job");
    assert_each_task_recorded_once(&rows, 100, |i| (i * i).to_string());
}
