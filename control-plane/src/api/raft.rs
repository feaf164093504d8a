//! `distributed_llm.raft.RaftService`: Raft consensus traffic and the leader's side of
//! forwarded requests.

use std::{pin::Pin, sync::Arc};

use dllm_proto::raft::{raft_service_server::RaftService, RaftPayload};
use futures::{Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use dllm_auth::policy::{self, Caller};

use crate::{
    forward::{MembershipChange, Proto, Tagged, UsageQuery},
    replica::{election::PreVoteRequest, Replica},
};

/// Serves Raft traffic for one replica.
pub struct RaftApi {
    replica: Arc<Replica>,
    shutdown: CancellationToken,
}

impl RaftApi {
    /// The service over `replica`; AppendEntries streams end when `shutdown` is cancelled.
    pub fn new(replica: Arc<Replica>, shutdown: CancellationToken) -> Self {
        Self { replica, shutdown }
    }
}

impl RaftApi {
    /// Only a replica that is a member (voter or learner, in any config of a joint change)
    /// may call RaftService; one that knows no membership yet (waiting to be added, or not yet
    /// formed) takes any replica of the cluster's CA.
    fn check_member<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let metrics = self.replica.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let known = membership.nodes().next().is_some();
        policy::require_member(request.extensions().get::<Caller>(), |id| {
            !known || membership.get_node(&id).is_some()
        })
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

/// The answers of a streamed call, one per request, in order.
type Answers = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

/// Most batches of one `ForwardWriteStream` proposed at once; a follower keeps fewer in
/// flight.
const FORWARD_BATCHES_IN_FLIGHT: usize = 8;

/// A follower's batch of writes: proposed concurrently, so the leader's group commit takes
/// them into as few entries as it can; answered in order.
async fn forward_writes(replica: &Replica, data: &[u8]) -> Result<RaftPayload, Status> {
    let writes: Vec<Tagged> = bincode::deserialize(data)
        .map_err(|e| Status::invalid_argument(format!("data: undecodable payload: {e}")))?;
    let answers = futures::future::join_all(
        writes
            .into_iter()
            .map(|w| replica.leader_propose(w.request_id, w.proposal)),
    )
    .await;
    bincode::serialize(&answers)
        .map(|data| RaftPayload { data })
        .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        encode(&self.replica.raft.append_entries(decode(request)?).await)
    }

    type AppendEntriesStreamStream = Answers;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Answers>, Status> {
        self.check_member(&request)?;
        // One request at a time, answered before the next is read: the answers keep the
        // requests' order, and the stream ends at the first error (the sender opens another).
        // A shutting-down replica ends it between requests, so that the server's drain of
        // in-flight calls does not wait for a stream that would never end on its own.
        let (replica, shutdown) = (self.replica.clone(), self.shutdown.clone());
        let answers = futures::stream::unfold(Some(request.into_inner()), move |incoming| {
            let (replica, shutdown) = (replica.clone(), shutdown.clone());
            async move {
                let mut incoming = incoming?;
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    next = incoming.message() => next,
                };
                let request = match next {
                    Ok(Some(payload)) => payload,
                    Ok(None) => return None,
                    Err(status) => return Some((Err(status), None)),
                };
                let answer = match bincode::deserialize(&request.data) {
                    Ok(rpc) => bincode::serialize(&replica.raft.append_entries(rpc).await)
                        .map(|data| RaftPayload { data })
                        .map_err(|e| Status::internal(format!("cannot encode the answer: {e}"))),
                    Err(e) => Err(Status::invalid_argument(format!(
                        "data: undecodable payload: {e}"
                    ))),
                };
                let next = answer.is_ok().then_some(incoming);
                Some((answer, next))
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        encode(&self.replica.raft.vote(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        encode(&self.replica.raft.install_snapshot(decode(request)?).await)
    }

    async fn forward_write(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        forward_writes(&self.replica, &request.into_inner().data)
            .await
            .map(Response::new)
    }

    type ForwardWriteStreamStream = Answers;

    async fn forward_write_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Answers>, Status> {
        self.check_member(&request)?;
        // Batches are proposed as they arrive (a follower keeps a few in flight, so that the
        // next can join the leader's next group while one commits) and answered in order.
        // A shutting-down replica stops reading new ones and ends the stream once those it
        // took are answered.
        let replica = self.replica.clone();
        let answers = request
            .into_inner()
            .take_until(self.shutdown.clone().cancelled_owned())
            .map(move |batch| {
                let replica = replica.clone();
                async move { forward_writes(&replica, &batch?.data).await }
            })
            .buffered(FORWARD_BATCHES_IN_FLIGHT);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn read_index(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        let () = decode(request)?;
        encode(&self.replica.leader_read_index().await)
    }

    async fn forward_membership(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        let change: MembershipChange = decode(request)?;
        encode(&self.replica.leader_membership(change).await)
    }

    async fn forward_heartbeat(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        let from = request
            .metadata()
            .get(crate::replica::FORWARDED_BY_METADATA_KEY)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // A follower's batch of heartbeats; answered in order.
        let batch: Vec<Proto<crate::replica::EncodedHeartbeat>> = decode(request)?;
        if let Some(from) = from {
            self.replica.forwarded_by(from);
        }
        let heartbeats = batch.into_iter().map(|h| h.0).collect();
        encode(&self.replica.leader_heartbeats(heartbeats))
    }

    async fn node_usage(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        let query: UsageQuery = decode(request)?;
        encode(&self.replica.leader_usage(query).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_member(&request)?;
        let question: PreVoteRequest = decode(request)?;
        encode(&self.replica.answer_pre_vote(question).await)
    }
}
