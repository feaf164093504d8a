//! The commands of the replicated log and what applying them answers.

use serde::{Deserialize, Serialize};

use super::{ModelSpec, NodeSpec, NodeStatus, Placement};

/// A [`Command`] as the Raft log carries it: encoded once by the proposer, then copied as
/// bytes through the log, replication and the followers' logs, and decoded once per replica,
/// when it is applied. (Carried as a `Command`, each entry was encoded or decoded, with an
/// allocation per string, about a dozen times across three replicas.)
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedCommand(Vec<u8>);

impl EncodedCommand {
    /// Encodes `command`.
    ///
    /// # Errors
    /// Never in practice: bincode fails only on types serde cannot describe.
    pub fn encode(command: &Command) -> Result<Self, bincode::Error> {
        bincode::serialize(command).map(Self)
    }

    /// Decodes the command.
    ///
    /// # Errors
    /// When the bytes are not a command of this version.
    pub fn decode(&self) -> Result<Command, bincode::Error> {
        bincode::deserialize(&self.0)
    }

    /// The encoded length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for an encoded command).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for EncodedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode() {
            Ok(command) => command.fmt(f),
            Err(e) => write!(
                f,
                "EncodedCommand({} bytes, undecodable: {e})",
                self.0.len()
            ),
        }
    }
}

impl Serialize for EncodedCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EncodedCommand {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded command")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Bytes).map(Self)
    }
}

/// One change to the cluster state; one Raft log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Several client writes committed as one log entry (group commit on the leader), applied
    /// in order; answers [`Outcome::Batch`] with one outcome per command.
    Batch(Vec<Command>),
    /// A client's write under the id of its request: a retry of the same request (after an
    /// unknown outcome, e.g. a leader change mid-request) is answered with the outcome of the
    /// first application instead of being applied again.
    Once {
        /// Random id chosen by the replica that took the client's request.
        request_id: u128,
        /// The write.
        command: Box<Command>,
    },
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
    /// Adds a model with the placement the leader computed for it.
    AddModel {
        /// The model.
        spec: ModelSpec,
        /// Its placement (checked against the invariants at apply).
        placement: Placement,
    },
    /// Removes a model and frees its layers.
    RemoveModel {
        /// The model.
        id: String,
    },
    /// Placement changes decided by the leader (repair, pending models, rebalance).
    SetPlacements {
        /// The changes, applied in order; each only if its epoch matches and it keeps the
        /// invariants.
        changes: Vec<PlacementChange>,
    },
    /// Starts (`true`) or ends (`false`) draining a node: a draining node holds no layers and
    /// takes none.
    SetDrain {
        /// The node.
        node_id: String,
        /// Drain or undrain.
        drain: bool,
    },
    /// Marks a node as left.
    LeaveNode {
        /// The node leaving.
        node_id: String,
        /// The proposer's clock, Unix milliseconds.
        now_ms: i64,
    },
    /// Revokes a client token by its id (`jti`): every replica refuses it once applied.
    RevokeToken {
        /// The token's id.
        jti: String,
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

/// A new placement for one model, decided by the leader for the model as of `epoch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementChange {
    /// The model.
    pub model_id: String,
    /// The model's epoch the decision was made for.
    pub epoch: u64,
    /// The new placement.
    pub placement: Placement,
}

/// What applying a command answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Entries that carry no command (blank and membership entries).
    #[default]
    None,
    /// The outcomes of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
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
    /// A model was added (placed or pending).
    ModelAdded,
    /// A model was removed.
    ModelRemoved,
    /// How many placement changes applied; why the others did not.
    PlacementsChanged {
        /// Changes applied.
        applied: u32,
        /// Changes skipped: stale epoch or broken invariant, with the reason.
        skipped: Vec<String>,
    },
    /// A node's drain state changed (or already was as asked).
    DrainSet,
    /// A node left.
    Left {
        /// True when the node had already left.
        already: bool,
    },
    /// The command was not applied because of the state it met.
    Rejected(Rejection),
    /// A token was revoked.
    TokenRevoked {
        /// True when it already was.
        already: bool,
    },
}

/// Why the state machine refused a command. Decided deterministically at apply time, so every
/// replica refuses the same commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command names a node the cluster does not know.
    #[error("node {0:?} is not registered")]
    UnknownNode(String),
    /// The command names a model the cluster does not know.
    #[error("model {0:?} is not registered")]
    UnknownModel(String),
    /// A model with this id exists.
    #[error("model {0:?} already exists")]
    ModelExists(String),
    /// The command would break an invariant of the state.
    #[error("{0}")]
    Invariant(String),
    /// The node is in a status that does not allow the command.
    #[error("{0}")]
    NotAllowed(String),
}
