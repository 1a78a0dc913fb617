//! Workflows with real processes: jobs that wait for jobs, task outputs kept on several
//! workers and handed to the jobs downstream, fetched by `flotilla job fetch`.

mod common;

use common::*;
use flotilla_proto::api::{JobState, SubmitRequest, TaskState};

fn shell(script: &str) -> SubmitRequest {
    SubmitRequest { command: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() }
}

fn after(mut request: SubmitRequest, jobs: &[u64]) -> SubmitRequest {
    request.after = jobs.to_vec();
    request
}

/// Invariants, across a leader SIGKILL and the SIGKILL of a worker that produced outputs:
/// a three-stage pipeline (map → combine → report) runs each stage only after the one before
/// it succeeded; every map task's output is on 1 + R = 3 workers before it counts as done;
/// each downstream task finds every upstream file in `$FLOTILLA_INPUT_DIR/JOB/INDEX/PATH`
/// with its bytes (the sum over them is right); the outputs of the lost worker's tasks can
/// still be fetched, hash-checked, from the copies; a fetch that was interrupted (a file
/// missing, one damaged) resumes and rewrites only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_survives_a_leader_kill_and_the_loss_of_a_producer() {
    let mut t = secure_cluster(3, &[("a", 2), ("b", 2), ("c", 2)]).await;
    let client = t.client();
    let gate = t.dir.path().join("gate");

    // Every worker has run a task and its outputs are on all three (the leader has any copy
    // a worker could not make when it knew no peers yet made later): the faults below then
    // meet a cluster in its steady state.
    wait_until(&t, "every worker replicates to both others", LONG, || async {
        let mut warm = shell("echo warm > \"$FLOTILLA_OUTPUT_DIR/w\"");
        warm.array = Some("1-6".into());
        // Two cpus each: the first three go one to a worker.
        warm.cpus = Some(2);
        let Ok(id) = client.submit(&warm).await.map(|s| s.id) else { return false };
        if wait_job(&t, &client, id, LONG).await.state != JobState::Succeeded {
            return false;
        }
        let Ok(outputs) = client.job_outputs(id).await else { return false };
        let rows = client.results(id, 0, None, false).await.unwrap_or_default();
        let workers: std::collections::BTreeSet<_> = rows.iter().filter_map(|r| r.worker.clone()).collect();
        workers.len() == 3 && outputs.tasks.iter().all(|t| t.holders.len() == 3)
    })
    .await;

    // The combine step also waits for this job, which ends when the test says so: the
    // faults happen while the map's outputs exist and nothing downstream has read them.
    let hold = client
        .submit(&shell(&format!("while [ ! -e '{}' ]; do sleep 0.1; done", gate.display())))
        .await
        .expect("submit the gate")
        .id;
    let mut map = shell(
        "seq 1 $FLOTILLA_TASK_INDEX > \"$FLOTILLA_OUTPUT_DIR/part.txt\" && mkdir -p \"$FLOTILLA_OUTPUT_DIR/deep/er\" \
         && echo task $FLOTILLA_TASK_INDEX > \"$FLOTILLA_OUTPUT_DIR/deep/er/name.txt\"",
    );
    map.array = Some("1-6".into());
    let map = client.submit(&map).await.expect("submit the map").id;
    let combine = after(
        shell(
            "cat \"$FLOTILLA_INPUT_DIR\"/*/*/part.txt | awk '{s+=$1} END {print s}' > \"$FLOTILLA_OUTPUT_DIR/sum.txt\" \
             && ls \"$FLOTILLA_INPUT_DIR\"/*/*/deep/er/name.txt | wc -l && cat \"$FLOTILLA_OUTPUT_DIR/sum.txt\"",
        ),
        &[map, hold],
    );
    let combine = client.submit(&combine).await.expect("submit the combine step").id;
    let report = after(shell(&format!("echo report: $(cat \"$FLOTILLA_INPUT_DIR/{combine}/0/sum.txt\")")), &[combine]);
    let report = client.submit(&report).await.expect("submit the report").id;

    let job = client.job(report, false).await.expect("show the report");
    assert_eq!((job.state, job.waiting_on.clone()), (JobState::Waiting, vec![combine]), "{job:?}");
    let map_done = wait_job(&t, &client, map, LONG).await;
    assert_eq!(map_done.state, JobState::Succeeded, "{map_done:?}");
    let outputs = client.job_outputs(map).await.expect("map outputs");
    assert_eq!(outputs.tasks.len(), 6, "{outputs:?}");
    for task in &outputs.tasks {
        assert_eq!(task.files.len(), 2, "{task:?}");
        assert_eq!(task.holders.len(), 3, "each output on its worker and 2 others: {task:?}");
    }
    let job = client.job(combine, false).await.expect("show the combine step");
    assert_eq!((job.state, job.waiting_on.clone()), (JobState::Waiting, vec![hold]), "{job:?}");

    // The leader dies, then the worker that ran map task 1.
    let leader = t.cluster.wait_leader(LONG).await.unwrap_or_else(|| t.fail("no leader"));
    t.cluster.kill_master(leader);
    let rows = client.results(map, 0, None, false).await.expect("map results");
    let producer = rows.iter().find(|r| r.index == 1).and_then(|r| r.worker.clone()).expect("task 1's worker");
    t.cluster.kill_worker(&producer);
    std::fs::write(&gate, b"go").expect("open the gate");

    for id in [hold, combine, report] {
        let job = wait_job(&t, &client, id, LONG).await;
        if job.state != JobState::Succeeded {
            t.fail(&format!("job {id} ended {:?} after the faults: {job:?}", job.state));
        }
    }
    let rows = client.results(combine, 0, None, false).await.expect("combine results");
    assert_eq!(rows[0].stdout.split_whitespace().collect::<Vec<_>>(), ["6", "56"], "{:?}", rows[0]);
    assert_ne!(rows[0].worker.as_deref(), Some(producer.as_str()));
    let rows = client.results(report, 0, None, false).await.expect("report results");
    assert_eq!(rows[0].stdout.trim(), "report: 56");

    // Every map output is still there, from the copies.
    let env = t.cluster.client_env();
    let out = t.dir.path().join("fetched");
    let out_text = out.display().to_string();
    let (code, stdout, stderr) = cli_with(&env, &["job", "fetch", &map.to_string(), "-o", &out_text]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("fetched ")).count(), 12, "{stdout}");
    for i in 1..=6u64 {
        let part = std::fs::read_to_string(out.join(format!("{i}/part.txt"))).expect("a fetched part");
        let want: String = (1..=i).map(|n| format!("{n}\n")).collect();
        assert_eq!(part, want, "task {i}'s part");
        let name = std::fs::read_to_string(out.join(format!("{i}/deep/er/name.txt"))).expect("a nested file");
        assert_eq!(name.trim(), format!("task {i}"));
    }
    // Interrupted: one file gone, one damaged. Only those two are fetched again.
    std::fs::remove_file(out.join("2/part.txt")).expect("remove");
    std::fs::write(out.join("3/part.txt"), b"damaged\n").expect("damage");
    let (code, stdout, stderr) = cli_with(&env, &["job", "fetch", &map.to_string(), "-o", &out_text]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let fetched: Vec<&str> = stdout.lines().filter(|l| l.starts_with("fetched ")).collect();
    assert_eq!(fetched.len(), 2, "{stdout}");
    assert_eq!(std::fs::read_to_string(out.join("3/part.txt")).expect("read"), "1\n2\n3\n");

    // One task's outputs, as JSON.
    let (code, stdout, stderr) =
        cli_with(&env, &["job", "fetch", &combine.to_string(), "--task", "0", "-o", &out_text, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let written: serde_json::Value = serde_json::from_str(&stdout).expect("fetch --json");
    assert_eq!(written[0]["path"], "sum.txt", "{written}");
    assert_eq!(std::fs::read_to_string(out.join("0/sum.txt")).expect("sum").trim(), "56");
    let (code, _, stderr) = cli_with(&env, &["job", "fetch", &combine.to_string(), "--task", "7", "-o", &out_text]);
    assert!(code != 0 && stderr.contains("left no outputs"), "{stderr}");
}

/// Invariants: a job `--after` one that fails is cancelled, and so is the chain waiting on
/// it, each with the job it needed named; `--after-finished` runs whatever the outcome; a job
/// `--after` one already failed is cancelled at once; unknown ids are refused at submit with
/// a clear error and create nothing; a job that waits is not started while it waits, and is
/// cancelled by `job cancel` like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_follow_how_their_upstream_jobs_end() {
    let t = cluster(1, &[("w", 2)], &[]).await;
    let client = t.client();
    let gate = t.dir.path().join("gate");
    let held = client.submit(&shell(&format!("while [ ! -e '{}' ]; do sleep 0.1; done; exit 3", gate.display()))).await;
    let held = held.expect("submit").id;
    let second = client.submit(&after(shell("echo second"), &[held])).await.expect("submit").id;
    let third = client.submit(&after(shell("echo third"), &[second])).await.expect("submit").id;
    let mut anyway = shell("echo anyway");
    anyway.after_finished = vec![held];
    let anyway = client.submit(&anyway).await.expect("submit").id;
    let masters = t.cluster.master_list();
    let (code, stdout, _) = cli(&masters, &["job", "show", &third.to_string()]);
    assert!(code == 0 && stdout.contains(&format!("waits for: {second}")), "{stdout}");

    std::fs::write(&gate, b"go").expect("open the gate");
    assert_eq!(wait_job(&t, &client, held, LONG).await.state, JobState::Failed);
    for (id, needed) in [(second, held), (third, second)] {
        let job = wait_job(&t, &client, id, LONG).await;
        assert_eq!(job.state, JobState::Cancelled, "{job:?}");
        let why = job.upstream_failed.as_ref().unwrap_or_else(|| panic!("no reason: {job:?}"));
        assert_eq!(why.job, needed);
        assert_eq!(job.tasks.succeeded + job.tasks.failed, 0, "a cancelled dependent never ran");
    }
    let job = wait_job(&t, &client, anyway, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let (code, _, stderr) = cli(&masters, &["job", "wait", &second.to_string()]);
    assert!(code == 1 && stderr.contains(&format!("job {held} it needed failed")), "{stderr}");

    // Already failed: cancelled at once.
    let late = client.submit(&after(shell("echo late"), &[held])).await.expect("submit").id;
    let job = client.job(late, false).await.expect("show");
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");

    // Unknown ids: refused, nothing created.
    let before = client.jobs(false).await.expect("jobs").len();
    let (code, _, stderr) = cli(&masters, &["submit", "--after", "9999", "--", "true"]);
    assert!(code != 0 && stderr.contains("9999"), "{stderr}");
    let (code, _, stderr) = cli(&masters, &["submit", "--after", "two", "--", "true"]);
    assert!(code != 0 && stderr.contains("'two' is not a job id"), "{stderr}");
    assert_eq!(client.jobs(false).await.expect("jobs").len(), before);

    // Waiting jobs can be cancelled, and their dependents go with them.
    let blocker = client.submit(&shell("sleep 600")).await.expect("submit").id;
    let waiting = client.submit(&after(shell("echo never"), &[blocker])).await.expect("submit").id;
    let next = client.submit(&after(shell("echo never"), &[waiting])).await.expect("submit").id;
    client.cancel(waiting).await.expect("cancel the waiting job");
    let job = wait_job(&t, &client, next, LONG).await;
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.upstream_failed.map(|u| u.job), Some(waiting));
    client.cancel(blocker).await.expect("cancel");
}

/// Invariants: a task whose outputs break the rules (a symlink, more bytes than the job's
/// quota) fails with a reason that says which rule, whatever its exit status, and keeps no
/// outputs; a task beside it with good outputs is not touched; with `--replicas 0` a task's
/// outputs stay on its own worker only; a job without outputs lists none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_outputs_fail_the_task_with_a_reason() {
    let t = cluster(1, &[("w1", 2), ("w2", 2)], &[]).await;
    let client = t.client();
    let link = client.submit(&shell("ln -s /etc/passwd \"$FLOTILLA_OUTPUT_DIR/passwd\"")).await.expect("submit").id;
    let mut big = shell("head -c 4096 /dev/zero > \"$FLOTILLA_OUTPUT_DIR/big\"");
    big.output_quota = Some("1K".into());
    let big = client.submit(&big).await.expect("submit").id;
    let mut good = shell("echo fine > \"$FLOTILLA_OUTPUT_DIR/ok.txt\"");
    good.replicas = Some(0);
    let good = client.submit(&good).await.expect("submit").id;
    let none = client.submit(&shell("true")).await.expect("submit").id;

    for (id, words) in [(link, "symbolic link"), (big, "quota")] {
        let job = wait_job(&t, &client, id, LONG).await;
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        let rows = client.results(id, 0, None, false).await.expect("results");
        let error = rows[0].error.clone().unwrap_or_default();
        assert!(error.contains(words), "job {id}: {error:?} should say {words}");
        assert_eq!(rows[0].state, TaskState::Failed);
        assert!(job.failure.as_deref().unwrap_or_default().contains(words), "{job:?}");
        assert!(client.job_outputs(id).await.expect("outputs").tasks.is_empty());
    }
    assert_eq!(wait_job(&t, &client, good, LONG).await.state, JobState::Succeeded);
    let outputs = client.job_outputs(good).await.expect("outputs");
    assert_eq!(outputs.tasks[0].holders.len(), 1, "--replicas 0: {outputs:?}");
    assert_eq!(outputs.tasks[0].files[0].size, 5);
    assert_eq!(wait_job(&t, &client, none, LONG).await.state, JobState::Succeeded);
    assert!(client.job_outputs(none).await.expect("outputs").tasks.is_empty());
    let (code, _, stderr) = cli(&t.cluster.master_list(), &["submit", "--output-quota", "lots", "--", "true"]);
    assert!(code != 0 && stderr.contains("output quota"), "{stderr}");
}

/// The outputs of `job` by task index, once every task's are on `copies` workers in service
/// (`None` while some are not).
async fn outputs_on(
    client: &flotilla_client::Client,
    job: u64,
    copies: usize,
) -> Option<Vec<flotilla_proto::api::TaskOutputsView>> {
    let outputs = client.job_outputs(job).await.ok()?;
    let whole = !outputs.tasks.is_empty()
        && outputs.tasks.iter().all(|t| t.holders.len() == copies && t.available.len() == copies);
    whole.then_some(outputs.tasks)
}

/// Invariants: the outputs of a task are brought back to 1 + R copies on workers in service
/// after the SIGKILL of a worker holding one (journalled as gone with the worker, then
/// copied); a copy damaged on disk is found by the first read of it (the fetch still gets
/// the right bytes, from another copy), discarded, journalled as corrupt and replaced; the
/// fetched files are the ones the tasks wrote. Also the default case: workers that joined
/// together get their full count of copies without waiting to know their peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_damaged_copies_of_outputs_are_made_again() {
    let mut t = secure_cluster(1, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)]).await;
    let client = t.client();
    let mut make = shell("echo out $FLOTILLA_TASK_INDEX > \"$FLOTILLA_OUTPUT_DIR/o.txt\"");
    make.array = Some("1-4".into());
    let job = client.submit(&make).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, job, LONG).await.state, JobState::Succeeded);
    wait_until(&t, "every task's outputs on 3 workers", LONG, || async { outputs_on(&client, job, 3).await.is_some() })
        .await;
    let tasks = outputs_on(&client, job, 3).await.expect("3 copies");

    // A holder of task 1's outputs is killed: they go back to 3 copies without it.
    let lost = tasks[0].holders[1].clone();
    t.cluster.kill_worker(&lost);
    wait_until(&t, "3 copies again without the lost worker", LONG, || async {
        outputs_on(&client, job, 3).await.is_some_and(|ts| ts.iter().all(|t| !t.holders.contains(&lost)))
    })
    .await;
    let events = client.events(0, 10_000, std::time::Duration::ZERO, false).await.expect("events").events;
    let gone = events.iter().filter(|e| e.kind.as_str() == "output_copies_gone").collect::<Vec<_>>();
    assert!(
        gone.iter().any(|e| e.worker.as_deref() == Some(lost.as_str()) && e.reason.as_deref() == Some("worker_lost")),
        "{gone:?}"
    );
    assert!(events.iter().any(|e| e.kind.as_str() == "outputs_copied"), "no repair journalled");

    // The first holder's copy of task 2's file is damaged on disk (same length).
    let tasks = outputs_on(&client, job, 3).await.expect("3 copies");
    let victim = tasks[1].holders[0].clone();
    let file = &tasks[1].files[0];
    let hex = &file.sha256;
    let blob = t.cluster.dir.join(format!("worker-{victim}")).join("outputs").join(&hex[..2]).join(hex);
    let size = std::fs::metadata(&blob).expect("the stored copy").len() as usize;
    std::fs::write(&blob, vec![b'x'; size]).expect("damage the copy");

    // A fetch reads it first: the damage is found, the bytes come from another copy.
    let env = t.cluster.client_env();
    let out = t.dir.path().join("fetched");
    let (code, stdout, stderr) =
        cli_with(&env, &["job", "fetch", &job.to_string(), "--task", "2", "-o", &out.display().to_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("2/o.txt")).expect("fetched").trim(), "out 2");
    wait_until(&t, "the damaged copy journalled as corrupt", LONG, || async {
        let events = client.events(0, 10_000, std::time::Duration::ZERO, false).await.map(|e| e.events);
        events.is_ok_and(|es| {
            es.iter().any(|e| {
                e.kind.as_str() == "output_copies_gone"
                    && e.worker.as_deref() == Some(victim.as_str())
                    && e.reason.as_deref() == Some("corrupt")
            })
        })
    })
    .await;
    wait_until(&t, "3 sound copies again", LONG, || async { outputs_on(&client, job, 3).await.is_some() }).await;
    // Whoever holds it now holds the right bytes (a damaged copy is never kept).
    if blob.exists() {
        assert_eq!(std::fs::read_to_string(&blob).expect("read").trim(), "out 2");
    }
    let (code, stdout, stderr) = cli_with(&env, &["job", "fetch", &job.to_string(), "-o", &out.display().to_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for i in 1..=4 {
        assert_eq!(
            std::fs::read_to_string(out.join(format!("{i}/o.txt"))).expect("fetched").trim(),
            format!("out {i}")
        );
    }
}

/// Invariants: when the only copy of a task's outputs is lost with its worker (SIGKILL), a
/// new job runs that task again (journalled `outputs_lost` naming it; `rerun_of` in its
/// detail; `$FLOTILLA_RERUN_OF` set for its tasks); a job waiting on the producer reads the
/// outputs made again, not nothing; the producer's outputs are listed on the worker of the
/// re-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_whose_every_copy_is_lost_are_made_again() {
    // Two cpus each: the gate job below holds one of the survivor's while the re-run runs.
    let mut t = secure_cluster(1, &[("a", 2), ("b", 2)]).await;
    let client = t.client();
    let gate = t.dir.path().join("gate");
    let mut make =
        shell("echo made by ${FLOTILLA_RERUN_OF:+a re-run of }job $FLOTILLA_JOB_ID > \"$FLOTILLA_OUTPUT_DIR/o.txt\"");
    make.replicas = Some(0);
    let producer = client.submit(&make).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, producer, LONG).await.state, JobState::Succeeded);
    let hold = client
        .submit(&shell(&format!("while [ ! -e '{}' ]; do sleep 0.1; done", gate.display())))
        .await
        .expect("submit the gate")
        .id;
    let read = after(shell(&format!("cat \"$FLOTILLA_INPUT_DIR/{producer}/0/o.txt\"")), &[producer, hold]);
    let read = client.submit(&read).await.expect("submit the reader").id;

    let rows = client.results(producer, 0, None, false).await.expect("results");
    let holder = rows[0].worker.clone().expect("ran somewhere");
    t.cluster.kill_worker(&holder);
    let mut rerun = None;
    wait_until(&t, "a re-run of the producer journalled", LONG, || async {
        let events = client.events(0, 10_000, std::time::Duration::ZERO, false).await.map(|e| e.events);
        let found = events.ok().and_then(|es| {
            es.iter().find(|e| e.kind.as_str() == "outputs_lost" && e.job == Some(producer)).and_then(|e| e.rerun)
        });
        found.is_some()
    })
    .await;
    let events = client.events(0, 10_000, std::time::Duration::ZERO, false).await.expect("events").events;
    for e in &events {
        if e.kind.as_str() == "outputs_lost" {
            rerun = e.rerun;
        }
    }
    let rerun = rerun.expect("a re-run");
    let detail = wait_job(&t, &client, rerun, LONG).await;
    assert_eq!((detail.state, detail.rerun_of), (JobState::Succeeded, Some(producer)), "{detail:?}");
    let outputs = client.job_outputs(producer).await.expect("outputs");
    assert_eq!(outputs.tasks[0].available.len(), 1, "{outputs:?}");
    assert_ne!(outputs.tasks[0].holders[0], holder);

    std::fs::write(&gate, b"go").expect("open the gate");
    let done = wait_job(&t, &client, read, LONG).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let rows = client.results(read, 0, None, false).await.expect("results");
    assert_eq!(rows[0].stdout.trim(), format!("made by a re-run of job {rerun}"));
}

/// Invariants: once a job is removed (`job purge`), the copies of its outputs are deleted
/// from every worker's store (the workers ask the leader about what they hold, and delete
/// what no kept job needs), while the outputs of a job still kept stay on all their holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_go_away_with_their_job() {
    let mut t = secure_cluster(1, &[]).await;
    for name in ["a", "b", "c"] {
        t.cluster
            .start_worker_with(name, 1, "", &["--outputs-gc", "300ms", "--outputs-gc-age", "1s"])
            .expect("start a worker");
    }
    if let Err(e) = t.cluster.wait_workers(3, LONG).await {
        t.fail(&e.to_string());
    }
    let client = t.client();
    let mut make = shell("echo job $FLOTILLA_JOB_ID task $FLOTILLA_TASK_INDEX > \"$FLOTILLA_OUTPUT_DIR/o.txt\"");
    make.array = Some("1-3".into());
    let gone = client.submit(&make).await.expect("submit").id;
    let kept = client.submit(&make).await.expect("submit").id;
    for id in [gone, kept] {
        assert_eq!(wait_job(&t, &client, id, LONG).await.state, JobState::Succeeded);
        wait_until(&t, "3 copies of every output", LONG, || async {
            client.job_outputs(id).await.is_ok_and(|o| o.tasks.iter().all(|t| t.holders.len() == 3))
        })
        .await;
    }
    let blob = |worker: &str, sha256: &str| {
        t.cluster.dir.join(format!("worker-{worker}")).join("outputs").join(&sha256[..2]).join(sha256)
    };
    let digests = |outputs: flotilla_proto::api::JobOutputs| -> Vec<String> {
        outputs.tasks.iter().flat_map(|t| t.files.iter().map(|f| f.sha256.clone())).collect()
    };
    let gone_digests = digests(client.job_outputs(gone).await.expect("outputs"));
    let kept_digests = digests(client.job_outputs(kept).await.expect("outputs"));
    assert!(gone_digests.iter().all(|d| ["a", "b", "c"].iter().all(|w| blob(w, d).exists())));

    client.purge(&[gone]).await.expect("purge");
    wait_until(&t, "the removed job's copies deleted everywhere", LONG, || async {
        gone_digests.iter().all(|d| ["a", "b", "c"].iter().all(|w| !blob(w, d).exists()))
    })
    .await;
    for d in &kept_digests {
        for w in ["a", "b", "c"] {
            assert!(blob(w, d).exists(), "a kept job's copy on {w} was deleted");
        }
    }
}

/// Invariants: a task's whole stdout and stderr are shown by `job logs` however long they
/// are (beyond the 64 KiB the result keeps), byte for byte, for a failed attempt too; a short
/// log comes from the result; `--follow` prints a running task's stream while it runs (past
/// the 64 KiB too: what it printed before waiting shows before the task may go on) and then
/// the rest, every byte exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_logs_shows_all_of_a_long_log() {
    let t = secure_cluster(1, &[("a", 2)]).await;
    let client = t.client();
    let env = t.cluster.client_env();
    let long = client.submit(&shell("seq 1 40000; seq 1 20000 >&2; exit 3")).await.expect("submit").id;
    let job = wait_job(&t, &client, long, LONG).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    let want_out: String = (1..=40000).map(|n| format!("{n}\n")).collect();
    let want_err: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    assert!(want_out.len() > 128 * 1024);
    let (code, stdout, stderr) = cli_with(&env, &["job", "logs", &long.to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout == want_out, "stdout: {} bytes, expected {}", stdout.len(), want_out.len());
    let (code, stdout, stderr) = cli_with(&env, &["job", "logs", &long.to_string(), "--stderr"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout == want_err, "stderr: {} bytes, expected {}", stdout.len(), want_err.len());

    let mut slow = shell("sleep 1; echo short and sweet");
    slow.array = Some("1-2".into());
    let slow = client.submit(&slow).await.expect("submit").id;
    let (code, stdout, stderr) = cli_with(&env, &["job", "logs", &slow.to_string(), "--task", "2", "--follow"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "short and sweet\n");
    let (code, _, stderr) = cli_with(&env, &["job", "logs", &slow.to_string(), "--task", "9"]);
    assert!(code != 0 && stderr.contains("no task 9"), "{stderr}");

    // Followed while it runs: the task waits for a file the test writes only once the
    // follower has printed what came before.
    let gate = t.dir.path().join("follow-gate");
    let script = format!(
        "echo line 1; head -c 200000 /dev/zero | tr '\\0' x; echo; echo marker; \
         while [ ! -e '{}' ]; do sleep 0.1; done; echo line 2",
        gate.display()
    );
    let running = client.submit(&shell(&script)).await.expect("submit").id;
    let mut follower = std::process::Command::new(EXE)
        .args(["job", "logs", &running.to_string(), "--follow"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the follower");
    let mut pipe = follower.stdout.take().expect("piped");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 65536];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        })
    };
    let printed = |needle: &str| {
        let seen = seen.lock().expect("lock");
        String::from_utf8_lossy(&seen).contains(needle)
    };
    wait_until(&t, "the follower prints what the running task wrote", LONG, || async { printed("marker") }).await;
    assert!(!printed("line 2"));
    assert_eq!(client.job(running, false).await.expect("show").state, JobState::Running);
    std::fs::write(&gate, b"go").expect("open the gate");
    assert_eq!(wait_job(&t, &client, running, LONG).await.state, JobState::Succeeded);
    let deadline = std::time::Instant::now() + LONG;
    let status = loop {
        if let Some(status) = follower.try_wait().expect("the follower's status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = follower.kill();
            t.fail("the follower did not end with the task");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    reader.join().expect("reader");
    let want = format!("line 1\n{}\nmarker\nline 2\n", "x".repeat(200_000));
    let got = String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    assert!(got == want, "followed {} bytes, expected {}: {:?}…", got.len(), want.len(), &got[..got.len().min(80)]);
}

/// Invariants: with `--each`, task i of a job starts once task i of the job it pairs with has
/// succeeded, while that job still runs (its task 3 waits here until the dependent's task 1
/// has run: were the whole job waited for, nothing would move), and reads only that task's
/// outputs; `needs` in a job file orders a job's own tasks and hands the needed tasks'
/// outputs over; a cycle, an index the paired job lacks and a task the job lacks are refused
/// at submit with a clear error and create nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_level_dependencies_start_tasks_as_the_ones_they_need_succeed() {
    let t = cluster(1, &[("w", 4)], &[]).await;
    let client = t.client();
    let gate = t.dir.path().join("first-paired-task-ran");
    let mut up = shell(&format!(
        "if [ $FLOTILLA_TASK_INDEX = 3 ]; then while [ ! -e '{}' ]; do sleep 0.1; done; fi; \
         echo part $FLOTILLA_TASK_INDEX > \"$FLOTILLA_OUTPUT_DIR/part.txt\"",
        gate.display()
    ));
    up.array = Some("1-3".into());
    up.replicas = Some(0);
    let up = client.submit(&up).await.expect("submit the upstream array").id;
    let masters = t.cluster.master_list();
    let (code, stdout, stderr) = cli(
        &masters,
        &[
            "submit",
            "--array",
            "1-3",
            "--each",
            &up.to_string(),
            "--",
            "sh",
            "-c",
            &format!(
                "ls \"$FLOTILLA_INPUT_DIR\"/*/* | wc -l; cat \"$FLOTILLA_INPUT_DIR/{up}/$FLOTILLA_TASK_INDEX/part.txt\"; \
                 [ $FLOTILLA_TASK_INDEX != 1 ] || touch '{}'",
                gate.display()
            ),
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let down: u64 = stdout.trim().parse().expect("a job id");
    let job = wait_job(&t, &client, down, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.each, vec![up]);
    assert_eq!(wait_job(&t, &client, up, LONG).await.state, JobState::Succeeded);
    let rows = client.results(down, 0, None, false).await.expect("results");
    for row in &rows {
        let lines: Vec<&str> = row.stdout.lines().map(str::trim).collect();
        assert_eq!(lines, ["1", &format!("part {}", row.index)], "task {} reads only its pair's outputs", row.index);
    }
    let (code, stdout, _) = cli(&masters, &["job", "show", &down.to_string()]);
    assert!(code == 0 && stdout.contains(&format!("each:      task i after task i of job {up}")), "{stdout}");

    // A job file whose task 3 needs tasks 1 and 2 and sums what they left.
    let file = t.dir.path().join("job.toml");
    std::fs::write(
        &file,
        r#"command = ["sh", "-c", "if [ $FLOTILLA_TASK_INDEX = 3 ]; then cat \"$FLOTILLA_INPUT_DIR\"/$FLOTILLA_JOB_ID/*/n.txt | awk '{s+=$1} END {print s}'; else echo $((FLOTILLA_TASK_INDEX * 10)) > \"$FLOTILLA_OUTPUT_DIR/n.txt\"; fi"]
array = "1-3"
replicas = 0

[needs]
3 = "1-2"
"#,
    )
    .expect("write the job file");
    let (code, stdout, stderr) = cli(&masters, &["submit", "--file", &file.display().to_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let staged: u64 = stdout.trim().parse().expect("a job id");
    let job = wait_job(&t, &client, staged, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.needs.get("3").map(String::as_str), Some("1-2"));
    let rows = client.results(staged, 0, None, false).await.expect("results");
    let third = rows.iter().find(|r| r.index == 3).expect("task 3");
    // With 4 cpus all three would start together; the outputs exist only once 1 and 2 succeeded.
    assert_eq!(third.stdout.trim(), "30", "task 3 read both tasks' outputs: {third:?}");

    // Refused at submit, nothing created.
    let before = client.jobs(false).await.expect("jobs").len();
    for (args, words) in [
        (vec!["--array", "1-3", "--needs", "1=2", "--needs", "2=1"], "cycle: task 2 needs task 1 needs task 2"),
        (vec!["--array", "1-3", "--needs", "3=4"], "needs names task 4, which is not a task of this job"),
        (vec!["--array", "1-5", "--each", &up.to_string()], "task 4 has no task 4 in job"),
    ] {
        let mut all = vec!["submit"];
        all.extend(args);
        all.extend(["--", "true"]);
        let (code, _, stderr) = cli(&masters, &all);
        assert!(code != 0 && stderr.contains(words), "{all:?}: {stderr}");
    }
    assert_eq!(client.jobs(false).await.expect("jobs").len(), before);
}
