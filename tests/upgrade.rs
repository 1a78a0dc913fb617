//! A rolling upgrade from release 0.1.0 to this build, with real processes under load.
//!
//! Release 0.1.0 is commit [`RELEASE_0_1_0`] of this repository (tags may not travel with a
//! clone, so the test names the commit). The test builds it once from the repository's own
//! history (`git worktree`, cached under `target/upgrade-0.1.0/`), starts a cluster of it
//! (3 masters, 2 workers), and upgrades it one master at a time (SIGTERM, then this build on
//! the same data directory, caught up before the next), then one worker at a time (SIGTERM
//! drains it), while a job runs and clients keep submitting.
//!
//! Invariants checked: no submission fails; every job succeeds with each task recorded once;
//! after the upgrade every master and worker reports this build's release. And a master that
//! is sent entries it cannot decode (what a newer leader's would be) stops, loudly, without
//! writing them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use flotilla::local::LocalCluster;
use flotilla_proto::api::{JobState, SubmitRequest, VERSION};

/// The commit released as 0.1.0.
const RELEASE_0_1_0: &str = "409f30dac2636ecc620f7c1ef344e6a6e67d4073";

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The 0.1.0 `flotilla` binary, built once from the repository's history.
fn release_0_1_0() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = root.join("target").join("upgrade-0.1.0");
    let bin = cache.join("target").join("debug").join("flotilla");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&cache).expect("cache dir");
    let src = cache.join("src");
    if !src.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&src);
        let _ = Command::new("git").arg("-C").arg(root).args(["worktree", "prune"]).output();
        run(
            Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["worktree", "add", "--force", "--detach"])
                .arg(&src)
                .arg(RELEASE_0_1_0),
            "git worktree add of release 0.1.0 (the repository needs its history: not a shallow clone)",
        );
    }
    run(
        Command::new(env!("CARGO"))
            .args(["build", "--locked", "--bin", "flotilla"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", cache.join("target"))
            // A second whole build in CI: no debug info and no incremental files, to spare disk.
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .env("CARGO_INCREMENTAL", "0"),
        "building release 0.1.0",
    );
    assert!(bin.exists(), "no binary at {}", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_0_1_0_is_upgraded_one_member_at_a_time_under_load() {
    let old = release_0_1_0();
    let new = PathBuf::from(EXE);
    let dir = tempfile::Builder::new().prefix("flotilla-upgrade-").tempdir().expect("dir");
    let mut cluster = LocalCluster::plain(&old, dir.path(), 3, None).expect("plan");
    // 0.1.0 had no --insecure-plaintext (it served plain text by default).
    cluster.plaintext_flag = false;
    cluster.start_masters().expect("start 0.1.0 masters");
    let t = TestCluster { cluster, dir };
    let mut t = t;
    assert!(t.cluster.wait_leader(LONG).await.is_some(), "0.1.0 elects no leader");
    for name in ["a", "b"] {
        t.cluster.start_worker(name, 2, "").expect("start 0.1.0 worker");
    }
    t.cluster.wait_workers(2, LONG).await.unwrap_or_else(|e| t.fail(&e.to_string()));
    let client = t.client();
    let n = 80;
    let long = client.submit(&squares_job(n, "0.3")).await.expect("submit").id;

    // Clients keep submitting through the whole upgrade; none may fail.
    let (stop, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let submitted = Arc::new(std::sync::Mutex::new(Vec::new()));
    // The submitters' client: plain text, then TLS once every master accepts it.
    let shared_client = Arc::new(std::sync::Mutex::new(Arc::new(t.client())));
    let load = {
        let (clients, stop, failed, submitted) =
            (shared_client.clone(), stop.clone(), failed.clone(), submitted.clone());
        tokio::spawn(async move {
            let request =
                SubmitRequest { command: vec!["true".into()], array: Some("1-3".into()), ..Default::default() };
            while stop.load(Ordering::Relaxed) == 0 {
                let client = clients.lock().expect("lock").clone();
                match client.submit(&request).await {
                    Ok(s) => submitted.lock().expect("lock").push(s.id),
                    Err(e) => {
                        eprintln!("submission failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    t.cluster.exe = new.clone();
    t.cluster.plaintext_flag = true;
    // Half-way, under a 0.2.0 leader, a 0.2.0 feature is refused while a 0.1.0 voter remains.
    restart_master(&mut t, &client, 1, "upgrading from 0.1.0").await;
    // 0.1.0's own leadership transfer can hang (a bug 0.2.0 fixed), so master 1 is asked to
    // stand for election directly, as a transfer's last step does, until it leads.
    wait_until(&t, "the upgraded master 1 leads", LONG, || async {
        match t.cluster.wait_leader(LONG).await {
            Some(1) => true,
            Some(leader) => {
                let path = format!("/v1/cluster/stand?leader={leader}");
                let _ = raw_http(&t.cluster.address(1), "POST", &path, &[], b"");
                false
            }
            None => false,
        }
    })
    .await;
    let token_role = flotilla_proto::api::TokenRole::Read;
    // Asked of master 1 alone: an old master does not know the route at all (404).
    let upgraded = t.cluster.client_of(vec![t.cluster.address(1)]).expect("client of master 1");
    match upgraded.create_token("viewer", token_role).await {
        Err(flotilla_client::ClientError::Api { status: 409, error }) => {
            assert!(error.error.contains("tokens with roles needs every voting master at release 0.2.0"), "{error:?}")
        }
        other => panic!("a token was created while 0.1.0 voters remain: {other:?}"),
    }
    let limits = flotilla_proto::api::LimitsRequest { open_files: Some(64), ..Default::default() };
    let limited = SubmitRequest {
        command: vec!["sh".into(), "-c".into(), "ulimit -n".into()],
        limits: Some(limits),
        ..Default::default()
    };
    match upgraded.submit(&limited).await {
        Err(flotilla_client::ClientError::Api { status: 409, error }) => {
            assert!(error.error.contains("per-task limits needs every voting master at release 0.2.0"), "{error:?}")
        }
        other => panic!("a job with limits was accepted while 0.1.0 voters remain: {other:?}"),
    }
    for id in [2, 3] {
        restart_master(&mut t, &client, id, "upgrading from 0.1.0").await;
    }
    // Every voter reads tokens now: the next snapshots carry them (format 2).
    wait_until(&t, "the gate opens once every voter runs 0.2.0", LONG, || async {
        match client.create_token("viewer", token_role).await {
            Ok(_) => true,
            // An attempt that committed though its answer was lost.
            Err(e) => e.to_string().contains("exists already"),
        }
    })
    .await;
    for id in [1, 2, 3] {
        let info = client.node(&t.cluster.address(id)).await.expect("node");
        assert_eq!(info.version.as_deref(), Some(VERSION));
    }
    // Every master reads task limits now, but both workers are 0.1.0: a job with limits waits
    // (a job submitted after it runs), and runs, under its limit, once a worker is upgraded.
    let limited = client.submit(&limited).await.expect("a job with limits, every master at 0.2.0").id;
    let after = client.submit(&squares_job(2, "0")).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, after, LONG).await.state, JobState::Succeeded);
    let waiting = client.job(limited, false).await.expect("job");
    assert_eq!((waiting.tasks.waiting, waiting.state), (1, JobState::Waiting), "placed on a 0.1.0 worker: {waiting:?}");
    for name in ["a", "b"] {
        let code = t.cluster.terminate_worker(name, Duration::from_secs(90));
        assert_eq!(code, Some(0), "0.1.0 worker {name} did not drain and exit 0 on SIGTERM");
        t.cluster.start_worker(name, 2, "").expect("start the upgraded worker");
    }
    t.cluster.wait_workers(2, LONG).await.unwrap_or_else(|e| t.fail(&e.to_string()));
    assert_eq!(wait_job(&t, &client, limited, LONG).await.state, JobState::Succeeded);
    let rows = client.results(limited, 0, None, false).await.expect("results");
    assert_eq!(rows.first().map(|r| r.stdout.trim().to_string()), Some("64".to_string()), "{rows:?}");

    // Then the running plain-text cluster moves to TLS, still under load (README "Moving a
    // running plain-text cluster to TLS"): every master restarted with --certs --tls-upgrade
    // (both accepted; towards peers, TLS first), the workers and clients with the
    // certificates, every master again with TLS only.
    let certs = t.dir.path().join("certs");
    flotilla_tls::authority::init(&certs, &[]).expect("certs init");
    // This loopback cluster ran without a token; keep it that way (a cluster beyond loopback
    // keeps its --token-file, which wins over the new admin token).
    std::fs::remove_file(certs.join(flotilla_tls::authority::ADMIN_TOKEN)).expect("rm admin.token");
    // Until every master accepts TLS, the harness itself still speaks plain text to them.
    let certs_arg = certs.display().to_string();
    t.cluster.plaintext_flag = false;
    t.cluster.master_args.extend(["--certs".to_string(), certs_arg.clone(), "--tls-upgrade".to_string()]);
    restart_masters(&mut t, &client, "moving to TLS").await;
    for name in ["a", "b"] {
        let code = t.cluster.terminate_worker(name, Duration::from_secs(90));
        assert_eq!(code, Some(0), "worker {name} did not drain and exit 0 on SIGTERM");
        t.cluster.start_worker_with(name, 2, "", &["--certs", &certs_arg]).expect("start the worker with certificates");
    }
    t.cluster.wait_workers(2, LONG).await.unwrap_or_else(|e| t.fail(&e.to_string()));
    t.cluster.master_args.clear();
    t.cluster.certs = Some(certs);
    *shared_client.lock().expect("lock") = Arc::new(t.client());
    let client = t.client();
    restart_masters(&mut t, &client, "TLS only").await;
    let (status, body) = raw_http(&t.cluster.address(1), "GET", "/v1/status", &[], b"");
    assert_eq!(status, 400, "plain text still served after the move: {body}");

    stop.store(1, Ordering::Relaxed);
    load.await.expect("submitter");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "submissions failed during the upgrade");

    assert_eq!(wait_job(&t, &client, long, LONG).await.state, JobState::Succeeded);
    let rows = client.results(long, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, n, |i| (i * i).to_string());
    let ids: Vec<u64> = submitted.lock().expect("lock").clone();
    assert!(!ids.is_empty(), "nothing was submitted during the upgrade");
    for id in ids {
        let job = wait_job(&t, &client, id, LONG).await;
        assert_eq!(job.state, JobState::Succeeded, "job {id}");
    }
    wait_until(&t, "every worker reports this release", LONG, || async {
        client.workers(false).await.is_ok_and(|ws| {
            ws.iter().filter(|w| w.state == flotilla_proto::api::WorkerState::Ready).count() == 2
                && ws.iter().filter(|w| w.version.as_deref() == Some(VERSION)).count() == 2
        })
    })
    .await;
    let members = client.members().await.expect("members");
    assert!(members.iter().all(|m| m.version.as_deref() == Some(VERSION)), "{members:?}");
    assert_one_leader_per_term(&client).await;
}

/// Restarts every master in turn with the cluster's current flags (SIGTERM: a leader hands
/// over first), each caught up before the next.
async fn restart_masters(t: &mut TestCluster, client: &flotilla_client::Client, why: &str) {
    for id in [1, 2, 3] {
        restart_master(t, client, id, why).await;
    }
}

/// Restarts one master (SIGTERM) and waits until it caught up.
async fn restart_master(t: &mut TestCluster, client: &flotilla_client::Client, id: u64, why: &str) {
    let code = t.cluster.terminate_master(id, Duration::from_secs(30));
    assert_eq!(code, Some(0), "master {id} did not stop cleanly on SIGTERM ({why})");
    t.cluster.start_master(id).expect("restart the master");
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    if leader != id {
        wait_caught_up(t, client, id, leader, why).await;
    }
}

/// What a newer leader's entries would be to this build: bytes it cannot decode. The master
/// stops with a clear error and its log does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_sent_entries_it_cannot_decode_stops_loudly_without_writing_them() {
    let mut t = cluster(3, &[], &[]).await;
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    let victim = [1, 2, 3].into_iter().find(|m| *m != leader).expect("a follower");
    let client = t.client();
    let before = client.node(&t.cluster.address(victim)).await.expect("node").last_log_index;
    let address = format!("http://{}", t.cluster.address(victim));
    let mut raft =
        flotilla_proto::grpc::raft_service_client::RaftServiceClient::connect(address).await.expect("connect");
    let garbage = flotilla_proto::grpc::Envelope { payload: vec![0xff; 64] };
    assert!(raft.append_entries(garbage).await.is_err(), "undecodable entries were accepted");
    let mut child = t.cluster.masters.remove(&victim).expect("victim");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < LONG, "master {victim} kept running after entries it cannot decode");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "it stops with an error status");
    let log = std::fs::read_to_string(t.dir.path().join(format!("logs/master-{victim}.log"))).unwrap_or_default();
    assert!(log.contains("cannot decode"), "no clear error in the log");
    // Restarted, it holds what it held: nothing was written from the bad request.
    t.cluster.start_master(victim).expect("restart");
    let info = loop {
        if let Ok(info) = client.node(&t.cluster.address(victim)).await {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(info.last_log_index >= before, "its log lost entries");
}
