//! Failure detection from worker heartbeats, on the leader, in memory (Nomad's design).
//!
//! A heartbeat only updates this replica's memory: the time it arrived and the usage it
//! carried. Nothing reaches the Raft log unless a node's status changes:
//! - silent for `unhealthy_after` intervals: `healthy` -> `unhealthy`;
//! - silent for `offline_after` intervals: -> `offline`;
//! - heard from again within the unhealthy threshold: `unhealthy`/`offline` -> `healthy`.
//!
//! Silence is counted from the later of the node's last heartbeat and the moment this replica
//! became leader plus a grace period, so a failover (which loses the old leader's memory and
//! stalls heartbeats for an election) never turns into a wave of false failures. A node this
//! leader has not heard from yet starts its clock when the leader first sees it, and a
//! re-registration (a new generation) restarts it.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    time::Duration,
};

use dllm_proto::pb;
use prost::Message;
use tokio::time::Instant;

use crate::state::{Node, NodeChanges, NodeMap, NodeStatus, StatusChange};

/// Failure detector thresholds.
#[derive(Clone, Copy, Debug)]
pub struct LivenessConfig {
    /// How often workers are asked to heartbeat.
    pub interval: Duration,
    /// Missed intervals before `unhealthy`.
    pub unhealthy_after: u32,
    /// Missed intervals before `offline`.
    pub offline_after: u32,
    /// Extra time a new leader gives every node before counting silence.
    pub failover_grace: Duration,
}

impl LivenessConfig {
    /// Silence after which a node is unhealthy.
    pub fn unhealthy_timeout(&self) -> Duration {
        self.interval * self.unhealthy_after
    }

    /// Silence after which a node is offline.
    pub fn offline_timeout(&self) -> Duration {
        self.interval * self.offline_after
    }
}

/// A usage sample as the leader keeps it: its protobuf encoding, decoded only when someone
/// asks for the sample, and the two numbers fleet-wide questions need. A decoded sample of an
/// 8-GPU worker is 10 allocations to make and 10 to free on every heartbeat; this is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    encoded: Vec<u8>,
    memory_used_mb: i64,
    memory_total_mb: i64,
}

/// The fields of `NodeUsage` a [`Sample`] reads at once (same tags; the rest is skipped
/// without allocating).
#[derive(Clone, PartialEq, prost::Message)]
struct Memory {
    #[prost(int64, tag = "3")]
    memory_used_mb: i64,
    #[prost(int64, tag = "4")]
    memory_total_mb: i64,
}

impl Sample {
    /// A sample from the protobuf encoding of a `NodeUsage`.
    ///
    /// # Errors
    /// When `encoded` is not a valid `NodeUsage` encoding as far as the memory fields go.
    pub fn from_encoded(encoded: Vec<u8>) -> Result<Self, prost::DecodeError> {
        let memory = Memory::decode(encoded.as_slice())?;
        Ok(Self {
            encoded,
            memory_used_mb: memory.memory_used_mb,
            memory_total_mb: memory.memory_total_mb,
        })
    }

    /// The sample as a `NodeUsage` (empty if its bytes do not decode, which
    /// [`Sample::from_encoded`] has mostly ruled out).
    pub fn decode(&self) -> pb::NodeUsage {
        pb::NodeUsage::decode(self.encoded.as_slice()).unwrap_or_default()
    }
}

impl From<&pb::NodeUsage> for Sample {
    fn from(usage: &pb::NodeUsage) -> Self {
        Self {
            encoded: usage.encode_to_vec(),
            memory_used_mb: usage.memory_used_mb,
            memory_total_mb: usage.memory_total_mb,
        }
    }
}

/// What this leader knows about one node beyond the replicated state.
#[derive(Debug)]
struct Tracked {
    generation: u64,
    last_contact: Instant,
    last_contact_ms: Option<i64>,
    usage: Option<Sample>,
    /// A transition (from, to) proposed and not yet seen applied, so it is not proposed
    /// twice. Dropped once the node's status is no longer `from` (applied, or overtaken by
    /// another change), or when the write fails.
    pending: Option<(NodeStatus, NodeStatus)>,
    /// When this node is next looked at (its entry in `due`); `None`: only a change or a
    /// heartbeat makes it worth a look.
    check_at: Option<Instant>,
    /// Whether it is in `recheck`.
    queued: bool,
    /// The last look at every node that reached this one.
    scan: u64,
}

/// What the detector needs of a node it hears from.
#[derive(Clone, Copy, Debug)]
pub struct Heard<'a> {
    /// The node's id.
    pub node_id: &'a str,
    /// Its registration generation.
    pub generation: u64,
    /// Its replicated status.
    pub status: NodeStatus,
}

impl<'a> Heard<'a> {
    /// What the detector needs of `node`.
    pub fn of(node: &'a Node) -> Self {
        Self {
            node_id: &node.node_id,
            generation: node.generation,
            status: node.status,
        }
    }
}

/// The detector's state; time is passed in so tests can drive it.
///
/// A sweep costs what changed, not the size of the fleet: it looks at the nodes the state's
/// change feed names, the nodes heard from while unhealthy or offline, and the nodes whose
/// next threshold has passed (a queue ordered by time) without a heartbeat since. Only the
/// first sweep of a term, or one that fell behind the feed, looks at every node.
#[derive(Debug)]
pub struct Detector {
    config: LivenessConfig,
    tracked: foldhash::HashMap<String, Tracked>,
    leader_since: Option<Instant>,
    /// The feed and the position in it this detector has read up to.
    cursor: Option<(NodeChanges, u64)>,
    /// (when, node id), earliest first. An entry whose time is not its node's `check_at`
    /// any more is stale and skipped.
    due: BinaryHeap<Reverse<(Instant, String)>>,
    /// Nodes to look at on the next sweep whatever the feed says.
    recheck: Vec<String>,
    /// Looks at single nodes so far (what sweeps cost).
    looked: u64,
    /// Times a node's turn came and was put off, the node heard from meanwhile.
    put_off: u64,
    /// Looks at every node so far.
    scans: u64,
    /// Bumped whenever leadership starts or ends: a sweep begun in another term stops.
    term: u64,
}

/// One sweep in progress. [`Detector::begin_sweep`] gathers what it is to look at from the
/// detector's own queues and the change feed (or, for a look at every node, an O(1) copy of
/// the node map, whose ids [`Sweep::list_every`] lists without any lock held);
/// [`Detector::look`] then looks at those nodes a chunk at a time, each chunk under its own
/// short read of the state, so apply (which needs the state's write lock) never waits for a
/// whole sweep, and heartbeats (which need the detector) never wait for more than a chunk.
/// A node that changes between chunks is in the feed for the next sweep.
/// [`Detector::finish`] hands over what was found, or nothing if the term ended meanwhile.
///
/// A sweep is not cancel-safe: [`Detector::begin_sweep`] takes the nodes whose time came
/// off the detector's queue, so its looks must run (the replica's sweeper is a plain task).
#[derive(Debug)]
pub struct Sweep {
    term: u64,
    now: Instant,
    counting_from: Instant,
    /// A copy of the node map when this sweep looks at every node, until its ids are listed.
    every: Option<NodeMap>,
    /// Which look at every node this sweep is, if it is one.
    scan: Option<u64>,
    /// The nodes to look at by id, and how many have been.
    ids: Vec<String>,
    next: usize,
    changes: Vec<StatusChange>,
}

impl Sweep {
    /// Whether every node of this sweep has been looked at (or its term ended).
    pub fn done(&self) -> bool {
        self.every.is_none() && self.next >= self.ids.len()
    }

    /// Adds every node of the copy taken for a look at every node to the nodes to look at.
    /// O(nodes): call it with no lock held. [`Detector::look`] does it if it was not done.
    pub fn list_every(&mut self) {
        if let Some(nodes) = self.every.take() {
            self.ids.reserve(nodes.len());
            self.ids.extend(nodes.keys().cloned());
        }
    }

    /// The ids of the next (up to) `max` nodes to look at.
    pub fn next_ids(&mut self, max: usize) -> &[String] {
        self.list_every();
        let end = self.ids.len().min(self.next.saturating_add(max));
        &self.ids[self.next..end]
    }

    /// How many nodes by id this sweep is to look at.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it has no node by id to look at.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The transitions found so far.
    pub fn found(&self) -> &[StatusChange] {
        &self.changes
    }
}

impl Detector {
    /// A detector that is not leading.
    pub fn new(config: LivenessConfig) -> Self {
        Self {
            config,
            tracked: Default::default(),
            leader_since: None,
            cursor: None,
            due: BinaryHeap::new(),
            recheck: Vec::new(),
            looked: 0,
            put_off: 0,
            scans: 0,
            term: 0,
        }
    }

    /// How many times a sweep has looked at a node (the work sweeps did).
    pub fn looked(&self) -> u64 {
        self.looked
    }

    /// How many times a node's turn to be looked at came and was put off without a look,
    /// the node heard from meanwhile.
    pub fn put_off(&self) -> u64 {
        self.put_off
    }

    /// The thresholds.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Whether this replica is acting as leader for liveness.
    pub fn leading(&self) -> bool {
        self.leader_since.is_some()
    }

    /// Starts detecting: forget everything (another leader may have heard from nodes since)
    /// and begin the grace period.
    pub fn become_leader(&mut self, now: Instant) {
        self.forget_all();
        self.leader_since = Some(now);
    }

    /// Stops detecting and drops the soft state.
    pub fn step_down(&mut self) {
        self.forget_all();
        self.leader_since = None;
    }

    fn forget_all(&mut self) {
        self.term += 1;
        self.tracked.clear();
        self.cursor = None;
        self.due.clear();
        self.recheck.clear();
    }

    /// This detector's record of `node`, made if there is none (`scans`: the current look at
    /// every node, which a record made during it survives).
    fn track<'a>(
        tracked: &'a mut foldhash::HashMap<String, Tracked>,
        node: &Heard<'_>,
        now: Instant,
        scans: u64,
    ) -> &'a mut Tracked {
        // Look up before inserting: `entry` would allocate a copy of the id on every call,
        // and this runs for every heartbeat.
        if !tracked.contains_key(node.node_id) {
            tracked.insert(
                node.node_id.to_string(),
                Tracked {
                    generation: node.generation,
                    last_contact: now,
                    last_contact_ms: None,
                    usage: None,
                    pending: None,
                    check_at: None,
                    queued: false,
                    scan: scans,
                },
            );
        }
        let t = tracked.get_mut(node.node_id).expect("inserted just above");
        if t.generation != node.generation {
            t.generation = node.generation;
            t.last_contact = now;
            t.pending = None;
        }
        t
    }

    /// Records a heartbeat from `node` (a member, as the replicated state has it). Nothing
    /// is decided here: the next sweep turns an unhealthy or offline node that is heard from
    /// again back to healthy, batched with every other transition of that tick, so a burst of
    /// recoveries is one Raft entry, not one per node.
    pub fn heartbeat(
        &mut self,
        node: &Node,
        usage: Option<pb::NodeUsage>,
        now: Instant,
        now_ms: i64,
    ) {
        self.heard(
            Heard::of(node),
            usage.as_ref().map(Sample::from),
            now,
            now_ms,
        );
    }

    /// [`Detector::heartbeat`] from what a heartbeat needs of the node, which the leader
    /// copies out of the state so that the detector is updated with the state unlocked.
    pub fn heard(&mut self, node: Heard<'_>, usage: Option<Sample>, now: Instant, now_ms: i64) {
        let t = Self::track(&mut self.tracked, &node, now, self.scans);
        t.last_contact = now;
        t.last_contact_ms = Some(now_ms);
        if usage.is_some() {
            t.usage = usage;
        }
        if matches!(node.status, NodeStatus::Unhealthy | NodeStatus::Offline) && !t.queued {
            t.queued = true;
            self.recheck.push(node.node_id.to_string());
        }
    }

    /// Finds the nodes whose silence crossed a threshold, or that were heard from again:
    /// a whole sweep at once ([`Detector::begin_sweep`], then every look). `nodes` is the
    /// replicated state's node map and `changes` its change feed.
    pub fn sweep(
        &mut self,
        nodes: &NodeMap,
        changes: &NodeChanges,
        now: Instant,
    ) -> Vec<StatusChange> {
        let Some(mut sweep) = self.begin_sweep(nodes, changes, now) else {
            return Vec::new();
        };
        self.look(&mut sweep, nodes, usize::MAX);
        self.finish(sweep)
    }

    /// Starts a sweep, when leading: the nodes queued for another look, those the change
    /// feed names since the last sweep, and those whose next threshold has passed; or, on a
    /// term's first sweep or one that fell behind the feed, every node (a copy of `nodes`).
    pub fn begin_sweep(
        &mut self,
        nodes: &NodeMap,
        changes: &NodeChanges,
        now: Instant,
    ) -> Option<Sweep> {
        let since = self.leader_since?;
        let mut ids = std::mem::take(&mut self.recheck);
        let news = self
            .cursor
            .as_ref()
            .filter(|(feed, _)| feed.same(changes))
            .and_then(|(_, read)| changes.since(*read));
        let (read, every) = match news {
            Some((new, end)) => {
                ids.extend(new);
                (end, None)
            }
            None => {
                // First sweep of this term, a new feed, or too far behind: every node.
                let end = changes.end();
                tracing::debug!(
                    first = self.cursor.is_none(),
                    end,
                    "failure detector: looking at every node"
                );
                self.scans += 1;
                // Room for every node now: the map grows once, here, not rehashing all it
                // tracks again and again as the sweep adds nodes.
                self.tracked
                    .reserve(nodes.len().saturating_sub(self.tracked.len()));
                (end, Some(nodes.clone()))
            }
        };
        self.cursor = Some((changes.clone(), read));
        let counting_from = since + self.config.failover_grace;
        let unhealthy = self.config.unhealthy_timeout();
        // Nodes whose time came, minus those heard from since it was set: a node heard from
        // within the unhealthy threshold needs no transition (one that is unhealthy or
        // offline was queued for a look by its heartbeat), so its time is put off to the
        // threshold counted from that heartbeat, with no look at the state. Without this,
        // every heartbeating node was looked at (a read and a copy of it from the state)
        // once per threshold: a third of the fleet per second.
        let mut put_off = Vec::new();
        while self.due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse((at, id))) = self.due.pop() else {
                break;
            };
            let Some(t) = self.tracked.get_mut(&id).filter(|t| t.check_at == Some(at)) else {
                continue;
            };
            let next = t.last_contact.max(counting_from) + unhealthy;
            if next > now {
                t.check_at = Some(next);
                put_off.push(Reverse((next, id)));
            } else {
                t.check_at = None;
                ids.push(id);
            }
        }
        self.put_off += put_off.len() as u64;
        self.due.extend(put_off);
        Some(Sweep {
            term: self.term,
            now,
            counting_from,
            scan: every.is_some().then_some(self.scans),
            every,
            ids,
            next: 0,
            changes: Vec::new(),
        })
    }

    /// The transitions a sweep found, once it is done; nothing if its term ended meanwhile
    /// (another term's detector starts afresh, and its grace period must hold). A look at
    /// every node also forgets the nodes it did not reach: gone from the state, or left.
    pub fn finish(&mut self, sweep: Sweep) -> Vec<StatusChange> {
        if sweep.term != self.term {
            return Vec::new();
        }
        if let Some(scan) = sweep.scan {
            // Looked at in this scan, or first seen since it began (a heartbeat of a node
            // registered after the copy was taken).
            self.tracked.retain(|_, t| t.scan >= scan);
        }
        sweep.changes
    }

    /// Looks at up to `max` more of the sweep's nodes by id, as `nodes` has them now. A sweep
    /// whose term has ended (leadership moved meanwhile) looks at nothing more.
    pub fn look(&mut self, sweep: &mut Sweep, nodes: &NodeMap, max: usize) {
        let found: Vec<Option<Node>> = sweep
            .next_ids(max)
            .iter()
            .map(|id| nodes.get(id).cloned())
            .collect();
        self.look_at(sweep, &found);
    }

    /// Looks at the sweep's next `found.len()` nodes by id, `found[i]` being the state's copy
    /// of the node [`Sweep::next_ids`] names `i`th (`None`: no longer in the state). The
    /// replica copies them out under a short read of the state and looks with the state
    /// unlocked: the detector's work (a growing map rehashes every node it tracks) never
    /// holds up apply, which would hold up every reader and the runtime's threads with it.
    pub fn look_at(&mut self, sweep: &mut Sweep, found: &[Option<Node>]) {
        sweep.list_every();
        if sweep.term != self.term {
            sweep.next = sweep.ids.len();
            return;
        }
        let end = sweep.ids.len().min(sweep.next + found.len());
        for (i, node) in (sweep.next..end).zip(found) {
            let id = &sweep.ids[i];
            if let Some(t) = self.tracked.get_mut(id) {
                t.queued = false;
            }
            let change = match node {
                Some(node) => self.check(node, sweep.now, sweep.counting_from),
                None => {
                    self.tracked.remove(id);
                    None
                }
            };
            sweep.changes.extend(change);
        }
        sweep.next = end;
    }

    /// Looks at one node: the transition it needs, if any, and when to look again.
    fn check(&mut self, node: &Node, now: Instant, counting_from: Instant) -> Option<StatusChange> {
        if node.status == NodeStatus::Left {
            self.tracked.remove(&node.node_id);
            return None;
        }
        self.looked += 1;
        let config = self.config;
        let t = Self::track(&mut self.tracked, &Heard::of(node), now, self.scans);
        t.scan = self.scans;
        if t.pending.is_some_and(|(from, _)| from != node.status) {
            t.pending = None;
        }
        let mut target = None;
        let mut next = None;
        // Heard from (by this leader) within the unhealthy threshold: healthy again.
        let heard_recently = t.last_contact_ms.is_some()
            && now.saturating_duration_since(t.last_contact) < config.unhealthy_timeout();
        if matches!(node.status, NodeStatus::Unhealthy | NodeStatus::Offline) && heard_recently {
            target = Some(NodeStatus::Healthy);
        } else if matches!(node.status, NodeStatus::Healthy | NodeStatus::Unhealthy) {
            let base = t.last_contact.max(counting_from);
            let silent = now.saturating_duration_since(base);
            if silent >= config.offline_timeout() {
                target = Some(NodeStatus::Offline);
            } else if silent >= config.unhealthy_timeout() {
                target = Some(NodeStatus::Unhealthy);
            }
            // Look again when the next threshold passes; a heartbeat meanwhile only moves
            // `last_contact`, and that look reschedules.
            next = [config.unhealthy_timeout(), config.offline_timeout()]
                .into_iter()
                .map(|after| base + after)
                .find(|at| *at > now);
        }
        if next != t.check_at {
            t.check_at = next;
            if let Some(at) = next {
                self.due.push(Reverse((at, node.node_id.clone())));
            }
        }
        let target =
            target.filter(|to| *to != node.status && t.pending != Some((node.status, *to)))?;
        t.pending = Some((node.status, target));
        Some(StatusChange {
            node_id: node.node_id.clone(),
            generation: node.generation,
            from: node.status,
            to: target,
            last_seen_ms: t.last_contact_ms,
        })
    }

    /// Forgets the pending transitions of a write that failed (it may or may not have
    /// committed): the next sweep looks at those nodes again and proposes what is still
    /// needed. A write that succeeded needs no call: its transitions show up in the change
    /// feed.
    pub fn abandon(&mut self, changes: &[StatusChange]) {
        for c in changes {
            if let Some(t) = self.tracked.get_mut(&c.node_id) {
                if t.pending == Some((c.from, c.to)) {
                    t.pending = None;
                }
                if !t.queued {
                    t.queued = true;
                    self.recheck.push(c.node_id.clone());
                }
            }
        }
    }

    /// The latest usage sample of a node, if this leader has one.
    pub fn usage(&self, node_id: &str) -> Option<pb::NodeUsage> {
        self.tracked
            .get(node_id)
            .and_then(|t| Some(t.usage.as_ref()?.decode()))
    }

    /// When this leader last heard from each node it has heard from (Unix ms): heartbeats
    /// and registrations, which the replicated state's `last_seen_ms` (registrations only)
    /// does not see.
    pub fn last_contacts(&self) -> impl Iterator<Item = (&str, i64)> {
        self.tracked
            .iter()
            .filter_map(|(id, t)| Some((id.as_str(), t.last_contact_ms?)))
    }

    /// When this leader last heard from `node_id` (Unix ms).
    pub fn last_contact(&self, node_id: &str) -> Option<i64> {
        self.tracked.get(node_id).and_then(|t| t.last_contact_ms)
    }

    /// Free host memory (MiB) of one node, if it has a usage sample.
    pub fn free_memory_of(&self, node_id: &str) -> Option<i64> {
        let u = self.tracked.get(node_id)?.usage.as_ref()?;
        Some((u.memory_total_mb - u.memory_used_mb).max(0))
    }

    /// Free host memory (MiB) of every node with a usage sample.
    pub fn free_memory(&self) -> HashMap<String, i64> {
        self.tracked
            .iter()
            .filter_map(|(id, t)| {
                let u = t.usage.as_ref()?;
                Some((id.clone(), (u.memory_total_mb - u.memory_used_mb).max(0)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
