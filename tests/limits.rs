//! Per-task limits with real processes: the worker sets what the job asked for on each task's
//! process, and the kernel holds the task to it.

mod common;

use common::*;
use flotilla_proto::api::{JobState, LimitsRequest, SubmitRequest};

fn shell(script: &str, limits: LimitsRequest, selector: &[(&str, &str)]) -> SubmitRequest {
    SubmitRequest {
        // bash: dash's redirections name single-digit descriptors only.
        command: vec!["bash".into(), "-c".into(), script.into()],
        limits: Some(limits),
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// Runs `request` to its end; returns its state and its single task's stdout and stderr.
async fn run(t: &TestCluster, request: &SubmitRequest) -> (JobState, String, String) {
    let client = t.client();
    let id = client.submit(request).await.expect("submit").id;
    let state = wait_job(t, &client, id, LONG).await.state;
    let rows = client.results(id, 0, None, false).await.expect("results");
    let row = rows.first().expect("one task");
    (state, row.stdout.clone(), row.stderr.clone())
}

/// Invariants: a job's open-files and memory limits are set on its task's process (`ulimit`
/// reads them back) and enforced (opening one file more fails with "Too many open files", a
/// buffer beyond the memory limit cannot be allocated); a job without limits keeps the
/// worker's own; on a `--run-as` worker the processes limit stops the task's forks beyond
/// it; `job show --json` reports the limits; bad limits are refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_under_the_limits_their_job_asks_for() {
    let mut t = cluster(1, &[("w", 1)], &[]).await;

    let files = LimitsRequest { open_files: Some(32), ..Default::default() };
    let (state, out, err) = run(&t, &shell("ulimit -n", files.clone(), &[])).await;
    assert_eq!((state, out.trim()), (JobState::Succeeded, "32"), "{err}");
    // Descriptors 0-2 are open, so 29 more fit and the 30th does not.
    let script = "i=3; while [ $i -lt 40 ]; do eval \"exec $i</dev/null\" || { echo stopped at $i; exit 3; }; \
                  i=$((i+1)); done";
    let (state, out, err) = run(&t, &shell(script, files, &[])).await;
    assert_eq!(state, JobState::Failed, "{out}{err}");
    assert!(out.contains("stopped at 32") && err.contains("Too many open files"), "{out}{err}");

    let memory = LimitsRequest { memory: Some("64M".into()), ..Default::default() };
    let (state, out, err) = run(&t, &shell("ulimit -v", memory.clone(), &[])).await;
    assert_eq!((state, out.trim()), (JobState::Succeeded, "65536"), "{err}");
    let (state, out, err) = run(&t, &shell("dd if=/dev/zero of=/dev/null bs=128M count=1", memory, &[])).await;
    assert_eq!(state, JobState::Failed, "{out}{err}");
    assert!(err.contains("memory exhausted") || err.contains("Cannot allocate"), "{err}");
    let (state, out, _) =
        run(&t, &shell("dd if=/dev/zero of=/dev/null bs=128M count=1", LimitsRequest::default(), &[])).await;
    assert_eq!(state, JobState::Succeeded, "without limits the same buffer fits: {out}");
    let (_, out, _) = run(&t, &shell("ulimit -n", LimitsRequest::default(), &[])).await;
    let own = std::process::Command::new("sh").args(["-c", "ulimit -n"]).output().expect("sh");
    assert_eq!(out.trim(), String::from_utf8_lossy(&own.stdout).trim(), "no limits: the worker's own");

    // Processes count per user, so they are checked on a worker running tasks as nobody.
    t.cluster.start_worker_with("sandboxed", 1, "sandbox=yes", &["--run-as", "nobody"]).expect("start a worker");
    if let Err(e) = t.cluster.wait_workers(2, LONG).await {
        t.fail(&e.to_string());
    }
    let processes = LimitsRequest { processes: Some(4), ..Default::default() };
    let (state, out, err) = run(&t, &shell("ulimit -u", processes.clone(), &[("sandbox", "yes")])).await;
    assert_eq!((state, out.trim()), (JobState::Succeeded, "4"), "{err}");
    let script = "n=0; for i in 1 2 3 4 5 6 7 8; do sleep 1 & n=$((n+1)); done; wait";
    let (state, out, err) = run(&t, &shell(script, processes, &[("sandbox", "yes")])).await;
    assert!(
        err.to_lowercase().contains("fork") || err.contains("Resource temporarily unavailable"),
        "{state:?} {out}{err}"
    );

    let client = t.client();
    let id = client
        .submit(&shell(
            "true",
            LimitsRequest { memory: Some("1G".into()), open_files: Some(100), processes: None },
            &[],
        ))
        .await
        .expect("submit")
        .id;
    wait_job(&t, &client, id, LONG).await;
    let masters = t.cluster.master_list();
    let (code, out, err) = cli(&masters, &["job", "show", &id.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(shown["limits"], serde_json::json!({"memory": 1u64 << 30, "open_files": 100, "processes": null}));
    let (_, out, _) = cli(&masters, &["job", "show", &id.to_string()]);
    assert!(out.contains("limits:    memory 1G, 100 open files per task"), "{out}");

    let (code, _, err) = cli(&masters, &["submit", "--limit-files", "3", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("at least 16"), "{err}");
    let (code, _, err) = cli(&masters, &["submit", "--limit-memory", "lots", "--", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid memory limit"), "{err}");
    let (code, out, err) = cli(&masters, &["submit", "--limit-files", "20", "--wait", "--", "sh", "-c", "ulimit -n"]);
    assert_eq!(code, 0, "{out}{err}");
}
