//! Real `dllm-worker` processes against a real 3-replica control plane: joining with their
//! resources, failure detection, rejoining, graceful leave, heartbeats that do not touch the
//! Raft log and that the leader sends on to followers, and a leader failover that marks
//! nobody offline.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use dllm_proto::pb::{self, node_service_client::NodeServiceClient};
use dllm_tests::{channel, clients, init_tracing, replica_status, wait_for, Cluster};
use tonic::Code;
use tracing::info;

const H100: &str = "2x81559:NVIDIA H100 80GB HBM3";

async fn node(addr: &str, node_id: &str) -> Option<pb::NodeInfo> {
    let mut c = clients(addr).await;
    c.node
        .get_node_info(pb::NodeInfoRequest {
            node_id: node_id.to_string(),
        })
        .await
        .ok()?
        .into_inner()
        .node
}

async fn wait_status(addr: &str, node_id: &str, status: &str) -> pb::NodeInfo {
    wait_for(
        &format!("{node_id} to be {status}"),
        Duration::from_secs(30),
        || async move { node(addr, node_id).await.filter(|n| n.status == status) },
    )
    .await
}

/// A worker joins and shows healthy with its simulated GPUs; its own API serves live
/// metrics; SIGKILLed it becomes unhealthy, then offline; restarted it is healthy again under
/// the same node id; SIGTERMed it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lifecycle_join_fail_rejoin_leave() {
    init_tracing();
    let cluster = Cluster::start(3, dllm_tests::FAST_LIVENESS);
    cluster.wait_leader(&[1, 2, 3]).await;
    let cp = cluster.addr(2);

    info!("--- a worker joins");
    let mut worker = cluster.start_worker("gpu-1", H100, &[]);
    let joined = wait_status(&cp, "gpu-1", "healthy").await;
    let gpus = joined.resources.expect("resources").gpus;
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!(gpus[0].memory_mb, 81559);

    info!("--- the worker's own API");
    let mut w = NodeServiceClient::new(channel(&worker.addr).await.expect("worker API"));
    let me = w
        .get_node_info(pb::NodeInfoRequest::default())
        .await
        .expect("worker GetNodeInfo")
        .into_inner();
    assert_eq!(me.node.expect("node").node_id, "gpu-1");
    let live = w
        .get_metrics(pb::MetricsRequest {
            node_id: "gpu-1".into(),
            metric_names: vec!["memory_total_mb".into(), "gpu_memory_total_mb".into()],
        })
        .await
        .expect("worker GetMetrics")
        .into_inner();
    assert_eq!(live.metrics.len(), 3, "host memory plus one series per GPU");
    assert!(live.metrics[0].value > 0.0, "real host memory");
    let err = w
        .get_metrics(pb::MetricsRequest {
            node_id: "gpu-1".into(),
            metric_names: vec!["vibes".into()],
        })
        .await
        .expect_err("unknown metric");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("gpu_utilization_percent"), "{err}");
    let err = w
        .stream_metrics(pb::MetricsStreamRequest {
            node_id: "gpu-1".into(),
            interval_seconds: -1,
            metric_names: vec![],
        })
        .await
        .expect_err("negative interval");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut stream = w
        .stream_metrics(pb::MetricsStreamRequest {
            node_id: "gpu-1".into(),
            interval_seconds: 1,
            metric_names: vec!["uptime_seconds".into()],
        })
        .await
        .expect("StreamMetrics")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("a sample");
    let second = stream.message().await.expect("stream").expect("a sample");
    assert!(second.timestamp > first.timestamp, "samples are live");
    drop(stream);

    info!("--- the control plane serves the worker's metrics from its heartbeats");
    let cp_metrics = wait_for("metrics from a heartbeat", Duration::from_secs(10), || {
        let cp = cp.clone();
        async move {
            let mut c = clients(&cp).await;
            c.node
                .get_metrics(pb::MetricsRequest {
                    node_id: "gpu-1".into(),
                    metric_names: vec!["gpu_memory_total_mb".into()],
                })
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    assert_eq!(cp_metrics.metrics.len(), 2);

    info!("--- SIGKILL the worker: unhealthy, then offline");
    worker.process.kill();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let offline = wait_for("gpu-1 to be offline", Duration::from_secs(30), || {
        let (cp, seen) = (cp.clone(), seen.clone());
        async move {
            let n = node(&cp, "gpu-1").await?;
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&n.status) {
                seen.push(n.status.clone());
            }
            (n.status == "offline").then_some(n)
        }
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        ["healthy", "unhealthy", "offline"],
        "the node walks healthy -> unhealthy -> offline"
    );
    assert!(
        offline.last_seen > 0,
        "last_seen says when it was last heard from"
    );

    info!("--- restart the worker: healthy again under the same id");
    let mut worker = cluster.start_worker("gpu-1", H100, &[]);
    wait_status(&cp, "gpu-1", "healthy").await;

    info!("--- SIGTERM: the worker leaves");
    let status = worker.process.terminate();
    assert!(status.success(), "worker exits 0 on SIGTERM: {status}");
    wait_status(&cp, "gpu-1", "left").await;
}

/// Without an NVIDIA driver the worker starts and reports no GPUs (with one, it reports the
/// real ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_without_nvml_reports_no_gpus() {
    init_tracing();
    let cluster = Cluster::start(3, dllm_tests::FAST_LIVENESS);
    cluster.wait_leader(&[1, 2, 3]).await;
    let _worker = cluster.start_worker("cpu-1", "", &[]);
    let n = wait_status(&cluster.addr(1), "cpu-1", "healthy").await;
    let r = n.resources.expect("resources");
    let has_driver = std::path::Path::new("/dev/nvidiactl").exists();
    if has_driver {
        assert!(
            !r.gpus.is_empty(),
            "NVML present: the real GPUs are reported"
        );
    } else {
        assert!(r.gpus.is_empty(), "no NVML: no GPUs, and no crash");
    }
    assert!(
        r.cpu_cores >= 1 && r.memory_mb > 0 && r.max_layers >= 1,
        "{r:?}"
    );
}

/// While nothing changes, heartbeats write nothing to the Raft log: the leader's last log
/// index stays put across many heartbeat rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_do_not_grow_the_raft_log() {
    init_tracing();
    let cluster = Cluster::start(3, dllm_tests::FAST_LIVENESS);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let _workers: Vec<_> = (0..3)
        .map(|i| cluster.start_worker(&format!("w{i}"), H100, &[]))
        .collect();
    let cp = cluster.addr(leader);
    for i in 0..3 {
        wait_status(&cp, &format!("w{i}"), "healthy").await;
    }
    let sample_time = |cp: String| async move {
        let mut c = clients(&cp).await;
        c.node
            .get_metrics(pb::MetricsRequest {
                node_id: "w0".into(),
                metric_names: vec!["uptime_seconds".into()],
            })
            .await
            .ok()
            .map(|m| m.into_inner().timestamp)
    };
    let t0 = wait_for("a heartbeat sample", Duration::from_secs(10), || {
        sample_time(cp.clone())
    })
    .await;
    let before = replica_status(&cp).await.expect("status");
    info!(last_log_index = ?before.last_log_index, "--- wait for 15 more heartbeats");
    wait_for("15 heartbeat intervals", Duration::from_secs(30), || {
        let cp = cp.clone();
        async move { sample_time(cp).await.filter(|t| *t >= t0 + 15 * 200) }
    })
    .await;
    let after = replica_status(&cp).await.expect("status");
    assert_eq!(
        after.leader_id, before.leader_id,
        "no leader change muddies the count"
    );
    assert_eq!(
        after.last_log_index, before.last_log_index,
        "heartbeats wrote to the Raft log"
    );
}

/// How many `method` calls the replica whose `/metrics` page is at `metrics_addr` answered
/// OK.
async fn answered_ok(metrics_addr: &str, method: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(metrics_addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).await.ok()?;
    let method = format!("grpc_method=\"{method}\"");
    let count = page
        .lines()
        .find(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains(&method)
                && l.contains("grpc_code=\"OK\"")
        })
        .map_or(Some(0), |l| l.rsplit(' ').next()?.parse().ok());
    count
}

/// The leader's count of heartbeats taken straight from workers (answered OK).
async fn direct_heartbeats(metrics_addr: &str) -> Option<u64> {
    answered_ok(metrics_addr, "Heartbeat").await
}

/// `method` calls answered OK by all of `cluster`'s replicas together.
async fn answered_by_all(cluster: &Cluster, method: &str) -> u64 {
    let mut sum = 0;
    for r in cluster.replicas.values() {
        let addr = r.metrics.as_deref().expect("a metrics port");
        sum += answered_ok(addr, method)
            .await
            .expect("a replica's metrics");
    }
    sum
}

/// A worker asks the control plane for its peers only when someone asks the worker: its
/// heartbeats fetch no member list (at 10,000 workers a refresh every ten heartbeats was
/// 1,000 fleet-sized answers a second). Asked, it answers every other member, itself when
/// `include_self`, and concurrent callers share one fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fetches_its_peers_only_when_asked() {
    init_tracing();
    let cluster = Cluster::start_with_metrics(3, dllm_tests::FAST_LIVENESS);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let (w1, _w2) = (
        cluster.start_worker("p-1", H100, &[]),
        cluster.start_worker("p-2", H100, &[]),
    );
    let cp = cluster.addr(leader);
    wait_status(&cp, "p-1", "healthy").await;
    wait_status(&cp, "p-2", "healthy").await;
    let beats = answered_by_all(&cluster, "Heartbeat").await;
    wait_for(
        "twenty more heartbeats from each worker",
        Duration::from_secs(30),
        || {
            let cluster = &cluster;
            async move { (answered_by_all(cluster, "Heartbeat").await >= beats + 40).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        answered_by_all(&cluster, "DiscoverNodes").await,
        0,
        "heartbeating workers listed the fleet with nobody asking"
    );

    let mut w = NodeServiceClient::new(channel(&w1.addr).await.expect("worker API"));
    let ids = |peers: pb::PeersResponse| -> Vec<String> {
        assert_eq!(peers.total_count as usize, peers.peers.len());
        peers.peers.into_iter().map(|n| n.node_id).collect()
    };
    // Asked twice at once: one fetch (of one page) serves both.
    let (mut w2, include_self) = (
        w.clone(),
        pb::PeersRequest {
            include_self: true,
            ..Default::default()
        },
    );
    let (others, all) = tokio::join!(
        w.get_peers(pb::PeersRequest::default()),
        w2.get_peers(include_self)
    );
    assert_eq!(
        ids(others.expect("the worker's GetPeers").into_inner()),
        ["p-2"]
    );
    assert_eq!(
        ids(all.expect("the worker's GetPeers").into_inner()),
        ["p-1", "p-2"]
    );
    assert_eq!(
        answered_by_all(&cluster, "DiscoverNodes").await,
        1,
        "two asks at once, one fetch of one page"
    );
}

/// A worker that heartbeats the leader is answered and sent to a follower (the answer names
/// one), so once the fleet has settled the leader takes no heartbeat straight from a worker:
/// every one reaches it in a follower's batch. Twelve workers start at the seed their node
/// id hashes to (about a third at the leader); all stay healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_sends_heartbeating_workers_to_followers() {
    init_tracing();
    let cluster = Cluster::start_with_metrics(3, dllm_tests::FAST_LIVENESS);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let metrics = cluster.replicas[&leader]
        .metrics
        .clone()
        .expect("a metrics port");
    let _workers: Vec<_> = (0..12)
        .map(|i| cluster.start_worker(&format!("w{i}"), H100, &[]))
        .collect();
    let cp = cluster.addr(leader);
    for i in 0..12 {
        wait_status(&cp, &format!("w{i}"), "healthy").await;
    }
    info!("--- settle: workers at the leader move to followers");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = direct_heartbeats(&metrics)
        .await
        .expect("the leader's metrics");
    info!(before, "--- 10 heartbeat intervals");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = direct_heartbeats(&metrics)
        .await
        .expect("the leader's metrics");
    assert_eq!(
        replica_status(&cp).await.ok().map(|s| s.leader_id),
        Some(leader),
        "no leader change muddies the count"
    );
    assert_eq!(
        after, before,
        "the leader still takes heartbeats straight from workers"
    );
    for i in 0..12 {
        let n = node(&cp, &format!("w{i}")).await.expect("registered");
        assert_eq!(n.status, "healthy", "w{i} stays healthy on a follower");
    }
}

/// The control-plane leader is SIGKILLed while 20 workers heartbeat: a new leader takes over
/// and no worker is ever marked offline because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_marks_no_worker_offline() {
    init_tracing();
    let mut cluster = Cluster::start(3, dllm_tests::FAST_LIVENESS);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let mut workers: Vec<_> = (0..20)
        .map(|i| cluster.start_worker(&format!("w{i:02}"), "1x24576:NVIDIA L4", &[]))
        .collect();
    let watch = cluster.addr(survivors[0]);
    let healthy = wait_for("20 healthy workers", Duration::from_secs(61), || {
        let watch = watch.clone();
        async move {
            let mut c = clients(&watch).await;
            let peers = c
                .node
                .get_peers(pb::PeersRequest::default())
                .await
                .ok()?
                .into_inner();
            (peers.peers.iter().filter(|n| n.status == "healthy").count() == 20).then_some(())
        }
    });
    if tokio::time::timeout(Duration::from_secs(60), healthy)
        .await
        .is_err()
    {
        // Say which workers are missing and why, not only that some are.
        let peers = clients(&watch)
            .await
            .node
            .get_peers(pb::PeersRequest::default())
            .await
            .map(|p| p.into_inner().peers);
        let seen: BTreeMap<String, String> = peers
            .iter()
            .flatten()
            .map(|n| (n.node_id.clone(), n.status.clone()))
            .collect();
        let mut report = format!(
            "not 20 healthy workers after 60 s; the cluster says {seen:?} ({:?})\n",
            peers.err()
        );
        for w in workers.iter_mut() {
            if seen.get(&w.node_id).map(String::as_str) != Some("healthy") {
                let running = w.process.is_running();
                report += &format!(
                    "--- {} (running: {running}):\n{}\n",
                    w.node_id,
                    w.process.log_tail()
                );
            }
        }
        panic!("{report}");
    }

    info!("--- watch every status while the leader dies");
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, Vec<String>>::new()));
    let watcher = {
        let (stop, statuses, watch) = (stop.clone(), statuses.clone(), watch.clone());
        tokio::spawn(async move {
            let mut c = clients(&watch).await;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(peers) = c.node.get_peers(pb::PeersRequest::default()).await {
                    let mut seen = statuses.lock().unwrap();
                    for n in peers.into_inner().peers {
                        let history = seen.entry(n.node_id).or_default();
                        if history.last() != Some(&n.status) {
                            history.push(n.status);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    cluster.replica(leader).kill();
    let new_leader = cluster.wait_leader(&survivors).await;
    info!(
        new_leader,
        "--- wait until the new leader has heard from every worker"
    );
    let addr = cluster.addr(new_leader);
    for w in &workers {
        wait_for(
            "a heartbeat at the new leader",
            Duration::from_secs(30),
            || {
                let (addr, id) = (addr.clone(), w.node_id.clone());
                async move {
                    let mut c = clients(&addr).await;
                    c.node
                        .get_metrics(pb::MetricsRequest {
                            node_id: id,
                            metric_names: vec!["uptime_seconds".into()],
                        })
                        .await
                        .ok()
                        .map(|_| ())
                }
            },
        )
        .await;
    }
    // Past the grace period plus the offline threshold, measured by heartbeats reaching the
    // new leader: another 2.6 s of samples.
    let t0 = {
        let mut c = clients(&addr).await;
        c.node
            .get_metrics(pb::MetricsRequest {
                node_id: "w00".into(),
                metric_names: vec![],
            })
            .await
            .expect("metrics")
            .into_inner()
            .timestamp
    };
    wait_for(
        "2.6 s of heartbeats at the new leader",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move {
                let mut c = clients(&addr).await;
                let t = c
                    .node
                    .get_metrics(pb::MetricsRequest {
                        node_id: "w00".into(),
                        metric_names: vec![],
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .timestamp;
                (t >= t0 + 2600).then_some(())
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
    let statuses = statuses.lock().unwrap();
    assert_eq!(statuses.len(), 20, "every worker was watched");
    for (id, history) in statuses.iter() {
        assert!(
            !history.iter().any(|s| s == "offline"),
            "{id} was marked offline by the failover: {history:?}"
        );
    }
    drop(workers);
}

/// A heartbeating worker's `last_seen` is its last heartbeat, not its registration, on every
/// replica and through every read that returns nodes (heartbeats are not in the Raft log:
/// replicas ask the leader for its last contact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_is_fresh_on_every_replica() {
    init_tracing();
    // One heartbeat a second (the replicas tell the worker so).
    let cluster = Cluster::start(3, &["--node-heartbeat-interval-ms", "1000"]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let _worker = cluster.start_worker("gpu-1", H100, &[]);
    let joined = wait_status(&cluster.addr(1), "gpu-1", "healthy").await;
    let interval_ms = 1000;
    let registered = joined.last_seen;
    // Until the registration is three intervals old, a registration-time `last_seen` would
    // still pass the check below.
    wait_for(
        "the registration to be three heartbeat intervals old",
        Duration::from_secs(10),
        || async move { (dllm_util::clock::now_ms() - registered > 3 * interval_ms).then_some(()) },
    )
    .await;
    for id in 1..=3 {
        let addr = cluster.addr(id);
        let mut c = clients(&addr).await;
        let by_info = node(&addr, "gpu-1").await.expect("GetNodeInfo").last_seen;
        let by_peers = c
            .node
            .get_peers(pb::PeersRequest::default())
            .await
            .expect("GetPeers")
            .into_inner()
            .peers;
        let by_list = c
            .tui
            .get_node_list(pb::NodeListRequest::default())
            .await
            .expect("GetNodeList")
            .into_inner()
            .nodes;
        let by_discovery = c
            .discovery
            .discover_nodes(pb::DiscoveryRequest::default())
            .await
            .expect("DiscoverNodes")
            .into_inner()
            .discovered_nodes;
        let seen: Vec<(&str, i64)> = [("GetNodeInfo", by_info)]
            .into_iter()
            .chain(by_peers.iter().map(|n| ("GetPeers", n.last_seen)))
            .chain(by_list.iter().map(|n| ("GetNodeList", n.last_seen)))
            .chain(by_discovery.iter().map(|n| ("DiscoverNodes", n.last_seen)))
            .collect();
        assert_eq!(seen.len(), 4, "replica {id}: {seen:?}");
        let now = dllm_util::clock::now_ms();
        for (read, last_seen) in seen {
            assert!(
                now - last_seen < 2 * interval_ms && last_seen > registered,
                "replica {id} {read}: last_seen {} ms old (registered {} ms ago)",
                now - last_seen,
                now - registered
            );
        }
    }
}
