//! The openraft type configuration of the control plane.

use std::io::Cursor;

use crate::state::{Command, Outcome};

openraft::declare_raft_types!(
    /// Raft types of the control plane: log entries carry [`Command`]s, applying one answers an
    /// [`Outcome`]; node ids are u64, node addresses `host:port` in a `BasicNode`.
    pub TypeConfig:
        D = Command,
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
