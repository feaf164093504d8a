//! Elections with a pre-vote and a fresh random timeout per round.
//!
//! openraft 0.9 draws each replica's election timeout once per process and has no pre-vote.
//! After a leader dies under write load, the two survivors often hold logs of different
//! lengths; when the one with the shorter log times out first, it claims the next term, cannot
//! win it (the other refuses: its log is longer), and blocks the other's election in that term
//! (it voted for itself), so the cluster needs a second, third round at the same fixed
//! timeouts. That was most of the failover outliers (800-1,100 ms against ~400 ms).
//!
//! So openraft's own election timer is switched off (`enable_elect: false`) and this task
//! decides when a replica stands:
//! - it waits for silence: no leader contact for the leader lease (openraft's
//!   `election_timeout_max`, during which voters refuse anyway) plus a timeout drawn afresh
//!   for every round from `[election_timeout_min, election_timeout_max]`;
//! - it asks the other voters first (`RaftService.PreVote`): a voter agrees only when it has
//!   not heard from a leader within the lease, is not the leader itself, and the candidate's
//!   log is at least as up to date as its own (the same rules as a real vote, without changing
//!   any term);
//! - only with agreement from a quorum (of each config, during a joint change) does it start
//!   the real election (`raft.trigger().elect()`).
//!
//! A replica that cannot win never disturbs the term, and a partitioned replica that comes
//! back does not depose a healthy leader. Safety is untouched: the vote itself is openraft's.
//!
//! Silence is counted only while this replica runs. A replica that was not scheduled for a
//! while (its process stopped, its machine paused, its runtime starved) wakes to find its
//! last leader contact hundreds of milliseconds old, though the leader may have sent all
//! along: the heartbeats are still queued. A pause watcher notes each such gap, and silence
//! (for standing and for answering a pre-vote) counts from the end of the last one. And a
//! replica that won a pre-vote looks again before it stands: a leader elected during the
//! pre-vote round trip (another candidate's) is not deposed by a stale decision.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use openraft::{storage::RaftLogStorage, LogId, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Replica;

/// How often the election task looks at the replica's state.
const TICK: Duration = Duration::from_millis(10);

/// How often the pause watcher wakes.
const PAUSE_TICK: Duration = Duration::from_millis(10);

/// A wake-up this much later than asked means the replica was not running meanwhile.
const PAUSE: Duration = Duration::from_millis(100);

/// A candidate's question to another voter, before it starts an election.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// Who asks.
    pub candidate: u64,
    /// The last log id the candidate holds.
    pub last_log_id: Option<LogId<u64>>,
}

/// What a voter knows when it answers a pre-vote.
#[derive(Clone, Copy, Debug)]
pub struct VoterView {
    /// It leads.
    pub leading: bool,
    /// Its vote is for an elected leader (not for a candidate).
    pub vote_committed: bool,
    /// Time since its vote was last refreshed (by the leader's heartbeats or a vote).
    pub since_contact: Option<Duration>,
    /// The last log id it holds.
    pub last_log_id: Option<LogId<u64>>,
}

/// Whether a voter in state `me` would vote for a candidate whose last log id is
/// `candidate_log`, were it to stand now. `lease`: how long a voter keeps faith with a leader
/// it has heard from.
pub fn would_grant(me: &VoterView, candidate_log: Option<LogId<u64>>, lease: Duration) -> bool {
    if me.leading {
        return false;
    }
    if me.vote_committed && me.since_contact.is_some_and(|d| d <= lease) {
        return false;
    }
    candidate_log >= me.last_log_id
}

/// How long the leader has been silent, as far as this replica can tell: the time since its
/// last contact (`None`: never), but no more than the time since this replica last resumed
/// from a pause (`None`: none seen).
pub fn silence(
    since_contact: Option<Duration>,
    since_resumed: Option<Duration>,
) -> Option<Duration> {
    match (since_contact, since_resumed) {
        (Some(contact), Some(resumed)) => Some(contact.min(resumed)),
        (None, resumed) => resumed,
        (contact, None) => contact,
    }
}

/// Whether a leader this replica follows has been silent for `needed`.
fn is_silent(view: &VoterView, needed: Duration) -> bool {
    view.since_contact.is_none_or(|d| d >= needed)
}

/// Whether `granted` (the candidate included) is a majority of every config in `joint`.
pub fn has_quorum(joint: &[Vec<u64>], granted: &BTreeSet<u64>) -> bool {
    !joint.is_empty()
        && joint.iter().all(|config| {
            let yes = config.iter().filter(|id| granted.contains(id)).count();
            yes * 2 > config.len()
        })
}

/// What the election task shares with the rest of the replica.
pub(super) struct ElectionState {
    /// True while the leader this replica knows has been silent past the election timeout:
    /// openraft still names it, but it is not a leader to trust.
    leader_lost: tokio::sync::watch::Sender<bool>,
    /// When this replica last resumed from a pause.
    resumed_at: Mutex<Option<Instant>>,
}

impl ElectionState {
    pub(super) fn new() -> Self {
        Self {
            leader_lost: tokio::sync::watch::Sender::new(false),
            resumed_at: Mutex::new(None),
        }
    }

    /// Whether the known leader has gone silent past the election timeout.
    pub(super) fn leader_lost(&self) -> bool {
        *self.leader_lost.borrow()
    }

    /// Follows [`ElectionState::leader_lost`].
    pub(super) fn watch_leader_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader_lost.subscribe()
    }

    fn set_leader_lost(&self, lost: bool) {
        self.leader_lost
            .send_if_modified(|v| std::mem::replace(v, lost) != lost);
    }

    fn resumed_at(&self) -> Option<Instant> {
        *self.resumed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_resumed_at(&self, at: Instant) {
        *self.resumed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

/// The replica's state as the election task needs it.
struct Snapshot {
    view: VoterView,
    voter: bool,
    joint: Vec<Vec<u64>>,
    peers: Vec<(u64, String)>,
}

impl Replica {
    /// The replica's state; with its last log id when `with_log` (that reads the log store,
    /// so the election task asks for it only when it is about to stand).
    async fn voter_view(&self, with_log: bool) -> Option<Snapshot> {
        let id = self.id;
        let resumed = self.election.resumed_at();
        let snapshot = self
            .raft
            .with_raft_state(move |st| {
                let effective = st.membership_state.effective();
                let now = Instant::now();
                Snapshot {
                    view: VoterView {
                        leading: st.server_state == ServerState::Leader,
                        vote_committed: st.vote_ref().is_committed(),
                        since_contact: silence(
                            st.vote_last_modified()
                                .map(|t| now.saturating_duration_since(t)),
                            resumed.map(|t| now.saturating_duration_since(t)),
                        ),
                        last_log_id: None,
                    },
                    voter: effective.voter_ids().any(|v| v == id),
                    joint: effective.get_joint_config().clone(),
                    peers: effective
                        .nodes()
                        .filter(|(n, _)| **n != id)
                        .map(|(n, node)| (*n, node.addr.clone()))
                        .collect(),
                }
            })
            .await
            .ok()?;
        if !with_log {
            return Some(snapshot);
        }
        let mut reader = self.log_store.clone();
        let last_log_id = reader.get_log_state().await.ok()?.last_log_id;
        Some(Snapshot {
            view: VoterView {
                last_log_id,
                ..snapshot.view
            },
            ..snapshot
        })
    }

    /// Answers another voter's pre-vote.
    pub async fn answer_pre_vote(&self, request: PreVoteRequest) -> bool {
        let lease = self.config().election_timeout.1;
        match self.voter_view(true).await {
            Some(me) => would_grant(&me.view, request.last_log_id, lease),
            None => false,
        }
    }

    /// Asks the other voters whether they would vote for this replica; true with a quorum.
    async fn pre_vote(&self, me: &Snapshot) -> bool {
        let request = PreVoteRequest {
            candidate: self.id,
            last_log_id: me.view.last_log_id,
        };
        let timeout = self.config().election_timeout.0;
        let voters: BTreeSet<u64> = me.joint.iter().flatten().copied().collect();
        let asks = me
            .peers
            .iter()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, addr)| {
                let request = request.clone();
                async move {
                    let granted: bool = self
                        .peers
                        .call(addr, &request, timeout, |mut c, r| async move {
                            c.pre_vote(r).await
                        })
                        .await
                        .unwrap_or(false);
                    granted.then_some(*id)
                }
            });
        let mut granted: BTreeSet<u64> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        granted.insert(self.id);
        has_quorum(&me.joint, &granted)
    }

    /// Background duty of every replica: start an election when the leader has been silent
    /// long enough and a pre-vote finds a quorum. Ends when the replica stops.
    pub(super) async fn run_elections(self: Arc<Self>) {
        self.spawn(self.clone().watch_pauses());
        let (min, max) = self.config().election_timeout;
        let lease = max;
        let draw = || rand::thread_rng().gen_range(min..=max);
        let mut timeout = draw();
        let mut not_before = Instant::now();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            let Some(me) = self.voter_view(false).await else {
                continue;
            };
            if me.view.leading {
                self.election.set_leader_lost(false);
                continue;
            }
            // A vote for a live leader is kept for the lease; a vote for a candidate (a round
            // in progress) only for this round's timeout.
            let needed = |view: &VoterView, timeout| {
                if view.vote_committed {
                    lease + timeout
                } else {
                    timeout
                }
            };
            let silent = is_silent(&me.view, needed(&me.view, timeout));
            // Like a pre-candidate in etcd's Raft: past the timeout, the old leader no longer
            // counts as known (health turns NOT_SERVING, errors name no leader), whether or
            // not this replica can stand.
            self.election.set_leader_lost(silent);
            let now = Instant::now();
            if !silent || !me.voter || now < not_before {
                continue;
            }
            let this_round = timeout;
            // A fresh timeout for every round: two replicas that collided once are unlikely
            // to collide again.
            timeout = draw();
            not_before = now + timeout;
            let Some(me) = self.voter_view(true).await else {
                continue;
            };
            if !self.pre_vote(&me).await {
                continue;
            }
            // A leader may have been elected, or may have been heard from, during the
            // pre-vote round trip.
            let Some(now) = self.voter_view(false).await else {
                continue;
            };
            if now.view.leading || !is_silent(&now.view, needed(&now.view, this_round)) {
                tracing::info!("pre-vote won, but a leader was heard from meanwhile; not standing");
                continue;
            }
            tracing::info!(
                silent_ms = me.view.since_contact.map(|d| d.as_millis() as u64),
                "pre-vote won; standing for election"
            );
            if self.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }

    /// Notes every time this replica was not running for [`PAUSE`] or more (see the module
    /// docs). Ends when the replica stops.
    async fn watch_pauses(self: Arc<Self>) {
        loop {
            let asked = Instant::now() + PAUSE_TICK;
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep_until(asked) => {}
            }
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            let now = Instant::now();
            let late = now.saturating_duration_since(asked);
            if late >= PAUSE {
                tracing::warn!(
                    paused_ms = late.as_millis() as u64,
                    "this replica was not running; the leader's silence is counted from now"
                );
                self.election.set_resumed_at(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(since_ms: u64, last: Option<LogId<u64>>) -> VoterView {
        VoterView {
            leading: false,
            vote_committed: true,
            since_contact: Some(Duration::from_millis(since_ms)),
            last_log_id: last,
        }
    }

    const LEASE: Duration = Duration::from_millis(200);

    #[test]
    fn a_voter_that_heard_from_its_leader_within_the_lease_refuses() {
        assert!(!would_grant(&follower(150, log(1, 5)), log(1, 9), LEASE));
        assert!(would_grant(&follower(250, log(1, 5)), log(1, 9), LEASE));
    }

    #[test]
    fn a_shorter_or_older_log_is_refused() {
        let me = follower(500, log(2, 10));
        assert!(!would_grant(&me, log(2, 9), LEASE), "shorter");
        assert!(!would_grant(&me, log(1, 50), LEASE), "older term");
        assert!(!would_grant(&me, None, LEASE), "empty");
        assert!(would_grant(&me, log(2, 10), LEASE), "equal");
        assert!(would_grant(&me, log(3, 1), LEASE), "newer term");
    }

    #[test]
    fn the_leader_refuses_and_a_candidate_ignores_the_lease() {
        let mut me = follower(10, log(1, 1));
        me.leading = true;
        assert!(!would_grant(&me, log(5, 5), LEASE));
        let candidate = VoterView {
            leading: false,
            vote_committed: false,
            since_contact: Some(Duration::from_millis(10)),
            last_log_id: log(1, 1),
        };
        assert!(would_grant(&candidate, log(1, 1), LEASE));
    }

    #[test]
    fn silence_counts_only_since_the_last_pause() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(silence(ms(400), None), ms(400), "no pause seen");
        assert_eq!(silence(ms(400), ms(30)), ms(30), "a pause 30 ms ago");
        assert_eq!(silence(ms(20), ms(300)), ms(20), "contact after the pause");
        assert_eq!(silence(None, ms(50)), ms(50), "never contacted, paused");
        assert_eq!(silence(None, None), None);
        let view = |since| VoterView {
            since_contact: since,
            ..follower(0, None)
        };
        let needed = Duration::from_millis(350);
        assert!(is_silent(&view(silence(ms(400), None)), needed));
        assert!(!is_silent(&view(silence(ms(400), ms(30))), needed));
        assert!(is_silent(&view(None), needed), "never contacted");
    }

    #[test]
    fn quorum_needs_a_majority_of_every_joint_config() {
        let granted = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let one = vec![vec![1, 2, 3]];
        assert!(has_quorum(&one, &granted(&[1, 2])));
        assert!(!has_quorum(&one, &granted(&[1])));
        assert!(!has_quorum(&one, &granted(&[1, 4, 5])));
        let joint = vec![vec![1, 2, 3], vec![2, 3, 4, 5]];
        assert!(!has_quorum(&joint, &granted(&[1, 2])), "new config short");
        assert!(has_quorum(&joint, &granted(&[2, 3, 4])));
        assert!(has_quorum(&[vec![7]], &granted(&[7])), "single voter");
        assert!(!has_quorum(&[], &granted(&[1])));
    }
}
