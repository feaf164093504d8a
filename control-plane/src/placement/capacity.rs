//! What the healthy nodes can still take, for one model or as a plan assigns layers, and
//! the memory-weighted split of a layer count over nodes.

use crate::state::{invariants::usage_by_node, ClusterState, NodeStatus, Range};

/// One healthy node's room for one model: how many of its layers fit beside every other
/// model, and its free layer memory (the weight of the memory split).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// The node.
    pub node_id: String,
    /// Layers of the model it could hold: free `max_layers` and free memory, whichever is
    /// less.
    pub layers: i64,
    /// Free layer memory, MiB.
    pub free_mb: i64,
}

/// The room every healthy node has for model `model_id` whose layers are `layer_mb` MiB
/// each, ignoring that model's own ranges (so it does not depend on where the model is now),
/// by node id.
pub fn rooms(state: &ClusterState, model_id: &str, layer_mb: i64) -> Vec<Room> {
    let capacity = Capacity::of(state, Some(model_id));
    let caps = capacity.caps(layer_mb);
    capacity
        .nodes
        .into_iter()
        .zip(caps)
        .map(|((node_id, _, free_mb), layers)| Room {
            node_id,
            layers,
            free_mb,
        })
        .collect()
}

/// Free capacity of the healthy nodes, updated as a plan assigns layers.
pub struct Capacity {
    /// (node id, free layers, free MiB), ordered by node id.
    pub nodes: Vec<(String, i64, i64)>,
}

impl Capacity {
    /// Free capacity given `state`, ignoring the ranges of `except`.
    pub fn of(state: &ClusterState, except: Option<&str>) -> Self {
        let used = usage_by_node(state, except);
        let nodes = state
            .nodes_by_id()
            .into_iter()
            .filter(|n| n.status == NodeStatus::Healthy)
            .map(|n| {
                let (layers, mb) = used.get(&n.node_id).copied().unwrap_or_default();
                (
                    n.node_id.clone(),
                    (i64::from(n.resources.max_layers) - layers).max(0),
                    (n.resources.layer_memory_mb() - mb).max(0),
                )
            })
            .collect();
        Self { nodes }
    }

    /// How many layers of `layer_mb` MiB each node could take.
    pub fn caps(&self, layer_mb: i64) -> Vec<i64> {
        self.nodes
            .iter()
            .map(|(_, layers, mb)| {
                if layer_mb == 0 {
                    *layers
                } else {
                    (*layers).min(mb / layer_mb)
                }
            })
            .collect()
    }

    /// How many layers of `layer_mb` MiB node `node_id` could take (0 for a node that is
    /// not healthy).
    pub fn cap_of(&self, node_id: &str, layer_mb: i64) -> i64 {
        self.index(node_id).map_or(0, |i| self.caps(layer_mb)[i])
    }

    fn index(&self, node_id: &str) -> Option<usize> {
        self.nodes
            .binary_search_by(|(id, _, _)| id.as_str().cmp(node_id))
            .ok()
    }

    /// The total layers of `layer_mb` MiB the nodes could take.
    pub fn total(&self, layer_mb: i64) -> i64 {
        self.caps(layer_mb).iter().sum()
    }

    /// Gives layers `first..=last` to `node_id` and takes its capacity.
    pub fn take(&mut self, node_id: &str, first: i32, last: i32, layer_mb: i64) -> Range {
        if let Some(i) = self.index(node_id) {
            let count = i64::from(last - first + 1);
            self.nodes[i].1 -= count;
            self.nodes[i].2 -= count * layer_mb;
        }
        Range {
            node_id: node_id.to_string(),
            first,
            last,
        }
    }
}

/// Splits `total` items over nodes in proportion to `weights`, never giving node `i` more
/// than `caps[i]`: largest-remainder rounding, then what capped nodes cannot take is split
/// again over the rest. Ties go to the earlier node. `None` when the caps do not add up.
pub fn split(total: i64, weights: &[i64], caps: &[i64]) -> Option<Vec<i64>> {
    if caps.iter().sum::<i64>() < total {
        return None;
    }
    let mut shares = vec![0i64; caps.len()];
    let mut open: Vec<usize> = (0..caps.len()).filter(|&i| caps[i] > 0).collect();
    let mut remaining = total;
    while remaining > 0 && !open.is_empty() {
        // Nodes with no free memory weight still take layers if nothing else can.
        let w = |i: usize| -> i128 {
            if open.iter().all(|&j| weights[j] <= 0) {
                1
            } else {
                weights[i].max(0) as i128
            }
        };
        let sum: i128 = open.iter().map(|&i| w(i)).sum();
        let mut alloc: Vec<(usize, i64, i128)> = open
            .iter()
            .map(|&i| {
                let num = remaining as i128 * w(i);
                (i, (num / sum) as i64, num % sum)
            })
            .collect();
        let mut leftover = remaining - alloc.iter().map(|a| a.1).sum::<i64>();
        let mut order: Vec<usize> = (0..alloc.len()).collect();
        order.sort_by(|&a, &b| {
            alloc[b]
                .2
                .cmp(&alloc[a].2)
                .then(alloc[a].0.cmp(&alloc[b].0))
        });
        for k in order {
            if leftover == 0 {
                break;
            }
            alloc[k].1 += 1;
            leftover -= 1;
        }
        let mut saturated = Vec::new();
        for (i, give, _) in alloc {
            let room = caps[i] - shares[i];
            let give = give.min(room);
            shares[i] += give;
            remaining -= give;
            if shares[i] == caps[i] {
                saturated.push(i);
            }
        }
        open.retain(|i| !saturated.contains(i));
    }
    (remaining == 0).then_some(shares)
}
