//! The worker's life in the cluster: join through any seed (with backoff and jitter, following
//! the leader hint on errors), heartbeat at the interval the control plane asks for, join again when the
//! cluster no longer knows this node, and leave on shutdown. Nothing is kept on disk: after a
//! restart the worker registers under the same node id and learns its assignments again.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use dllm_auth::client::ClientAuth;
use dllm_proto::client::Channel;
use dllm_proto::pb::{self, discovery_service_client::DiscoveryServiceClient};
use dllm_util::clock::now_ms;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::{codec::CompressionEncoding, Code};
use tracing::{info, warn};

use crate::{config::Config, peers::Peers, resources::Probe};

/// Metadata key in which a control-plane replica names the leader on UNAVAILABLE.
const LEADER_METADATA_KEY: &str = "x-dllm-leader";
/// Metadata key of a heartbeat answer naming the replica to heartbeat from now on
/// (`dllm_control_plane::replica::HEARTBEAT_TO_METADATA_KEY`).
const HEARTBEAT_TO_METADATA_KEY: &str = "x-dllm-heartbeat-to";
/// Budget of one call to the control plane.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What this worker knows about itself and the cluster, shared with its gRPC API.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The node as registered (resources included).
    pub node: pb::NodeInfo,
    /// Status as the cluster last said, or "joining" before the first answer.
    pub status: String,
    /// The cluster's id, once joined.
    pub cluster_id: String,
    /// Current layer assignments.
    pub assignments: Vec<pb::LayerAssignment>,
    /// When the cluster last answered a registration or a heartbeat, Unix milliseconds.
    pub last_seen: i64,
    /// The heartbeat interval in use (the control plane's, once it has said one).
    pub heartbeat_interval: Duration,
    /// The latest usage sample.
    pub usage: pb::NodeUsage,
}

impl View {
    /// Layers assigned, summed over ranges.
    pub fn used_layers(&self) -> i32 {
        self.assignments
            .iter()
            .map(|a| a.last_layer - a.first_layer + 1)
            .sum()
    }
}

/// Shared, lock-protected [`View`] plus the host probe and the peer view.
#[derive(Clone)]
pub struct Shared {
    view: Arc<Mutex<View>>,
    probe: Arc<Mutex<Probe>>,
    /// The other members, fetched when asked, from the replica the agent last reached.
    pub peers: Arc<Peers>,
}

impl Shared {
    /// The view and probe of a worker that has not joined yet.
    pub fn new(config: &Config, probe: Probe) -> Self {
        let node = pb::NodeInfo {
            node_id: config.node_id.clone(),
            address: config.advertise_host.clone(),
            port: config.advertise_port.into(),
            resources: Some(probe.resources(config.max_layers)),
            status: "joining".to_string(),
            last_seen: 0,
        };
        let shared = Self {
            view: Arc::new(Mutex::new(View {
                node,
                status: "joining".to_string(),
                heartbeat_interval: config.heartbeat_interval,
                ..Default::default()
            })),
            probe: Arc::new(Mutex::new(probe)),
            peers: Arc::default(),
        };
        shared.sample();
        shared
    }

    /// The current view.
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a fresh usage sample, stores and returns it.
    pub fn sample(&self) -> pb::NodeUsage {
        let used = self.view().used_layers();
        let usage = self
            .probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(used, now_ms());
        self.view().usage = usage.clone();
        usage
    }
}

/// Clients to the control-plane replicas, rotating on failure. One channel per address,
/// made once and reused (a channel reconnects by itself). Each worker starts at a seed chosen
/// by its node id, so a fleet spreads its heartbeats over the replicas (followers forward
/// them to the leader in batches) instead of loading the leader with every request.
struct Seeds {
    /// How to connect (TLS, certificate or token).
    auth: ClientAuth,
    addrs: Vec<String>,
    channels: Vec<Option<Channel>>,
    current: usize,
}

impl Seeds {
    fn new(addrs: Vec<String>, node_id: &str, auth: ClientAuth) -> Self {
        // FNV-1a: stable across runs and builds, unlike std's randomized hasher.
        let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Self {
            auth,
            channels: vec![None; addrs.len()],
            current: (hash % addrs.len().max(1) as u64) as usize,
            addrs,
        }
    }

    fn client(&mut self) -> DiscoveryServiceClient<Channel> {
        let addr = &self.addrs[self.current];
        let channel = self.channels[self.current].get_or_insert_with(|| {
            let endpoint = self
                .auth
                .endpoint(addr)
                .expect("seed addresses are validated as host:port")
                .connect_timeout(Duration::from_secs(1))
                .timeout(CALL_TIMEOUT);
            self.auth.connect_lazy(endpoint)
        });
        // Requests are small (a heartbeat is a few hundred bytes): compressing them would cost
        // more CPU on both ends than it saves. Answers (peer lists) may come compressed.
        DiscoveryServiceClient::new(channel.clone()).accept_compressed(CompressionEncoding::Gzip)
    }

    /// Moves to the leader named in `status`, or to the next seed.
    fn next(&mut self, status: &tonic::Status) {
        if !self.follow(status.metadata()) {
            self.current = (self.current + 1) % self.addrs.len();
        }
    }

    /// Moves to the leader named in `metadata`, if it names a usable one.
    fn follow(&mut self, metadata: &tonic::metadata::MetadataMap) -> bool {
        self.go_to(metadata.get(LEADER_METADATA_KEY))
    }

    /// Moves to the replica at `addr` (a `host:port` metadata value), if usable.
    fn go_to(
        &mut self,
        addr: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> bool {
        let Some(l) = addr.and_then(|v| v.to_str().ok()).map(String::from) else {
            return false;
        };
        if let Some(i) = self.addrs.iter().position(|a| *a == l) {
            self.current = i;
        } else if l
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            self.addrs.push(l);
            self.channels.push(None);
            self.current = self.addrs.len() - 1;
        } else {
            return false;
        }
        true
    }
}

/// Backoff with full jitter between `base` and a 5 s cap.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100 * 2u64.saturating_pow(attempt.min(6)))
        .min(Duration::from_secs(5));
    rand::thread_rng().gen_range(cap / 2..=cap)
}

/// Runs the agent until `shutdown`, then leaves the cluster (reason `shutdown`).
pub async fn run(config: Config, shared: Shared, auth: ClientAuth, shutdown: CancellationToken) {
    let mut seeds = Seeds::new(config.seed_nodes.clone(), &config.node_id, auth);
    let mut interval = config.heartbeat_interval;
    'join: loop {
        // Join, retrying across seeds until it works or we are told to stop.
        let mut attempt = 0;
        loop {
            let node = shared.view().node.clone();
            let request = pb::ClusterJoinRequest {
                node_id: node.node_id.clone(),
                address: node.address.clone(),
                port: node.port,
                resources: node.resources.clone(),
                seed_nodes: config.seed_nodes.clone(),
                // The member list grows with the cluster; the peer view is fetched when asked.
                skip_existing_nodes: true,
            };
            let mut client = seeds.client();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = client.register_with_cluster(request) => r,
            };
            match result {
                Ok(answer) => {
                    shared.peers.use_replica(&client);
                    let answer = answer.into_inner();
                    info!(cluster_id = %answer.cluster_id, "joined the cluster ({})", answer.message);
                    let mut view = shared.view();
                    view.cluster_id = answer.cluster_id;
                    view.status = "healthy".to_string();
                    view.last_seen = now_ms();
                    break;
                }
                Err(status) if status.code() == Code::InvalidArgument => {
                    // Retrying cannot fix a registration the cluster rejects; say so loudly.
                    warn!(error = %status, "the cluster rejects this worker's registration");
                }
                Err(status) => {
                    warn!(seed = %seeds.addrs[seeds.current], error = %status, "join failed; retrying");
                    seeds.next(&status);
                }
            }
            attempt += 1;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff(attempt)) => {}
            }
        }

        // Heartbeat until the cluster forgets us or we stop.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'join,
                _ = tokio::time::sleep(interval) => {}
            }
            let usage = shared.sample();
            let request = pb::HeartbeatRequest {
                node_id: config.node_id.clone(),
                usage: Some(usage),
            };
            let mut client = seeds.client();
            match client.heartbeat(request).await {
                Ok(answer) => {
                    // The leader answers a heartbeat and names the follower to send the next
                    // ones to: followers forward heartbeats in batches, which costs the leader
                    // a fraction of taking each itself.
                    shared.peers.use_replica(&client);
                    seeds.go_to(answer.metadata().get(HEARTBEAT_TO_METADATA_KEY));
                    let answer = answer.into_inner();
                    if answer.heartbeat_interval_ms > 0 {
                        interval = Duration::from_millis(answer.heartbeat_interval_ms as u64);
                    }
                    let mut view = shared.view();
                    if view.status != answer.status {
                        info!(from = %view.status, to = %answer.status, "status as the cluster sees it");
                    }
                    view.status = answer.status;
                    view.assignments = answer.assignments;
                    view.cluster_id = answer.cluster_id;
                    view.last_seen = now_ms();
                    view.heartbeat_interval = interval;
                }
                Err(status) if status.code() == Code::NotFound => {
                    warn!("the cluster does not know this node any more; registering again");
                    shared.view().status = "joining".to_string();
                    continue 'join;
                }
                Err(status) => {
                    warn!(seed = %seeds.addrs[seeds.current], error = %status, "heartbeat failed");
                    seeds.next(&status);
                    continue;
                }
            }
        }
    }
    leave(&mut seeds, &config.node_id).await;
}

/// Tells the cluster this node is leaving; tries each seed once.
async fn leave(seeds: &mut Seeds, node_id: &str) {
    for _ in 0..seeds.addrs.len() {
        let request = pb::ClusterLeaveRequest {
            node_id: node_id.to_string(),
            reason: "shutdown".to_string(),
        };
        match seeds.client().leave_cluster(request).await {
            Ok(_) => {
                info!("left the cluster");
                return;
            }
            Err(status) if status.code() == Code::NotFound => return,
            Err(status) => {
                warn!(error = %status, "leave failed");
                seeds.next(&status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Seeds {
        Seeds::new(
            vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            "w1",
            ClientAuth::plaintext(),
        )
    }

    /// A heartbeat answer naming a replica moves the worker's next heartbeats there (a known
    /// seed, or a new address); an answer naming none, or something that is not host:port,
    /// leaves it where it is.
    #[test]
    fn a_named_replica_is_where_the_next_heartbeat_goes() {
        let mut s = seeds();
        let before = s.current;
        assert!(!s.go_to(None), "nothing named");
        assert_eq!(s.current, before, "no name: the worker stays");
        assert!(!s.go_to(Some(&"not an address".parse().expect("ascii"))));
        assert_eq!(s.current, before, "an unusable name: the worker stays");
        assert!(s.go_to(Some(&"127.0.0.1:3".parse().expect("ascii"))));
        assert_eq!(
            s.addrs[s.current], "127.0.0.1:3",
            "a new address is added and used"
        );
        assert!(s.go_to(Some(&"127.0.0.1:1".parse().expect("ascii"))));
        assert_eq!(s.addrs[s.current], "127.0.0.1:1", "a known seed is used");
        assert_eq!(s.addrs.len(), 3, "a known seed is not added twice");
    }
}
