//! The commands of the replicated log and what applying them answers.

use serde::{Deserialize, Serialize};

use super::{NodeSpec, NodeStatus};

/// One change to the cluster state; one Raft log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id if none is set yet (first writer wins).
    SetClusterId {
        /// A fresh random id proposed by a leader.
        cluster_id: String,
    },
    /// Adds a node, or updates a known one and returns it to service.
    RegisterNode {
        /// The validated registration.
        spec: NodeSpec,
        /// The proposer's clock, Unix milliseconds.
        now_ms: i64,
    },
    /// Status transitions decided by the leader's failure detector, applied only where the
    /// node is still as the detector saw it (same status, same registration generation).
    SetNodeStatuses {
        /// The transitions.
        changes: Vec<StatusChange>,
    },
    /// Marks a node as left.
    LeaveNode {
        /// The node leaving.
        node_id: String,
        /// The proposer's clock, Unix milliseconds.
        now_ms: i64,
    },
}

/// One node's status transition, compare-and-set on `from` and `generation` so that a
/// transition decided before a re-registration cannot undo it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The node.
    pub node_id: String,
    /// The registration generation the decision was made for.
    pub generation: u64,
    /// The status the decision was made from.
    pub from: NodeStatus,
    /// The new status.
    pub to: NodeStatus,
    /// When the cluster last heard from the node, Unix milliseconds, if the leader knows.
    pub last_seen_ms: Option<i64>,
}

/// What applying a command answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Entries that carry no command (blank and membership entries).
    #[default]
    None,
    /// The cluster id now in force.
    ClusterId {
        /// The id.
        cluster_id: String,
    },
    /// A node was registered.
    Registered {
        /// True for a node the cluster did not know.
        created: bool,
    },
    /// How many of the status transitions applied.
    StatusesChanged {
        /// Transitions that matched and applied.
        applied: u32,
    },
    /// A node left.
    Left {
        /// True when the node had already left.
        already: bool,
    },
    /// The command was not applied because of the state it met.
    Rejected(Rejection),
}

/// Why the state machine refused a command. Decided deterministically at apply time, so every
/// replica refuses the same commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command names a node the cluster does not know.
    #[error("node {0:?} is not registered")]
    UnknownNode(String),
}
