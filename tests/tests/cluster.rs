//! Three real `dllm-control-plane` processes on loopback: election, forwarding, linearizable
//! reads on every replica, failover, restarts, membership changes and the reference's calls.

use dllm_proto::pb;
use dllm_tests::{
    clients, init_tracing, join_request, member_ids, register_all, replica_status, wait_for,
    Cluster,
};
use tonic::Code;
use tracing::info;

/// Ids of the replicas other than `leader` among `ids`.
fn others(ids: &[u64], leader: u64) -> Vec<u64> {
    ids.iter().copied().filter(|id| *id != leader).collect()
}

/// A leader is elected; a write through a follower is visible on every replica at once
/// (reads are linearizable); the reference's calls answer as documented, with gzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_are_visible_everywhere_and_reference_calls_answer() {
    init_tracing();
    let cluster = Cluster::start(3, &[]);
    info!("--- wait for a leader");
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = others(&[1, 2, 3], leader)[0];

    info!("--- register through follower {follower}");
    let mut c = clients(&cluster.addr(follower)).await;
    let joined = c
        .discovery
        .register_with_cluster(join_request("agent-1", 2))
        .await
        .expect("register through a follower")
        .into_inner();
    assert!(joined.success);
    assert_eq!(joined.message, "registered");
    assert!(
        !joined.cluster_id.is_empty(),
        "a cluster id is generated at formation"
    );
    assert!(
        joined.existing_nodes.is_empty(),
        "agent-1 is the first node"
    );

    let again = c
        .discovery
        .register_with_cluster(join_request("agent-1", 2))
        .await
        .expect("re-register")
        .into_inner();
    assert_eq!(again.message, "re-registered", "registration is idempotent");
    assert_eq!(
        again.cluster_id, joined.cluster_id,
        "the cluster id is stable"
    );

    info!("--- every replica answers the write at once");
    for id in 1..=3 {
        let mut c = clients(&cluster.addr(id)).await;
        let node = c
            .node
            .get_node_info(pb::NodeInfoRequest {
                node_id: "agent-1".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetNodeInfo on replica {id}: {e}"))
            .into_inner();
        assert!(node.success);
        let info = node.node.expect("node");
        assert_eq!(info.status, "healthy", "replica {id}");
        assert_eq!(
            info.resources.expect("resources").gpus.len(),
            2,
            "replica {id}"
        );
        assert!(
            info.last_seen > 1_600_000_000_000,
            "last_seen is Unix milliseconds"
        );
    }

    info!("--- the reference's calls");
    let mut c = clients(&cluster.addr(leader)).await;
    let second = c
        .discovery
        .register_with_cluster(join_request("agent-2", 0))
        .await
        .expect("register agent-2")
        .into_inner();
    let existing: Vec<_> = second
        .existing_nodes
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    assert_eq!(
        existing,
        ["agent-1"],
        "existing_nodes lists the other members"
    );

    let discovered = c
        .discovery
        .discover_nodes(pb::DiscoveryRequest {
            requester_id: "tui-client-1".into(),
            known_nodes: vec![],
            filter: None,
            ..Default::default()
        })
        .await
        .expect("DiscoverNodes")
        .into_inner();
    assert!(discovered.success);
    assert_eq!(discovered.discovered_nodes.len(), 2);
    let gpu_nodes = c
        .discovery
        .discover_nodes(pb::DiscoveryRequest {
            requester_id: "agent-2".into(),
            known_nodes: vec![],
            filter: Some(pb::ResourceFilter {
                min_gpus: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("DiscoverNodes with a filter")
        .into_inner();
    let ids: Vec<_> = gpu_nodes
        .discovered_nodes
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["agent-1"],
        "filter by GPUs; the requester is left out"
    );

    let peers = c
        .node
        .get_peers(pb::PeersRequest {
            requester_id: "agent-1".into(),
            include_self: false,
        })
        .await
        .expect("GetPeers")
        .into_inner();
    assert_eq!(peers.total_count, 1);
    assert_eq!(peers.peers[0].node_id, "agent-2");

    let info = c
        .discovery
        .get_cluster_info(pb::ClusterInfoRequest::default())
        .await
        .expect("GetClusterInfo")
        .into_inner();
    assert_eq!(info.cluster_id, joined.cluster_id);
    let m = info.metrics.expect("metrics");
    assert_eq!((m.total_nodes, m.healthy_nodes, m.total_gpus), (2, 2, 2));
    assert_eq!(m.total_memory_mb, 2 * 65536);
    assert_eq!(m.total_layers, 80);

    let err = c
        .node
        .get_metrics(pb::MetricsRequest {
            node_id: "agent-1".into(),
            metric_names: vec![],
        })
        .await
        .expect_err("no heartbeat yet");
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "metrics come from heartbeats: {err}"
    );
    let beat = c
        .discovery
        .heartbeat(pb::HeartbeatRequest {
            node_id: "agent-1".into(),
            usage: Some(pb::NodeUsage {
                timestamp: 1234,
                memory_total_mb: 65536,
                memory_used_mb: 1536,
                gpus: (0..2)
                    .map(|i| pb::GpuUsage {
                        index: i,
                        uuid: format!("GPU-agent-1-{i}"),
                        memory_used_mb: 100 * i as i64,
                        memory_total_mb: 81559,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        })
        .await
        .expect("Heartbeat")
        .into_inner();
    assert_eq!(beat.status, "healthy");
    assert_eq!(beat.cluster_id, joined.cluster_id);
    let mut other = clients(&cluster.addr(follower)).await;
    let metrics = other
        .node
        .get_metrics(pb::MetricsRequest {
            node_id: "agent-1".into(),
            metric_names: vec!["gpu_memory_used_mb".into()],
        })
        .await
        .expect("GetMetrics on a follower, from the leader's last heartbeat")
        .into_inner();
    assert_eq!(metrics.timestamp, 1234, "the sample's timestamp");
    assert_eq!(metrics.metrics.len(), 2, "one series per GPU");
    assert_eq!(metrics.metrics[1].labels["gpu"], "1");
    assert_eq!(metrics.metrics[1].value, 100.0);
    let info = c
        .discovery
        .get_cluster_info(pb::ClusterInfoRequest::default())
        .await
        .expect("GetClusterInfo")
        .into_inner();
    assert_eq!(
        info.metrics.expect("metrics").available_memory_mb,
        (65536 - 1536) + 65536,
        "available memory uses reported usage where there is some"
    );

    let left = c
        .discovery
        .leave_cluster(pb::ClusterLeaveRequest {
            node_id: "agent-2".into(),
            reason: "maintenance".into(),
        })
        .await
        .expect("LeaveCluster")
        .into_inner();
    assert!(left.success);
    let list = c
        .tui
        .get_node_list(pb::NodeListRequest {
            requester_id: "t".into(),
            include_metrics: true,
            filter: Some(pb::NodeFilter {
                statuses: vec!["left".into()],
                resources: None,
            }),
            ..Default::default()
        })
        .await
        .expect("GetNodeList")
        .into_inner();
    assert_eq!(list.nodes.len(), 1);
    assert_eq!(list.nodes[0].node_id, "agent-2");
    assert_eq!(
        list.cluster_metrics.expect("metrics").total_nodes,
        1,
        "a node that left is not counted"
    );
    let models = c
        .tui
        .get_model_list(pb::ModelListRequest::default())
        .await
        .expect("GetModelList")
        .into_inner();
    assert!(models.models.is_empty());

    let mut updates = c
        .tui
        .stream_updates(pb::UpdateStreamRequest {
            requester_id: "t".into(),
            interval_seconds: 1,
            update_types: vec!["nodes".into(), "metrics".into()],
            deltas: false,
        })
        .await
        .expect("StreamUpdates")
        .into_inner();
    let first = updates.message().await.expect("stream").expect("an update");
    assert_eq!(first.update_type, "nodes");
    assert_eq!(first.nodes.len(), 2);
    let second = updates.message().await.expect("stream").expect("an update");
    assert_eq!(second.update_type, "metrics");
    drop(updates);

    let out = c
        .tui
        .execute_command(pb::CommandRequest {
            command: "members".into(),
            ..Default::default()
        })
        .await
        .expect("ExecuteCommand")
        .into_inner();
    assert_eq!(out.exit_code, 0, "{}", out.error);
    assert!(out.output.contains("leader"), "{}", out.output);
    let unknown = c
        .tui
        .execute_command(pb::CommandRequest {
            command: "frobnicate".into(),
            ..Default::default()
        })
        .await
        .expect("ExecuteCommand")
        .into_inner();
    assert_eq!(unknown.exit_code, 2);
    assert!(!unknown.success);

    info!("--- health and reflection");
    let ch = dllm_tests::channel(&cluster.addr(follower))
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "distributed_llm.NodeService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    for services in [
        list_services_v1(ch.clone()).await,
        list_services_v1alpha(ch).await,
    ] {
        for want in [
            "distributed_llm.NodeService",
            "distributed_llm.DiscoveryService",
            "distributed_llm.TUIService",
        ] {
            assert!(services.iter().any(|s| s == want), "{want} in {services:?}");
        }
    }
}

/// `list_services` over one reflection protocol version: the two versions' messages have
/// the same shape in different modules.
macro_rules! list_services {
    ($name:ident, $version:ident) => {
        async fn $name(ch: tonic::transport::Channel) -> Vec<String> {
            use tonic_reflection::pb::$version::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream = ServerReflectionClient::new(ch)
                .server_reflection_info(tokio_stream::iter([req]))
                .await
                .expect(concat!("reflection ", stringify!($version)))
                .into_inner();
            match stream
                .message()
                .await
                .expect("answer")
                .expect("a message")
                .message_response
            {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    l.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
    };
}

list_services!(list_services_v1, v1);
list_services!(list_services_v1alpha, v1alpha);

/// Bad input gets a precise status code naming the field; unknown things are NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_status_codes() {
    init_tracing();
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let mut c = clients(&cluster.addr(1)).await;

    let register = |mutate: fn(&mut pb::ClusterJoinRequest)| {
        let mut req = join_request("agent-x", 1);
        mutate(&mut req);
        req
    };
    let cases: Vec<(pb::ClusterJoinRequest, &str)> = vec![
        (register(|r| r.node_id.clear()), "node_id"),
        (register(|r| r.node_id = "n".repeat(10_000)), "node_id"),
        (register(|r| r.node_id = "bad id".into()), "node_id"),
        (register(|r| r.address = "h".repeat(1000)), "address"),
        (register(|r| r.port = 0), "port"),
        (register(|r| r.resources = None), "resources"),
        (
            register(|r| r.resources.as_mut().unwrap().cpu_cores = -4),
            "resources.cpu_cores",
        ),
    ];
    for (req, field) in cases {
        let err = c
            .discovery
            .register_with_cluster(req)
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err}");
        assert!(
            err.message().starts_with(field),
            "{:?} names {field}",
            err.message()
        );
    }

    let err = c
        .node
        .get_node_info(pb::NodeInfoRequest {
            node_id: "nobody".into(),
        })
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = c
        .node
        .get_node_info(pb::NodeInfoRequest::default())
        .await
        .expect_err("empty node id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = c
        .discovery
        .leave_cluster(pb::ClusterLeaveRequest {
            node_id: "nobody".into(),
            reason: String::new(),
        })
        .await
        .expect_err("unknown node leaves");
    assert_eq!(err.code(), Code::NotFound, "{err}");

    c.discovery
        .register_with_cluster(join_request("agent-y", 1))
        .await
        .expect("register");
    let err = c
        .node
        .get_metrics(pb::MetricsRequest {
            node_id: "agent-y".into(),
            metric_names: vec!["bogus".into()],
        })
        .await
        .expect_err("unknown metric");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("memory_total_mb"),
        "lists the valid names: {err}"
    );
    let err = c
        .node
        .stream_metrics(pb::MetricsStreamRequest {
            node_id: "agent-y".into(),
            interval_seconds: 0,
            metric_names: vec![],
        })
        .await
        .expect_err("interval 0");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("interval_seconds"), "{err}");
    let err = c
        .tui
        .stream_updates(pb::UpdateStreamRequest {
            interval_seconds: 1,
            update_types: vec!["gossip".into()],
            ..Default::default()
        })
        .await
        .expect_err("unknown update type");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .admin
        .remove_replica(pb::RemoveReplicaRequest { id: 99 })
        .await
        .expect_err("unknown replica");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = c
        .admin
        .add_replica(pb::AddReplicaRequest {
            id: 0,
            address: "127.0.0.1:1".into(),
        })
        .await
        .expect_err("id 0");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

/// The leader is SIGKILLed while writes go on: a new leader takes writes, nothing
/// acknowledged is lost, and the old leader catches up when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_nothing_acknowledged() {
    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let survivors = others(&[1, 2, 3], leader);

    info!("--- writes through a follower, then kill leader {leader}");
    let mut c = clients(&cluster.addr(survivors[0])).await;
    let mut acked = register_all(&mut c, &cluster, "before-", 0..20).await;
    cluster.replica(leader).kill();

    info!("--- a new leader among {survivors:?} takes writes");
    let new_leader = cluster.wait_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    acked.extend(register_all(&mut c, &cluster, "after-", 0..20).await);

    info!("--- the old leader comes back and has everything");
    cluster.restart(leader);
    for id in [leader, survivors[0], survivors[1]] {
        let have = member_ids(&cluster.wait_up(id).await).await;
        for want in &acked {
            assert!(have.contains(want), "replica {id} lost acknowledged {want}");
        }
    }
}

/// A leader that crashes and comes back after another replica was elected rejoins as a
/// follower: the new leader keeps leading, in the same term. Checked with the old leader the
/// one with the highest id, so the vote its restart saves (it must not resume leading, see
/// vendor/openraft/DLLM-PATCH.md) has to stay below the new leader's although its id is
/// greater.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_old_leader_does_not_depose_the_new_one() {
    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    let mut leader = cluster.wait_leader(&[1, 2, 3]).await;
    info!("--- fail leaders over until replica 3 leads");
    for _ in 0..30 {
        if leader == 3 {
            break;
        }
        cluster.replica(leader).kill();
        cluster.wait_leader(&others(&[1, 2, 3], leader)).await;
        cluster.restart(leader);
        cluster.wait_up(leader).await;
        leader = cluster.wait_leader(&[1, 2, 3]).await;
    }
    assert_eq!(leader, 3, "replica 3 never led in 30 failovers");

    info!("--- kill leader 3; a lower id takes over");
    cluster.replica(3).kill();
    let new_leader = cluster.wait_leader(&[1, 2]).await;
    let term = replica_status(&cluster.addr(new_leader))
        .await
        .expect("status")
        .term;
    info!("--- restart 3: it follows {new_leader} in term {term}");
    cluster.restart(3);
    let addr = cluster.wait_up(3).await;
    wait_for(
        "replica 3 to follow the new leader",
        std::time::Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move {
                let s = replica_status(&addr).await.ok()?;
                (s.leader_id == new_leader).then_some(())
            }
        },
    )
    .await;
    let mut c = clients(&addr).await;
    register_all(&mut c, &cluster, "after-restart-", 0..10).await;
    for id in 1..=3 {
        let s = replica_status(&cluster.addr(id)).await.expect("status");
        assert_eq!(
            (s.leader_id, s.term),
            (new_leader, term),
            "replica {id}: the leader and term after replica 3 came back\n{}",
            cluster.logs()
        );
    }
}

/// All three replicas stop with SIGTERM (exit 0) and start again with the state as
/// acknowledged: same cluster id, same nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_state() {
    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let mut c = clients(&cluster.addr(2)).await;
    let mut cluster_id = String::new();
    for i in 0..10 {
        cluster_id = c
            .discovery
            .register_with_cluster(join_request(&format!("n{i}"), 1))
            .await
            .expect("register")
            .into_inner()
            .cluster_id;
    }
    c.discovery
        .leave_cluster(pb::ClusterLeaveRequest {
            node_id: "n3".into(),
            reason: "test".into(),
        })
        .await
        .expect("leave");
    let before = c
        .discovery
        .get_cluster_info(pb::ClusterInfoRequest::default())
        .await
        .expect("info")
        .into_inner();

    info!("--- SIGTERM every replica");
    for id in 1..=3 {
        let status = cluster.replica(id).terminate();
        assert!(
            status.success(),
            "replica {id} exits 0 on SIGTERM, got {status}"
        );
        // A follower serves its leader's AppendEntries stream, which never ends on its own:
        // shutdown must end it rather than wait out the drain timeout.
        let log = std::fs::read_to_string(&cluster.replica(id).log).unwrap_or_default();
        assert!(
            !log.contains("requests still in flight after the drain timeout"),
            "replica {id} waited out the drain timeout:\n{log}"
        );
    }
    info!("--- restart every replica");
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_leader(&[1, 2, 3]).await;
    for id in 1..=3 {
        let mut c = clients(&cluster.addr(id)).await;
        let after = c
            .discovery
            .get_cluster_info(pb::ClusterInfoRequest::default())
            .await
            .expect("info after restart")
            .into_inner();
        assert_eq!(
            after.cluster_id, cluster_id,
            "replica {id} keeps the cluster id"
        );
        assert_eq!(
            after.nodes, before.nodes,
            "replica {id} keeps every node as acknowledged"
        );
    }
}

/// A fourth replica joins (learner, then voter) and serves linearizable reads; then a founding
/// replica is removed and the cluster keeps taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_replica_joins_and_one_is_removed() {
    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = others(&[1, 2, 3], leader)[0];
    let mut c = clients(&cluster.addr(follower)).await;
    c.discovery
        .register_with_cluster(join_request("early", 1))
        .await
        .expect("register");

    info!("--- start replica 4 and add it through follower {follower}");
    let addr4 = cluster.start_joiner(4);
    cluster.wait_up(4).await;
    let status = c
        .admin
        .add_replica(pb::AddReplicaRequest {
            id: 4,
            address: addr4.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("AddReplica: {e}\n{}", cluster.logs()))
        .into_inner();
    let ids: Vec<u64> = status.replicas.iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert!(
        status.replicas.iter().all(|r| r.role != "learner"),
        "4 was promoted: {status:?}"
    );

    let mut c4 = clients(&addr4).await;
    let node = c4
        .node
        .get_node_info(pb::NodeInfoRequest {
            node_id: "early".into(),
        })
        .await
        .expect("replica 4 serves reads")
        .into_inner();
    assert_eq!(node.node.expect("node").node_id, "early");

    info!("--- remove a founding replica that is not the leader");
    let removed = others(&[1, 2, 3], leader)[1];
    let status = c4
        .admin
        .remove_replica(pb::RemoveReplicaRequest { id: removed })
        .await
        .expect("RemoveReplica")
        .into_inner();
    assert!(
        status.replicas.iter().all(|r| r.id != removed),
        "{removed} is gone: {status:?}"
    );
    cluster.replica(removed).kill();
    c4.discovery
        .register_with_cluster(join_request("late", 1))
        .await
        .expect("writes go on with the new membership");
    let survivors: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .collect();
    cluster.wait_leader(&survivors).await;
}

/// With two of three replicas down there is no quorum: writes and reads fail with
/// UNAVAILABLE within the request budget instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quorum_is_unavailable_not_a_hang() {
    init_tracing();
    let mut cluster = Cluster::start(3, &["--request-timeout-ms", "1500"]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let survivor = others(&[1, 2, 3], leader)[0];
    for id in others(&[1, 2, 3], survivor) {
        cluster.replica(id).kill();
    }
    let mut c = clients(&cluster.addr(survivor)).await;
    let err = c
        .discovery
        .register_with_cluster(join_request("lonely", 1))
        .await
        .expect_err("no quorum for a write");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let err = c
        .node
        .get_peers(pb::PeersRequest::default())
        .await
        .expect_err("no quorum for a read");
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    info!("--- grpc.health.v1 says NOT_SERVING once the replica knows no leader");
    let ch = dllm_tests::channel(&cluster.addr(survivor))
        .await
        .expect("connect");
    dllm_tests::wait_for("NOT_SERVING", std::time::Duration::from_secs(30), || {
        let ch = ch.clone();
        async move {
            let status = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
                .then_some(())
        }
    })
    .await;
}

/// A join answer lists at most --max-existing-nodes other nodes and says so when there are
/// more; DiscoverNodes pages through all of them, each exactly once, in node_id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_answers_are_bounded_and_discovery_pages() {
    init_tracing();
    let cluster = Cluster::start(3, &["--max-existing-nodes", "3"]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let mut c = clients(&cluster.addr(2)).await;
    let small = c
        .discovery
        .register_with_cluster(join_request("n0", 1))
        .await
        .expect("join")
        .into_inner();
    assert_eq!(small.message, "registered", "nothing to leave out yet");
    register_all(&mut c, &cluster, "n", 1..7).await;
    let join = c
        .discovery
        .register_with_cluster(join_request("n7", 1))
        .await
        .expect("join")
        .into_inner();
    let listed: Vec<&str> = join
        .existing_nodes
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    assert_eq!(listed, ["n0", "n1", "n2"], "the first by node_id");
    assert!(
        join.message.contains("first 3 of 7") && join.message.contains("DiscoverNodes"),
        "{}",
        join.message
    );

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .discovery
            .discover_nodes(pb::DiscoveryRequest {
                limit: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("DiscoverNodes page")
            .into_inner();
        assert!(page.discovered_nodes.len() <= 3);
        seen.extend(page.discovered_nodes.into_iter().map(|n| n.node_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let all: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    assert_eq!(seen, all, "every node once, in order");
    let bad = c
        .tui
        .get_node_list(pb::NodeListRequest {
            limit: -1,
            ..Default::default()
        })
        .await
        .expect_err("a negative limit");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("limit"), "{}", bad.message());
}
