//! Where layers go: decided by the leader, committed as explicit assignments, and checked
//! again by the state machine (`state::invariants`).
//!
//! A model runs as a pipeline: each change of worker along its layer order is a network hop
//! per token. Policy:
//! - **Fewest hops.** A model goes to the fewest healthy workers whose room holds it (room:
//!   free `max_layers` and free layer memory, GPU memory or RAM without GPUs, beside every
//!   other model; per-layer size = size_bytes / layer_count), the largest rooms first, one
//!   contiguous range each, sized in proportion to free memory and capped by room
//!   ([`target`]). `hops = ranges - 1` is then the fewest the memory split allows.
//! - **All or nothing.** A model that does not fit is `pending` with the reason; it is never
//!   half placed. Pending models are placed as soon as capacity appears.
//! - **Minimal repair.** When a node holding layers goes offline, leaves or drains, only its
//!   ranges move; layers on healthy nodes stay. An orphaned range goes whole to the worker
//!   before or after it in the pipeline when that one has room (one hop fewer), else whole to
//!   one worker (a worker new to the model first, so no worker holds two ranges), and is split
//!   only when no worker can take it whole (the neighbours take what they can from its ends,
//!   the largest rooms the rest). If the orphaned layers cannot all be re-homed the model is
//!   re-split afresh, or becomes pending. Unhealthy nodes keep their layers (they may be back
//!   in a moment) but take no new ones.
//! - **Background merge** ([`merge`]). A model left with a worker holding two or more of its
//!   ranges is moved, by the leader, towards a fewest-hops placement, at most
//!   [`merge::MOVES_PER_TICK`] layer moves per liveness tick, each step a complete placement.
//! - **Rebalance on request** settles in one call: it re-plans every model that is not at the
//!   fewest hops (and keeps those that are, so a second call moves nothing).

mod capacity;
pub mod merge;
pub mod target;

pub use capacity::{rooms, split, Room};
pub use target::{fewest_workers, fewest_workers_for, is_fewest_hops};

use std::collections::{BTreeSet, HashMap};

use capacity::Capacity;

use crate::state::{
    invariants::usage_by_node, ClusterState, Command, ModelSpec, Outcome, Placement,
    PlacementChange, Range,
};

/// Passes over the models a rebalance makes at most. Each pass re-plans the models that a
/// pass before it changed the room of; a change only ever lowers (models with layers off
/// their room, ranges of the others), so passes end long before this (two or three in the
/// property tests); the cap only bounds the work of a bug.
const MAX_REBALANCE_PASSES: usize = 64;

/// Merges adjacent ranges on the same node, in layer order.
pub fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
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

/// Network hops of a pipeline over `ranges`: changes of worker along the layer order.
pub fn hops(ranges: &[Range]) -> usize {
    merge(ranges.to_vec()).len().saturating_sub(1)
}

/// Whether some worker holds two or more separate ranges of the model.
pub fn interleaved(ranges: &[Range]) -> bool {
    let merged = merge(ranges.to_vec());
    let nodes: BTreeSet<&str> = merged.iter().map(|r| r.node_id.as_str()).collect();
    nodes.len() < merged.len()
}

fn pending_reason(spec: &ModelSpec, free: i64) -> String {
    format!(
        "needs {} layers of {} MiB each; the healthy workers can take {free} more",
        spec.layer_count,
        spec.layer_mb()
    )
}

/// The placement of a new model (or of a pending one), at the fewest hops.
pub fn fresh(state: &ClusterState, spec: &ModelSpec) -> Placement {
    match target::plan(state, spec, &[]) {
        Some(ranges) => Placement::Placed(ranges),
        None => {
            let free = Capacity::of(state, Some(&spec.id)).total(spec.layer_mb());
            Placement::Pending(pending_reason(spec, free))
        }
    }
}

/// Applies `placement` to `scratch` as the change the leader will commit (with the epoch the
/// model will have then, as a model may change twice in one batch) and records it; nothing
/// when the state machine would refuse it.
fn commit(
    scratch: &mut ClusterState,
    changes: &mut Vec<PlacementChange>,
    model_id: &str,
    placement: Placement,
) -> bool {
    let change = PlacementChange {
        model_id: model_id.to_string(),
        epoch: scratch.models[model_id].epoch,
        placement,
    };
    let out = scratch.apply(Command::SetPlacements {
        changes: vec![change.clone()],
    });
    let applied = matches!(out, Outcome::PlacementsChanged { applied: 1, .. });
    if applied {
        changes.push(change);
    }
    applied
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
    let mut scratch = state.scratch_copy();
    let mut changes: Vec<PlacementChange> = Vec::new();
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
    let mut placed = kept;
    for r in &orphaned {
        match rehome(&mut capacity, &placed, r, layer_mb) {
            Some(pieces) => placed.extend(pieces),
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
    Some(Placement::Placed(merge(placed)))
}

/// Where the orphaned range `r` goes, given the ranges `placed` so far: whole to a pipeline
/// neighbour with room, else whole to one worker (new to the model first, then the largest
/// room), else in pieces (the neighbours take what they can from its ends, the largest rooms
/// the rest, so as few pieces as the rooms allow). `None` (nothing taken) when it does not
/// fit.
fn rehome(
    capacity: &mut Capacity,
    placed: &[Range],
    r: &Range,
    layer_mb: i64,
) -> Option<Vec<Range>> {
    let len = i64::from(r.len());
    let owner = |layer: i32| {
        placed
            .iter()
            .find(|p| p.first <= layer && layer <= p.last)
            .map(|p| p.node_id.clone())
    };
    let left = owner(r.first - 1);
    let right = owner(r.last + 1);
    for n in [&left, &right].into_iter().flatten() {
        if capacity.cap_of(n, layer_mb) >= len {
            return Some(vec![capacity.take(n, r.first, r.last, layer_mb)]);
        }
    }
    let holders: BTreeSet<&str> = placed.iter().map(|p| p.node_id.as_str()).collect();
    let caps = capacity.caps(layer_mb);
    let whole = capacity
        .nodes
        .iter()
        .zip(&caps)
        .filter(|(_, &cap)| cap >= len)
        .max_by(|(a, ca), (b, cb)| {
            let new = |id: &String| !holders.contains(id.as_str());
            new(&a.0)
                .cmp(&new(&b.0))
                .then(ca.cmp(cb))
                .then(b.0.cmp(&a.0))
        })
        .map(|(n, _)| n.0.clone());
    if let Some(n) = whole {
        return Some(vec![capacity.take(&n, r.first, r.last, layer_mb)]);
    }
    if capacity.total(layer_mb) < len {
        return None;
    }
    let (mut first, mut last) = (r.first, r.last);
    let mut pieces = Vec::new();
    if let Some(n) = &left {
        let c = capacity.cap_of(n, layer_mb).min(len) as i32;
        if c > 0 {
            pieces.push(capacity.take(n, first, first + c - 1, layer_mb));
            first += c;
        }
    }
    if let Some(n) = &right {
        let c = capacity
            .cap_of(n, layer_mb)
            .min(i64::from(last - first + 1)) as i32;
        if c > 0 {
            pieces.push(capacity.take(n, last - c + 1, last, layer_mb));
            last -= c;
        }
    }
    while first <= last {
        let caps = capacity.caps(layer_mb);
        let (i, cap) = caps
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
            .map(|(i, c)| (i, *c))?;
        if cap <= 0 {
            return None;
        }
        let c = cap.min(i64::from(last - first + 1)) as i32;
        let n = capacity.nodes[i].0.clone();
        pieces.push(capacity.take(&n, first, first + c - 1, layer_mb));
        first += c;
    }
    Some(pieces)
}

/// Layers and MiB by which each node that may hold layers exceeds its capacity.
fn overcommitted(state: &ClusterState) -> HashMap<String, (i64, i64)> {
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

/// Whether every range of `ranges` is on a healthy node with room for it beside the other
/// models (a placement a fewest-hops plan can be measured against).
fn within_room(state: &ClusterState, spec: &ModelSpec, ranges: &[Range]) -> bool {
    let rooms = rooms(state, &spec.id, spec.layer_mb());
    crate::state::invariants::layers_by_node(ranges)
        .into_iter()
        .all(|(node, layers)| {
            rooms
                .iter()
                .any(|room| room.node_id == node && layers <= room.layers)
        })
}

/// An explicit `rebalance` of one model (or of every model when `model_id` is `None`): each
/// model not at the fewest hops the memory split allows is re-planned ([`target::plan`],
/// moving as little as it finds), and one already there stays as it is. Moving one model
/// changes the room of the others, so the models are planned again, pass after pass, until a
/// pass changes nothing: the result is settled, and a second call right after proposes
/// nothing. A placed model never becomes pending here.
pub fn rebalance(state: &ClusterState, model_id: Option<&str>) -> Vec<PlacementChange> {
    let mut scratch = state.scratch_copy();
    let mut changes = Vec::new();
    let ids: Vec<String> = match model_id {
        Some(id) => vec![id.to_string()],
        None => state.models.keys().cloned().collect(),
    };
    for _ in 0..MAX_REBALANCE_PASSES {
        let mut changed = false;
        for id in &ids {
            let Some(model) = scratch.models.get(id) else {
                continue;
            };
            let spec = model.spec.clone();
            let better = match &model.placement {
                Placement::Pending(_) => target::plan(&scratch, &spec, &[]),
                Placement::Placed(ranges) if is_fewest_hops(&scratch, &spec, ranges) => None,
                Placement::Placed(ranges) => {
                    target::plan(&scratch, &spec, ranges).filter(|target| {
                        // Strictly better: fewer ranges, or off nodes without room for it.
                        !within_room(&scratch, &spec, ranges)
                            || merge(target.clone()).len() < merge(ranges.clone()).len()
                    })
                }
            };
            if let Some(target) = better {
                changed |= commit(&mut scratch, &mut changes, id, Placement::Placed(target));
            }
        }
        if !changed {
            break;
        }
    }
    changes
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
