//! What every scenario shares: channels, requests, the cluster's leader.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, RwLock},
};

use dllm_auth::{client::ClientAuth, token::Signer, Role};
use dllm_proto::client::Channel;
use dllm_proto::pb::{self, admin_service_client::AdminServiceClient};
use dllm_tests::Cluster;

/// Extra flags every replica gets (`dllm-bench --replica-arg ...`), e.g. Raft timings.
pub static REPLICA_ARGS: OnceLock<Vec<String>> = OnceLock::new();

/// `dllm-bench --tls`: every cluster runs with mTLS and roles, as a secure deployment would.
pub static TLS: OnceLock<bool> = OnceLock::new();

/// What the bench's clients present to the cluster started last: an admin certificate, and
/// for requests a worker makes (registrations, heartbeats) a token for that worker's node id,
/// one per node, made once and sent with each of its requests, as a worker started with
/// `--token` would. Plaintext without `--tls`. Process-wide, since every scenario runs one
/// cluster at a time and reaches it through [`channel`].
struct Credentials {
    auth: ClientAuth,
    signer: Option<Signer>,
    tokens: Mutex<HashMap<String, tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>,
}

/// The name `dllm_tests::Cluster::admin` issues its admin certificate to.
const ADMIN: &str = "test-admin";

static CURRENT: RwLock<Option<Arc<Credentials>>> = RwLock::new(None);

fn current() -> Option<Arc<Credentials>> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Whether this run uses TLS.
pub fn tls() -> bool {
    TLS.get().copied().unwrap_or(false)
}

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
    let args = dllm_util::layered::with_changes(extra, &user);
    let cluster = if tls() {
        Cluster::start_secure(3, &args)
    } else {
        Cluster::start(3, &args)
    };
    let credentials = if tls() {
        Credentials {
            auth: cluster.admin(),
            signer: Some(signer(cluster.certs_dir())),
            tokens: Mutex::default(),
        }
    } else {
        Credentials {
            auth: ClientAuth::plaintext(),
            signer: None,
            tokens: Mutex::default(),
        }
    };
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(credentials));
    cluster
}

/// The token signer of the cluster whose certificates are in `certs_dir`.
fn signer(certs_dir: &Path) -> Signer {
    let key = std::fs::read(certs_dir.join(dllm_auth::certs::JWT_SIGNING_KEY))
        .expect("the cluster's token signing key");
    Signer::from_pem(&key).expect("an Ed25519 key")
}

/// Where the certificates of the cluster started last are, under `--tls` (for a child
/// process to reach the same cluster with [`use_cluster_of`]).
pub fn certs_dir(cluster: &Cluster) -> Option<PathBuf> {
    tls().then(|| cluster.certs_dir().to_path_buf())
}

/// Reaches the cluster another bench process started, as that process does: plaintext, or
/// with the admin certificate it issued and tokens signed with its key from `certs_dir`.
pub fn use_cluster_of(certs_dir: Option<&Path>) {
    let credentials = match certs_dir {
        Some(dir) => {
            let stem = dllm_auth::certs::file_stem(Role::Admin, ADMIN);
            Credentials {
                auth: ClientAuth::from_flags(
                    Some(&dir.join(dllm_auth::certs::CA_CERT)),
                    Some(&dir.join(format!("{stem}.crt"))),
                    Some(&dir.join(format!("{stem}.key"))),
                    None,
                )
                .expect("the cluster's admin certificate"),
                signer: Some(signer(dir)),
                tokens: Mutex::default(),
            }
        }
        None => Credentials {
            auth: ClientAuth::plaintext(),
            signer: None,
            tokens: Mutex::default(),
        },
    };
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(credentials));
}

/// A lazily connected channel to `addr` of the cluster started last, made like every dllm
/// client's (one DATA frame per request; TLS with an admin certificate under `--tls`).
pub fn channel(addr: &str) -> Channel {
    let auth = current().map_or_else(ClientAuth::plaintext, |c| c.auth.clone());
    channel_with(&auth, addr)
}

/// A lazily connected channel to `addr` with `auth` (the etcd runs use it too).
pub fn channel_with(auth: &ClientAuth, addr: &str) -> Channel {
    let endpoint = auth
        .endpoint(addr)
        .expect("host:port")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    auth.connect_lazy(endpoint)
}

/// `message` as a request of the worker `node_id`: under `--tls`, with that node's token.
pub fn as_worker<T>(node_id: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = worker_token(node_id) {
        request.metadata_mut().insert("authorization", token);
    }
    request
}

/// The `authorization` value a request of the worker `node_id` carries under `--tls` (made
/// once per node), `None` without.
pub fn worker_token(
    node_id: &str,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let credentials = current()?;
    let signer = credentials.signer.as_ref()?;
    let token = {
        let mut tokens = credentials.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .entry(node_id.to_string())
            .or_insert_with(|| {
                let now = dllm_tests::unix_now();
                let (token, _) = signer
                    .sign(
                        dllm_tests::TRUST_DOMAIN,
                        Role::Worker,
                        node_id,
                        now,
                        24 * 3600,
                    )
                    .expect("sign a worker token");
                format!("Bearer {token}").parse().expect("ascii")
            })
            .clone()
    };
    Some(token)
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

/// Registers `count` nodes named `id(i)` (each as `registration` gives it, as its own
/// worker), 64 at a time over `channels` in turn, retrying each up to five times.
///
/// # Panics
/// When a node cannot be registered.
pub async fn register_nodes(channels: &[Channel], count: usize, id: impl Fn(usize) -> String) {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .for_each_concurrent(64, |i| {
            let mut c = pb::discovery_service_client::DiscoveryServiceClient::new(
                channels[i % channels.len()].clone(),
            );
            let id = id(i);
            async move {
                for _ in 0..5 {
                    if c.register_with_cluster(as_worker(&id, registration(&id)))
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                panic!("cannot register node {id}");
            }
        })
        .await;
}
