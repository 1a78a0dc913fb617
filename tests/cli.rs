//! The CLI and API against bad input and without credentials: a clear one-line error, a
//! non-zero exit where it is a CLI call, and nothing crashes or changes.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use flotilla_proto::api::{JobState, SubmitRequest, WorkerState};

/// Invariant: every bad request is refused with a clear message and leaves the cluster
/// running and unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_crashes_nothing() {
    let mut t = cluster(1, &[("a", 2)], &[]).await;
    let masters = t.cluster.master_list();
    let address = t.cluster.address(1);

    let (code, _, err) = cli(&masters, &["submit", "--array", "1-x", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid array"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let (code, _, err) = cli(&masters, &["submit", "--array", "5-1", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("ends before it starts"), "{err}");

    let (code, _, err) = cli(&masters, &["submit"]);
    assert_ne!(code, 0);
    assert!(err.contains("no command"), "{err}");

    let (code, _, err) = cli(&masters, &["submit", "--timeout", "soon", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("duration"), "{err}");

    let (code, _, err) = cli(&masters, &["submit", "--resource", "GPU=1", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid resource name 'GPU'"), "{err}");
    let (code, _, err) = cli(&masters, &["submit", "--resource", "gpu=0", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("at least 1"), "{err}");
    let (code, _, err) = cli(&masters, &["submit", "--memory", "lots", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid memory"), "{err}");
    let (code, _, err) = cli(&masters, &["submit", "--prefer", "zone", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("not KEY=VALUE"), "{err}");

    let (code, _, err) = cli(&masters, &["job", "show", "999"]);
    assert_ne!(code, 0);
    assert!(err.contains("no job 999"), "{err}");
    let (code, _, err) = cli(&masters, &["job", "show", "abc"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a job id"), "{err}");
    let (code, _, err) = cli(&masters, &["job", "cancel", "999"]);
    assert_ne!(code, 0);
    assert!(err.contains("no job 999"), "{err}");

    let (status, body) = raw_http(&address, "POST", "/v1/jobs", &[("Content-Type", "application/json")], b"{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid job JSON"), "{body}");
    let (status, body) =
        raw_http(&address, "POST", "/v1/jobs", &[], br#"{"command": ["true"], "array": "1-3", "cpus": 0}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cpus"), "{body}");
    let (status, body) =
        raw_http(&address, "POST", "/v1/jobs", &[], br#"{"command": ["true"], "resources": {"memory": 1}}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid resource name 'memory'"), "{body}");
    let (status, _) = raw_http(&address, "GET", "/v1/jobs/abc", &[], b"");
    assert_eq!(status, 400);
    let (status, _) = raw_http(&address, "GET", "/nowhere", &[], b"");
    assert_eq!(status, 404);

    let client = t.client();
    assert!(client.jobs(false).await.expect("jobs").is_empty(), "no bad request created a job");

    // A program that does not exist: the job fails, with the reason in its results.
    let missing = SubmitRequest { command: vec!["/no/such/program".into()], ..Default::default() };
    let id = client.submit(&missing).await.expect("submit").id;
    let job = wait_job(&t, &client, id, LONG).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.failure.as_deref().unwrap_or("").contains("could not start"), "{job:?}");
    let (code, _, _) = cli(&masters, &["job", "wait", &id.to_string(), "--quiet"]);
    assert_eq!(code, 1, "job wait reports the failure in its exit status");
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert!(rows[0].error.as_deref().unwrap_or("").contains("No such file"), "{:?}", rows[0]);

    // Huge output is cut at 64 KiB and marked as truncated.
    let huge = SubmitRequest {
        command: vec!["sh".into(), "-c".into(), "head -c 2000000 /dev/zero | tr '\\0' x".into()],
        ..Default::default()
    };
    let id = client.submit(&huge).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, id, LONG).await.state, JobState::Succeeded);
    let rows = client.results(id, 0, None, false).await.expect("results");
    assert!(rows[0].stdout_truncated);
    assert_eq!(rows[0].stdout.len(), 64 * 1024);

    // A task that exceeds its timeout is killed and counted as failed.
    let slow = SubmitRequest {
        command: vec!["sleep".into(), "30".into()],
        timeout: Some("300ms".into()),
        ..Default::default()
    };
    let id = client.submit(&slow).await.expect("submit").id;
    let job = wait_job(&t, &client, id, LONG).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(client.results(id, 0, None, false).await.expect("results")[0].timed_out);

    // A job no worker can ever satisfy is reported, not silently stuck.
    let (code, out, _) = cli(&masters, &["submit", "--cpus", "64", "--", "true"]);
    assert_eq!(code, 0);
    let (_, show, _) = cli(&masters, &["job", "show", out.trim()]);
    assert!(show.contains("needs 64 cpus"), "{show}");
    let (code, _, _) = cli(&masters, &["job", "cancel", out.trim()]);
    assert_eq!(code, 0);

    for (id, child) in t.cluster.masters.iter_mut() {
        assert!(child.try_wait().expect("status").is_none(), "master {id} is still running");
    }
    for (name, child) in t.cluster.workers.iter_mut() {
        assert!(child.try_wait().expect("status").is_none(), "worker {name} is still running");
    }
}

/// Invariant: with a cluster token, a request without it gets 401 and changes nothing; with
/// it, everything works (workers included); the dashboard's static page is the only
/// exception. Without a token a master will not listen beyond
/// loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_token_is_required_when_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = flotilla::local::free_port().expect("port");
    let address = format!("127.0.0.1:{port}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").expect("token file");
    let mut master = Command::new(EXE)
        .args(["master", "--id", "1", "--listen", &address, "--peers", &format!("1={address}")])
        .arg("--data-dir")
        .arg(dir.path().join("m1"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--insecure-plaintext")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start master");
    let mut worker = Command::new(EXE)
        .args(["worker", "--masters", &address, "--cpus", "1", "--name", "w"])
        .arg("--data-dir")
        .arg(dir.path().join("w"))
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker");

    let with = flotilla_client::Client::new(vec![address.clone()], Some("s3cret")).expect("client");
    let deadline = std::time::Instant::now() + LONG;
    loop {
        if with.status(false).await.is_ok_and(|s| s.workers.iter().any(|w| w.state == WorkerState::Ready)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the worker with the token never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = raw_http(&address, "POST", "/v1/jobs", &[], br#"{"command": ["true"]}"#);
    assert_eq!(status, 401, "{body}");
    let (status, _) = raw_http(&address, "GET", "/v1/status", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(status, 401);
    let (code, _, err) = cli(&address, &["submit", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("token"), "{err}");
    assert!(with.jobs(false).await.expect("jobs").is_empty(), "refused requests changed nothing");
    // The dashboard's page and code need no token (they hold no cluster data); its data does.
    let (status, body) = raw_http(&address, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(body.contains("/ui/app.js"), "{body}");
    assert_eq!(raw_http(&address, "GET", "/ui/app.js", &[], b"").0, 200);
    assert_eq!(raw_http(&address, "GET", "/ui/snapshot", &[], b"").0, 401);
    assert_eq!(raw_http(&address, "GET", "/ui/job/1", &[], b"").0, 401);
    let (status, body) = raw_http(&address, "GET", "/ui/snapshot", &[("Authorization", "Bearer s3cret")], b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"masters\""), "{body}");

    let id =
        with.submit(&SubmitRequest { command: vec!["true".into()], ..Default::default() }).await.expect("submit").id;
    let deadline = std::time::Instant::now() + LONG;
    while with.job(id, false).await.expect("job").state != JobState::Succeeded {
        assert!(std::time::Instant::now() < deadline, "job with token did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = worker.kill();
    let _ = master.kill();
    let _ = worker.wait();
    let _ = master.wait();

    // Plain text beyond loopback, or without saying so: refused before listening.
    let refused = |extra: &[&str]| {
        let out = Command::new(EXE)
            .args(["master", "--id", "1", "--listen", "0.0.0.0:0", "--peers", "1=10.0.0.1:7001"])
            .arg("--data-dir")
            .arg(dir.path().join("m2"))
            .args(extra)
            .env_remove("FLOTILLA_TOKEN")
            .env_remove("FLOTILLA_CERTS")
            .output()
            .expect("run master");
        assert_ne!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&[]);
    assert!(err.contains("no certificates") && err.contains("flotilla certs init"), "{err}");
    let err = refused(&["--insecure-plaintext"]);
    assert!(err.contains("refusing to serve plain text") && err.contains("loopback"), "{err}");
}

/// `flotilla events` exports the journal as NDJSON with causal ids, filtered by time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_export_as_ndjson_within_a_time_window() {
    let t = cluster(1, &[("a", 1)], &[]).await;
    let masters = t.cluster.master_list();
    let client = t.client();
    let id = client.submit(&squares_job(3, "0")).await.expect("submit").id;
    wait_job(&t, &client, id, LONG).await;

    let (code, out, err) = cli(&masters, &["events", "--json", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let submitted = events.iter().find(|e| e["kind"] == "job_submitted").expect("job_submitted event");
    assert_eq!(submitted["job"], serde_json::json!(id), "the event names its job");
    assert!(events.iter().any(|e| e["kind"] == "leader_elected" && e["term"].is_u64() && e["node"].is_u64()));
    assert!(events.iter().all(|e| e["seq"].is_u64() && e["at_ms"].is_u64() && e["time"].is_string()));

    let (code, out, _) = cli(&masters, &["events", "--json", "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!((code, out.as_str()), (0, ""), "nothing happened before 2000");

    let (code, _, err) = cli(&masters, &["events", "--since", "yesterday"]);
    assert_ne!(code, 0);
    assert!(err.contains("neither a duration"), "{err}");

    // A long poll on a job returns when the job ends, not at its deadline.
    let slow = SubmitRequest { command: vec!["sleep".into(), "0.5".into()], ..Default::default() };
    let slow = client.submit(&slow).await.expect("submit").id;
    let started = std::time::Instant::now();
    let (code, body) = raw_http(&t.cluster.address(1), "GET", &format!("/v1/jobs/{slow}?wait_ms=25000"), &[], b"");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"state\":\"succeeded\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(20), "answered when the job ended");

    // The incident report reads the same journal.
    let (code, md, err) = cli(&masters, &["incident", "report", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        md.starts_with("# Flotilla incident report") && md.contains("| Leader elections (failovers) | 0 |"),
        "{md}"
    );
    assert!(md.contains("job 1 submitted"), "the timeline lists the events:\n{md}");
    let file = t.dir.path().join("report.html");
    let path = file.to_str().expect("utf-8 path");
    let (code, _, err) = cli(&masters, &["incident", "report", "--format", "html", "-o", path]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&file).expect("report written");
    assert!(html.starts_with("<!doctype html>") && html.contains("<svg"), "self-contained with a timeline");
    let (code, _, err) = cli(&masters, &["incident", "report", "--format", "pdf"]);
    assert_ne!(code, 0);
    assert!(err.contains("not md, html or json"), "{err}");
}

/// Invariant: the journal's retention is a replicated setting: once changed, every master keeps
/// exactly the same newest events (pruned at the same log entry), sequence numbers and totals
/// keep counting, and settings out of bounds are refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_retention_is_replicated_and_bounded() {
    let t = cluster(3, &[("a", 2)], &[]).await;
    let masters = t.cluster.master_list();
    let client = t.client();

    let (code, out, err) = cli(&masters, &["events", "retention", "--json"]);
    assert_eq!(code, 0, "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).expect("retention JSON");
    assert_eq!(view["max_events"], serde_json::json!(20_000), "the default");
    assert_eq!(view["max_age_ms"], serde_json::Value::Null);

    for (args, why) in [
        (&["events", "retention", "--max-events", "5"][..], "between 100 and 1000000"),
        (&["events", "retention", "--max-age", "10s"][..], "at least 1 minute"),
        (&["events", "retention", "--max-age", "soon"][..], "--max-age"),
    ] {
        let (code, _, err) = cli(&masters, args);
        assert_ne!(code, 0, "{args:?} must be refused");
        assert!(err.contains(why), "{args:?}: {err}");
    }

    let (code, out, err) = cli(&masters, &["events", "retention", "--max-events", "100", "--max-age", "7d"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("100 events") && out.contains("604800 s"), "{out}");

    // 60 jobs: 120 events (submitted + finished) after an election and a worker joining,
    // more than the 100 kept.
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(
            client
                .submit(&SubmitRequest { command: vec!["true".into()], ..Default::default() })
                .await
                .expect("submit")
                .id,
        );
    }
    for id in ids {
        wait_job(&t, &client, id, LONG).await;
    }
    let leader_view = client.retention(false).await.expect("retention");
    assert_eq!(leader_view.kept, 100);
    assert!(leader_view.recorded >= 120 + 2, "every event counted: {}", leader_view.recorded);

    // Every master holds the same 100 events once it has applied everything.
    let last = client.events(0, 10_000, Duration::ZERO, false).await.expect("events");
    assert_eq!(last.events.len(), 100);
    for id in 1..=3 {
        let one = flotilla_client::Client::new(vec![t.cluster.address(id)], None).expect("client");
        let deadline = std::time::Instant::now() + LONG;
        while !one.retention(true).await.is_ok_and(|r| r.recorded >= last.last_seq) {
            assert!(std::time::Instant::now() < deadline, "master {id} never applied every event");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let theirs = one.events(0, 10_000, Duration::ZERO, true).await.expect("stale events");
        let seqs: Vec<u64> = theirs.events.iter().filter(|e| e.seq <= last.last_seq).map(|e| e.seq).collect();
        let want: Vec<u64> = last.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, want, "master {id} keeps the same events");
    }
}

/// `--config FILE`: the file's keys are flags; the command line and FLOTILLA_* variables
/// override them; an unknown key is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_and_workers_read_config_files_that_flags_override() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = flotilla::local::free_port().expect("port");
    let address = format!("127.0.0.1:{port}");
    let file = dir.path().join("master.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\nlisten = \"{address}\"\ndata_dir = \"{}\"\npeers = {{ 1 = \"{address}\" }}\n\
             worker_timeout = \"2s\"\nlabels = {{ zone = \"a\", region = \"eu\" }}\ninsecure_plaintext = true\n",
            dir.path().join("m1").display()
        ),
    )
    .expect("write config");
    let mut master = Command::new(EXE)
        .args(["master", "--config"])
        .arg(&file)
        .args(["--labels", "zone=b"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start master");
    let client = flotilla_client::Client::new(vec![address.clone()], None).expect("client");
    let deadline = std::time::Instant::now() + LONG;
    let info = loop {
        if let Ok(info) = client.node(&address).await {
            break info;
        }
        assert!(std::time::Instant::now() < deadline, "the master from a config file never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.id, 1);
    assert_eq!(info.labels.get("zone").map(String::as_str), Some("b"), "the command line overrides the file");
    assert_eq!(info.labels.get("region"), None, "a flag replaces the file's value whole");

    let worker_file = dir.path().join("worker.toml");
    std::fs::write(&worker_file, "cpus = 2\ncpuz = 3\n").expect("write");
    let out = Command::new(EXE).args(["worker", "--config"]).arg(&worker_file).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("unknown key 'cpuz'") && err.contains("cpus"), "{err}");
    let out = Command::new(EXE).args(["master", "--config", "/nonexistent.toml"]).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let _ = master.kill();
    let _ = master.wait();
}
