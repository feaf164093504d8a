//! The leader's side of a request: proposing a write through openraft (intents become
//! commands here, on the leader's own state) and naming the index a linearizable read must
//! wait for. Followers reach these through `RaftService` (`api/raft.rs`).

use openraft::{
    error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError},
    BasicNode, ServerState,
};

use super::Replica;
use crate::{
    forward::{Proposal, ReadIndexAnswer, WireError, WriteAnswer},
    placement,
    raft_types::Raft,
    state::{Command, EncodedCommand},
};

/// The error that names the leader openraft pointed at.
pub(super) fn forward_hint(f: &ForwardToLeader<u64, BasicNode>) -> WireError {
    WireError::NotLeader(
        f.leader_id
            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
    )
}

/// Proposes `command` through openraft; the outcome and the entry's log index.
///
/// openraft answers a proposal only once its entry is applied or truncated. A leader that
/// loses its term with entries not yet committed keeps their callers waiting until a new
/// leader reaches it, which, under load, took seconds: so a proposal made while this replica
/// leads ends with `NotLeader` as soon as it no longer leads in that term, and the caller
/// retries at the new leader. The outcome is then unknown, as after any lost answer: client
/// writes carry a request id ([`Command::Once`]) that answers a retry as the first attempt,
/// and the replica's own writes (status changes, placement repairs) are checked against the
/// state they were planned on when they apply.
pub(super) async fn client_write(raft: &Raft, command: Command) -> WriteAnswer {
    let command = EncodedCommand::encode(&command)
        .map_err(|e| WireError::Internal(format!("cannot encode a command: {e}")))?;
    let mut metrics = raft.metrics();
    let leading_in = {
        let m = metrics.borrow_and_update();
        (m.state == ServerState::Leader).then_some(m.current_term)
    };
    let write = raft.client_write(command);
    let result = match leading_in {
        Some(term) => tokio::select! {
            result = write => result,
            () = deposed(&mut metrics, term) => {
                return Err(WireError::NotLeader(None));
            }
        },
        None => write.await,
    };
    match result {
        Ok(response) => Ok((response.data, response.log_id.index)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(forward_hint(&f)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(WireError::FailedPrecondition(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(WireError::Unavailable(format!("replica stopped: {e}"))),
    }
}

/// Resolves once the replica these metrics describe no longer leads in `term` (or stops).
async fn deposed(
    metrics: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    term: u64,
) {
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader || m.current_term != term {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl Replica {
    /// Turns `proposal` into a command with this replica's state (placement is decided here,
    /// on the leader) and puts it into the group commit; leader only.
    pub async fn leader_propose(&self, request_id: u128, proposal: Proposal) -> WriteAnswer {
        let command = match proposal {
            Proposal::Command(command) => command,
            Proposal::AddModel(spec) => {
                self.leading()?;
                let placement = self.state.read(|s| placement::fresh(s, &spec));
                Command::AddModel { spec, placement }
            }
            Proposal::Rebalance(model_id) => {
                self.leading()?;
                let changes = self.state.read(|s| {
                    if model_id
                        .as_ref()
                        .is_some_and(|id| !s.models.contains_key(id))
                    {
                        return Err(WireError::NotFound {
                            kind: "model".into(),
                            id: model_id.clone().unwrap_or_default(),
                        });
                    }
                    Ok(placement::rebalance(s, model_id.as_deref()))
                })?;
                Command::SetPlacements { changes }
            }
        };
        let command = Command::Once {
            request_id,
            command: Box::new(command),
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.group_commit
            .send((command, answer))
            .await
            .map_err(|_| WireError::Unavailable("replica shutting down".into()))?;
        answered
            .await
            .map_err(|_| WireError::Unavailable("replica shutting down".into()))?
    }

    /// Proposes `command` on this replica, which must be the leader, as an entry of its own
    /// (the replica's own writes: status changes, placement repairs).
    pub async fn leader_write(&self, command: Command) -> WriteAnswer {
        client_write(&self.raft, command).await
    }

    /// The index a linearizable read must wait for, confirmed by a quorum; leader only.
    pub async fn leader_read_index(&self) -> ReadIndexAnswer {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward_hint(&f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(WireError::Unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => {
                Err(WireError::Unavailable(format!("replica stopped: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(state: ServerState, term: u64) -> openraft::RaftMetrics<u64, BasicNode> {
        let mut m = openraft::RaftMetrics::new_initial(1);
        m.state = state;
        m.current_term = term;
        m
    }

    #[tokio::test]
    async fn a_proposal_is_deposed_when_the_term_or_the_role_changes() {
        let (tx, mut rx) = tokio::sync::watch::channel(metrics(ServerState::Leader, 3));
        let mut waiting = std::pin::pin!(deposed(&mut rx, 3));
        tokio::task::yield_now().await;
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "still leading in term 3"
        );
        tx.send_replace(metrics(ServerState::Leader, 3));
        assert!(futures::poll!(waiting.as_mut()).is_pending(), "same term");
        tx.send_replace(metrics(ServerState::Follower, 3));
        assert!(futures::poll!(waiting.as_mut()).is_ready(), "stepped down");

        let (tx, mut rx) = tokio::sync::watch::channel(metrics(ServerState::Leader, 3));
        let mut waiting = std::pin::pin!(deposed(&mut rx, 3));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        tx.send_replace(metrics(ServerState::Leader, 5));
        assert!(
            futures::poll!(waiting.as_mut()).is_ready(),
            "re-elected in a new term"
        );

        let (tx, mut rx) = tokio::sync::watch::channel(metrics(ServerState::Leader, 3));
        let mut waiting = std::pin::pin!(deposed(&mut rx, 3));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(tx);
        assert!(futures::poll!(waiting.as_mut()).is_ready(), "raft stopped");
    }
}
