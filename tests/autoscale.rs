//! Autoscaling with real processes: the `local` provider starts `flotilla worker` processes
//! for a burst and drains and stops them once idle; the `command` provider runs the user's
//! scripts; a provider that fails is journalled, backs off and says why.

mod common;

use std::time::Duration;

use common::*;
use flotilla_proto::api::{EventView, PoolView, Pools};

fn pools(env: &[(String, String)]) -> Vec<PoolView> {
    let (code, stdout, _) = cli_with(env, &["autoscale", "show", "--json"]);
    if code != 0 {
        return Vec::new();
    }
    serde_json::from_str::<Pools>(&stdout).map(|p| p.pools).unwrap_or_default()
}

fn pool(env: &[(String, String)], name: &str) -> Option<PoolView> {
    pools(env).into_iter().find(|p| p.pool == name)
}

async fn events(client: &flotilla_client::Client, kind: &str) -> Vec<EventView> {
    let all = client.events(0, 100_000, Duration::ZERO, false).await.map(|e| e.events).unwrap_or_default();
    all.into_iter().filter(|e| e.kind.as_str() == kind).collect()
}

/// Stops what the pool started and left running (its handles are process ids), at the end of
/// a test: workers whose master dies drain and exit by themselves, but only after their drain
/// deadline when no leader is left.
fn stop_pool_workers(env: &[(String, String)], name: &str) {
    for w in pool(env, name).map(|p| p.workers).unwrap_or_default() {
        if let Some(pid) = w.handle.and_then(|h| h.parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == w.name.as_bytes()) {
                // SAFETY: kill(2) on a worker process this test's cluster started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Invariants, with no worker at first and a `local` pool (min 0, max 2, idle 3 s): a burst
/// of tasks brings workers up (named auto-1, auto-2, journalled `scaled_up` with the reason)
/// and the job finishes, each task recorded once; once idle the pool shrinks back to 0 by
/// draining (`scaled_down`, then `launch_ended` once drained) and no task was stopped or
/// re-queued (a scale-in never takes a task away); the worker processes exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_follows_a_burst_and_shrinks_when_idle() {
    let t = secure_cluster(3, &[]).await;
    let client = t.client();
    let env = t.cluster.client_env();

    let (code, _, stderr) = cli_with(&env, &["autoscale", "set", "--provider", "local", "--min", "3", "--max", "2"]);
    assert!(code != 0 && stderr.contains("--min 3 is above --max 2"), "{stderr}");
    let (code, _, stderr) =
        cli_with(&env, &["autoscale", "set", "--provider", "local", "--max", "2", "--add-command", "true"]);
    assert!(code != 0 && stderr.contains("option of the command provider"), "{stderr}");
    let (code, stdout, stderr) = cli_with(
        &env,
        &["autoscale", "set", "--provider", "local", "--max", "2", "--idle", "3s", "--worker-cpus", "2", "--json"],
    );
    assert_eq!(code, 0, "{stderr}");
    let set: PoolView = serde_json::from_str(&stdout).expect("autoscale set --json");
    assert_eq!((set.pool.as_str(), set.min, set.max, set.idle.as_str()), ("auto", 0, 2, "3s"), "{stdout}");

    let job = client.submit(&squares_job(24, "0.3")).await.expect("submit").id;
    let done = wait_job(&t, &client, job, LONG).await;
    assert_eq!(done.state, flotilla_proto::api::JobState::Succeeded, "{done:?}");
    let rows = client.results(job, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 24, |i| (i * i).to_string());
    let ups = events(&client, "scaled_up").await;
    assert!(!ups.is_empty(), "no scale-up journalled");
    assert!(ups[0].reason.as_deref().unwrap_or("").contains("tasks waiting"), "{:?}", ups[0]);
    let workers: Vec<String> = ups.iter().flat_map(|e| e.workers.clone().unwrap_or_default()).collect();
    assert!(workers.len() <= 2 && workers.contains(&"auto-1".to_string()), "{workers:?}");

    wait_until(&t, "the pool back to 0 workers", LONG, || async {
        pool(&env, "auto").is_some_and(|p| p.workers.is_empty() && p.retired as usize == workers.len())
    })
    .await;
    let downs = events(&client, "scaled_down").await;
    assert!(!downs.is_empty() && downs[0].reason.as_deref().unwrap_or("").contains("idle"), "{downs:?}");
    let ended = events(&client, "launch_ended").await;
    assert_eq!(ended.len(), workers.len(), "{ended:?}");
    assert!(ended.iter().all(|e| e.reason.as_deref() == Some("retired")), "{ended:?}");
    assert!(events(&client, "task_rescheduled").await.is_empty(), "a scale-in took a task away");
    // The drained workers exited by themselves.
    wait_until(&t, "the drained worker processes exit", LONG, || async {
        let (_, stdout, _) = cli_with(&env, &["worker", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        list.as_array()
            .is_some_and(|ws| ws.iter().all(|w| matches!(w["state"].as_str(), Some("lost") | Some("drained"))))
    })
    .await;
    let (code, stdout, _) = cli_with(&env, &["autoscale", "show"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("pool auto: local, 0 to 2 workers") && stdout.contains("down by"), "{stdout}");
    stop_pool_workers(&env, "auto");
}

/// Invariants, for the `command` provider: the add command is told the names to start and
/// the arguments a worker needs, and the workers it starts join the pool (min 1, handles as
/// printed); the remove command is told each name it must stop. An add command that fails
/// fails the launch with its own words, is journalled (`launch_failed`) and backs the pool
/// off instead of looping; a set with a working command resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_provider_runs_the_users_scripts() {
    let t = secure_cluster(1, &[]).await;
    let client = t.client();
    let env = t.cluster.client_env();
    let dir = t.dir.path().join("scripted");
    std::fs::create_dir_all(&dir).expect("dir");
    let add = format!(
        "for n in $FLOTILLA_WORKER_NAMES; do \
           eval \"$FLOTILLA_EXE\" worker --name $n --data-dir {d}/$n $FLOTILLA_WORKER_ARGS >{d}/$n.log 2>&1 & \
           echo \"$n $!\"; done",
        d = dir.display()
    );
    let remove = format!("echo \"$FLOTILLA_WORKER_NAME $FLOTILLA_WORKER_HANDLE\" >> {}/removed", dir.display());

    let (code, _, stderr) = cli_with(
        &env,
        &[
            "autoscale",
            "set",
            "--pool",
            "scripted",
            "--provider",
            "command",
            "--min",
            "1",
            "--max",
            "1",
            "--add-command",
            "echo the cloud is full >&2; exit 4",
            "--remove-command",
            "true",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    wait_until(&t, "a failed launch journalled with the command's words", LONG, || async {
        events(&client, "launch_failed")
            .await
            .iter()
            .any(|e| e.reason.as_deref().unwrap_or("").contains("the cloud is full"))
    })
    .await;
    let failing = pool(&env, "scripted").expect("the pool");
    assert!(failing.failures >= 1 && failing.retry_at.is_some() && !failing.paused, "{failing:?}");
    assert!(failing.last_failure.as_deref().unwrap_or("").contains("exit status: 4"), "{failing:?}");

    // The working policy from a file (the API's field names), a flag overriding one field.
    let file = dir.join("policy.toml");
    let literal = |s: &str| format!("'''{s}'''");
    let policy = format!(
        "pool = \"scripted\"\nprovider = \"command\"\nmin = 1\nmax = 1\nidle = \"1h\"\nadd_command = {}\nremove_command = {}\n",
        literal(&add),
        literal(&remove)
    );
    std::fs::write(&file, policy).expect("policy file");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "provider = \"command\"\nmax = 1\nmaximum = 2\n").expect("bad file");
    let (code, _, stderr) = cli_with(&env, &["autoscale", "set", "--file", bad.to_str().expect("path")]);
    assert!(code != 0 && stderr.contains("unknown field `maximum`"), "{stderr}");
    let (code, stdout, stderr) =
        cli_with(&env, &["autoscale", "set", "--file", file.to_str().expect("path"), "--idle", "2s", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"idle\": \"2s\""), "the flag overrides the file: {stdout}");
    wait_until(&t, "the scripted worker joins the pool, with the handle its command printed", LONG, || async {
        pool(&env, "scripted").is_some_and(|p| p.joined == 1 && p.failures == 0 && p.workers[0].handle.is_some())
    })
    .await;
    let p = pool(&env, "scripted").expect("the pool");
    let w = &p.workers[0];
    assert!(w.name.starts_with("scripted-") && w.handle.as_deref().is_some_and(|h| h.parse::<u32>().is_ok()), "{p:?}");
    let job = client.submit(&squares_job(4, "0")).await.expect("submit").id;
    let done = wait_job(&t, &client, job, LONG).await;
    assert_eq!(done.state, flotilla_proto::api::JobState::Succeeded);

    // With min 0 the idle worker drains, exits by itself, and the remove command is told.
    let (code, _, stderr) = cli_with(
        &env,
        &[
            "autoscale",
            "set",
            "--pool",
            "scripted",
            "--provider",
            "command",
            "--min",
            "0",
            "--max",
            "1",
            "--idle",
            "2s",
            "--add-command",
            &add,
            "--remove-command",
            &remove,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let removed = dir.join("removed");
    let expected = format!("{} {}", w.name, w.handle.as_deref().unwrap_or(""));
    wait_until(&t, "the remove command told of the retired worker", LONG, || async {
        std::fs::read_to_string(&removed).is_ok_and(|r| r.lines().any(|l| l == expected))
    })
    .await;
    wait_until(&t, "the pool lets go of it", LONG, || async {
        pool(&env, "scripted").is_some_and(|p| p.workers.is_empty() && p.retired == 1)
    })
    .await;

    let (code, _, stderr) = cli_with(
        &env,
        &[
            "autoscale",
            "set",
            "--pool",
            "scripted",
            "--provider",
            "command",
            "--max",
            "0",
            "--add-command",
            "x",
            "--remove-command",
            "y",
        ],
    );
    assert!(code != 0 && stderr.contains("at least 1"), "{stderr}");
    let (code, stdout, stderr) = cli_with(&env, &["autoscale", "remove", "scripted"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("workers stay"), "{stdout}");
    assert!(pool(&env, "scripted").is_none());
    let (code, _, stderr) = cli_with(&env, &["autoscale", "resume", "scripted"]);
    assert!(code != 0 && stderr.contains("no autoscaling pool named 'scripted'"), "{stderr}");
}

/// Invariants, against a real single-node Slurm (`slurm-wlm` and `munge`, started by the test
/// in its own directory): a `slurm` pool with min 1 submits one job per worker (`sbatch`; the
/// Slurm job is named after the worker and its id is the launch's handle); the worker joins
/// and runs tasks; Slurm signals it ahead of the job's time limit, so it drains and exits
/// before the limit (the Slurm job ends, not killed, and no task is re-queued), and the pool
/// submits a new one to keep its minimum; with min 0 an idle worker drains, its job ends and
/// the queue empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slurm_pool_submits_worker_jobs_that_drain_before_their_time_limit() {
    if let Some(why) = slurm::unavailable() {
        panic!("this test needs a real Slurm: {why} (scripts/test installs it)");
    }
    let slurm_dir = tempfile::Builder::new().prefix("flotilla-slurm-").tempdir().expect("temp dir");
    let slurm = slurm::Slurm::start(slurm_dir.path());
    let conf = slurm.conf.display().to_string();
    let t = secure_cluster_with(1, &[], |c| c.master_env.push(("SLURM_CONF".into(), conf.clone()))).await;
    let client = t.client();
    let env = t.cluster.client_env();

    let (code, _, stderr) = cli_with(
        &env,
        &[
            "autoscale",
            "set",
            "--provider",
            "slurm",
            "--min",
            "1",
            "--max",
            "1",
            "--worker-cpus",
            "2",
            "--time-limit",
            "1m",
            "--partition",
            "debug",
            "--idle",
            "1h",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    wait_until(&t, "the first Slurm worker joins", LONG, || async {
        pool(&env, "auto").is_some_and(|p| p.joined == 1 && p.workers[0].handle.is_some())
    })
    .await;
    let first = pool(&env, "auto").expect("pool").workers.remove(0);
    let job_id = first.handle.clone().expect("a Slurm job id");
    assert!(slurm.queue().iter().any(|l| l == &format!("{job_id} {} RUNNING", first.name)), "{:?}", slurm.queue());
    let job = client.submit(&squares_job(6, "0.2")).await.expect("submit").id;
    let done = wait_job(&t, &client, job, LONG).await;
    assert_eq!(done.state, flotilla_proto::api::JobState::Succeeded);
    assert_each_task_recorded_once(&client.results(job, 0, None, false).await.expect("results"), 6, |i| {
        (i * i).to_string()
    });

    // Ahead of the 1-minute limit the worker drains itself and its job ends; a new one follows.
    wait_until(&t, "the first worker drains before its time limit and a second takes over", LONG, || async {
        pool(&env, "auto").is_some_and(|p| p.joined == 1 && p.workers[0].name != first.name && p.retired >= 1)
    })
    .await;
    let log = std::fs::read_to_string(
        t.cluster.dir.join("master-1/autoscale/logs").join(format!("{}-{job_id}.log", first.name)),
    )
    .unwrap_or_default();
    assert!(log.contains("drained: every task finished or moved; stopping"), "the worker did not drain: {log}");
    // Slurm's step prints "CANCELLED" when it delivers the early signal; what matters is how
    // the job ended: by itself, exit status 0, not at its limit.
    assert!(!log.contains("DUE TO TIME LIMIT"), "Slurm killed the worker at its limit: {log}");
    let ctl = std::fs::read_to_string(slurm.dir.join("log/slurmctld.log")).unwrap_or_default();
    assert!(ctl.contains(&format!("JobId={job_id} WEXITSTATUS 0")), "the worker's job did not end by itself:\n{ctl}");
    assert!(events(&client, "task_rescheduled").await.is_empty(), "a task was taken away");

    // With min 0 the idle worker goes, and Slurm's queue empties.
    let (code, _, stderr) = cli_with(
        &env,
        &[
            "autoscale",
            "set",
            "--provider",
            "slurm",
            "--max",
            "1",
            "--worker-cpus",
            "2",
            "--time-limit",
            "1m",
            "--partition",
            "debug",
            "--idle",
            "2s",
            "--cooldown-down",
            "0s",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    wait_until(&t, "the pool empty and no Slurm job left", LONG, || async {
        pool(&env, "auto").is_some_and(|p| p.workers.is_empty()) && slurm.queue().is_empty()
    })
    .await;
    drop(slurm);
}

/// Invariants, for the `kubernetes` provider where no API server can run (this machine): a
/// StatefulSet name that is not a Kubernetes name is refused; a pool min 1 names its worker
/// after the StatefulSet's first pod, and, outside a pod and without `--api`, the launch fails
/// saying so (journalled, backing off), rather than looping or hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_provider_outside_a_cluster_fails_with_the_reason() {
    let t = secure_cluster_with(1, &[], |c| {
        c.master_env.push(("KUBERNETES_SERVICE_HOST".into(), String::new()));
    })
    .await;
    let client = t.client();
    let env = t.cluster.client_env();
    let (code, _, stderr) =
        cli_with(&env, &["autoscale", "set", "--provider", "kubernetes", "--statefulset", "Bad_Name", "--max", "2"]);
    assert!(code != 0 && stderr.contains("Kubernetes name"), "{stderr}");
    let (code, _, stderr) = cli_with(
        &env,
        &[
            "autoscale",
            "set",
            "--provider",
            "kubernetes",
            "--statefulset",
            "flotilla-worker",
            "--min",
            "1",
            "--max",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    wait_until(&t, "the launch fails with the reason", LONG, || async {
        events(&client, "launch_failed").await.iter().any(|e| {
            e.worker.as_deref() == Some("flotilla-worker-0")
                && e.reason.as_deref().unwrap_or("").contains("service account token")
        })
    })
    .await;
    let p = pool(&env, "auto").expect("the pool");
    assert!(p.failures >= 1 && p.retry_at.is_some(), "{p:?}");
}

/// Invariants, for a `local` pool over 3 masters whose leader is SIGKILLed during a burst:
/// no worker name is asked for twice across leaders (names are chosen in the log, and a new
/// leader knows what is on its way); the dead leader's workers drain and leave (they are told
/// when the master that started them dies) while the new leader starts its own; the job
/// finishes with each task recorded once, and the pool shrinks to 0 afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_carries_on_across_a_leader_kill() {
    let mut t = secure_cluster(3, &[]).await;
    let client = t.client();
    let env = t.cluster.client_env();
    let (code, _, stderr) = cli_with(
        &env,
        &["autoscale", "set", "--provider", "local", "--max", "2", "--worker-cpus", "2", "--idle", "3s"],
    );
    assert_eq!(code, 0, "{stderr}");
    let job = client.submit(&squares_job(40, "0.5")).await.expect("submit").id;
    wait_until(&t, "a pool worker running tasks", LONG, || async {
        pool(&env, "auto").is_some_and(|p| p.workers.iter().any(|w| w.tasks > 0))
    })
    .await;
    let leader = t.cluster.wait_leader(LONG).await.unwrap_or_else(|| t.fail("no leader"));
    t.cluster.kill_master(leader);
    let done = wait_job(&t, &client, job, LONG).await;
    assert_eq!(done.state, flotilla_proto::api::JobState::Succeeded, "{done:?}");
    let rows = client.results(job, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 40, |i| (i * i).to_string());
    wait_until(&t, "the pool back to 0 workers", LONG, || async {
        pool(&env, "auto").is_some_and(|p| p.workers.is_empty())
    })
    .await;
    let names: Vec<String> =
        events(&client, "scaled_up").await.iter().flat_map(|e| e.workers.clone().unwrap_or_default()).collect();
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "a worker name was asked for twice: {names:?}");
    assert!(names.len() >= 2, "the new leader started workers of its own: {names:?}");
    stop_pool_workers(&env, "auto");
}
