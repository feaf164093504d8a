//! The openraft type configuration of the control plane.

use std::io::Cursor;

use crate::state::{EncodedCommand, Outcome};

openraft::declare_raft_types!(
    /// Raft types of the control plane: log entries carry [`crate::state::Command`]s, encoded
    /// once by the proposer ([`EncodedCommand`]); applying one answers an [`Outcome`]; node ids
    /// are u64, node addresses `host:port` in a `BasicNode`.
    pub TypeConfig:
        D = EncodedCommand,
        R = Outcome,
);

/// The Raft handle of a replica.
pub type Raft = openraft::Raft<TypeConfig>;
/// The log store of a replica.
pub type LogStore = dllm_storage::LogStore<TypeConfig>;
/// The state machine of a replica.
pub type StateMachine = dllm_storage::SledStateMachine<TypeConfig, crate::state::ClusterState>;
/// Read access to the applied cluster state.
pub type StateHandle = dllm_storage::StateHandle<crate::state::ClusterState>;
