//! What the leader does on its own, in the background: give the cluster its id, sweep the
//! failure detector and commit the status transitions it finds, repair placement and merge
//! fragmented placements a few layers at a time. Every replica runs these loops; they act
//! only while it leads.

use std::{sync::Arc, time::Duration};

use openraft::ServerState;
use tracing::{debug, info, warn};

use super::Replica;
use crate::{
    placement,
    state::{Command, NodeStatus, Outcome, StatusChange},
};

/// Nodes a failure-detector sweep looks at per read of the state (about 0.5 ms of looks).
const SWEEP_CHUNK: usize = 256;

impl Replica {
    /// Background duty of whichever replica leads: make sure the cluster has an id as soon as
    /// it forms, so every answer can carry it. Ends when the replica stops.
    pub(super) async fn run_leader_duties(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        loop {
            let leading = metrics.borrow().state == ServerState::Leader;
            if leading && self.state.read(|s| s.cluster_id.is_none()) {
                if let Err(e) = self.ensure_cluster_id().await {
                    warn!(error = %e, "could not set the cluster id yet");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Background duty of every replica: while leading, sweep the failure detector and
    /// commit the transitions it finds (in one entry), then repair placement, then take one
    /// step of the background merge; while following, keep no soft state. Ends when the
    /// replica stops.
    pub(super) async fn run_liveness(self: Arc<Self>) {
        let every = (self.config.liveness.interval / 4).max(Duration::from_millis(20));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            if self.leading().is_err() {
                if self.merger().in_progress() > 0 {
                    *self.merger() = placement::merge::Merger::default();
                }
                continue;
            }
            self.sweep_statuses().await;
            self.repair_placement().await;
            self.merge_placement().await;
        }
    }

    fn merger(&self) -> std::sync::MutexGuard<'_, placement::merge::Merger> {
        self.merger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits one step of the background merge (`placement::merge`): at most
    /// [`placement::merge::MOVES_PER_TICK`] layer moves over the interleaved models, as one
    /// entry; nothing, and no entry, when no model is interleaved.
    async fn merge_placement(&self) {
        // An O(1) copy: the plan is made with the state unlocked.
        let state = self.state.read(Clone::clone);
        let changes = self.merger().tick(&state, placement::merge::MOVES_PER_TICK);
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            debug!(model = %c.model_id, placement = ?c.placement, "placement merge step");
        }
        info!(models = changes.len(), "placement merge step");
        match self.leader_write(Command::SetPlacements { changes }).await {
            Ok((Outcome::PlacementsChanged { skipped, .. }, _)) if !skipped.is_empty() => {
                warn!(
                    ?skipped,
                    "some merge steps were stale; replanning next tick"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = ?e, "could not commit a merge step; retrying next tick"),
        }
    }

    /// Commits the placement repairs the current state needs (orphaned ranges, pending
    /// models), as one entry; nothing when nothing needs repair.
    async fn repair_placement(&self) {
        let changes = self.state.read(placement::repair);
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            info!(model = %c.model_id, placement = ?c.placement, "placement repair");
        }
        match self.leader_write(Command::SetPlacements { changes }).await {
            Ok((Outcome::PlacementsChanged { skipped, .. }, _)) if !skipped.is_empty() => {
                warn!(
                    ?skipped,
                    "some placement changes were stale; replanning next tick"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = ?e, "could not commit placement repairs; retrying next tick"),
        }
    }

    /// Commits the status transitions the failure detector finds, as one entry. The sweep
    /// copies the state's nodes out a chunk at a time ([`SWEEP_CHUNK`]), a look at every node
    /// included, and looks at them with the state unlocked: tens of thousands of looks under
    /// one read lock held apply, and so every write, for tens of milliseconds, and a look
    /// that grew the detector's map (a rehash of every node it tracks, 40 ms at 115,000
    /// nodes, several times that on a busy machine) held it long enough that, with both
    /// runtime threads stuck (one looking, one waiting to apply), the leader sent no
    /// heartbeats and was deposed. A sweep whose term ended meanwhile proposes nothing.
    async fn sweep_statuses(&self) {
        let started = std::time::Instant::now();
        let now = tokio::time::Instant::now();
        // O(1) copies: the detector works with the state unlocked.
        let (nodes, feed) = self
            .state
            .read(|s| (s.nodes.clone(), s.node_changes.clone()));
        let begun = self.detector().begin_sweep(&nodes, &feed, now);
        drop(nodes);
        let Some(mut sweep) = begun else {
            return;
        };
        sweep.list_every();
        let looking_at = sweep.len();
        while !sweep.done() {
            let ids = sweep.next_ids(SWEEP_CHUNK);
            let found: Vec<_> = self
                .state
                .read(|s| ids.iter().map(|id| s.nodes.get(id).cloned()).collect());
            self.detector().look_at(&mut sweep, &found);
            tokio::task::yield_now().await;
        }
        let changes = self.detector().finish(sweep);
        debug!(
            nodes = looking_at,
            changes = changes.len(),
            elapsed = ?started.elapsed(),
            "failure detector sweep"
        );
        if changes.is_empty() {
            return;
        }
        log_status_changes(&changes);
        let result = self
            .leader_write(Command::SetNodeStatuses {
                changes: changes.clone(),
            })
            .await;
        if let Err(e) = result {
            self.detector().abandon(&changes);
            warn!(error = ?e, "could not commit status changes; retrying next sweep");
        }
    }
}

/// Logs a sweep's transitions: one line per kind of transition at info (a count and the
/// first few nodes), each node at debug. A rack going dark is one line, not a thousand.
fn log_status_changes(changes: &[StatusChange]) {
    const NAMED: usize = 5;
    let mut kinds: Vec<((NodeStatus, NodeStatus), Vec<&str>)> = Vec::new();
    for c in changes {
        debug!(node = %c.node_id, from = c.from.as_str(), to = c.to.as_str(), "node status change");
        match kinds.iter_mut().find(|(k, _)| *k == (c.from, c.to)) {
            Some((_, ids)) => ids.push(&c.node_id),
            None => kinds.push(((c.from, c.to), vec![&c.node_id])),
        }
    }
    for ((from, to), ids) in kinds {
        let more = ids.len().saturating_sub(NAMED);
        info!(
            count = ids.len(),
            from = from.as_str(),
            to = to.as_str(),
            nodes = ?&ids[..ids.len().min(NAMED)],
            more,
            "node status change"
        );
    }
}
