//! openraft's RPCs carried over gRPC (`RaftService` in `flotilla.proto`) to the peer masters.
//!
//! Each request and response is a postcard-encoded openraft type inside an `Envelope`. The
//! remote side answers `Result<T, String>`: remote failures are reported as "unreachable" so
//! openraft backs off instead of hammering a peer that is shutting down or broken.
//!
//! Replication and vote calls are timed: each answer is a round-trip sample for the peer's
//! [`PeerRtts`] estimate, and each replication call's timeout follows that estimate (see
//! [`crate::rtt`]). A link whose round trip approaches the timeout ceiling is logged as a
//! warning, at most once a minute per peer.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_tls::Connector;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use flotilla_proto::grpc::raft_service_client::RaftServiceClient;
use flotilla_proto::grpc::Envelope;
use flotilla_proto::{bearer, codec, AUTH_HEADER};

use crate::config::RaftTiming;
use crate::rtt::{PeerRtts, Slow, SlowLink};
use crate::{Node, NodeId, TypeConfig};

/// Largest gRPC message accepted or sent between masters (a batch of entries or a snapshot
/// chunk).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The metadata key of a Raft RPC's cluster identity (hex).
pub const CLUSTER_HEADER: &str = "x-flotilla-cluster";

/// This master's cluster identity as its RPCs carry it (0 until known), kept in step with
/// the replicated state by the master.
#[derive(Clone, Default)]
pub struct ClusterIdentity(Arc<std::sync::atomic::AtomicU64>);

impl ClusterIdentity {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set(&self, id: u64) {
        self.0.store(id, std::sync::atomic::Ordering::Relaxed)
    }

    /// Why an RPC from a master of cluster `theirs` is refused here, if it is: both know their
    /// cluster and they differ (a restored or recovered copy meeting the original).
    pub fn refusal(&self, theirs: Option<&str>) -> Option<String> {
        let mine = self.get();
        let theirs = theirs.and_then(|t| u64::from_str_radix(t, 16).ok()).unwrap_or(0);
        (mine != 0 && theirs != 0 && mine != theirs).then(|| {
            format!(
                "this master belongs to cluster {mine:016x}, the caller to {theirs:016x}: masters of a restored or \
                 recovered copy never talk to the original"
            )
        })
    }
}

/// Builds connections to peers; one per target, reused across RPCs.
#[derive(Clone)]
pub struct GrpcNetwork {
    /// This master's id, for error reports.
    pub id: NodeId,
    /// Cluster token sent with every request, when configured.
    pub token: Option<Arc<str>>,
    /// How connections to peers are made: TLS with this master's certificate, or plain text.
    pub connector: Connector,
    /// Round trips to the peers, shared by every connection (and with the master).
    pub rtts: PeerRtts,
    /// The election timeout range, quoted when a link is too slow for it.
    pub election: (Duration, Duration),
    pub cluster: ClusterIdentity,
}

impl GrpcNetwork {
    pub fn new(id: NodeId, token: Option<Arc<str>>, connector: Connector, timing: &RaftTiming) -> Self {
        GrpcNetwork {
            id,
            token,
            connector,
            rtts: PeerRtts::new(timing.replication_bounds()),
            election: (timing.election_min, timing.election_max),
            cluster: ClusterIdentity::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        let channel = peer_channel(&node.addr, &self.connector);
        PeerConnection {
            id: self.id,
            target,
            addr: node.addr.clone(),
            channel,
            token: self.token.clone(),
            rtts: self.rtts.clone(),
            election: self.election,
            cluster: self.cluster.clone(),
        }
    }
}

/// Logs a slow link with the figures and the remedy.
pub fn warn_slow_link(me: NodeId, link: &SlowLink, rtts: &PeerRtts, election: (Duration, Duration)) {
    let ceiling_ms = rtts.bounds().ceiling.as_millis() as u64;
    let (election_min_ms, election_max_ms) = (election.0.as_millis() as u64, election.1.as_millis() as u64);
    let remedy =
        "raise --election-timeout (and --heartbeat) on every master; see \"Masters across regions\" in the README";
    match link.why {
        Slow::Approaching { rtt } => tracing::warn!(
            from = me,
            peer = link.peer,
            addr = %link.addr,
            rtt_ms = rtt.as_secs_f64() * 1e3,
            timeout_ms = ceiling_ms,
            election_min_ms,
            election_max_ms,
            "round trip to master {} ({}) is {:.0} ms, close to the {} ms replication timeout \
             (election timeout {}-{} ms): {remedy}",
            link.peer,
            link.addr,
            rtt.as_secs_f64() * 1e3,
            ceiling_ms,
            election_min_ms,
            election_max_ms,
        ),
        Slow::TimedOutAtCeiling { rtt } => tracing::warn!(
            from = me,
            peer = link.peer,
            addr = %link.addr,
            rtt_ms = rtt.map(|r| r.as_secs_f64() * 1e3),
            timeout_ms = ceiling_ms,
            election_min_ms,
            election_max_ms,
            "a call to master {} ({}) took the whole {} ms replication timeout (smoothed round trip {}; \
             election timeout {}-{} ms): {remedy}",
            link.peer,
            link.addr,
            ceiling_ms,
            rtt.map_or("not measured yet".to_string(), |r| format!("{:.0} ms", r.as_secs_f64() * 1e3)),
            election_min_ms,
            election_max_ms,
        ),
    }
}

/// A lazily connected HTTP/2 channel to a peer master.
/// `connector` says whether it is TLS (with this master's certificate) or plain text.
pub fn peer_channel(addr: &str, connector: &Connector) -> Result<Channel, String> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad peer address {addr}: {e}"))?;
    Ok(endpoint
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connector.clone()))
}

pub struct PeerConnection {
    id: NodeId,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
    token: Option<Arc<str>>,
    rtts: PeerRtts,
    election: (Duration, Duration),
    cluster: ClusterIdentity,
}

/// Whether a call feeds the round-trip estimate: heartbeats and votes do; calls carrying
/// entries (the follower fsyncs before answering) and snapshot chunks (dominated by the
/// transfer) do not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timed {
    Yes,
    No,
}

enum CallError {
    Unreachable(String),
    Timeout,
    Network(String),
}

impl PeerConnection {
    async fn call<Req, Resp, F, Fut>(
        &self,
        what: &'static str,
        req: &Req,
        ttl: Duration,
        timed: Timed,
        send: F,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<Envelope>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Envelope>, tonic::Status>>,
    {
        let channel = self.channel.clone().map_err(CallError::Unreachable)?;
        let payload = codec::encode(what, req).map_err(|e| CallError::Network(e.to_string()))?;
        let mut request = tonic::Request::new(Envelope { payload });
        if let Some(token) = &self.token {
            let value = bearer(token).parse().map_err(|_| CallError::Network("token is not a valid header".into()))?;
            request.metadata_mut().insert(AUTH_HEADER, value);
        }
        let cluster = self.cluster.get();
        if cluster != 0 {
            if let Ok(value) = format!("{cluster:016x}").parse() {
                request.metadata_mut().insert(CLUSTER_HEADER, value);
            }
        }
        let client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let started = Instant::now();
        let answer = tokio::time::timeout(ttl, send(client, request)).await;
        if timed == Timed::Yes {
            let now = Instant::now();
            let slow = match &answer {
                Err(_) => self.rtts.timed_out(self.target, &self.addr, ttl, now),
                // Any answer, even a refusal, measured a whole round trip.
                Ok(Ok(_)) => self.rtts.sample(self.target, &self.addr, now.saturating_duration_since(started), now),
                Ok(Err(_)) => None,
            };
            if let Some(link) = slow {
                warn_slow_link(self.id, &link, &self.rtts, self.election);
            }
        }
        let response = match answer {
            Err(_) => return Err(CallError::Timeout),
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Unauthenticated => {
                        CallError::Unreachable(format!("{}: {}", self.addr, status.message()))
                    }
                    _ => CallError::Network(format!("{}: {status}", self.addr)),
                })
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let decoded: Result<Resp, String> =
            codec::decode(what, &response.payload).map_err(|e| CallError::Network(e.to_string()))?;
        decoded.map_err(|remote| CallError::Unreachable(format!("master {} refused {what}: {remote}", self.target)))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        e: CallError,
    ) -> RPCError<NodeId, Node, E> {
        match e {
            CallError::Unreachable(msg) => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg))),
            CallError::Timeout => RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout: ttl }),
            CallError::Network(msg) => RPCError::Network(NetworkError::new(&std::io::Error::other(msg))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        // openraft's own timeout of the call is the ceiling. The round-trip estimate may cut a
        // heartbeat shorter, but not a call carrying entries: the follower writes and fsyncs
        // them before it answers, which can take far longer than a round trip (found by the
        // soak benchmark: batches of thousands of results timed out at 75 ms again and again
        // and cost the leader its leadership). Such calls give no sample either, so the
        // estimate stays the network's.
        let (ttl, timed) = if rpc.entries.is_empty() {
            (self.rtts.timeout(self.target).min(option.hard_ttl()), Timed::Yes)
        } else {
            (option.hard_ttl(), Timed::No)
        };
        self.call("append entries", &rpc, ttl, timed, |mut c, r| async move { c.append_entries(r).await })
            .await
            .map_err(|e| self.rpc_error(RPCTypes::AppendEntries, ttl, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        let ttl = option.hard_ttl();
        self.call("install snapshot", &rpc, ttl, Timed::No, |mut c, r| async move { c.install_snapshot(r).await })
            .await
            .map_err(|e| self.rpc_error(RPCTypes::InstallSnapshot, ttl, e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        self.call("vote", &rpc, ttl, Timed::Yes, |mut c, r| async move { c.vote(r).await })
            .await
            .map_err(|e| self.rpc_error(RPCTypes::Vote, ttl, e))
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterIdentity;

    #[test]
    fn masters_of_two_clusters_refuse_each_other_and_unnamed_ones_are_let_in() {
        let mine = ClusterIdentity::default();
        assert_eq!(mine.refusal(Some("00000000000000ab")), None, "this master does not know its cluster yet");
        mine.set(0xab);
        assert_eq!(mine.refusal(Some("00000000000000ab")), None);
        assert_eq!(mine.refusal(None), None, "a new master catching up has no identity yet");
        assert_eq!(mine.refusal(Some("garbage")), None);
        let why = mine.refusal(Some("00000000000000cd")).expect("refused");
        assert!(why.contains("00000000000000ab") && why.contains("00000000000000cd"), "{why}");
    }
}
