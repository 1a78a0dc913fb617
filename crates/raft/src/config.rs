//! Raft timing. Defaults aim at failover within a second on loopback or a LAN: followers start
//! an election after 300–600 ms without hearing from the leader, which heartbeats every 75 ms.
//! They also carry links with round trips up to about 150 ms (masters in several regions):
//! replication calls may take up to [`RaftTiming::replication_ceiling`] (250 ms by default),
//! not just one heartbeat. Raise them on slower or lossy networks (fewer spurious elections,
//! slower failover).
//!
//! openraft 0.9 uses its `heartbeat_interval` both as the heartbeat period and as the timeout
//! of every replication call (heartbeats are replication calls). Tied together, a link whose
//! round trip exceeds the heartbeat can elect a leader that never commits. So openraft is given
//! the timeout ceiling as its `heartbeat_interval`, its own heartbeat is switched off, and the
//! master triggers heartbeats every [`RaftTiming::heartbeat`] instead (`flotilla-master`'s
//! `leader::beat`). A heartbeat only fills an idle replication stream, so over a slow link the
//! beats simply become one per round trip.
//!
//! openraft reads `heartbeat_interval` in two more places, both fine with the ceiling: a
//! linearizable read's quorum check waits that long for the followers' answers (75 ms would
//! also fail across regions), and its timer ticks every 1.5 intervals (375 ms by default), so
//! its own election timer, now only the fallback behind `flotilla-master`'s watchdog, fires up
//! to one tick late. `enable_heartbeat` is read only by that tick's heartbeat.

use std::time::Duration;

use openraft::{Config, SnapshotPolicy};

use crate::rtt::Bounds;

#[derive(Clone, Debug)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(75),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            snapshot_every: 5_000,
        }
    }
}

/// How far under the minimum election timeout replication calls must finish: a call that
/// takes nearly the election timeout is as good as lost (the follower stands meanwhile).
const CEILING_BELOW_ELECTION: Duration = Duration::from_millis(50);

impl RaftTiming {
    /// The longest a replication call may take: 50 ms under the minimum election timeout (250
    /// ms by default), and always above the heartbeat (openraft requires the election timeout
    /// to exceed it).
    pub fn replication_ceiling(&self) -> Duration {
        let above_heartbeat = self.heartbeat + Duration::from_millis(1);
        self.election_min.saturating_sub(CEILING_BELOW_ELECTION).max(above_heartbeat)
    }

    /// Timeout bounds of replication calls: from the heartbeat to the ceiling.
    pub fn replication_bounds(&self) -> Bounds {
        Bounds { floor: self.heartbeat, ceiling: self.replication_ceiling() }
    }

    pub fn to_config(&self) -> Result<Config, openraft::ConfigError> {
        Config {
            cluster_name: "flotilla".to_string(),
            // openraft's heartbeat interval is also its replication timeout: give it the
            // ceiling, and heartbeat from outside (see the module comment).
            heartbeat_interval: self.replication_ceiling().as_millis() as u64,
            enable_heartbeat: false,
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            // Keep some log behind a snapshot so a briefly lagging follower catches up from the
            // log instead of needing a whole snapshot.
            max_in_snapshot_log_to_keep: self.snapshot_every.min(1_000),
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_let_replication_calls_take_250_ms_and_heartbeat_from_outside() {
        let t = RaftTiming::default();
        assert_eq!(t.replication_ceiling(), Duration::from_millis(250));
        let c = t.to_config().expect("valid");
        assert_eq!(c.heartbeat_interval, 250);
        assert!(!c.enable_heartbeat);
        assert_eq!((c.election_timeout_min, c.election_timeout_max), (300, 600));
    }

    #[test]
    fn the_ceiling_stays_above_the_heartbeat_and_under_the_election_timeout() {
        let fast = RaftTiming {
            heartbeat: Duration::from_millis(40),
            election_min: Duration::from_millis(85),
            election_max: Duration::from_millis(170),
            ..RaftTiming::default()
        };
        assert_eq!(fast.replication_ceiling(), Duration::from_millis(41));
        assert!(fast.to_config().is_ok());
        let far = RaftTiming {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            ..RaftTiming::default()
        };
        assert_eq!(
            far.replication_bounds(),
            Bounds { floor: Duration::from_millis(150), ceiling: Duration::from_millis(950) }
        );
    }
}
