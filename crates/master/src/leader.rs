//! Leader duties: what only the active master does, restarted from the replicated state by
//! every new leader.
//!
//! Raft's view of who leads goes to the sessions' core ([`crate::sessions`], deciding with
//! `flotilla_session::leader::LeaderCore`), which notes the election in the journal (making the
//! leader's state current), admits workers, schedules, pushes committed runs and declares
//! silent workers lost. This module also watches the other masters and journals when one
//! becomes unreachable or returns; that duty stops when the leadership's token is cancelled.
//! And it sends Raft's heartbeats ([`beat`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use flotilla_core::Command;

use crate::node::{Leadership, Master};

/// Follows Raft's view of who leads: tells the sessions' core and starts or stops the
/// leader's other duties.
pub async fn watch_leadership(master: Arc<Master>, shutdown: CancellationToken) {
    let mut metrics = master.raft.metrics();
    let lease_ms = master.config.raft.election_max.as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // The role last told to the sessions' core while following: (term, leader).
    let mut followed: Option<(u64, Option<u64>)> = None;
    loop {
        let (leading, term, leader) = {
            let m = metrics.borrow_and_update();
            // A leader that has not heard from a quorum within the lease may already be
            // replaced on the other side of a partition: it stops acting as leader (closing
            // worker sessions so workers find the new one) until a quorum answers again.
            let quorum_fresh = m.millis_since_quorum_ack.is_none_or(|ms| ms <= lease_ms);
            (
                m.state == ServerState::Leader && m.current_leader == Some(master.config.id) && quorum_fresh,
                m.current_term,
                m.current_leader,
            )
        };
        // Cheap when unchanged (the core compares); on a change every worker hears at once.
        master.sessions.set_masters(master.members().into_iter().map(|(_, address)| address).collect()).await;
        let current = master.leadership();
        match (leading, current) {
            (true, Some(l)) if l.term == term => {}
            (true, previous) => {
                if let Some(p) = previous {
                    p.end();
                }
                followed = None;
                let lead = Leadership::new(term, shutdown.child_token());
                master.set_leadership(Some(lead.clone()));
                tracing::info!(term, "became leader");
                master.sessions.lead(term).await;
                lead.tasks.spawn(watch_masters(master.clone(), lead.clone()));
                lead.tasks.spawn(crate::schedules::launch_periods(master.clone(), lead.clone()));
                lead.tasks.spawn(crate::autoscale::scale(master.clone(), lead.clone()));
            }
            (false, current) => {
                if let Some(l) = current {
                    tracing::info!(term = l.term, "no longer leader");
                    master.set_leadership(None);
                    l.end();
                }
                if followed != Some((term, leader)) {
                    followed = Some((term, leader));
                    master.sessions.follow(term, master.leader_address()).await;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
    }
    if let Some(l) = master.set_leadership(None) {
        l.end();
    }
}

/// Sends Raft heartbeats every `interval` while this master leads.
///
/// openraft's own heartbeat is off (its interval is the replication timeout; see
/// `flotilla_raft::config`). A trigger only fills an idle replication stream, so a follower
/// behind a link slower than `interval` gets one heartbeat per round trip, never a backlog.
/// This runs regardless of [`Leadership`]: a leader that lost its quorum must keep beating to
/// regain it.
pub async fn beat(raft: flotilla_raft::Raft, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leading = raft.metrics().borrow().state == ServerState::Leader;
        // Fails only once Raft has stopped, which the master's main loop reports.
        if leading && raft.trigger().heartbeat().await.is_err() {
            return;
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
        // Decisions from a state that misses entries of earlier terms would be stale.
        if master.sessions.ready_term() != Some(lead.term) {
            continue;
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
