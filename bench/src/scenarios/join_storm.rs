//! `join-storm`: a cluster holding N nodes, and C clients re-registering J of them at once,
//! each written as the API reference's Python example is: gzip on (requests compressed,
//! answers accepted compressed) and no `skip_existing_nodes`, so every answer carries the
//! member list as the replica gives it (at most `--max-existing-nodes`; the same scenario with
//! `--replica-arg=--max-existing-nodes=0` measures the whole list).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use dllm_proto::pb::discovery_service_client::DiscoveryServiceClient;
use serde_json::{json, Value};
use tonic::codec::CompressionEncoding;

use crate::{
    common::{as_worker, channel, leader, registration},
    procfs,
    stats::{round, Latencies},
};

fn id(i: usize) -> String {
    format!("j-{i:06}")
}

/// Runs the scenario.
pub async fn run(nodes: usize, joins: usize, clients: usize) -> anyhow::Result<Value> {
    anyhow::ensure!(
        nodes > 0 && clients > 0,
        "--nodes and --clients must be at least 1"
    );
    // Registered nodes never heartbeat here: thresholds beyond the run keep them members.
    let cluster = crate::common::start_cluster_with(&[
        "--unhealthy-after=1000000",
        "--offline-after=2000000",
    ]);
    leader(&cluster).await;
    let channels: Vec<_> = (1..=3).map(|r| channel(&cluster.addr(r))).collect();
    println!("join-storm: registering {nodes} nodes ...");
    crate::common::register_nodes(&channels, nodes, id).await;
    let pids: Vec<u32> = (1..=3).filter_map(|r| cluster.replicas[&r].pid()).collect();
    let cpu = || -> f64 { pids.iter().map(|&p| procfs::cpu_seconds(p)).sum() };
    println!("join-storm: {joins} re-registrations by {clients} gzip clients ...");
    let next = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(Mutex::new(None::<(usize, String, usize)>));
    let (cpu_before, start) = (cpu(), Instant::now());
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let mut client = DiscoveryServiceClient::new(channels[c % 3].clone())
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(256 * 1024 * 1024);
            let (next, answer) = (next.clone(), answer.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Latencies::default(), 0u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= joins {
                        return (lat, errors);
                    }
                    let node = id(i % nodes);
                    let mut request = registration(&node);
                    request.skip_existing_nodes = false;
                    let t = Instant::now();
                    match client
                        .register_with_cluster(as_worker(&node, request))
                        .await
                    {
                        Ok(r) => {
                            lat.push(t.elapsed());
                            let r = r.into_inner();
                            let mut first = answer.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| {
                                use prost::Message;
                                (r.existing_nodes.len(), r.message.clone(), r.encoded_len())
                            });
                        }
                        Err(_) => errors += 1,
                    }
                }
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Latencies::default(), 0);
    for task in tasks {
        let (lat, err) = task.await?;
        latencies.extend(lat);
        errors += err;
    }
    let (secs, cpu_secs) = (start.elapsed().as_secs_f64(), cpu() - cpu_before);
    let done = joins as u64 - errors;
    let (listed, message, bytes) = answer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    let per_join_ms = if done > 0 {
        cpu_secs * 1e3 / done as f64
    } else {
        0.0
    };
    let summary = latencies.summary();
    println!(
        "join-storm: {nodes} nodes, {done} joins ({errors} failed) in {secs:.1} s = {:.0} joins/s, p50 {} ms, p99 {} ms; replica CPU {per_join_ms:.2} ms per join (3 replicas); an answer lists {listed} nodes, {bytes} bytes before gzip: {message:?}",
        done as f64 / secs,
        summary["p50_ms"],
        summary["p99_ms"],
    );
    Ok(json!({
        "scenario": "join-storm", "nodes": nodes, "joins": joins, "clients": clients,
        "errors": errors, "seconds": round(secs), "joins_per_sec": round(done as f64 / secs),
        "latency": summary, "replica_cpu_ms_per_join": round(per_join_ms),
        "existing_nodes_per_answer": listed, "answer_bytes_before_gzip": bytes,
        "answer_message": message,
    }))
}
