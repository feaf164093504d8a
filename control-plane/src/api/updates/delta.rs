//! The pure part of a stream's updates: from a state and what was sent before, the next
//! update of each type (whole lists, or what changed) and what is then sent.
//!
//! Nodes: the state's change feed ([`NodeChanges`]) names the nodes whose record changed
//! since the last update, so a delta costs what changed; where the feed cannot say (a
//! snapshot replaced the state, or the stream fell more than the feed holds behind) the maps
//! are compared node by node. Either way a node is sent when its record differs from the one
//! sent, so a hint about a node that did not change costs one comparison and nothing else.
//! Models: the ordered map's diff, which skips subtrees the two maps share.
//!
//! last_seen: a refresh cycle walks the ids the state held when the cycle began, at a pace
//! that covers them in [`LAST_SEEN_REFRESH_S`] seconds; each member it reaches that did not
//! change is listed by id in `ClusterUpdate.last_seen`.

use std::{collections::HashSet, sync::Arc};

use dllm_proto::pb;

use crate::{
    convert,
    state::{ClusterState, Model, Node, NodeChanges, NodeMap, NodeStatus},
};

/// Seconds within which a delta stream refreshes every member's last_seen.
pub const LAST_SEEN_REFRESH_S: i64 = 30;

/// The models by id, as the state holds them.
pub type ModelMap = imbl::OrdMap<String, Model>;

/// What a delta stream sent last.
#[derive(Clone, Default)]
pub struct Sent {
    /// The nodes as of the last "nodes" update.
    pub nodes: Option<NodeMap>,
    /// The models as of the last "models" update.
    pub models: Option<ModelMap>,
    /// The change feed of the state the nodes came from, and its position then.
    pub feed: Option<(NodeChanges, u64)>,
    /// Where the last_seen refresh is.
    pub refresh: Refresh,
}

/// A last_seen refresh cycle: the ids to walk, how far it got, and when it last moved.
#[derive(Clone, Default)]
pub struct Refresh {
    ids: Arc<Vec<String>>,
    next: usize,
    at_ms: i64,
}

impl Refresh {
    /// A cycle over the ids of `nodes`, starting at `now_ms`.
    fn start(nodes: &NodeMap, now_ms: i64) -> Self {
        Refresh {
            ids: Arc::new(nodes.keys().cloned().collect()),
            next: 0,
            at_ms: now_ms,
        }
    }

    /// The ids due by `now_ms`: as many as the time since the last step is of the cycle's
    /// length (at least one once time moved). A finished cycle starts again over `nodes`.
    fn step(&mut self, nodes: &NodeMap, now_ms: i64) -> &[String] {
        if self.next >= self.ids.len() {
            *self = Refresh {
                at_ms: self.at_ms,
                ..Refresh::start(nodes, now_ms)
            };
        }
        let elapsed = (now_ms - self.at_ms).clamp(0, LAST_SEEN_REFRESH_S * 1000) as u128;
        let (len, cycle) = (self.ids.len() as u128, LAST_SEEN_REFRESH_S as u128 * 1000);
        let count = (len * elapsed).div_ceil(cycle) as usize;
        let from = self.next;
        self.next = (from + count).min(self.ids.len());
        self.at_ms = now_ms;
        &self.ids[from..self.next]
    }
}

/// One update of each of `types` from `s` at `timestamp`: whole lists, or, with `deltas` and
/// something sent before, what changed since; and what is then sent. Nodes carry their
/// replicated last_seen (the caller adds the leader's).
pub fn compose(
    s: &ClusterState,
    types: &[String],
    deltas: bool,
    sent: &Sent,
    timestamp: i64,
    metrics: impl Fn(&ClusterState) -> pb::ClusterMetrics,
) -> (Vec<pb::ClusterUpdate>, Sent) {
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
                    let mut feed_end = None;
                    match sent.nodes.as_ref().filter(|_| deltas) {
                        None => {
                            let nodes = s.nodes_by_id().into_iter();
                            u.nodes = nodes.map(convert::node_info).collect();
                            next.refresh = Refresh::start(&s.nodes, timestamp);
                        }
                        Some(before) => {
                            let since = sent
                                .feed
                                .as_ref()
                                .filter(|(feed, _)| feed.same(&s.node_changes))
                                .and_then(|(feed, at)| feed.since(*at));
                            let (hint, end) = match since {
                                Some((ids, end)) => (Some(ids), end),
                                None => (None, s.node_changes.end()),
                            };
                            feed_end = Some(end);
                            let delta = node_delta(before, &s.nodes, hint.as_deref());
                            let changed: HashSet<&str> =
                                delta.changed.iter().map(|n| n.node_id.as_str()).collect();
                            u.last_seen = next
                                .refresh
                                .step(&s.nodes, timestamp)
                                .iter()
                                .filter(|id| !changed.contains(id.as_str()))
                                .filter_map(|id| s.nodes.get(id))
                                .filter(|n| n.status != NodeStatus::Left)
                                .map(|n| (n.node_id.clone(), n.last_seen_ms))
                                .collect();
                            u.nodes = delta.changed.into_iter().map(convert::node_info).collect();
                            u.removed_node_ids = delta.removed;
                            u.delta = true;
                        }
                    }
                    next.nodes = Some(s.nodes.clone());
                    // Where this update's look at the feed ended (what since() returned).
                    let end = feed_end.unwrap_or_else(|| s.node_changes.end());
                    next.feed = Some((s.node_changes.clone(), end));
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

/// How the nodes changed between two states.
#[derive(Debug, Default)]
pub struct NodeDelta<'a> {
    /// Nodes new or changed, by id.
    pub changed: Vec<&'a Node>,
    /// Ids no longer there, in order.
    pub removed: Vec<String>,
}

/// The nodes of `now` new or different from `before`, and the ids `now` lacks. With `hint`
/// (every id that may have changed) only those are looked at; without it, every node.
pub fn node_delta<'a>(
    before: &NodeMap,
    now: &'a NodeMap,
    hint: Option<&[String]>,
) -> NodeDelta<'a> {
    let mut delta = NodeDelta::default();
    match hint {
        Some(ids) => {
            let ids: HashSet<&String> = ids.iter().collect();
            for id in ids {
                match (before.get(id), now.get(id)) {
                    (Some(old), Some(node)) if old != node => delta.changed.push(node),
                    (None, Some(node)) => delta.changed.push(node),
                    (Some(_), None) => delta.removed.push(id.clone()),
                    _ => {}
                }
            }
        }
        None => {
            let mut kept = 0usize;
            for (id, node) in now {
                match before.get(id) {
                    Some(old) => {
                        kept += 1;
                        if old != node {
                            delta.changed.push(node);
                        }
                    }
                    None => delta.changed.push(node),
                }
            }
            // Every id of `before` was found in `now` unless fewer were kept than it holds.
            if kept != before.len() {
                let gone = before.keys().filter(|id| !now.contains_key(*id));
                delta.removed = gone.cloned().collect();
            }
        }
    }
    delta
        .changed
        .sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
    delta.removed.sort_unstable();
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

#[cfg(test)]
mod tests;
