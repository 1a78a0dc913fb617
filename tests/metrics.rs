//! Metrics: every master serves a Prometheus exposition at `/metrics` that `promtool check
//! metrics` accepts, with the families the README lists, and the cluster figures agree with
//! what the cluster did. `promtool` comes from Debian's `prometheus` package, which
//! `scripts/test` installs when missing; run directly without it, the test fails and names
//! the package.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Path of `promtool`; panics, naming the package, if it is missing.
fn promtool() -> String {
    let found = |p: &str| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found("promtool"), "promtool not found: install Debian's `prometheus` package (scripts/test does this)");
    "promtool".to_string()
}

fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_master_serves_metrics_that_pass_promtool() {
    let t = cluster(3, &[("a", 2)], &[]).await;
    let client = t.client();
    let id = client.submit(&squares_job(20, "0")).await.expect("submit").id;
    wait_job(&t, &client, id, LONG).await;
    // An autoscaling pool with nothing to do: its figures are part of the exposition.
    let (code, _, stderr) = cli(
        &t.cluster.master_list(),
        &[
            "autoscale",
            "set",
            "--provider",
            "command",
            "--max",
            "3",
            "--add-command",
            "true",
            "--remove-command",
            "true",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    // Followers apply the last entries a moment after the leader: poll until they agree.
    wait_until(&t, "every master reports the 20 succeeded tasks and the pool", LONG, || async {
        (1..=3).all(|i| {
            let (code, text) = raw_http(&t.cluster.address(i), "GET", "/metrics", &[], b"");
            code == 200
                && sample(&text, "flotilla_tasks{state=\"succeeded\"}") == Some(20.0)
                && sample(&text, "flotilla_autoscale_bounds{pool=\"auto\",bound=\"max\"}") == Some(3.0)
        })
    })
    .await;
    for i in 1..=3 {
        let (code, text) = raw_http(&t.cluster.address(i), "GET", "/metrics", &[], b"");
        assert_eq!(code, 200);
        if let Err(e) = promtool_check(&text) {
            panic!("promtool rejects master {i}'s /metrics: {e}\n{text}");
        }
        for family in [
            "flotilla_raft_term ",
            "flotilla_raft_role{",
            "flotilla_raft_applied_index ",
            "flotilla_raft_log_write_seconds_bucket{",
            "flotilla_raft_proposal_commands_count ",
            "flotilla_jobs{",
            "flotilla_tasks{",
            "flotilla_workers{state=\"ready\"} 1",
            "flotilla_worker_cpus{worker=\"a\"",
            "flotilla_events_total{kind=\"job_submitted\"} 1",
            "flotilla_autoscale_bounds{pool=\"auto\",bound=\"max\"} 3",
            "flotilla_autoscale_workers{pool=\"auto\",stage=\"joined\"} 0",
            "flotilla_autoscale_paused{pool=\"auto\"} 0",
            "flotilla_autoscale_launches_total{pool=\"auto\",outcome=\"launched\"} 0",
        ] {
            assert!(text.lines().any(|l| l.starts_with(family)), "master {i} lacks {family}:\n{text}");
        }
        let role = if i == leader { "leader" } else { "follower" };
        assert!(text.contains(&format!("flotilla_raft_role{{role=\"{role}\"}} 1")), "master {i} is the {role}");
    }
    let (_, text) = raw_http(&t.cluster.address(leader), "GET", "/metrics", &[], b"");
    assert!(sample(&text, "flotilla_assignments_total").is_some_and(|n| n >= 21.0), "20 tasks and a reduce assigned");
    assert!(sample(&text, "flotilla_worker_heartbeats_total").is_some_and(|n| n > 0.0));
    assert!(text.contains("flotilla_raft_replication_lag_entries{follower="), "the leader reports follower lag");
    let committed = sample(&text, "flotilla_raft_commit_index").unwrap_or(0.0);
    let last = sample(&text, "flotilla_raft_last_log_index").unwrap_or(0.0);
    assert!(committed > 0.0 && committed <= last, "commit index {committed} within the log (last {last})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_its_metrics_and_reports_them_to_the_leader() {
    let mut t = cluster(3, &[], &[]).await;
    let port = flotilla::local::free_port().expect("free port");
    let metrics = format!("127.0.0.1:{port}");
    t.cluster.start_worker_with("m", 2, "", &["--metrics", &metrics]).expect("start worker");
    t.cluster.wait_workers(1, LONG).await.expect("worker joins");
    let client = t.client();
    let id = client.submit(&squares_job(10, "0")).await.expect("submit").id;
    wait_job(&t, &client, id, LONG).await;
    let (code, text) = raw_http(&metrics, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    if let Err(e) = promtool_check(&text) {
        panic!("promtool rejects the worker's /metrics: {e}\n{text}");
    }
    // 10 tasks and the reduce.
    assert_eq!(sample(&text, "flotilla_worker_tasks_started_total"), Some(11.0), "{text}");
    assert_eq!(sample(&text, "flotilla_worker_tasks_finished_total{outcome=\"succeeded\"}"), Some(11.0), "{text}");
    assert_eq!(sample(&text, "flotilla_worker_spawn_seconds_count"), Some(11.0), "{text}");
    assert_eq!(sample(&text, "flotilla_worker_connected"), Some(1.0), "{text}");
    // The same figures reach the leader with the next heartbeats.
    let master = t.cluster.address(t.cluster.wait_leader(LONG).await.expect("leader"));
    wait_until(&t, "the leader shows the worker's reported spawns", LONG, || async {
        let (_, text) = raw_http(&master, "GET", "/metrics", &[], b"");
        sample(&text, "flotilla_worker_spawns_total{worker=\"m\"}") == Some(11.0)
            && text.contains("flotilla_worker_running_tasks{worker=\"m\"} 0")
    })
    .await;
    // Heartbeat round trips: measured by the worker (echo), reported to the leader.
    wait_until(&t, "heartbeat round trips on the worker and the leader", LONG, || async {
        let (_, worker_text) = raw_http(&metrics, "GET", "/metrics", &[], b"");
        let (_, leader_text) = raw_http(&master, "GET", "/metrics", &[], b"");
        sample(&worker_text, "flotilla_worker_heartbeat_rtt_seconds_count").is_some_and(|n| n >= 1.0)
            && sample(&leader_text, "flotilla_worker_heartbeat_rtt_seconds_count").is_some_and(|n| n >= 1.0)
    })
    .await;
    let (_, text) = raw_http(&metrics, "GET", "/metrics", &[], b"");
    let rtt = sample(&text, "flotilla_worker_heartbeat_rtt_seconds_sum").unwrap_or(f64::MAX)
        / sample(&text, "flotilla_worker_heartbeat_rtt_seconds_count").unwrap_or(1.0);
    assert!(rtt > 0.0 && rtt < 1.0, "a loopback round trip takes well under a second: {rtt} s");

    // Every metric the Grafana dashboard queries exists.
    let (_, leader_text) = raw_http(&master, "GET", "/metrics", &[], b"");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/flotilla-cluster.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard file")).expect("dashboard JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("flotilla_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                queried.push(name);
            }
        }
    }
    assert!(queried.len() > 10, "the dashboard queries flotilla metrics");
    for name in queried {
        let served = |t: &str| t.contains(&format!("\n{name}"));
        assert!(served(&leader_text) || served(&text), "the dashboard queries {name}, which no /metrics serves");
    }
}
