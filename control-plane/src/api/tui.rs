//! `distributed_llm.TUIService`: what the terminal UI and the `dllm` command show and run.

use std::{fmt::Write as _, sync::Arc};

use dllm_proto::pb::{self, tui_service_server::TuiService};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{admin::add_change, now_ms, streams};
use crate::{
    convert::{self, NodeFilter},
    error::ApiError,
    forward::{MembershipChange, UsageQuery},
    replica::Replica,
    state::Command,
};

/// The update types StreamUpdates knows.
pub const UPDATE_TYPES: &[&str] = &["nodes", "models", "metrics"];

/// Serves TUIService on one replica.
pub struct TuiApi {
    replica: Arc<Replica>,
    shutdown: CancellationToken,
}

impl TuiApi {
    /// The service over `replica`; streams end when `shutdown` is cancelled.
    pub fn new(replica: Arc<Replica>, shutdown: CancellationToken) -> Self {
        Self { replica, shutdown }
    }
}

/// What ExecuteCommand answers for `help`.
const HELP: &str = "\
commands:
  help                              this text
  replicas                          control-plane replicas, leader, term, indexes
  nodes                             worker nodes
  leave <node_id>                   mark a node as left
  add-replica <id> <host:port>      add a control-plane replica (learner, then voter)
  remove-replica <id>               remove a control-plane replica
";

/// The result of one command: output, or an error and its exit code.
enum Ran {
    Ok(String),
    Usage(String),
    Failed(ApiError),
}

impl TuiApi {
    async fn run(&self, command: &str, args: &[String]) -> Ran {
        let usage = |text: &str| Ran::Usage(format!("usage: {text}"));
        match (command, args) {
            ("help", []) => Ran::Ok(HELP.to_string()),
            ("replicas", []) => {
                if let Err(e) = self.replica.linearize().await {
                    return Ran::Failed(e);
                }
                let s = self.replica.status();
                let index = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
                let mut out = format!(
                    "leader {} ({}) term {} commit {} applied {}\n",
                    s.leader_id,
                    s.leader_address,
                    s.term,
                    index(s.commit_index),
                    index(s.applied_index)
                );
                for r in &s.replicas {
                    let _ = writeln!(out, "{:>4}  {:<22} {}", r.id, r.address, r.role);
                }
                Ran::Ok(out)
            }
            ("nodes", []) => match self
                .replica
                .read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
                .await
            {
                Ok(nodes) => {
                    let mut out = format!(
                        "{:<24} {:<10} {:<22} {:>5} {:>10} {:>7}\n",
                        "NODE", "STATUS", "ADDRESS", "GPUS", "MEMORY_MB", "LAYERS"
                    );
                    for n in nodes {
                        let _ = writeln!(
                            out,
                            "{:<24} {:<10} {:<22} {:>5} {:>10} {:>3}/{:<3}",
                            n.node_id,
                            n.status.as_str(),
                            format!("{}:{}", n.address, n.port),
                            n.resources.gpus.len(),
                            n.resources.memory_mb,
                            n.used_layers,
                            n.resources.max_layers
                        );
                    }
                    Ran::Ok(out)
                }
                Err(e) => Ran::Failed(e),
            },
            ("leave", [node_id]) => {
                let node_id = match convert::node_id("args[0]", node_id) {
                    Ok(id) => id,
                    Err(e) => return Ran::Failed(e),
                };
                let command = Command::LeaveNode {
                    node_id: node_id.clone(),
                    now_ms: now_ms(),
                };
                match self.replica.write(command).await {
                    Ok(_) => Ran::Ok(format!("node {node_id} left\n")),
                    Err(e) => Ran::Failed(e),
                }
            }
            ("leave", _) => usage("leave <node_id>"),
            ("add-replica", [id, address]) => {
                let Ok(id) = id.parse::<u64>() else {
                    return Ran::Failed(ApiError::invalid(
                        "args[0]",
                        format!("{id:?} is not an id"),
                    ));
                };
                let change = match add_change(id, address) {
                    Ok(c) => c,
                    Err(e) => return Ran::Failed(e),
                };
                match self.replica.change_membership(change).await {
                    Ok(()) => Ran::Ok(format!("replica {id} at {address} is a voter\n")),
                    Err(e) => Ran::Failed(e),
                }
            }
            ("add-replica", _) => usage("add-replica <id> <host:port>"),
            ("remove-replica", [id]) => {
                let Some(id) = id.parse::<u64>().ok().filter(|id| *id > 0) else {
                    return Ran::Failed(ApiError::invalid(
                        "args[0]",
                        format!("{id:?} is not an id"),
                    ));
                };
                match self
                    .replica
                    .change_membership(MembershipChange::Remove { id })
                    .await
                {
                    Ok(()) => Ran::Ok(format!("replica {id} removed\n")),
                    Err(e) => Ran::Failed(e),
                }
            }
            ("remove-replica", _) => usage("remove-replica <id>"),
            ("help" | "replicas" | "nodes", _) => usage(&format!("{command} takes no arguments")),
            _ => Ran::Usage(format!("unknown command {command:?}\n{HELP}")),
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
        let free = if req.include_metrics {
            self.replica
                .usage(UsageQuery::FreeMemory)
                .await?
                .free_memory_mb
        } else {
            Default::default()
        };
        let response = self
            .replica
            .read(|s| pb::NodeListResponse {
                nodes: s
                    .nodes
                    .values()
                    .filter(|n| filter.matches(n))
                    .map(convert::node_info)
                    .collect(),
                cluster_metrics: req
                    .include_metrics
                    .then(|| convert::cluster_metrics(s, &free)),
            })
            .await?;
        Ok(Response::new(response))
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
        Ok(Response::new(pb::ModelListResponse { models }))
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
        let types: Arc<Vec<String>> = Arc::new(if req.update_types.is_empty() {
            UPDATE_TYPES.iter().map(|t| t.to_string()).collect()
        } else {
            req.update_types
        });
        let replica = self.replica.clone();
        let stream = streams::periodic(every, self.shutdown.clone(), move || {
            let (replica, types) = (replica.clone(), types.clone());
            async move {
                let timestamp = now_ms();
                let free = if types.iter().any(|t| t == "metrics") {
                    replica.usage(UsageQuery::FreeMemory).await?.free_memory_mb
                } else {
                    Default::default()
                };
                let updates = replica
                    .read(|s| {
                        types
                            .iter()
                            .map(|t| {
                                let mut u = pb::ClusterUpdate {
                                    update_type: t.clone(),
                                    timestamp,
                                    ..Default::default()
                                };
                                match t.as_str() {
                                    "nodes" => {
                                        u.nodes = s.nodes.values().map(convert::node_info).collect()
                                    }
                                    "models" => {
                                        u.models =
                                            s.models.values().map(convert::model_info).collect()
                                    }
                                    _ => u.metrics = Some(convert::cluster_metrics(s, &free)),
                                }
                                u
                            })
                            .collect()
                    })
                    .await?;
                Ok(updates)
            }
        });
        Ok(Response::new(stream))
    }

    async fn execute_command(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        convert::text("command", &req.command, convert::MAX_TEXT_LEN)?;
        let response = match self.run(req.command.trim(), &req.args).await {
            Ran::Ok(output) => pb::CommandResponse {
                success: true,
                output,
                error: String::new(),
                exit_code: 0,
            },
            Ran::Usage(error) => pb::CommandResponse {
                success: false,
                output: String::new(),
                error,
                exit_code: 2,
            },
            // An unreachable cluster is not a command failure: the caller should retry.
            Ran::Failed(e @ ApiError::Unavailable { .. }) => return Err(e.into()),
            Ran::Failed(e) => pb::CommandResponse {
                success: false,
                output: String::new(),
                error: e.to_string(),
                exit_code: 1,
            },
        };
        Ok(Response::new(response))
    }
}
