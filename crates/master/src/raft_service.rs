//! The server side of openraft's RPCs: decode, hand to the local Raft node, encode the answer.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use flotilla_proto::codec;
use flotilla_proto::grpc::raft_service_server::RaftService;
use flotilla_proto::grpc::Envelope;
use flotilla_raft::network::{ClusterIdentity, CLUSTER_HEADER};
use flotilla_raft::{Raft, TypeConfig};

use crate::watchdog::LeaderContact;

#[derive(Clone)]
pub struct RaftSvc {
    pub raft: Raft,
    pub contact: Arc<LeaderContact>,
    pub cluster: ClusterIdentity,
    /// Told when a leader sends what this build cannot decode (a newer release's entry): the
    /// master stops, loudly, before anything reaches its log.
    pub incompatible: tokio::sync::mpsc::Sender<String>,
}

impl RaftSvc {
    /// Refuses an RPC from a master of another cluster.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let theirs = req.metadata().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok());
        match self.cluster.refusal(theirs) {
            Some(why) => Err(Status::failed_precondition(why)),
            None => Ok(()),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, req: Request<Envelope>) -> Result<T, Status> {
    codec::decode(what, &req.into_inner().payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(
    what: &'static str,
    result: Result<T, E>,
) -> Result<Response<Envelope>, Status> {
    let result: Result<T, String> = result.map_err(|e| e.to_string());
    let payload = codec::encode(what, &result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(Envelope { payload }))
}

#[tonic::async_trait]
impl RaftService for RaftSvc {
    async fn append_entries(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.check(&req)?;
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = match decode("append entries", req) {
            Ok(rpc) => rpc,
            Err(status) => {
                let why = format!(
                    "the leader sent entries this master ({}) cannot decode ({}): the leader runs a newer \
                     release that used a feature before every master was upgraded, or the data is damaged. \
                     This master stops without writing them; upgrade it and start it again",
                    flotilla_proto::api::VERSION,
                    status.message()
                );
                let _ = self.incompatible.try_send(why);
                return Err(status);
            }
        };
        self.contact.touch();
        reply("append entries", self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.check(&req)?;
        let rpc: openraft::raft::VoteRequest<u64> = decode("vote", req)?;
        reply("vote", self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.check(&req)?;
        let rpc: openraft::raft::InstallSnapshotRequest<TypeConfig> = decode("install snapshot", req)?;
        reply("install snapshot", self.raft.install_snapshot(rpc).await)
    }
}
