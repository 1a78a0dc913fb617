//! `Master`: everything one master process shares between its server, its Raft node and its
//! leader duties.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::http::HttpClient;
use hyper::Method;
use tokio_util::sync::CancellationToken;

use flotilla_proto::api::NodeInfo;
use flotilla_raft::rtt::PeerRtts;
use flotilla_raft::state_machine::Shared;
use flotilla_raft::{NodeId, Raft};

use crate::config::MasterConfig;
use crate::proposer::Proposer;
use flotilla_session::leader::LeaderConfig;

use crate::sessions::Sessions;
use crate::watchdog::LeaderContact;

/// Present while this master leads: the term, a token cancelled when leadership ends, and
/// the tasks started for it (drained when it ends).
#[derive(Clone)]
pub struct Leadership {
    pub term: u64,
    /// When this master became leader (a leadership transfer waits out its own lease).
    pub since: std::time::Instant,
    pub cancel: CancellationToken,
    pub tasks: tokio_util::task::TaskTracker,
}

impl Leadership {
    pub fn new(term: u64, cancel: CancellationToken) -> Self {
        Leadership { term, since: std::time::Instant::now(), cancel, tasks: tokio_util::task::TaskTracker::new() }
    }

    /// Ends the leadership: its tasks are told to stop, and a straggler is reported.
    pub fn end(self) {
        self.cancel.cancel();
        self.tasks.close();
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await.is_err() {
                tracing::warn!(
                    term = self.term,
                    left = self.tasks.len(),
                    "leader tasks still running 2 s after the term ended"
                );
            }
        });
    }
}

pub struct Master {
    pub config: MasterConfig,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub proposer: Proposer,
    /// Worker sessions and the leader's decisions about them.
    pub sessions: Arc<Sessions>,
    /// Client for master-to-master HTTP calls (status fan-out, reachability checks).
    pub http: HttpClient,
    /// When a leader last replicated to this master (see `watchdog`).
    pub leader_contact: Arc<LeaderContact>,
    /// Bytes of Raft log written since start (from the log store).
    pub log_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Prometheus metrics served at `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Round trips to the other masters (from Raft's calls and [`crate::links`]' probes).
    pub rtts: PeerRtts,
    /// The release each master runs, and the gate on what an older voter cannot read.
    pub releases: Arc<crate::releases::Releases>,
    /// This master's certificates, when it has them: what it shows the masters it calls.
    pub identity: Option<Arc<flotilla_tls::Identity>>,
    /// Reads task outputs from the workers that hold them (for `job fetch`).
    pub blobs: flotilla_blobs::BlobClient,
    /// Held by a membership change or leadership transfer: one at a time.
    pub membership_lock: tokio::sync::Mutex<()>,
    leadership: Mutex<Option<Leadership>>,
}

impl Master {
    pub fn new(
        config: MasterConfig,
        raft: Raft,
        shared: Arc<Shared>,
        log_bytes: Arc<std::sync::atomic::AtomicU64>,
        metrics: Arc<crate::metrics::Metrics>,
        rtts: PeerRtts,
        identity: Option<Arc<flotilla_tls::Identity>>,
    ) -> Result<Self, String> {
        let http = HttpClient::with_connector(
            config.token.as_deref(),
            config.peer_connector(identity.as_ref(), flotilla_tls::Alpn::Http1),
        )?;
        let releases = Arc::new(crate::releases::Releases::new(config.id));
        let proposer = Proposer::start(raft.clone(), metrics.clone(), releases.clone(), shared.clone());
        let sessions = Sessions::new(
            LeaderConfig::new(config.id, config.worker_timeout),
            proposer.clone(),
            shared.clone(),
            metrics.clone(),
        );
        Ok(Master {
            config,
            raft,
            shared,
            proposer,
            sessions,
            http,
            leader_contact: Arc::new(LeaderContact::default()),
            log_bytes,
            metrics,
            rtts,
            membership_lock: tokio::sync::Mutex::new(()),
            releases,
            blobs: flotilla_blobs::BlobClient::new(identity.clone()),
            identity,
            leadership: Mutex::new(None),
        })
    }

    pub fn leadership(&self) -> Option<Leadership> {
        self.leadership.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_leadership(&self, lead: Option<Leadership>) -> Option<Leadership> {
        std::mem::replace(&mut *self.leadership.lock().unwrap_or_else(|p| p.into_inner()), lead)
    }

    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Address of a master by id: from the replicated membership, else from `--peers`.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.config.peers.get(&id).cloned())
    }

    /// The address of another master that leads, for redirects (never this master's own: a
    /// leader that is not acting as one has nobody better to name).
    pub fn leader_address(&self) -> Option<String> {
        self.leader_id().filter(|id| *id != self.config.id).and_then(|id| self.address_of(id))
    }

    /// The other masters of the group: id and address.
    pub fn others(&self) -> Vec<(NodeId, String)> {
        self.members().into_iter().filter(|(id, _)| *id != self.config.id).collect()
    }

    /// All masters of the group: id and address.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let nodes: Vec<(NodeId, String)> =
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        if nodes.is_empty() {
            self.config.peers.iter().map(|(id, a)| (*id, a.clone())).collect()
        } else {
            nodes
        }
    }

    /// This master's own view of itself.
    pub fn node_info(&self) -> NodeInfo {
        let metrics = self.raft.metrics();
        let m = metrics.borrow().clone();
        // One read of the state: a second read while the first is held deadlocks once apply
        // waits to write between them (std's lock then holds new readers back).
        let (last_assignment_term, cluster) = {
            let data = self.shared.read();
            (data.state.last_assignment_term(), data.state.cluster_id())
        };
        NodeInfo {
            id: self.config.id,
            address: self.address_of(self.config.id).unwrap_or_default(),
            role: flotilla_raft::role(&m.state),
            term: m.current_term,
            leader: m.current_leader,
            leader_address: m.current_leader.and_then(|id| self.address_of(id)),
            last_applied: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            last_assignment_term,
            log_bytes_written: self.log_bytes.load(std::sync::atomic::Ordering::Relaxed),
            peer_rtt_ms: self.rtts.smoothed().into_iter().map(|(id, rtt)| (id, millis(rtt))).collect(),
            replication_timeout_ms: Some(millis(self.rtts.bounds().ceiling)),
            labels: self.config.labels.clone(),
            cluster: Some(cluster).filter(|c| *c != 0).map(|c| format!("{c:016x}")),
            version: Some(flotilla_proto::api::VERSION.to_string()),
        }
    }

    /// Smoothed round trip to another master, in milliseconds, once measured.
    pub fn rtt_ms(&self, id: NodeId) -> Option<f64> {
        self.rtts.smoothed().into_iter().find(|(peer, _)| *peer == id).map(|(_, rtt)| millis(rtt))
    }

    /// A linearizable read on a follower (Raft's ReadIndex): the leader confirms its
    /// leadership with a quorum and names its commit index; once this replica has applied
    /// that far it answers as the leader would. `None` if the leader could not be asked.
    pub async fn follower_read(&self, leader: NodeId, timeout: Duration) -> Option<()> {
        let address = self.address_of(leader)?;
        let (status, body) =
            self.http.send(Method::GET, &address, "/v1/cluster/read-index", None, timeout).await.ok()?;
        if !status.is_success() {
            return None;
        }
        let wanted = serde_json::from_slice::<flotilla_proto::api::ReadIndex>(&body).ok()?.index;
        let mut applied = self.shared.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|&index| index >= wanted)).await.ok()?.ok()?;
        Some(())
    }

    /// Asks another master for its own view (`GET /v1/node`).
    pub async fn fetch_node_info(&self, address: &str, timeout: Duration) -> Result<NodeInfo, String> {
        let (status, body) =
            self.http.send(Method::GET, address, "/v1/node", None, timeout).await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

/// A duration in (fractional) milliseconds, as the API reports round trips.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
