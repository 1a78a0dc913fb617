//! Finished jobs leave the state by retention or purge, on every master alike; tested on real
//! processes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use flotilla_client::Client;
use flotilla_proto::api::{EventType, SubmitRequest};

/// The jobs one master's own replica holds (a stale read from that master alone).
async fn jobs_on(address: &str) -> Option<BTreeSet<u64>> {
    let client = Client::new(vec![address.to_string()], None).ok()?;
    Some(client.jobs(true).await.ok()?.into_iter().map(|j| j.id).collect())
}

/// Invariants: with a retention of 10 finished jobs, every master ends holding the same 10
/// newest jobs (removal is part of applying the log); a removed job answers "removed" with
/// when and why, not "no job"; a purge removes a finished job once (a retry reports it as
/// already removed), refuses a running one and an unknown id; the journal keeps each removed
/// job's summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_master_removes_the_same_jobs() {
    let t = cluster(3, &[("a", 2)], &[]).await;
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
}
