//! Raft timing. Defaults aim at failover within a second on loopback or a LAN: followers start
//! an election after 300–600 ms without hearing from the leader, which heartbeats every 75 ms.
//! Raise them on slow or lossy networks (fewer spurious elections, slower failover).

use std::time::Duration;

use openraft::{Config, SnapshotPolicy};

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

impl RaftTiming {
    pub fn to_config(&self) -> Result<Config, openraft::ConfigError> {
        Config {
            cluster_name: "flotilla".to_string(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
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
