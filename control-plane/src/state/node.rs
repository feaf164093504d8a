//! Nodes and models as the replicated state holds them.

use serde::{Deserialize, Serialize};

/// A node's status. The vocabulary is part of the API (`NodeInfo.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Registered and heard from within the failure detector's threshold.
    Healthy,
    /// Missed heartbeats beyond the unhealthy threshold.
    Unhealthy,
    /// Missed heartbeats beyond the offline threshold.
    Offline,
    /// Asked to give up its work; takes no new work.
    Draining,
    /// Left the cluster; no longer a member.
    Left,
}

impl NodeStatus {
    /// Every status, in the order the API documents them.
    pub const ALL: [NodeStatus; 5] = [
        NodeStatus::Healthy,
        NodeStatus::Unhealthy,
        NodeStatus::Offline,
        NodeStatus::Draining,
        NodeStatus::Left,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Healthy => "healthy",
            NodeStatus::Unhealthy => "unhealthy",
            NodeStatus::Offline => "offline",
            NodeStatus::Draining => "draining",
            NodeStatus::Left => "left",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<NodeStatus> {
        NodeStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One GPU of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Product name.
    pub name: String,
    /// Total memory, MiB.
    pub memory_mb: i64,
    /// Stable unique id.
    pub uuid: String,
}

/// What a node offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Logical CPU cores.
    pub cpu_cores: i64,
    /// Host memory, MiB.
    pub memory_mb: i64,
    /// GPUs.
    pub gpus: Vec<Gpu>,
    /// How many layers the node can hold.
    pub max_layers: i32,
}

/// A validated registration: what a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique node id.
    pub node_id: String,
    /// Host where the node serves gRPC.
    pub address: String,
    /// Port where the node serves gRPC.
    pub port: u16,
    /// What it offers.
    pub resources: Resources,
}

/// A node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique node id.
    pub node_id: String,
    /// Host where the node serves gRPC.
    pub address: String,
    /// Port where the node serves gRPC.
    pub port: u16,
    /// What it offers.
    pub resources: Resources,
    /// Layers assigned to it by placement.
    pub used_layers: i32,
    /// Current status.
    pub status: NodeStatus,
    /// When the cluster last heard from it, Unix milliseconds.
    pub last_seen_ms: i64,
    /// When it first registered, Unix milliseconds.
    pub registered_at_ms: i64,
    /// Bumped by every registration, so the failure detector can tell a node that came back
    /// from one that stayed silent.
    pub generation: u64,
}

/// A model the cluster serves. Models are added and placed by the placement feature; the
/// state already holds them so that every read path shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Number of layers.
    pub layer_count: i32,
    /// Where the weights are on each worker.
    pub file_path: String,
    /// Total size of the weights, bytes.
    pub size_bytes: i64,
    /// Placement: (node_id, first layer, last layer), inclusive, ordered by first layer.
    pub assignments: Vec<(String, i32, i32)>,
}
