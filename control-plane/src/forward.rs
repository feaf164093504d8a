//! What followers and the leader say to each other when a client request must be carried out
//! by the leader: the bincode payloads of `RaftService.ForwardWrite`, `ReadIndex`,
//! `ForwardMembership`, `ForwardHeartbeat` and `NodeUsage`. They travel the replica as these
//! types and become bytes only at the wire (`network.rs`, `api/raft.rs`).

use dllm_proto::pb;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
/// The answer to a forwarded heartbeat.
pub type HeartbeatAnswer = Result<Proto<pb::HeartbeatResponse>, WireError>;

/// A protobuf message inside a bincode payload (a worker's heartbeat, a usage sample): the
/// type as it travels the replica; at the wire, its protobuf encoding as a byte string (the
/// same bytes bincode writes for a `Vec<u8>` of that encoding).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proto<M>(pub M);

impl<M: prost::Message> Serialize for Proto<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, M: prost::Message + Default> Deserialize<'de> for Proto<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes<M>(std::marker::PhantomData<M>);
        impl<'de, M: prost::Message + Default> serde::de::Visitor<'de> for Bytes<M> {
            type Value = Proto<M>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a protobuf-encoded message")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                M::decode(bytes).map(Proto).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                self.visit_bytes(&bytes)
            }
        }
        deserializer.deserialize_byte_buf(Bytes(std::marker::PhantomData))
    }
}

/// A question about the leader's soft state (usage samples and last contacts from
/// heartbeats).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum UsageQuery {
    /// The latest usage sample of one node, and when the leader last heard from it.
    Node(String),
    /// Free host memory of every node with a sample, and when the leader last heard from
    /// each node.
    Fleet,
    /// When the leader last heard from these nodes (a page of a list: what it costs is the
    /// page's, not the fleet's).
    LastSeen(Vec<String>),
    /// The free host memory of the healthy members summed (a node without a sample counts
    /// all of its memory): the cluster metrics' figure, without the fleet's samples.
    AvailableMemory,
}

/// The leader's answer to a [`UsageQuery`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UsageAnswer {
    /// For `Node`: the latest usage sample, if the leader has one.
    pub sample: Option<Proto<pb::NodeUsage>>,
    /// For `Fleet`: MiB free per node id.
    pub free_memory_mb: std::collections::BTreeMap<String, i64>,
    /// When the leader last heard from each node (Unix ms): every node for `Fleet`, the ones
    /// asked about for `Node` and `LastSeen`.
    pub last_contact_ms: std::collections::BTreeMap<String, i64>,
    /// For `AvailableMemory`: the sum, MiB.
    pub available_memory_mb: Option<i64>,
}

impl UsageAnswer {
    /// `node` with its `last_seen` the later of the replicated value (its last registration)
    /// and the leader's last contact (heartbeats included).
    pub fn with_last_seen(&self, mut node: pb::NodeInfo) -> pb::NodeInfo {
        if let Some(&ms) = self.last_contact_ms.get(&node.node_id) {
            node.last_seen = node.last_seen.max(ms);
        }
        node
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A message travels as the same bytes as its protobuf encoding in a `Vec<u8>` (what
    /// earlier builds sent), and comes back equal; bytes that are not the message fail.
    #[test]
    fn proto_payloads_are_the_protobuf_bytes_and_round_trip() {
        let request = pb::HeartbeatRequest {
            node_id: "worker-1".into(),
            ..Default::default()
        };
        let as_proto = bincode::serialize(&vec![Proto(request.clone())]).expect("encode");
        let as_bytes =
            bincode::serialize(&vec![prost::Message::encode_to_vec(&request)]).expect("encode");
        assert_eq!(as_proto, as_bytes, "same wire bytes as before");
        let back: Vec<Proto<pb::HeartbeatRequest>> =
            bincode::deserialize(&as_bytes).expect("decode");
        assert_eq!(back, vec![Proto(request)]);
        let garbage = bincode::serialize(&vec![vec![0xffu8; 3]]).expect("encode");
        assert!(bincode::deserialize::<Vec<Proto<pb::HeartbeatRequest>>>(&garbage).is_err());
    }
}
