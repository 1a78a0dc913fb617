//! Backups and disaster recovery with real processes.
//!
//! Invariants checked: a backup taken while a job runs holds every job acknowledged before
//! it, with the same results; a new cluster restored from it serves them under a new
//! identity; a damaged backup or a used data directory is refused; after losing 2 of 3
//! masters for good, the group rebuilt from the survivor holds every job acknowledged and
//! committed before the loss (the survivor had caught up) and runs new work.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use flotilla::local::LocalCluster;
use flotilla_proto::api::{JobState, MemberRole};

fn flotilla(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(EXE).args(args).env("RUST_LOG", "error").output().expect("run flotilla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_new_cluster() {
    let t = cluster(3, &[("a", 2)], &[]).await;
    let client = t.client();
    let done = client.submit(&squares_job(20, "0")).await.expect("submit").id;
    wait_job(&t, &client, done, LONG).await;
    let running = client.submit(&squares_job(40, "0.2")).await.expect("submit").id;
    let file = t.dir.path().join("cluster.backup");
    let (code, out, err) = cli(&t.cluster.master_list(), &["snapshot", "save", file.to_str().expect("path"), "--json"]);
    assert_eq!(code, 0, "snapshot save: {err}");
    let saved: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(saved["jobs"], 2, "{out}");
    let old_cluster = client.node(&t.cluster.address(1)).await.expect("node").cluster.expect("an identity");
    assert_eq!(saved["cluster"].as_str(), Some(old_cluster.as_str()));

    // A new cluster of three masters on new ports, each seeded from the backup.
    let dir = tempfile::Builder::new().prefix("flotilla-restored-").tempdir().expect("dir");
    let mut restored = LocalCluster::plain(&PathBuf::from(EXE), dir.path(), 3, None).expect("plan");
    let peers = restored.peers();
    for id in 1..=3u64 {
        let data = restored.data_dir(id);
        let (code, _, err) = flotilla(&[
            "snapshot",
            "restore",
            file.to_str().expect("path"),
            "--data-dir",
            data.to_str().expect("path"),
            "--id",
            &id.to_string(),
            "--peers",
            &peers,
        ]);
        assert_eq!(code, 0, "restore {id}: {err}");
    }
    // A used data directory and a damaged backup are refused.
    let data = restored.data_dir(1);
    let (code, _, err) = flotilla(&[
        "snapshot",
        "restore",
        file.to_str().expect("path"),
        "--data-dir",
        data.to_str().expect("path"),
        "--id",
        "1",
        "--peers",
        &peers,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds a master's data"), "{err}");
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = t.dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).expect("write");
    let (code, _, err) = flotilla(&["snapshot", "inspect", damaged.to_str().expect("path")]);
    assert_ne!(code, 0);
    assert!(err.contains("damaged"), "{err}");

    restored.start_masters().expect("start the restored masters");
    assert!(restored.wait_leader(LONG).await.is_some(), "the restored cluster elects no leader");
    let new_client = restored.client().expect("client").with_retry_for(Duration::from_secs(60));
    let job = new_client.job(done, false).await.expect("the finished job is restored");
    assert_eq!(job.state, JobState::Succeeded);
    let rows = new_client.results(done, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 20, |i| (i * i).to_string());
    assert!(new_client.job(running, false).await.is_ok(), "the job running at the backup is restored");
    let info = new_client.node(&restored.address(1)).await.expect("node");
    assert_ne!(info.cluster.as_deref(), Some(old_cluster.as_str()), "a restored cluster has a new identity");
    // The original runs on, untouched.
    assert_eq!(wait_job(&t, &client, running, LONG).await.state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_is_rebuilt_from_one_survivor_after_losing_two_masters_for_good() {
    let mut t = cluster(3, &[("a", 2)], &[]).await;
    let client = t.client();
    let mut jobs = Vec::new();
    for n in [5u64, 8, 13] {
        let id = client.submit(&squares_job(n, "0")).await.expect("submit").id;
        jobs.push((id, n));
    }
    for (id, _) in &jobs {
        wait_job(&t, &client, *id, LONG).await;
    }
    let pending = client.submit(&squares_job(4, "2")).await.expect("submit").id;
    // The survivor has everything the leader acknowledged; then the other two are lost.
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    let survivor = [1, 2, 3].into_iter().find(|m| *m != leader).expect("a follower");
    wait_caught_up(&t, &client, survivor, leader, "the survivor caught up").await;
    for lost in [1, 2, 3].into_iter().filter(|m| *m != survivor) {
        t.cluster.forget_master(lost);
    }
    t.cluster.kill_master(survivor);

    let (new_a, new_b) = (survivor + 10, survivor + 20);
    for id in [new_a, new_b] {
        t.cluster.ports.insert(id, flotilla::local::free_port().expect("port"));
    }
    let data = t.cluster.data_dir(survivor);
    let (code, out, err) = flotilla(&[
        "master",
        "recover",
        "--data-dir",
        data.to_str().expect("path"),
        "--id",
        &survivor.to_string(),
        "--peers",
        &t.cluster.peers(),
    ]);
    assert_eq!(code, 0, "recover: {err}");
    assert!(err.contains("UNSAFE"), "the recovery says it is unsafe: {err}");
    assert!(out.contains("lost"), "the recovery says what may be lost: {out}");
    t.cluster.start_master(survivor).expect("restart the survivor");
    for id in [new_a, new_b] {
        t.cluster.start_master_awaiting(id).expect("start a new master");
    }
    let client = t.client();
    wait_until(&t, "three voters", LONG, || async {
        client.members().await.is_ok_and(|m| m.iter().filter(|m| m.role == MemberRole::Voter).count() == 3)
    })
    .await;
    for (id, n) in &jobs {
        let job = client.job(*id, false).await.unwrap_or_else(|e| t.fail(&format!("job {id} lost: {e}")));
        assert_eq!(job.state, JobState::Succeeded);
        let rows = client.results(*id, 0, None, false).await.expect("results");
        assert_each_task_recorded_once(&rows, *n, |i| (i * i).to_string());
    }
    assert!(client.job(pending, false).await.is_ok(), "the running job survived");
    for id in [new_a, new_b] {
        wait_caught_up(&t, &client, id, survivor, "a new master caught up").await;
    }
    // The worker finds the rebuilt group (the survivor kept its address) and runs new work.
    let next = client.submit(&squares_job(3, "0")).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, next, LONG).await.state, JobState::Succeeded);
}
