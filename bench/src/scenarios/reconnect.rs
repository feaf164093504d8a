//! A reconnect storm: `workers` simulated workers, each on a connection of its own, all
//! reconnect at once (as after a network blip) and send one heartbeat. Measured: how long
//! until every one of them has been answered, the latency of connect + first heartbeat, and
//! the replicas' CPU. Under `--tls` each connection is a full TLS handshake with a client
//! certificate the replica verifies (the bench's admin certificate: one per simulated worker
//! would cost the load generator a certificate each), and each worker's first heartbeat
//! carries its own token, which the replica verifies once and then caches.

use std::{sync::Arc, time::Duration};

use dllm_proto::pb::{self, discovery_service_client::DiscoveryServiceClient};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{
    common::{as_worker, channel, leader, registration},
    stats::{round, Latencies},
};

/// Runs the scenario.
pub async fn run(workers: usize) -> anyhow::Result<Value> {
    let cluster = crate::common::start_cluster();
    leader(&cluster).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    println!("reconnect storm: registering {workers} workers ...");
    let shared: Vec<_> = addrs.iter().map(|a| channel(a)).collect();
    let ids: Vec<String> = (0..workers).map(|i| format!("rs-{i:06}")).collect();
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(64, |(i, id)| {
            let mut c = DiscoveryServiceClient::new(shared[i % shared.len()].clone());
            async move {
                for _ in 0..5 {
                    if c.register_with_cluster(as_worker(id, registration(id)))
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                panic!("cannot register {id}");
            }
        })
        .await;
    let pids: Vec<u32> = cluster.replicas.values().filter_map(|r| r.pid()).collect();
    let cpu = |pids: &[u32]| -> f64 { pids.iter().map(|&p| crate::procfs::cpu_seconds(p)).sum() };

    println!(
        "reconnect storm: {workers} workers reconnect at once ({}) ...",
        if crate::common::tls() {
            "TLS"
        } else {
            "plaintext"
        }
    );
    let before = cpu(&pids);
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Barrier::new(workers));
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (addr, id, gate) = (addrs[i % addrs.len()].clone(), id.clone(), gate.clone());
            tokio::spawn(async move {
                // A fresh channel: a new TCP connection (and TLS handshake) per worker.
                let mut client = DiscoveryServiceClient::new(channel(&addr));
                gate.wait().await;
                let t = Instant::now();
                for _ in 0..20 {
                    let request = as_worker(
                        &id,
                        pb::HeartbeatRequest {
                            node_id: id.clone(),
                            usage: None,
                        },
                    );
                    if client.heartbeat(request).await.is_ok() {
                        return Some(t.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None
            })
        })
        .collect();
    let mut latencies = Latencies::default();
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Some(d) => latencies.push(d),
            None => failed += 1,
        }
    }
    let all_answered = start.elapsed();
    let server_cpu = cpu(&pids) - before;
    println!(
        "{:>8} {:>8} {:>12} {:>9} {:>9} {:>9} {:>12}",
        "workers", "failed", "all answered", "p50 ms", "p99 ms", "max ms", "server CPU s"
    );
    println!(
        "{:>8} {:>8} {:>11.2}s {:>9.1} {:>9.1} {:>9.1} {:>12.2}",
        workers,
        failed,
        all_answered.as_secs_f64(),
        latencies.quantile_ms(0.5),
        latencies.quantile_ms(0.99),
        latencies.quantile_ms(1.0),
        server_cpu
    );
    Ok(json!({
        "scenario": "reconnect-storm",
        "tls": crate::common::tls(),
        "workers": workers,
        "failed": failed,
        "all_answered_s": round(all_answered.as_secs_f64()),
        "connect_and_first_heartbeat": latencies.summary(),
        "server_cpu_s": round(server_cpu),
    }))
}
