//! Resources beyond cpus, soft affinity and spreading, tested on real processes.

mod common;

use std::collections::BTreeMap;

use common::*;
use flotilla_proto::api::{SubmitRequest, TaskResultView};

/// A cluster of one master and the given workers, each started with its own flags.
async fn cluster_of(workers: &[(&str, u32, &str, &[&str])]) -> TestCluster {
    let mut t = cluster(1, &[], &[]).await;
    for (name, cpus, labels, extra) in workers {
        t.cluster.start_worker_with(name, *cpus, labels, extra).expect("start worker");
    }
    if let Err(e) = t.cluster.wait_workers(workers.len(), LONG).await {
        t.fail(&e.to_string());
    }
    t
}

async fn finished_rows(t: &TestCluster, req: &SubmitRequest, n: u64) -> Vec<TaskResultView> {
    let client = t.client();
    let id = client.submit(req).await.expect("submit").id;
    let detail = wait_job(t, &client, id, LONG).await;
    if detail.tasks.succeeded != n {
        t.fail(&format!("job {id} did not succeed: {detail:?}"));
    }
    client.results(id, 0, None, false).await.expect("results")
}

/// One task's run as it reported it: the units it was given and its start and end (ns).
struct Span {
    worker: String,
    units: String,
    start: u128,
    end: u128,
}

fn spans(rows: &[TaskResultView]) -> Vec<Span> {
    rows.iter()
        .map(|r| {
            let f: Vec<&str> = r.stdout.split_whitespace().collect();
            assert_eq!(f.len(), 4, "task {} printed {:?}", r.index, r.stdout);
            assert_eq!(f[0], f[1], "CUDA_VISIBLE_DEVICES differs from FLOTILLA_RESOURCE_GPU");
            Span {
                worker: r.worker.clone().unwrap_or_default(),
                units: f[0].to_string(),
                start: f[2].parse().expect("start"),
                end: f[3].parse().expect("end"),
            }
        })
        .collect()
}

/// Most spans running at one instant.
fn peak(spans: &[&Span]) -> usize {
    spans.iter().map(|s| spans.iter().filter(|o| o.start <= s.start && s.start < o.end).count()).max().unwrap_or(0)
}

/// Invariants: a gpu task runs only on the worker offering gpus, holds one unit that it
/// learns from FLOTILLA_RESOURCE_GPU and CUDA_VISIBLE_DEVICES, never shares a unit with a task
/// running at the same time, and no more run at once than there are units (although the
/// worker has cpus and queue room for many more); each task is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_tasks_hold_distinct_units_and_never_over_commit() {
    let t = cluster_of(&[("gpus", 4, "", &["--resources", "gpu=2"]), ("plain", 4, "", &[])]).await;
    let req = SubmitRequest {
        command: vec![
            "sh".into(),
            "-c".into(),
            "s=$(date +%s%N); sleep 0.3; echo $FLOTILLA_RESOURCE_GPU $CUDA_VISIBLE_DEVICES $s $(date +%s%N)".into(),
        ],
        array: Some("1-8".into()),
        resources: [("gpu".to_string(), 1)].into(),
        ..Default::default()
    };
    let rows = finished_rows(&t, &req, 8).await;
    let spans = spans(&rows);
    assert!(spans.iter().all(|s| s.worker == "gpus"), "a gpu task ran on a worker without gpus");
    assert!(spans.iter().all(|s| s.units == "0" || s.units == "1"), "units outside 0..2");
    let all: Vec<&Span> = spans.iter().collect();
    assert!(peak(&all) <= 2, "more gpu tasks ran at once than there are gpus");
    for unit in ["0", "1"] {
        let on: Vec<&Span> = spans.iter().filter(|s| s.units == unit).collect();
        assert!(peak(&on) <= 1, "gpu {unit} was given to two running tasks");
    }
}

/// Invariants: tasks asking for memory never hold more than the worker offers at once; a job
/// asking for what no worker offers is explained by `job show` and does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_schedulable_and_impossible_requests_are_explained() {
    let t = cluster_of(&[("a", 4, "", &["--memory", "2G", "--resources", "gpu=1"])]).await;
    let client = t.client();
    let never = SubmitRequest {
        command: vec!["true".into()],
        resources: [("gpu".to_string(), 4)].into(),
        ..Default::default()
    };
    let never = client.submit(&never).await.expect("submit").id;
    let req = SubmitRequest {
        command: vec!["sh".into(), "-c".into(), "s=$(date +%s%N); sleep 0.3; echo x x $s $(date +%s%N)".into()],
        array: Some("1-6".into()),
        memory: Some("1G".into()),
        ..Default::default()
    };
    let rows = finished_rows(&t, &req, 6).await;
    let spans = spans(&rows);
    let all: Vec<&Span> = spans.iter().collect();
    assert!(peak(&all) <= 2, "more 1G tasks ran at once than fit in 2G");
    let detail = client.job(never, false).await.expect("job");
    let why = detail.unschedulable.clone().unwrap_or_default();
    assert!(why.contains("gpu=4") && why.contains("gpu=1"), "job show does not explain: {why:?}");
    assert_eq!(detail.tasks.succeeded, 0);
    // The CLI shows the same explanation.
    let (code, out, err) = cli(&t.cluster.master_list(), &["job", "show", &never.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cannot run: each task needs gpu=4"), "{out}");
}

/// Invariants: `--spread zone` puts the same number of tasks in each zone although one zone
/// has three times the cpus; `--prefer` fills the preferred worker first and `--avoid` leaves
/// the avoided one for last, while still running at once on a free cpu.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_prefer_and_avoid_shape_placement() {
    let t = cluster_of(&[
        ("a1", 3, "zone=a", &[]),
        ("a2", 3, "zone=a", &[]),
        ("a3", 3, "zone=a", &[]),
        ("b1", 3, "zone=b", &[]),
    ])
    .await;
    let sleeper = |n: u64| SubmitRequest {
        command: vec!["sh".into(), "-c".into(), "sleep 0.5; echo x x 0 0".into()],
        array: Some(format!("1-{n}")),
        ..Default::default()
    };
    let rows = finished_rows(&t, &SubmitRequest { spread: Some("zone".into()), ..sleeper(6) }, 6).await;
    let mut zones: BTreeMap<char, usize> = BTreeMap::new();
    for r in &rows {
        let w = r.worker.clone().unwrap_or_default();
        *zones.entry(w.chars().next().unwrap_or('?')).or_default() += 1;
    }
    assert_eq!(zones, [('a', 3), ('b', 3)].into(), "not spread evenly over zones");

    let prefer = SubmitRequest { prefer: [("zone".to_string(), "b".to_string())].into(), ..sleeper(3) };
    let rows = finished_rows(&t, &prefer, 3).await;
    assert!(rows.iter().all(|r| r.worker.as_deref() == Some("b1")), "the preferred worker was not used first");

    let avoid = SubmitRequest { avoid: [("zone".to_string(), "a".to_string())].into(), ..sleeper(5) };
    let rows = finished_rows(&t, &avoid, 5).await;
    let on_b = rows.iter().filter(|r| r.worker.as_deref() == Some("b1")).count();
    assert_eq!(on_b, 3, "the avoided zone was used while b1 had free cpus");
}

/// Invariant: when one zone holds a majority of the voting masters, `/v1/status` and
/// `flotilla status` say so, naming the zone and the masters; each master reports its labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_in_one_zone_are_warned_about() {
    let t = cluster(3, &[], &["--labels", "zone=a,region=eu"]).await;
    let client = t.client();
    wait_until(&t, "every master reports its labels", LONG, || async {
        client
            .status(false)
            .await
            .is_ok_and(|s| s.masters.iter().all(|m| m.labels.get("zone").map(String::as_str) == Some("a")))
    })
    .await;
    let status = client.status(false).await.expect("status");
    let warned = status.warnings.iter().any(|w| {
        matches!(w, flotilla_proto::api::StatusWarning::ZoneMajority { zone, masters, voters: 3 }
            if zone == "a" && masters == &vec![1, 2, 3])
    });
    assert!(warned, "no zone warning: {:?}", status.warnings);
    let (code, out, err) = cli(&t.cluster.master_list(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("warning: zone a holds 3 of the 3 voting masters (1, 2, 3)"), "{out}");
    assert!(out.contains("region=eu,zone=a"), "{out}");
}

/// A job file carries the resource and placement fields: `job show --json` shows them back,
/// and the job runs where they say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_files_carry_resources_and_affinity() {
    let t = cluster_of(&[("a1", 2, "zone=a", &["--resources", "license=1"]), ("b1", 2, "zone=b", &[])]).await;
    let file = t.dir.path().join("job.toml");
    std::fs::write(
        &file,
        r#"
command = ["sh", "-c", "echo $FLOTILLA_RESOURCE_LICENSE"]
array = "1-2"
memory = "64M"
resources = { license = 1 }
prefer = { zone = "a" }
avoid = { spot = "yes" }
spread = "zone"
"#,
    )
    .expect("write job file");
    let masters = t.cluster.master_list();
    let (code, out, err) = cli(&masters, &["submit", "--wait", "--file", &file.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, out, err) = cli(&masters, &["job", "show", &id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(j["resources"]["license"], 1, "{out}");
    assert_eq!(j["memory"], 64 << 20, "{out}");
    assert_eq!(j["prefer"]["zone"], "a");
    assert_eq!(j["avoid"]["spot"], "yes");
    assert_eq!(j["spread"], "zone");
    // Only a1 offers the license: both tasks ran there, one after the other, on unit 0.
    let rows = t.client().results(id.parse().expect("id"), 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 2, |_| "0".to_string());
    assert!(rows.iter().all(|r| r.worker.as_deref() == Some("a1")));
}
