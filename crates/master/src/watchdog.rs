//! Quick failover after a leader dies.
//!
//! openraft 0.9 lets a follower vote only after the leader's lease (the maximum election
//! timeout) has run out since its last heartbeat, and its own election timer then waits a
//! further random election timeout: about 1 s with the defaults. This watchdog starts the
//! election as soon as the lease has run out instead. Followers are staggered by rank (their
//! id's position among the members other than the silent leader), so one candidate normally
//! asks alone and wins at once; openraft's own timer remains the fallback.
//!
//! Over slow links the round trip matters. A follower refuses to vote while its own lease
//! runs, and the followers' leases end up to one round trip apart (each last heard the leader
//! at its own point of its replication stream, which sends one call per round trip). So the
//! first candidate waits one largest round trip more than its lease, or the others would
//! refuse it; and the next in rank waits a further two round trips (it may have heard the
//! leader one round trip earlier, and the request takes half of one to reach it), so it does
//! not stand in the same term before the first candidate's request arrives and split the vote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use flotilla_raft::rtt::PeerRtts;
use flotilla_raft::{NodeId, Raft};

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
/// The least stagger between ranks (on a near link the round trips are tiny, but the
/// candidate's disk write of its vote is not).
const STAGGER: Duration = Duration::from_millis(60);

/// How long a follower of `rank` waits past the lease before standing, given the largest
/// round trip `rtt` to its peers (see the module comment).
pub fn wait_past_lease(rank: usize, rtt: Duration) -> Duration {
    MARGIN + rtt + STAGGER.max(rtt * 2) * rank as u32
}

/// What this master knows at one instant, as the watchdog sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub me: u64,
    pub state: ServerState,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
}

/// The decision to stand for election, separate from the clock and Raft so it can be tested.
pub struct Watch {
    lease: Duration,
    seen: Option<(ServerState, Option<u64>, u64)>,
    seen_since: Instant,
    last_stand: Option<Instant>,
}

impl Watch {
    pub fn new(lease: Duration, now: Instant) -> Self {
        Watch { lease, seen: None, seen_since: now, last_stand: None }
    }

    /// `contact_silence`: time since a leader last replicated to this master; `rtt`: the
    /// largest smoothed round trip to a peer. True: stand now.
    pub fn observe(&mut self, now: Instant, view: &View, contact_silence: Duration, rtt: Duration) -> bool {
        // Silence only counts since this master last saw who leads change: one that was leader
        // itself, was paused, or just restarted has an old contact time, and must give the
        // leader it now follows a full lease before standing against it.
        let key = (view.state, view.leader, view.term);
        if self.seen != Some(key) {
            self.seen = Some(key);
            self.seen_since = now;
        }
        if !matches!(view.state, ServerState::Follower | ServerState::Candidate) {
            return false;
        }
        let Some(leader) = view.leader else { return false };
        let mut others: Vec<u64> = view.voters.iter().copied().filter(|id| *id != leader).collect();
        others.sort_unstable();
        let Some(rank) = others.iter().position(|id| *id == view.me) else { return false };
        let silent = contact_silence.min(now.saturating_duration_since(self.seen_since));
        if silent < self.lease + wait_past_lease(rank, rtt) {
            return false;
        }
        if self.last_stand.is_some_and(|t| now.saturating_duration_since(t) < self.lease) {
            return false;
        }
        self.last_stand = Some(now);
        true
    }
}

/// Stands for election whenever [`Watch`] says so, until `shutdown`.
pub async fn run(
    raft: Raft,
    me: NodeId,
    lease: Duration,
    contact: Arc<LeaderContact>,
    rtts: PeerRtts,
    shutdown: CancellationToken,
) {
    let mut watch = Watch::new(lease, Instant::now());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let view = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            View {
                me,
                state: m.state,
                leader: m.current_leader,
                term: m.current_term,
                voters: m.membership_config.membership().voter_ids().collect(),
            }
        };
        let silence = contact.silent_for();
        let rtt = rtts.largest();
        if watch.observe(Instant::now(), &view, silence, rtt) {
            tracing::info!(
                silent_ms = silence.as_millis() as u64,
                rtt_ms = rtt.as_millis() as u64,
                suspected = ?view.leader,
                "leader silent past its lease; starting an election"
            );
            let _ = raft.trigger().elect().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback round trip.
    const NEAR: Duration = Duration::from_micros(500);

    fn view(state: ServerState, leader: u64, term: u64) -> View {
        View { me: 1, state, leader: Some(leader), term, voters: vec![1, 2, 3] }
    }

    #[test]
    fn a_follower_stands_once_the_lease_has_run_out() {
        let t0 = Instant::now();
        let lease = Duration::from_millis(600);
        let mut w = Watch::new(lease, t0);
        let v = view(ServerState::Follower, 3, 1);
        assert!(!w.observe(t0, &v, Duration::ZERO, NEAR));
        assert!(!w.observe(t0 + Duration::from_millis(500), &v, Duration::from_millis(500), NEAR));
        assert!(w.observe(t0 + Duration::from_millis(700), &v, Duration::from_millis(700), NEAR));
        assert!(
            !w.observe(t0 + Duration::from_millis(710), &v, Duration::from_millis(710), NEAR),
            "not twice in a lease"
        );
    }

    #[test]
    fn ranks_are_staggered() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_millis(600), t0);
        // Leader 1 is silent; this is master 3, second in rank after master 2.
        let v = View { me: 3, state: ServerState::Follower, leader: Some(1), term: 1, voters: vec![1, 2, 3] };
        w.observe(t0, &v, Duration::ZERO, NEAR);
        assert!(!w.observe(t0 + Duration::from_millis(640), &v, Duration::from_millis(640), NEAR));
        assert!(w.observe(t0 + Duration::from_millis(700), &v, Duration::from_millis(700), NEAR));
    }

    /// Regression (found by the chaos run): a leader paused past the election timeout, on
    /// resuming and stepping down, stood at once because it had not been replicated to for
    /// as long as it led, and deposed the leader elected meanwhile.
    #[test]
    fn regression_a_resumed_old_leader_does_not_stand_against_its_successor() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_millis(600), t0);
        assert!(!w.observe(t0, &view(ServerState::Leader, 1, 1), Duration::from_secs(5), NEAR));
        let later = t0 + Duration::from_secs(5);
        let follower = view(ServerState::Follower, 2, 2);
        assert!(!w.observe(later, &follower, Duration::from_secs(5), NEAR), "must give the new leader a full lease");
        assert!(!w.observe(later + Duration::from_millis(300), &follower, Duration::from_secs(5), NEAR));
        assert!(w.observe(later + Duration::from_millis(700), &follower, Duration::from_secs(6), NEAR));
    }

    /// Masters 100-120 ms apart. Invariants: the first in rank stands one round trip after
    /// its lease (so the others' leases have run out when its request arrives), the second
    /// over two round trips later (so it does not stand before that request reaches it).
    #[test]
    fn over_slow_links_the_first_waits_a_round_trip_and_the_next_two_more() {
        let rtt = Duration::from_millis(120);
        let lease = Duration::from_millis(600);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let silent = |ms: u64| Duration::from_millis(ms);
        let first = View { me: 2, state: ServerState::Follower, leader: Some(1), term: 1, voters: vec![1, 2, 3] };
        let second = View { me: 3, ..first.clone() };
        let (mut w2, mut w3) = (Watch::new(lease, t0), Watch::new(lease, t0));
        assert!(!w2.observe(t0, &first, silent(0), rtt));
        assert!(!w3.observe(t0, &second, silent(0), rtt));
        // 600 + 25 + 120 = 745 ms for rank 0.
        assert!(!w2.observe(at(740), &first, silent(740), rtt));
        assert!(w2.observe(at(750), &first, silent(750), rtt));
        // Rank 1: 745 + 240 = 985 ms; the near-link stagger alone would have let it stand at 805.
        assert!(!w3.observe(at(980), &second, silent(980), rtt));
        assert!(w3.observe(at(990), &second, silent(990), rtt));
        assert_eq!(wait_past_lease(1, NEAR), MARGIN + NEAR + STAGGER);
    }

    /// The worst case of the module comment, in numbers: the second in rank last heard the
    /// leader a whole round trip after the first did. Invariant: the first's request reaches
    /// it after its lease ran out (it can grant it), and before it would stand itself.
    #[test]
    fn the_first_request_lands_between_the_second_lease_and_its_stand() {
        for rtt_ms in [1u64, 50, 100, 120, 150] {
            let rtt = Duration::from_millis(rtt_ms);
            let lease = Duration::from_millis(600);
            let one_way = rtt / 2;
            for lag_ms in [0, rtt_ms / 2, rtt_ms] {
                let lag = Duration::from_millis(lag_ms);
                // Times from the first's last contact; the second's contact is `lag` later, or earlier.
                let request_arrives = lease + wait_past_lease(0, rtt) + one_way;
                assert!(request_arrives > lag + lease, "rtt {rtt_ms} lag {lag_ms}: refused by a running lease");
                let second_stands_earliest = lease + wait_past_lease(1, rtt) - lag;
                assert!(second_stands_earliest > request_arrives, "rtt {rtt_ms} lag {lag_ms}: split vote");
            }
        }
    }
}
