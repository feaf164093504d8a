//! Unit tests of the state machine: each command's effect and its determinism.

use super::*;

use super::test_support::spec;

#[test]
fn register_creates_then_updates_and_returns_to_service() {
    let mut state = ClusterState::default();
    let first = state.apply(Command::RegisterNode {
        spec: spec("a", 1000),
        now_ms: 10,
    });
    assert_eq!(first, Outcome::Registered { created: true });
    state.apply(Command::LeaveNode {
        node_id: "a".into(),
        now_ms: 20,
    });
    assert_eq!(state.nodes["a"].status, NodeStatus::Left);

    let again = state.apply(Command::RegisterNode {
        spec: spec("a", 2000),
        now_ms: 30,
    });
    assert_eq!(again, Outcome::Registered { created: false });
    let node = &state.nodes["a"];
    assert_eq!(
        node.status,
        NodeStatus::Healthy,
        "re-register returns to service"
    );
    assert_eq!(
        node.resources.memory_mb, 2000,
        "re-register updates resources"
    );
    assert_eq!(node.registered_at_ms, 10, "first registration time is kept");
    assert_eq!(node.last_seen_ms, 30);
}

#[test]
fn leave_unknown_is_rejected_and_leave_twice_is_idempotent() {
    let mut state = ClusterState::default();
    assert_eq!(
        state.apply(Command::LeaveNode {
            node_id: "ghost".into(),
            now_ms: 1
        }),
        Outcome::Rejected(Rejection::UnknownNode("ghost".into()))
    );
    state.apply(Command::RegisterNode {
        spec: spec("a", 1),
        now_ms: 1,
    });
    let leave = || Command::LeaveNode {
        node_id: "a".into(),
        now_ms: 2,
    };
    assert_eq!(state.apply(leave()), Outcome::Left { already: false });
    assert_eq!(state.apply(leave()), Outcome::Left { already: true });
    assert_eq!(
        state.members().count(),
        0,
        "a node that left is not a member"
    );
}

#[test]
fn cluster_id_is_set_once() {
    let mut state = ClusterState::default();
    let set = |id: &str| Command::SetClusterId {
        cluster_id: id.into(),
    };
    assert_eq!(
        state.apply(set("first")),
        Outcome::ClusterId {
            cluster_id: "first".into()
        }
    );
    assert_eq!(
        state.apply(set("second")),
        Outcome::ClusterId {
            cluster_id: "first".into()
        },
        "a later proposal does not replace the id"
    );
}

#[test]
fn same_log_same_state() {
    let log: Vec<Command> = (0..50)
        .flat_map(|i| {
            let id = format!("n{}", i % 7);
            [
                Command::RegisterNode {
                    spec: spec(&id, i),
                    now_ms: i,
                },
                Command::LeaveNode {
                    node_id: format!("n{}", (i * 3) % 11),
                    now_ms: i,
                },
            ]
        })
        .collect();
    let run = || {
        let mut state = ClusterState::default();
        let outcomes: Vec<Outcome> = log.iter().cloned().map(|c| state.apply(c)).collect();
        (state, outcomes)
    };
    assert_eq!(
        run(),
        run(),
        "applying the same log twice gives the same state"
    );
}

#[test]
fn state_survives_a_snapshot_round_trip() {
    let mut state = ClusterState::default();
    state.apply(Command::SetClusterId {
        cluster_id: "c".into(),
    });
    state.apply(Command::RegisterNode {
        spec: spec("a", 5),
        now_ms: 5,
    });
    let bytes = bincode::serialize(&state).expect("encode");
    let back: ClusterState = bincode::deserialize(&bytes).expect("decode");
    assert_eq!(back, state);
}

#[test]
fn status_changes_are_compare_and_set() {
    let mut state = ClusterState::default();
    state.apply(Command::RegisterNode {
        spec: spec("a", 1),
        now_ms: 1,
    });
    let change = |from, to, generation| StatusChange {
        node_id: "a".into(),
        generation,
        from,
        to,
        last_seen_ms: Some(5),
    };
    let apply =
        |state: &mut ClusterState, c| state.apply(Command::SetNodeStatuses { changes: vec![c] });
    assert_eq!(
        apply(
            &mut state,
            change(NodeStatus::Healthy, NodeStatus::Unhealthy, 1)
        ),
        Outcome::StatusesChanged { applied: 1 }
    );
    assert_eq!(state.nodes["a"].status, NodeStatus::Unhealthy);
    assert_eq!(state.nodes["a"].last_seen_ms, 5);
    assert_eq!(
        apply(
            &mut state,
            change(NodeStatus::Healthy, NodeStatus::Offline, 1)
        ),
        Outcome::StatusesChanged { applied: 0 },
        "a change from a status the node is no longer in does nothing"
    );
    state.apply(Command::RegisterNode {
        spec: spec("a", 1),
        now_ms: 9,
    });
    assert_eq!(state.nodes["a"].generation, 2);
    assert_eq!(
        apply(
            &mut state,
            change(NodeStatus::Healthy, NodeStatus::Offline, 1)
        ),
        Outcome::StatusesChanged { applied: 0 },
        "a decision made before a re-registration does not undo it"
    );
    assert_eq!(state.nodes["a"].status, NodeStatus::Healthy);
    assert_eq!(
        apply(&mut state, change(NodeStatus::Healthy, NodeStatus::Left, 2)),
        Outcome::StatusesChanged { applied: 0 },
        "only LeaveNode makes a node leave"
    );
}

fn once(request_id: u128, command: Command) -> Command {
    Command::Once {
        request_id,
        command: Box::new(command),
    }
}

fn model(id: &str) -> Command {
    Command::AddModel {
        spec: ModelSpec {
            id: id.to_string(),
            name: id.to_string(),
            version: String::new(),
            layer_count: 4,
            file_path: String::new(),
            size_bytes: 1 << 30,
        },
        placement: Placement::Pending("no workers".into()),
    }
}

/// A write retried after an unknown outcome (the first attempt committed, its answer was
/// lost) is answered as the first attempt was: "added", not "already exists".
#[test]
fn retried_request_gets_the_first_outcome() {
    let mut state = ClusterState::default();
    assert_eq!(state.apply(once(1, model("m"))), Outcome::ModelAdded);
    assert_eq!(state.apply(once(1, model("m"))), Outcome::ModelAdded);
    assert_eq!(
        state.apply(once(2, model("m"))),
        Outcome::Rejected(Rejection::ModelExists("m".into())),
        "a different request is a different write"
    );
    let remove = || Command::RemoveModel { id: "m".into() };
    assert_eq!(state.apply(once(3, remove())), Outcome::ModelRemoved);
    assert_eq!(state.apply(once(3, remove())), Outcome::ModelRemoved);
    assert!(state.models.is_empty());
    // The retry applied nothing: re-adding under the first id does not bring the model back.
    assert_eq!(state.apply(once(1, model("m"))), Outcome::ModelAdded);
    assert!(state.models.is_empty());
}

#[test]
fn recent_requests_are_bounded_and_survive_snapshots() {
    let mut state = ClusterState::default();
    let n = RecentRequests::CAPACITY as u128 + 10;
    for id in 0..n {
        state.apply(once(
            id,
            Command::SetClusterId {
                cluster_id: "c".into(),
            },
        ));
    }
    assert_eq!(state.requests.len(), RecentRequests::CAPACITY);
    assert!(state.requests.get(0).is_none(), "the oldest are forgotten");
    assert!(state.requests.get(n - 1).is_some());
    let bytes = bincode::serialize(&state).expect("encode");
    let back: ClusterState = bincode::deserialize(&bytes).expect("decode");
    assert_eq!(back, state);
}

#[test]
fn a_batch_applies_in_order_and_answers_each() {
    let mut state = ClusterState::default();
    let outcome = state.apply(Command::Batch(vec![
        once(1, model("m")),
        once(2, model("m")),
        once(1, model("m")),
        Command::LeaveNode {
            node_id: "nobody".into(),
            now_ms: 1,
        },
    ]));
    assert_eq!(
        outcome,
        Outcome::Batch(vec![
            Outcome::ModelAdded,
            Outcome::Rejected(Rejection::ModelExists("m".into())),
            Outcome::ModelAdded,
            Outcome::Rejected(Rejection::UnknownNode("nobody".into())),
        ])
    );
    assert_eq!(state.models.len(), 1);
}

/// Nodes live in a hash map; whatever lists them gets them by id, as they were listed when
/// the map was ordered (stable output for operators and scripts).
#[test]
fn nodes_are_listed_by_id() {
    let mut state = ClusterState::default();
    let ids: Vec<String> = (0..200)
        .map(|i| format!("node-{:03}", (i * 7919) % 200))
        .collect();
    for id in &ids {
        state.apply(Command::RegisterNode {
            spec: spec(id, 1000),
            now_ms: 1,
        });
    }
    state.apply(Command::LeaveNode {
        node_id: "node-100".into(),
        now_ms: 2,
    });
    let mut sorted = ids.clone();
    sorted.sort();
    let listed: Vec<&str> = state
        .nodes_by_id()
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    assert_eq!(listed, sorted);
    sorted.retain(|id| id != "node-100");
    let members: Vec<&str> = state.members().map(|n| n.node_id.as_str()).collect();
    assert_eq!(members, sorted);
    assert_eq!(state.members_unordered().count(), sorted.len());
}

/// A stale plan that breaks an invariant on several nodes is refused with the same sentence
/// on every replica: the sentence is kept in the replicated state (the model's pending
/// reason), so which node it names must not depend on a hash map's per-process order.
#[test]
fn a_refused_placement_names_the_same_node_everywhere() {
    let mut base = ClusterState::default();
    let ids: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    for id in &ids {
        base.apply(Command::RegisterNode {
            spec: spec(id, 1000),
            now_ms: 1,
        });
    }
    // Every node is draining, so every range breaks the "gains only on healthy" rule.
    for id in &ids {
        base.apply(Command::SetDrain {
            node_id: id.clone(),
            drain: true,
        });
    }
    let model = ModelSpec {
        id: "m".into(),
        name: "m".into(),
        version: "1".into(),
        layer_count: 8,
        file_path: String::new(),
        size_bytes: 8 << 20,
    };
    // The ranges in an order other than by id, as a planner could list them.
    let ranges: Vec<Range> = [5, 2, 7, 0, 3, 6, 1, 4]
        .iter()
        .enumerate()
        .map(|(layer, n)| Range {
            node_id: format!("n{n}"),
            first: layer as i32,
            last: layer as i32,
        })
        .collect();
    let mut reasons = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let mut state = base.clone();
        state.apply(Command::AddModel {
            spec: model.clone(),
            placement: Placement::Placed(ranges.clone()),
        });
        match &state.models["m"].placement {
            Placement::Pending(reason) => reasons.insert(reason.clone()),
            placed => panic!("a plan onto draining nodes was applied: {placed:?}"),
        };
    }
    assert_eq!(reasons.len(), 1, "different reasons: {reasons:?}");
    let reason = reasons.pop_first().expect("one reason");
    assert!(reason.contains("node n0 "), "names the lowest id: {reason}");
}

/// The holdings index follows every placement change (add placed, move, back to pending,
/// remove) and is rebuilt when a state is decoded: a node's assignments and `used_layers`
/// come out as a scan of every model's ranges says, on a live state and a decoded one.
#[test]
fn holdings_follow_placements_and_survive_a_snapshot() {
    let mut state = ClusterState::default();
    for id in ["a", "b", "c"] {
        state.apply(Command::RegisterNode {
            spec: spec(id, 100_000),
            now_ms: 1,
        });
    }
    let spec_of = |id: &str| ModelSpec {
        id: id.into(),
        name: id.into(),
        version: "1".into(),
        layer_count: 4,
        file_path: String::new(),
        size_bytes: 4 << 20,
    };
    let range = |node: &str, first, last| Range {
        node_id: node.into(),
        first,
        last,
    };
    let scan = |s: &ClusterState, node: &str| -> Vec<(String, i32, i32)> {
        s.models
            .values()
            .flat_map(|m| {
                m.ranges()
                    .iter()
                    .filter(|r| r.node_id == node)
                    .map(|r| (m.spec.id.clone(), r.first, r.last))
            })
            .collect()
    };
    let check = |s: &ClusterState| {
        invariants::check_state(s).expect("invariants hold");
        for node in ["a", "b", "c"] {
            let indexed: Vec<(String, i32, i32)> = s
                .assignments_of(node)
                .map(|(m, r)| (m.to_string(), r.first, r.last))
                .collect();
            assert_eq!(indexed, scan(s, node), "node {node}");
        }
    };
    for (id, ranges) in [
        ("m2", vec![range("a", 0, 1), range("b", 2, 3)]),
        ("m1", vec![range("a", 0, 3)]),
    ] {
        state.apply(Command::AddModel {
            spec: spec_of(id),
            placement: Placement::Placed(ranges),
        });
        check(&state);
    }
    assert_eq!(state.nodes["a"].used_layers, 6);
    let epoch = |s: &ClusterState, id: &str| s.models[id].epoch;
    for placement in [
        Placement::Placed(vec![range("c", 0, 2), range("b", 3, 3)]),
        Placement::Pending("repair".into()),
        Placement::Placed(vec![range("a", 0, 0), range("c", 1, 3)]),
    ] {
        state.apply(Command::SetPlacements {
            changes: vec![PlacementChange {
                model_id: "m2".into(),
                epoch: epoch(&state, "m2"),
                placement,
            }],
        });
        check(&state);
    }
    assert_eq!(epoch(&state, "m2"), 4, "every change applied");
    assert_eq!(scan(&state, "c"), [("m2".to_string(), 1, 3)]);
    let bytes = bincode::serialize(&state).expect("encode");
    let back: ClusterState = bincode::deserialize(&bytes).expect("decode");
    assert_eq!(back, state, "the index is rebuilt as it was kept");
    check(&back);
    state.apply(Command::RemoveModel { id: "m1".into() });
    check(&state);
    assert_eq!(state.nodes["a"].used_layers, 1);
    assert!(
        state.holdings.get("b").is_none(),
        "b holds nothing: no entry"
    );
}
