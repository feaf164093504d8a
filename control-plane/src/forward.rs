//! What followers and the leader say to each other when a client request must be carried out
//! by the leader: the bincode payloads of `RaftService.ForwardWrite`, `ReadIndex` and
//! `ForwardMembership`.

use serde::{Deserialize, Serialize};

use crate::{
    error::ApiError,
    state::{Command, ModelSpec, Outcome},
};

/// A write as a follower forwards it: a finished command, or an intent the leader turns into
/// a command from its own state (placement is decided by the leader).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Proposal {
    /// Commit this command as it is.
    Command(Command),
    /// Add this model, placed by the leader.
    AddModel(ModelSpec),
    /// Re-split one model (or all) from scratch.
    Rebalance(Option<String>),
}

/// A client's write as it travels to the leader, under the id that makes retries safe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tagged {
    /// Chosen once per client request by the replica that took it.
    pub request_id: u128,
    /// The write.
    pub proposal: Proposal,
}

/// A replica membership change, carried out by the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add replica `id` at `addr` as a learner, wait for it to catch up, promote it to voter.
    Add {
        /// New Raft id.
        id: u64,
        /// Its host:port.
        addr: String,
    },
    /// Remove replica `id`.
    Remove {
        /// The replica.
        id: u64,
    },
}

/// An error that crosses from the leader back to the follower that forwarded a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireError {
    /// The replica asked is not the leader; the leader's id and address when it knows them.
    NotLeader(Option<(u64, String)>),
    /// No quorum, shutting down, or similar; worth retrying.
    Unavailable(String),
    /// Something named does not exist.
    NotFound {
        /// The kind of thing.
        kind: String,
        /// Its id.
        id: String,
    },
    /// A bad argument.
    InvalidArgument {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The state does not allow it.
    FailedPrecondition(String),
    /// A bug or storage failure on the leader.
    Internal(String),
}

/// The answer to a forwarded write: what applying it said, and its log index.
pub type WriteAnswer = Result<(Outcome, u64), WireError>;
/// The answer to a read-index request: the index a linearizable read must wait for.
pub type ReadIndexAnswer = Result<Option<u64>, WireError>;
/// The answer to a forwarded membership change.
pub type MembershipAnswer = Result<(), WireError>;
/// The answer to a forwarded heartbeat: a protobuf-encoded `HeartbeatResponse`.
pub type HeartbeatAnswer = Result<Vec<u8>, WireError>;

/// A question about the leader's soft state (usage samples from heartbeats).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum UsageQuery {
    /// The latest usage sample of one node.
    Node(String),
    /// Free host memory of every node with a sample.
    FreeMemory,
}

/// The leader's answer to a [`UsageQuery`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UsageAnswer {
    /// For `Node`: the protobuf-encoded `NodeUsage`, if the leader has one.
    pub sample: Option<Vec<u8>>,
    /// For `FreeMemory`: MiB free per node id.
    pub free_memory_mb: std::collections::BTreeMap<String, i64>,
}

impl WireError {
    /// The error a client sees; `leader` is the leader's address if known.
    pub fn into_api(self, leader: Option<String>) -> ApiError {
        match self {
            WireError::NotLeader(_) => ApiError::Unavailable {
                message: "no leader is known; the cluster may be electing one".into(),
                leader,
            },
            WireError::Unavailable(message) => ApiError::Unavailable { message, leader },
            WireError::NotFound { kind, id } => ApiError::NotFound {
                kind: match kind.as_str() {
                    "replica" => "replica",
                    "model" => "model",
                    _ => "node",
                },
                id,
            },
            WireError::InvalidArgument { field, reason } => {
                ApiError::InvalidArgument { field, reason }
            }
            WireError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            WireError::Internal(m) => ApiError::Internal(m),
        }
    }
}
