//! `dllm snapshot save` and `--restore-from`: every node, model and placement comes back, and
//! a damaged or foreign file loads nothing.

use super::*;

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
