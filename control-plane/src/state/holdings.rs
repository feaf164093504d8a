//! Which models hold layers on each node: an index that apply keeps next to the models, so a
//! heartbeat's answer (the node's assignments) and a placement's check of a node cost the
//! models on that node, not every model's ranges. With 1,000 placed models a heartbeat used
//! to compare ~10,000 ranges' node ids; at 100,000 heartbeats a second that alone was cores.
//!
//! The index is derived, not replicated: it is not encoded, and a state decoded from a
//! snapshot rebuilds it from the models ([`Stored`]), so every replica holds the same index
//! for the same models.

use std::{collections::BTreeSet, sync::Arc};

use serde::Deserialize;

use super::{
    invariants::layers_by_node, ClusterState, Model, NodeMap, PersistentMap, Range, RecentRequests,
};

/// Model ids with layers on each node, by node id; a node that holds none has no entry.
pub type Holdings = PersistentMap<String, imbl::OrdSet<String>>;

/// The holdings of `models`, computed from scratch.
pub fn rebuild(models: &imbl::OrdMap<String, Model>) -> Holdings {
    let mut holdings = Holdings::default();
    for (id, model) in models {
        for r in model.ranges() {
            holdings
                .entry(r.node_id.clone())
                .or_default()
                .insert(id.clone());
        }
    }
    holdings
}

/// What a [`ClusterState`] is encoded as: everything but the derived parts (the holdings,
/// the change feed), which are rebuilt or started anew on decoding.
#[derive(Deserialize)]
pub(super) struct Stored {
    cluster_id: Option<String>,
    nodes: NodeMap,
    models: imbl::OrdMap<String, Model>,
    #[serde(default)]
    requests: Arc<RecentRequests>,
    #[serde(default)]
    revoked_tokens: imbl::OrdMap<String, i64>,
}

impl From<Stored> for ClusterState {
    fn from(s: Stored) -> Self {
        Self {
            holdings: rebuild(&s.models),
            cluster_id: s.cluster_id,
            nodes: s.nodes,
            models: s.models,
            requests: s.requests,
            revoked_tokens: s.revoked_tokens,
            node_changes: Default::default(),
        }
    }
}

impl ClusterState {
    /// Model `id`'s layers moved from `old` to `new` ranges: updates the holdings and the
    /// `used_layers` of each node whose share changed, and records those nodes as changed.
    pub(super) fn reassign(&mut self, id: &str, old: &[Range], new: &[Range]) {
        let before = layers_by_node(old);
        let after = layers_by_node(new);
        let nodes: BTreeSet<&str> = before.keys().chain(after.keys()).copied().collect();
        for node_id in nodes {
            let had = before.get(node_id).copied().unwrap_or(0);
            let has = after.get(node_id).copied().unwrap_or(0);
            if had == has {
                continue;
            }
            if has > 0 {
                self.holdings
                    .entry(node_id.to_string())
                    .or_default()
                    .insert(id.to_string());
            } else if let Some(models) = self.holdings.get_mut(node_id) {
                models.remove(id);
                if models.is_empty() {
                    self.holdings.remove(node_id);
                }
            }
            if let Some(node) = self.nodes.get_mut(node_id) {
                node.used_layers += i32::try_from(has - had).unwrap_or(0);
                self.node_changes.push(node_id);
            }
        }
    }

    /// The models with layers on `node_id`, in model-id order.
    pub fn models_on<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Model> + 'a {
        self.holdings
            .get(node_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.models.get(id))
    }

    /// `node_id`'s ranges: (model id, range), by model id, then layer.
    pub fn assignments_of<'a>(
        &'a self,
        node_id: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Range)> + 'a {
        self.models_on(node_id).flat_map(move |m| {
            m.ranges()
                .iter()
                .filter(move |r| r.node_id == node_id)
                .map(move |r| (m.spec.id.as_str(), r))
        })
    }

    /// Layers and MiB that every model but `except` holds on `node_id`.
    pub fn usage_of(&self, node_id: &str, except: Option<&str>) -> (i64, i64) {
        let mut usage = (0, 0);
        for model in self.models_on(node_id) {
            if Some(model.spec.id.as_str()) == except {
                continue;
            }
            let layers: i64 = model
                .ranges()
                .iter()
                .filter(|r| r.node_id == node_id)
                .map(|r| i64::from(r.len()))
                .sum();
            usage.0 += layers;
            usage.1 += layers * model.spec.layer_mb();
        }
        usage
    }
}
