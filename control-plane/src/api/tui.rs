//! `distributed_llm.TUIService`: what the terminal UI and the `dllm` command show and run.

use dllm_proto::server::answer;
use std::sync::Arc;

use dllm_proto::pb::{self, tui_service_server::TuiService};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use dllm_auth::policy::{self, Caller};

use super::paging::Page;
use super::{
    commands, streams,
    updates::{MetricsCache, Subscription, UPDATE_TYPES},
};
use crate::{
    convert::{self, NodeFilter},
    error::ApiError,
    forward::UsageQuery,
    replica::Replica,
};

/// Serves TUIService on one replica.
pub struct TuiApi {
    replica: Arc<Replica>,
    shutdown: CancellationToken,
    metrics: Arc<MetricsCache>,
}

impl TuiApi {
    /// The service over `replica`; streams end when `shutdown` is cancelled.
    pub fn new(replica: Arc<Replica>, shutdown: CancellationToken) -> Self {
        Self {
            replica,
            shutdown,
            metrics: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl TuiService for TuiApi {
    async fn get_node_list(
        &self,
        request: Request<pb::NodeListRequest>,
    ) -> Result<Response<pb::NodeListResponse>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        let filter = NodeFilter::parse(req.filter)?;
        let page = Page::parse(req.limit, &req.page_token)?;
        // Cluster metrics need the fleet's free memory; otherwise only the page's last contacts
        // are asked for.
        let fleet = match req.include_metrics {
            true => Some(self.replica.usage(UsageQuery::Fleet).await?),
            false => None,
        };
        let mut response = self
            .replica
            .read(|s| {
                let (nodes, next_page_token) =
                    page.select(s.nodes.values().filter(|n| filter.matches(n)));
                pb::NodeListResponse {
                    nodes: nodes.into_iter().map(convert::node_info).collect(),
                    cluster_metrics: fleet
                        .as_ref()
                        .map(|f| convert::cluster_metrics(s, &f.free_memory_mb)),
                    next_page_token,
                }
            })
            .await?;
        let nodes = std::mem::take(&mut response.nodes);
        response.nodes = match &fleet {
            Some(f) => nodes.into_iter().map(|n| f.with_last_seen(n)).collect(),
            None => self.replica.with_last_seen(nodes).await?,
        };
        Ok(answer(response))
    }

    async fn get_model_list(
        &self,
        request: Request<pb::ModelListRequest>,
    ) -> Result<Response<pb::ModelListResponse>, Status> {
        convert::text(
            "requester_id",
            &request.into_inner().requester_id,
            convert::MAX_TEXT_LEN,
        )?;
        let models = self
            .replica
            .read(|s| s.models.values().map(convert::model_info).collect())
            .await?;
        Ok(answer(pb::ModelListResponse { models }))
    }

    type StreamUpdatesStream = ReceiverStream<Result<pb::ClusterUpdate, Status>>;

    async fn stream_updates(
        &self,
        request: Request<pb::UpdateStreamRequest>,
    ) -> Result<Response<Self::StreamUpdatesStream>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        let every = streams::interval("interval_seconds", req.interval_seconds)?;
        for (i, t) in req.update_types.iter().enumerate() {
            if !UPDATE_TYPES.contains(&t.as_str()) {
                return Err(ApiError::invalid(
                    format!("update_types[{i}]"),
                    format!("{t:?} is not one of {}", UPDATE_TYPES.join(", ")),
                )
                .into());
            }
        }
        let types = if req.update_types.is_empty() {
            UPDATE_TYPES.iter().map(|t| t.to_string()).collect()
        } else {
            // Each type once, in the order asked.
            let mut types: Vec<String> = Vec::new();
            for t in req.update_types {
                if !types.contains(&t) {
                    types.push(t);
                }
            }
            types
        };
        let deltas = req.deltas;
        let subscription =
            Subscription::new(self.replica.clone(), self.metrics.clone(), types, deltas);
        let subscription = Arc::new(tokio::sync::Mutex::new(subscription));
        // A delta stream also goes promptly when an entry is applied (a push costs what
        // changed); whole lists go at the interval only, as the reference defines them (a
        // push costs the fleet).
        let changes = deltas.then(|| self.replica.raft.metrics());
        let stream = streams::periodic(every, self.shutdown.clone(), changes, move |timer| {
            let subscription = subscription.clone();
            async move { Ok(subscription.lock().await.next(timer).await?) }
        });
        Ok(Response::new(stream))
    }

    async fn execute_command(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        convert::text("command", &req.command, convert::MAX_TEXT_LEN)?;
        let command = req.command.trim();
        policy::require(
            caller.as_ref(),
            policy::command_roles(command),
            &format!("the command {command:?}"),
        )?;
        let parsed = commands::parse(command, &req.args, &req.options);
        if let Ok(cmd) = &parsed {
            policy::require(
                caller.as_ref(),
                cmd.roles(),
                &format!("the command {command:?}"),
            )?;
        }
        let (output, error, exit_code) = match parsed {
            Err(usage) => (String::new(), usage.0, 2),
            Ok(cmd) => match commands::run(&self.replica, cmd).await {
                Ok(output) => (output, String::new(), 0),
                Err(e) => (String::new(), e.to_string(), 1),
            },
        };
        Ok(answer(pb::CommandResponse {
            success: exit_code == 0,
            output,
            error,
            exit_code,
        }))
    }
}
