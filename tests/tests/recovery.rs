//! Backup, restore and recovery from a lost quorum, with real processes: `dllm snapshot save`
//! on a loaded cluster and `--restore-from` into a new one gives back every node, model and
//! placement; a damaged or foreign file is refused and leaves the data directory empty; and
//! `--force-new-cluster` on the last survivor keeps everything it applied, takes new replicas
//! through AddReplica and refuses to run twice.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use std::sync::Arc;

use dllm_proto::pb;
use dllm_tests::{
    binary, clients, init_tracing,
    jepsen::{
        checks,
        history::{Event, NodeView, Op, Recorder, Ret},
    },
    join_request, member_ids, register_all, replica_status, wait_for, Cluster,
};
use tracing::info;

/// Liveness so slow that nodes registered without a worker stay `healthy` for the whole test,
/// so that neither cluster changes a status or a placement on its own while it is compared.
const NO_LIVENESS: &[&str] = &["--node-heartbeat-interval-ms", "3600000"];

/// Runs the `dllm` CLI against `endpoint`; its exit success, stdout and stderr.
fn dllm(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("dllm"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run dllm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn exec(addr: &str, command: &str, args: &[&str]) {
    let out = clients(addr)
        .await
        .tui
        .execute_command(pb::CommandRequest {
            requester_id: "test".into(),
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            options: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{command} {args:?}: {e}"))
        .into_inner();
    assert_eq!(out.exit_code, 0, "{command} {args:?}: {}", out.error);
}

/// The member node ids `addr` answers with (a linearizable read); `None` while it cannot.
async fn peers(addr: &str) -> Option<HashSet<String>> {
    let mut c = dllm_tests::Clients::over(dllm_tests::channel(addr).await.ok()?);
    let peers = c
        .node
        .get_peers(pb::PeersRequest {
            include_self: true,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner()
        .peers;
    Some(peers.into_iter().map(|n| n.node_id).collect())
}

/// Process ids of the final reads in a recorded history.
const FINAL: u64 = 1000;

/// Records `op` by `process` through replica slot `slot` and its result: an error is an
/// unknown outcome (`Info`), since a write that timed out may still take effect.
fn record(
    history: &Recorder,
    process: u64,
    slot: usize,
    op: Op,
    result: Result<Ret, tonic::Status>,
) {
    history.record(Event::Invoke {
        t_ns: history.now(),
        process,
        replica: slot,
        op,
    });
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

/// Every node (left ones too) and every model with its placement, through a linearizable read,
/// and the cluster id.
async fn cluster_info(addr: &str) -> pb::ClusterInfoResponse {
    clients(addr)
        .await
        .discovery
        .get_cluster_info(pb::ClusterInfoRequest::default())
        .await
        .unwrap_or_else(|e| panic!("GetClusterInfo on {addr}: {e}"))
        .into_inner()
}

/// Nodes, models (each with its node assignments) and placed layer ranges of a loaded
/// cluster: 30 nodes (one left, one draining) and three models, one of them pending.
async fn load(cluster: &Cluster, addr: &str) -> Vec<String> {
    let mut c = clients(addr).await;
    let nodes = register_all(&mut c, cluster, "n", 0..30).await;
    exec(
        addr,
        "model",
        &["add", "llama", "--layers", "80", "--size", "80G"],
    )
    .await;
    exec(
        addr,
        "model",
        &["add", "mistral", "--layers", "32", "--size", "14G"],
    )
    .await;
    exec(
        addr,
        "model",
        &["add", "huge", "--layers", "400", "--size", "40T"],
    )
    .await;
    exec(addr, "leave", &["n7"]).await;
    exec(addr, "drain", &["n8"]).await;
    nodes
}

fn assert_same_state(saved: &pb::ClusterInfoResponse, restored: &pb::ClusterInfoResponse) {
    assert_eq!(
        saved.nodes.len(),
        restored.nodes.len(),
        "the same number of nodes"
    );
    for (s, r) in saved.nodes.iter().zip(&restored.nodes) {
        assert_eq!(s, r, "node {} is restored as it was saved", s.node_id);
    }
    assert_eq!(saved.models, restored.models, "every model and placement");
}

/// A snapshot saved with `dllm snapshot save` (through a follower) from a loaded cluster and
/// restored with `--restore-from` into a new three-replica cluster gives back every node (its
/// status, resources, last registration), every model and every placement, under a new
/// cluster id; a write made after the save is not in it; and a restart of a restored replica
/// that still names the file starts from its data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_restores_every_node_model_and_placement() {
    init_tracing();
    let source = Cluster::start(3, NO_LIVENESS);
    let leader = source.wait_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    info!("--- load the cluster");
    load(&source, &source.addr(leader)).await;
    let saved = cluster_info(&source.addr(leader)).await;
    let placed = saved
        .models
        .iter()
        .filter(|m| m.placement_status == "placed");
    assert_eq!(placed.count(), 2, "two models placed: {:?}", saved.models);

    info!("--- dllm snapshot save through follower {follower}");
    // Outside the source cluster's folder, which goes with it.
    let backups = tempfile::tempdir().expect("temp dir");
    let file = backups.path().join("backup.snap");
    let file_arg = file.to_str().expect("utf-8");
    let (ok, out, err) = dllm(&source.addr(follower), &["snapshot", "save", file_arg]);
    assert!(ok, "snapshot save: {out}{err}");
    assert!(
        out.contains("30 nodes, 3 models") && out.contains("sha256"),
        "the CLI says what it saved: {out}"
    );
    let (ok, out, err) = dllm(&source.addr(follower), &["snapshot", "status", file_arg]);
    assert!(
        ok && out.starts_with("verified"),
        "snapshot status: {out}{err}"
    );
    info!("--- a write after the save");
    let mut c = clients(&source.addr(leader)).await;
    register_all(&mut c, &source, "after-", 0..1).await;
    drop(source);

    info!("--- restore into a new cluster");
    let restore = ["--restore-from", file_arg];
    let args: Vec<&str> = NO_LIVENESS.iter().copied().chain(restore).collect();
    let mut restored = Cluster::start(3, &args);
    restored.wait_leader(&[1, 2, 3]).await;
    let info = cluster_info(&restored.addr(3)).await;
    assert_same_state(&saved, &info);
    assert!(
        !info.nodes.iter().any(|n| n.node_id == "after-0"),
        "a write after the save is not in the snapshot"
    );
    let new_id = wait_for("the new cluster's id", Duration::from_secs(10), || async {
        let id = cluster_info(&restored.addr(1)).await.cluster_id;
        (!id.is_empty()).then_some(id)
    })
    .await;
    assert_ne!(
        new_id, saved.cluster_id,
        "a restored cluster is a new cluster"
    );

    info!("--- restart replica 2 with the same --restore-from");
    restored.replica(2).kill();
    restored.restart(2);
    restored.wait_up(2).await;
    let again = cluster_info(&restored.addr(2)).await;
    assert_same_state(&saved, &again);
    assert!(
        restored
            .replica(2)
            .log_tail()
            .contains("restored from this file before"),
        "the restart goes on from the data directory:\n{}",
        restored.logs()
    );
    info!("--- the restored cluster takes writes");
    let mut c = clients(&restored.addr(1)).await;
    register_all(&mut c, &restored, "new-", 0..5).await;
}

/// Starts one replica with `--restore-from file`, waits for it to exit and returns its log;
/// asserts that it failed and that its data directory holds nothing.
async fn refused(file: &Path) -> String {
    let file = file.to_str().expect("utf-8");
    let mut cluster = Cluster::start(1, &["--restore-from", file]);
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
    let log = std::fs::read_to_string(&cluster.replica(1).log).expect("log");
    assert!(
        !status.success(),
        "a refused restore exits non-zero:\n{log}"
    );
    let data_dir = cluster.replica(1).data_dir.clone();
    let empty = std::fs::read_dir(&data_dir).map_or(true, |mut d| d.next().is_none());
    assert!(empty, "{} is left empty:\n{log}", data_dir.display());
    log
}

/// A snapshot file with one byte flipped, cut short, written in another format version, or
/// not a snapshot file at all is refused with a message naming the file and the damage, and
/// the replica's data directory stays empty; `dllm snapshot status` refuses the damaged file
/// too; and a good file is refused on a data directory that holds a store, which then still
/// starts with everything it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_foreign_snapshot_file_is_refused_and_loads_nothing() {
    init_tracing();
    let mut source = Cluster::start(1, NO_LIVENESS);
    source.wait_leader(&[1]).await;
    let mut c = clients(&source.addr(1)).await;
    let nodes = register_all(&mut c, &source, "n", 0..10).await;
    let good = source.dir().join("good.snap");
    let (ok, out, err) = dllm(
        &source.addr(1),
        &["snapshot", "save", good.to_str().unwrap()],
    );
    assert!(ok, "snapshot save: {out}{err}");
    let bytes = std::fs::read(&good).expect("the saved file");
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, content: &[u8]| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let mut version = bytes.clone();
    version[8..12].copy_from_slice(&9u32.to_le_bytes());
    let cases = [
        (write("flipped.snap", &flipped), "damaged: its SHA-256"),
        (
            write("short.snap", &bytes[..bytes.len() - 100]),
            "truncated",
        ),
        (
            write("version.snap", &version),
            "format version 9 is not supported",
        ),
        (
            write("foreign.snap", b"{\"not\": \"a snapshot\"}"),
            "not a dllm snapshot file",
        ),
    ];
    for (path, says) in &cases {
        info!("--- restore from {}", path.display());
        let log = refused(path).await;
        let expected = format!("--restore-from {}", path.display());
        assert!(
            log.contains(&expected) && log.contains(says),
            "the refusal names the file and says {says:?}:\n{log}"
        );
    }
    let (ok, out, err) = dllm(
        &source.addr(1),
        &["snapshot", "status", cases[0].0.to_str().unwrap()],
    );
    assert!(
        !ok && err.contains("SHA-256"),
        "status refuses a damaged file: {out}{err}"
    );

    info!("--- a good file on a data directory that holds a store");
    assert!(source.replica(1).terminate().success(), "stops cleanly");
    source.restart_with(1, &["--restore-from", good.to_str().unwrap()]);
    wait_for(
        "the replica to refuse and exit",
        Duration::from_secs(30),
        || {
            let running = source.replica(1).is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    let log = source.replica(1).log_tail();
    assert!(
        log.contains("is not empty"),
        "refused, naming the directory:\n{log}"
    );
    source.restart(1);
    source.wait_leader(&[1]).await;
    let have = member_ids(&source.addr(1)).await;
    assert_eq!(have, nodes.into_iter().collect(), "the store is as it was");
}

/// Two of three replicas lose their data directories. The third, started with
/// `--force-new-cluster`, leads a cluster of one that holds every write it had applied (all
/// acknowledged writes, through snapshot and log); two new, empty replicas join through
/// AddReplica and hold the same; the survivor can then be lost too without losing anything,
/// and the Jepsen no-lost-writes checker passes on a history of concurrent writes recorded
/// before the loss, read back through the new replicas; and a restart that still says
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
                    let result = c.discovery.register_with_cluster(request).await;
                    record(&history, slot, slot as usize, op, result.map(|_| Ret::Done));
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
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
            let result = c
                .node
                .get_node_info(pb::NodeInfoRequest {
                    node_id: node.clone(),
                })
                .await
                .map(|r| Ret::Node {
                    node: r.into_inner().node.map(|n| NodeView {
                        port: n.port as u32,
                        left: n.status == "left",
                    }),
                });
            record(
                &history,
                FINAL + slot,
                slot as usize,
                Op::ReadNode { node },
                result,
            );
        }
    }
    let verdict = checks::lost_writes(&history.events(), FINAL);
    assert!(verdict.valid, "{}", verdict.detail);
    assert!(
        verdict.detail.starts_with("20 keys"),
        "every key was checked: {}",
        verdict.detail
    );

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
