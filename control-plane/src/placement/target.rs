//! The fewest-hops placement of one model: the fewest workers whose room (beside every other
//! model) holds it, one contiguous range each, so a pipeline-parallel forward pass crosses
//! `workers - 1` network hops, the fewest the memory split allows.

use std::collections::BTreeMap;

use super::capacity::{rooms, split, Room};
use crate::state::{ClusterState, ModelSpec, Range};

/// The fewest workers that can hold `layers` layers given `rooms`: the largest rooms first
/// (no other choice of as many workers holds more); `None` when all of them together cannot.
pub fn fewest_workers(rooms: &[Room], layers: i64) -> Option<usize> {
    if layers <= 0 {
        return Some(0);
    }
    let mut sizes: Vec<i64> = rooms.iter().map(|r| r.layers).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let mut sum = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        sum += size;
        if sum >= layers {
            return Some(i + 1);
        }
    }
    None
}

/// The fewest workers model `spec` needs in `state` (see [`fewest_workers`]).
pub fn fewest_workers_for(state: &ClusterState, spec: &ModelSpec) -> Option<usize> {
    fewest_workers(
        &rooms(state, &spec.id, spec.layer_mb()),
        i64::from(spec.layer_count),
    )
}

/// Whether `ranges` is already a fewest-hops placement of `spec` in `state`: every range on a
/// healthy node within its room, one range per node, and as many ranges as the fewest
/// workers that can hold the model.
pub fn is_fewest_hops(state: &ClusterState, spec: &ModelSpec, ranges: &[Range]) -> bool {
    let rooms = rooms(state, &spec.id, spec.layer_mb());
    let Some(fewest) = fewest_workers(&rooms, i64::from(spec.layer_count)) else {
        return false;
    };
    let ranges = super::merge(ranges.to_vec());
    if ranges.len() != fewest {
        return false;
    }
    let mut seen = std::collections::BTreeSet::new();
    ranges.iter().all(|r| {
        seen.insert(r.node_id.as_str())
            && rooms
                .iter()
                .find(|room| room.node_id == r.node_id)
                .is_some_and(|room| i64::from(r.len()) <= room.layers)
    })
}

/// A fewest-hops placement of `spec` in `state`, moving as few of the layers it holds now
/// (`current`, empty for a new model) as a simple rule finds; `None` when it does not fit.
///
/// The workers: the largest rooms first, then a worker that holds more of the model now
/// replaces a chosen one holding less where the set still holds the model. Their order along
/// the layers: by the first layer each holds now (workers new to the model last, largest
/// first). Their shares: in proportion to free layer memory, capped by room (the memory
/// split), so no chosen worker gets none (fewer workers would then do).
pub fn plan(state: &ClusterState, spec: &ModelSpec, current: &[Range]) -> Option<Vec<Range>> {
    let rooms = rooms(state, &spec.id, spec.layer_mb());
    let layers = i64::from(spec.layer_count);
    let fewest = fewest_workers(&rooms, layers)?;
    let mut held: BTreeMap<&str, (i64, i32)> = BTreeMap::new();
    for r in current {
        let h = held.entry(r.node_id.as_str()).or_insert((0, r.first));
        h.0 += i64::from(r.len());
        h.1 = h.1.min(r.first);
    }
    let held_of = |id: &str| held.get(id).map_or(0, |h| h.0);
    let mut by_room: Vec<&Room> = rooms.iter().collect();
    by_room.sort_by(|a, b| b.layers.cmp(&a.layers).then(a.node_id.cmp(&b.node_id)));
    let mut chosen: Vec<&Room> = by_room[..fewest].to_vec();
    let mut sum: i64 = chosen.iter().map(|r| r.layers).sum();
    // Keep the model where it is where that costs no extra worker.
    let mut holders: Vec<&Room> = by_room[fewest..]
        .iter()
        .copied()
        .filter(|r| held_of(&r.node_id) > 0)
        .collect();
    holders.sort_by(|a, b| {
        held_of(&b.node_id)
            .cmp(&held_of(&a.node_id))
            .then(a.node_id.cmp(&b.node_id))
    });
    for h in holders {
        let out = chosen
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                held_of(&c.node_id) < held_of(&h.node_id) && sum - c.layers + h.layers >= layers
            })
            .min_by(|(_, a), (_, b)| {
                held_of(&a.node_id)
                    .cmp(&held_of(&b.node_id))
                    .then(a.layers.cmp(&b.layers))
                    .then(b.node_id.cmp(&a.node_id))
            })
            .map(|(i, _)| i);
        if let Some(i) = out {
            sum = sum - chosen[i].layers + h.layers;
            chosen[i] = h;
        }
    }
    chosen.sort_by(|a, b| {
        let first = |r: &Room| held.get(r.node_id.as_str()).map_or(i32::MAX, |h| h.1);
        first(a)
            .cmp(&first(b))
            .then(b.layers.cmp(&a.layers))
            .then(a.node_id.cmp(&b.node_id))
    });
    let weights: Vec<i64> = chosen.iter().map(|r| r.free_mb).collect();
    let caps: Vec<i64> = chosen.iter().map(|r| r.layers).collect();
    let shares = split(layers, &weights, &caps)?;
    let mut next = 0;
    let mut ranges = Vec::with_capacity(chosen.len());
    for (room, share) in chosen.into_iter().zip(shares) {
        if share == 0 {
            continue;
        }
        let share = share as i32;
        ranges.push(Range {
            node_id: room.node_id.clone(),
            first: next,
            last: next + share - 1,
        });
        next += share;
    }
    Some(ranges)
}
