//! Quick failover after a leader dies.
//!
//! openraft 0.9 lets a follower vote only after the leader's lease (the maximum election
//! timeout) has run out since its last heartbeat, and its own election timer then waits a
//! further random election timeout: about 1 s with the defaults. This watchdog starts the
//! election as soon as the lease has run out instead. Followers are staggered by rank (their
//! id's position among the members other than the silent leader), so one candidate normally
//! asks alone and wins at once; openraft's own timer remains the fallback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::node::Master;

/// When this master last heard from a leader (an AppendEntries call).
pub struct LeaderContact {
    base: Instant,
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact { base: Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl LeaderContact {
    pub fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

const MARGIN: Duration = Duration::from_millis(25);
const STAGGER: Duration = Duration::from_millis(60);

pub async fn run(master: Arc<Master>, shutdown: CancellationToken) {
    let lease = master.config.raft.election_max;
    let mut last_trigger: Option<Instant> = None;
    // Silence only counts since this master last saw who leads change: a master that was
    // leader itself, was paused, or just restarted has an old contact time, and must give the
    // leader it now follows a full lease before standing against it.
    let mut view: Option<(ServerState, Option<u64>, u64)> = None;
    let mut view_since = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let (state, leader, term, members) = {
            let metrics = master.raft.metrics();
            let m = metrics.borrow();
            let members: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (m.state, m.current_leader, m.current_term, members)
        };
        if view != Some((state, leader, term)) {
            view = Some((state, leader, term));
            view_since = Instant::now();
        }
        if !matches!(state, ServerState::Follower | ServerState::Candidate) || leader.is_none() {
            continue;
        }
        let mut others: Vec<u64> = members.into_iter().filter(|id| Some(*id) != leader).collect();
        others.sort_unstable();
        let Some(rank) = others.iter().position(|id| *id == master.config.id) else { continue };
        let silent = master.leader_contact.silent_for().min(view_since.elapsed());
        if silent < lease + MARGIN + STAGGER * rank as u32 {
            continue;
        }
        if last_trigger.is_some_and(|t| t.elapsed() < lease) {
            continue;
        }
        last_trigger = Some(Instant::now());
        tracing::info!(silent_ms = silent.as_millis() as u64, suspected = ?leader, "leader silent past its lease; starting an election");
        let _ = master.raft.trigger().elect().await;
    }
}
