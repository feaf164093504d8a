//! `recovery`: a replica whose log has E applied entries (snapshots on) is restarted; the
//! time from its start to serving a linearizable read. Also the disk use per replica.

use std::time::{Duration, Instant};

use dllm_proto::pb::{self, discovery_service_client::DiscoveryServiceClient};
use dllm_tests::wait_for;
use serde_json::{json, Value};

use crate::{
    common::{channel, leader, status},
    procfs,
    scenarios::writes,
    stats::round,
};

/// Concurrent writers while the history is built.
const CLIENTS: usize = 64;

/// Runs the scenario: `entries` writes (re-registrations of 1,000 nodes, so the log grows
/// and the state stays small), then a restart of one follower.
pub async fn run(entries: u64) -> anyhow::Result<Value> {
    // Every write its own log entry (group commit off), so many concurrent clients build the
    // history quickly and the entry count is what the scenario says.
    let mut cluster = crate::common::start_cluster_with(&["--max-writes-per-entry=1"]);
    let (leader_id, leader_addr) = leader(&cluster).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    println!("recovery: writing {entries} entries ...");
    let start = Instant::now();
    let channels: Vec<_> = addrs.iter().map(|a| channel(a)).collect();
    loop {
        let applied = status(&leader_addr)
            .await
            .and_then(|s| s.applied_index)
            .unwrap_or(0);
        if applied >= entries {
            break;
        }
        let channels = channels.clone();
        writes::drive(CLIENTS, Duration::from_secs(5), move |c, seq| {
            let mut client = DiscoveryServiceClient::new(channels[c % channels.len()].clone());
            let id = format!("r-{}", (c as u64 * 7919 + seq) % 1000);
            async move {
                client
                    .register_with_cluster(crate::common::as_worker(
                        &id,
                        crate::common::registration(&id),
                    ))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        print!(
            "\r  {applied} applied after {:.0}s",
            start.elapsed().as_secs_f64()
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    println!();
    let follower = (1..=3).find(|id| *id != leader_id).expect("a follower");
    let before = status(&cluster.addr(follower)).await.expect("status");
    let disk: Vec<u64> = (1..=3)
        .map(|id| procfs::disk_bytes(&cluster.dir().join(format!("cp{id}"))))
        .collect();
    let addr = cluster.addr(follower);
    let status_ = cluster.replica(follower).terminate();
    assert!(status_.success(), "clean stop");
    cluster.restart(follower);
    let restarted = Instant::now();
    wait_for(
        "a linearizable read on the restarted replica",
        Duration::from_secs(120),
        || {
            let addr = addr.clone();
            async move {
                DiscoveryServiceClient::new(channel(&addr))
                    .get_cluster_info(pb::ClusterInfoRequest::default())
                    .await
                    .ok()
                    .map(|_| ())
            }
        },
    )
    .await;
    let secs = restarted.elapsed().as_secs_f64();
    let mb: Vec<f64> = disk.iter().map(|b| round(*b as f64 / 1048576.0)).collect();
    println!(
        "recovery: {} applied entries (snapshot at {:?}), restart to linearizable read {:.0} ms; disk per replica {mb:?} MiB",
        before.applied_index.unwrap_or(0),
        before.snapshot_index,
        secs * 1000.0
    );
    Ok(
        json!({"scenario": "recovery", "applied_entries": before.applied_index,
              "snapshot_index": before.snapshot_index, "restart_to_read_ms": round(secs * 1000.0),
              "disk_mb_per_replica": mb}),
    )
}
