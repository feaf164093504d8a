//! The failure detector's state machine, driven with paused tokio time.

use super::*;
use crate::state::Resources;

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
    d.heartbeat(&n, None, Instant::now(), 1);

    advance(2.0 + 2.9).await; // grace 2 s, then 2.9 s of silence
    assert!(d.sweep([&n], Instant::now()).is_empty(), "not yet");
    advance(0.2).await;
    let c = d.sweep([&n], Instant::now());
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].from, c[0].to),
        (NodeStatus::Healthy, NodeStatus::Unhealthy)
    );
    assert!(
        d.sweep([&n], Instant::now()).is_empty(),
        "pending: not proposed twice"
    );
    n.status = NodeStatus::Unhealthy; // the transition applied

    advance(7.0).await;
    let c = d.sweep([&n], Instant::now());
    assert_eq!(
        (c[0].from, c[0].to),
        (NodeStatus::Unhealthy, NodeStatus::Offline)
    );
    n.status = NodeStatus::Offline;
    assert!(
        d.sweep([&n], Instant::now()).is_empty(),
        "offline stays offline while silent"
    );

    d.heartbeat(&n, None, Instant::now(), 2);
    let back = d.sweep([&n], Instant::now());
    assert_eq!(
        (back[0].from, back[0].to),
        (NodeStatus::Offline, NodeStatus::Healthy)
    );
    d.heartbeat(&n, None, Instant::now(), 3);
    assert!(
        d.sweep([&n], Instant::now()).is_empty(),
        "pending: not proposed twice"
    );
}

/// A new leader counts no silence during its grace period, however long the node had been
/// silent before, and then gives it the full threshold.
#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_a_grace_period() {
    let mut d = Detector::new(config());
    let n = node(NodeStatus::Healthy, 1);
    advance(100.0).await;
    d.become_leader(Instant::now());
    assert!(
        d.sweep([&n], Instant::now()).is_empty(),
        "first sighting starts the clock"
    );
    advance(2.0 + 2.9).await;
    assert!(
        d.sweep([&n], Instant::now()).is_empty(),
        "grace plus threshold not yet over"
    );
    advance(0.2).await;
    assert_eq!(d.sweep([&n], Instant::now()).len(), 1);
}

/// Steady heartbeats never cause a transition.
#[tokio::test(start_paused = true)]
async fn steady_heartbeats_change_nothing() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    for _ in 0..100 {
        advance(1.0).await;
        d.heartbeat(&n, None, Instant::now(), 0);
        assert!(d.sweep([&n], Instant::now()).is_empty());
    }
}

/// A re-registration (new generation) restarts the clock.
#[tokio::test(start_paused = true)]
async fn re_registration_restarts_the_clock() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Healthy, 1);
    d.sweep([&n], Instant::now());
    advance(4.5).await;
    let again = node(NodeStatus::Healthy, 2);
    assert!(
        d.sweep([&again], Instant::now()).is_empty(),
        "new generation, fresh clock"
    );
    advance(3.1).await;
    assert_eq!(d.sweep([&again], Instant::now())[0].generation, 2);
}

/// After a failover an offline node is not brought back by the grace period: only a
/// heartbeat heard by this leader heals it.
#[tokio::test(start_paused = true)]
async fn only_a_heartbeat_heals_an_offline_node() {
    let mut d = Detector::new(config());
    d.become_leader(Instant::now());
    let n = node(NodeStatus::Offline, 1);
    for _ in 0..10 {
        assert!(d.sweep([&n], Instant::now()).is_empty());
        advance(0.5).await;
    }
    d.heartbeat(&n, None, Instant::now(), 9);
    assert_eq!(d.sweep([&n], Instant::now())[0].to, NodeStatus::Healthy);
}

/// A replica that is not leading proposes nothing, and stepping down forgets usage.
#[tokio::test(start_paused = true)]
async fn followers_propose_nothing() {
    let mut d = Detector::new(config());
    let n = node(NodeStatus::Healthy, 1);
    advance(60.0).await;
    assert!(d.sweep([&n], Instant::now()).is_empty());
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
    d.sweep([&n], Instant::now());
    advance(6.0).await;
    let c = d.sweep([&n], Instant::now());
    assert_eq!(c.len(), 1);
    d.abandon(&c);
    assert_eq!(d.sweep([&n], Instant::now()).len(), 1);
}
