//! `watch`: live views of a large fleet. A cluster holds N nodes; C of them re-register each
//! second with new resources (a change to their record each), and S clients follow
//! `StreamUpdates` as the TUI does (gzip on, every type, `deltas` unless `--whole`, interval
//! 1 s), spread over the replicas. Reports the bytes each subscriber receives per second
//! (protobuf bytes before gzip), and the replicas' CPU per subscriber: their CPU with the
//! subscribers less their CPU over as long a stretch with the same changes and none. At the
//! end one subscriber's lists are checked against GetNodeList and GetModelList.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use dllm_proto::{
    pb::{
        self, discovery_service_client::DiscoveryServiceClient,
        tui_service_client::TuiServiceClient,
    },
    view::ClusterView,
};
use futures::StreamExt;
use prost::Message;
use serde_json::{json, Value};
use tonic::codec::CompressionEncoding;

use crate::{
    common::{as_worker, channel, leader, registration},
    procfs,
    stats::round,
};

fn id(i: usize) -> String {
    format!("w-{i:06}")
}

/// What the scenario is asked to do.
pub struct Args {
    /// Nodes registered.
    pub nodes: usize,
    /// Node records changed per second.
    pub changes: usize,
    /// Concurrent subscribers.
    pub subscribers: usize,
    /// Seconds measured, with and without subscribers each.
    pub seconds: u64,
    /// Whole lists (clients written before `deltas`) instead of deltas.
    pub whole: bool,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args {
        nodes,
        changes,
        subscribers,
        seconds,
        whole,
    } = args;
    anyhow::ensure!(nodes > 0, "--nodes must be at least 1");
    // Registered nodes never heartbeat here: thresholds beyond the run keep them members.
    let cluster = crate::common::start_cluster_with(&[
        "--unhealthy-after=1000000",
        "--offline-after=2000000",
    ]);
    leader(&cluster).await;
    let channels: Vec<_> = (1..=3).map(|r| channel(&cluster.addr(r))).collect();
    println!("watch: registering {nodes} nodes ...");
    crate::common::register_nodes(&channels, nodes, id).await;

    // The changes: `changes` re-registrations a second, each with a new memory size.
    let stop = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(AtomicU64::new(0));
    let changer = {
        let (stop, changed, ch) = (stop.clone(), changed.clone(), channels[0].clone());
        tokio::spawn(async move {
            let mut c = DiscoveryServiceClient::new(ch);
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Ten ticks a second; by the end of tick `round`, (round + 1) * changes / 10 sent.
            let (mut round, mut sent) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let due = (round + 1) * changes / 10;
                while sent < due {
                    let i = sent % nodes;
                    sent += 1;
                    let mut request = registration(&id(i));
                    if let Some(r) = request.resources.as_mut() {
                        r.memory_mb -= 1 + (round % 1000) as i64;
                    }
                    if c.register_with_cluster(as_worker(&id(i), request))
                        .await
                        .is_ok()
                    {
                        changed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                round += 1;
            }
        })
    };
    let pids: Vec<u32> = (1..=3).filter_map(|r| cluster.replicas[&r].pid()).collect();
    let cpu = || -> f64 { pids.iter().map(|&p| procfs::cpu_seconds(p)).sum() };
    let window = Duration::from_secs(seconds);

    println!("watch: {changes} changes/s, no subscribers, {seconds} s ...");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let base_cpu = (cpu() - cpu0) / t0.elapsed().as_secs_f64();

    let mode = if whole { "whole lists" } else { "deltas" };
    println!("watch: {subscribers} subscribers ({mode}), {seconds} s ...");
    let bytes = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let views: Vec<Arc<Mutex<ClusterView>>> = (0..subscribers)
        .map(|_| Arc::new(Mutex::new(ClusterView::default())))
        .collect();
    let start_one = |s: usize, view: &Arc<Mutex<ClusterView>>| {
        let mut client = TuiServiceClient::new(channels[s % 3].clone())
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(1 << 30);
        let (bytes, measuring, view) = (bytes.clone(), measuring.clone(), view.clone());
        tokio::spawn(async move {
            let request = pb::UpdateStreamRequest {
                requester_id: format!("bench-{s}"),
                interval_seconds: 1,
                update_types: vec![],
                deltas: !whole,
            };
            let mut stream = client.stream_updates(request).await?.into_inner();
            while let Some(u) = stream.next().await {
                let u = u?;
                if measuring.load(Ordering::Relaxed) {
                    bytes.fetch_add(u.encoded_len() as u64, Ordering::Relaxed);
                }
                view.lock().unwrap_or_else(|e| e.into_inner()).apply(u)?;
            }
            anyhow::Ok(())
        })
    };
    // Subscribers join ten at a time, each wave once its first (whole) lists arrived, as
    // people open views over time; the slowest wave's wait is reported.
    let (mut subs, mut first_list_secs) = (Vec::new(), 0f64);
    for (w, chunk) in views.chunks(10).enumerate() {
        let t = Instant::now();
        for (k, view) in chunk.iter().enumerate() {
            subs.push(start_one(w * 10 + k, view));
        }
        while chunk
            .iter()
            .any(|v| v.lock().unwrap_or_else(|e| e.into_inner()).nodes.is_none())
        {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(300),
                "subscribers {}.. got no first list in 300 s",
                w * 10
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first_list_secs = first_list_secs.max(t.elapsed().as_secs_f64());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let (cpu1, t1, changed1) = (cpu(), Instant::now(), changed.load(Ordering::Relaxed));
    tokio::time::sleep(window).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t1.elapsed().as_secs_f64();
    let sub_cpu = (cpu() - cpu1) / secs;
    let changes_per_sec = (changed.load(Ordering::Relaxed) - changed1) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    changer.await?;

    // A subscriber's lists against the whole lists, once the last changes reached it.
    let mut tui = TuiServiceClient::new(channels[1].clone()).max_decoding_message_size(1 << 30);
    let described = |mut nodes: Vec<pb::NodeInfo>| {
        for n in &mut nodes {
            n.last_seen = 0;
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    };
    let want_nodes = described(
        tui.get_node_list(pb::NodeListRequest::default())
            .await?
            .into_inner()
            .nodes,
    );
    let want_models = tui
        .get_model_list(pb::ModelListRequest::default())
        .await?
        .into_inner()
        .models;
    let mut matches = false;
    for _ in 0..50 {
        let view = views[0].lock().unwrap_or_else(|e| e.into_inner()).clone();
        let held = described(view.node_list().into_iter().cloned().collect());
        let models: Vec<pb::ModelInfo> = view.model_list().into_iter().cloned().collect();
        if held == want_nodes && models == want_models {
            matches = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in subs {
        s.abort();
    }
    let per_sub_bytes = bytes.load(Ordering::Relaxed) as f64 / secs / subscribers.max(1) as f64;
    let per_sub_cpu = (sub_cpu - base_cpu).max(0.0) / subscribers.max(1) as f64;
    println!(
        "watch: {nodes} nodes, {changes_per_sec:.0} changes/s, {subscribers} subscribers ({mode}): {:.3} MB/s per subscriber before gzip; replica CPU {:.1}% of a core without subscribers, {:.1}% with, {:.2}% per subscriber; first lists of 10 subscribers in {first_list_secs:.1} s at most; subscriber 0's lists {} the whole lists",
        per_sub_bytes / 1e6,
        base_cpu * 100.0,
        sub_cpu * 100.0,
        per_sub_cpu * 100.0,
        if matches { "equal" } else { "DIFFER FROM" },
    );
    anyhow::ensure!(
        matches,
        "a subscriber's lists differ from GetNodeList/GetModelList"
    );
    Ok(json!({
        "scenario": "watch", "nodes": nodes, "changes_per_sec_asked": changes,
        "changes_per_sec": round(changes_per_sec), "subscribers": subscribers,
        "deltas": !whole, "seconds": seconds,
        "bytes_per_sec_per_subscriber": round(per_sub_bytes),
        "replica_cpu_cores_without_subscribers": round(base_cpu),
        "replica_cpu_cores_with_subscribers": round(sub_cpu),
        "replica_cpu_percent_per_subscriber": round(per_sub_cpu * 100.0),
        "subscriber_lists_match": matches,
        "first_lists_seconds_slowest_wave": round(first_list_secs),
    }))
}
