//! Which roles may call each RPC: one table for every method of `proto/node.proto` and
//! `proto/raft.proto` (a test walks the service descriptors, so a method without an entry
//! fails it), and the finer checks a handler makes (ExecuteCommand per command, a worker
//! acting only for its own node id).
//!
//! | role | may call |
//! | --- | --- |
//! | viewer | every read: NodeService, DiscoverNodes, GetClusterInfo, GetNodeList, GetModelList, StreamUpdates, GetReplicaStatus, read-only ExecuteCommand commands |
//! | operator | viewer + models, drain/undrain, rebalance, leave of any node |
//! | admin | operator + replica membership (AddReplica, RemoveReplica, `member add/remove`), token revocation and backups (SaveSnapshot) |
//! | worker | RegisterWithCluster, Heartbeat, LeaveCluster for its own node id; NodeService, DiscoverNodes, GetClusterInfo |
//! | replica | RaftService, and nobody else may |
//!
//! Health and reflection are open to any caller (a load balancer's probe has no identity).

use tonic::Status;

use crate::{
    identity::{Identity, Role},
    layer::Denials,
};

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any caller, authenticated or not.
    Public,
    /// Callers with one of these roles.
    Roles(&'static [Role]),
}

/// Every read.
pub const READERS: &[Role] = &[Role::Viewer, Role::Operator, Role::Admin];
/// Reads a worker also needs.
pub const READERS_AND_WORKERS: &[Role] = &[Role::Viewer, Role::Operator, Role::Admin, Role::Worker];
/// Changes to models and nodes.
pub const OPERATORS: &[Role] = &[Role::Operator, Role::Admin];
/// Replica membership, token revocation.
pub const ADMINS: &[Role] = &[Role::Admin];
/// A worker's own registration and heartbeats.
pub const WORKERS: &[Role] = &[Role::Worker];
/// Leaving: a worker for itself, an operator for any node.
pub const LEAVERS: &[Role] = &[Role::Worker, Role::Operator, Role::Admin];
/// Raft traffic.
pub const REPLICAS: &[Role] = &[Role::Replica];

/// The table: full gRPC path -> who may call it.
pub const TABLE: &[(&str, Access)] = &[
    (
        "/distributed_llm.NodeService/GetNodeInfo",
        Access::Roles(READERS_AND_WORKERS),
    ),
    (
        "/distributed_llm.NodeService/GetPeers",
        Access::Roles(READERS_AND_WORKERS),
    ),
    (
        "/distributed_llm.NodeService/GetMetrics",
        Access::Roles(READERS_AND_WORKERS),
    ),
    (
        "/distributed_llm.NodeService/StreamMetrics",
        Access::Roles(READERS_AND_WORKERS),
    ),
    (
        "/distributed_llm.DiscoveryService/DiscoverNodes",
        Access::Roles(READERS_AND_WORKERS),
    ),
    (
        "/distributed_llm.DiscoveryService/RegisterWithCluster",
        Access::Roles(WORKERS),
    ),
    (
        "/distributed_llm.DiscoveryService/LeaveCluster",
        Access::Roles(LEAVERS),
    ),
    (
        "/distributed_llm.DiscoveryService/GetClusterInfo",
        Access::Roles(READERS_AND_WORKERS),
    ),
    (
        "/distributed_llm.DiscoveryService/Heartbeat",
        Access::Roles(WORKERS),
    ),
    (
        "/distributed_llm.TUIService/GetNodeList",
        Access::Roles(READERS),
    ),
    (
        "/distributed_llm.TUIService/GetModelList",
        Access::Roles(READERS),
    ),
    (
        "/distributed_llm.TUIService/StreamUpdates",
        Access::Roles(READERS),
    ),
    // Checked again per command by the handler (`command_roles`).
    (
        "/distributed_llm.TUIService/ExecuteCommand",
        Access::Roles(READERS),
    ),
    (
        "/distributed_llm.AdminService/GetReplicaStatus",
        Access::Roles(READERS),
    ),
    (
        "/distributed_llm.AdminService/AddReplica",
        Access::Roles(ADMINS),
    ),
    (
        "/distributed_llm.AdminService/RemoveReplica",
        Access::Roles(ADMINS),
    ),
    // The whole state, revoked token ids and all.
    (
        "/distributed_llm.AdminService/SaveSnapshot",
        Access::Roles(ADMINS),
    ),
    (
        "/distributed_llm.raft.RaftService/AppendEntries",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/AppendEntriesStream",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/Vote",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/InstallSnapshot",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/ForwardWrite",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/ForwardWriteStream",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/ReadIndex",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/ForwardMembership",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/ForwardHeartbeat",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/NodeUsage",
        Access::Roles(REPLICAS),
    ),
    (
        "/distributed_llm.raft.RaftService/PreVote",
        Access::Roles(REPLICAS),
    ),
];

/// Who may call the method at `path`; `None` for a path not in the table (refused).
pub fn access(path: &str) -> Option<Access> {
    if path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        return Some(Access::Public);
    }
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// The roles an ExecuteCommand command needs, by its first word, checked before the command
/// is parsed. Read-only commands, and unknown ones (which only print help), need a reader;
/// the control plane checks each parsed command again by its kind, written per command.
pub fn command_roles(command: &str) -> &'static [Role] {
    match command {
        "drain" | "undrain" | "leave" | "rebalance" | "model" => OPERATORS,
        "member" | "token" => ADMINS,
        _ => READERS,
    }
}

/// The answer when a handler finds no [`Caller`]: every server puts [`crate::layer::AuthLayer`]
/// in front of its services, so this is a wiring bug, and it fails closed.
fn no_caller() -> Status {
    tracing::error!("a request reached its handler without passing the authentication layer");
    Status::internal("the request was not authenticated (server wiring error)")
}

/// What a handler knows of its caller: put into every request's extensions by
/// [`crate::layer::AuthLayer`].
#[derive(Clone, Debug)]
pub enum Caller {
    /// Authentication is off on this server (plaintext on loopback, or `--insecure`).
    Unchecked,
    /// An authenticated caller, and where the server counts denials.
    Known(Identity, Denials),
}

/// `PERMISSION_DENIED` naming what is needed, unless the caller has one of `roles`. A denial
/// is logged and counted like the layer's.
///
/// # Errors
/// The status to answer.
pub fn require(caller: Option<&Caller>, roles: &[Role], what: &str) -> Result<(), Status> {
    match caller {
        None => Err(no_caller()),
        Some(Caller::Unchecked) => Ok(()),
        Some(Caller::Known(id, _)) if roles.contains(&id.role) => Ok(()),
        Some(Caller::Known(id, denials)) => Err(denied(
            denials,
            id,
            "role",
            format!(
                "{what} needs the role {}; {} has {}",
                names(roles),
                id.name,
                id.role
            ),
        )),
    }
}

/// For a worker: `PERMISSION_DENIED` unless `node_id` is its own. Other roles pass (the
/// table decides whether they may call at all). A denial is logged and counted.
///
/// # Errors
/// The status to answer.
pub fn require_own_node(caller: Option<&Caller>, node_id: &str) -> Result<(), Status> {
    match caller {
        None => Err(no_caller()),
        Some(Caller::Known(id, denials)) if id.role == Role::Worker && id.name != node_id => {
            Err(denied(
                denials,
                id,
                "other_node",
                format!(
                    "node_id: worker {} may act only for its own node, not {node_id:?}",
                    id.name
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// For RaftService: `PERMISSION_DENIED` unless the calling replica's id (its certificate's
/// name) is one of `is_member`'s, so a removed replica's certificate opens nothing. Callers
/// that are not replicas (authentication off) pass.
///
/// # Errors
/// The status to answer.
pub fn require_member(
    caller: Option<&Caller>,
    is_member: impl FnOnce(u64) -> bool,
) -> Result<(), Status> {
    let (id, denials) = match caller {
        None => return Err(no_caller()),
        Some(Caller::Unchecked) => return Ok(()),
        Some(Caller::Known(id, denials)) => (id, denials),
    };
    match id.name.parse::<u64>() {
        Ok(replica) if is_member(replica) => Ok(()),
        _ => Err(denied(
            denials,
            id,
            "not_a_member",
            format!(
                "replica {} is not a member of this cluster (removed, or never added)",
                id.name
            ),
        )),
    }
}

fn denied(denials: &Denials, id: &Identity, reason: &'static str, message: String) -> Status {
    tracing::warn!(caller = %id, reason, message, "request denied");
    denials.count(reason);
    Status::permission_denied(message)
}

/// "a or b or c".
pub fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Every method of every service in the descriptor set has an entry: an RPC added to
    /// the protos without one fails here.
    #[test]
    fn every_rpc_has_an_entry() {
        let set = prost_types::FileDescriptorSet::decode(dllm_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(
                        matches!(access(&path), Some(Access::Roles(_))),
                        "{path} has no entry in the roles table"
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, TABLE.len(), "the table names only real methods");
    }

    #[test]
    fn raft_is_for_replicas_only_and_commands_by_kind() {
        for (path, access) in TABLE {
            if path.contains(".raft.") {
                assert_eq!(*access, Access::Roles(REPLICAS), "{path}");
            } else if let Access::Roles(roles) = access {
                assert!(!roles.contains(&Role::Replica), "{path}");
            }
        }
        assert_eq!(command_roles("nodes"), READERS);
        assert_eq!(command_roles("drain"), OPERATORS);
        assert_eq!(command_roles("model"), OPERATORS);
        assert_eq!(command_roles("member"), ADMINS);
        assert_eq!(command_roles("token"), ADMINS);
    }

    /// A handler that finds no caller (a server built without the layer) refuses.
    #[test]
    fn handler_checks_fail_closed_without_a_caller() {
        let code = |r: Result<(), Status>| r.expect_err("refused").code();
        assert_eq!(code(require(None, READERS, "x")), tonic::Code::Internal);
        assert_eq!(code(require_own_node(None, "w")), tonic::Code::Internal);
        assert_eq!(code(require_member(None, |_| true)), tonic::Code::Internal);
        assert!(require(Some(&Caller::Unchecked), ADMINS, "x").is_ok());
        assert!(require_own_node(Some(&Caller::Unchecked), "w").is_ok());
        assert!(require_member(Some(&Caller::Unchecked), |_| false).is_ok());
    }
}
