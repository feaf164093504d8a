//! The leader's background merge: a model left with a worker holding two or more of its
//! ranges (repair split an orphan, or a neighbour had no room) is moved towards a fewest-hops
//! placement ([`super::target::plan`]), a few layers per tick.
//!
//! - **Bounded.** At most `budget` layer moves per tick over all models
//!   ([`MOVES_PER_TICK`] on the leader). The one exception: when every worker the model must
//!   move to is full, the layers must swap, and a swap among `k` full workers moves `k` layers
//!   in one step, even past the budget (`k` is at most the model's workers).
//! - **Never drops coverage.** Each step is a complete placement of the model (every layer on
//!   exactly one node), committed as one `SetPlacements` change: a layer is given to its new
//!   worker in the same applied change that takes it from the old one, and no worker is asked
//!   to hold more than its room at any step.
//! - **Quiet when there is nothing to do.** A tick proposes nothing unless some model on
//!   healthy workers is interleaved; a merge ends at a placement with one range per worker.
//! - **Soft state.** The goal of a merge under way is the leader's memory (a plan recomputed
//!   from a half-moved placement could differ, and a merge could chase it); a goal that no
//!   longer fits (a worker failed, another model took the room) is dropped and planned again,
//!   and a new leader starts with none.

use std::collections::{BTreeMap, HashMap};

use super::{interleaved, rooms, target};
use crate::state::{ClusterState, NodeStatus, Placement, PlacementChange, Range};

/// Layer moves the leader's merge makes per liveness tick (a quarter of the heartbeat
/// interval; 250 ms by default, so up to 128 layer moves a second): a layer move is a worker
/// loading a layer's weights, so a merge is spread over ticks instead of loading a whole model
/// onto new workers at once.
pub const MOVES_PER_TICK: usize = 32;

/// The merges under way: each interleaved model's goal, by model id.
#[derive(Debug, Default)]
pub struct Merger {
    goals: BTreeMap<String, Vec<Range>>,
}

impl Merger {
    /// How many merges are under way.
    pub fn in_progress(&self) -> usize {
        self.goals.len()
    }

    /// One tick: for each interleaved model on healthy workers, in id order, the next step
    /// towards its goal, with at most `budget` layer moves in all (see the module's notes on
    /// swaps). Empty when nothing is interleaved.
    pub fn tick(&mut self, state: &ClusterState, budget: usize) -> Vec<PlacementChange> {
        self.goals.retain(|id, _| state.models.contains_key(id));
        let mut scratch: Option<ClusterState> = None;
        let mut changes = Vec::new();
        let mut left = budget;
        for (id, model) in &state.models {
            if left == 0 {
                break;
            }
            let Placement::Placed(ranges) = &model.placement else {
                self.goals.remove(id);
                continue;
            };
            let on_healthy = ranges.iter().all(|r| {
                state
                    .nodes
                    .get(&r.node_id)
                    .is_some_and(|n| n.status == NodeStatus::Healthy)
            });
            if !on_healthy || !interleaved(ranges) {
                // Repair's business, or nothing to merge.
                self.goals.remove(id);
                continue;
            }
            let scratch = scratch.get_or_insert_with(|| state.scratch_copy());
            let spec = model.spec.clone();
            let rooms: HashMap<String, i64> = rooms(scratch, &spec.id, spec.layer_mb())
                .into_iter()
                .map(|r| (r.node_id, r.layers))
                .collect();
            let fits = |goal: &[Range]| {
                crate::state::invariants::layers_by_node(goal)
                    .into_iter()
                    .all(|(n, layers)| rooms.get(n).is_some_and(|&room| layers <= room))
            };
            let goal = match self.goals.get(id) {
                Some(goal) if fits(goal) => goal.clone(),
                _ => match target::plan(scratch, &spec, ranges) {
                    Some(goal) => goal,
                    None => {
                        self.goals.remove(id);
                        continue;
                    }
                },
            };
            let (next, moves) = step(ranges, &goal, &rooms, left);
            if moves == 0 {
                self.goals.remove(id);
                continue;
            }
            if !super::commit(scratch, &mut changes, id, Placement::Placed(next.clone())) {
                self.goals.remove(id);
                continue;
            }
            left = left.saturating_sub(moves);
            if super::merge(next) == super::merge(goal.clone()) {
                self.goals.remove(id);
            } else {
                self.goals.insert(id.clone(), goal);
            }
        }
        changes
    }
}

/// Which node holds each layer of `ranges`.
fn owners(ranges: &[Range]) -> Vec<String> {
    let mut out = Vec::new();
    for r in ranges {
        for _ in r.first..=r.last {
            out.push(r.node_id.clone());
        }
    }
    out
}

/// Ranges of a per-layer owner list.
fn to_ranges(owners: &[String]) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for (layer, node) in owners.iter().enumerate() {
        let layer = layer as i32;
        match out.last_mut() {
            Some(r) if &r.node_id == node => r.last = layer,
            _ => out.push(Range {
                node_id: node.clone(),
                first: layer,
                last: layer,
            }),
        }
    }
    out
}

/// The placement one step from `from` towards `goal`, and its layer moves: layers move, in
/// layer order, to goal workers with room to spare (`rooms`: the layers of this model each
/// worker may hold), at most `budget` of them; when every goal worker that still needs layers
/// is full, the layers of one cycle of full workers swap together.
pub fn step(
    from: &[Range],
    goal: &[Range],
    rooms: &HashMap<String, i64>,
    budget: usize,
) -> (Vec<Range>, usize) {
    let mut now = owners(from);
    let want = owners(goal);
    if now.len() != want.len() || budget == 0 {
        return (from.to_vec(), 0);
    }
    let mut usage: HashMap<String, i64> = HashMap::new();
    for n in &now {
        *usage.entry(n.clone()).or_default() += 1;
    }
    let room = |n: &str| rooms.get(n).copied().unwrap_or(0);
    let mut moves = 0;
    loop {
        let mut progressed = false;
        for layer in 0..now.len() {
            if moves == budget {
                break;
            }
            let (old, new) = (&now[layer], &want[layer]);
            if old == new || usage.get(new).copied().unwrap_or(0) >= room(new) {
                continue;
            }
            *usage.entry(new.clone()).or_default() += 1;
            *usage.entry(old.clone()).or_default() -= 1;
            now[layer] = new.clone();
            moves += 1;
            progressed = true;
        }
        if !progressed || moves == budget {
            break;
        }
    }
    if moves == 0 {
        moves = swap_cycle(&mut now, &want);
    }
    (to_ranges(&now), moves)
}

/// Every goal worker that needs layers is full, so each holds a layer that must go elsewhere:
/// follow those from worker to worker until one repeats, and move the layers of that cycle
/// together (each of its workers gives one and takes one). Returns the moves made.
fn swap_cycle(now: &mut [String], want: &[String]) -> usize {
    let Some(start) = (0..now.len()).find(|&l| now[l] != want[l]) else {
        return 0;
    };
    let mut at = want[start].clone();
    let mut path: Vec<usize> = vec![start];
    let mut seen: HashMap<String, usize> = HashMap::new();
    loop {
        if let Some(&i) = seen.get(&at) {
            let cycle: Vec<usize> = path[i..].to_vec();
            for &l in &cycle {
                now[l] = want[l].clone();
            }
            return cycle.len();
        }
        seen.insert(at.clone(), path.len());
        let Some(next) = (0..now.len()).find(|&l| now[l] == at && want[l] != at) else {
            return 0;
        };
        path.push(next);
        at = want[next].clone();
    }
}
