//! `distributed_llm.DiscoveryService`: joining, leaving and discovering nodes.

use dllm_proto::server::answer;
use std::{collections::HashSet, sync::Arc};

use dllm_proto::pb::{self, discovery_service_server::DiscoveryService};
use tonic::{Request, Response, Status};

use super::{first_members::FirstMembers, paging::Page};
use crate::{
    convert::{self, ResourceFilter},
    forward::UsageQuery,
    replica::Replica,
    state::{Command, NodeSpec, Outcome},
};
use dllm_auth::policy::{self, Caller};
use dllm_util::clock::now_ms;

/// Serves DiscoveryService on one replica.
pub struct DiscoveryApi {
    replica: Arc<Replica>,
    /// What joins list in `existing_nodes`; `None` when the list is unbounded.
    first: Option<FirstMembers>,
}

impl DiscoveryApi {
    /// The service over `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        let bound = replica.config().max_existing_nodes;
        let first = (bound > 0).then(|| FirstMembers::new(bound));
        Self { replica, first }
    }
}

#[tonic::async_trait]
impl DiscoveryService for DiscoveryApi {
    async fn discover_nodes(
        &self,
        request: Request<pb::DiscoveryRequest>,
    ) -> Result<Response<pb::DiscoveryResponse>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        let filter = ResourceFilter::parse("filter", req.filter)?;
        let page = Page::parse(req.limit, &req.page_token)?;
        let known: HashSet<&str> = req.known_nodes.iter().map(String::as_str).collect();
        let (nodes, next_page_token) = self
            .replica
            .read(|s| {
                let (nodes, next) = page.select(s.members_unordered().filter(|n| {
                    n.node_id != req.requester_id
                        && !known.contains(n.node_id.as_str())
                        && filter.matches(n)
                }));
                let nodes: Vec<pb::NodeInfo> = nodes.into_iter().map(convert::node_info).collect();
                (nodes, next)
            })
            .await?;
        let nodes = self.replica.with_last_seen(nodes).await?;
        let more = if next_page_token.is_empty() {
            ""
        } else {
            "; more follow (next_page_token)"
        };
        Ok(answer(pb::DiscoveryResponse {
            message: format!("{} node(s) discovered{more}", nodes.len()),
            discovered_nodes: nodes,
            success: true,
            next_page_token,
        }))
    }

    async fn register_with_cluster(
        &self,
        request: Request<pb::ClusterJoinRequest>,
    ) -> Result<Response<pb::ClusterJoinResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request_compressed = request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity");
        let request = request.into_inner();
        let skip_existing = request.skip_existing_nodes;
        let spec = NodeSpec::try_from(request)?;
        policy::require_own_node(caller.as_ref(), &spec.node_id)?;
        let node_id = spec.node_id.clone();
        let cluster_id = self.replica.ensure_cluster_id().await?;
        let command = Command::RegisterNode {
            spec,
            now_ms: now_ms(),
        };
        #[cfg(feature = "planted-bugs")]
        if crate::planted::enabled(crate::planted::EARLY_ACK) {
            // Planted bug: acknowledge the registration before it is committed.
            let replica = self.replica.clone();
            tokio::spawn(async move { replica.write(command).await });
            return Ok(answer(pb::ClusterJoinResponse {
                success: true,
                message: "registered".to_string(),
                existing_nodes: Vec::new(),
                cluster_id,
            }));
        }
        let outcome = self.replica.write(command).await?;
        let mut message = match outcome {
            Outcome::Registered { created: true } => "registered",
            _ => "re-registered",
        }
        .to_string();
        // write() returns once this replica has applied the registration, so its own state
        // is at least as new as the write.
        let existing_nodes = if skip_existing {
            Vec::new()
        } else {
            let (nodes, others) = self.replica.local_state().read(|s| match &self.first {
                // The bounded list, kept up to date through the change feed.
                Some(first) => {
                    let (nodes, others) = first.answer(s, &node_id);
                    (nodes.into_iter().map(convert::node_info).collect(), others)
                }
                // Unbounded (--max-existing-nodes 0): every other member.
                None => {
                    let others = s.members().filter(|n| n.node_id != node_id);
                    let nodes: Vec<pb::NodeInfo> = others.map(convert::node_info).collect();
                    let count = nodes.len();
                    (nodes, count)
                }
            });
            if nodes.len() < others {
                message = format!(
                    "{message}; existing_nodes lists the first {} of {others} other member nodes (by node_id): page the rest with DiscoverNodes (limit, page_token)",
                    nodes.len()
                );
            }
            nodes
        };
        let mut response = answer(pb::ClusterJoinResponse {
            success: true,
            message,
            existing_nodes,
            cluster_id,
        });
        if !request_compressed {
            // As grpc-go servers do: compress the answer only for a client that compressed
            // its request; the member list is the one large answer here.
            response.disable_compression();
        }
        Ok(response)
    }

    async fn leave_cluster(
        &self,
        request: Request<pb::ClusterLeaveRequest>,
    ) -> Result<Response<pb::ClusterLeaveResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        let node_id = convert::node_id("node_id", &req.node_id)?;
        convert::text("reason", &req.reason, convert::MAX_TEXT_LEN)?;
        policy::require_own_node(caller.as_ref(), &node_id)?;
        let outcome = self
            .replica
            .write(Command::LeaveNode {
                node_id: node_id.clone(),
                now_ms: now_ms(),
            })
            .await?;
        let message = match outcome {
            Outcome::Left { already: true } => format!("node {node_id} had already left"),
            _ if req.reason.is_empty() => format!("node {node_id} left"),
            _ => format!("node {node_id} left ({})", req.reason),
        };
        tracing::info!(%node_id, reason = %req.reason, "node left the cluster");
        Ok(answer(pb::ClusterLeaveResponse {
            success: true,
            message,
        }))
    }

    async fn get_cluster_info(
        &self,
        request: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let req = request.into_inner();
        convert::text("requester_id", &req.requester_id, convert::MAX_TEXT_LEN)?;
        let fleet = self.replica.usage(UsageQuery::Fleet).await?;
        let info = self
            .replica
            .read(|s| pb::ClusterInfoResponse {
                cluster_id: s.cluster_id.clone().unwrap_or_default(),
                nodes: s
                    .nodes_by_id()
                    .into_iter()
                    .map(|n| fleet.with_last_seen(convert::node_info(n)))
                    .collect(),
                models: s.models.values().map(convert::model_info).collect(),
                metrics: Some(convert::cluster_metrics(s, &fleet.free_memory_mb)),
            })
            .await?;
        Ok(answer(info))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let req = request.into_inner();
        convert::heartbeat(&req)?;
        policy::require_own_node(caller.as_ref(), &req.node_id)?;
        // Any replica takes heartbeats (followers forward them to the leader in batches), so
        // workers stay on the replica they reached and spread the load over the replicas; the
        // leader answers and names the follower to heartbeat from now on.
        let (heartbeat, elsewhere) = self.replica.heartbeat(req).await?;
        let mut response = answer(heartbeat);
        if let Some(value) = elsewhere.and_then(|addr| addr.parse().ok()) {
            response
                .metadata_mut()
                .insert(crate::replica::HEARTBEAT_TO_METADATA_KEY, value);
        }
        Ok(response)
    }
}
