//! `distributed_llm.NodeService` on a control-plane replica: nodes as the replicated state
//! holds them, metrics from each node's last heartbeat (kept by the leader).

use dllm_proto::server::answer;
use std::sync::Arc;

use dllm_proto::{metrics, pb};
use dllm_util::node::{node_info_answer, peers_answer};
use pb::node_service_server::NodeService;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::streams;
use crate::{
    convert,
    error::ApiError,
    forward::UsageQuery,
    replica::Replica,
    state::{ClusterState, Node},
};

/// Validates `metric_names` against the API's metric vocabulary.
fn metric_names(names: &[String]) -> Result<(), ApiError> {
    match metrics::unknown_name(names) {
        None => Ok(()),
        Some((i, name)) => Err(ApiError::invalid(
            format!("metric_names[{i}]"),
            format!(
                "{name:?} is not a metric; valid names: {}",
                metrics::valid_names()
            ),
        )),
    }
}

fn find<'a>(state: &'a ClusterState, node_id: &str) -> Result<&'a Node, ApiError> {
    state.nodes.get(node_id).ok_or_else(|| ApiError::NotFound {
        kind: "node",
        id: node_id.to_string(),
    })
}

/// The metrics of `node_id` from the leader's latest heartbeat sample, and its timestamp.
async fn node_metrics(
    replica: &Replica,
    node_id: &str,
    names: &[String],
) -> Result<(Vec<pb::MetricValue>, i64), ApiError> {
    let layers_max = replica
        .read(|s| find(s, node_id).map(|n| n.resources.max_layers))
        .await??;
    let sample = replica
        .usage(UsageQuery::Node(node_id.to_string()))
        .await?
        .sample
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "no heartbeat from node {node_id:?} has reached the current leader yet"
            ))
        })?;
    let usage = sample.0;
    Ok((metrics::render(&usage, layers_max, names), usage.timestamp))
}

/// Serves NodeService on one replica.
pub struct NodeApi {
    replica: Arc<Replica>,
    shutdown: CancellationToken,
}

impl NodeApi {
    /// The service over `replica`; streams end when `shutdown` is cancelled.
    pub fn new(replica: Arc<Replica>, shutdown: CancellationToken) -> Self {
        Self { replica, shutdown }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn get_node_info(
        &self,
        request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        let node_id = convert::node_id("node_id", &request.into_inner().node_id)?;
        let seen = self
            .replica
            .usage(UsageQuery::Node(node_id.clone()))
            .await?;
        let node = self
            .replica
            .read(|s| find(s, &node_id).map(convert::node_info))
            .await??;
        Ok(node_info_answer(seen.with_last_seen(node)))
    }

    async fn get_peers(
        &self,
        request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        let seen = self.replica.usage(UsageQuery::Fleet).await?;
        let peers: Vec<pb::NodeInfo> = self
            .replica
            .read(|s| {
                s.members()
                    .filter(|n| req.include_self || n.node_id != req.requester_id)
                    .map(|n| seen.with_last_seen(convert::node_info(n)))
                    .collect()
            })
            .await?;
        Ok(peers_answer(peers))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let req = request.into_inner();
        let node_id = convert::node_id("node_id", &req.node_id)?;
        metric_names(&req.metric_names)?;
        let (metrics, timestamp) = node_metrics(&self.replica, &node_id, &req.metric_names).await?;
        Ok(answer(pb::MetricsResponse {
            metrics,
            timestamp,
            success: true,
        }))
    }

    type StreamMetricsStream = ReceiverStream<Result<pb::MetricsStreamResponse, Status>>;

    async fn stream_metrics(
        &self,
        request: Request<pb::MetricsStreamRequest>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let req = request.into_inner();
        let node_id = convert::node_id("node_id", &req.node_id)?;
        metric_names(&req.metric_names)?;
        let every = streams::interval("interval_seconds", req.interval_seconds)?;
        // Fail now, not in the first message, when the node is unknown.
        self.replica
            .read(|s| find(s, &node_id).map(|_| ()))
            .await??;
        let replica = self.replica.clone();
        let names = Arc::new(req.metric_names);
        let stream = streams::periodic(every, self.shutdown.clone(), None, move |_| {
            let (replica, names, node_id) = (replica.clone(), names.clone(), node_id.clone());
            async move {
                let (metrics, timestamp) = node_metrics(&replica, &node_id, &names).await?;
                Ok(vec![pb::MetricsStreamResponse { metrics, timestamp }])
            }
        });
        Ok(Response::new(stream))
    }
}
