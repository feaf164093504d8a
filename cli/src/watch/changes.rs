//! What changed between two snapshots of the cluster. `StreamUpdates` sends the whole state
//! each interval (and when an entry is applied); `dllm watch` keeps the last one it saw and
//! reports only the differences: node status changes, nodes joining and leaving, models added
//! and removed or changing placement status, layers moving between workers, and the headline
//! metrics. The first snapshot of each kind is reported whole, so a reader knows where
//! things started; after a reconnect the new snapshot is compared with the old one, so what
//! changed while the stream was down is reported too.

use std::collections::BTreeMap;

use dllm_proto::pb;

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

/// The last snapshot seen of each kind.
#[derive(Debug, Default)]
pub struct Seen {
    nodes: Option<BTreeMap<String, String>>,
    models: Option<BTreeMap<String, pb::ModelInfo>>,
    metrics: Option<Headline>,
}

impl Seen {
    /// Takes in one update and says what changed since the last of its kind.
    pub fn update(&mut self, u: &pb::ClusterUpdate) -> Vec<Change> {
        match u.update_type.as_str() {
            "nodes" => self.nodes(&u.nodes),
            "models" => self.models(&u.models),
            _ => self.metrics(u.metrics.unwrap_or_default()),
        }
    }

    fn nodes(&mut self, nodes: &[pb::NodeInfo]) -> Vec<Change> {
        let now: BTreeMap<String, String> = nodes
            .iter()
            .map(|n| (n.node_id.clone(), n.status.clone()))
            .collect();
        let Some(before) = self.nodes.replace(now.clone()) else {
            return vec![Change::Nodes(nodes.to_vec())];
        };
        let mut out = Vec::new();
        for (node, status) in &now {
            match before.get(node) {
                None => out.push(Change::NodeJoined {
                    node: node.clone(),
                    status: status.clone(),
                }),
                Some(old) if old != status => out.push(Change::NodeStatus {
                    node: node.clone(),
                    from: old.clone(),
                    to: status.clone(),
                }),
                Some(_) => {}
            }
        }
        out.extend(
            before
                .keys()
                .filter(|n| !now.contains_key(*n))
                .map(|node| Change::NodeGone { node: node.clone() }),
        );
        out
    }

    fn models(&mut self, models: &[pb::ModelInfo]) -> Vec<Change> {
        let now: BTreeMap<String, pb::ModelInfo> =
            models.iter().map(|m| (m.id.clone(), m.clone())).collect();
        let Some(before) = self.models.replace(now.clone()) else {
            return vec![Change::Models(models.to_vec())];
        };
        let mut out = Vec::new();
        for (id, m) in &now {
            let Some(old) = before.get(id) else {
                out.push(Change::ModelAdded(m.clone()));
                continue;
            };
            if old.placement_status != m.placement_status {
                out.push(Change::ModelStatus {
                    model: id.clone(),
                    from: old.placement_status.clone(),
                    to: m.placement_status.clone(),
                    reason: m.pending_reason.clone(),
                });
            }
            out.extend(moves(old, m));
        }
        out.extend(
            before
                .keys()
                .filter(|m| !now.contains_key(*m))
                .map(|model| Change::ModelRemoved {
                    model: model.clone(),
                }),
        );
        out
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
        let first = seen.update(&nodes(&[("w1", "healthy"), ("w2", "healthy")]));
        assert!(
            matches!(&first[..], [Change::Nodes(n)] if n.len() == 2),
            "{first:?}"
        );
        assert_eq!(
            seen.update(&nodes(&[("w1", "healthy"), ("w2", "healthy")])),
            [],
            "an unchanged snapshot says nothing"
        );
        assert_eq!(
            seen.update(&nodes(&[("w1", "unhealthy"), ("w3", "healthy")])),
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

    /// Layers that change hands are reported as ranges, one per (from, to) run; a model
    /// placed later reports its status and layers coming from nowhere; a removed one, once.
    #[test]
    fn layer_moves_are_ranges_in_layer_order() {
        let mut seen = Seen::default();
        seen.update(&models("m", "placed", &["w1:0-39", "w2:40-79"]));
        assert_eq!(
            seen.update(&models("m", "placed", &["w3:0-20", "w1:21-39", "w2:40-79"])),
            [Change::LayersMoved {
                model: "m".into(),
                first: 0,
                last: 20,
                from: Some("w1".into()),
                to: Some("w3".into())
            }]
        );
        let changes = seen.update(&models("m", "pending", &[]));
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
        let changes = seen.update(&pb::ClusterUpdate {
            update_type: "models".into(),
            ..Default::default()
        });
        assert_eq!(changes, [Change::ModelRemoved { model: "m".into() }]);
        let changes = seen.update(&models("m", "placed", &["w1:0-79"]));
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
        assert_eq!(seen.update(&metrics(3, 100)).len(), 1, "first view");
        assert_eq!(seen.update(&metrics(3, 90)), [], "memory moved only");
        assert!(matches!(
            &seen.update(&metrics(2, 90))[..],
            [Change::Metrics(Headline {
                healthy_nodes: 2,
                ..
            })]
        ));
    }
}
