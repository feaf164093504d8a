//! `memory`: RSS of each replica holding N registered nodes and M placed models.

use std::time::Duration;

use dllm_proto::pb::{self, tui_service_client::TuiServiceClient};
use dllm_tests::wait_for;
use serde_json::{json, Value};

use crate::{
    common::{channel, leader},
    procfs,
    stats::round,
};

/// Runs the scenario.
pub async fn run(nodes: usize, models: usize) -> anyhow::Result<Value> {
    // The nodes here are only registered, never heartbeat: thresholds far beyond the run keep
    // them healthy, so the models stay placed on them.
    let cluster = crate::common::start_cluster_with(&[
        "--unhealthy-after=1000000",
        "--offline-after=2000000",
    ]);
    let (_, leader_addr) = leader(&cluster).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    let channels: Vec<_> = addrs.iter().map(|a| channel(a)).collect();
    println!("memory: registering {nodes} nodes and {models} models ...");
    crate::common::register_nodes(&channels, nodes, |i| format!("m-{i:06}")).await;
    let mut tui = TuiServiceClient::new(channel(&leader_addr));
    for m in 0..models {
        let out = tui
            .execute_command(pb::CommandRequest {
                requester_id: "bench".into(),
                command: "model".into(),
                args: [
                    "add",
                    &format!("model-{m:03}"),
                    "--layers",
                    "80",
                    "--size",
                    "140G",
                ]
                .map(String::from)
                .to_vec(),
                options: Default::default(),
            })
            .await?
            .into_inner();
        anyhow::ensure!(out.exit_code == 0, "model add failed: {}", out.error);
    }
    wait_for("every model placed", Duration::from_secs(60), || {
        let mut tui = tui.clone();
        async move {
            let list = tui
                .get_model_list(pb::ModelListRequest::default())
                .await
                .ok()?
                .into_inner();
            list.models
                .iter()
                .all(|m| m.placement_status == "placed")
                .then_some(())
        }
    })
    .await;
    // Let every replica apply and settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<f64> = (1..=3)
        .map(|id| {
            round(procfs::rss_mb(
                cluster.replicas[&id].pid().expect("running"),
            ))
        })
        .collect();
    println!("memory: {nodes} nodes, {models} placed models: RSS per replica {rss:?} MiB");
    Ok(json!({"scenario": "memory", "nodes": nodes, "models": models, "rss_mb_per_replica": rss}))
}
