//! The openraft type configuration of the control plane, and how the cluster state plugs
//! into the store as openraft's application data: the one place where [`crate::state`]
//! meets Raft (the state itself knows nothing of it).

use std::io::Cursor;

use openraft::LogId;

use crate::state::{ClusterState, EncodedCommand, Outcome, Rejection};

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
pub type StateMachine = dllm_storage::StateMachine<TypeConfig, ClusterState>;
/// Read access to the applied cluster state.
pub type StateHandle = dllm_storage::StateHandle<ClusterState>;

impl dllm_storage::AppData<TypeConfig> for ClusterState {
    fn apply(&mut self, log_id: &LogId<u64>, command: EncodedCommand) -> Outcome {
        match command.decode() {
            Ok(command) => ClusterState::apply(self, command),
            // Every replica of one version decodes the same bytes the same way, so this
            // answer is the same everywhere and the states do not diverge.
            Err(e) => {
                tracing::error!(index = log_id.index, error = %e, "a log entry does not decode as a command of this version; not applied");
                Outcome::Rejected(Rejection::NotAllowed(format!(
                    "log entry {} is not a command this version understands: {e}",
                    log_id.index
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests;
