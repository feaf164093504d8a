//! Leader routing: where a request that only the leader can carry out goes. A replica that
//! leads does it here; one that knows the leader sends it there at once; while no leader is
//! known, the request waits for one, retrying until its budget is spent.

use std::{future::Future, time::Duration};

use openraft::ServerState;
use tokio::time::Instant;

use super::Replica;
use crate::{error::ApiError, forward::WireError, network::PeerError};

/// Where a request for the leader goes right now, as this replica's Raft metrics tell.
#[derive(Debug, PartialEq)]
enum Route {
    /// This replica leads.
    Here,
    /// Another replica leads, at this address.
    Leader(String),
    /// No leader is known.
    Unknown,
}

impl Replica {
    fn route(&self) -> Route {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state == ServerState::Leader {
            return Route::Here;
        }
        m.current_leader
            .filter(|leader| *leader != self.id)
            .and_then(|leader| m.membership_config.membership().get_node(&leader))
            .map_or(Route::Unknown, |node| Route::Leader(node.addr.clone()))
    }

    /// Checks that this replica leads, starting its failure detector if it just became leader
    /// (and stopping it if it no longer leads).
    pub(super) fn leading(&self) -> Result<(), WireError> {
        let (is_leader, hint) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let hint = m.current_leader.and_then(|l| {
                let node = m.membership_config.membership().get_node(&l)?;
                Some((l, node.addr.clone()))
            });
            (m.state == ServerState::Leader, hint)
        };
        let mut detector = self.detector();
        match (is_leader, detector.leading()) {
            (true, false) => detector.become_leader(tokio::time::Instant::now()),
            (false, true) => detector.step_down(),
            _ => {}
        }
        if is_leader {
            Ok(())
        } else {
            Err(WireError::NotLeader(hint))
        }
    }

    /// The leader's address, when known (and not silent past the election timeout).
    pub fn leader_addr(&self) -> Option<String> {
        if self.election.leader_lost() {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Runs `op` at the leader: `local` when this replica leads, `remote` with the leader's
    /// address when another one does, retrying through elections until `budget` is spent. A
    /// `local` that finds leadership gone meanwhile and names the new leader goes there.
    pub(super) async fn at_leader<T, L, LF, R, RF>(
        &self,
        budget: Duration,
        what: &str,
        local: L,
        remote: R,
    ) -> Result<T, ApiError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, WireError>>,
        R: Fn(String, Duration) -> RF,
        RF: Future<Output = Result<Result<T, WireError>, PeerError>>,
    {
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let send = |addr: String| {
                let sent = remote(addr, remaining);
                async move {
                    match sent.await {
                        Ok(answer) => answer,
                        Err(e) => Err(WireError::Unavailable(e.to_string())),
                    }
                }
            };
            let attempt = async {
                let answer = match self.route() {
                    Route::Leader(addr) => return send(addr).await,
                    Route::Unknown => return Err(WireError::NotLeader(None)),
                    Route::Here => local().await,
                };
                match answer {
                    // Leadership moved between the look and the proposal.
                    Err(WireError::NotLeader(Some((leader, addr)))) if leader != self.id => {
                        send(addr).await
                    }
                    other => other,
                }
            };
            let error = match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e @ (WireError::NotLeader(_) | WireError::Unavailable(_)))) => e,
                Ok(Err(e)) => return Err(e.into_api(self.leader_addr())),
                Err(_) => WireError::Unavailable(format!("no answer within {budget:?}")),
            };
            if Instant::now() + backoff >= deadline {
                let reason = match error {
                    WireError::Unavailable(m) => m,
                    _ => "no leader".to_string(),
                };
                return Err(ApiError::Unavailable {
                    message: format!(
                        "{what}: no leader or quorum answered within {budget:?} ({reason})"
                    ),
                    leader: self.leader_addr(),
                });
            }
            // Wait for a leader other than the one that just failed us (or none), but no longer
            // than the backoff: retrying the moment an election ends is most of failover time.
            let failed_leader = self.raft.metrics().borrow().current_leader;
            let _ = self
                .raft
                .wait(Some(backoff))
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != failed_leader,
                    "a new leader",
                )
                .await;
            // Short: a new leader is usually known within one election timeout.
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }
}
