//! Finished jobs leave the state by retention or purge, on every master alike; tested on real
//! processes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use flotilla_client::Client;
use flotilla_proto::api::{EventType, JobQuery, JobState, SubmitRequest};

/// The jobs one master's own replica holds (a stale read from that master alone).
async fn jobs_on(address: &str) -> Option<BTreeSet<u64>> {
    let client = Client::new(vec![address.to_string()], None).ok()?;
    Some(client.jobs(true).await.ok()?.into_iter().map(|j| j.id).collect())
}

/// Invariants: with a retention of 10 finished jobs, every master ends holding the same 10
/// newest jobs (removal is part of applying the log); a removed job answers "removed" with
/// when and why, not "no job"; a purge removes a finished job once (a retry reports it as
/// already removed), refuses a running one and an unknown id, and across a leader SIGKILL
/// still removes its job once; the journal keeps each removed job's summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_master_removes_the_same_jobs() {
    let mut t = cluster(3, &[("a", 2)], &[]).await;
    let client = t.client();
    let masters = t.cluster.master_list();

    let (code, _, err) = cli(&masters, &["job", "retention", "--max-finished", "5"]);
    assert_ne!(code, 0);
    assert!(err.contains("between 10 and"), "{err}");
    let (code, _, err) = cli(&masters, &["job", "retention", "--max-age", "10s"]);
    assert_ne!(code, 0);
    assert!(err.contains("at least 1 minute"), "{err}");
    let (code, out, err) = cli(&masters, &["job", "retention", "--max-finished", "10"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("at most 10, for 1d after they finish"), "{out}");

    let quick = SubmitRequest { command: vec!["true".into()], ..Default::default() };
    let mut ids = Vec::new();
    for _ in 0..15 {
        let id = client.submit(&quick).await.expect("submit").id;
        wait_job(&t, &client, id, LONG).await;
        ids.push(id);
    }
    let newest: BTreeSet<u64> = ids[5..].iter().copied().collect();
    for id in 1..=3 {
        let address = t.cluster.address(id);
        wait_until(&t, &format!("master {id} holds the 10 newest jobs"), LONG, || async {
            jobs_on(&address).await.as_ref() == Some(&newest)
        })
        .await;
    }

    let (code, _, err) = cli(&masters, &["job", "show", &ids[0].to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("job {} was removed at", ids[0])), "{err}");
    assert!(err.contains("more finished jobs than the retention keeps"), "{err}");

    let running = client
        .submit(&SubmitRequest { command: vec!["sleep".into(), "30".into()], ..Default::default() })
        .await
        .expect("submit")
        .id;
    let last = ids[14].to_string();
    let (code, out, err) = cli(&masters, &["job", "purge", &last, &running.to_string(), "99999"]);
    assert_eq!(code, 1, "refused ids make the exit status 1: {out} {err}");
    assert!(out.contains(&format!("purged: {last}")), "{out}");
    assert!(err.contains(&format!("not finished (cancel first): {running}")), "{err}");
    assert!(err.contains("no such job: 99999"), "{err}");
    let again = client.purge(&[ids[14]]).await.expect("purge again");
    assert_eq!(again.already_removed, vec![ids[14]]);
    assert!(again.purged.is_empty());
    assert!(client.job(running, false).await.is_ok(), "a running job is never removed");

    let events = client.events(0, 10_000, Duration::ZERO, false).await.expect("events");
    let removed: BTreeSet<u64> =
        events.events.iter().filter(|e| e.kind == EventType::JobRemoved).filter_map(|e| e.job).collect();
    let expected: BTreeSet<u64> = ids[..5].iter().chain([&ids[14]]).copied().collect();
    assert_eq!(removed, expected, "one summary event per removed job");
    client.cancel(running).await.expect("cancel");

    // A purge sent as the leader dies is retried by the client until a new leader answers:
    // the job goes exactly once, on every master.
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    t.cluster.kill_master(leader);
    let target = ids[13];
    let out = client.purge(&[target]).await.expect("purge across the failover");
    assert_eq!(out.purged.len() + out.already_removed.len(), 1, "{out:?}");
    for id in (1..=3).filter(|id| *id != leader) {
        let address = t.cluster.address(id);
        wait_until(&t, &format!("master {id} dropped job {target}"), LONG, || async {
            jobs_on(&address).await.is_some_and(|jobs| !jobs.contains(&target) && jobs.contains(&ids[12]))
        })
        .await;
    }
}

/// Invariants: `GET /v1/jobs` pages newest first with a next-page token until the last page,
/// every job exactly once across pages; filters by state and name; bad parameters are
/// refused with clear errors; `job list` shows the newest 50 by default, `--limit`, `--all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_listings_page_newest_first_and_filter() {
    let t = cluster(1, &[("a", 2)], &[]).await;
    let client = t.client();
    let mut ids = Vec::new();
    for i in 0..25 {
        let name = if i % 5 == 0 { "fives" } else { "other" };
        let req = SubmitRequest { name: Some(name.into()), command: vec!["true".into()], ..Default::default() };
        ids.push(client.submit(&req).await.expect("submit").id);
    }
    for id in &ids {
        wait_job(&t, &client, *id, LONG).await;
    }
    let running = client
        .submit(&SubmitRequest { command: vec!["sleep".into(), "30".into()], ..Default::default() })
        .await
        .expect("submit")
        .id;

    let mut query = JobQuery { limit: Some(10), ..Default::default() };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.jobs_page(&query, false).await.expect("page");
        pages += 1;
        assert!(page.jobs.len() <= 10);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => query.before = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<u64> = ids.iter().copied().chain([running]).collect();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each job once");
    assert_eq!(pages, 3);

    let fives =
        client.jobs_page(&JobQuery { name: Some("fives".into()), ..Default::default() }, false).await.expect("by name");
    assert_eq!(fives.jobs.len(), 5);
    assert!(fives.next.is_none());
    let live = client
        .jobs_page(&JobQuery { state: Some(JobState::Running), ..Default::default() }, false)
        .await
        .expect("by state");
    assert_eq!(live.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![running]);

    let address = t.cluster.address(1);
    for (query, wanted) in [
        ("limit=0", "limit must be between 1 and 10000"),
        ("state=done", "state 'done' is not one of"),
        ("before=abc", "not a page token"),
    ] {
        let (status, body) = raw_http(&address, "GET", &format!("/v1/jobs?{query}"), &[], b"");
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(wanted), "{query}: {body}");
    }

    let masters = t.cluster.master_list();
    let (code, out, err) = cli(&masters, &["job", "list", "--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "a header and 3 jobs: {out}");
    assert!(err.contains("more jobs"), "{err}");
    let (code, out, _) = cli(&masters, &["job", "list", "--all", "--state", "succeeded", "--json"]);
    assert_eq!(code, 0);
    let all: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(25));
    let (code, _, err) = cli(&masters, &["job", "list", "--state", "done"]);
    assert_ne!(code, 0);
    assert!(err.contains("expected one of waiting, running"), "{err}");
    client.cancel(running).await.expect("cancel");
}
