//! Leader duties: what only the active master does, restarted from the replicated state by
//! every new leader.
//!
//! - note the election in the journal (this also makes sure the leader's state is current);
//! - schedule: plan from the state, commit the plan, push the committed runs to workers;
//! - watch worker liveness: a worker silent for `worker_timeout` is declared lost;
//! - watch the other masters and journal when one becomes unreachable or returns.
//!
//! Each duty stops when the leadership's token is cancelled.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use flotilla_core::command::Assigned;
use flotilla_core::scheduler;
use flotilla_core::state::WorkerState;
use flotilla_core::{Command, Response};
use flotilla_proto::wire::{MasterBody, RunTask};

use crate::node::{Leadership, Master};
use crate::proposer::ProposeError;

/// Most placements in one plan (one log entry).
const MAX_PLAN: usize = 2048;

/// Follows Raft's view of who leads and starts or stops the duties.
pub async fn watch_leadership(master: Arc<Master>, shutdown: CancellationToken) {
    let mut metrics = master.raft.metrics();
    let lease_ms = master.config.raft.election_max.as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            // A leader that has not heard from a quorum within the lease may already be
            // replaced on the other side of a partition: it stops acting as leader (closing
            // worker sessions so workers find the new one) until a quorum answers again.
            let quorum_fresh = m.millis_since_quorum_ack.is_none_or(|ms| ms <= lease_ms);
            (
                m.state == ServerState::Leader && m.current_leader == Some(master.config.id) && quorum_fresh,
                m.current_term,
            )
        };
        let current = master.leadership();
        match (leading, current) {
            (true, Some(l)) if l.term == term => {}
            (true, previous) => {
                if let Some(p) = previous {
                    p.cancel.cancel();
                }
                master.sessions.clear();
                let (ready_tx, ready) = tokio::sync::watch::channel(false);
                let lead = Leadership { term, cancel: shutdown.child_token(), ready };
                master.set_leadership(Some(lead.clone()));
                tracing::info!(term, "became leader");
                tokio::spawn(lead_term(master.clone(), lead, ready_tx));
            }
            (false, Some(l)) => {
                tracing::info!(term = l.term, "no longer leader");
                l.cancel.cancel();
                master.set_leadership(None);
                master.sessions.clear();
            }
            (false, None) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
    }
    if let Some(l) = master.set_leadership(None) {
        l.cancel.cancel();
    }
    master.sessions.clear();
}

async fn lead_term(master: Arc<Master>, lead: Leadership, ready: tokio::sync::watch::Sender<bool>) {
    // The election note doubles as a barrier: once it is applied, this leader's state holds
    // every entry committed before it took over.
    loop {
        match master.proposer.propose_one(Command::LeaderElected { node: master.config.id }).await {
            Ok(_) => break,
            Err(ProposeError::NotLeader { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot note the election yet");
                tokio::select! {
                    _ = lead.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    ready.send_replace(true);
    tracing::info!(term = lead.term, "leader ready");
    tokio::spawn(schedule(master.clone(), lead.clone()));
    tokio::spawn(watch_workers(master.clone(), lead.clone()));
    tokio::spawn(watch_masters(master, lead));
}

/// Plans whenever the state changes (and on a slow tick), commits the plan, pushes the runs.
async fn schedule(master: Arc<Master>, lead: Leadership) {
    let mut applied = master.shared.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let placements = {
            let data = master.shared.read();
            scheduler::plan(&data.state, MAX_PLAN)
        };
        if !placements.is_empty() {
            let planned = std::time::Instant::now();
            match master.proposer.propose_one(Command::Assign { placements }).await {
                Ok(Response::Assigned { runs }) => {
                    master.metrics.observe_placement(planned.elapsed(), runs.len());
                    push_runs(&master, &runs)
                }
                Ok(other) => tracing::error!(?other, "unexpected response to a plan"),
                Err(ProposeError::NotLeader { .. }) => return,
                Err(e) => tracing::warn!(error = %e, "plan not committed"),
            }
            // Applying the plan changes the state, so the wait below returns at once and the
            // next round places whatever the capped plan left over.
        }
        tokio::select! {
            _ = lead.cancel.cancelled() => return,
            _ = applied.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

/// Sends committed assignments to their workers' sessions, one message per worker.
pub fn push_runs(master: &Master, runs: &[Assigned]) {
    let mut by_worker: BTreeMap<&str, Vec<MasterBody>> = BTreeMap::new();
    {
        let data = master.shared.read();
        for run in runs {
            if let Some(msg) = RunTask::for_attempt(&data.state, run.task, run.fence) {
                by_worker.entry(run.worker.as_str()).or_default().push(MasterBody::Run(msg));
            }
        }
    }
    for (worker, bodies) in by_worker {
        if let Some(body) = MasterBody::batch(bodies) {
            master.sessions.send(worker, body);
        }
    }
}

/// Declares lost every ready worker this leader has not heard from within the timeout.
async fn watch_workers(master: Arc<Master>, lead: Leadership) {
    let timeout = master.config.worker_timeout;
    let period = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut proposed: HashSet<(String, u64)> = HashSet::new();
    loop {
        tokio::select! {
            _ = lead.cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let silent = {
            let data = master.shared.read();
            // Forget proposals that took effect (or whose worker came back as a new incarnation).
            proposed.retain(|(name, incarnation)| {
                data.state.worker(name).is_some_and(|w| w.state == WorkerState::Ready && w.incarnation == *incarnation)
            });
            let ready = data.state.workers().filter(|w| w.state == WorkerState::Ready);
            master.sessions.silent(ready.map(|w| (w.name.as_str(), w.incarnation)), timeout)
        };
        for (name, incarnation, silent) in silent {
            if proposed.contains(&(name.clone(), incarnation)) {
                continue;
            }
            proposed.insert((name.clone(), incarnation));
            // Close its session too: if it is only paused, it reconnects and re-registers.
            master.sessions.forget(&name);
            let reason = format!("no heartbeat for {:.1}s", silent.as_secs_f64());
            tracing::warn!(worker = %name, %reason, "worker lost");
            let master = master.clone();
            tokio::spawn(async move {
                let cmd = Command::WorkerLost { name, incarnation, reason };
                if let Err(e) = master.proposer.propose_one(cmd).await {
                    tracing::warn!(error = %e, "could not record a lost worker");
                }
            });
        }
    }
}

/// Journals masters that stop answering (and come back), as seen from the leader.
async fn watch_masters(master: Arc<Master>, lead: Leadership) {
    const FAILURES_BEFORE_UNREACHABLE: u32 = 2;
    let mut failures: BTreeMap<u64, u32> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = lead.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (id, address) in master.members() {
            if id == master.config.id {
                continue;
            }
            let ok = master.fetch_node_info(&address, Duration::from_millis(400)).await.is_ok();
            let count = failures.entry(id).or_insert(0);
            *count = if ok { 0 } else { count.saturating_add(1) };
            let known_unreachable = master.shared.read().state.unreachable_masters().contains(&id);
            let change = if ok && known_unreachable {
                Some(true)
            } else if !ok && *count >= FAILURES_BEFORE_UNREACHABLE && !known_unreachable {
                Some(false)
            } else {
                None
            };
            if let Some(reachable) = change {
                let _ = master.proposer.propose_one(Command::MasterReachability { node: id, reachable }).await;
            }
        }
    }
}
