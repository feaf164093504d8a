//! `--force-new-cluster` on the last survivor of a lost quorum.

use super::*;

/// Process ids of the final reads in a recorded history.
const FINAL: u64 = 1000;

/// Runs `call`, the operation `op` of `process` through replica slot `slot`, recording its
/// invocation before and its completion after: an error is an unknown outcome (`Info`), since
/// a write that failed that way may still take effect.
async fn recorded(
    history: &Recorder,
    process: u64,
    slot: usize,
    op: Op,
    call: impl std::future::Future<Output = Result<Ret, tonic::Status>>,
) {
    history.record(Event::Invoke {
        t_ns: history.now(),
        process,
        replica: slot,
        op,
    });
    let result = call.await;
    let t_ns = history.now();
    history.record(match result {
        Ok(ret) => Event::Ok { t_ns, process, ret },
        Err(e) => Event::Info {
            t_ns,
            process,
            error: e.to_string(),
        },
    });
}

/// Two of three replicas lose their data directories. The third, started with
/// `--force-new-cluster`, leads a cluster of one that holds every write it had applied (all
/// acknowledged writes, through snapshot and log); two new, empty replicas join through
/// AddReplica and hold the same; the survivor can then be lost too without losing anything,
/// and the Jepsen no-lost-writes and linearizability checkers pass on a history of
/// concurrent writes recorded before the loss, read back through the new replicas; and a restart that still says
/// `--force-new-cluster` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_keeps_everything_the_survivor_applied() {
    init_tracing();
    let args: Vec<&str> = NO_LIVENESS
        .iter()
        .copied()
        .chain(["--snapshot-logs", "40"])
        .collect();
    let mut cluster = Cluster::start(3, &args);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let survivor = if leader == 3 { 2 } else { 3 };
    let mut c = clients(&cluster.addr(leader)).await;
    info!("--- 150 acknowledged registrations and a model");
    let acked: HashSet<String> = register_all(&mut c, &cluster, "n", 0..150)
        .await
        .into_iter()
        .collect();
    exec(
        &cluster.addr(leader),
        "model",
        &["add", "llama", "--layers", "80", "--size", "80G"],
    )
    .await;
    info!("--- a recorded history: three writers, one per replica, re-registering 20 nodes");
    let history =
        Arc::new(Recorder::create(&cluster.dir().join("history.jsonl")).expect("history"));
    let writers: Vec<_> = (1..=3u64)
        .map(|slot| {
            let (history, addr) = (history.clone(), cluster.addr(slot));
            tokio::spawn(async move {
                let mut c = clients(&addr).await;
                for i in 0..40u32 {
                    let node = format!("jk{}", (i * 3 + slot as u32) % 20);
                    let port = slot as u32 * 1000 + i + 1;
                    let mut request = join_request(&node, 1);
                    request.port = port as i32;
                    let op = Op::Register { node, port };
                    let call = c.discovery.register_with_cluster(request);
                    let call = async { call.await.map(|_| Ret::Done) };
                    recorded(&history, slot, slot as usize, op, call).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    // One last write of each key, alone, so that the checker has a value to expect for all.
    let mut c = clients(&cluster.addr(survivor)).await;
    for k in 0..20u32 {
        let (node, port) = (format!("jk{k}"), 9000 + k);
        let mut request = join_request(&node, 1);
        request.port = port as i32;
        let call = c.discovery.register_with_cluster(request);
        let call = async { call.await.map(|_| Ret::Done) };
        recorded(
            &history,
            4,
            survivor as usize,
            Op::Register { node, port },
            call,
        )
        .await;
    }
    let before = cluster_info(&cluster.addr(survivor)).await;
    let applied = replica_status(&cluster.addr(survivor))
        .await
        .expect("status")
        .applied_index;

    // The survivor stops cleanly: a replica may apply an entry a moment before its own flush
    // of it completes (the entry is already durable on the quorum that committed it), so a
    // SIGKILL could take that moment's entries from its disk, and the property here is about
    // what its data directory holds.
    info!("--- stop the survivor {survivor}; SIGKILL the others and delete their data");
    assert!(
        cluster.replica(survivor).terminate().success(),
        "stops cleanly"
    );
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.replica(id).kill();
    }
    for id in (1..=3).filter(|id| *id != survivor) {
        std::fs::remove_dir_all(&cluster.replica(id).data_dir).expect("delete the data dir");
    }
    info!("--- restart {survivor} with --force-new-cluster");
    cluster.restart_with(survivor, &["--force-new-cluster"]);
    cluster.wait_leader(&[survivor]).await;
    let status = replica_status(&cluster.addr(survivor))
        .await
        .expect("status");
    assert_eq!(status.replicas.len(), 1, "a cluster of one: {status:?}");
    assert!(
        status.applied_index > applied,
        "{status:?} applied past {applied:?}"
    );
    let have = member_ids(&cluster.addr(survivor)).await;
    let lost: Vec<&String> = acked.iter().filter(|id| !have.contains(*id)).collect();
    assert!(lost.is_empty(), "the survivor lost {lost:?}");
    let after = cluster_info(&cluster.addr(survivor)).await;
    assert_same_state(&before, &after);
    assert_eq!(
        after.cluster_id, before.cluster_id,
        "the same cluster, recovered"
    );

    info!("--- add two new replicas");
    for id in [4, 5] {
        let addr = cluster.start_joiner(id);
        clients(&cluster.addr(survivor))
            .await
            .admin
            .add_replica(pb::AddReplicaRequest { id, address: addr })
            .await
            .unwrap_or_else(|e| panic!("add replica {id}: {e}\n{}", cluster.logs()));
    }
    let addr4 = cluster.addr(4);
    wait_for(
        "replica 4 to see three voters",
        Duration::from_secs(30),
        || {
            let addr = addr4.clone();
            async move {
                let status = replica_status(&addr).await.ok()?;
                let voters = status
                    .replicas
                    .iter()
                    .filter(|r| r.role != "learner")
                    .count();
                (voters == 3).then_some(())
            }
        },
    )
    .await;

    info!("--- lose the survivor too: replicas 4 and 5 hold everything");
    cluster.replica(survivor).kill();
    cluster.wait_leader(&[4, 5]).await;
    for id in [4, 5] {
        let info = cluster_info(&cluster.addr(id)).await;
        assert_same_state(&before, &info);
    }
    info!("--- final reads of the recorded keys through 4 and 5; the no-lost-writes checker");
    for slot in [4u64, 5] {
        let mut c = clients(&cluster.addr(slot)).await;
        for k in 0..20 {
            let node = format!("jk{k}");
            let call = c.node.get_node_info(pb::NodeInfoRequest {
                node_id: node.clone(),
            });
            let call = async {
                call.await.map(|r| Ret::Node {
                    node: r.into_inner().node.map(|n| NodeView {
                        port: n.port as u32,
                        left: n.status == "left",
                    }),
                })
            };
            let op = Op::ReadNode { node };
            recorded(&history, FINAL + slot, slot as usize, op, call).await;
        }
    }
    let verdict = checks::lost_writes(&history.events(), FINAL);
    assert!(verdict.valid, "{}", verdict.detail);
    assert!(
        verdict.detail.starts_with("20 keys"),
        "every key was checked: {}",
        verdict.detail
    );
    let verdict = checks::linearizability(&history.events());
    assert!(verdict.valid, "{}", verdict.detail);

    info!("--- a restart of {survivor} that still says --force-new-cluster is refused");
    cluster.restart_with(survivor, &["--force-new-cluster"]);
    wait_for(
        "the replica to refuse and exit",
        Duration::from_secs(30),
        || {
            let running = cluster.replica(survivor).is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    let log = cluster.replica(survivor).log_tail();
    assert!(
        log.contains("already forced into a new cluster"),
        "refused:\n{log}"
    );
    info!("--- without the flag it rejoins as a voter");
    cluster.restart(survivor);
    let addr = cluster.addr(survivor);
    wait_for("the survivor to catch up", Duration::from_secs(30), || {
        let (addr, acked) = (addr.clone(), &acked);
        async move { acked.is_subset(&peers(&addr).await?).then_some(()) }
    })
    .await;
}

/// `--force-new-cluster` on a data directory with no store is refused, naming it, and creates
/// no store there (a start without the flag still finds a fresh replica's directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_on_an_empty_data_directory_is_refused() {
    init_tracing();
    let mut cluster = Cluster::start(1, &["--force-new-cluster"]);
    wait_for(
        "the replica to refuse and exit",
        Duration::from_secs(30),
        || {
            let running = cluster.replica(1).is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    let status = cluster.replica(1).exit_status().expect("exited");
    let log = cluster.replica(1).log_tail();
    assert!(!status.success(), "exits non-zero:\n{log}");
    assert!(
        log.contains("holds no Raft state to recover"),
        "says why:\n{log}"
    );
    let store = cluster.replica(1).data_dir.join("raft");
    assert!(
        !store.exists(),
        "no store was created at {}",
        store.display()
    );
}
