//! Models and placement with real workers: the fewest workers for a model, repair when the
//! worker holding it dies, a rebalance that moves nothing once settled, drain, a pending model
//! placed when a worker joins, and every ExecuteCommand.

use std::{collections::BTreeMap, time::Duration};

use dllm_proto::pb::{self, node_service_client::NodeServiceClient};
use dllm_tests::{channel, clients, init_tracing, wait_for, Cluster};
use tracing::info;

async fn exec(addr: &str, command: &str, args: &[&str]) -> pb::CommandResponse {
    let mut c = clients(addr).await;
    c.tui
        .execute_command(pb::CommandRequest {
            requester_id: "test".into(),
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            options: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("ExecuteCommand {command} {args:?}: {e}"))
        .into_inner()
}

async fn model(addr: &str, id: &str) -> pb::ModelInfo {
    let mut c = clients(addr).await;
    c.tui
        .get_model_list(pb::ModelListRequest::default())
        .await
        .expect("GetModelList")
        .into_inner()
        .models
        .into_iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("model {id} is listed"))
}

/// Layers per node of a placed model, checking that the ranges cover every layer once.
fn layers_by_node(m: &pb::ModelInfo) -> BTreeMap<String, i32> {
    let mut next = 0;
    let mut by_node = BTreeMap::new();
    for a in &m.node_assignments {
        let (node, range) = a.rsplit_once(':').expect("node:first-last");
        let (first, last) = range.split_once('-').expect("first-last");
        let (first, last): (i32, i32) = (first.parse().unwrap(), last.parse().unwrap());
        assert_eq!(
            first, next,
            "ranges are contiguous: {:?}",
            m.node_assignments
        );
        next = last + 1;
        *by_node.entry(node.to_string()).or_default() += last - first + 1;
    }
    assert_eq!(
        next, m.layer_count,
        "every layer is placed: {:?}",
        m.node_assignments
    );
    by_node
}

async fn node_status(addr: &str, id: &str) -> String {
    let mut c = clients(addr).await;
    c.node
        .get_node_info(pb::NodeInfoRequest { node_id: id.into() })
        .await
        .map(|r| r.into_inner().node.expect("node").status)
        .unwrap_or_default()
}

/// Three workers with 160, 80 and 40 GiB of GPU memory; an 80-layer model of 80 GiB goes
/// whole to the one worker that holds it (no hop); that worker dies and the model moves whole
/// to the one worker left that can hold it (no layer lost, still no hop); it comes back
/// without taking layers back, and a rebalance, twice, moves nothing; a drained worker ends
/// with none; a model too big to fit is pending with its reason until a new worker joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_failures_drains_and_joins() {
    init_tracing();
    let cluster = Cluster::start(3, dllm_tests::FAST_LIVENESS);
    cluster.wait_leader(&[1, 2, 3]).await;
    let cp = cluster.addr(1);
    let max = ["--max-layers", "500"];
    let mut big = cluster.start_worker("big", "2x81920:NVIDIA H100", &max);
    let _mid = cluster.start_worker("mid", "1x81920:NVIDIA H100", &max);
    let _small = cluster.start_worker("small", "1x40960:NVIDIA A100", &max);
    for w in ["big", "mid", "small"] {
        let cp = &cp;
        wait_for("workers healthy", Duration::from_secs(30), || async move {
            (node_status(cp, w).await == "healthy").then_some(())
        })
        .await;
    }

    info!("--- add an 80-layer model of 80 GiB");
    let out = exec(
        &cp,
        "model",
        &["add", "llama", "--layers", "80", "--size", "80G"],
    )
    .await;
    assert_eq!(out.exit_code, 0, "{}", out.error);
    let m = model(&cluster.addr(2), "llama").await;
    assert_eq!(m.placement_status, "placed");
    layers_by_node(&m);
    assert_eq!(
        m.node_assignments,
        ["big:0-79"],
        "the fewest workers that hold it: one"
    );

    info!("--- workers learn their share from heartbeats");
    let mut w = NodeServiceClient::new(channel(&big.addr).await.expect("worker"));
    wait_for("big reports its layers", Duration::from_secs(10), || {
        let mut w = w.clone();
        async move {
            let n = w
                .get_node_info(pb::NodeInfoRequest::default())
                .await
                .ok()?
                .into_inner();
            (n.node?.resources?.used_layers == 80).then_some(())
        }
    })
    .await;
    let _ = &mut w;

    info!("--- SIGKILL the biggest worker");
    big.process.kill();
    wait_for("big to be offline", Duration::from_secs(30), || async {
        (node_status(&cp, "big").await == "offline").then_some(())
    })
    .await;
    let offline_at = std::time::Instant::now();
    let repaired = wait_for("big's layers to move", Duration::from_secs(30), || async {
        let m = model(&cp, "llama").await;
        (m.placement_status == "placed"
            && !m.node_assignments.iter().any(|a| a.starts_with("big:")))
        .then_some(m)
    })
    .await;
    info!(
        after_ms = offline_at.elapsed().as_millis() as u64,
        "--- repaired"
    );
    layers_by_node(&repaired);
    assert_eq!(
        repaired.node_assignments,
        ["mid:0-79"],
        "the orphan goes whole to one worker"
    );

    info!("--- big comes back; nothing moves, and a rebalance, twice, moves nothing");
    let _big = cluster.start_worker("big", "2x81920:NVIDIA H100", &max);
    wait_for("big healthy again", Duration::from_secs(30), || async {
        (node_status(&cp, "big").await == "healthy").then_some(())
    })
    .await;
    assert_eq!(
        model(&cp, "llama").await.node_assignments,
        repaired.node_assignments
    );
    for _ in 0..2 {
        let out = exec(&cp, "rebalance", &[]).await;
        assert_eq!(out.exit_code, 0, "{}", out.error);
        assert!(out.output.contains("nothing to move"), "{}", out.output);
    }
    assert_eq!(
        model(&cp, "llama").await.node_assignments,
        repaired.node_assignments
    );
    let listed = exec(&cp, "models", &[]).await;
    assert!(
        listed.output.contains("HOPS") && listed.output.contains("mid:0-79"),
        "{}",
        listed.output
    );

    info!("--- drain mid: it ends with no layers");
    let out = exec(&cp, "drain", &["mid"]).await;
    assert_eq!(out.exit_code, 0, "{}", out.error);
    let drained = wait_for("mid to hold nothing", Duration::from_secs(30), || async {
        let m = model(&cp, "llama").await;
        (m.placement_status == "placed"
            && !m.node_assignments.iter().any(|a| a.starts_with("mid:")))
        .then_some(m)
    })
    .await;
    layers_by_node(&drained);
    let mut c = clients(&cp).await;
    let mid = c
        .node
        .get_node_info(pb::NodeInfoRequest {
            node_id: "mid".into(),
        })
        .await
        .expect("mid")
        .into_inner()
        .node
        .expect("node");
    assert_eq!(mid.status, "draining");
    assert_eq!(mid.resources.expect("resources").used_layers, 0);

    info!("--- a model too big waits, with its reason, until a worker joins");
    let out = exec(
        &cp,
        "model",
        &["add", "huge", "--layers", "100", "--size", "300G"],
    )
    .await;
    assert_eq!(out.exit_code, 0, "{}", out.error);
    assert!(out.output.contains("pending"), "{}", out.output);
    let huge = model(&cp, "huge").await;
    assert_eq!(huge.placement_status, "pending");
    assert!(
        huge.pending_reason.contains("needs 100 layers"),
        "{}",
        huge.pending_reason
    );
    assert!(huge.node_assignments.is_empty(), "never half placed");
    let _giant = cluster.start_worker("giant", "4x81920:NVIDIA H100", &max);
    let placed = wait_for("huge to be placed", Duration::from_secs(30), || async {
        let m = model(&cp, "huge").await;
        (m.placement_status == "placed").then_some(m)
    })
    .await;
    layers_by_node(&placed);
}

/// Every ExecuteCommand command answers as documented: output and exit 0, exit 2 with usage
/// for usage errors, exit 1 with the reason for refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers() {
    init_tracing();
    let cluster = Cluster::start(3, dllm_tests::FAST_LIVENESS);
    cluster.wait_leader(&[1, 2, 3]).await;
    let cp = cluster.addr(3);
    let _w = cluster.start_worker("w1", "1x81920:NVIDIA H100", &[]);
    wait_for("w1 healthy", Duration::from_secs(30), || async {
        (node_status(&cp, "w1").await == "healthy").then_some(())
    })
    .await;

    let ok = |r: &pb::CommandResponse, want: &str| {
        assert_eq!(r.exit_code, 0, "error: {}", r.error);
        assert!(r.success);
        assert!(
            r.output.contains(want),
            "{:?} should contain {want:?}",
            r.output
        );
    };
    ok(&exec(&cp, "help", &[]).await, "model add");
    ok(&exec(&cp, "ping", &[]).await, "pong from replica 3");
    ok(&exec(&cp, "status", &[]).await, "1 healthy");
    ok(&exec(&cp, "nodes", &[]).await, "w1");
    ok(&exec(&cp, "members", &[]).await, "leader");
    ok(
        &exec(
            &cp,
            "model",
            &["add", "m1", "--layers", "8", "--size", "8G"],
        )
        .await,
        "placed",
    );
    ok(&exec(&cp, "models", &[]).await, "w1:0-7");
    ok(&exec(&cp, "rebalance", &["m1"]).await, "rebalanced");
    ok(&exec(&cp, "rebalance", &[]).await, "rebalanced");
    ok(&exec(&cp, "drain", &["w1"]).await, "draining");
    ok(&exec(&cp, "undrain", &["w1"]).await, "takes layers again");
    ok(&exec(&cp, "model", &["remove", "m1"]).await, "removed");
    ok(&exec(&cp, "leave", &["w1"]).await, "left");

    let refused = |r: &pb::CommandResponse, want: &str| {
        assert_eq!(r.exit_code, 1, "{r:?}");
        assert!(!r.success);
        assert!(
            r.error.contains(want),
            "{:?} should contain {want:?}",
            r.error
        );
    };
    exec(
        &cp,
        "model",
        &["add", "dup", "--layers", "1", "--size", "1M"],
    )
    .await;
    refused(
        &exec(
            &cp,
            "model",
            &["add", "dup", "--layers", "1", "--size", "1M"],
        )
        .await,
        "already exists",
    );
    refused(&exec(&cp, "model", &["remove", "ghost"]).await, "not found");
    refused(&exec(&cp, "drain", &["ghost"]).await, "not found");
    refused(&exec(&cp, "rebalance", &["ghost"]).await, "not found");
    refused(&exec(&cp, "member", &["remove", "42"]).await, "not found");
    refused(
        &exec(
            &cp,
            "model",
            &["add", "bad id!", "--layers", "1", "--size", "1"],
        )
        .await,
        "args[1]",
    );

    let usage = |r: &pb::CommandResponse| {
        assert_eq!(r.exit_code, 2, "{r:?}");
        assert!(
            r.error.contains("usage:") || r.error.contains("unknown command"),
            "{r:?}"
        );
    };
    usage(&exec(&cp, "model", &["add", "m"]).await);
    usage(&exec(&cp, "drain", &[]).await);
    usage(&exec(&cp, "member", &["add", "x", "h:1"]).await);
    usage(&exec(&cp, "status", &["extra"]).await);
    usage(&exec(&cp, "format-disk", &[]).await);
}
