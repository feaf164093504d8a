//! `distributed_llm.NodeService` on a control-plane replica: nodes as the replicated state
//! holds them.

use std::sync::Arc;

use dllm_proto::pb::{self, node_service_server::NodeService};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::streams;
use crate::{
    convert,
    error::ApiError,
    replica::Replica,
    state::{ClusterState, Node},
};

/// The metrics a replica reports for a node, with their units. They come from what the node
/// registered and what placement assigned it; live usage comes from heartbeats once they exist.
pub const METRICS: &[(&str, &str)] = &[
    ("cpu_cores", "count"),
    ("memory_total_mb", "MiB"),
    ("gpu_count", "count"),
    ("gpu_memory_total_mb", "MiB"),
    ("layers_max", "count"),
    ("layers_used", "count"),
];

fn metric(name: &str, unit: &str, value: f64) -> pb::MetricValue {
    pb::MetricValue {
        name: name.to_string(),
        value,
        unit: unit.to_string(),
        labels: Default::default(),
    }
}

/// The metrics of `node`, restricted to `names` (all when empty).
fn node_metrics(node: &Node, names: &[String]) -> Vec<pb::MetricValue> {
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    let mut out = Vec::new();
    for (name, unit) in METRICS {
        if !wanted(name) {
            continue;
        }
        let r = &node.resources;
        match *name {
            "cpu_cores" => out.push(metric(name, unit, r.cpu_cores as f64)),
            "memory_total_mb" => out.push(metric(name, unit, r.memory_mb as f64)),
            "gpu_count" => out.push(metric(name, unit, r.gpus.len() as f64)),
            "gpu_memory_total_mb" => {
                for (i, gpu) in r.gpus.iter().enumerate() {
                    let mut m = metric(name, unit, gpu.memory_mb as f64);
                    m.labels.insert("gpu".into(), i.to_string());
                    m.labels.insert("uuid".into(), gpu.uuid.clone());
                    out.push(m);
                }
            }
            "layers_max" => out.push(metric(name, unit, r.max_layers.into())),
            "layers_used" => out.push(metric(name, unit, node.used_layers.into())),
            _ => {}
        }
    }
    out
}

/// Validates `metric_names` against [`METRICS`].
fn metric_names(names: &[String]) -> Result<(), ApiError> {
    for (i, name) in names.iter().enumerate() {
        if !METRICS.iter().any(|(n, _)| n == name) {
            let valid: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::invalid(
                format!("metric_names[{i}]"),
                format!(
                    "{name:?} is not a metric; valid names: {}",
                    valid.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn find<'a>(state: &'a ClusterState, node_id: &str) -> Result<&'a Node, ApiError> {
    state.nodes.get(node_id).ok_or_else(|| ApiError::NotFound {
        kind: "node",
        id: node_id.to_string(),
    })
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
        let node = self
            .replica
            .read(|s| find(s, &node_id).map(convert::node_info))
            .await??;
        Ok(Response::new(pb::NodeInfoResponse {
            message: format!("node {} is {}", node.node_id, node.status),
            node: Some(node),
            success: true,
        }))
    }

    async fn get_peers(
        &self,
        request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        let peers: Vec<pb::NodeInfo> = self
            .replica
            .read(|s| {
                s.members()
                    .filter(|n| req.include_self || n.node_id != req.requester_id)
                    .map(convert::node_info)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::PeersResponse {
            total_count: peers.len() as i32,
            peers,
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let req = request.into_inner();
        let node_id = convert::node_id("node_id", &req.node_id)?;
        metric_names(&req.metric_names)?;
        let (metrics, timestamp) = self
            .replica
            .read(|s| {
                find(s, &node_id).map(|n| (node_metrics(n, &req.metric_names), n.last_seen_ms))
            })
            .await??;
        Ok(Response::new(pb::MetricsResponse {
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
        let stream = streams::periodic(every, self.shutdown.clone(), move || {
            let (replica, names, node_id) = (replica.clone(), names.clone(), node_id.clone());
            async move {
                let (metrics, timestamp) = replica
                    .read(|s| find(s, &node_id).map(|n| (node_metrics(n, &names), n.last_seen_ms)))
                    .await??;
                Ok(vec![pb::MetricsStreamResponse { metrics, timestamp }])
            }
        });
        Ok(Response::new(stream))
    }
}
