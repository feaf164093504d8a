//! Backup, restore and recovery from a lost quorum, with real processes: `dllm snapshot save`
//! on a loaded cluster and `--restore-from` into a new one gives back every node, model and
//! placement; a damaged or foreign file is refused and leaves the data directory empty; and
//! `--force-new-cluster` on the last survivor keeps everything it applied, takes new replicas
//! through AddReplica and refuses to run twice.

mod backup;
mod quorum_loss;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use dllm_proto::pb;
use dllm_tests::{
    binary, clients, init_tracing,
    jepsen::{
        checks,
        history::{Event, NodeView, Op, Recorder, Ret},
    },
    join_request, member_ids, register_all, replica_status, wait_for, Cluster,
};
use tracing::info;

/// Liveness so slow that nodes registered without a worker stay `healthy` for the whole test,
/// so that neither cluster changes a status or a placement on its own while it is compared.
const NO_LIVENESS: &[&str] = &["--node-heartbeat-interval-ms", "3600000"];

/// Runs the `dllm` CLI against `endpoint`; its exit success, stdout and stderr.
fn dllm(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("dllm"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run dllm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn exec(addr: &str, command: &str, args: &[&str]) {
    let out = clients(addr)
        .await
        .tui
        .execute_command(pb::CommandRequest {
            requester_id: "test".into(),
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            options: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{command} {args:?}: {e}"))
        .into_inner();
    assert_eq!(out.exit_code, 0, "{command} {args:?}: {}", out.error);
}

/// The member node ids `addr` answers with (a linearizable read); `None` while it cannot.
async fn peers(addr: &str) -> Option<HashSet<String>> {
    let mut c = dllm_tests::Clients::over(dllm_tests::channel(addr).await.ok()?);
    let peers = c
        .node
        .get_peers(pb::PeersRequest {
            include_self: true,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner()
        .peers;
    Some(peers.into_iter().map(|n| n.node_id).collect())
}

/// Every node (left ones too) and every model with its placement, through a linearizable read,
/// and the cluster id.
async fn cluster_info(addr: &str) -> pb::ClusterInfoResponse {
    clients(addr)
        .await
        .discovery
        .get_cluster_info(pb::ClusterInfoRequest::default())
        .await
        .unwrap_or_else(|e| panic!("GetClusterInfo on {addr}: {e}"))
        .into_inner()
}

fn assert_same_state(saved: &pb::ClusterInfoResponse, restored: &pb::ClusterInfoResponse) {
    assert_eq!(
        saved.nodes.len(),
        restored.nodes.len(),
        "the same number of nodes"
    );
    for (s, r) in saved.nodes.iter().zip(&restored.nodes) {
        assert_eq!(s, r, "node {} is restored as it was saved", s.node_id);
    }
    assert_eq!(saved.models, restored.models, "every model and placement");
}
