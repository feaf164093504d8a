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
    /// Whether a node in this status may keep the layers it holds (an unhealthy node may be
    /// back in a moment; its layers move only once it is offline).
    pub fn may_hold_layers(self) -> bool {
        matches!(self, NodeStatus::Healthy | NodeStatus::Unhealthy)
    }

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

impl Resources {
    /// Memory the node offers for layers, MiB: its GPUs' memory, or host memory without GPUs.
    pub fn layer_memory_mb(&self) -> i64 {
        if self.gpus.is_empty() {
            self.memory_mb
        } else {
            self.gpus.iter().map(|g| g.memory_mb).sum()
        }
    }
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

/// A contiguous range of one model's layers on one node (inclusive indices).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The node holding the layers.
    pub node_id: String,
    /// First layer.
    pub first: i32,
    /// Last layer.
    pub last: i32,
}

impl Range {
    /// How many layers the range holds.
    pub fn len(&self) -> i32 {
        self.last - self.first + 1
    }

    /// Never true for a valid range; here for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len() <= 0
    }
}

/// Where a model's layers are: all of them placed, or none (pending, with the reason).
/// A model is never half placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// Every layer on exactly one node, as contiguous ranges ordered by first layer.
    Placed(Vec<Range>),
    /// Not placed; why.
    Pending(String),
}

/// What an operator says about a model when adding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Number of layers, >= 1.
    pub layer_count: i32,
    /// Where the weights are on each worker.
    pub file_path: String,
    /// Total size of the weights, bytes, > 0.
    pub size_bytes: i64,
}

impl ModelSpec {
    /// Memory one layer needs on a node, MiB (rounded up).
    pub fn layer_mb(&self) -> i64 {
        layer_mb(self.size_bytes, self.layer_count)
    }
}

/// Memory one layer of a model of `size_bytes` in `layer_count` layers needs, MiB, rounded up.
pub fn layer_mb(size_bytes: i64, layer_count: i32) -> i64 {
    let per_layer = size_bytes.max(0) as i128 / i128::from(layer_count.max(1));
    ((per_layer + (1 << 20) - 1) >> 20) as i64
}

/// A model the cluster serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// What the operator said.
    pub spec: ModelSpec,
    /// Where its layers are.
    pub placement: Placement,
    /// Bumped by every placement change, so a stale plan cannot apply.
    pub epoch: u64,
}

impl Model {
    /// The ranges, empty when pending.
    pub fn ranges(&self) -> &[Range] {
        match &self.placement {
            Placement::Placed(r) => r,
            Placement::Pending(_) => &[],
        }
    }
}
