//! What one `StreamUpdates` stream sends each time: whole lists, or, when the client asked
//! for `deltas`, the first lists whole and then only what changed.
//!
//! A [`Subscription`] keeps the nodes and models it last sent, as the state's own persistent
//! maps: holding them costs nothing until the state moves on, and only the changed parts are
//! then kept twice. The next update compares the state with them: models through the ordered
//! map's diff (which skips shared subtrees), nodes one by one (a hash map, about a
//! microsecond per thousand nodes). The comparison is by value, so it holds across anything
//! that rebuilds the state (a snapshot installed, a leader change): the worst case is a
//! delta naming nodes that did not change.
//!
//! `last_seen` is soft state on the leader that moves with every heartbeat; sending it as it
//! moves would send the fleet every second. In a delta, a node is sent whole when its record
//! changes, and, while it is a member, its id and last_seen alone (`ClusterUpdate.last_seen`)
//! once every [`LAST_SEEN_REFRESH_S`] seconds (a slice of the fleet each second, picked by a
//! hash of the id), each time with the leader's last contact. So a delta costs the changes
//! plus a few dozen bytes for 1/30 of the fleet per second.

use std::sync::Arc;

use dllm_proto::pb;
use dllm_util::clock::now_ms;

use crate::{
    convert,
    error::ApiError,
    forward::{UsageAnswer, UsageQuery},
    replica::Replica,
    state::{ClusterState, Model, Node, NodeMap, NodeStatus},
};

/// The update types StreamUpdates knows.
pub const UPDATE_TYPES: &[&str] = &["nodes", "models", "metrics"];

/// Seconds within which a delta stream sends every member node again, with a fresh
/// last_seen.
pub const LAST_SEEN_REFRESH_S: i64 = 30;

/// The models by id, as the state holds them.
type ModelMap = imbl::OrdMap<String, Model>;

/// One stream's types and what it sent last.
pub struct Subscription {
    replica: Arc<Replica>,
    types: Vec<String>,
    deltas: bool,
    sent: Sent,
}

/// What a delta stream sent last.
#[derive(Clone, Default)]
pub struct Sent {
    /// The nodes as of the last "nodes" update.
    pub nodes: Option<NodeMap>,
    /// The models as of the last "models" update.
    pub models: Option<ModelMap>,
    /// The second up to which member nodes were last refreshed.
    pub refreshed_to_s: i64,
}

impl Subscription {
    /// A stream of `types` (already checked, each once) from `replica`.
    pub fn new(replica: Arc<Replica>, types: Vec<String>, deltas: bool) -> Self {
        Self {
            replica,
            types,
            deltas,
            sent: Sent::default(),
        }
    }

    fn wants(&self, t: &str) -> bool {
        self.types.iter().any(|x| x == t)
    }

    /// The next update of each type, all from one linearizable read.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader or quorum.
    pub async fn next(&mut self) -> Result<Vec<pb::ClusterUpdate>, ApiError> {
        let timestamp = now_ms();
        let whole_nodes = self.wants("nodes") && (!self.deltas || self.sent.nodes.is_none());
        // The fleet's last contacts and free memory, only where a whole list needs them; a
        // delta stream's metrics ask the leader for one sum instead.
        let fleet = match whole_nodes || (!self.deltas && self.wants("metrics")) {
            true => Some(self.replica.usage(UsageQuery::Fleet).await?),
            false => None,
        };
        let available = match (&fleet, self.wants("metrics")) {
            (None, true) => {
                let answer = self.replica.usage(UsageQuery::AvailableMemory).await?;
                answer.available_memory_mb
            }
            _ => None,
        };
        let (types, deltas, sent) = (&self.types, self.deltas, &self.sent);
        let (mut updates, sent) = self
            .replica
            .read(|s| {
                compose(s, types, deltas, sent, timestamp, |s| {
                    metrics(s, fleet.as_ref(), available)
                })
            })
            .await?;
        if let Some(u) = updates.iter_mut().find(|u| u.update_type == "nodes") {
            let contact = match (u.delta, fleet) {
                (false, Some(fleet)) => fleet.last_contact_ms,
                // The leader's last contact with just the nodes in the delta.
                _ => {
                    let ids = u.nodes.iter().map(|n| n.node_id.clone());
                    let ids: Vec<String> = ids.chain(u.last_seen.keys().cloned()).collect();
                    match ids.is_empty() {
                        true => Default::default(),
                        false => {
                            let seen = self.replica.usage(UsageQuery::LastSeen(ids)).await?;
                            seen.last_contact_ms
                        }
                    }
                }
            };
            for n in &mut u.nodes {
                if let Some(&ms) = contact.get(&n.node_id) {
                    n.last_seen = n.last_seen.max(ms);
                }
            }
            for (id, seen) in &mut u.last_seen {
                if let Some(&ms) = contact.get(id) {
                    *seen = (*seen).max(ms);
                }
            }
        }
        if self.deltas {
            self.sent = sent;
        }
        Ok(updates)
    }
}

/// One update of each of `types` from `s`: whole lists, or, with `deltas` and something
/// `sent` before, what changed since; and what is then sent. Nodes carry their replicated
/// last_seen (the caller adds the leader's).
pub fn compose(
    s: &ClusterState,
    types: &[String],
    deltas: bool,
    sent: &Sent,
    timestamp: i64,
    metrics: impl Fn(&ClusterState) -> pb::ClusterMetrics,
) -> (Vec<pb::ClusterUpdate>, Sent) {
    let now_s = timestamp.div_euclid(1000);
    let mut next = sent.clone();
    let updates = types
        .iter()
        .map(|t| {
            let mut u = pb::ClusterUpdate {
                update_type: t.clone(),
                timestamp,
                ..Default::default()
            };
            match t.as_str() {
                "nodes" => {
                    match sent.nodes.as_ref().filter(|_| deltas) {
                        None => {
                            u.nodes = s
                                .nodes_by_id()
                                .into_iter()
                                .map(convert::node_info)
                                .collect()
                        }
                        Some(before) => {
                            let (from, to) = (sent.refreshed_to_s, now_s);
                            let delta = node_delta(before, &s.nodes, |n| {
                                n.status != NodeStatus::Left && refresh_due(&n.node_id, from, to)
                            });
                            u.nodes = delta.changed.into_iter().map(convert::node_info).collect();
                            u.last_seen = delta
                                .due
                                .into_iter()
                                .map(|n| (n.node_id.clone(), n.last_seen_ms))
                                .collect();
                            u.removed_node_ids = delta.removed;
                            u.delta = true;
                        }
                    }
                    next.nodes = Some(s.nodes.clone());
                    next.refreshed_to_s = now_s;
                }
                "models" => {
                    match sent.models.as_ref().filter(|_| deltas) {
                        None => u.models = s.models.values().map(convert::model_info).collect(),
                        Some(before) => {
                            let (changed, removed) = model_delta(before, &s.models);
                            u.models = changed.into_iter().map(convert::model_info).collect();
                            u.removed_model_ids = removed;
                            u.delta = true;
                        }
                    }
                    next.models = Some(s.models.clone());
                }
                _ => u.metrics = Some(metrics(s)),
            }
            u
        })
        .collect();
    (updates, next)
}

/// The cluster metrics, with the available memory from the fleet's samples or the leader's
/// sum.
fn metrics(
    s: &ClusterState,
    fleet: Option<&UsageAnswer>,
    available: Option<i64>,
) -> pb::ClusterMetrics {
    match fleet {
        Some(f) => convert::cluster_metrics(s, &f.free_memory_mb),
        None => {
            let mut m = convert::cluster_metrics(s, &Default::default());
            if let Some(mb) = available {
                m.available_memory_mb = mb;
            }
            m
        }
    }
}

/// How the nodes changed between two states.
#[derive(Debug, Default)]
pub struct NodeDelta<'a> {
    /// Nodes new or changed, by id.
    pub changed: Vec<&'a Node>,
    /// Nodes unchanged that are due a last_seen refresh, by id.
    pub due: Vec<&'a Node>,
    /// Ids no longer there, in order.
    pub removed: Vec<String>,
}

/// The nodes of `now` that differ from `before`, those unchanged but `due`, and the ids in
/// `before` that `now` lacks.
pub fn node_delta<'a>(
    before: &NodeMap,
    now: &'a NodeMap,
    due: impl Fn(&Node) -> bool,
) -> NodeDelta<'a> {
    let mut delta = NodeDelta::default();
    let mut kept = 0usize;
    for (id, node) in now {
        match before.get(id) {
            Some(old) => {
                kept += 1;
                if old != node {
                    delta.changed.push(node);
                } else if due(node) {
                    delta.due.push(node);
                }
            }
            None => delta.changed.push(node),
        }
    }
    delta
        .changed
        .sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
    delta.due.sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
    // Every id of `before` was found in `now` unless fewer were kept than it holds.
    if kept != before.len() {
        delta.removed = before
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        delta.removed.sort_unstable();
    }
    delta
}

/// The models of `now` added or changed since `before`, and the ids removed.
pub fn model_delta<'a>(before: &ModelMap, now: &'a ModelMap) -> (Vec<&'a Model>, Vec<String>) {
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    for item in before.diff(now) {
        match item {
            imbl::ordmap::DiffItem::Add(_, m) => changed.push(m),
            imbl::ordmap::DiffItem::Update { new: (_, m), .. } => changed.push(m),
            imbl::ordmap::DiffItem::Remove(id, _) => removed.push(id.clone()),
        }
    }
    (changed, removed)
}

/// Whether `node_id`'s refresh falls in the seconds after `from_s` up to `to_s`: each id has
/// one second in every [`LAST_SEEN_REFRESH_S`], picked by a hash of it.
pub fn refresh_due(node_id: &str, from_s: i64, to_s: i64) -> bool {
    let span = to_s - from_s;
    if span <= 0 {
        return false;
    }
    if span >= LAST_SEEN_REFRESH_S {
        return true;
    }
    // FNV-1a: stable for the life of the process (and beyond), unlike a seeded hasher.
    let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let slot = (hash % LAST_SEEN_REFRESH_S as u64) as i64;
    (slot - (from_s + 1)).rem_euclid(LAST_SEEN_REFRESH_S) < span
}

#[cfg(test)]
mod tests;
