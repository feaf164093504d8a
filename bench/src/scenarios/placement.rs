//! `placement`: placement under churn. N simulated workers of mixed sizes (registered and
//! heartbeating from this process), M models; then K cycles of: one worker goes silent until
//! it is offline and its layers are re-homed (and, where the planner merges, until the merge
//! is done), the worker comes back, and `rebalance` runs twice. Reports pipeline hops per
//! model (mean, max) after placement, after each repair and after each rebalance, and layers
//! moved per failure and by each rebalance. Run it against any build's binaries
//! (`--bin-dir`) to compare planners: only the public API is used.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use dllm_proto::pb::{
    self, discovery_service_client::DiscoveryServiceClient, tui_service_client::TuiServiceClient,
};
use dllm_tests::wait_for;
use serde_json::{json, Value};

use crate::{
    common::{as_worker, channel, leader},
    stats::round,
};

/// Heartbeat interval of the run (the cluster is started with `FAST_LIVENESS`).
const HEARTBEAT: Duration = Duration::from_millis(200);

/// Worker `i` of the fleet: 1 or 2 simulated 80 GiB GPUs and 32, 48 or 64 layers.
fn resources(i: usize, node_id: &str) -> pb::ResourceInfo {
    pb::ResourceInfo {
        cpu_cores: 32,
        memory_mb: 512 * 1024,
        gpus: (0..1 + i % 2)
            .map(|g| pb::GpuInfo {
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_mb: 81920,
                uuid: format!("GPU-{node_id}-{g}"),
            })
            .collect(),
        max_layers: 32 + 16 * (i % 3) as i32,
        used_layers: 0,
    }
}

/// Who holds each layer of each placed model (from `GetModelList`), and how many models are
/// pending.
#[derive(Clone, Debug, Default, PartialEq)]
struct Snapshot {
    owners: BTreeMap<String, Vec<String>>,
    ranges: BTreeMap<String, Vec<String>>,
    pending: usize,
}

impl Snapshot {
    fn hops(&self) -> Vec<usize> {
        self.ranges
            .values()
            .map(|r| r.len().saturating_sub(1))
            .collect()
    }

    /// Whether some worker holds two or more separate ranges of a model.
    fn interleaved(&self) -> bool {
        self.ranges.values().any(|r| {
            let nodes: std::collections::BTreeSet<&str> = r
                .iter()
                .filter_map(|a| a.rsplit_once(':'))
                .map(|(n, _)| n)
                .collect();
            nodes.len() < r.len()
        })
    }

    fn holds(&self, node: &str) -> bool {
        self.owners.values().any(|o| o.iter().any(|n| n == node))
    }

    /// Layers whose worker differs between `self` and `later`.
    fn moved_to(&self, later: &Snapshot) -> usize {
        self.owners
            .iter()
            .map(|(id, was)| match later.owners.get(id) {
                Some(now) => was.iter().zip(now).filter(|(a, b)| a != b).count(),
                None => was.len(),
            })
            .sum()
    }
}

async fn snapshot(tui: &mut TuiServiceClient<dllm_proto::client::Channel>) -> Option<Snapshot> {
    let list = tui
        .get_model_list(pb::ModelListRequest::default())
        .await
        .ok()?
        .into_inner();
    let mut s = Snapshot::default();
    for m in list.models {
        if m.placement_status != "placed" {
            s.pending += 1;
            continue;
        }
        let mut owners = vec![String::new(); m.layer_count.max(0) as usize];
        let mut ranges: Vec<(i32, String)> = Vec::new();
        for a in &m.node_assignments {
            let (node, range) = a.rsplit_once(':')?;
            let (first, last) = range.split_once('-')?;
            let (first, last): (i32, i32) = (first.parse().ok()?, last.parse().ok()?);
            for l in first..=last {
                *owners.get_mut(l as usize)? = node.to_string();
            }
            ranges.push((first, a.clone()));
        }
        ranges.sort();
        // Adjacent ranges on one worker are one stage of the pipeline.
        let mut merged: Vec<String> = Vec::new();
        let mut last_node = String::new();
        for (_, a) in ranges {
            let node = a
                .rsplit_once(':')
                .map(|(n, _)| n.to_string())
                .unwrap_or_default();
            if node != last_node {
                merged.push(a);
            }
            last_node = node;
        }
        s.owners.insert(m.id.clone(), owners);
        s.ranges.insert(m.id, merged);
    }
    Some(s)
}

/// The placement once it has stopped changing: no model on `gone`, and then either no model
/// interleaved (a planner that merges has finished) or the same answer over 4 polls 500 ms
/// apart (one that does not merge). Panics after two minutes.
async fn settled(
    tui: &TuiServiceClient<dllm_proto::client::Channel>,
    gone: Option<&str>,
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last: Option<Snapshot> = None;
    let mut same = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for placement to settle"
        );
        let Some(s) = snapshot(&mut tui.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if gone.is_some_and(|g| s.holds(g)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if !s.interleaved() {
            return s;
        }
        same = if last.as_ref() == Some(&s) {
            same + 1
        } else {
            0
        };
        if same >= 3 {
            return s;
        }
        last = Some(s);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn stats(hops: &[usize]) -> Value {
    let n = hops.len().max(1) as f64;
    json!({
        "mean": round(hops.iter().sum::<usize>() as f64 / n),
        "max": hops.iter().copied().max().unwrap_or(0),
    })
}

/// Runs `command args` through ExecuteCommand; its output, or why it failed.
pub async fn exec(
    tui: &mut TuiServiceClient<dllm_proto::client::Channel>,
    command: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = tui
        .execute_command(pb::CommandRequest {
            requester_id: "bench".into(),
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            options: Default::default(),
        })
        .await?
        .into_inner();
    anyhow::ensure!(out.exit_code == 0, "{command} {args:?}: {}", out.error);
    Ok(out.output)
}

/// A simulated worker: registers, then heartbeats while `alive`.
fn spawn_worker(
    channel: dllm_proto::client::Channel,
    i: usize,
    id: String,
    alive: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut c = DiscoveryServiceClient::new(channel);
        let mut registered = false;
        while !stop.load(Ordering::Relaxed) {
            if !alive.load(Ordering::Relaxed) {
                registered = false;
            } else if !registered {
                let request = pb::ClusterJoinRequest {
                    node_id: id.clone(),
                    address: "10.0.0.1".into(),
                    port: 50051,
                    resources: Some(resources(i, &id)),
                    seed_nodes: vec![],
                    skip_existing_nodes: true,
                };
                registered = c
                    .register_with_cluster(as_worker(&id, request))
                    .await
                    .is_ok();
            } else {
                let request = pb::HeartbeatRequest {
                    node_id: id.clone(),
                    usage: None,
                };
                if c.heartbeat(as_worker(&id, request)).await.is_err() {
                    registered = false;
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
}

/// Runs the scenario.
pub async fn run(workers: usize, models: usize, cycles: usize) -> anyhow::Result<Value> {
    let cluster = crate::common::start_cluster_with(dllm_tests::FAST_LIVENESS);
    let (_, leader_addr) = leader(&cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Vec<String> = (0..workers).map(|i| format!("w{i:02}")).collect();
    let alive: Vec<Arc<AtomicBool>> = ids
        .iter()
        .map(|_| Arc::new(AtomicBool::new(true)))
        .collect();
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            spawn_worker(
                channel(&cluster.addr(1 + (i % 3) as u64)),
                i,
                id.clone(),
                alive[i].clone(),
                stop.clone(),
            )
        })
        .collect();
    let mut tui = TuiServiceClient::new(channel(&leader_addr));
    wait_for("workers healthy", Duration::from_secs(60), || {
        let mut tui = tui.clone();
        async move {
            let out = exec(&mut tui, "status", &[]).await.ok()?;
            out.contains(&format!("{workers} healthy")).then_some(())
        }
    })
    .await;
    println!("placement: {workers} workers, adding {models} models ...");
    for m in 0..models {
        exec(
            &mut tui,
            "model",
            &[
                "add",
                &format!("model-{m:02}"),
                "--layers",
                "64",
                "--size",
                "64G",
            ],
        )
        .await?;
    }
    let placed = settled(&tui, None).await;
    println!("placement: placed, hops {:?}", placed.hops());
    let mut rows = Vec::new();
    let mut current = placed.clone();
    for k in 0..cycles {
        let victim = k % workers;
        let id = &ids[victim];
        let held: usize = current
            .owners
            .values()
            .map(|o| o.iter().filter(|n| *n == id).count())
            .sum();
        alive[victim].store(false, Ordering::Relaxed);
        let repaired = settled(&tui, Some(id)).await;
        let moved_by_repair = current.moved_to(&repaired);
        alive[victim].store(true, Ordering::Relaxed);
        wait_for("the worker back", Duration::from_secs(60), || {
            let mut tui = tui.clone();
            async move {
                let out = exec(&mut tui, "status", &[]).await.ok()?;
                out.contains(&format!("{workers} healthy")).then_some(())
            }
        })
        .await;
        let returned = settled(&tui, None).await;
        exec(&mut tui, "rebalance", &[]).await?;
        let first = settled(&tui, None).await;
        exec(&mut tui, "rebalance", &[]).await?;
        let second = settled(&tui, None).await;
        let row = json!({
            "cycle": k,
            "failed": id,
            "layers_on_failed_worker": held,
            "layers_moved_by_repair": moved_by_repair + repaired.moved_to(&returned),
            "hops_after_repair": stats(&repaired.hops()),
            "interleaved_after_repair": repaired.interleaved(),
            "layers_moved_by_rebalance": returned.moved_to(&first),
            "layers_moved_by_second_rebalance": first.moved_to(&second),
            "hops_after_rebalance": stats(&second.hops()),
            "pending": second.pending,
        });
        println!("placement: {row}");
        rows.push(row);
        current = second;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let total =
        |key: &str| -> usize { rows.iter().filter_map(|r| r[key].as_u64()).sum::<u64>() as usize };
    let mean_of = |key: &str| -> f64 {
        round(
            rows.iter()
                .filter_map(|r| r[key]["mean"].as_f64())
                .sum::<f64>()
                / rows.len().max(1) as f64,
        )
    };
    let max_of = |key: &str| {
        rows.iter()
            .filter_map(|r| r[key]["max"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let summary = json!({
        "hops_after_placement": stats(&placed.hops()),
        "hops_after_repair_mean": mean_of("hops_after_repair"),
        "hops_after_repair_max": max_of("hops_after_repair"),
        "hops_after_rebalance_mean": mean_of("hops_after_rebalance"),
        "hops_after_rebalance_max": max_of("hops_after_rebalance"),
        "layers_moved_per_failure": round(total("layers_moved_by_repair") as f64 / cycles.max(1) as f64),
        "layers_on_failed_worker_per_failure": round(total("layers_on_failed_worker") as f64 / cycles.max(1) as f64),
        "layers_moved_per_rebalance": round(total("layers_moved_by_rebalance") as f64 / cycles.max(1) as f64),
        "layers_moved_by_second_rebalances": total("layers_moved_by_second_rebalance"),
    });
    println!("placement: {summary}");
    Ok(json!({
        "scenario": "placement",
        "workers": workers,
        "models": models,
        "cycles": cycles,
        "summary": summary,
        "cycles_detail": rows,
    }))
}
