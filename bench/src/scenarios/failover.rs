//! `failover`: steady write load; SIGKILL the leader; the time from the kill to the first
//! acknowledged write that started after it, over several kills, restarting the killed
//! replica (and letting it catch up) in between.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dllm_proto::pb::discovery_service_client::DiscoveryServiceClient;
use dllm_tests::wait_for;
use serde_json::{json, Value};

use crate::{
    common::{channel, leader, registration, status},
    stats::{median, round},
};

/// Runs the scenario.
pub async fn run(kills: usize) -> anyhow::Result<Value> {
    let mut cluster = crate::common::start_cluster();
    leader(&cluster).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    // Background load: 8 writers spread over the replicas, errors ignored.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|w| {
            let (stop, addr) = (stop.clone(), addrs[w % 3].clone());
            tokio::spawn(async move {
                let mut c = DiscoveryServiceClient::new(channel(&addr));
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = c
                        .register_with_cluster({
                            let id = format!("load-{w}-{i}");
                            crate::common::as_worker(&id, registration(&id))
                        })
                        .await;
                    i += 1;
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    println!("failover: {kills} leader kills under write load");
    for k in 0..kills {
        let (old, _) = leader(&cluster).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let survivors: Vec<String> = (1..=3)
            .filter(|id| *id != old)
            .map(|id| cluster.addr(id))
            .collect();
        cluster.replica(old).kill();
        let killed = Instant::now();
        // Probes: writes started after the kill, through both survivors, until one is acked.
        let mut acked = None;
        let mut seq = 0;
        while acked.is_none() && killed.elapsed() < Duration::from_secs(30) {
            let probes: Vec<_> = survivors
                .iter()
                .map(|a| {
                    let mut c = DiscoveryServiceClient::new(channel(a));
                    let id = format!("probe-{k}-{seq}-{}", a.replace(['.', ':'], "-"));
                    tokio::spawn(async move {
                        c.register_with_cluster(crate::common::as_worker(&id, registration(&id)))
                            .await
                            .ok()
                            .map(|_| Instant::now())
                    })
                })
                .collect();
            seq += 1;
            for p in probes {
                if let Ok(Some(t)) = p.await {
                    acked = Some(acked.map_or(t, |a: Instant| a.min(t)));
                }
            }
        }
        let Some(acked) = acked else {
            anyhow::bail!("no write was acknowledged within 30 s of killing replica {old}");
        };
        let ms = (acked - killed).as_secs_f64() * 1000.0;
        println!(
            "  kill {:>2}: replica {old}, first acknowledged write after {ms:.0} ms",
            k + 1
        );
        times.push(ms);
        cluster.restart(old);
        let addr = cluster.addr(old);
        wait_for(
            "the killed replica to catch up",
            Duration::from_secs(60),
            || {
                let addr = addr.clone();
                let survivors = survivors.clone();
                async move {
                    let mine = status(&addr).await?.applied_index?;
                    let theirs = status(&survivors[0]).await?.commit_index?;
                    (mine + 50 >= theirs).then_some(())
                }
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "failover: median {:.0} ms, max {:.0} ms",
        median(&times),
        max
    );
    Ok(json!({"scenario": "failover", "kills": kills,
              "ms_to_first_ack": times.iter().map(|t| round(*t)).collect::<Vec<_>>(),
              "median_ms": round(median(&times)), "max_ms": round(max)}))
}
