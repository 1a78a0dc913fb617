//! `flotilla demo`: a real local cluster (3 masters, 3 workers), a word count over text
//! shipped with Flotilla with a reduce step, the leader master SIGKILLed part-way and a worker
//! later; then the result, checked against a local count, the measured failover times and the
//! journal of what happened.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use flotilla_client::Client;
use flotilla_proto::api::{EventType, JobState, Role, SubmitRequest, TaskState};

use crate::cli::DemoArgs;
use crate::local::LocalCluster;

const TEXT: &str = include_str!("../assets/demo-text.txt");
const WORKERS: usize = 3;
const CPUS: u32 = 2;
const TOP: usize = 10;

/// The reduce step: add up the per-chunk counts, keep the most frequent words.
const REDUCE: &str = "awk '{c[$2]+=$1} END {for (w in c) print c[w], w}' | sort -k1,1nr -k2,2 | head -n 10";

/// What the cluster must compute, counted here in-process.
fn expected_top(text: &str) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
    }
    let mut rows: Vec<(u64, String)> = counts.into_iter().map(|(w, c)| (c, w)).collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    rows.iter().take(TOP).map(|(c, w)| format!("{c} {w}\n")).collect()
}

/// With `--json` the narrative goes to stderr and stdout holds only the JSON outcome.
static NARRATIVE_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

macro_rules! say {
    ($($arg:tt)*) => {
        if NARRATIVE_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

struct Clock(Instant);

impl Clock {
    fn say(&self, text: impl AsRef<str>) {
        say!("[{:>5.1}s] {}", self.0.elapsed().as_secs_f64(), text.as_ref());
    }
}

async fn succeeded(client: &Client, job: u64) -> u64 {
    client.job(job, false).await.map(|j| j.tasks.succeeded).unwrap_or(0)
}

async fn wait_for_progress(client: &Client, job: u64, at_least: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while succeeded(client, job).await < at_least {
        if Instant::now() > deadline {
            bail!("job {job} made no progress to {at_least} tasks within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp = tempfile::Builder::new().prefix("flotilla-demo-").tempdir().context("cannot create a temp dir")?;
    let dir = temp.path().to_path_buf();
    let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
    let mut cluster = LocalCluster::new(&exe, &dir, 3, None)?;
    let clock = Clock(Instant::now());
    NARRATIVE_TO_STDERR.store(args.json, std::sync::atomic::Ordering::Relaxed);
    say!("Flotilla demo: a local cluster of 3 masters and {WORKERS} workers in {}", dir.display());
    let outcome = demo(&mut cluster, &clock, &dir, args.json).await;
    cluster.stop();
    if args.keep {
        let kept = temp.keep();
        say!("Data and logs kept in {}", kept.display());
    }
    outcome
}

async fn demo(
    cluster: &mut LocalCluster,
    clock: &Clock,
    dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    cluster.start_masters()?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await.context("no leader elected within 30 s")?;
    for i in 1..=WORKERS {
        cluster.start_worker(&format!("w{i}"), CPUS, &format!("zone=z{}", (i - 1) % 2 + 1))?;
    }
    cluster.wait_workers(WORKERS, Duration::from_secs(30)).await?;
    clock.say(format!("master {leader} leads; {WORKERS} workers ready with {CPUS} cpus each"));

    // One chunk (line) of text per task.
    let chunks: Vec<&str> = TEXT.lines().filter(|l| !l.trim().is_empty()).collect();
    let chunk_dir = dir.join("chunks");
    std::fs::create_dir_all(&chunk_dir)?;
    for (i, chunk) in chunks.iter().enumerate() {
        std::fs::write(chunk_dir.join(format!("{}.txt", i + 1)), format!("{chunk}\n"))?;
    }
    let n = chunks.len() as u64;
    let client = cluster.client()?.with_retry_for(Duration::from_secs(30));
    let count = "sleep 1; tr -cs 'A-Za-z' '\\n' < \"$0/$FLOTILLA_TASK_INDEX.txt\" | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c";
    let request = SubmitRequest {
        name: Some("word-count".into()),
        command: vec!["/bin/sh".into(), "-c".into(), count.into(), chunk_dir.display().to_string()],
        array: Some(format!("1-{n}")),
        reduce: Some(REDUCE.into()),
        env: [("LC_ALL".to_string(), "C".to_string())].into(),
        ..Default::default()
    };
    let job = client.submit(&request).await?.id;
    clock.say(format!("submitted job {job}: count words in {n} chunks, then reduce to the top {TOP}"));

    // Part-way: kill the leader master.
    wait_for_progress(&client, job, n / 5, Duration::from_secs(60)).await?;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await.context("no leader before the kill")?;
    let before = succeeded(&client, job).await;
    clock.say(format!("{before}/{n} tasks done; SIGKILL the leader, master {leader}"));
    let killed_at = Instant::now();
    cluster.kill_master(leader);
    let new_leader = cluster.wait_leader(Duration::from_secs(30)).await.context("no new leader within 30 s")?;
    let to_leader = killed_at.elapsed();
    clock.say(format!("master {new_leader} elected leader {:.2}s after the kill", to_leader.as_secs_f64()));
    wait_for_progress(&client, job, before + 1, Duration::from_secs(60)).await?;
    let to_result = killed_at.elapsed();
    clock.say(format!(
        "first task result committed under the new leader {:.2}s after the kill",
        to_result.as_secs_f64()
    ));

    // Later: kill a worker that is running tasks.
    wait_for_progress(&client, job, n / 2, Duration::from_secs(60)).await?;
    // Pick the worker holding the most tasks right now.
    let mut victim = None;
    for _ in 0..100 {
        let rows = client.results(job, 0, None, false).await?;
        let mut held: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.state == TaskState::Running || r.state == TaskState::Assigned) {
            if let Some(w) = &r.worker {
                held.entry(w.clone()).or_default().push(r.index);
            }
        }
        victim = held.into_iter().max_by_key(|(_, t)| t.len());
        if victim.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut worker_figures = None;
    if let Some((victim, tasks)) = victim {
        clock.say(format!("SIGKILL worker {victim}, which runs tasks {tasks:?}"));
        let lost_at = Instant::now();
        cluster.kill_worker(&victim);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = client.results(job, 0, None, false).await?;
            // Each of its tasks is running or done elsewhere, or had finished before the kill.
            let moved = tasks.iter().all(|i| {
                rows.iter().any(|r| {
                    let on_victim = r.worker.as_deref() == Some(victim.as_str());
                    r.index == *i && r.state != TaskState::Waiting && (!on_victim || r.state == TaskState::Succeeded)
                })
            });
            if moved {
                break;
            }
            if Instant::now() > deadline {
                bail!("the tasks of worker {victim} did not move within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let moved = lost_at.elapsed();
        clock.say(format!(
            "worker {victim} declared lost; its tasks running elsewhere {:.2}s after the kill",
            moved.as_secs_f64()
        ));
        worker_figures = Some(moved);
    } else {
        clock.say("no worker was running tasks at that moment; skipping the worker kill");
    }

    // Bring the killed master back: it catches up from its data directory and its peers.
    cluster.start_master(leader)?;
    let job_state = loop {
        let j = client.job(job, false).await?;
        if j.state.is_terminal() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    clock.say(format!("job {job} {}", job_state.state));
    let rejoined = caught_up(cluster, leader).await;
    match rejoined {
        Some(role) => clock.say(format!("restarted master {leader} caught up and is a {role}")),
        None => clock.say(format!("restarted master {leader} has not caught up yet")),
    }

    let result = client.result(job, false).await?.result.unwrap_or_default();
    let expected = expected_top(TEXT);
    say!("");
    say!("Result of job {job} (top {TOP} words, count and word):");
    for line in result.lines() {
        say!("    {line}");
    }
    let correct = result == expected;
    if correct {
        say!("The result is correct: it matches a count done in this process.");
    } else {
        say!("The result is WRONG. Expected:\n{expected}");
    }
    say!("");
    say!("Failover (measured from outside, by polling):");
    say!("    leader SIGKILL -> new leader elected:         {:.2}s", to_leader.as_secs_f64());
    say!("    leader SIGKILL -> first task result committed: {:.2}s", to_result.as_secs_f64());
    if let Some(m) = worker_figures {
        say!("    worker SIGKILL -> its tasks running elsewhere: {:.2}s (worker timeout 3s)", m.as_secs_f64());
    }
    say!("");
    say!("Journal (flotilla events):");
    let events = client.events(0, 1000, Duration::ZERO, false).await?;
    for e in events.events.iter().filter(|e| e.kind != EventType::TaskRescheduled || e.message.contains("lost")) {
        say!("    {}  {:<18} {}", e.time, e.kind, e.message);
    }
    say!("");
    // The post-incident report, from the replicated journal alone.
    let all = crate::commands::all_events(&client, false).await?;
    let report = crate::incident::build(&all, 0, flotilla_proto::time::now_ms() + 1);
    let out_dir = std::path::PathBuf::from(".flotilla");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let (md, html) = (out_dir.join("demo-incident-report.md"), out_dir.join("demo-incident-report.html"));
    std::fs::write(&md, report.markdown()).with_context(|| format!("cannot write {}", md.display()))?;
    std::fs::write(&html, report.html()).with_context(|| format!("cannot write {}", html.display()))?;
    say!("Incident report (flotilla incident report), written to {} and {}:", md.display(), html.display());
    for line in report.markdown().lines().skip_while(|l| !l.starts_with("## Summary")).skip(1) {
        if line.starts_with("## ") {
            break;
        }
        if !line.is_empty() {
            say!("    {line}");
        }
    }
    say!("");
    let verdict = if correct && job_state.state == JobState::Succeeded { "correct" } else { "WRONG" };
    let top = result.lines().next().unwrap_or("(none)");
    say!(
        "Demo result: {verdict} (top word: {top}); new leader {:.2}s and first result {:.2}s after the leader SIGKILL{}",
        to_leader.as_secs_f64(),
        to_result.as_secs_f64(),
        worker_figures.map(|m| format!("; worker loss handled in {:.2}s", m.as_secs_f64())).unwrap_or_default()
    );
    if json {
        let outcome = serde_json::json!({
            "correct": verdict == "correct",
            "job": job,
            "state": job_state.state,
            "result": result,
            "leader_killed": leader,
            "new_leader_s": to_leader.as_secs_f64(),
            "first_result_s": to_result.as_secs_f64(),
            "worker_loss_handled_s": worker_figures.map(|m| m.as_secs_f64()),
            "incident_report": {"markdown": md, "html": html},
        });
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    if verdict != "correct" {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until a restarted master has applied what the leader has; returns its role.
async fn caught_up(cluster: &LocalCluster, id: u64) -> Option<Role> {
    let client = cluster.client().ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let leader = cluster.wait_leader(Duration::from_secs(5)).await?;
        let (Ok(me), Ok(lead)) = (client.node(&cluster.address(id)).await, client.node(&cluster.address(leader)).await)
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if me.last_applied.is_some() && me.last_applied >= lead.last_applied.map(|a| a.saturating_sub(2)) {
            return Some(me.role);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_expected_result_counts_words_case_insensitively() {
        let top = super::expected_top("The the a. B b b");
        assert_eq!(top, "3 b\n2 the\n1 a\n");
    }
}
