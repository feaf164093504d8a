//! The worker's NodeService: itself, its peers (fetched when asked, at most
//! [`crate::peers::MAX_AGE`] old), and live metrics.

use dllm_proto::server::answer;
use std::time::Duration;

use dllm_proto::{metrics, pb};
use dllm_util::node::{node_info_answer, peers_answer};
use futures::StreamExt;
use pb::node_service_server::NodeService;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::agent::Shared;

/// Shortest StreamMetrics interval, seconds.
pub const MIN_INTERVAL_SECONDS: i32 = 1;
/// Longest StreamMetrics interval, seconds.
pub const MAX_INTERVAL_SECONDS: i32 = 3600;

/// Serves NodeService for this worker.
pub struct WorkerNodeApi {
    shared: Shared,
    shutdown: CancellationToken,
}

impl WorkerNodeApi {
    /// The service; streams end when `shutdown` is cancelled.
    pub fn new(shared: Shared, shutdown: CancellationToken) -> Self {
        Self { shared, shutdown }
    }

    /// Checks that `node_id` names this worker (empty means this worker too).
    fn check_self(&self, node_id: &str) -> Result<(), Status> {
        let me = &self.shared.view().node.node_id;
        if node_id.is_empty() || node_id == me {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "node {node_id:?} not found: this worker is {me:?}; ask a control-plane replica about other nodes"
            )))
        }
    }

    fn check_names(names: &[String]) -> Result<(), Status> {
        match metrics::unknown_name(names) {
            None => Ok(()),
            Some((i, name)) => Err(Status::invalid_argument(format!(
                "metric_names[{i}]: {name:?} is not a metric; valid names: {}",
                metrics::valid_names()
            ))),
        }
    }

    fn me(&self) -> pb::NodeInfo {
        let view = self.shared.view();
        let mut node = view.node.clone();
        node.status = view.status.clone();
        node.last_seen = view.last_seen;
        if let Some(r) = node.resources.as_mut() {
            r.used_layers = view.used_layers();
        }
        node
    }

    fn metrics_now(&self, names: &[String]) -> (Vec<pb::MetricValue>, i64) {
        let usage = self.shared.sample();
        let max = self
            .shared
            .view()
            .node
            .resources
            .as_ref()
            .map_or(0, |r| r.max_layers);
        (metrics::render(&usage, max, names), usage.timestamp)
    }
}

#[tonic::async_trait]
impl NodeService for WorkerNodeApi {
    async fn get_node_info(
        &self,
        request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        self.check_self(&request.into_inner().node_id)?;
        let node = self.me();
        Ok(node_info_answer(node))
    }

    async fn get_peers(
        &self,
        request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let req = request.into_inner();
        let me = self.shared.view().node.node_id.clone();
        let mut peers = Vec::clone(&*self.shared.peers.get(&me).await?);
        if req.include_self {
            peers.push(self.me());
            peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        }
        Ok(peers_answer(peers))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let req = request.into_inner();
        self.check_self(&req.node_id)?;
        Self::check_names(&req.metric_names)?;
        let (metrics, timestamp) = self.metrics_now(&req.metric_names);
        Ok(answer(pb::MetricsResponse {
            metrics,
            timestamp,
            success: true,
        }))
    }

    type StreamMetricsStream =
        futures::stream::BoxStream<'static, Result<pb::MetricsStreamResponse, Status>>;

    async fn stream_metrics(
        &self,
        request: Request<pb::MetricsStreamRequest>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let req = request.into_inner();
        self.check_self(&req.node_id)?;
        Self::check_names(&req.metric_names)?;
        if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&req.interval_seconds) {
            return Err(Status::invalid_argument(format!(
                "interval_seconds: must be {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}, got {}",
                req.interval_seconds
            )));
        }
        let every = Duration::from_secs(req.interval_seconds as u64);
        let api = Self::new(self.shared.clone(), self.shutdown.clone());
        let names = req.metric_names;
        // No task is spawned: the stream lives exactly as long as the client's call, and ends
        // on shutdown.
        let stream = IntervalStream::new(tokio::time::interval(every))
            .take_until(self.shutdown.clone().cancelled_owned())
            .map(move |_| {
                let (metrics, timestamp) = api.metrics_now(&names);
                Ok(pb::MetricsStreamResponse { metrics, timestamp })
            });
        Ok(Response::new(stream.boxed()))
    }
}
