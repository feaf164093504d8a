//! What every scenario shares: channels, requests, the cluster's leader.

use std::time::Duration;

use dllm_proto::client::{connect, Channel};
use dllm_proto::pb::{self, admin_service_client::AdminServiceClient};
use dllm_tests::Cluster;

/// Extra flags every replica gets (`dllm-bench --replica-arg ...`), e.g. Raft timings.
pub static REPLICA_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Three replicas with the default settings plus any `--replica-arg`s.
pub fn start_cluster() -> Cluster {
    start_cluster_with(&[])
}

/// Three replicas with the scenario's own `extra` flags, then the `--replica-arg` ones (which
/// win where both set a flag).
pub fn start_cluster_with(extra: &[&str]) -> Cluster {
    let user: Vec<&str> = REPLICA_ARGS
        .get()
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    Cluster::start(3, &dllm_util::layered::with_changes(extra, &user))
}

/// A lazily connected channel to `addr`, made like every dllm client's (one DATA frame per
/// request); the etcd runs use the same.
pub fn channel(addr: &str) -> Channel {
    connect(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("host:port")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect_lazy(),
    )
}

/// A registration for a simulated 8-GPU worker; the answer skips the member list.
pub fn registration(node_id: &str) -> pb::ClusterJoinRequest {
    pb::ClusterJoinRequest {
        node_id: node_id.to_string(),
        address: "10.0.0.1".to_string(),
        port: 50051,
        resources: Some(resources(node_id)),
        seed_nodes: vec![],
        skip_existing_nodes: true,
    }
}

/// 8 simulated H100s, 2 TiB RAM, 600 layers.
pub fn resources(node_id: &str) -> pb::ResourceInfo {
    pb::ResourceInfo {
        cpu_cores: 96,
        memory_mb: 2 * 1024 * 1024,
        gpus: (0..8)
            .map(|i| pb::GpuInfo {
                name: "NVIDIA H100 80GB HBM3".to_string(),
                memory_mb: 81559,
                uuid: format!("GPU-{node_id}-{i}"),
            })
            .collect(),
        max_layers: 600,
        used_layers: 0,
    }
}

/// The NodeInfo etcd stores in the comparison: what a registration carries.
pub fn node_info(node_id: &str) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: node_id.to_string(),
        address: "10.0.0.1".to_string(),
        port: 50051,
        resources: Some(resources(node_id)),
        status: "healthy".to_string(),
        last_seen: 1_795_000_000_000,
    }
}

/// The leader's id and address, waiting for one.
pub async fn leader(cluster: &Cluster) -> (u64, String) {
    let ids: Vec<u64> = cluster
        .replicas
        .iter()
        .filter(|(_, r)| r.pid().is_some())
        .map(|(id, _)| *id)
        .collect();
    let id = cluster.wait_leader(&ids).await;
    (id, cluster.addr(id))
}

/// The replica status of `addr`.
pub async fn status(addr: &str) -> Option<pb::ReplicaStatusResponse> {
    AdminServiceClient::new(channel(addr))
        .get_replica_status(pb::ReplicaStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}
