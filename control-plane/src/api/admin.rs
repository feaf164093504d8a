//! `distributed_llm.AdminService`: the control plane's own replicas.

use dllm_proto::server::answer;
use std::sync::Arc;

use dllm_proto::pb::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use crate::{error::ApiError, forward::MembershipChange, replica::Replica};

/// Serves AdminService on one replica.
pub struct AdminApi {
    replica: Arc<Replica>,
}

impl AdminApi {
    /// The service over `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

/// Validates an AddReplica request.
pub(crate) fn add_change(id: u64, address: &str) -> Result<MembershipChange, ApiError> {
    if id == 0 {
        return Err(ApiError::invalid("id", "must be >= 1"));
    }
    dllm_util::config::split_host_port("address", address)
        .map_err(|_| ApiError::invalid("address", format!("{address:?} is not host:port")))?;
    Ok(MembershipChange::Add {
        id,
        addr: address.to_string(),
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type SaveSnapshotStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::SnapshotChunk, Status>>>;

    async fn save_snapshot(
        &self,
        _request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let file = crate::recovery::save(&self.replica).await?;
        let chunks: Vec<_> = file
            .chunks(crate::recovery::CHUNK_BYTES)
            .map(|data| {
                Ok(pb::SnapshotChunk {
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn get_replica_status(
        &self,
        _request: Request<pb::ReplicaStatusRequest>,
    ) -> Result<Response<pb::ReplicaStatusResponse>, Status> {
        Ok(answer(self.replica.status()))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::ReplicaStatusResponse>, Status> {
        let req = request.into_inner();
        let change = add_change(req.id, &req.address)?;
        self.replica.change_membership(change).await?;
        Ok(answer(self.replica.status()))
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::ReplicaStatusResponse>, Status> {
        let id = request.into_inner().id;
        if id == 0 {
            return Err(ApiError::invalid("id", "must be >= 1").into());
        }
        self.replica
            .change_membership(MembershipChange::Remove { id })
            .await?;
        Ok(answer(self.replica.status()))
    }
}
