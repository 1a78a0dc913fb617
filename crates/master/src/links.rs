//! Round trips to the other masters, measured from every master.
//!
//! A leader measures its links with every replication call, but a follower sends Raft
//! nothing while the leader lives, and it needs the figures too: the watchdog spaces its
//! election by them, and status reports them from whichever master answers. So every master
//! asks each peer for `GET /v1/node` once a second and feeds the time the answer took to the
//! same per-peer estimate Raft's calls use. The client keeps its connections, so one probe is
//! one round trip (plus a read of the peer's Raft metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::node::Master;

const EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks every peer whose release this master does not know yet, now (a gated command just
/// after a start or an election need not wait for the next probe).
pub async fn ask_releases(master: &Arc<Master>) {
    let mut asks = tokio::task::JoinSet::new();
    for (id, address) in master.others().into_iter().filter(|(id, _)| master.releases.of(*id).is_none()) {
        let m = master.clone();
        asks.spawn(async move {
            if let Ok(info) = m.fetch_node_info(&address, PROBE_TIMEOUT).await {
                m.releases.record(id, info.version);
            }
        });
    }
    while asks.join_next().await.is_some() {}
}

/// Probes every peer once per [`EVERY`] until `shutdown`.
pub async fn probe(master: Arc<Master>, shutdown: CancellationToken) {
    // The first tick is at once: a new leader needs its peers' releases for gated commands.
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut asks = tokio::task::JoinSet::new();
        for (id, address) in master.others() {
            let m = master.clone();
            asks.spawn(async move {
                let started = Instant::now();
                // A failed or timed-out probe gives no sample (Karn's rule: its round trip is
                // unknown); unlike Raft's calls it does not back off their timeouts either.
                if let Ok(info) = m.fetch_node_info(&address, PROBE_TIMEOUT).await {
                    m.releases.record(id, info.version);
                    let now = Instant::now();
                    if let Some(slow) = m.rtts.sample(id, &address, now.saturating_duration_since(started), now) {
                        let election = (m.config.raft.election_min, m.config.raft.election_max);
                        flotilla_raft::network::warn_slow_link(m.config.id, &slow, &m.rtts, election);
                    }
                }
            });
        }
        while asks.join_next().await.is_some() {}
    }
}
