//! Placement: the split rule, repair with minimal moves, pending models, and property tests
//! of the invariants over random sequences of joins, failures, drains and model changes.

use proptest::prelude::*;

use super::*;
use crate::state::{invariants, Command, Gpu, NodeSpec, Outcome, Resources};

const GIB: i64 = 1 << 30;

fn register(state: &mut ClusterState, id: &str, gpu_mb: i64, max_layers: i32) {
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

fn spec(id: &str, layers: i32, size_bytes: i64) -> ModelSpec {
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
fn add(state: &mut ClusterState, s: ModelSpec) -> Outcome {
    let placement = fresh(state, &s);
    state.apply(Command::AddModel { spec: s, placement })
}

/// What the leader's repair loop does: plan, commit, and the plan always applies.
fn repair_now(state: &mut ClusterState) {
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

fn ranges(state: &ClusterState, model: &str) -> Vec<String> {
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

fn set_status(state: &mut ClusterState, id: &str, to: NodeStatus) {
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

/// Three workers with 80, 40 and 24 GiB; an 80-layer model of 1 GiB per layer is split in
/// proportion to memory, as contiguous ranges in node order.
#[test]
fn a_model_is_split_by_memory() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 80 * 1024, 100);
    register(&mut state, "b", 40 * 1024, 100);
    register(&mut state, "c", 24 * 1024, 100);
    assert_eq!(
        add(&mut state, spec("m", 80, 80 * GIB)),
        Outcome::ModelAdded
    );
    // 80 * 80/144 = 44.4, 80 * 40/144 = 22.2, 80 * 24/144 = 13.3: floors 44 + 22 + 13 = 79,
    // and the one left over goes to the largest remainder (a's .4).
    assert_eq!(ranges(&state, "m"), ["a:0-44", "b:45-66", "c:67-79"]);
    assert_eq!(state.nodes["a"].used_layers, 45);
    invariants::check_state(&state).expect("invariants hold");
}

/// A failed node's ranges move; everything else stays where it is.
#[test]
fn repair_moves_only_the_failed_nodes_layers() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 80 * 1024, 100);
    register(&mut state, "b", 40 * 1024, 100);
    register(&mut state, "c", 40 * 1024, 100);
    add(&mut state, spec("m", 40, 40 * GIB));
    let before = ranges(&state, "m");
    assert_eq!(before, ["a:0-19", "b:20-29", "c:30-39"]);
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
        assert_ne!(owner(&state, "m", layer), "b");
        assert_eq!(
            owner(&state, "m", layer),
            if layer < 20 { "a" } else { "c" },
            "layer {layer} on a healthy node did not move: {after:?}"
        );
    }
    assert!(!after.iter().any(|r| r.starts_with("b:")), "{after:?}");
    assert_eq!(state.nodes["b"].used_layers, 0);
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

/// A drained node ends with no layers; undrained it takes new ones only on rebalance.
#[test]
fn drain_moves_layers_off_and_rebalance_brings_them_back() {
    let mut state = ClusterState::default();
    register(&mut state, "a", 40 * 1024, 100);
    register(&mut state, "b", 40 * 1024, 100);
    add(&mut state, spec("m", 20, 20 * GIB));
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
    let changes = rebalance(&state, Some("m"));
    state.apply(Command::SetPlacements { changes });
    assert_eq!(ranges(&state, "m"), ["a:0-9", "b:10-19"]);
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

#[derive(Clone, Debug)]
enum Op {
    Join(u8, u16, u8),
    Fail(u8),
    Recover(u8),
    Drain(u8),
    Undrain(u8),
    Leave(u8),
    AddModel(u8, u8, u8),
    RemoveModel(u8),
    Rebalance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, 1u16..100, 1u8..60).prop_map(|(n, gb, l)| Op::Join(n, gb, l)),
        (0u8..8).prop_map(Op::Fail),
        (0u8..8).prop_map(Op::Recover),
        (0u8..8).prop_map(Op::Drain),
        (0u8..8).prop_map(Op::Undrain),
        (0u8..8).prop_map(Op::Leave),
        (0u8..5, 1u8..100, 1u8..120).prop_map(|(m, l, gb)| Op::AddModel(m, l, gb)),
        (0u8..5).prop_map(Op::RemoveModel),
        Just(Op::Rebalance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Over any sequence of joins, failures, recoveries, drains, leaves, model adds and
    /// removes and rebalances, with the leader's repair after each step: the planner's
    /// changes always apply, the state keeps every invariant, no layer stays on a node that
    /// cannot hold it, and a pending model is one that truly does not fit.
    #[test]
    fn placement_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut state = ClusterState::default();
        for op in ops {
            match op {
                Op::Join(n, gb, l) => register(&mut state, &format!("n{n}"), i64::from(gb) * 1024, i32::from(l)),
                Op::Fail(n) | Op::Recover(n) => {
                    let id = format!("n{n}");
                    if let Some(node) = state.nodes.get(&id) {
                        let to = match (&op, node.status) {
                            (Op::Fail(_), NodeStatus::Healthy) => NodeStatus::Offline,
                            (Op::Recover(_), NodeStatus::Offline) => NodeStatus::Healthy,
                            _ => continue,
                        };
                        set_status(&mut state, &id, to);
                    }
                }
                Op::Drain(n) | Op::Undrain(n) => {
                    state.apply(Command::SetDrain { node_id: format!("n{n}"), drain: matches!(op, Op::Drain(_)) });
                }
                Op::Leave(n) => {
                    state.apply(Command::LeaveNode { node_id: format!("n{n}"), now_ms: 2 });
                }
                Op::AddModel(m, l, gb) => {
                    let out = add(&mut state, spec(&format!("m{m}"), i32::from(l), i64::from(gb) * GIB));
                    prop_assert!(matches!(out, Outcome::ModelAdded | Outcome::Rejected(crate::state::Rejection::ModelExists(_))), "{out:?}");
                }
                Op::RemoveModel(m) => {
                    state.apply(Command::RemoveModel { id: format!("m{m}") });
                }
                Op::Rebalance => {
                    let changes = rebalance(&state, None);
                    let n = changes.len() as u32;
                    if n > 0 {
                        let out = state.apply(Command::SetPlacements { changes });
                        prop_assert!(matches!(&out, Outcome::PlacementsChanged { applied, .. } if *applied == n), "{out:?}");
                    }
                }
            }
            repair_now(&mut state);
            prop_assert!(invariants::check_state(&state).is_ok(), "{:?}", invariants::check_state(&state));
            for model in state.models.values() {
                for r in model.ranges() {
                    prop_assert!(state.nodes[&r.node_id].status.may_hold_layers(), "{r:?} on a node that cannot hold it");
                }
                if let Placement::Pending(_) = model.placement {
                    prop_assert!(matches!(fresh(&state, &model.spec), Placement::Pending(_)), "pending model {} fits", model.spec.id);
                }
            }
        }
    }
}
