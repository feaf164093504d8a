//! Placement: the split rule, fewest-hops plans, repair with minimal moves, pending models,
//! a rebalance that settles, and the background merge, by example (properties over random
//! histories are in `proptests.rs`).

use super::*;
use crate::state::{invariants, Command, Gpu, NodeSpec, NodeStatus, Outcome, Resources};

pub(super) const GIB: i64 = 1 << 30;

pub(super) fn register(state: &mut ClusterState, id: &str, gpu_mb: i64, max_layers: i32) {
    let out = state.apply(Command::RegisterNode {
        spec: NodeSpec {
            node_id: id.into(),
            address: "h".into(),
            port: 1,
            resources: Resources {
                cpu_cores: 8,
                memory_mb: 1 << 20,
                gpus: vec![Gpu {
                    name: "G".into(),
                    memory_mb: gpu_mb,
                    uuid: format!("GPU-{id}"),
                }],
                max_layers,
            },
        },
        now_ms: 1,
    });
    assert!(matches!(out, Outcome::Registered { .. }));
}

pub(super) fn spec(id: &str, layers: i32, size_bytes: i64) -> ModelSpec {
    ModelSpec {
        id: id.into(),
        name: id.into(),
        version: "1".into(),
        layer_count: layers,
        file_path: "/m".into(),
        size_bytes,
    }
}

/// What the leader does for `model add`: plan, then commit.
pub(super) fn add(state: &mut ClusterState, s: ModelSpec) -> Outcome {
    let placement = fresh(state, &s);
    state.apply(Command::AddModel { spec: s, placement })
}

/// What the leader's repair loop does: plan, commit, and the plan always applies.
pub(super) fn repair_now(state: &mut ClusterState) {
    let changes = repair(state);
    let n = changes.len() as u32;
    if n == 0 {
        return;
    }
    match state.apply(Command::SetPlacements { changes }) {
        Outcome::PlacementsChanged { applied, skipped } => {
            assert_eq!(applied, n, "every planned change applies: {skipped:?}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

pub(super) fn ranges(state: &ClusterState, model: &str) -> Vec<String> {
    state.models[model]
        .ranges()
        .iter()
        .map(|r| format!("{}:{}-{}", r.node_id, r.first, r.last))
        .collect()
}

fn owner(state: &ClusterState, model: &str, layer: i32) -> String {
    state.models[model]
        .ranges()
        .iter()
        .find(|r| r.first <= layer && layer <= r.last)
        .map(|r| r.node_id.clone())
        .unwrap_or_default()
}

pub(super) fn set_status(state: &mut ClusterState, id: &str, to: NodeStatus) {
    let node = &state.nodes[id];
    state.apply(Command::SetNodeStatuses {
        changes: vec![crate::state::StatusChange {
            node_id: id.into(),
            generation: node.generation,
            from: node.status,
            to,
            last_seen_ms: None,
        }],
    });
}

#[test]
fn split_is_proportional_with_largest_remainder_and_caps() {
    assert_eq!(
        split(80, &[80, 40, 40], &[100, 100, 100]),
        Some(vec![40, 20, 20])
    );
    assert_eq!(
        split(10, &[1, 1, 1], &[10, 10, 10]),
        Some(vec![4, 3, 3]),
        "ties go first"
    );
    assert_eq!(
        split(10, &[100, 1, 1], &[2, 10, 10]),
        Some(vec![2, 4, 4]),
        "capped excess spreads"
    );
    assert_eq!(split(10, &[1, 1], &[3, 3]), None, "does not fit");
    assert_eq!(
        split(3, &[0, 0], &[2, 2]),
        Some(vec![2, 1]),
        "zero weights still take layers"
    );
}

/// Places `ranges` (node, first, last) as the model's placement, as an old plan may have.
fn add_placed(state: &mut ClusterState, s: ModelSpec, ranges: &[(&str, i32, i32)]) {
    let placement = Placement::Placed(
        ranges
            .iter()
            .map(|(n, f, l)| Range {
                node_id: n.to_string(),
                first: *f,
                last: *l,
            })
            .collect(),
    );
    let id = s.id.clone();
    state.apply(Command::AddModel { spec: s, placement });
    assert!(
        matches!(state.models[&id].placement, Placement::Placed(_)),
        "{:?}",
        state.models[&id].placement
    );
}

/// Layers whose node differs between two placements of one model.
pub(super) fn moved(before: &[Range], after: &[Range]) -> usize {
    let own = |rs: &[Range], l: i32| {
        rs.iter()
            .find(|r| r.first <= l && l <= r.last)
            .map(|r| r.node_id.clone())
    };
    let layers = before.iter().map(|r| r.last + 1).max().unwrap_or(0);
    (0..layers)
        .filter(|&l| own(before, l) != own(after, l))
        .count()
}

/// Three workers with 80, 40 and 24 GiB; a 100-layer model of 1 GiB per layer goes to the
/// fewest workers that hold it (the two largest), one range each, split by memory.
#[test]
fn a_model_goes_to_the_fewest_workers_split_by_memory() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 80 * 1024, 100);
    register(&mut state, "b", 40 * 1024, 100);
    register(&mut state, "c", 24 * 1024, 100);
    assert_eq!(
        add(&mut state, spec("m", 100, 100 * GIB)),
        Outcome::ModelAdded
    );
    // Rooms 80, 40, 24: two workers suffice. 100 * 80/120 = 66.7, 100 * 40/120 = 33.3.
    assert_eq!(ranges(&state, "m"), ["a:0-66", "b:67-99"]);
    assert_eq!(hops(state.models["m"].ranges()), 1, "the fewest hops");
    assert_eq!(state.nodes["a"].used_layers, 67);
    invariants::check_state(&state).expect("invariants hold");
    add(&mut state, spec("s", 20, 20 * GIB));
    assert_eq!(
        ranges(&state, "s"),
        ["c:0-19"],
        "one worker with room: no hop"
    );
}

/// A failed node's ranges move whole to a pipeline neighbour with room; everything else
/// stays where it is, and the pipeline loses a hop.
#[test]
fn repair_moves_only_the_failed_nodes_layers() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 80 * 1024, 100);
    register(&mut state, "b", 40 * 1024, 100);
    register(&mut state, "c", 40 * 1024, 100);
    add_placed(
        &mut state,
        spec("m", 40, 40 * GIB),
        &[("a", 0, 19), ("b", 20, 29), ("c", 30, 39)],
    );
    let before = ranges(&state, "m");
    set_status(&mut state, "b", NodeStatus::Unhealthy);
    repair_now(&mut state);
    assert_eq!(
        ranges(&state, "m"),
        before,
        "unhealthy nodes keep their layers"
    );
    set_status(&mut state, "b", NodeStatus::Offline);
    repair_now(&mut state);
    let after = ranges(&state, "m");
    for layer in (0..20).chain(30..40) {
        assert_eq!(
            owner(&state, "m", layer),
            if layer < 20 { "a" } else { "c" },
            "layer {layer} on a healthy node did not move: {after:?}"
        );
    }
    assert_eq!(after, ["a:0-29", "c:30-39"], "the neighbour took it whole");
    assert_eq!(state.nodes["b"].used_layers, 0);
    invariants::check_state(&state).expect("invariants hold");
}

/// With both pipeline neighbours full, an orphan goes whole to a worker new to the model (no
/// worker holds two ranges); when no worker can take it whole, the neighbours take what they
/// can from its ends and the largest rooms the middle.
#[test]
fn an_orphan_goes_whole_to_one_worker_and_is_split_only_when_it_must() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 80 * 1024, 20);
    register(&mut state, "b", 80 * 1024, 10);
    register(&mut state, "c", 80 * 1024, 10);
    register(&mut state, "d", 80 * 1024, 12);
    register(&mut state, "e", 80 * 1024, 10);
    add_placed(
        &mut state,
        spec("m", 40, 40 * GIB),
        &[("a", 0, 19), ("b", 20, 29), ("c", 30, 39)],
    );
    set_status(&mut state, "b", NodeStatus::Offline);
    repair_now(&mut state);
    // a and c are full; d (12) is the largest room, and new to the model.
    assert_eq!(ranges(&state, "m"), ["a:0-19", "d:20-29", "c:30-39"]);
    // a fails: no worker can take its 20 layers whole. Its right neighbour d takes the
    // last 2 it has room for, the largest rooms (e, then f, 10 each) the rest.
    register(&mut state, "f", 80 * 1024, 10);
    set_status(&mut state, "a", NodeStatus::Offline);
    repair_now(&mut state);
    assert_eq!(
        ranges(&state, "m"),
        ["e:0-9", "f:10-17", "d:18-29", "c:30-39"],
        "pieces: the neighbour d takes the end, the largest rooms the rest"
    );
    invariants::check_state(&state).expect("invariants hold");
}

/// A model that does not fit is pending with a reason, and is placed once a node joins.
#[test]
fn a_model_that_does_not_fit_waits_for_capacity() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 10 * 1024, 100);
    add(&mut state, spec("big", 20, 20 * GIB));
    match &state.models["big"].placement {
        Placement::Pending(reason) => assert!(reason.contains("needs 20 layers"), "{reason}"),
        p => panic!("should be pending: {p:?}"),
    }
    assert_eq!(state.nodes["a"].used_layers, 0, "nothing is half placed");
    register(&mut state, "b", 10 * 1024, 100);
    repair_now(&mut state);
    assert_eq!(ranges(&state, "big"), ["a:0-9", "b:10-19"]);
}

/// A drained node ends with no layers; undrained, nothing moves back, and a rebalance keeps
/// a placement already at the fewest hops.
#[test]
fn drain_moves_layers_off_and_rebalance_keeps_a_settled_placement() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 40 * 1024, 100);
    register(&mut state, "b", 40 * 1024, 100);
    add(&mut state, spec("m", 20, 20 * GIB));
    assert_eq!(ranges(&state, "m"), ["a:0-19"]);
    state.apply(Command::SetDrain {
        node_id: "a".into(),
        drain: true,
    });
    repair_now(&mut state);
    assert_eq!(ranges(&state, "m"), ["b:0-19"]);
    state.apply(Command::SetDrain {
        node_id: "a".into(),
        drain: false,
    });
    repair_now(&mut state);
    assert_eq!(
        ranges(&state, "m"),
        ["b:0-19"],
        "no reshuffle without rebalance"
    );
    assert!(rebalance(&state, Some("m")).is_empty(), "already one range");
}

/// The case: after repairs a model interleaves over workers; one rebalance brings
/// every model to the fewest workers, one range each, and a second moves nothing.
#[test]
fn rebalance_settles_in_one_call() {
    let mut state = ClusterState::default();
    for (id, max) in [("w1", 12), ("w2", 12), ("w3", 40), ("w4", 20)] {
        register(&mut state, id, 80 * 1024, max);
    }
    add_placed(
        &mut state,
        spec("m", 42, 42 * GIB),
        &[("w1", 0, 3), ("w3", 4, 36), ("w1", 37, 41)],
    );
    add_placed(
        &mut state,
        spec("n", 20, 20 * GIB),
        &[("w4", 0, 9), ("w2", 10, 19)],
    );
    assert!(interleaved(state.models["m"].ranges()));
    let changes = rebalance(&state, None);
    assert!(!changes.is_empty());
    let n = changes.len() as u32;
    let out = state.apply(Command::SetPlacements { changes });
    assert!(
        matches!(out, Outcome::PlacementsChanged { applied, .. } if applied == n),
        "{out:?}"
    );
    invariants::check_state(&state).expect("invariants hold");
    for id in ["m", "n"] {
        let m = &state.models[id];
        assert!(
            is_fewest_hops(&state, &m.spec, m.ranges()),
            "{id}: {:?}",
            ranges(&state, id)
        );
    }
    assert_eq!(
        hops(state.models["m"].ranges()),
        1,
        "{:?}",
        ranges(&state, "m")
    );
    assert_eq!(
        rebalance(&state, None),
        vec![],
        "a second rebalance moves nothing"
    );
}

/// The background merge takes an interleaved model to one range per worker in bounded steps,
/// each a complete placement, then goes quiet; a settled state gets no step, tick after tick.
#[test]
fn the_merge_is_bounded_keeps_coverage_and_goes_quiet() {
    let mut state = ClusterState::default();
    for (id, max) in [("w1", 20), ("w3", 40)] {
        register(&mut state, id, 80 * 1024, max);
    }
    add_placed(
        &mut state,
        spec("m", 42, 42 * GIB),
        &[("w1", 0, 3), ("w3", 4, 36), ("w1", 37, 41)],
    );
    let mut merger = merge::Merger::default();
    let mut ticks = 0;
    loop {
        let before = state.models["m"].ranges().to_vec();
        let changes = merger.tick(&state, 4);
        if changes.is_empty() {
            break;
        }
        ticks += 1;
        assert!(ticks < 50, "the merge ends");
        let n = changes.len() as u32;
        let out = state.apply(Command::SetPlacements { changes });
        assert!(
            matches!(out, Outcome::PlacementsChanged { applied, .. } if applied == n),
            "{out:?}"
        );
        invariants::check_state(&state).expect("every step is a valid, complete placement");
        let moved = moved(&before, state.models["m"].ranges());
        assert!(moved <= 4, "at most 4 moves a tick, {moved}");
    }
    assert!(
        !interleaved(state.models["m"].ranges()),
        "{:?}",
        ranges(&state, "m")
    );
    assert!(ticks > 1, "spread over ticks");
    for _ in 0..5 {
        assert!(merger.tick(&state, 4).is_empty(), "quiet when settled");
    }
}

/// Two full workers holding each other's layers swap them together in one step, since no
/// single move fits.
#[test]
fn full_workers_swap_layers() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 80 * 1024, 4);
    register(&mut state, "b", 80 * 1024, 4);
    add_placed(
        &mut state,
        spec("m", 8, 8 * GIB),
        &[("a", 0, 1), ("b", 2, 3), ("a", 4, 5), ("b", 6, 7)],
    );
    let mut merger = merge::Merger::default();
    for _ in 0..10 {
        let changes = merger.tick(&state, 1);
        if changes.is_empty() {
            break;
        }
        state.apply(Command::SetPlacements { changes });
        invariants::check_state(&state).expect("valid");
    }
    assert_eq!(ranges(&state, "m"), ["a:0-3", "b:4-7"]);
}

/// The state machine refuses placements that break an invariant: a stale AddModel plan
/// leaves the model pending (the next repair places it), a bad SetPlacements change is
/// skipped with the reason.
#[test]
fn the_state_machine_refuses_bad_placements() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 4 * 1024, 3);
    register(&mut state, "b", 40 * 1024, 100);
    set_status(&mut state, "b", NodeStatus::Offline);
    let place = |ranges: &[(&str, i32, i32)]| {
        Placement::Placed(
            ranges
                .iter()
                .map(|(n, f, l)| Range {
                    node_id: n.to_string(),
                    first: *f,
                    last: *l,
                })
                .collect(),
        )
    };
    let cases = [
        (place(&[("a", 0, 1)]), "cover 2 of 4"),
        (place(&[("a", 0, 1), ("a", 3, 3)]), "contiguously"),
        (place(&[("a", 0, 3)]), "max_layers"),
        (place(&[("a", 0, 0), ("b", 1, 3)]), "offline"),
        (place(&[("a", 0, 0), ("ghost", 1, 3)]), "not registered"),
    ];
    for (placement, why) in cases {
        state.apply(Command::AddModel {
            spec: spec("m", 4, 4 * GIB),
            placement: placement.clone(),
        });
        match &state.models["m"].placement {
            Placement::Pending(reason) => {
                assert!(reason.contains(why), "{reason} should say {why}")
            }
            p => panic!("{why}: placed {p:?}"),
        }
        let epoch = state.models["m"].epoch;
        match state.apply(Command::SetPlacements {
            changes: vec![PlacementChange {
                model_id: "m".into(),
                epoch,
                placement,
            }],
        }) {
            Outcome::PlacementsChanged {
                applied: 0,
                skipped,
            } => {
                assert!(skipped[0].contains(why), "{skipped:?} should say {why}")
            }
            other => panic!("{why}: applied {other:?}"),
        }
        state.apply(Command::RemoveModel { id: "m".into() });
    }
    let mut small = ClusterState::default();
    register(&mut small, "a", 2 * 1024, 100);
    small.apply(Command::AddModel {
        spec: spec("m", 4, 4 * GIB),
        placement: place(&[("a", 0, 3)]),
    });
    assert!(
        matches!(&small.models["m"].placement, Placement::Pending(r) if r.contains("MiB")),
        "over memory is refused"
    );
}
