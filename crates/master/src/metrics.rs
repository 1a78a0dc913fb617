//! Prometheus metrics of a master, served at `/metrics` in the text exposition format.
//!
//! Two kinds of figures: those measured as things happen on this master (proposal batch
//! sizes, fsync latency, placement latency, heartbeats), kept in long-lived counters and
//! histograms; and those read at scrape time from openraft's metrics and the replicated state
//! (term, role, indexes, jobs, tasks, workers, event totals). The latter come from replicated
//! data, so a follower reports the same cluster figures as the leader, as fresh as its state.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use flotilla_core::state::WorkerState;
use flotilla_proto::api::TaskState;

type Labels = Vec<(String, String)>;

pub use flotilla_proto::exposition::CONTENT_TYPE;

/// What a scrape reads, besides the metrics kept here.
pub struct Scrape<'a> {
    pub raft: &'a openraft::RaftMetrics<flotilla_raft::NodeId, flotilla_raft::Node>,
    /// Bytes of Raft log written since start.
    pub log_bytes: u64,
    pub state: &'a flotilla_core::state::ClusterState,
    /// How often workers send heartbeats (figures older than a few are dropped).
    pub heartbeat: std::time::Duration,
    /// Smoothed round trip to each measured peer master.
    pub peer_rtts: &'a [(flotilla_raft::NodeId, Duration)],
    /// The longest a replication call may take.
    pub replication_timeout: Duration,
    /// Figures of the snapshots this master built or installed.
    pub snapshots: &'a flotilla_raft::state_machine::SnapshotFigures,
    /// Bytes of the task records store file.
    pub store_bytes: u64,
}

pub struct Metrics {
    registry: Registry,
    // Measured as it happens.
    proposal_commands: Histogram,
    log_write_seconds: Histogram,
    placement_seconds: Histogram,
    assignments: Counter,
    heartbeats: Counter,
    heartbeat_gap_seconds: Histogram,
    heartbeat_rtt_seconds: Histogram,
    missed_heartbeats: Counter,
    log_bytes: Counter,
    // Read at scrape time.
    raft_term: Gauge,
    raft_role: Family<Labels, Gauge>,
    raft_last_log_index: Gauge,
    raft_applied_index: Gauge,
    raft_commit_index: Gauge,
    raft_replication_lag: Family<Labels, Gauge>,
    raft_quorum_ack_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    raft_peer_rtt: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    raft_replication_timeout: Gauge<f64, std::sync::atomic::AtomicU64>,
    snapshot_bytes: Gauge,
    snapshot_records: Gauge,
    snapshot_build_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    snapshot_lock_hold_max_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    snapshots_built: Gauge,
    snapshots_installed: Gauge,
    state_store_bytes: Gauge,
    jobs: Family<Labels, Gauge>,
    tasks: Family<Labels, Gauge>,
    queue_waiting: Family<Labels, Gauge>,
    workers: Family<Labels, Gauge>,
    worker_cpus: Family<Labels, Gauge>,
    worker_cpus_used: Family<Labels, Gauge>,
    worker_cpus_busy: Family<Labels, Gauge>,
    worker_cpus_queued: Family<Labels, Gauge>,
    worker_queue: Family<Labels, Gauge>,
    worker_resource_units: Family<Labels, Gauge>,
    worker_resource_held: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    autoscale_workers: Family<Labels, Gauge>,
    autoscale_bounds: Family<Labels, Gauge>,
    autoscale_paused: Family<Labels, Gauge>,
    autoscale_failures: Family<Labels, Gauge>,
    autoscale_launches: Family<Labels, Counter>,
    reported_running: Family<Labels, Gauge>,
    reported_queued: Family<Labels, Gauge>,
    reported_spawns: Family<Labels, Counter>,
    reported_spawn_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// The latest figures each worker reported to this master (while it led), and when.
    reports: Mutex<std::collections::HashMap<String, (std::time::Instant, [u64; 4])>>,
    /// Serialises scrapes: the scrape-time families are cleared and refilled each time.
    scrape: Mutex<()>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("flotilla");
        let proposal_commands = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        let log_write_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 14));
        let placement_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let heartbeat_gap_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 10));
        // 50 µs to ~3 s.
        let heartbeat_rtt_seconds = Histogram::new(exponential_buckets(0.00005, 3.0, 11));
        let m = Metrics {
            proposal_commands: proposal_commands.clone(),
            log_write_seconds: log_write_seconds.clone(),
            placement_seconds: placement_seconds.clone(),
            assignments: Counter::default(),
            heartbeats: Counter::default(),
            heartbeat_gap_seconds: heartbeat_gap_seconds.clone(),
            heartbeat_rtt_seconds: heartbeat_rtt_seconds.clone(),
            missed_heartbeats: Counter::default(),
            log_bytes: Counter::default(),
            raft_term: Gauge::default(),
            raft_role: Family::default(),
            raft_last_log_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_replication_lag: Family::default(),
            raft_quorum_ack_age: Gauge::default(),
            raft_peer_rtt: Family::default(),
            raft_replication_timeout: Gauge::default(),
            snapshot_bytes: Gauge::default(),
            snapshot_records: Gauge::default(),
            snapshot_build_seconds: Gauge::default(),
            snapshot_lock_hold_max_seconds: Gauge::default(),
            snapshots_built: Gauge::default(),
            snapshots_installed: Gauge::default(),
            state_store_bytes: Gauge::default(),
            jobs: Family::default(),
            tasks: Family::default(),
            queue_waiting: Family::default(),
            workers: Family::default(),
            worker_cpus: Family::default(),
            worker_cpus_used: Family::default(),
            worker_cpus_busy: Family::default(),
            worker_cpus_queued: Family::default(),
            worker_resource_units: Family::default(),
            worker_resource_held: Family::default(),
            worker_queue: Family::default(),
            events: Family::default(),
            autoscale_workers: Family::default(),
            autoscale_bounds: Family::default(),
            autoscale_paused: Family::default(),
            autoscale_failures: Family::default(),
            autoscale_launches: Family::default(),
            reported_running: Family::default(),
            reported_queued: Family::default(),
            reported_spawns: Family::default(),
            reported_spawn_seconds: Family::default(),
            reports: Mutex::new(Default::default()),
            registry: Registry::default(),
            scrape: Mutex::new(()),
        };
        r.register("raft_term", "Raft term this master is in", m.raft_term.clone());
        r.register(
            "snapshot_bytes",
            "Size of the last snapshot this master built or installed",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "snapshot_records",
            "Task records in the last snapshot built or installed",
            m.snapshot_records.clone(),
        );
        r.register(
            "snapshot_build_seconds",
            "How long building the last snapshot took",
            m.snapshot_build_seconds.clone(),
        );
        r.register(
            "snapshot_lock_hold_max_seconds",
            "Longest time building a snapshot held the state lock (apply waited at most this long)",
            m.snapshot_lock_hold_max_seconds.clone(),
        );
        r.register("snapshots_built", "Snapshots this master built since it started", m.snapshots_built.clone());
        r.register(
            "snapshots_installed",
            "Snapshots this master installed since it started",
            m.snapshots_installed.clone(),
        );
        r.register(
            "state_store_bytes",
            "Size of the task records store file (state.redb)",
            m.state_store_bytes.clone(),
        );
        r.register("raft_role", "1 for this master's current Raft role", m.raft_role.clone());
        r.register(
            "raft_last_log_index",
            "Index of the last entry in this master's log",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Index of the last entry applied to this master's state",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_commit_index",
            "Leader only: highest index a quorum of masters holds (committed)",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_replication_lag_entries",
            "Leader only: entries each follower is behind the leader's log",
            m.raft_replication_lag.clone(),
        );
        r.register_with_unit(
            "raft_quorum_ack_age",
            "Leader only: time since a quorum last acknowledged this leader",
            Unit::Seconds,
            m.raft_quorum_ack_age.clone(),
        );
        r.register_with_unit(
            "raft_peer_rtt",
            "Smoothed round trip from this master to each peer master (Raft calls and probes)",
            Unit::Seconds,
            m.raft_peer_rtt.clone(),
        );
        r.register_with_unit(
            "raft_replication_timeout",
            "The longest this master lets a replication call take; round trips near it are warned about",
            Unit::Seconds,
            m.raft_replication_timeout.clone(),
        );
        r.register("raft_proposal_commands", "Commands per Raft log entry proposed by this master", proposal_commands);
        r.register_with_unit(
            "raft_log_write",
            "Time to write and fsync one batch of Raft log entries",
            Unit::Seconds,
            log_write_seconds,
        );
        r.register_with_unit("raft_log_written", "Raft log bytes written", Unit::Bytes, m.log_bytes.clone());
        r.register_with_unit(
            "placement",
            "Leader only: time from planning a placement to its commit",
            Unit::Seconds,
            placement_seconds,
        );
        r.register("assignments", "Leader only: task attempts assigned to workers", m.assignments.clone());
        r.register("jobs", "Jobs by state", m.jobs.clone());
        r.register("tasks", "Array tasks by state", m.tasks.clone());
        r.register("queue_waiting_tasks", "Tasks waiting for a worker, by job priority", m.queue_waiting.clone());
        r.register("workers", "Workers by state", m.workers.clone());
        r.register("worker_cpus", "Cpus a ready worker offers", m.worker_cpus.clone());
        r.register(
            "worker_cpus_used",
            "Cpus of a ready worker held by assigned or running tasks",
            m.worker_cpus_used.clone(),
        );
        r.register("worker_cpus_busy", "Cpus of a ready worker running tasks", m.worker_cpus_busy.clone());
        r.register(
            "worker_resource_units",
            "Units of a named resource a ready worker offers (--resources)",
            m.worker_resource_units.clone(),
        );
        r.register(
            "worker_resource_held",
            "Units of a named resource held by the attempts a ready worker holds",
            m.worker_resource_held.clone(),
        );
        r.register(
            "worker_cpus_queued",
            "Cpus' worth of tasks queued on a ready worker, waiting for a free cpu",
            m.worker_cpus_queued.clone(),
        );
        r.register("worker_queue", "Tasks' cpus a ready worker keeps queued beyond its cpus", m.worker_queue.clone());
        r.register("worker_heartbeats", "Leader only: messages received from workers", m.heartbeats.clone());
        r.register(
            "autoscale_workers",
            "Workers of an autoscaling pool by stage (requested, started, joined, retiring)",
            m.autoscale_workers.clone(),
        );
        r.register("autoscale_bounds", "An autoscaling pool's min and max workers", m.autoscale_bounds.clone());
        r.register(
            "autoscale_paused",
            "1 while an autoscaling pool is paused after failed launches",
            m.autoscale_paused.clone(),
        );
        r.register(
            "autoscale_failures",
            "An autoscaling pool's failed launches in a row",
            m.autoscale_failures.clone(),
        );
        r.register(
            "autoscale_launches",
            "Workers an autoscaling pool asked for, retired and failed to start",
            m.autoscale_launches.clone(),
        );
        r.register_with_unit(
            "worker_heartbeat_gap",
            "Leader only: time between two messages of a worker",
            Unit::Seconds,
            heartbeat_gap_seconds,
        );
        r.register_with_unit(
            "worker_heartbeat_rtt",
            "Leader only: round trip of a worker's session (heartbeat echo), as the worker measured it",
            Unit::Seconds,
            heartbeat_rtt_seconds,
        );
        r.register(
            "worker_missed_heartbeats",
            "Leader only: heartbeats that did not arrive on time",
            m.missed_heartbeats.clone(),
        );
        r.register(
            "events",
            "Journal events ever recorded, by kind (task_rescheduled, task_failed, result_rejected, leader_elected, ...)",
            m.events.clone(),
        );
        r.register(
            "worker_running_tasks",
            "Leader only: task processes a worker reports running",
            m.reported_running.clone(),
        );
        r.register(
            "worker_queued_tasks",
            "Leader only: assigned tasks a worker reports waiting for a cpu",
            m.reported_queued.clone(),
        );
        r.register("worker_spawns", "Leader only: task processes a worker reports started", m.reported_spawns.clone());
        r.register_with_unit(
            "worker_spawn",
            "Leader only: time a worker reports spending to start task processes (divide by worker_spawns_total for the mean)",
            Unit::Seconds,
            m.reported_spawn_seconds.clone(),
        );
        Metrics { registry: root, ..m }
    }

    pub fn observe_proposal(&self, commands: usize) {
        self.proposal_commands.observe(commands as f64);
    }

    pub fn observe_log_write(&self, took: Duration) {
        self.log_write_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_placement(&self, took: Duration, assigned: usize) {
        self.placement_seconds.observe(took.as_secs_f64());
        self.assignments.inc_by(assigned as u64);
    }

    /// A message from a worker arrived `gap` after its previous one.
    pub fn observe_heartbeat_rtt(&self, rtt: Duration) {
        self.heartbeat_rtt_seconds.observe(rtt.as_secs_f64());
    }

    pub fn observe_heartbeat(&self, gap: Option<Duration>, interval: Duration) {
        self.heartbeats.inc();
        if let Some(gap) = gap {
            self.heartbeat_gap_seconds.observe(gap.as_secs_f64());
            let late = gap.as_secs_f64() / interval.as_secs_f64().max(1e-3);
            if late >= 2.0 {
                self.missed_heartbeats.inc_by(late as u64 - 1);
            }
        }
    }

    /// Figures a worker sent with its heartbeat.
    pub fn worker_reported(&self, worker: &str, running: u32, queued: u32, spawned: u64, spawn_micros: u64) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let figures = [u64::from(running), u64::from(queued), spawned, spawn_micros];
        match reports.get_mut(worker) {
            Some(r) => *r = (std::time::Instant::now(), figures),
            None => {
                reports.insert(worker.to_string(), (std::time::Instant::now(), figures));
            }
        }
    }

    /// The exposition, refreshed from openraft and the replicated state.
    pub fn render(&self, source: &Scrape<'_>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(source);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        flotilla_proto::exposition::to_prometheus_text(&out)
    }

    fn refresh(&self, source: &Scrape<'_>) {
        let raft = source.raft;
        self.raft_term.set(raft.current_term as i64);
        self.raft_role.clear();
        let role = flotilla_raft::role(&raft.state);
        self.raft_role.get_or_create(&labels(&[("role", role.as_str())])).set(1);
        let last = raft.last_log_index.unwrap_or(0);
        self.raft_last_log_index.set(last as i64);
        self.raft_applied_index.set(raft.last_applied.map_or(0, |l| l.index) as i64);
        self.raft_replication_lag.clear();
        self.raft_commit_index.set(0); // not known off the leader
        if let Some(replication) = &raft.replication {
            // The index a majority holds: sort what each voter has matched, take the median.
            let mut matched: Vec<u64> = replication
                .iter()
                .map(|(node, m)| if *node == raft.id { last } else { m.map_or(0, |m| m.index) })
                .collect();
            matched.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(committed) = matched.get(matched.len() / 2) {
                self.raft_commit_index.set(*committed as i64);
            }
            for (node, matched) in replication.iter().filter(|(n, _)| **n != raft.id) {
                let lag = last.saturating_sub(matched.map_or(0, |m| m.index));
                self.raft_replication_lag.get_or_create(&labels(&[("follower", &node.to_string())])).set(lag as i64);
            }
        }
        self.raft_quorum_ack_age.set(raft.millis_since_quorum_ack.map_or(0.0, |ms| ms as f64 / 1000.0));
        self.raft_peer_rtt.clear();
        for (peer, rtt) in source.peer_rtts {
            self.raft_peer_rtt.get_or_create(&labels(&[("peer", &peer.to_string())])).set(rtt.as_secs_f64());
        }
        self.raft_replication_timeout.set(source.replication_timeout.as_secs_f64());
        let snap = source.snapshots;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        self.snapshot_bytes.set(load(&snap.bytes) as i64);
        self.snapshot_records.set(load(&snap.records) as i64);
        self.snapshot_build_seconds.set(load(&snap.build_micros) as f64 / 1e6);
        self.snapshot_lock_hold_max_seconds.set(load(&snap.longest_hold_micros) as f64 / 1e6);
        self.snapshots_built.set(load(&snap.built) as i64);
        self.snapshots_installed.set(load(&snap.installed) as i64);
        self.state_store_bytes.set(source.store_bytes as i64);
        self.log_bytes.inc_by(source.log_bytes.saturating_sub(self.log_bytes.get()));
        let state = source.state;
        self.jobs.clear();
        self.tasks.clear();
        self.queue_waiting.clear();
        for s in flotilla_proto::api::JobState::ALL {
            self.jobs.get_or_create(&labels(&[("state", s.as_str())])).set(0);
        }
        // The default priority is always there, so an idle queue reads 0 rather than nothing.
        self.queue_waiting.get_or_create(&labels(&[("priority", "0")])).set(0);
        let mut tasks = [0u64; 6];
        for job in state.jobs() {
            self.jobs.get_or_create(&labels(&[("state", job.state.name())])).inc();
            let c = &job.counts;
            for (slot, n) in
                tasks.iter_mut().zip([c.waiting, c.assigned, c.running, c.succeeded, c.failed, c.cancelled])
            {
                *slot += n;
            }
            if c.waiting > 0 {
                let priority = job.spec.priority.to_string();
                self.queue_waiting.get_or_create(&labels(&[("priority", &priority)])).inc_by(c.waiting as i64);
            }
        }
        let task_states = [
            TaskState::Waiting,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled,
        ];
        for (s, n) in task_states.into_iter().zip(tasks) {
            self.tasks.get_or_create(&labels(&[("state", s.as_str())])).set(n as i64);
        }
        self.workers.clear();
        self.worker_cpus.clear();
        self.worker_cpus_used.clear();
        self.worker_cpus_busy.clear();
        self.worker_cpus_queued.clear();
        self.worker_resource_units.clear();
        self.worker_resource_held.clear();
        self.worker_queue.clear();
        for s in flotilla_proto::api::WorkerState::ALL {
            self.workers.get_or_create(&labels(&[("state", s.as_str())])).set(0);
        }
        for w in state.workers() {
            let ready = w.state == WorkerState::Ready;
            self.workers.get_or_create(&labels(&[("state", w.condition().name())])).inc();
            if !ready {
                continue;
            }
            let zone = w.labels.get("zone").map(String::as_str).unwrap_or("");
            let region = w.labels.get("region").map(String::as_str).unwrap_or("");
            let l = labels(&[("worker", &w.name), ("zone", zone), ("region", region)]);
            self.worker_cpus.get_or_create(&l).set(i64::from(w.cpus));
            self.worker_cpus_used.get_or_create(&l).set(i64::from(w.cpus_used));
            self.worker_cpus_busy.get_or_create(&l).set(i64::from(w.cpus_busy()));
            self.worker_cpus_queued.get_or_create(&l).set(i64::from(w.cpus_queued()));
            self.worker_queue.get_or_create(&l).set(i64::from(w.queue));
            for (name, units) in &w.resources {
                let l = labels(&[("worker", &w.name), ("resource", name)]);
                self.worker_resource_units.get_or_create(&l).set(i64::from(*units));
                self.worker_resource_held.get_or_create(&l).set(i64::from(w.units_held(name)));
            }
        }
        // Reports older than a few heartbeats are from workers gone or led by another master.
        self.reported_running.clear();
        self.reported_queued.clear();
        self.reported_spawns.clear();
        self.reported_spawn_seconds.clear();
        let fresh = source.heartbeat * 3;
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.retain(|_, (at, _)| at.elapsed() <= fresh);
        for (worker, (_, [running, queued, spawned, micros])) in reports.iter() {
            let l = labels(&[("worker", worker)]);
            self.reported_running.get_or_create(&l).set(*running as i64);
            self.reported_queued.get_or_create(&l).set(*queued as i64);
            self.reported_spawns.get_or_create(&l).inc_by(*spawned);
            self.reported_spawn_seconds.get_or_create(&l).inc_by(*micros as f64 / 1e6);
        }
        drop(reports);
        self.autoscale_workers.clear();
        self.autoscale_bounds.clear();
        self.autoscale_paused.clear();
        self.autoscale_failures.clear();
        for (name, pool) in state.pools() {
            use flotilla_core::autoscale::LaunchStage as S;
            for stage in [S::Requested, S::Started, S::Joined, S::Retiring] {
                let l = labels(&[("pool", name), ("stage", stage.name())]);
                self.autoscale_workers.get_or_create(&l).set(i64::from(pool.count(stage)));
            }
            let bounds = [("min", pool.policy.min), ("max", pool.policy.max)];
            for (bound, value) in bounds {
                self.autoscale_bounds.get_or_create(&labels(&[("pool", name), ("bound", bound)])).set(i64::from(value));
            }
            self.autoscale_paused.get_or_create(&labels(&[("pool", name)])).set(i64::from(pool.paused));
            self.autoscale_failures.get_or_create(&labels(&[("pool", name)])).set(i64::from(pool.failures));
            for (outcome, total) in [("launched", pool.launched), ("retired", pool.retired), ("failed", pool.failed)] {
                let counter = self.autoscale_launches.get_or_create(&labels(&[("pool", name), ("outcome", outcome)]));
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        for (kind, total) in state.journal().totals() {
            let counter = self.events.get_or_create(&labels(&[("kind", kind)]));
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}
