//! One scenario: start a cluster, run a workload with known answers, inject the scheduled
//! faults, heal, then check every invariant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use flotilla_client::Client;
use flotilla_proto::api::{EventType, JobState, MemberRole, Role, SubmitRequest, WorkerState};

use crate::cluster::{master_name, Cluster};
use crate::faults::{Fault, JobPlan, Kind, Schedule};
use crate::lin;
use flotilla_core::rng::Rng;

/// How long after the jobs finished the cluster must have converged.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// How long jobs may take to finish after the faults heal.
pub const FINISH_WITHIN: Duration = Duration::from_secs(120);

pub struct Outcome {
    pub faults: usize,
    pub jobs: usize,
    pub tasks: u64,
    pub converged_in: Option<Duration>,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

/// What clients saw, for the linearizability check.
#[derive(Default)]
struct History {
    events: Vec<lin::Event>,
}

struct Shared {
    history: Mutex<History>,
    /// term -> masters that said they led it.
    leaders: Mutex<BTreeMap<u64, BTreeSet<u64>>>,
    start: Instant,
    /// Set when the background tasks of the scenario should end.
    stop: AtomicBool,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

pub async fn run(cluster: &mut Cluster, schedule: &Schedule) -> anyhow::Result<Outcome> {
    let mut notes = Vec::new();
    let mut violations = Vec::new();
    let disk_master = schedule.faults.iter().any(|f| f.kind == Kind::DiskFull).then_some(schedule.masters);
    if let Some(id) = disk_master {
        cluster.mount_small_disk(id, 48)?;
    }
    for id in cluster.master_ids.clone() {
        cluster.start_master(id)?;
    }
    let client = cluster.client()?;
    wait_for(Duration::from_secs(60), "a leader", || async { leader(cluster).await.is_some() }).await?;
    for name in cluster.worker_names.clone() {
        cluster.start_worker(&name)?;
    }
    let workers = cluster.worker_names.len();
    wait_for(Duration::from_secs(60), "workers ready", || async {
        client
            .status(false)
            .await
            .is_ok_and(|s| s.workers.iter().filter(|w| w.state == WorkerState::Ready).count() >= workers)
    })
    .await?;

    let shared = Arc::new(Shared {
        history: Mutex::new(History::default()),
        leaders: Mutex::new(BTreeMap::new()),
        start: Instant::now(),
        stop: Default::default(),
    });
    let observer = tokio::spawn(observe_leaders(
        shared.clone(),
        cluster.master_ids.iter().map(|id| (*id, cluster.master_addr(*id))).collect(),
        cluster.token.clone(),
        cluster.identity.clone(),
    ));
    let reader = tokio::spawn(read_jobs(shared.clone(), cluster.client()?));
    let purger = tokio::spawn(purge_jobs(shared.clone(), cluster.client()?));

    // Jobs: all but the last now, the last while the first fault is active.
    let mut plans: BTreeMap<u64, JobPlan> = BTreeMap::new();
    let (first_jobs, late_job) = schedule.jobs.split_at(schedule.jobs.len() - 1);
    let mut unknown_submits = 0usize;
    for plan in first_jobs {
        match submit(&shared, &client, plan).await {
            Some(id) => {
                plans.insert(id, plan.clone());
            }
            None => unknown_submits += 1,
        }
    }

    for (k, fault) in schedule.faults.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(fault.after_ms)).await;
        let applied = if k == 0 {
            // The last job is submitted while the first fault holds.
            let late = async {
                tokio::time::sleep(Duration::from_millis(fault.hold_ms / 2)).await;
                submit(&shared, &client, &late_job[0]).await
            };
            let (applied, id) = tokio::join!(inject(cluster, &client, fault, &mut notes, &mut violations), late);
            match id {
                Some(id) => {
                    plans.insert(id, late_job[0].clone());
                }
                None => unknown_submits += 1,
            }
            applied
        } else {
            inject(cluster, &client, fault, &mut notes, &mut violations).await
        };
        if let Err(e) = applied {
            violations.push(format!("fault {} could not be applied or healed: {e:#}", fault.kind.name()));
        }
    }
    if schedule.faults.is_empty() {
        if let Some(id) = submit(&shared, &client, &late_job[0]).await {
            plans.insert(id, late_job[0].clone());
        }
    }

    // Heal everything and bring every node back.
    let _ = cluster.net.heal_all();
    for id in cluster.master_ids.clone() {
        cluster.pause_master(id, false);
        if !cluster.masters.contains_key(&id) || cluster.master_exited(id).is_some() {
            cluster.masters.remove(&id);
            if let Some(dir) = Some(id).filter(|i| disk_master == Some(*i)) {
                let _ = cluster.free_disk(dir);
            }
            cluster.start_master(id)?;
        }
    }
    for name in cluster.worker_names.clone() {
        cluster.pause_worker(&name, false);
        if !cluster.workers.contains_key(&name) {
            cluster.start_worker(&name)?;
        }
    }
    let healed_at = Instant::now();

    // Every job that exists must finish.
    let finished = wait_for(FINISH_WITHIN, "all jobs finished", || async {
        client.jobs(false).await.is_ok_and(|jobs| jobs.iter().all(|j| j.state.is_terminal()))
    })
    .await;
    if let Err(e) = finished {
        violations.push(format!("{e:#}"));
    }
    let converged_in = match converge(cluster, &client, healed_at, Instant::now() + CONVERGE_WITHIN).await {
        Ok(d) => Some(d),
        Err(e) => {
            violations.push(format!("{e:#}"));
            None
        }
    };
    shared.stop.store(true, Ordering::SeqCst);
    let _ = reader.await;
    let _ = observer.await;
    let purged = purger.await.unwrap_or_default();
    if purged.removed > 0 {
        notes.push(format!("{} finished jobs purged during the faults", purged.removed));
    }
    // One last read, after everything settled.
    let _ = list(&shared, &client).await;

    let tasks = check_jobs(&client, &plans, &purged.submitted, unknown_submits + purged.unknown, &mut violations).await;
    let fetched = check_outputs(&client, &plans, &cluster.dir, &mut violations).await;
    notes.push(format!("{fetched} outputs fetched and checked"));
    check_leaders(&client, &shared, &mut notes, &mut violations).await;
    let history = std::mem::take(&mut shared.history.lock().unwrap_or_else(|p| p.into_inner()).events);
    if let Err(e) = lin::check(&history) {
        violations.push(format!("client history is not linearizable: {e}"));
        // The history, for the post-mortem (kept with the scenario's logs).
        let text: Vec<String> = history.iter().map(|e| format!("{e:?}")).collect();
        let _ = std::fs::write(cluster.dir.join("history.txt"), text.join("\n"));
    }
    Ok(Outcome { faults: schedule.faults.len(), jobs: plans.len(), tasks, converged_in, violations, notes })
}

async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The id of the master that says it leads, if one does.
async fn leader(cluster: &Cluster) -> Option<u64> {
    let client = cluster.client().ok()?;
    for id in &cluster.master_ids {
        if cluster.masters.get(id).is_none_or(|p| p.paused) {
            continue;
        }
        if let Ok(info) = client.node(&cluster.master_addr(*id)).await {
            if info.role == Role::Leader {
                return Some(*id);
            }
        }
    }
    None
}

async fn submit(shared: &Shared, client: &Client, plan: &JobPlan) -> Option<u64> {
    let request = SubmitRequest {
        command: plan.command(),
        array: Some(format!("1-{}", plan.tasks)),
        retries: Some(if plan.flaky { 2 } else { 0 }),
        reduce: Some("awk '{s+=$1} END {print s}'".into()),
        ..Default::default()
    };
    submit_recorded(shared, client, &request).await
}

/// Submits `request` and records the submit in the history; the id, if the outcome is known.
async fn submit_recorded(shared: &Shared, client: &Client, request: &SubmitRequest) -> Option<u64> {
    let invoke = shared.micros();
    let answer = client.submit(request).await;
    let complete = shared.micros();
    let id = answer.ok().map(|s| s.id);
    shared.history.lock().unwrap_or_else(|p| p.into_inner()).events.push(lin::Event {
        op: lin::Op::Submit { id },
        invoke,
        complete: id.map(|_| complete),
    });
    id
}

async fn list(shared: &Shared, client: &Client) -> bool {
    let invoke = shared.micros();
    let Ok(jobs) = client.jobs(false).await else { return false };
    let complete = shared.micros();
    let mut h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
    // Keep the history within the checker's reach (the purger adds at most 12 more).
    if h.events.len() < 110 {
        h.events.push(lin::Event {
            op: lin::Op::List { ids: jobs.iter().map(|j| j.id).collect() },
            invoke,
            complete: Some(complete),
        });
    }
    true
}

/// What the purger did.
#[derive(Default)]
struct Purged {
    /// Its jobs whose submission was acknowledged (not checked like the workload's).
    submitted: BTreeSet<u64>,
    /// Its submissions of unknown outcome.
    unknown: usize,
    removed: usize,
}

/// Purges at most this many jobs a scenario (each costs two operations of the history).
const PURGES: usize = 6;

/// While the faults run: submits a one-task job, waits for it to finish, purges it, again and
/// again. Removal thus happens during failovers; the history records submits and purges, so
/// the linearizability check covers them (a purged job leaves every later listing, and is
/// removed once).
async fn purge_jobs(shared: Arc<Shared>, client: Client) -> Purged {
    let client = client.with_retry_for(Duration::from_secs(5));
    let mut out = Purged::default();
    let job = SubmitRequest { command: vec!["true".into()], ..Default::default() };
    while !shared.stop.load(Ordering::SeqCst) && out.submitted.len() + out.unknown < PURGES {
        let Some(id) = submit_recorded(&shared, &client, &job).await else {
            out.unknown += 1;
            continue;
        };
        out.submitted.insert(id);
        let finished = wait_for(Duration::from_secs(30), "a purger job finished", || async {
            client.job(id, false).await.is_ok_and(|j| j.state.is_terminal())
        })
        .await;
        if finished.is_err() {
            continue;
        }
        let invoke = shared.micros();
        let answer = client.purge(&[id]).await;
        let complete = shared.micros();
        let removed = match &answer {
            Ok(o) if o.purged.contains(&id) => Some(true),
            Ok(o) if o.already_removed.contains(&id) => Some(false),
            // Refused (it is finished, so this would be a bug the check below reports).
            Ok(_) => Some(false),
            Err(_) => None,
        };
        out.removed += usize::from(removed == Some(true));
        shared.history.lock().unwrap_or_else(|p| p.into_inner()).events.push(lin::Event {
            op: lin::Op::Purge { job: id, removed },
            invoke,
            complete: removed.map(|_| complete),
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out
}

async fn read_jobs(shared: Arc<Shared>, client: Client) {
    let client = client.with_retry_for(Duration::from_secs(2));
    while !shared.stop.load(Ordering::SeqCst) {
        list(&shared, &client).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// Polls every master's own view; records which masters claimed to lead which term.
async fn observe_leaders(
    shared: Arc<Shared>,
    masters: Vec<(u64, String)>,
    token: String,
    identity: Arc<flotilla_tls::Identity>,
) {
    let Ok(client) = Client::with_identity(vec![masters[0].1.clone()], Some(&token), Some(identity)) else { return };
    while !shared.stop.load(Ordering::SeqCst) {
        for (id, addr) in &masters {
            if let Ok(info) = client.node(addr).await {
                if info.role == Role::Leader {
                    shared.leaders.lock().unwrap_or_else(|p| p.into_inner()).entry(info.term).or_default().insert(*id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After healing (and once the jobs are done, so that the log stops moving): one leader,
/// every master at the same applied index, every worker ready. Returns the time since `since`.
async fn converge(cluster: &Cluster, client: &Client, since: Instant, deadline: Instant) -> anyhow::Result<Duration> {
    loop {
        let mut applied = BTreeSet::new();
        let mut leaders = 0;
        let mut all = true;
        for id in &cluster.master_ids {
            match client.node(&cluster.master_addr(*id)).await {
                Ok(info) => {
                    applied.insert(info.last_applied);
                    leaders += usize::from(info.role == Role::Leader);
                }
                Err(_) => all = false,
            }
        }
        let ready = client
            .status(false)
            .await
            .map(|s| s.workers.iter().filter(|w| w.state == WorkerState::Ready).count())
            .unwrap_or(0);
        if all && leaders == 1 && applied.len() == 1 && ready == cluster.worker_names.len() {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "cluster did not converge: masters answering: {all}, leaders: {leaders}, applied indices: {applied:?}, ready workers: {ready}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every acknowledged job finished with every task recorded exactly once, from its latest
/// attempt, with the right output; jobs with unknown submissions, if they exist, likewise.
async fn check_jobs(
    client: &Client,
    plans: &BTreeMap<u64, JobPlan>,
    throwaway: &BTreeSet<u64>,
    unknown: usize,
    violations: &mut Vec<String>,
) -> u64 {
    let mut tasks = 0;
    let jobs = match client.jobs(false).await {
        Ok(j) => j,
        Err(e) => {
            violations.push(format!("cannot list jobs: {e}"));
            return 0;
        }
    };
    for id in plans.keys() {
        if !jobs.iter().any(|j| j.id == *id) {
            violations.push(format!("acknowledged job {id} does not exist"));
        }
    }
    let extra = jobs.iter().filter(|j| !plans.contains_key(&j.id) && !throwaway.contains(&j.id)).count();
    if extra > unknown {
        violations
            .push(format!("{extra} jobs nobody acknowledged, but only {unknown} submissions had unknown outcomes"));
    }
    for (id, plan) in plans {
        let Ok(job) = client.job(*id, false).await else { continue };
        if job.state != JobState::Succeeded {
            violations.push(format!("job {id} is {} ({:?})", job.state, job.failure));
            continue;
        }
        let rows = match client.results(*id, 0, None, false).await {
            Ok(r) => r,
            Err(e) => {
                violations.push(format!("job {id}: cannot read results: {e}"));
                continue;
            }
        };
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &rows {
            *seen.entry(r.index).or_default() += 1;
            tasks += 1;
            if r.stdout.trim() != plan.expected(r.index).to_string() {
                violations.push(format!(
                    "job {id} task {}: output {:?}, expected {}",
                    r.index,
                    r.stdout.trim(),
                    plan.expected(r.index)
                ));
            }
            if r.attempt != Some(r.attempts) {
                violations.push(format!(
                    "job {id} task {}: recorded result is from attempt {:?} but {} attempts were made (a fenced attempt's result)",
                    r.index, r.attempt, r.attempts
                ));
            }
        }
        let wrong: Vec<u64> = (1..=plan.tasks).filter(|i| seen.get(i) != Some(&1)).collect();
        if !wrong.is_empty() || seen.len() as u64 != plan.tasks {
            violations.push(format!("job {id}: tasks not recorded exactly once: {:?}", &wrong[..wrong.len().min(10)]));
        }
        let expected_sum: u64 = (1..=plan.tasks).map(|i| plan.expected(i)).sum();
        match client.result(*id, false).await.ok().and_then(|r| r.result) {
            Some(r) if r.trim() == expected_sum.to_string() => {}
            other => violations.push(format!("job {id}: reduce result {other:?}, expected {expected_sum}")),
        }
    }
    tasks
}

/// Leaders follow openraft's rule. A leader is identified by (term, node id), and within one
/// term a candidate with a higher node id may still win after a lower one did (openraft's
/// default, without `single-term-leader`): so within a term, the journal's elections go up in
/// node id, never back to a lower one (a leader whose first election entry failed to commit
/// writes another: the same id again).
/// Two masters seen leading one term are noted, not a violation: the later one's vote is the
/// greater, and the earlier one steps down as soon as it sees it.
async fn check_leaders(client: &Client, shared: &Shared, notes: &mut Vec<String>, violations: &mut Vec<String>) {
    let observed = shared.leaders.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (term, nodes) in &observed {
        if nodes.len() > 1 {
            notes.push(format!("masters {nodes:?} each led term {term} in turn (openraft orders them by node id)"));
        }
    }
    let Ok(events) = client.events(0, 10_000, Duration::ZERO, false).await else {
        violations.push("cannot read the journal".into());
        return;
    };
    let mut journal: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in events.events.iter().filter(|e| e.kind == EventType::LeaderElected) {
        if let (Some(t), Some(n)) = (e.term, e.node) {
            journal.entry(t).or_default().push(n);
        }
    }
    for (term, nodes) in &journal {
        if nodes.windows(2).any(|w| w[1] < w[0]) {
            violations.push(format!("journal: in term {term} masters were elected in the order {nodes:?}"));
        }
    }
    // No assignment from a deposed leader: every recorded result's term had an elected leader
    // that wrote its election entry first.
    let Ok(jobs) = client.jobs(false).await else { return };
    for j in jobs {
        let Ok(rows) = client.results(j.id, 0, None, false).await else { continue };
        for r in rows {
            if let Some(term) = r.term {
                if !journal.contains_key(&term) {
                    violations.push(format!(
                        "job {} task {}: assigned in term {term}, which has no elected leader",
                        j.id, r.index
                    ));
                }
            }
        }
    }
}

/// Injects one fault, holds it, heals it.
async fn inject(
    cluster: &mut Cluster,
    client: &Client,
    fault: &Fault,
    notes: &mut Vec<String>,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    let hold = Duration::from_millis(fault.hold_ms);
    // The previous fault may have left an election going: wait for its outcome.
    let mut leader_id = None;
    for _ in 0..300 {
        leader_id = leader(cluster).await;
        if leader_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader_id = leader_id.context("no leader within 30 s to aim the fault at")?;
    let followers: Vec<u64> = cluster.master_ids.iter().copied().filter(|id| *id != leader_id).collect();
    let mut frng = Rng::new(fault.salt);
    match fault.kind {
        Kind::KillLeader => {
            cluster.kill_master(leader_id);
            tokio::time::sleep(hold).await;
            cluster.start_master(leader_id)?;
        }
        Kind::KillMaster => {
            let id = *frng.pick(&cluster.master_ids.clone());
            cluster.kill_master(id);
            tokio::time::sleep(hold).await;
            cluster.start_master(id)?;
        }
        Kind::KillTwoMasters => {
            let other = *frng.pick(&followers);
            cluster.kill_master(leader_id);
            cluster.kill_master(other);
            tokio::time::sleep(hold).await;
            cluster.start_master(leader_id)?;
            cluster.start_master(other)?;
        }
        Kind::PauseLeader => {
            cluster.pause_master(leader_id, true);
            tokio::time::sleep(hold).await;
            cluster.pause_master(leader_id, false);
        }
        Kind::PauseWorker | Kind::IsolateWorker | Kind::RestartWorker => {
            let name =
                busiest_worker(cluster, client).await.unwrap_or_else(|| frng.pick(&cluster.worker_names).clone());
            match fault.kind {
                Kind::PauseWorker => {
                    cluster.pause_worker(&name, true);
                    tokio::time::sleep(hold).await;
                    cluster.pause_worker(&name, false);
                }
                Kind::IsolateWorker => {
                    let masters: Vec<String> = cluster.master_ids.iter().map(|id| master_name(*id)).collect();
                    cluster.net.partition(std::slice::from_ref(&name), &masters)?;
                    tokio::time::sleep(hold).await;
                    cluster.net.heal_all()?;
                }
                _ => {
                    cluster.kill_worker(&name);
                    tokio::time::sleep(hold).await;
                    cluster.start_worker(&name)?;
                }
            }
        }
        Kind::KillHolder => {
            let name = match holders(client).await.into_iter().max_by_key(|(_, n)| *n) {
                Some((name, _)) if cluster.workers.contains_key(&name) => name,
                _ => frng.pick(&cluster.worker_names).clone(),
            };
            notes.push(format!("kill-holder: worker {name}"));
            cluster.kill_worker(&name);
            tokio::time::sleep(hold).await;
            cluster.start_worker(&name)?;
        }
        Kind::CorruptArtifact => {
            // A copy that a fetch reads first (the first holder's), so the check reads it.
            let mut damaged = None;
            for _ in 0..100 {
                if let Some((job, task, worker, sha256)) = first_copy(client, &mut frng).await {
                    let blob =
                        cluster.dir.join(format!("worker-{worker}")).join("outputs").join(&sha256[..2]).join(&sha256);
                    if let Ok(meta) = std::fs::metadata(&blob) {
                        std::fs::write(&blob, vec![b'#'; meta.len() as usize])?;
                        damaged = Some((job, task, worker));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match damaged {
                Some((job, task, worker)) => notes.push(format!("corrupt-artifact: job {job} task {task} on {worker}")),
                None => notes.push("corrupt-artifact: no stored copy found to damage".to_string()),
            }
            tokio::time::sleep(hold).await;
        }
        Kind::PartitionLeader => {
            let others: Vec<String> = followers.iter().map(|id| master_name(*id)).collect();
            cluster.net.partition(&[master_name(leader_id)], &others)?;
            tokio::time::sleep(hold).await;
            cluster.net.heal_all()?;
        }
        Kind::MinorityIsland => {
            let size = if cluster.master_ids.len() >= 5 { 2 } else { 1 };
            let mut island = followers.clone();
            while island.len() > size {
                let drop = frng.range(0, island.len() as u64 - 1) as usize;
                island.remove(drop);
            }
            let island_names: Vec<String> = island.iter().map(|id| master_name(*id)).collect();
            let mut rest: Vec<String> =
                cluster.master_ids.iter().filter(|id| !island.contains(id)).map(|id| master_name(*id)).collect();
            rest.extend(cluster.worker_names.iter().cloned());
            cluster.net.partition(&island_names, &rest)?;
            tokio::time::sleep(hold).await;
            cluster.net.heal_all()?;
        }
        Kind::OneWayCut => {
            let to = *frng.pick(&followers);
            cluster.net.cut(&master_name(leader_id), &master_name(to))?;
            tokio::time::sleep(hold).await;
            cluster.net.heal_all()?;
        }
        Kind::WipeFollower | Kind::CorruptFollower => {
            let id = *frng.pick(&followers);
            cluster.kill_master(id);
            if fault.kind == Kind::WipeFollower {
                cluster.wipe_master(id)?;
            } else {
                cluster.corrupt_master(id, fault.salt)?;
            }
            tokio::time::sleep(hold).await;
            cluster.start_master(id)?;
            // It must come back as a follower holding the leader's state, never serving the
            // damaged data: wait until its applied index reaches the leader's.
            let addr = cluster.master_addr(id);
            let caught_up = wait_for(Duration::from_secs(60), "the rebuilt master to catch up", || async {
                let (Ok(me), Some(l)) = (client.node(&addr).await, leader(cluster).await) else { return false };
                let Ok(lead) = client.node(&cluster.master_addr(l)).await else { return false };
                me.role == Role::Follower
                    && me.last_applied.is_some()
                    && me.last_applied >= lead.last_applied.map(|a| a.saturating_sub(5))
            })
            .await;
            if let Err(e) = caught_up {
                violations.push(format!("{} of master {id}: {e:#}", fault.kind.name()));
            }
            if fault.kind == Kind::CorruptFollower {
                let log =
                    std::fs::read_to_string(cluster.dir.join("logs").join(format!("m{id}.log"))).unwrap_or_default();
                if log.contains("corrupt") {
                    notes.push(format!("master {id} detected its corrupt log and rebuilt from its peers"));
                } else {
                    notes.push(format!("master {id}: the corruption was not in data it reads at start"));
                }
            }
        }
        Kind::TransferLeader => match client.transfer_leadership(None).await {
            Ok(moved) => {
                notes.push(format!("leadership moved {} -> {} in {} ms", moved.from, moved.to, moved.took_ms));
                tokio::time::sleep(hold).await;
            }
            Err(e) => notes.push(format!("leadership transfer refused: {e}")),
        },
        Kind::RollingRestart => {
            let mut order = followers.clone();
            order.push(leader_id);
            for id in order {
                if !cluster.terminate_master(id, Duration::from_secs(15)) {
                    violations.push(format!("master {id} did not stop within 15 s of SIGTERM"));
                }
                let log =
                    std::fs::read_to_string(cluster.dir.join("logs").join(format!("m{id}.log"))).unwrap_or_default();
                if id == leader_id && log.contains("handed leadership over before stopping") {
                    notes.push(format!("leader {id} handed over before its restart"));
                }
                cluster.start_master(id)?;
                let addr = cluster.master_addr(id);
                let caught_up = wait_for(Duration::from_secs(60), "the restarted master to catch up", || async {
                    let (Ok(me), Some(l)) = (client.node(&addr).await, leader(cluster).await) else { return false };
                    let Ok(lead) = client.node(&cluster.master_addr(l)).await else { return false };
                    me.last_applied.is_some() && me.last_applied >= lead.last_applied.map(|a| a.saturating_sub(5))
                })
                .await;
                if let Err(e) = caught_up {
                    violations.push(format!("rolling restart of master {id}: {e:#}"));
                }
            }
        }
        Kind::DrainLeaderKill => {
            let name =
                busiest_worker(cluster, client).await.unwrap_or_else(|| frng.pick(&cluster.worker_names).clone());
            let deadline_ms = frng.range(0, 2_000);
            let drained = client.maintain_worker(&name, "drain", Some(deadline_ms)).await;
            cluster.kill_master(leader_id);
            tokio::time::sleep(hold).await;
            cluster.start_master(leader_id)?;
            match drained {
                Err(e) => notes.push(format!("drain of {name} not taken before the kill: {e}")),
                Ok(_) => {
                    // Invariant: a draining worker ends drained (its deadline passed long ago),
                    // whichever leader carries the drain on.
                    let done = wait_for(Duration::from_secs(60), "the worker to be drained", || async {
                        client
                            .workers(false)
                            .await
                            .is_ok_and(|ws| ws.iter().any(|w| w.name == name && w.state == WorkerState::Drained))
                    })
                    .await;
                    if let Err(e) = done {
                        violations.push(format!("drain of {name} through a leader kill: {e:#}"));
                    }
                }
            }
            if let Err(e) = client.maintain_worker(&name, "uncordon", None).await {
                violations.push(format!("cannot put {name} back in service: {e}"));
            }
        }
        Kind::RemoveDuringPartition => {
            let size = if cluster.master_ids.len() >= 5 { 2 } else { 1 };
            let island: Vec<u64> = followers.iter().copied().take(size).collect();
            let Some(other) = followers.iter().copied().find(|f| !island.contains(f)) else {
                return Ok(());
            };
            let island_names: Vec<String> = island.iter().map(|id| master_name(*id)).collect();
            let mut rest: Vec<String> =
                cluster.master_ids.iter().filter(|id| !island.contains(id)).map(|id| master_name(*id)).collect();
            rest.extend(cluster.worker_names.iter().cloned());
            cluster.net.partition(&island_names, &rest)?;
            match client.remove_master(other).await {
                Err(flotilla_client::ClientError::Api { status: 409, error }) if error.error.contains("quorum") => {
                    notes.push(format!("removing master {other} while {island:?} were cut off was refused"))
                }
                Err(e) => notes.push(format!("removing master {other} during the partition failed: {e}")),
                Ok(members) => violations.push(format!(
                    "master {other} was removed while {island:?} were cut off (no quorum would answer): {members:?}"
                )),
            }
            tokio::time::sleep(hold).await;
            cluster.net.heal_all()?;
            let voters = client.members().await.map(|m| m.len()).unwrap_or(0);
            if voters != cluster.master_ids.len() {
                violations.push(format!("the group has {voters} masters after a refused removal"));
            }
        }
        Kind::LearnerCutOff => {
            if cluster.master_ids.len() != 3 {
                notes.push("learner-cut-off needs a free master slot (3-master groups only)".into());
                return Ok(());
            }
            // A fresh id each time (a removed master's id is retired): the group's namespaces
            // have room for two more masters.
            let Some(id) = (4..=5).find(|id| !cluster.master_dir(*id).exists()) else {
                notes.push("learner-cut-off: both spare master slots were used in this scenario".into());
                return Ok(());
            };
            cluster.start_master_awaiting(id)?;
            let others: Vec<String> = cluster.master_ids.iter().map(|m| master_name(*m)).collect();
            cluster.net.partition(&[master_name(id)], &others)?;
            let adder = {
                let client = cluster.client()?;
                let address = cluster.master_addr(id);
                tokio::spawn(async move { client.add_master(id, &address).await })
            };
            // Cut off, it is a learner: it does not vote, and the group commits on.
            let learner = wait_for(Duration::from_secs(30), "the new master listed as a learner", || async {
                client.members().await.is_ok_and(|m| m.iter().any(|m| m.id == id && m.role == MemberRole::Learner))
            })
            .await;
            if let Err(e) = learner {
                violations.push(format!("learner-cut-off: {e:#}"));
            }
            tokio::time::sleep(hold).await;
            if adder.is_finished() {
                violations.push(format!("master {id} was added as a voter while it was cut off"));
            }
            // Another change while the add waits is refused; asking to remove the learner
            // itself harms nothing else should the refusal fail.
            match client.remove_master(id).await {
                Err(flotilla_client::ClientError::Api { status: 409, .. }) => {}
                other => violations.push(format!("a second change during the add was not refused: {other:?}")),
            }
            cluster.net.heal_all()?;
            match tokio::time::timeout(Duration::from_secs(90), adder).await {
                Ok(Ok(Ok(members))) if members.iter().any(|m| m.id == id && m.role == MemberRole::Voter) => {
                    notes.push(format!("cut-off learner {id} caught up and votes once healed"))
                }
                other => violations.push(format!("the cut-off learner {id} was not promoted after healing: {other:?}")),
            }
            if let Err(e) = client.remove_master(id).await {
                violations.push(format!("cannot remove master {id} again: {e}"));
            }
            cluster.kill_master(id);
        }
        Kind::DiskFull => {
            let id = cluster.master_ids.len() as u64;
            let filled = cluster.fill_disk(id)?;
            let deadline = Instant::now() + hold;
            let mut stopped = None;
            while Instant::now() < deadline {
                if let Some(status) = cluster.master_exited(id) {
                    stopped = Some(status);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if stopped.is_none() {
                tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
                stopped = cluster.master_exited(id);
            }
            let log = std::fs::read_to_string(cluster.dir.join("logs").join(format!("m{id}.log"))).unwrap_or_default();
            match stopped {
                Some(status) => {
                    if !log.contains("No space left") {
                        violations.push(format!("master {id} stopped on a full disk ({status}) without saying why"));
                    }
                    notes.push(format!(
                        "master {id} stopped on a full disk ({} MiB filled) with a clear error",
                        filled >> 20
                    ));
                }
                None => notes.push(format!("master {id} kept running on a full disk (nothing to write)")),
            }
            cluster.free_disk(id)?;
            if stopped.is_some() {
                cluster.masters.remove(&id);
                cluster.start_master(id)?;
            }
        }
    }
    Ok(())
}

/// Workers holding copies of outputs, with how many tasks' outputs each holds.
async fn holders(client: &Client) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for job in client.jobs(false).await.unwrap_or_default() {
        for task in client.job_outputs(job.id).await.map(|o| o.tasks).unwrap_or_default() {
            for h in task.holders {
                *counts.entry(h).or_default() += 1;
            }
        }
    }
    counts
}

/// A random task's `out.txt` as the first holder in service keeps it: (job, index, worker,
/// sha256).
async fn first_copy(client: &Client, rng: &mut Rng) -> Option<(u64, u64, String, String)> {
    let jobs = client.jobs(false).await.ok()?;
    let mut found = Vec::new();
    for job in jobs {
        for task in client.job_outputs(job.id).await.map(|o| o.tasks).unwrap_or_default() {
            let (Some(index), Some(first), Some(file)) =
                (task.index, task.available.first(), task.files.iter().find(|f| f.path == "out.txt"))
            else {
                continue;
            };
            found.push((job.id, index, first.clone(), file.sha256.clone()));
        }
    }
    if found.is_empty() {
        return None;
    }
    Some(rng.pick(&found).clone())
}

/// Invariants on the jobs' outputs, once the faults healed: every task of every job lists
/// its `out.txt` and `pad.bin`; every `out.txt` fetched through the API (from whichever copy
/// the masters read, hash-checked) holds exactly what the task wrote, damaged copies
/// included (the read finds them and reads another); and within the bound every task's
/// outputs are back on every worker (1 + 2 replicas: the cluster has 3), all in service, and
/// every copy counted holds the right bytes on its worker's disk.
async fn check_outputs(
    client: &Client,
    plans: &BTreeMap<u64, JobPlan>,
    dir: &std::path::Path,
    violations: &mut Vec<String>,
) -> u64 {
    let mut fetched = 0;
    for (id, plan) in plans {
        let outputs = match client.job_outputs(*id).await {
            Ok(o) => o,
            Err(e) => {
                violations.push(format!("job {id}: cannot list outputs: {e}"));
                continue;
            }
        };
        for index in 1..=plan.tasks {
            let Some(task) = outputs.tasks.iter().find(|t| t.index == Some(index)) else {
                violations.push(format!("job {id} task {index}: no outputs listed"));
                continue;
            };
            let names: BTreeSet<&str> = task.files.iter().map(|f| f.path.as_str()).collect();
            if names != BTreeSet::from(["out.txt", "pad.bin"]) {
                violations.push(format!("job {id} task {index}: outputs {names:?}"));
                continue;
            }
            let file = task.files.iter().find(|f| f.path == "out.txt").expect("listed");
            let dest = dir.join(format!("fetched-{id}-{index}"));
            // Read from every copy in turn (a fetch starts at the copy its attempt names), so
            // that a damaged one is read and found.
            let mut got = None;
            for attempt in 0..task.available.len().max(1) as u32 {
                if client.fetch_output(*id, &file.sha256, attempt, &dest, Duration::from_secs(30)).await.is_ok() {
                    got = got.or_else(|| std::fs::read_to_string(&dest).ok());
                }
            }
            let _ = std::fs::remove_file(&dest);
            fetched += 1;
            if got.as_deref() != Some(plan.expected_output(index).as_str()) {
                violations.push(format!(
                    "job {id} task {index}: fetched out.txt {got:?}, expected {:?}",
                    plan.expected_output(index)
                ));
            }
        }
    }
    let whole = wait_for(Duration::from_secs(60), "every output back on 3 workers", || async {
        for id in plans.keys() {
            let Ok(outputs) = client.job_outputs(*id).await else { return false };
            if outputs.tasks.iter().any(|t| t.holders.len() != 3 || t.available.len() != 3) {
                return false;
            }
        }
        true
    })
    .await;
    if let Err(e) = whole {
        let mut short = Vec::new();
        for id in plans.keys() {
            for t in client.job_outputs(*id).await.map(|o| o.tasks).unwrap_or_default() {
                if t.available.len() != 3 {
                    short.push(format!("{id}/{:?}: {:?} of {:?}", t.index, t.available, t.holders));
                }
            }
        }
        violations.push(format!("{e:#}: {:?}", &short[..short.len().min(10)]));
    }
    // No copy the cluster counts is damaged: each holder's stored bytes match their hash.
    for id in plans.keys() {
        for t in client.job_outputs(*id).await.map(|o| o.tasks).unwrap_or_default() {
            for f in &t.files {
                for h in &t.holders {
                    let blob = dir.join(format!("worker-{h}")).join("outputs").join(&f.sha256[..2]).join(&f.sha256);
                    let sound = flotilla_blobs::store::hash_file(&blob).is_ok_and(|d| d.to_hex() == f.sha256);
                    if !sound {
                        violations.push(format!(
                            "job {id} task {:?}: the copy of {} counted on {h} is damaged or missing",
                            t.index, f.path
                        ));
                    }
                }
            }
        }
    }
    fetched
}

/// The worker holding the most running tasks right now.
async fn busiest_worker(cluster: &Cluster, client: &Client) -> Option<String> {
    let status = client.status(false).await.ok()?;
    status
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready && cluster.workers.contains_key(&w.name))
        .max_by_key(|w| w.cpus_used)
        .filter(|w| w.cpus_used > 0)
        .map(|w| w.name.clone())
}
