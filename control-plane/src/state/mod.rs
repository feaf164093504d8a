//! The replicated cluster state: a plain data structure that applies [`Command`]s
//! deterministically, independent of gRPC and of Raft.
//!
//! Everything that differs between replicas (the clock, random ids) is decided by the
//! proposer and carried inside the command, so every replica computes the same state from the
//! same log.

mod command;
mod node;

use std::collections::BTreeMap;

pub use command::{Command, Outcome, Rejection, StatusChange};
pub use node::{Gpu, Model, Node, NodeSpec, NodeStatus, Resources};
use openraft::LogId;
use serde::{Deserialize, Serialize};

use crate::raft_types::TypeConfig;

/// The authoritative state of the cluster as of some log index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Generated once, by the first leader, when the cluster formed.
    pub cluster_id: Option<String>,
    /// Every node ever registered, including those that left, by node_id.
    pub nodes: BTreeMap<String, Node>,
    /// Every registered model, by id.
    pub models: BTreeMap<String, Model>,
}

impl ClusterState {
    /// Applies one command; the answer tells the proposer what happened.
    pub fn apply(&mut self, command: Command) -> Outcome {
        match command {
            Command::SetClusterId { cluster_id } => {
                let id = self.cluster_id.get_or_insert(cluster_id);
                Outcome::ClusterId {
                    cluster_id: id.clone(),
                }
            }
            Command::RegisterNode { spec, now_ms } => self.register(spec, now_ms),
            Command::LeaveNode { node_id, now_ms } => self.leave(&node_id, now_ms),
            Command::SetNodeStatuses { changes } => self.set_statuses(changes),
        }
    }

    fn register(&mut self, spec: NodeSpec, now_ms: i64) -> Outcome {
        match self.nodes.get_mut(&spec.node_id) {
            Some(node) => {
                node.address = spec.address;
                node.port = spec.port;
                node.resources = spec.resources;
                node.status = NodeStatus::Healthy;
                node.last_seen_ms = now_ms;
                node.generation += 1;
                Outcome::Registered { created: false }
            }
            None => {
                let node = Node {
                    node_id: spec.node_id.clone(),
                    address: spec.address,
                    port: spec.port,
                    resources: spec.resources,
                    used_layers: 0,
                    status: NodeStatus::Healthy,
                    last_seen_ms: now_ms,
                    registered_at_ms: now_ms,
                    generation: 1,
                };
                self.nodes.insert(spec.node_id, node);
                Outcome::Registered { created: true }
            }
        }
    }

    fn set_statuses(&mut self, changes: Vec<StatusChange>) -> Outcome {
        let mut applied = 0;
        for change in changes {
            let Some(node) = self.nodes.get_mut(&change.node_id) else {
                continue;
            };
            if node.generation != change.generation
                || node.status != change.from
                || change.to == NodeStatus::Left
            {
                continue;
            }
            node.status = change.to;
            if let Some(ms) = change.last_seen_ms {
                node.last_seen_ms = node.last_seen_ms.max(ms);
            }
            applied += 1;
        }
        Outcome::StatusesChanged { applied }
    }

    fn leave(&mut self, node_id: &str, now_ms: i64) -> Outcome {
        match self.nodes.get_mut(node_id) {
            None => Outcome::Rejected(Rejection::UnknownNode(node_id.to_string())),
            Some(node) if node.status == NodeStatus::Left => Outcome::Left { already: true },
            Some(node) => {
                node.status = NodeStatus::Left;
                node.last_seen_ms = now_ms;
                Outcome::Left { already: false }
            }
        }
    }

    /// Nodes that count as members: every node that has not left.
    pub fn members(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.status != NodeStatus::Left)
    }
}

impl dllm_storage::AppData<TypeConfig> for ClusterState {
    fn apply(&mut self, _log_id: &LogId<u64>, command: Command) -> Outcome {
        ClusterState::apply(self, command)
    }
}

#[cfg(test)]
mod tests;
