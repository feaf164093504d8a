use dllm_proto::view::ClusterView;
use proptest::prelude::*;

use super::*;
use crate::state::{test_support::spec, Command, ModelSpec, Placement, Range, StatusChange};

fn types(t: &[&str]) -> Vec<String> {
    t.iter().map(|t| t.to_string()).collect()
}

fn no_metrics(_: &ClusterState) -> pb::ClusterMetrics {
    pb::ClusterMetrics::default()
}

fn join(s: &mut ClusterState, id: &str) {
    s.apply(Command::RegisterNode {
        spec: spec(id, 64 * 1024),
        now_ms: 1_000,
    });
}

fn set_status(s: &mut ClusterState, id: &str, to: NodeStatus) {
    let Some(n) = s.nodes.get(id) else { return };
    let change = StatusChange {
        node_id: id.to_string(),
        generation: n.generation,
        from: n.status,
        to,
        last_seen_ms: None,
    };
    s.apply(Command::SetNodeStatuses {
        changes: vec![change],
    });
}

/// The whole lists of `s`, as a fresh stream's first updates give them.
fn whole(s: &ClusterState) -> ClusterView {
    let mut view = ClusterView::default();
    let (updates, _) = compose(
        s,
        &types(&["nodes", "models"]),
        false,
        &Sent::default(),
        0,
        no_metrics,
    );
    for u in updates {
        view.apply(u).expect("whole lists apply");
    }
    view
}

#[test]
fn each_member_is_refreshed_once_a_cycle() {
    let mut s = ClusterState::default();
    for i in 0..1000 {
        join(&mut s, &format!("w{i:04}"));
    }
    let start = 1_700_000_000_000i64;
    let mut refresh = Refresh::start(&s.nodes, start);
    assert!(
        refresh.step(&s.nodes, start).is_empty(),
        "no time, nothing due"
    );
    let mut count = std::collections::HashMap::<String, usize>::new();
    // Steps of 250 ms to 1 s: 30 s cover every id once.
    let mut t = start;
    for step in (0..).map(|i| 250 * (1 + i % 4)) {
        if t + step > start + LAST_SEEN_REFRESH_S * 1000 {
            break;
        }
        t += step;
        for id in refresh.step(&s.nodes, t) {
            *count.entry(id.clone()).or_default() += 1;
        }
    }
    assert_eq!(count.len(), 1000, "every id within 30 s");
    assert!(count.values().all(|&c| c == 1), "each once");
    // The next step starts a new cycle, at the same pace.
    let due = refresh.step(&s.nodes, t + 1000).len();
    assert!((33..=35).contains(&due), "{due} due in a second, 1000/30");
}

#[test]
fn a_delta_names_what_changed_and_what_went() {
    let mut s = ClusterState::default();
    for id in ["a", "b", "c"] {
        join(&mut s, id);
    }
    let before = s.nodes.clone();
    let at = s.node_changes.end();
    for hint in [None, Some(&[][..])] {
        let delta = node_delta(&before, &s.nodes, hint);
        assert!(delta.changed.is_empty() && delta.removed.is_empty());
    }

    set_status(&mut s, "b", NodeStatus::Unhealthy);
    join(&mut s, "d");
    s.nodes.remove("a");
    s.node_changes.push("a");
    let (hint, _) = s.node_changes.since(at).expect("the feed holds them");
    // With the feed's ids (plus one that did not change) and by comparing every node.
    let mut noisy = hint.clone();
    noisy.push("c".into());
    for hint in [None, Some(&hint[..]), Some(&noisy[..])] {
        let delta = node_delta(&before, &s.nodes, hint);
        let ids: Vec<&str> = delta.changed.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["b", "d"], "{hint:?}");
        assert_eq!(delta.removed, ["a"]);
    }
}

#[test]
fn a_delta_stream_sends_little_when_little_changed() {
    let mut s = ClusterState::default();
    for i in 0..2000 {
        join(&mut s, &format!("w{i:04}"));
    }
    let t = types(&["nodes", "models"]);
    let (first, sent) = compose(&s, &t, true, &Sent::default(), 10_000, no_metrics);
    assert_eq!(first[0].nodes.len(), 2000);
    assert!(!first[0].delta && !first[1].delta);
    set_status(&mut s, "w0007", NodeStatus::Offline);
    // One second later: the changed node, and a thirtieth of the rest's last_seen.
    let (next, _) = compose(&s, &t, true, &sent, 11_000, no_metrics);
    assert!(next[0].delta && next[1].delta);
    assert!(next[0]
        .nodes
        .iter()
        .any(|n| n.node_id == "w0007" && n.status == "offline"));
    assert_eq!(next[0].nodes.len(), 1, "only the changed node whole");
    let due = next[0].last_seen.len();
    assert!(
        (60..=68).contains(&due),
        "{due} last_seen refreshes, about 2000/30"
    );
    // At the same moment: just the changed node.
    let (same_second, _) = compose(&s, &t, true, &sent, 10_000, no_metrics);
    assert_eq!(same_second[0].nodes.len(), 1);
    assert!(same_second[0].last_seen.is_empty());
    assert!(same_second[1].models.is_empty());
    // Without deltas every update is the whole list.
    let (old_client, _) = compose(&s, &t, false, &sent, 11_000, no_metrics);
    assert_eq!(old_client[0].nodes.len(), 2000);
    assert!(!old_client[0].delta);
}

#[derive(Clone, Debug)]
enum Op {
    Join(u8),
    Status(u8, u8),
    Leave(u8),
    Drain(u8, bool),
    AddModel(u8, u8),
    RemoveModel(u8),
    /// A node gone from the state (none is today; the stream must still say so).
    Forget(u8),
    /// The state rebuilt from its encoding, sharing nothing with what was sent: a snapshot
    /// installed, or a new leader's replica.
    Rebuild,
    /// An update sent, `secs` after the last.
    Push(u8),
    /// The stream breaks (its replica died); the client subscribes again elsewhere.
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24).prop_map(Op::Join),
        3 => (0u8..24, 0u8..4).prop_map(|(n, s)| Op::Status(n, s)),
        1 => (0u8..24).prop_map(Op::Leave),
        1 => (0u8..24, any::<bool>()).prop_map(|(n, d)| Op::Drain(n, d)),
        2 => (0u8..6, 0u8..24).prop_map(|(m, n)| Op::AddModel(m, n)),
        1 => (0u8..6).prop_map(Op::RemoveModel),
        1 => (0u8..24).prop_map(Op::Forget),
        1 => Just(Op::Rebuild),
        4 => (0u8..40).prop_map(Op::Push),
        1 => Just(Op::Reconnect),
    ]
}

fn apply(s: &mut ClusterState, op: &Op) {
    let node = |n: &u8| format!("node-{n:02}");
    match op {
        Op::Join(n) => join(s, &node(n)),
        Op::Status(n, to) => {
            let to = [
                NodeStatus::Healthy,
                NodeStatus::Unhealthy,
                NodeStatus::Offline,
                NodeStatus::Healthy,
            ][*to as usize];
            set_status(s, &node(n), to);
        }
        Op::Leave(n) => {
            s.apply(Command::LeaveNode {
                node_id: node(n),
                now_ms: 2_000,
            });
        }
        Op::Drain(n, drain) => {
            s.apply(Command::SetDrain {
                node_id: node(n),
                drain: *drain,
            });
        }
        Op::AddModel(m, n) => {
            let spec = ModelSpec {
                id: format!("model-{m}"),
                name: "m".into(),
                version: "1".into(),
                layer_count: 2,
                file_path: "/models/m".into(),
                size_bytes: 2 << 20,
            };
            // Placed on the node when it is a healthy member (the apply checks), else pending.
            let placement = match s.nodes.get(&node(n)) {
                Some(x) if x.status == NodeStatus::Healthy => Placement::Placed(vec![Range {
                    node_id: node(n),
                    first: 0,
                    last: 1,
                }]),
                _ => Placement::Pending("no room".into()),
            };
            s.apply(Command::AddModel { spec, placement });
        }
        Op::RemoveModel(m) => {
            s.apply(Command::RemoveModel {
                id: format!("model-{m}"),
            });
        }
        Op::Forget(n) => {
            // As apply would: every change to a node goes into the feed.
            if s.nodes.remove(&node(n)).is_some() {
                s.node_changes.push(&node(n));
            }
        }
        Op::Rebuild => {
            let bytes = bincode::serialize(&*s).expect("encode");
            *s = bincode::deserialize(&bytes).expect("decode");
        }
        Op::Push(_) | Op::Reconnect => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A client that applies a delta stream in order holds, after every update, exactly the
    /// whole lists of the state the update was made from, through joins, leaves, status
    /// changes, drains, models coming and going, state rebuilt as by a leader change, and
    /// reconnects.
    #[test]
    fn a_delta_stream_reproduces_the_whole_lists(ops in prop::collection::vec(op(), 1..80)) {
        let t = types(&["nodes", "models"]);
        let mut s = ClusterState::default();
        let mut view = ClusterView::default();
        let mut sent = Sent::default();
        let mut now_ms = 1_700_000_000_000i64;
        for op in &ops {
            apply(&mut s, op);
            match op {
                Op::Push(secs) => now_ms += i64::from(*secs) * 250,
                Op::Reconnect => {
                    // A new stream: the server starts afresh; the client keeps its lists and
                    // compares the whole ones with them.
                    sent = Sent::default();
                    now_ms += 1000;
                }
                _ => continue,
            }
            let (updates, next) = compose(&s, &t, true, &sent, now_ms, no_metrics);
            sent = next;
            for u in updates {
                let applied = view.apply(u);
                prop_assert!(applied.is_ok(), "{applied:?}");
            }
            prop_assert_eq!(&view, &whole(&s));
        }
    }
}

#[test]
fn a_removed_model_is_named() {
    let mut s = ClusterState::default();
    apply(&mut s, &Op::AddModel(1, 0));
    let before = s.models.clone();
    apply(&mut s, &Op::AddModel(2, 0));
    let mid = s.models.clone();
    let (changed, removed) = model_delta(&before, &s.models);
    assert_eq!((changed.len(), removed.len()), (1, 0));
    apply(&mut s, &Op::RemoveModel(1));
    let (changed, removed) = model_delta(&mid, &s.models);
    assert_eq!(removed, ["model-1"]);
    assert!(changed.is_empty());
}

proptest! {
    #[test]
    fn imbl_diff_matches_naive(ops in prop::collection::vec((0u8..6, any::<bool>(), 0u8..4), 1..40), cut in 0usize..40) {
        let mut m: imbl::OrdMap<String, u8> = imbl::OrdMap::new();
        let mut before = m.clone();
        for (i, (k, add, v)) in ops.iter().enumerate() {
            if i == cut { before = m.clone(); }
            let k = format!("m{k}");
            if *add { m.insert(k, *v); } else { m.remove(&k); }
        }
        let mut removed = Vec::new();
        for item in before.diff(&m) {
            if let imbl::ordmap::DiffItem::Remove(k, _) = item { removed.push(k.clone()); }
        }
        let naive: Vec<String> = before.keys().filter(|k| !m.contains_key(*k)).cloned().collect();
        prop_assert_eq!(removed, naive);
    }
}
