//! openraft's RPCs carried over gRPC (`RaftService` in `flotilla.proto`) to the peer masters.
//!
//! Each request and response is a postcard-encoded openraft type inside an `Envelope`. The
//! remote side answers `Result<T, String>`: remote failures are reported as "unreachable" so
//! openraft backs off instead of hammering a peer that is shutting down or broken.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

use crate::{Node, NodeId, TypeConfig};

/// Largest gRPC message accepted or sent between masters (a batch of entries or a snapshot
/// chunk).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Builds connections to peers; one per target, reused across RPCs.
#[derive(Clone)]
pub struct GrpcNetwork {
    /// This master's id, for error reports.
    pub id: NodeId,
    /// Cluster token sent with every request, when configured.
    pub token: Option<Arc<str>>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        let channel = peer_channel(&node.addr);
        PeerConnection { id: self.id, target, addr: node.addr.clone(), channel, token: self.token.clone() }
    }
}

/// A lazily connected HTTP/2 channel to a peer master.
pub fn peer_channel(addr: &str) -> Result<Channel, String> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad peer address {addr}: {e}"))?;
    Ok(endpoint
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_lazy())
}

pub struct PeerConnection {
    id: NodeId,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
    token: Option<Arc<str>>,
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
        let client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let response = match tokio::time::timeout(ttl, send(client, request)).await {
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
        let ttl = option.hard_ttl();
        self.call("append entries", &rpc, ttl, |mut c, r| async move { c.append_entries(r).await })
            .await
            .map_err(|e| self.rpc_error(RPCTypes::AppendEntries, ttl, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        let ttl = option.hard_ttl();
        self.call("install snapshot", &rpc, ttl, |mut c, r| async move { c.install_snapshot(r).await })
            .await
            .map_err(|e| self.rpc_error(RPCTypes::InstallSnapshot, ttl, e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        self.call("vote", &rpc, ttl, |mut c, r| async move { c.vote(r).await })
            .await
            .map_err(|e| self.rpc_error(RPCTypes::Vote, ttl, e))
    }
}
