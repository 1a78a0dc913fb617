//! Masters across regions, on real processes: every link between nodes (master to master,
//! worker to master, client to master) goes through a relay that delays each direction by
//! 50–60 ms, a 100–120 ms round trip. Masters run with the default flags.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;
use flotilla_client::Client;
use flotilla_proto::api::{JobState, Role};

const ONE_WAY: std::ops::RangeInclusive<Duration> = Duration::from_millis(50)..=Duration::from_millis(60);

/// Every live master's (role, term), asked through the relays.
async fn views(t: &TestCluster, client: &Client) -> BTreeMap<u64, (Role, u64)> {
    let mut out = BTreeMap::new();
    for id in t.cluster.masters.keys() {
        if let Ok(info) = client.node(&t.cluster.address(*id)).await {
            out.insert(*id, (info.role, info.term));
        }
    }
    out
}

/// The highest term any live master reports.
async fn highest_term(t: &TestCluster, client: &Client) -> u64 {
    views(t, client).await.values().map(|(_, term)| *term).max().unwrap_or(0)
}

/// 3 masters and 2 workers, every link delayed to a 100–120 ms round trip, default flags.
/// Invariants: (a) while healthy, for about 10 s with a job running, the group keeps one
/// leader and its term does not change (no election); (b) after the leader is SIGKILLed a
/// new leader is elected in exactly one election (the term goes up by one) and keeps its
/// term; (c) both jobs finish with every task recorded exactly once, and the journal holds at
/// most one leader per term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_100_to_120_ms_apart_elect_commit_serve_and_fail_over_once() {
    let began = Instant::now();
    let mut relays: Vec<Relay> = Vec::new();
    let mut plan: BTreeMap<u64, (u16, u16)> = BTreeMap::new();
    for id in 1..=3u64 {
        let real = flotilla::local::free_port().expect("port");
        let relay = relay::start(real, ONE_WAY).await.expect("relay");
        plan.insert(id, (relay.port, real));
        relays.push(relay);
    }
    let mut t = cluster_with(3, &[("a", 2), ("b", 2)], &[], |c| {
        for (id, (relayed, real)) in &plan {
            c.ports.insert(*id, *relayed);
            c.listen_ports.insert(*id, *real);
        }
    })
    .await;
    let client = t.client();
    let Some(leader) = t.cluster.wait_leader(LONG).await else { t.fail("no leader") };
    let term = highest_term(&t, &client).await;
    eprintln!("leader {leader} in term {term} after {:?}", began.elapsed());

    // (a) Healthy: a job runs for a while; the leader and term stay.
    let first = client.submit(&squares_job(40, "0.5")).await.expect("submit").id;
    let healthy_until = Instant::now() + Duration::from_secs(10);
    let mut polls = 0;
    while Instant::now() < healthy_until {
        let v = views(&t, &client).await;
        let leaders: Vec<u64> = v.iter().filter(|(_, (role, _))| *role == Role::Leader).map(|(id, _)| *id).collect();
        if v.values().any(|(_, tm)| *tm != term) || leaders.iter().any(|l| *l != leader) {
            t.fail(&format!("an election while healthy: {v:?} (leader {leader}, term {term})"));
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = wait_job(&t, &client, first, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let rows = client.results(first, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 40, |i| (i * i).to_string());
    assert_eq!(highest_term(&t, &client).await, term, "no election while the first job ran");
    let status = client.status(false).await.expect("status");
    let rtts: Vec<String> = status.masters.iter().map(|m| format!("{}: {:?}", m.id, m.rtt_ms)).collect();
    eprintln!("healthy: {polls} polls, one leader; round trips from master {}: {rtts:?}", status.answered_by);
    assert!(
        status.masters.iter().filter(|m| m.id != status.answered_by).all(|m| m.rtt_ms.is_some_and(|r| r >= 90.0)),
        "each master's round trip is measured through the relays: {rtts:?}"
    );
    assert!(status.warnings.is_empty(), "120 ms is under the default timeouts' warning mark: {:?}", status.warnings);

    // (b) SIGKILL the leader mid-job: one election.
    let second = client.submit(&squares_job(60, "0.2")).await.expect("submit").id;
    wait_until(&t, "the second job starts", LONG, || async {
        client.job(second, false).await.is_ok_and(|j| j.tasks.succeeded >= 5)
    })
    .await;
    let killed = Instant::now();
    t.cluster.kill_master(leader);
    let Some(new_leader) = t.cluster.wait_leader(LONG).await else { t.fail("no new leader after the kill") };
    let failover = killed.elapsed();
    assert_ne!(new_leader, leader);

    // (c) The job finishes under the new leader, each task once.
    let job = wait_job(&t, &client, second, LONG).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let rows = client.results(second, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 60, |i| (i * i).to_string());
    let after = highest_term(&t, &client).await;
    eprintln!(
        "killed leader {leader}: master {new_leader} leads after {failover:?}; elections {} (term {term} -> {after}); \
         test took {:?}",
        after - term,
        began.elapsed()
    );
    assert_eq!(after, term + 1, "exactly one election for one leader kill");
    assert_one_leader_per_term(&client).await;
    drop(t);
    drop(relays);
}
