//! `distributed_llm.raft.RaftService`: Raft consensus traffic and the leader's side of
//! forwarded requests.

use std::sync::Arc;

use dllm_proto::raft::{raft_service_server::RaftService, RaftPayload};
use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use crate::{
    forward::{MembershipChange, Tagged, UsageQuery},
    replica::Replica,
};

/// Serves Raft traffic for one replica.
pub struct RaftApi {
    replica: Arc<Replica>,
}

impl RaftApi {
    /// The service over `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    bincode::deserialize(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("data: undecodable payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    bincode::serialize(value)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        encode(&self.replica.raft.append_entries(decode(request)?).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(&self.replica.raft.vote(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        encode(&self.replica.raft.install_snapshot(decode(request)?).await)
    }

    async fn forward_write(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        // A follower's batch: proposed concurrently, so the leader's group commit takes them
        // into as few entries as it can; answered in order.
        let writes: Vec<Tagged> = decode(request)?;
        let answers = futures::future::join_all(
            writes
                .into_iter()
                .map(|w| self.replica.leader_propose(w.request_id, w.proposal)),
        )
        .await;
        encode(&answers)
    }

    async fn read_index(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let () = decode(request)?;
        encode(&self.replica.leader_read_index().await)
    }

    async fn forward_membership(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let change: MembershipChange = decode(request)?;
        encode(&self.replica.leader_membership(change).await)
    }

    async fn forward_heartbeat(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        // A follower's batch of heartbeats, each protobuf-encoded; answered in order.
        use prost::Message;
        let batch: Vec<Vec<u8>> = decode(request)?;
        let heartbeats = batch
            .iter()
            .map(|bytes| dllm_proto::pb::HeartbeatRequest::decode(bytes.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("data: undecodable heartbeat: {e}")))?;
        encode(&self.replica.leader_heartbeats(heartbeats))
    }

    async fn node_usage(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let query: UsageQuery = decode(request)?;
        encode(&self.replica.leader_usage(query).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let question: crate::election::PreVoteRequest = decode(request)?;
        encode(&self.replica.answer_pre_vote(question).await)
    }
}
