//! The failure detector's state machine, driven with paused tokio time.

use super::*;
use crate::state::{NodeChanges, Resources};

fn config() -> LivenessConfig {
    LivenessConfig {
        interval: Duration::from_secs(1),
        unhealthy_after: 3,
        offline_after: 10,
        failover_grace: Duration::from_secs(2),
    }
}

fn node(status: NodeStatus, generation: u64) -> Node {
    Node {
        node_id: "w1".into(),
        address: "h".into(),
        port: 1,
        resources: Resources {
            cpu_cores: 1,
            memory_mb: 1,
            gpus: vec![],
            max_layers: 1,
        },
        used_layers: 0,
        status,
        last_seen_ms: 0,
        registered_at_ms: 0,
        generation,
    }
}

/// The replicated side as apply keeps it: the node map and its change feed.
#[derive(Default)]
struct World {
    nodes: crate::state::NodeMap,
    feed: NodeChanges,
}

impl World {
    fn with(n: &Node) -> Self {
        let mut w = Self::default();
        w.set(n);
        w
    }

    /// A new version of `n` applied (its status or generation changed).
    fn set(&mut self, n: &Node) {
        self.nodes.insert(n.node_id.clone(), n.clone());
        self.feed.push(&n.node_id);
    }

    fn sweep(&self, d: &mut Detector) -> Vec<StatusChange> {
        d.sweep(&self.nodes, &self.feed, Instant::now())
    }
}

async fn advance(secs: f64) {
    tokio::time::advance(Duration::from_secs_f64(secs)).await;
}

/// healthy -> unhealthy after 3 silent intervals -> offline after 10; a heartbeat brings the
/// node back; nothing is proposed twice while it is pending.
#[tokio::test(start_paused = true)]
async fn silence_walks_healthy_unhealthy_offline_and_a_heartbeat_heals() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut n = node(NodeStatus::Healthy, 1);
    let mut w = World::with(&n);
    d.heartbeat(&n, None, Instant::now(), 1);

    advance(2.0 + 2.9).await; // grace 2 s, then 2.9 s of silence
    assert!(w.sweep(&mut d).is_empty(), "not yet");
    advance(0.2).await;
    let c = w.sweep(&mut d);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].from, c[0].to),
        (NodeStatus::Healthy, NodeStatus::Unhealthy)
    );
    assert!(w.sweep(&mut d).is_empty(), "pending: not proposed twice");
    n.status = NodeStatus::Unhealthy; // the transition applied
    w.set(&n);

    advance(7.0).await;
    let c = w.sweep(&mut d);
    assert_eq!(
        (c[0].from, c[0].to),
        (NodeStatus::Unhealthy, NodeStatus::Offline)
    );
    n.status = NodeStatus::Offline;
    w.set(&n);
    assert!(
        w.sweep(&mut d).is_empty(),
        "offline stays offline while silent"
    );

    d.heartbeat(&n, None, Instant::now(), 2);
    let back = w.sweep(&mut d);
    assert_eq!(
        (back[0].from, back[0].to),
        (NodeStatus::Offline, NodeStatus::Healthy)
    );
    d.heartbeat(&n, None, Instant::now(), 3);
    assert!(w.sweep(&mut d).is_empty(), "pending: not proposed twice");
}

/// A new leader counts no silence during its grace period, however long the node had been
/// silent before, and then gives it the full threshold.
#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_a_grace_period() {
    let mut d = Detector::new(config());
    let n = node(NodeStatus::Healthy, 1);
    let w = World::with(&n);
    advance(100.0).await;
    d.become_leader(Instant::now());
    assert!(
        w.sweep(&mut d).is_empty(),
        "first sighting starts the clock"
    );
    advance(2.0 + 2.9).await;
    assert!(
        w.sweep(&mut d).is_empty(),
        "grace plus threshold not yet over"
    );
    advance(0.2).await;
    assert_eq!(w.sweep(&mut d).len(), 1);
}

/// Steady heartbeats never cause a transition.
#[tokio::test(start_paused = true)]
async fn steady_heartbeats_change_nothing() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    let w = World::with(&n);
    for _ in 0..100 {
        advance(1.0).await;
        d.heartbeat(&n, None, Instant::now(), 0);
        assert!(w.sweep(&mut d).is_empty());
    }
}

/// A re-registration (new generation) restarts the clock.
#[tokio::test(start_paused = true)]
async fn re_registration_restarts_the_clock() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    let mut w = World::with(&n);
    w.sweep(&mut d);
    advance(4.5).await;
    let again = node(NodeStatus::Healthy, 2);
    w.set(&again);
    assert!(w.sweep(&mut d).is_empty(), "new generation, fresh clock");
    advance(3.1).await;
    assert_eq!(w.sweep(&mut d)[0].generation, 2);
}

/// After a failover an offline node is not brought back by the grace period: only a
/// heartbeat heard by this leader heals it.
#[tokio::test(start_paused = true)]
async fn only_a_heartbeat_heals_an_offline_node() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Offline, 1);
    let w = World::with(&n);
    for _ in 0..10 {
        assert!(w.sweep(&mut d).is_empty());
        advance(0.5).await;
    }
    d.heartbeat(&n, None, Instant::now(), 9);
    assert_eq!(w.sweep(&mut d)[0].to, NodeStatus::Healthy);
}

/// A replica that is not leading proposes nothing, and stepping down forgets usage.
#[tokio::test(start_paused = true)]
async fn followers_propose_nothing() {
    let mut d = Detector::new(config());
    let n = node(NodeStatus::Healthy, 1);
    let w = World::with(&n);
    advance(60.0).await;
    assert!(w.sweep(&mut d).is_empty());
    d.become_leader(Instant::now());
    d.heartbeat(
        &n,
        Some(pb::NodeUsage {
            memory_total_mb: 10,
            memory_used_mb: 4,
            ..Default::default()
        }),
        Instant::now(),
        1,
    );
    assert_eq!(d.free_memory()["w1"], 6);
    d.step_down();
    assert!(d.usage("w1").is_none());
}

/// A transition that failed to commit is proposed again by the next sweep.
#[tokio::test(start_paused = true)]
async fn abandoned_transitions_are_retried() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    let w = World::with(&n);
    w.sweep(&mut d);
    advance(6.0).await;
    let c = w.sweep(&mut d);
    assert_eq!(c.len(), 1);
    d.abandon(&c);
    assert_eq!(w.sweep(&mut d).len(), 1);
}

fn named(id: &str, status: NodeStatus) -> Node {
    Node {
        node_id: id.into(),
        ..node(status, 1)
    }
}

/// A sweep costs what changed: with 1,000 heartbeating nodes, sweeps every 250 ms look at
/// no node after the term's first sweep. Each node's turn comes once per unhealthy threshold
/// (3 s) and is put off, without a look at the state, since it was heard from meanwhile.
#[tokio::test(start_paused = true)]
async fn sweeps_look_at_what_changed_not_at_every_node() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut w = World::default();
    let nodes: Vec<Node> = (0..1000)
        .map(|i| named(&format!("w{i}"), NodeStatus::Healthy))
        .collect();
    for n in &nodes {
        w.set(n);
    }
    assert!(w.sweep(&mut d).is_empty());
    assert_eq!(
        d.looked(),
        1000,
        "the first sweep of a term looks at every node"
    );
    for _ in 0..40 {
        advance(0.25).await;
        for n in &nodes {
            d.heartbeat(n, None, Instant::now(), 1);
        }
        assert!(
            w.sweep(&mut d).is_empty(),
            "steady heartbeats change nothing"
        );
    }
    assert_eq!(
        d.looked(),
        1000,
        "steady heartbeats need no look after the first sweep"
    );
    // 10 s: the grace period (2 s), then each node's turn once per 3 s.
    assert!(
        (2000..=4000).contains(&d.put_off()),
        "{} turns put off in 40 sweeps of 1,000 nodes",
        d.put_off()
    );
}

/// A node whose turns were put off while it heartbeated still goes unhealthy on time once it
/// falls silent: its turn, put off to the threshold counted from its last heartbeat, comes
/// then, and the look finds the silence.
#[tokio::test(start_paused = true)]
async fn a_node_falling_silent_after_turns_put_off_is_detected_on_time() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    let w = World::with(&n);
    assert!(w.sweep(&mut d).is_empty());
    for _ in 0..40 {
        advance(0.25).await;
        d.heartbeat(&n, None, Instant::now(), 1);
        assert!(w.sweep(&mut d).is_empty(), "heartbeating: no transition");
    }
    assert!(d.put_off() >= 2, "its turn was put off ({})", d.put_off());
    let silent_from = Instant::now();
    let mut found = None;
    while found.is_none() {
        advance(0.25).await;
        found = w.sweep(&mut d).into_iter().next();
        assert!(
            silent_from.elapsed() <= Duration::from_secs(3),
            "not unhealthy 3 s into its silence"
        );
    }
    let change = found.expect("found");
    assert_eq!(
        (change.from, change.to),
        (NodeStatus::Healthy, NodeStatus::Unhealthy),
        "silence past the threshold: unhealthy"
    );
    assert_eq!(
        silent_from.elapsed(),
        Duration::from_secs(3),
        "found by the first sweep at the threshold"
    );
}

/// A node registered after the first sweep (known only from the change feed) that never
/// heartbeats still goes unhealthy, then offline.
#[tokio::test(start_paused = true)]
async fn a_node_known_only_from_the_feed_is_detected() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut w = World::with(&named("old", NodeStatus::Healthy));
    w.sweep(&mut d);
    advance(5.0).await;
    d.heartbeat(&named("old", NodeStatus::Healthy), None, Instant::now(), 1);
    let mut n = named("new", NodeStatus::Healthy);
    w.set(&n);
    assert!(w.sweep(&mut d).is_empty(), "first seen now");
    advance(3.1).await;
    d.heartbeat(&named("old", NodeStatus::Healthy), None, Instant::now(), 2);
    let c = w.sweep(&mut d);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].node_id.as_str(), c[0].to),
        ("new", NodeStatus::Unhealthy)
    );
    d.abandon(&c);
    n.status = NodeStatus::Unhealthy;
    w.set(&n);
    assert!(w.sweep(&mut d).is_empty());
    advance(7.0).await;
    let c = w.sweep(&mut d);
    assert_eq!(c.len(), 2, "old went silent too: {c:?}");
    assert!(c
        .iter()
        .any(|c| c.node_id == "new" && c.to == NodeStatus::Offline));
}

/// A detector that fell behind the feed, or whose state was replaced (a snapshot starts a
/// new feed), looks at every node again and misses nothing.
#[tokio::test(start_paused = true)]
async fn a_lost_feed_means_a_full_look() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut w = World::with(&named("a", NodeStatus::Healthy));
    w.sweep(&mut d);
    // More changes than the feed keeps, all about another node.
    let b = named("b", NodeStatus::Healthy);
    for _ in 0..=NodeChanges::CAPACITY {
        w.set(&b);
    }
    let before = d.looked();
    assert!(w.sweep(&mut d).is_empty());
    assert_eq!(d.looked() - before, 2, "both nodes, once each");
    // A state decoded from a snapshot: same nodes, a new feed with nothing in it.
    let mut fresh = World::default();
    let c = named("c", NodeStatus::Healthy);
    fresh.nodes = w.nodes.clone();
    fresh.nodes.insert("c".into(), c);
    advance(5.5).await;
    let changes = fresh.sweep(&mut d);
    assert_eq!(changes.len(), 2, "a and b went silent: {changes:?}");
    // c's clock started when the full look first saw it.
    advance(3.1).await;
    let changes = fresh.sweep(&mut d);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].node_id, "c");
}

#[test]
fn the_change_feed_reports_positions_and_overflow() {
    let feed = NodeChanges::default();
    assert_eq!(feed.since(0), Some((vec![], 0)));
    feed.push("a");
    feed.push("b");
    assert_eq!(feed.since(0), Some((vec!["a".into(), "b".into()], 2)));
    assert_eq!(feed.since(1), Some((vec!["b".into()], 2)));
    assert_eq!(feed.since(2), Some((vec![], 2)));
    assert_eq!(feed.since(3), None, "a position from another feed");
    for _ in 0..NodeChanges::CAPACITY {
        feed.push("c");
    }
    assert_eq!(feed.since(1), None, "b was dropped");
    assert_eq!(
        feed.since(2).map(|(ids, _)| ids.len()),
        Some(NodeChanges::CAPACITY)
    );
    assert!(feed.same(&feed.clone()) && !feed.same(&NodeChanges::default()));
}

/// A proposal overtaken by another change (a drain applied before it, so apply skipped it)
/// does not stay pending: once the node is healthy again and still silent, the transition
/// is proposed again.
#[tokio::test(start_paused = true)]
async fn an_overtaken_proposal_is_proposed_again() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut n = node(NodeStatus::Healthy, 1);
    let mut w = World::with(&n);
    w.sweep(&mut d);
    advance(5.5).await;
    assert_eq!(w.sweep(&mut d).len(), 1, "healthy -> unhealthy proposed");
    n.status = NodeStatus::Draining;
    w.set(&n);
    assert!(w.sweep(&mut d).is_empty(), "a draining node is not judged");
    n.status = NodeStatus::Healthy;
    w.set(&n);
    let c = w.sweep(&mut d);
    assert_eq!(c.len(), 1, "proposed again");
    assert_eq!(
        (c[0].from, c[0].to),
        (NodeStatus::Healthy, NodeStatus::Unhealthy)
    );
}

/// The transitions one sweep finds, taken a chunk of `chunk` nodes at a time, sorted by id.
fn sweep_in_chunks(d: &mut Detector, w: &World, chunk: usize) -> Vec<(String, &'static str)> {
    let Some(mut sweep) = d.begin_sweep(&w.nodes, &w.feed, Instant::now()) else {
        return vec![];
    };
    sweep.list_every();
    while !sweep.done() {
        d.look(&mut sweep, &w.nodes, chunk);
    }
    let mut found: Vec<_> = d
        .finish(sweep)
        .into_iter()
        .map(|c| (c.node_id, c.to.as_str()))
        .collect();
    found.sort();
    found
}

/// A sweep taken a few nodes at a time (as the replica does, releasing the state between
/// chunks) finds what a whole sweep finds: on a term's first look at every node, on the
/// feed's news, and on the nodes whose threshold passed.
#[tokio::test(start_paused = true)]
async fn a_sweep_in_chunks_finds_what_a_whole_sweep_finds() {
    let (mut whole, mut chunked) = (Detector::new(config()), Detector::new(config()));
    whole.become_leader(Instant::now());
    chunked.become_leader(Instant::now());
    let mut w = World::default();
    for i in 0..20 {
        w.set(&named(&format!("old{i:02}"), NodeStatus::Healthy));
    }
    // A term's first sweep looks at every node.
    assert!(sweep_in_chunks(&mut whole, &w, usize::MAX).is_empty());
    assert!(sweep_in_chunks(&mut chunked, &w, 3).is_empty());
    assert_eq!(chunked.looked(), 20);
    advance(3.0).await;
    for i in 0..20 {
        w.set(&named(&format!("new{i:02}"), NodeStatus::Healthy));
    }
    // The first nodes go silent past the threshold (grace 2 s + 3 s); the new ones not yet.
    advance(2.5).await;
    let expected = sweep_in_chunks(&mut whole, &w, usize::MAX);
    assert_eq!(expected.len(), 20, "{expected:?}");
    assert!(expected
        .iter()
        .all(|(id, to)| id.starts_with("old") && *to == "unhealthy"));
    assert_eq!(sweep_in_chunks(&mut chunked, &w, 3), expected);
    advance(3.0).await;
    let expected = sweep_in_chunks(&mut whole, &w, usize::MAX);
    assert_eq!(expected.len(), 20, "the new ones now: {expected:?}");
    assert_eq!(sweep_in_chunks(&mut chunked, &w, 3), expected);
}

/// A leader's detector with nodes `a` and `b` both silent past the threshold, and a sweep of
/// them begun and one node into its looks.
async fn a_sweep_one_chunk_in() -> (Detector, World, Sweep) {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut w = World::default();
    for id in ["a", "b"] {
        w.set(&named(id, NodeStatus::Healthy));
    }
    w.sweep(&mut d);
    advance(5.5).await;
    let mut sweep = d
        .begin_sweep(&w.nodes, &w.feed, Instant::now())
        .expect("leading");
    assert_eq!(sweep.len(), 2, "both nodes' thresholds passed");
    d.look(&mut sweep, &w.nodes, 1);
    assert!(!sweep.done());
    assert_eq!(sweep.found().len(), 1, "the first chunk found a transition");
    (d, w, sweep)
}

/// A node that changes between two chunks of a sweep is judged as it is when its chunk is
/// looked at: re-registered meanwhile (a new generation), its clock starts again and nothing
/// is proposed for it.
#[tokio::test(start_paused = true)]
async fn a_chunk_judges_the_state_as_it_is_then() {
    let (mut d, mut w, mut sweep) = a_sweep_one_chunk_in().await;
    // Apply runs between the chunks: the node not looked at yet is re-registered.
    let next = if sweep.found()[0].node_id == "a" {
        "b"
    } else {
        "a"
    };
    let mut again = named(next, NodeStatus::Healthy);
    again.generation = 2;
    w.set(&again);
    d.look(&mut sweep, &w.nodes, 1);
    assert!(sweep.done());
    let changes = d.finish(sweep);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_ne!(changes[0].node_id, next);
}

/// A sweep begun before leadership moved looks at nothing more and proposes nothing, not
/// even what it found before: that term's soft state is gone, and the next term's grace
/// period must hold.
#[tokio::test(start_paused = true)]
async fn a_sweep_from_an_earlier_term_proposes_nothing() {
    let (mut d, w, mut sweep) = a_sweep_one_chunk_in().await;
    d.step_down();
    d.become_leader(Instant::now());
    let looked = d.looked();
    d.look(&mut sweep, &w.nodes, usize::MAX);
    assert!(sweep.done());
    assert_eq!(d.looked(), looked, "the stale sweep looked at a node");
    assert!(d.finish(sweep).is_empty(), "a stale sweep proposed");
    assert!(d.begin_sweep(&w.nodes, &w.feed, Instant::now()).is_some());
}

/// A look at every node, taken in chunks, keeps what heartbeats taught the detector
/// meanwhile about a node registered after the look's copy of the map was taken.
#[tokio::test(start_paused = true)]
async fn a_look_at_every_node_keeps_what_heartbeats_said_meanwhile() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let mut w = World::default();
    for id in ["a", "b", "c"] {
        w.set(&named(id, NodeStatus::Healthy));
    }
    let mut sweep = d
        .begin_sweep(&w.nodes, &w.feed, Instant::now())
        .expect("leading");
    sweep.list_every();
    d.look(&mut sweep, &w.nodes, 1);
    let late = named("late", NodeStatus::Healthy);
    w.set(&late);
    let usage = pb::NodeUsage {
        memory_total_mb: 10,
        ..Default::default()
    };
    d.heartbeat(&late, Some(usage), Instant::now(), 1);
    while !sweep.done() {
        d.look(&mut sweep, &w.nodes, 1);
    }
    d.finish(sweep);
    assert!(
        d.usage("late").is_some(),
        "the late node's heartbeat was forgotten"
    );
    // And a node gone from the state is forgotten by the next look at every node.
    w.nodes.remove("a");
    d.step_down();
    d.become_leader(Instant::now());
    d.heartbeat(&named("a", NodeStatus::Healthy), None, Instant::now(), 2);
    let before = d.tracked.len();
    let mut sweep = d
        .begin_sweep(&w.nodes, &w.feed, Instant::now())
        .expect("leading");
    while !sweep.done() {
        d.look(&mut sweep, &w.nodes, 2);
    }
    d.finish(sweep);
    assert_eq!(before, 1);
    assert!(
        !d.tracked.contains_key("a"),
        "a node gone from the state is still tracked"
    );
}

/// The leader keeps usage samples encoded: what it answers about a node is the sample the
/// node sent, and free memory per node comes from the sample's memory fields.
#[tokio::test(start_paused = true)]
async fn samples_kept_encoded_answer_as_sent() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    let usage = pb::NodeUsage {
        memory_used_mb: 3_000,
        memory_total_mb: 8_000,
        gpus: vec![pb::GpuUsage {
            uuid: "GPU-0".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    d.heartbeat(&n, Some(usage.clone()), Instant::now(), 1);
    assert_eq!(d.usage("w1"), Some(usage.clone()), "the sample as sent");
    assert_eq!(d.free_memory().get("w1"), Some(&5_000), "total minus used");
    d.heartbeat(&n, None, Instant::now(), 2);
    assert_eq!(
        d.usage("w1"),
        Some(usage),
        "a heartbeat without a sample keeps the last one"
    );
    assert!(
        Sample::from_encoded(vec![0xff, 0xff]).is_err(),
        "bytes that are not a NodeUsage are refused"
    );
}
