//! `heartbeats`: N simulated workers registered, then each heartbeating once per interval,
//! spread evenly over time, from this process over shared connections spread over all
//! replicas (as real workers spread themselves).
//! Reports achieved heartbeats/s, latency, leader CPU and RSS, false status transitions and
//! Raft log growth during the run.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dllm_proto::pb::{
    self, discovery_service_client::DiscoveryServiceClient, tui_service_client::TuiServiceClient,
};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::{
    common::{channel, leader, registration, status},
    procfs,
    stats::{round, Latencies},
};

/// Connections the simulated workers share, per replica.
const CHANNELS_PER_REPLICA: usize = 4;
/// Tasks that schedule heartbeats; each owns a slice of the workers.
const SENDERS: usize = 100;
/// Heartbeating before measuring.
const WARMUP: Duration = Duration::from_secs(5);
/// Most heartbeats outstanding at once (a stalled leader would otherwise pile them up).
const MAX_IN_FLIGHT: usize = 4096;

fn usage(i: usize) -> pb::NodeUsage {
    pb::NodeUsage {
        timestamp: 0,
        cpu_usage_percent: 12.5,
        memory_used_mb: 65536 + i as i64,
        memory_total_mb: 2 * 1024 * 1024,
        gpus: (0..8)
            .map(|g| pb::GpuUsage {
                index: g,
                uuid: format!("GPU-{g}"),
                utilization_percent: 80.0,
                memory_used_mb: 60000,
                memory_total_mb: 81559,
                temperature_celsius: 61.0,
            })
            .collect(),
        used_layers: 0,
        uptime_seconds: 1,
    }
}

/// Runs the scenario.
pub async fn run(workers: usize, duration: Duration) -> anyhow::Result<Value> {
    let cluster = crate::common::start_cluster();
    let (leader_id, _) = leader(&cluster).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    let channels: Vec<_> = addrs
        .iter()
        .flat_map(|a| (0..CHANNELS_PER_REPLICA).map(move |_| channel(a)))
        .collect();

    println!("heartbeats: registering {workers} workers ...");
    let ids: Vec<String> = (0..workers).map(|i| format!("hb-{i:06}")).collect();
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(64, |(i, id)| {
            let mut c = DiscoveryServiceClient::new(channels[i % channels.len()].clone());
            async move {
                for _ in 0..5 {
                    if c.register_with_cluster(crate::common::as_worker(id, registration(id)))
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

    let leader_addr = cluster.addr(leader_id);
    // Workers stay on the replica their node id picks (followers forward heartbeats to the
    // leader in batches), so the simulated fleet spreads over all replicas the same way.
    let hb_channels = channels.clone();
    let pid = cluster.replicas[&leader_id].pid().expect("leader runs");
    let follower_pids: Vec<u32> = cluster
        .replicas
        .values()
        .filter(|r| r.id != leader_id)
        .filter_map(|r| r.pid())
        .collect();

    // Watch for any node that stops being healthy while the run lasts.
    let not_healthy_seen = Arc::new(AtomicU64::new(0));
    let watch = {
        let (seen, addr) = (not_healthy_seen.clone(), leader_addr.clone());
        let end = Instant::now() + duration + WARMUP;
        tokio::spawn(async move {
            tokio::time::sleep(WARMUP).await;
            // Only the nodes that are not healthy come back, so this stays cheap at any size.
            let mut c = TuiServiceClient::new(channel(&addr));
            let request = pb::NodeListRequest {
                requester_id: "bench".into(),
                include_metrics: false,
                filter: Some(pb::NodeFilter {
                    statuses: vec!["unhealthy".into(), "offline".into()],
                    resources: None,
                }),
                ..Default::default()
            };
            while Instant::now() < end {
                if let Ok(list) = c.get_node_list(request.clone()).await {
                    seen.fetch_max(list.into_inner().nodes.len() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    println!(
        "heartbeats: {workers} workers, one heartbeat per second each, for {}s after a {}s warm-up ...",
        duration.as_secs(),
        WARMUP.as_secs()
    );
    // Measurements start after a warm-up in which every worker has heartbeated a few times
    // (nodes registered early were silent while the rest registered, and recover now).
    let total = duration + WARMUP;
    let measure_from = Instant::now() + WARMUP;
    let probe = {
        let (leader_addr, follower_pids) = (leader_addr.clone(), follower_pids.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let log = status(&leader_addr).await.and_then(|s| s.last_log_index);
            let cpu = procfs::cpu_seconds(pid);
            let followers: Vec<f64> = follower_pids
                .iter()
                .map(|p| procfs::cpu_seconds(*p))
                .collect();
            (log, cpu, followers, Instant::now())
        })
    };
    let interval = Duration::from_secs(1);
    let per_sender = workers.div_ceil(SENDERS);
    // Like real workers, a heartbeat does not wait for the previous one: each is sent on
    // schedule (at most MAX_IN_FLIGHT outstanding) and its latency recorded when it returns.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let tasks: Vec<_> = (0..SENDERS)
        .map(|s| {
            let mine: Vec<String> = ids
                .iter()
                .skip(s * per_sender)
                .take(per_sender)
                .cloned()
                .collect();
            let chan = hb_channels[s % hb_channels.len()].clone();
            let (tx, in_flight) = (tx.clone(), in_flight.clone());
            tokio::spawn(async move {
                if mine.is_empty() {
                    return;
                }
                // Like the worker's client (worker/src/agent.rs): answers may come compressed.
                let client = DiscoveryServiceClient::new(chan)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                // Spread this sender's workers evenly over the interval, and the senders over
                // the first interval.
                let gap = interval / mine.len() as u32;
                tokio::time::sleep(interval * s as u32 / SENDERS as u32).await;
                let mut next = tokio::time::Instant::now();
                let end = tokio::time::Instant::now() + total;
                'run: loop {
                    for (i, id) in mine.iter().enumerate() {
                        next += gap;
                        if next > end {
                            break 'run;
                        }
                        tokio::time::sleep_until(next).await;
                        let permit = in_flight.clone().acquire_owned().await.expect("open");
                        let (mut client, tx) = (client.clone(), tx.clone());
                        let request = crate::common::as_worker(
                            id,
                            pb::HeartbeatRequest {
                                node_id: id.clone(),
                                usage: Some(usage(i)),
                            },
                        );
                        tokio::spawn(async move {
                            let t = Instant::now();
                            let answer = client.heartbeat(request).await;
                            if t >= measure_from {
                                let _ = tx.send(answer.ok().map(|_| t.elapsed()));
                            }
                            drop(permit);
                        });
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for t in tasks {
        t.await?;
    }
    let mut lat = Latencies::default();
    let mut errors = 0;
    while let Some(sample) = rx.recv().await {
        match sample {
            Some(d) => lat.push(d),
            None => errors += 1,
        }
    }
    let (log_before, cpu_before, follower_cpu_before, measured_at) = probe.await?;
    let secs = measured_at.elapsed().as_secs_f64();
    watch.await?;
    let cpu = (procfs::cpu_seconds(pid) - cpu_before) / secs * 100.0;
    let follower_cpu: Vec<f64> = follower_pids
        .iter()
        .zip(&follower_cpu_before)
        .map(|(p, before)| round((procfs::cpu_seconds(*p) - before) / secs * 100.0))
        .collect();
    let rss = procfs::rss_mb(pid);
    let log_after = status(&leader_addr).await.and_then(|s| s.last_log_index);
    let still_leader = status(&leader_addr).await.map(|s| s.leader_id) == Some(leader_id);
    let growth = log_after.unwrap_or(0) as i64 - log_before.unwrap_or(0) as i64;
    let rate = lat.len() as f64 / secs;
    anyhow::ensure!(lat.len() > 0, "no heartbeat was answered ({errors} errors)");
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>11} {:>15} {:>9} {:>12} {:>10}",
        "workers",
        "hb/s",
        "p50 ms",
        "p99 ms",
        "leader CPU",
        "follower CPU",
        "RSS MiB",
        "not healthy",
        "log growth"
    );
    println!(
        "{workers:>8} {rate:>10.0} {:>9.2} {:>9.2} {:>10.1}% {:>15} {rss:>9.1} {:>12} {growth:>10}",
        lat.quantile_ms(0.5),
        lat.quantile_ms(0.99),
        cpu,
        follower_cpu
            .iter()
            .map(|c| format!("{c:.0}%"))
            .collect::<Vec<_>>()
            .join(" "),
        not_healthy_seen.load(Ordering::Relaxed),
    );
    Ok(json!({
        "scenario": "heartbeats", "workers": workers, "duration_s": round(secs),
        "heartbeats": lat.len(), "errors": errors, "heartbeats_per_sec": round(rate),
        "latency": lat.summary(), "leader_cpu_percent_of_one_core": round(cpu),
        "follower_cpu_percent_of_one_core": follower_cpu, "leader_rss_mb": round(rss),
        "max_nodes_not_healthy": not_healthy_seen.load(Ordering::Relaxed),
        "raft_log_growth_entries": growth, "leader_unchanged": still_leader,
    }))
}
