//! Periodic jobs with real processes: a schedule launches each period once, across leader
//! SIGKILLs, and `--overlap skip` never runs two periods' jobs at once.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use flotilla_proto::api::EventView;

async fn launches(client: &flotilla_client::Client, name: &str) -> Vec<EventView> {
    let events = client.events(0, 10_000, Duration::ZERO, false).await.map(|e| e.events).unwrap_or_default();
    events
        .into_iter()
        .filter(|e| e.kind.as_str() == "schedule_launched" && e.schedule.as_deref() == Some(name))
        .collect()
}

/// Invariants, for a schedule firing every 2 s over 3 masters while the leader is SIGKILLed
/// twice: every period is launched at most once (no two launches name the same period, each
/// launch submitted a job of its own, and the jobs the schedule submitted are exactly those
/// launches); periods are in order on the 2 s grid and launches go on under each new leader
/// (periods missed during a failover are launched once, the latest); after
/// `pause` nothing is launched, after `resume` launches go on from the next period; bad
/// input is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_launches_each_period_once_across_leader_kills() {
    let mut t = secure_cluster(3, &[("a", 4)]).await;
    let client = t.client();
    let env = t.cluster.client_env();

    let (code, _, stderr) = cli_with(&env, &["schedule", "add", "bad", "--cron", "* * *", "--", "true"]);
    assert!(code != 0 && stderr.contains("3 fields"), "{stderr}");
    let (code, _, stderr) =
        cli_with(&env, &["schedule", "add", "bad", "--cron", "* * * * *", "--timezone", "Mars/Base", "--", "true"]);
    assert!(code != 0 && stderr.contains("unknown time zone"), "{stderr}");

    let (code, stdout, stderr) = cli_with(
        &env,
        &["schedule", "add", "tick", "--cron", "*/2 * * * * *", "--name", "tick-job", "--json", "--", "echo", "tick"],
    );
    assert_eq!(code, 0, "{stderr}");
    let added: serde_json::Value = serde_json::from_str(&stdout).expect("schedule add --json");
    assert_eq!((added["name"].as_str(), added["paused"].as_bool()), (Some("tick"), Some(false)), "{added}");
    let (code, _, stderr) = cli_with(&env, &["schedule", "add", "tick", "--cron", "* * * * *", "--", "true"]);
    assert!(code != 0 && stderr.contains("exists already"), "{stderr}");

    for _ in 0..2 {
        let before = launches(&client, "tick").await.len();
        wait_until(&t, "three more launches", LONG, || async { launches(&client, "tick").await.len() >= before + 3 })
            .await;
        let leader = t.cluster.wait_leader(LONG).await.unwrap_or_else(|| t.fail("no leader"));
        t.cluster.kill_master(leader);
        let after_kill = launches(&client, "tick").await.len();
        wait_until(&t, "launches go on under a new leader", LONG, || async {
            launches(&client, "tick").await.len() >= after_kill + 3
        })
        .await;
        t.cluster.start_master(leader).expect("restart the killed master");
    }

    // Paused: nothing more; resumed: launches again.
    let (code, _, stderr) = cli_with(&env, &["schedule", "pause", "tick"]);
    assert_eq!(code, 0, "{stderr}");
    let paused_at = launches(&client, "tick").await.len();
    tokio::time::sleep(Duration::from_secs(5)).await; // a span with 2 periods in it, to see none launched
    assert!(launches(&client, "tick").await.len() <= paused_at + 1, "launched while paused");
    let paused_at = launches(&client, "tick").await.len();
    let (code, _, stderr) = cli_with(&env, &["schedule", "resume", "tick"]);
    assert_eq!(code, 0, "{stderr}");
    wait_until(&t, "launches after resume", LONG, || async { launches(&client, "tick").await.len() > paused_at }).await;
    let (code, stdout, stderr) = cli_with(&env, &["schedule", "remove", "tick", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let removed: serde_json::Value = serde_json::from_str(&stdout).expect("remove --json");

    // Exactly once: one launch per period, one job per launch, no job of the schedule unaccounted.
    let events = launches(&client, "tick").await;
    let periods: Vec<&str> = events.iter().map(|e| e.period.as_deref().expect("period")).collect();
    let distinct: BTreeSet<&str> = periods.iter().copied().collect();
    assert_eq!(distinct.len(), periods.len(), "a period launched twice: {periods:?}");
    assert!(periods.windows(2).all(|w| w[0] < w[1]), "periods out of order: {periods:?}");
    let jobs: BTreeSet<u64> = events.iter().map(|e| e.job.expect("job")).collect();
    assert_eq!(jobs.len(), events.len(), "two launches share a job");
    assert_eq!(removed["launched"].as_u64(), Some(events.len() as u64), "{removed}");
    let submitted: BTreeSet<u64> = client
        .jobs(false)
        .await
        .expect("jobs")
        .into_iter()
        .filter(|j| j.name.as_deref() == Some("tick-job"))
        .map(|j| j.id)
        .collect();
    assert_eq!(submitted, jobs, "jobs of the schedule and its launches differ");
    for p in &periods {
        let seconds: u32 = p[17..19].parse().expect("seconds of the period");
        assert_eq!(seconds % 2, 0, "{p} is not on the 2 s grid");
    }
}

/// Invariants: with `--overlap skip` (the default) a period that starts while the previous
/// period's job still runs is skipped and journalled, so no two of its jobs ever run at the
/// same time; `schedule list --json` shows the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_periods_are_skipped() {
    let t = secure_cluster(1, &[("a", 4)]).await;
    let client = t.client();
    let env = t.cluster.client_env();
    let (code, _, stderr) =
        cli_with(&env, &["schedule", "add", "slow", "--cron", "* * * * * *", "--", "sh", "-c", "sleep 2.5"]);
    assert_eq!(code, 0, "{stderr}");
    wait_until(&t, "skipped periods", LONG, || async {
        let (_, stdout, _) = cli_with(&env, &["schedule", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        let s = &list["schedules"][0];
        s["launched"].as_u64().unwrap_or(0) >= 3 && s["skipped"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    let (code, _, stderr) = cli_with(&env, &["schedule", "remove", "slow"]);
    assert_eq!(code, 0, "{stderr}");
    let mut spans = Vec::new();
    for e in launches(&client, "slow").await {
        let job = wait_job(&t, &client, e.job.expect("job"), LONG).await;
        spans.push((job.submitted_at.clone(), job.finished_at.clone().expect("finished")));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "two periods' jobs overlapped: {spans:?}");
    }
    let events = client.events(0, 10_000, Duration::ZERO, false).await.expect("events").events;
    assert!(events.iter().any(|e| e.kind.as_str() == "schedule_skipped" && e.running.is_some()));
}

/// Invariants, for a literal every-minute schedule (`* * * * *`) over 3 masters while the
/// leader is SIGKILLed three times (once just after a launch, once a moment before a minute
/// starts, so that the minute begins during the election, and once more after a launch):
/// every minute from the first launch on is launched exactly once, on the minute, each with
/// a job of its own. About 5 minutes, so not in the suite: run it with
/// `cargo test --test schedules -- --ignored every_minute`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes about 5 minutes of wall-clock time"]
async fn an_every_minute_schedule_launches_once_a_minute_across_leader_kills() {
    let mut t = secure_cluster(3, &[("a", 2)]).await;
    let client = t.client();
    let env = t.cluster.client_env();
    let (code, _, stderr) = cli_with(&env, &["schedule", "add", "minute", "--cron", "* * * * *", "--", "echo", "tick"]);
    assert_eq!(code, 0, "{stderr}");
    let minute = Duration::from_secs(90);
    for round in 0..3 {
        wait_until(&t, "the next minute's launch", minute, || async {
            launches(&client, "minute").await.len() > round
        })
        .await;
        if round == 1 {
            // Just before the next minute starts: it begins while no leader can commit.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
            let into = Duration::from_millis((now.as_millis() % 60_000) as u64);
            tokio::time::sleep(Duration::from_millis(59_700).saturating_sub(into)).await;
        }
        let leader = t.cluster.wait_leader(LONG).await.unwrap_or_else(|| t.fail("no leader"));
        t.cluster.kill_master(leader);
        t.cluster.wait_leader(LONG).await.unwrap_or_else(|| t.fail("no new leader"));
        t.cluster.start_master(leader).expect("restart the killed master");
    }
    wait_until(&t, "a launch under the last leader", minute, || async { launches(&client, "minute").await.len() > 3 })
        .await;
    let (code, _, stderr) = cli_with(&env, &["schedule", "remove", "minute"]);
    assert_eq!(code, 0, "{stderr}");

    let events = launches(&client, "minute").await;
    let periods: Vec<&str> = events.iter().map(|e| e.period.as_deref().expect("period")).collect();
    let minutes: Vec<u32> = periods
        .iter()
        .map(|p| {
            assert_eq!(&p[17..19], "00", "{p} is not on the minute");
            let (h, m): (u32, u32) = (p[11..13].parse().expect("hour"), p[14..16].parse().expect("minute"));
            h * 60 + m
        })
        .collect();
    assert!(minutes.windows(2).all(|w| (w[1] + 1440 - w[0]) % 1440 == 1), "not one launch per minute: {periods:?}");
    let jobs: BTreeSet<u64> = events.iter().map(|e| e.job.expect("job")).collect();
    assert_eq!(jobs.len(), events.len(), "two launches share a job: {periods:?}");
    eprintln!("launched once each: {periods:?}");
}
