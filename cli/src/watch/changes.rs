//! What changed in the cluster, update by update. `dllm watch` asks `StreamUpdates` for
//! deltas: the first nodes and models lists whole, then only what changed, kept in a
//! [`ClusterView`]. It reports the differences: node status changes, nodes joining and
//! leaving, models added and removed or changing placement status, layers moving between
//! workers, and the headline metrics. The first list of each kind is reported whole, so a
//! reader knows where things started; after a reconnect the new stream's whole list is
//! compared with the lists held, so what changed while the stream was down is reported too.

use dllm_proto::{
    pb,
    view::{Applied, ClusterView, DeltaWithoutBase},
};

use crate::layers;

/// One thing that changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The first view of the nodes: each id and status.
    Nodes(Vec<pb::NodeInfo>),
    /// The first view of the models.
    Models(Vec<pb::ModelInfo>),
    /// A node appeared.
    NodeJoined {
        /// Its id.
        node: String,
        /// Its status.
        status: String,
    },
    /// A node is no longer listed.
    NodeGone {
        /// Its id.
        node: String,
    },
    /// A node's status changed.
    NodeStatus {
        /// Its id.
        node: String,
        /// Before.
        from: String,
        /// After.
        to: String,
    },
    /// A model appeared.
    ModelAdded(pb::ModelInfo),
    /// A model is no longer listed.
    ModelRemoved {
        /// Its id.
        model: String,
    },
    /// A model's placement status changed (e.g. pending -> placed).
    ModelStatus {
        /// Its id.
        model: String,
        /// Before.
        from: String,
        /// After.
        to: String,
        /// Why it is pending, when it is.
        reason: String,
    },
    /// Layers `first..=last` of a model moved from one node (or none) to another (or none).
    LayersMoved {
        /// The model.
        model: String,
        /// First layer.
        first: u32,
        /// Last layer (inclusive).
        last: u32,
        /// Where they were.
        from: Option<String>,
        /// Where they are.
        to: Option<String>,
    },
    /// The headline metrics (first view, or changed).
    Metrics(Headline),
}

/// The metrics worth a line: how many nodes are healthy, how many layers are allocated.
/// Memory figures move with every usage sample and are left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headline {
    /// Healthy nodes.
    pub healthy_nodes: i32,
    /// Member nodes.
    pub total_nodes: i32,
    /// Allocated layers.
    pub allocated_layers: i32,
    /// Layers the nodes can hold.
    pub total_layers: i32,
    /// GPUs.
    pub total_gpus: i32,
}

/// The cluster as the stream has described it, and the last headline metrics.
#[derive(Debug, Default)]
pub struct Seen {
    view: ClusterView,
    metrics: Option<Headline>,
}

impl Seen {
    /// Takes in one update (a whole list or a delta) and says what changed since the last of
    /// its kind.
    ///
    /// # Errors
    /// A delta before the whole list it changes (the stream should be followed again).
    pub fn update(&mut self, u: pb::ClusterUpdate) -> Result<Vec<Change>, DeltaWithoutBase> {
        let kind = u.update_type.clone();
        Ok(match self.view.apply(u)? {
            Applied::First if kind == "nodes" => {
                vec![Change::Nodes(
                    self.view.node_list().into_iter().cloned().collect(),
                )]
            }
            Applied::First => {
                vec![Change::Models(
                    self.view.model_list().into_iter().cloned().collect(),
                )]
            }
            Applied::Nodes(changes) => changes.into_iter().filter_map(node_change).collect(),
            Applied::Models(changes) => changes.into_iter().flat_map(model_changes).collect(),
            Applied::Metrics(_) => self.metrics(self.view.metrics.unwrap_or_default()),
        })
    }

    fn metrics(&mut self, m: pb::ClusterMetrics) -> Vec<Change> {
        let now = Headline {
            healthy_nodes: m.healthy_nodes,
            total_nodes: m.total_nodes,
            allocated_layers: m.allocated_layers,
            total_layers: m.total_layers,
            total_gpus: m.total_gpus,
        };
        if self.metrics.replace(now) == Some(now) {
            return Vec::new();
        }
        vec![Change::Metrics(now)]
    }
}

/// What a node's change is worth a line for: joining, going, a new status.
fn node_change((before, after): (Option<pb::NodeInfo>, Option<pb::NodeInfo>)) -> Option<Change> {
    match (before, after) {
        (None, Some(n)) => Some(Change::NodeJoined {
            node: n.node_id,
            status: n.status,
        }),
        (Some(n), None) => Some(Change::NodeGone { node: n.node_id }),
        (Some(old), Some(n)) if old.status != n.status => Some(Change::NodeStatus {
            node: n.node_id,
            from: old.status,
            to: n.status,
        }),
        _ => None,
    }
}

/// A model's change: added, removed, a new placement status, layers moved.
fn model_changes((before, after): (Option<pb::ModelInfo>, Option<pb::ModelInfo>)) -> Vec<Change> {
    match (before, after) {
        (None, Some(m)) => vec![Change::ModelAdded(m)],
        (Some(m), None) => vec![Change::ModelRemoved { model: m.id }],
        (Some(old), Some(m)) => {
            let mut out = Vec::new();
            if old.placement_status != m.placement_status {
                out.push(Change::ModelStatus {
                    model: m.id.clone(),
                    from: old.placement_status.clone(),
                    to: m.placement_status.clone(),
                    reason: m.pending_reason.clone(),
                });
            }
            out.extend(moves(&old, &m));
            out
        }
        (None, None) => Vec::new(),
    }
}

/// The layers of a model that changed hands, one change per run of consecutive layers that
/// went from the same node to the same node.
fn moves(old: &pb::ModelInfo, new: &pb::ModelInfo) -> Vec<Change> {
    let layer_count = old.layer_count.max(new.layer_count).max(0) as u32;
    let (before, after) = (
        layers::ranges(&old.node_assignments),
        layers::ranges(&new.node_assignments),
    );
    let (before, after) = (
        layers::owners(&before, layer_count),
        layers::owners(&after, layer_count),
    );
    let mut out: Vec<Change> = Vec::new();
    for (layer, (from, to)) in before.iter().zip(&after).enumerate() {
        if from == to {
            continue;
        }
        let layer = layer as u32;
        let (from, to) = (from.map(String::from), to.map(String::from));
        match out.last_mut() {
            Some(Change::LayersMoved {
                last,
                from: f,
                to: t,
                ..
            }) if *last + 1 == layer && *f == from && *t == to => *last = layer,
            _ => out.push(Change::LayersMoved {
                model: new.id.clone(),
                first: layer,
                last: layer,
                from,
                to,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[(&str, &str)]) -> pb::ClusterUpdate {
        pb::ClusterUpdate {
            update_type: "nodes".into(),
            nodes: list
                .iter()
                .map(|(id, status)| pb::NodeInfo {
                    node_id: id.to_string(),
                    status: status.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn models(id: &str, status: &str, assignments: &[&str]) -> pb::ClusterUpdate {
        pb::ClusterUpdate {
            update_type: "models".into(),
            models: vec![pb::ModelInfo {
                id: id.into(),
                layer_count: 80,
                placement_status: status.into(),
                node_assignments: assignments.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The first snapshot is reported whole, the same one again is nothing, and then only
    /// what differs: a status change, a node joining, a node gone.
    #[test]
    fn nodes_report_only_what_changed() {
        let mut seen = Seen::default();
        let first = seen
            .update(nodes(&[("w1", "healthy"), ("w2", "healthy")]))
            .unwrap();
        assert!(
            matches!(&first[..], [Change::Nodes(n)] if n.len() == 2),
            "{first:?}"
        );
        assert_eq!(
            seen.update(nodes(&[("w1", "healthy"), ("w2", "healthy")]))
                .unwrap(),
            [],
            "an unchanged snapshot says nothing"
        );
        assert_eq!(
            seen.update(nodes(&[("w1", "unhealthy"), ("w3", "healthy")]))
                .unwrap(),
            [
                Change::NodeStatus {
                    node: "w1".into(),
                    from: "healthy".into(),
                    to: "unhealthy".into()
                },
                Change::NodeJoined {
                    node: "w3".into(),
                    status: "healthy".into()
                },
                Change::NodeGone { node: "w2".into() },
            ]
        );
    }

    /// A delta reports what it changes, as a whole list would, and nothing for a node sent
    /// again unchanged (its last_seen refreshed).
    #[test]
    fn deltas_report_what_they_change() {
        let mut seen = Seen::default();
        seen.update(nodes(&[("w1", "healthy"), ("w2", "healthy")]))
            .unwrap();
        let delta = |list: &[(&str, &str)], removed: &[&str]| pb::ClusterUpdate {
            delta: true,
            removed_node_ids: removed.iter().map(|s| s.to_string()).collect(),
            ..nodes(list)
        };
        assert_eq!(seen.update(delta(&[("w2", "healthy")], &[])).unwrap(), []);
        assert_eq!(
            seen.update(delta(&[("w2", "offline")], &["w1"])).unwrap(),
            [
                Change::NodeStatus {
                    node: "w2".into(),
                    from: "healthy".into(),
                    to: "offline".into()
                },
                Change::NodeGone { node: "w1".into() },
            ]
        );
        let mut fresh = Seen::default();
        assert!(fresh.update(delta(&[("w2", "offline")], &[])).is_err());
    }

    /// Layers that change hands are reported as ranges, one per (from, to) run; a model
    /// placed later reports its status and layers coming from nowhere; a removed one, once.
    #[test]
    fn layer_moves_are_ranges_in_layer_order() {
        let mut seen = Seen::default();
        seen.update(models("m", "placed", &["w1:0-39", "w2:40-79"]))
            .unwrap();
        assert_eq!(
            seen.update(models("m", "placed", &["w3:0-20", "w1:21-39", "w2:40-79"]))
                .unwrap(),
            [Change::LayersMoved {
                model: "m".into(),
                first: 0,
                last: 20,
                from: Some("w1".into()),
                to: Some("w3".into())
            }]
        );
        let changes = seen.update(models("m", "pending", &[])).unwrap();
        assert_eq!(
            changes.len(),
            4,
            "status + three ranges unplaced: {changes:?}"
        );
        assert!(matches!(&changes[0], Change::ModelStatus { to, .. } if to == "pending"));
        assert!(matches!(
            &changes[3],
            Change::LayersMoved {
                first: 40,
                last: 79,
                to: None,
                ..
            }
        ));
        let changes = seen
            .update(pb::ClusterUpdate {
                update_type: "models".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(changes, [Change::ModelRemoved { model: "m".into() }]);
        let changes = seen.update(models("m", "placed", &["w1:0-79"])).unwrap();
        assert!(matches!(&changes[..], [Change::ModelAdded(m)] if m.id == "m"));
    }

    /// Metrics are reported when a headline figure changes, not when memory samples move.
    #[test]
    fn metrics_report_headline_changes() {
        let mut seen = Seen::default();
        let metrics = |healthy, free| pb::ClusterUpdate {
            update_type: "metrics".into(),
            metrics: Some(pb::ClusterMetrics {
                healthy_nodes: healthy,
                total_nodes: 3,
                available_memory_mb: free,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(seen.update(metrics(3, 100)).unwrap().len(), 1, "first view");
        assert_eq!(
            seen.update(metrics(3, 90)).unwrap(),
            [],
            "memory moved only"
        );
        assert!(matches!(
            &seen.update(metrics(2, 90)).unwrap()[..],
            [Change::Metrics(Headline {
                healthy_nodes: 2,
                ..
            })]
        ));
    }
}
