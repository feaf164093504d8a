//! Replica membership and status: forming the cluster from `--initial-cluster`, adding and
//! removing replicas through the leader, and every replica's view of who leads.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use dllm_proto::pb;
use openraft::{
    error::{ClientWriteError, RaftError},
    BasicNode, ChangeMembers, ServerState,
};
use tracing::info;

use super::{propose::forward_hint, Replica, StartError};
use crate::{
    error::ApiError,
    forward::{MembershipAnswer, MembershipChange, WireError},
};

/// Budget of a replica membership change: adding a replica waits for it to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

impl Replica {
    /// Initializes Raft with the founding members when this replica is one of them and its
    /// store is pristine. Every founding replica does this with the same membership, so the
    /// order in which they start does not matter; a restarted replica has a log and skips it.
    pub(super) async fn form_cluster_once(&self) -> Result<(), StartError> {
        let members = &self.config.initial_cluster;
        if !members.contains_key(&self.id) || self.raft.is_initialized().await? {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => info!(members = ?members, "formed the cluster from --initial-cluster"),
            // Another founding replica's log reached us first: nothing to do.
            Err(RaftError::APIError(e)) => info!(reason = %e, "cluster already formed"),
            Err(RaftError::Fatal(e)) => return Err(e.into()),
        }
        Ok(())
    }

    /// Carries out a membership change; leader only.
    pub async fn leader_membership(&self, change: MembershipChange) -> MembershipAnswer {
        let map_write = |e: RaftError<u64, ClientWriteError<u64, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward_hint(&f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                WireError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(e) => WireError::Unavailable(format!("replica stopped: {e}")),
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        match change {
            MembershipChange::Add { id, addr } => {
                if let Some(node) = membership.membership().get_node(&id) {
                    if voters.contains(&id) && node.addr == addr {
                        return Ok(());
                    }
                    if node.addr != addr {
                        return Err(WireError::FailedPrecondition(format!(
                            "replica {id} is already a member at {}",
                            node.addr
                        )));
                    }
                }
                info!(id, %addr, "adding replica as learner");
                self.raft
                    .add_learner(id, BasicNode::new(&addr), true)
                    .await
                    .map_err(map_write)?;
                info!(id, "promoting replica to voter");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(map_write)?;
                Ok(())
            }
            MembershipChange::Remove { id } => {
                if membership.membership().get_node(&id).is_none() {
                    return Err(WireError::NotFound {
                        kind: "replica".into(),
                        id: id.to_string(),
                    });
                }
                if voters.contains(&id) && voters.len() == 1 {
                    return Err(WireError::FailedPrecondition(format!(
                        "replica {id} is the last voter; add another first"
                    )));
                }
                info!(id, "removing replica");
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters([id].into())
                } else {
                    ChangeMembers::RemoveNodes([id].into())
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(map_write)?;
                Ok(())
            }
        }
    }

    /// Carries out a membership change through the leader.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown replica, `FAILED_PRECONDITION` when the change is not
    /// allowed, `UNAVAILABLE` without a leader.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ApiError> {
        self.at_leader(
            MEMBERSHIP_TIMEOUT,
            "membership change",
            || self.leader_membership(change.clone()),
            |addr, timeout| {
                let change = change.clone();
                let peers = self.peers.clone();
                async move {
                    peers
                        .call(&addr, &change, timeout, |mut c, r| async move {
                            c.forward_membership(r).await
                        })
                        .await
                }
            },
        )
        .await?;
        // Answer with the new membership as this replica sees it, like a write is answered
        // once applied here. A replica that was just removed may never see the final entry.
        if change != (MembershipChange::Remove { id: self.id }) {
            self.linearize().await?;
        }
        Ok(())
    }

    /// Every replica with its role, and this replica's view of leader, term and indexes.
    pub fn status(&self) -> pb::ReplicaStatusResponse {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replicas = membership
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if !voters.contains(id) {
                    "learner"
                } else if *id == self.id {
                    match m.state {
                        ServerState::Candidate => "candidate",
                        _ => "follower",
                    }
                } else {
                    "follower"
                };
                pb::ReplicaInfo {
                    id: *id,
                    address: node.addr.clone(),
                    role: role.to_string(),
                }
            })
            .collect();
        let leader_address = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        pb::ReplicaStatusResponse {
            answered_by: self.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_address,
            term: m.current_term,
            commit_index: self.log_store.committed_index(),
            applied_index: m.last_applied.map(|id| id.index),
            replicas,
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|id| id.index),
            purged_index: m.purged.map(|id| id.index),
        }
    }
}
