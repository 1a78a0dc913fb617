//! Shared helpers of the integration tests: real `flotilla` processes on free loopback ports
//! in a temp dir, polled with generous deadlines (never fixed sleeps), killed on drop.

#![allow(dead_code)]

pub mod relay;
pub mod slurm;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla::local::LocalCluster;
use flotilla_client::Client;
use flotilla_proto::api::{EventType, JobDetail, SubmitRequest, TaskResultView, TaskState};

pub const EXE: &str = env!("CARGO_BIN_EXE_flotilla");

/// Deadlines are generous: the suite must pass on a slow, loaded 2-core machine.
pub const LONG: Duration = Duration::from_secs(120);

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn client(&self) -> Client {
        self.cluster.client().expect("client").with_retry_for(Duration::from_secs(60))
    }

    /// Panics with the tail of every process log, so a CI failure explains itself.
    pub fn fail(&self, what: &str) -> ! {
        let mut report = format!("{what}\n");
        // FLOTILLA_KEEP_LOGS=DIR keeps every whole log of a failed test for reading later.
        if let Some(keep) = std::env::var_os("FLOTILLA_KEEP_LOGS") {
            let keep = PathBuf::from(keep).join(self.dir.path().file_name().unwrap_or_default());
            if std::fs::create_dir_all(&keep).is_ok() {
                for e in std::fs::read_dir(self.dir.path().join("logs")).into_iter().flatten().flatten() {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
                report.push_str(&format!("(whole logs kept in {})\n", keep.display()));
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                report.push_str(&format!("--- {} (last lines)\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    report.push_str(l);
                    report.push('\n');
                }
            }
        }
        panic!("{report}");
    }
}

/// Starts masters, waits for a leader, starts workers and waits until they are ready.
pub async fn cluster(masters: u64, workers: &[(&str, u32)], master_args: &[&str]) -> TestCluster {
    cluster_with(masters, workers, master_args, |_| {}).await
}

/// [`cluster`], with `prepare` run on the planned cluster before anything starts (to change
/// ports, for instance).
pub async fn cluster_with(
    masters: u64,
    workers: &[(&str, u32)],
    master_args: &[&str],
    prepare: impl FnOnce(&mut LocalCluster),
) -> TestCluster {
    let dir = tempfile::Builder::new().prefix("flotilla-test-").tempdir().expect("temp dir");
    let mut cluster = LocalCluster::plain(&PathBuf::from(EXE), dir.path(), masters, None).expect("plan cluster");
    cluster.master_args = master_args.iter().map(|s| s.to_string()).collect();
    prepare(&mut cluster);
    launch(cluster, dir, workers).await
}

/// [`cluster`] as `flotilla up` runs one: TLS everywhere, with certificates of its own CA.
pub async fn secure_cluster(masters: u64, workers: &[(&str, u32)]) -> TestCluster {
    secure_cluster_with(masters, workers, |_| {}).await
}

/// [`secure_cluster`], with `prepare` run on the planned cluster before anything starts.
pub async fn secure_cluster_with(
    masters: u64,
    workers: &[(&str, u32)],
    prepare: impl FnOnce(&mut LocalCluster),
) -> TestCluster {
    let dir = tempfile::Builder::new().prefix("flotilla-test-").tempdir().expect("temp dir");
    let mut cluster = LocalCluster::new(&PathBuf::from(EXE), dir.path(), masters, None).expect("plan cluster");
    prepare(&mut cluster);
    launch(cluster, dir, workers).await
}

async fn launch(mut cluster: LocalCluster, dir: tempfile::TempDir, workers: &[(&str, u32)]) -> TestCluster {
    cluster.start_masters().expect("start masters");
    let mut t = TestCluster { cluster, dir };
    if t.cluster.wait_leader(LONG).await.is_none() {
        t.fail("no leader elected");
    }
    for (name, cpus) in workers {
        t.cluster.start_worker(name, *cpus, "").expect("start worker");
    }
    if let Err(e) = t.cluster.wait_workers(workers.len(), LONG).await {
        t.fail(&e.to_string());
    }
    t
}

pub fn squares_job(n: u64, sleep: &str) -> SubmitRequest {
    SubmitRequest {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("sleep {sleep}; echo $((FLOTILLA_TASK_INDEX*FLOTILLA_TASK_INDEX))"),
        ],
        array: Some(format!("1-{n}")),
        reduce: Some("awk '{s+=$1} END {print s}'".into()),
        ..Default::default()
    }
}

pub fn sum_of_squares(n: u64) -> u64 {
    n * (n + 1) * (2 * n + 1) / 6
}

pub async fn wait_job(t: &TestCluster, client: &Client, id: u64, timeout: Duration) -> JobDetail {
    let deadline = Instant::now() + timeout;
    loop {
        match client.job(id, false).await {
            Ok(j) if j.state.is_terminal() => return j,
            _ if Instant::now() > deadline => t.fail(&format!("job {id} did not finish within {timeout:?}")),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn wait_until<F, Fut>(t: &TestCluster, what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            t.fail(&format!("timed out waiting for: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until master `id` follows and has applied everything master `leader` has, then
/// returns its log (to check how it caught up).
pub async fn wait_caught_up(t: &TestCluster, client: &Client, id: u64, leader: u64, what: &str) -> String {
    let address = t.cluster.address(id);
    let leader_address = t.cluster.address(leader);
    wait_until(t, what, LONG, || async {
        let (Ok(me), Ok(lead)) = (client.node(&address).await, client.node(&leader_address).await) else {
            return false;
        };
        me.role == flotilla_proto::api::Role::Follower
            && me.last_applied.is_some()
            && me.last_applied >= lead.last_applied
    })
    .await;
    std::fs::read_to_string(t.dir.path().join(format!("logs/master-{id}.log"))).unwrap_or_default()
}

/// Invariant: every index 1..=n has exactly one recorded result, and it is the right one.
pub fn assert_each_task_recorded_once(rows: &[TaskResultView], n: u64, expect: impl Fn(u64) -> String) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in rows {
        *seen.entry(r.index).or_default() += 1;
    }
    let bad: Vec<u64> = (1..=n).filter(|i| seen.get(i) != Some(&1)).collect();
    assert!(
        bad.is_empty() && seen.len() as u64 == n,
        "tasks not recorded exactly once: {:?}",
        &bad[..bad.len().min(10)]
    );
    for r in rows {
        assert_eq!(r.state, TaskState::Succeeded, "task {} is {}", r.index, r.state);
        assert_eq!(r.stdout.trim(), expect(r.index), "task {} output", r.index);
    }
}

/// Invariant: at most one leader per term in the journal.
pub async fn assert_one_leader_per_term(client: &Client) {
    let events = client.events(0, 10_000, Duration::ZERO, false).await.expect("events");
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    for e in events.events.iter().filter(|e| e.kind == EventType::LeaderElected) {
        let (term, node) = (e.term.expect("term"), e.node.expect("node"));
        if let Some(other) = leaders.insert(term, node) {
            assert_eq!(other, node, "two leaders in term {term}");
        }
    }
}

/// A raw HTTP/1.1 request (to send malformed bodies no client library would produce).
pub fn raw_http(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn cli(masters: &str, args: &[&str]) -> (i32, String, String) {
    cli_with(&[("FLOTILLA_MASTERS".to_string(), masters.to_string())], args)
}

/// Runs the CLI with these environment variables set; returns (exit code, stdout, stderr).
pub fn cli_with(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(EXE)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "error")
        .output()
        .expect("run flotilla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
