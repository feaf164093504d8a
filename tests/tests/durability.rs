//! Crashes and snapshots with real processes: nothing acknowledged is lost when every replica
//! is SIGKILLed mid-write, and a follower whose log was purged past catches up by snapshot.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use dllm_proto::pb;
use dllm_tests::{
    clients, init_tracing, join_request, member_ids, register_all, replica_status, wait_for,
    Cluster,
};
use tracing::info;

/// Every replica is SIGKILLed while four clients write through different replicas. After a
/// restart, every registration that was acknowledged before the kill is there, on every
/// replica. Snapshots are taken every 100 entries so the restart goes through
/// snapshot-plus-log-tail recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_every_replica_mid_write_keeps_every_acknowledged_write() {
    init_tracing();
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "100"]);
    cluster.wait_leader(&[1, 2, 3]).await;

    info!("--- four writers, each through its own replica");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let addr = cluster.addr(w % 3 + 1);
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut c = clients(&addr).await;
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let id = format!("w{w}-{i}");
                match c
                    .discovery
                    .register_with_cluster(join_request(&id, 1))
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(id),
                    // After the kill every call fails; the outcome of those is unknown.
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("300 acknowledged writes", Duration::from_secs(120), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await;

    info!("--- SIGKILL every replica mid-write");
    for id in 1..=3 {
        cluster.replica(id).kill();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    info!(acked = acked.len(), "--- restart every replica");
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_leader(&[1, 2, 3]).await;
    let mut snapshots = 0;
    for id in 1..=3 {
        let have = member_ids(&cluster.addr(id)).await;
        let lost: Vec<&String> = acked.iter().filter(|id| !have.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "replica {id} lost acknowledged writes {lost:?}"
        );
        let status = replica_status(&cluster.addr(id)).await.expect("status");
        snapshots += status.snapshot_index.is_some() as usize;
    }
    assert!(
        snapshots > 0,
        "recovery went through a snapshot on at least one replica"
    );
}

/// A follower that was down while the leader snapshotted and purged its log past the
/// follower's last entry catches up by snapshot installation, then restarts from that
/// snapshot plus its log tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    init_tracing();
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "20"]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let lagging = if leader == 1 { 2 } else { 1 };
    let lagging_last = replica_status(&cluster.addr(lagging))
        .await
        .expect("status")
        .last_log_index;
    cluster.replica(lagging).kill();

    info!("--- 150 writes while replica {lagging} is down");
    let mut c = clients(&cluster.addr(leader)).await;
    for i in 0..150 {
        c.discovery
            .register_with_cluster(join_request(&format!("n{i}"), 1))
            .await
            .expect("register with two of three up");
    }
    let leader_addr = cluster.addr(leader);
    let purged = wait_for(
        "the leader to purge its log",
        Duration::from_secs(30),
        || {
            let addr = leader_addr.clone();
            async move {
                let s = replica_status(&addr).await.ok()?;
                s.purged_index.filter(|p| Some(*p) > lagging_last)
            }
        },
    )
    .await;
    info!(purged, ?lagging_last, "--- restart replica {lagging}");
    cluster.restart(lagging);
    let addr = cluster.addr(lagging);
    let check = |addr: String| async move {
        let mut c = clients(&addr).await;
        let peers = c
            .node
            .get_peers(pb::PeersRequest::default())
            .await
            .expect("GetPeers")
            .into_inner();
        assert_eq!(peers.total_count, 150, "the lagging replica has every node");
    };
    wait_for(
        "the lagging replica to answer",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move { replica_status(&addr).await.ok().map(|_| ()) }
        },
    )
    .await;
    check(addr.clone()).await;
    let status = replica_status(&addr).await.expect("status");
    assert!(
        status.snapshot_index.is_some(),
        "the lagging replica holds a snapshot: {status:?}"
    );

    info!("--- restart it again: snapshot plus log tail");
    cluster.replica(lagging).kill();
    cluster.restart(lagging);
    wait_for(
        "the replica to answer again",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move { replica_status(&addr).await.ok().map(|_| ()) }
        },
    )
    .await;
    check(addr).await;
}

/// A one-replica cluster commits only on its own flush (the leader is the whole quorum), which
/// the leader reports to Raft after the write, not before it replicates (vendor/openraft,
/// DLLM-PATCH.md): writes are still answered, and every acknowledged one survives a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_commits_on_its_own_flush_and_keeps_it_through_sigkill() {
    init_tracing();
    let mut cluster = Cluster::start(1, &[]);
    cluster.wait_leader(&[1]).await;
    let mut c = clients(&cluster.addr(1)).await;
    info!("--- writes on the lone leader (each must commit on its own flush)");
    let acked = register_all(&mut c, &cluster, "solo-", 0..50).await;
    info!("--- SIGKILL and restart");
    cluster.replica(1).kill();
    cluster.restart(1);
    let have = member_ids(&cluster.wait_up(1).await).await;
    for want in &acked {
        assert!(have.contains(want), "lost acknowledged {want}");
    }
    info!("--- and it takes writes again");
    let mut c = clients(&cluster.addr(1)).await;
    c.discovery
        .register_with_cluster(join_request("solo-after", 1))
        .await
        .expect("register after restart");
}

/// A leader replicates before its own flush returns, so a crash (power lost, not a SIGKILL,
/// which leaves the page cache) can leave it with a log that ends before entries that a
/// quorum of followers holds and that were acknowledged. Recreated here: the leader's last
/// five entries (and its record of their commit) are cut from its stopped store. When it
/// restarts it must not resume leading under its old vote, which would give new writes the
/// log ids of entries the followers already hold with other payloads: every replica ends with
/// every acknowledged write, before and after, and the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_unflushed_tail_does_not_reuse_its_log_ids() {
    use dllm_control_plane::{raft_types::TypeConfig, state::ClusterState};
    use openraft::storage::{RaftLogReader, RaftLogStorage};

    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    info!("--- 20 writes through leader {leader}, applied everywhere");
    let mut c = clients(&cluster.addr(leader)).await;
    let mut acked = register_all(&mut c, &cluster, "before-", 0..20).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    wait_for(
        "every replica to apply the same index",
        Duration::from_secs(20),
        || {
            let addrs = addrs.clone();
            async move {
                let mut applied = std::collections::BTreeSet::new();
                for addr in &addrs {
                    applied.insert(replica_status(addr).await.ok()?.applied_index?);
                }
                (applied.len() == 1).then_some(())
            }
        },
    )
    .await;
    info!("--- stop every replica; cut the last 5 entries from leader {leader}'s log");
    for id in 1..=3 {
        assert!(
            cluster.replica(id).terminate().success(),
            "replica {id} stops cleanly"
        );
    }
    {
        let dir = cluster.dir().join(format!("cp{leader}")).join("raft");
        let (mut log, _sm) = dllm_storage::open::<TypeConfig, ClusterState>(
            &dir,
            &dllm_storage::StoreOptions::default(),
        )
        .expect("open the stopped leader's store");
        let vote = log.read_vote().await.expect("vote").expect("a vote");
        assert!(
            vote.is_committed() && vote.leader_id().voted_for() == Some(leader),
            "the stopped leader's saved vote is its own leadership: {vote}"
        );
        let last = log
            .get_log_state()
            .await
            .expect("log state")
            .last_log_id
            .expect("entries");
        let cut_from = last.index - 4;
        let entries = log
            .try_get_log_entries(cut_from - 1..=cut_from)
            .await
            .expect("read entries");
        assert_eq!(entries.len(), 2, "entries {}..={cut_from}", cut_from - 1);
        // What survives a lost tail is a prefix: the record of their commit went with them.
        log.save_committed(Some(entries[0].log_id))
            .await
            .expect("committed");
        log.truncate(entries[1].log_id).await.expect("truncate");
        log.flush().await.expect("flush");
    }
    info!("--- restart all; writes after");
    for id in 1..=3 {
        cluster.restart(id);
    }
    let new_leader = cluster.wait_leader(&[1, 2, 3]).await;
    let mut c = clients(&cluster.addr(new_leader)).await;
    acked.extend(register_all(&mut c, &cluster, "after-", 0..10).await);
    info!("--- every replica has every acknowledged write");
    let want: std::collections::HashSet<String> = acked.iter().cloned().collect();
    for id in 1..=3 {
        let addr = cluster.wait_up(id).await;
        let have = member_ids(&addr).await;
        let missing: Vec<&String> = want.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "replica {id} (leader before: {leader}, after: {new_leader}) lacks acknowledged {missing:?}\n{}",
            cluster.logs()
        );
    }
}

/// A replica whose storage is damaged refuses to start, with a message that names what is
/// damaged; it never starts with an empty or shortened log (which could vote a stale node in
/// or lose acknowledged writes). Damaged here, each on a stopped follower of a cluster that
/// took writes: sled's database file `db` (overwritten; sled alone would open it as an empty
/// database) and the snapshot file (cut in half). The other two replicas keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_damaged_storage_refuses_to_start() {
    init_tracing();
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "20"]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let mut c = clients(&cluster.addr(leader)).await;
    register_all(&mut c, &cluster, "before-", 0..60).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let addr = cluster.addr(followers[0]);
    wait_for(
        "a follower to hold a snapshot",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move { replica_status(&addr).await.ok()?.snapshot_index.map(drop) }
        },
    )
    .await;
    let store = |id: u64| cluster.dir().join(format!("cp{id}")).join("raft");
    // (replica, what is damaged, its path, what the refusal must name)
    let damages = [
        (
            followers[0],
            "db",
            store(followers[0]).join("db"),
            store(followers[0]),
        ),
        (
            followers[1],
            "snapshot",
            store(followers[1]).join(dllm_storage::SNAPSHOT_FILE),
            store(followers[1]).join(dllm_storage::SNAPSHOT_FILE),
        ),
    ];
    for (id, what, path, named) in damages {
        info!(
            "--- stop replica {id}, damage its {what} ({})",
            path.display()
        );
        assert!(
            cluster.replica(id).terminate().success(),
            "replica {id} stops cleanly"
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let damaged = if what == "db" {
            vec![0xA5; bytes.len()]
        } else {
            bytes[..bytes.len() / 2].to_vec()
        };
        std::fs::write(&path, damaged).expect("damage");
        info!("--- restart replica {id}: it must refuse");
        let log_file = cluster.replica(id).log.clone();
        let before = std::fs::metadata(&log_file).map_or(0, |m| m.len() as usize);
        cluster.restart(id);
        wait_for(
            "the damaged replica to exit",
            Duration::from_secs(30),
            || {
                let running = cluster.replica(id).is_running();
                async move { (!running).then_some(()) }
            },
        )
        .await;
        // All this run wrote: a backtrace may follow the error.
        let log = std::fs::read(&log_file).expect("replica log");
        let log = String::from_utf8_lossy(&log[before..]);
        assert!(
            log.contains(&named.display().to_string()),
            "replica {id}'s refusal names {}:\n{log}",
            named.display()
        );
    }
}
