//! Where layers go: decided by the leader, committed as explicit assignments, and checked
//! again by the state machine (`state::invariants`).
//!
//! Policy:
//! - **Memory-weighted contiguous ranges.** Healthy nodes, ordered by node id, each take a
//!   contiguous range in proportion to their free layer memory (GPU memory, or RAM without
//!   GPUs), with largest-remainder rounding, capped by free `max_layers` and free memory
//!   (per-layer size = size_bytes / layer_count); what a capped node cannot take is spread
//!   over the others by the same rule.
//! - **All or nothing.** A model that does not fit is `pending` with the reason; it is never
//!   half placed. Pending models are placed as soon as capacity appears.
//! - **Minimal repair.** When a node holding layers goes offline, leaves or drains, only its
//!   ranges move (split over the healthy nodes by the same rule); layers on healthy nodes stay.
//!   If the orphaned layers cannot all be re-homed the model becomes pending. Unhealthy nodes
//!   keep their layers (they may be back in a moment) but take no new ones.
//! - **Rebalance on request only**: re-splits a model from scratch, as if newly added.

use crate::state::{
    invariants::usage_by_node, ClusterState, ModelSpec, NodeStatus, Placement, PlacementChange,
    Range,
};

/// Free capacity of the healthy nodes, updated as a plan assigns layers.
struct Capacity {
    /// (node id, free layers, free MiB), ordered by node id.
    nodes: Vec<(String, i64, i64)>,
}

impl Capacity {
    /// Free capacity given `state`, ignoring the ranges of `except`.
    fn of(state: &ClusterState, except: Option<&str>) -> Self {
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
    fn caps(&self, layer_mb: i64) -> Vec<i64> {
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

    fn total(&self, layer_mb: i64) -> i64 {
        self.caps(layer_mb).iter().sum()
    }

    /// Splits layers `first..=last` over the nodes in order (see [`split`]) and takes the
    /// capacity; `None` (and nothing taken) when they do not fit.
    fn assign(&mut self, first: i32, last: i32, layer_mb: i64) -> Option<Vec<Range>> {
        let count = i64::from(last - first + 1);
        let caps = self.caps(layer_mb);
        let weights: Vec<i64> = self.nodes.iter().map(|(_, _, mb)| *mb).collect();
        let shares = split(count, &weights, &caps)?;
        let mut ranges = Vec::new();
        let mut next = first;
        for (i, share) in shares.into_iter().enumerate() {
            if share == 0 {
                continue;
            }
            let node = &mut self.nodes[i];
            node.1 -= share;
            node.2 -= share * layer_mb;
            ranges.push(Range {
                node_id: node.0.clone(),
                first: next,
                last: next + share as i32 - 1,
            });
            next += share as i32;
        }
        Some(ranges)
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

/// Merges adjacent ranges on the same node.
fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_by_key(|r| r.first);
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if prev.node_id == r.node_id && prev.last + 1 == r.first => {
                prev.last = r.last
            }
            _ => out.push(r),
        }
    }
    out
}

fn pending_reason(spec: &ModelSpec, free: i64) -> String {
    format!(
        "needs {} layers of {} MiB each; the healthy workers can take {free} more",
        spec.layer_count,
        spec.layer_mb()
    )
}

/// The placement of a new model (or a rebalanced one, whose own ranges are ignored).
pub fn fresh(state: &ClusterState, spec: &ModelSpec) -> Placement {
    let mut capacity = Capacity::of(state, Some(&spec.id));
    place_fresh(&mut capacity, spec)
}

fn place_fresh(capacity: &mut Capacity, spec: &ModelSpec) -> Placement {
    let layer_mb = spec.layer_mb();
    let free = capacity.total(layer_mb);
    match capacity.assign(0, spec.layer_count - 1, layer_mb) {
        Some(ranges) => Placement::Placed(ranges),
        None => Placement::Pending(pending_reason(spec, free)),
    }
}

/// The changes that bring every model back to a valid placement: orphaned ranges (on nodes
/// that are offline, left, draining or gone, or on nodes that re-registered with less than
/// they hold) re-homed with minimal moves, and pending models placed where they now fit.
///
/// Models are planned in id order on a scratch copy of the state to which each change is
/// applied at once, by the same state machine, so the batch applies in sequence exactly as
/// planned and never overcommits a node.
pub fn repair(state: &ClusterState) -> Vec<PlacementChange> {
    let needs_work = state.models.values().any(|m| match &m.placement {
        Placement::Pending(_) => true,
        Placement::Placed(ranges) => ranges.iter().any(|r| {
            !state
                .nodes
                .get(&r.node_id)
                .is_some_and(|n| n.status.may_hold_layers())
        }),
    }) || !overcommitted(state).is_empty();
    if !needs_work {
        return Vec::new();
    }
    let mut scratch = state.clone();
    let mut changes: Vec<PlacementChange> = Vec::new();
    // Each change carries the epoch the model will have when it applies, which is the
    // scratch copy's epoch now (a model may change twice in one batch).
    let commit = |scratch: &mut ClusterState,
                  changes: &mut Vec<PlacementChange>,
                  model_id: &str,
                  placement: Placement| {
        let change = PlacementChange {
            model_id: model_id.to_string(),
            epoch: scratch.models[model_id].epoch,
            placement,
        };
        scratch.apply(crate::state::Command::SetPlacements {
            changes: vec![change.clone()],
        });
        changes.push(change);
    };
    // First re-home (or give up) orphaned ranges, which may free capacity; then place
    // pending models with whatever is free.
    for model in state.models.values() {
        if let Some(placement) = repair_one(&scratch, &model.spec.id) {
            commit(&mut scratch, &mut changes, &model.spec.id, placement);
        }
    }
    for model in state.models.values() {
        if !matches!(
            scratch.models[&model.spec.id].placement,
            Placement::Pending(_)
        ) {
            continue;
        }
        if let placed @ Placement::Placed(_) = fresh(&scratch, &model.spec) {
            commit(&mut scratch, &mut changes, &model.spec.id, placed);
        }
    }
    changes
}

/// The repaired placement of one placed model, if any of its ranges must move.
fn repair_one(state: &ClusterState, model_id: &str) -> Option<Placement> {
    let model = &state.models[model_id];
    let Placement::Placed(ranges) = &model.placement else {
        return None;
    };
    let spec = &model.spec;
    let layer_mb = spec.layer_mb();
    let mut excess = overcommitted(state);
    let mut kept = Vec::new();
    let mut orphaned = Vec::new();
    for r in ranges {
        let may_hold = state
            .nodes
            .get(&r.node_id)
            .is_some_and(|n| n.status.may_hold_layers());
        let over = excess.get_mut(&r.node_id).filter(|e| e.0 > 0 || e.1 > 0);
        match (may_hold, over) {
            (true, None) => kept.push(r.clone()),
            (true, Some(e)) => {
                e.0 -= i64::from(r.len());
                e.1 -= i64::from(r.len()) * layer_mb;
                orphaned.push(r.clone());
            }
            (false, _) => orphaned.push(r.clone()),
        }
    }
    if orphaned.is_empty() {
        return None;
    }
    let mut capacity = Capacity::of(state, None);
    let mut rehomed = Vec::new();
    for r in &orphaned {
        match capacity.assign(r.first, r.last, layer_mb) {
            Some(new) => rehomed.extend(new),
            None => {
                // The orphans do not fit around the kept ranges: split the whole model
                // afresh if that fits, else it waits, with the reason.
                return Some(match fresh(state, spec) {
                    placed @ Placement::Placed(_) => placed,
                    Placement::Pending(reason) => {
                        let gone: Vec<&str> = orphaned.iter().map(|r| r.node_id.as_str()).collect();
                        Placement::Pending(format!(
                            "layers on {} must move and do not fit: {reason}",
                            gone.join(", ")
                        ))
                    }
                });
            }
        }
    }
    kept.extend(rehomed);
    Some(Placement::Placed(merge(kept)))
}

/// Layers and MiB by which each node that may hold layers exceeds its capacity.
fn overcommitted(state: &ClusterState) -> std::collections::HashMap<String, (i64, i64)> {
    usage_by_node(state, None)
        .into_iter()
        .filter_map(|(id, (layers, mb))| {
            let node = state.nodes.get(&id)?;
            let over_layers = layers - i64::from(node.resources.max_layers);
            let over_mb = mb - node.resources.layer_memory_mb();
            (node.status.may_hold_layers() && (over_layers > 0 || over_mb > 0))
                .then_some((id, (over_layers, over_mb)))
        })
        .collect()
}

/// A fresh split of one model (or of every placed model, one after another, when `model_id`
/// is `None`), for an explicit `rebalance`.
pub fn rebalance(state: &ClusterState, model_id: Option<&str>) -> Vec<PlacementChange> {
    let mut scratch = state.clone();
    let mut changes = Vec::new();
    let ids: Vec<String> = match model_id {
        Some(id) => vec![id.to_string()],
        None => state.models.keys().cloned().collect(),
    };
    for id in ids {
        let Some(model) = scratch.models.get(&id).cloned() else {
            continue;
        };
        let placement = fresh(&scratch, &model.spec);
        if placement == model.placement {
            continue;
        }
        if let Some(m) = scratch.models.get_mut(&id) {
            m.placement = placement.clone();
        }
        changes.push(PlacementChange {
            model_id: id,
            epoch: model.epoch,
            placement,
        });
    }
    changes
}

#[cfg(test)]
mod tests;
