//! One control-plane replica: the Raft node, its store, and the paths that take a client
//! request to the leader and back.
//!
//! - Writes ([`Replica::write`], [`Replica::propose`]): a replica that leads puts them into
//!   its group commit; one that knows the leader forwards them there at once, batched with
//!   the other writes it holds. The client is answered after the entry is committed on a
//!   quorum and applied on this replica, so a read that follows on the same replica sees it.
//! - Reads ([`Replica::read`]): ReadIndex. The leader confirms its leadership with a quorum
//!   and names the log index a read must reflect; this replica waits until it has applied
//!   that index, then reads its own state. So reads are linearizable on every replica.
//! - While there is no leader, requests retry until their budget runs out, then fail with
//!   `UNAVAILABLE` (never a hang past the deadline).
//!
//! The rest of the replica, one concern per file: `routing.rs` (where a request for the
//! leader goes), `propose.rs` (the leader's side of a request), `batching.rs` (group commit),
//! `forwarding.rs` (a follower's batches to the leader), `heartbeats.rs` (heartbeats and usage
//! samples), `leader_duties.rs` (liveness sweep, placement repair, the cluster id),
//! `membership.rs` (forming the cluster, adding and removing replicas, status) and
//! [`election`] (when to stand). Every task the replica starts is tracked, and
//! [`Replica::shutdown`] waits for them.

mod batching;
pub mod election;
mod forwarding;
mod heartbeats;
mod leader_duties;
mod membership;
mod propose;
mod routing;

use std::{
    future::Future,
    sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

pub use self::heartbeats::{
    EncodedHeartbeat, FORWARDED_BY_METADATA_KEY, HEARTBEAT_TO_METADATA_KEY,
};
use self::{
    batching::{run_group_commit, PendingWrite, Tasks, MAX_GROUP},
    election::ElectionState,
    forwarding::{forward_through, run_forwarder, Pending, HEARTBEAT_LINGER},
};
use crate::{
    config::Config,
    error::ApiError,
    forward::{HeartbeatAnswer, Proposal, Proto, Tagged, WriteAnswer},
    liveness::Detector,
    network::{Network, Peers},
    raft_types::{LogStore, Raft, StateHandle, StateMachine},
    recovery::{self, Recovery},
    state::{ClusterState, Command, Outcome},
};
use dllm_proto::pb;

/// A running replica. Cheap to share behind an `Arc`.
pub struct Replica {
    /// This replica's Raft id.
    pub id: u64,
    /// The Raft node.
    pub raft: Raft,
    state: StateHandle,
    log_store: LogStore,
    peers: Peers,
    config: Config,
    detector: Mutex<Detector>,
    /// The leader's background merges under way (`placement::merge`): soft state, like the
    /// detector's.
    merger: Mutex<crate::placement::merge::Merger>,
    heartbeats: AtomicU64,
    /// When each follower last forwarded heartbeats to this replica as leader: the followers
    /// a worker heartbeating the leader may be sent to (`heartbeats.rs`).
    forwarders: Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>,
    /// Client writes waiting to be committed together (see `batching.rs`).
    group_commit: tokio::sync::mpsc::Sender<PendingWrite>,
    /// Client writes waiting to be forwarded to the leader together (see `forwarding.rs`).
    forwarder: tokio::sync::mpsc::Sender<Pending<Tagged, WriteAnswer>>,
    /// Heartbeats waiting to be forwarded to the leader together.
    heartbeat_forwarder:
        tokio::sync::mpsc::Sender<Pending<Proto<pb::HeartbeatRequest>, HeartbeatAnswer>>,
    /// What the election task shares with the rest (see [`election`]).
    election: ElectionState,
    /// Every task the replica starts, awaited by [`Replica::shutdown`].
    tasks: TaskTracker,
    /// Cancelled by [`Replica::shutdown`]: background loops end.
    stop: CancellationToken,
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created or opened.
    #[error(transparent)]
    Store(#[from] dllm_storage::OpenError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// openraft rejected the configuration.
    #[error("invalid Raft settings: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    /// openraft failed to start.
    #[error("Raft failed to start: {0}")]
    Raft(#[from] openraft::error::Fatal<u64>),
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] dllm_auth::tls::TlsError),
    /// `--restore-from` was refused; the data directory is as it was.
    #[error("--restore-from {path}: {reason}")]
    Restore {
        /// The snapshot file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// `--force-new-cluster` failed.
    #[error("--force-new-cluster: {0}")]
    Recovery(#[from] dllm_storage::recovery::RecoveryError),
}

/// Why a replica did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// Raft did not shut down cleanly.
    #[error("Raft shutdown failed: {0}")]
    Raft(String),
    /// The final flush failed.
    #[error("final flush of the data directory failed: {0}")]
    Flush(std::io::Error),
}

impl Replica {
    /// Opens the store, starts Raft and the replica's background tasks (group commit,
    /// forwarding, elections, leader duties) and, on the first start of a founding replica,
    /// forms the cluster from `--initial-cluster`.
    ///
    /// # Errors
    /// [`StartError`] when the store cannot be opened or Raft cannot start.
    pub async fn start(config: Config) -> Result<Arc<Self>, StartError> {
        #[cfg(feature = "planted-bugs")]
        crate::planted::enabled(""); // logs which planted bugs are on, once, at start
        match &config.recovery {
            Recovery::RestoreFrom(path) => recovery::restore(&config, path)?,
            Recovery::ForceNewCluster => recovery::check_survivor(&config)?,
            Recovery::None => {}
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let (log_store, state_machine): (LogStore, StateMachine) = dllm_storage::open(
            &config.data_dir.join("raft"),
            &dllm_storage::StoreOptions::default(),
        )?;
        if config.recovery == Recovery::ForceNewCluster {
            recovery::force_new_cluster(&config, &log_store, &state_machine).await?;
        }
        let state = state_machine.state();
        let tasks = Tasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        // Replicas reach each other with their own certificate (identity `replica/<id>`).
        let peer_auth = match &config.security.tls {
            Some(files) => dllm_auth::client::ClientAuth {
                tls: Some(dllm_auth::tls::client(files.clone())?),
                ..Default::default()
            },
            None => dllm_auth::client::ClientAuth::plaintext(),
        };
        let peers = Peers::new(peer_auth);
        let raft = Raft::new(
            config.id,
            Arc::new(config.raft_config()?),
            Network::new(peers.clone()),
            log_store.clone(),
            state_machine,
        )
        .await?;
        let (group_commit, queue) = tokio::sync::mpsc::channel(4 * MAX_GROUP);
        tasks.tracker.spawn(run_group_commit(
            raft.clone(),
            queue,
            config.max_writes_per_entry,
            tasks.clone(),
        ));
        let (forwarder, queue) = tokio::sync::mpsc::channel(4 * MAX_GROUP);
        tasks.tracker.spawn(run_forwarder(
            peers.clone(),
            queue,
            Duration::ZERO,
            Some(("ForwardWriteStream", |mut c, r| {
                Box::pin(async move { c.forward_write_stream(r).await })
            })),
            tasks.clone(),
            |mut c, r| async move { c.forward_write(r).await },
        ));
        let (heartbeat_forwarder, queue) = tokio::sync::mpsc::channel(16 * MAX_GROUP);
        let config_id = config.id;
        // Heartbeats are not latency-critical (one per second per worker): waiting a few
        // milliseconds gathers many into one call, which is what keeps the leader's cost low.
        tasks.tracker.spawn(run_forwarder(
            peers.clone(),
            queue,
            HEARTBEAT_LINGER,
            None,
            tasks.clone(),
            move |mut c, mut r: tonic::Request<_>| {
                // Who forwards: the leader sends workers only to followers that do.
                r.metadata_mut()
                    .insert(FORWARDED_BY_METADATA_KEY, config_id.into());
                async move { c.forward_heartbeat(r).await }
            },
        ));
        let replica = Arc::new(Self {
            id: config.id,
            group_commit,
            forwarder,
            heartbeat_forwarder,
            election: ElectionState::new(),
            raft,
            state,
            log_store,
            peers,
            detector: Mutex::new(Detector::new(config.liveness)),
            merger: Mutex::default(),
            heartbeats: Default::default(),
            forwarders: Mutex::default(),
            config,
            tasks: tasks.tracker,
            stop: tasks.stop,
        });
        replica.form_cluster_once().await?;
        replica.spawn(replica.clone().run_leader_duties());
        replica.spawn(replica.clone().run_liveness());
        replica.spawn(replica.clone().run_elections());
        Ok(replica)
    }

    /// Runs `task` as one of the replica's own: [`Replica::shutdown`] waits for it, and it
    /// should end when [`Replica::stopping`] is cancelled.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Cancelled when the replica begins to shut down.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops the replica: its background loops end, Raft shuts down, the streams to its
    /// peers close, every task it started is awaited (for up to `deadline`; one still
    /// running then is named in a warning and left), and the store is flushed.
    ///
    /// # Errors
    /// [`ShutdownError`] when Raft does not stop cleanly or the flush fails.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), ShutdownError> {
        self.stop.cancel();
        let raft = self
            .raft
            .shutdown()
            .await
            .map_err(|e| ShutdownError::Raft(e.to_string()));
        self.tasks.close();
        let ended = async {
            self.peers.close().await;
            self.tasks.wait().await;
        };
        if tokio::time::timeout(deadline, ended).await.is_err() {
            warn!(
                running = self.tasks.len(),
                ?deadline,
                "replica tasks still running after shutdown's deadline; stopping anyway"
            );
        }
        raft?;
        self.log_store.flush().await.map_err(ShutdownError::Flush)
    }

    /// Read access to the applied state without any linearizability wait; for metrics and
    /// background tasks, never for answering clients.
    pub fn local_state(&self) -> &StateHandle {
        &self.state
    }

    /// Whether the known leader has gone silent past the election timeout; see
    /// [`election`].
    pub fn leader_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.election.watch_leader_lost()
    }

    /// The configuration the replica runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Heartbeats this replica has handled as leader.
    pub fn heartbeats_received(&self) -> u64 {
        self.heartbeats.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn detector(&self) -> MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait_applied(&self, index: Option<u64>, budget: Duration) -> Result<(), ApiError> {
        let Some(index) = index else { return Ok(()) };
        if self.state.last_applied_index() >= Some(index) {
            return Ok(());
        }
        self.raft
            .wait(Some(budget))
            .applied_index_at_least(Some(index), "catch up before answering")
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::unavailable(format!(
                    "this replica has not applied index {index} yet: {e}"
                ))
            })
    }

    /// Commits `command` through the leader and waits until this replica has applied it.
    ///
    /// Every attempt carries the same request id (see [`Replica::propose`]), so a retry after
    /// an unknown outcome (a leader that died mid-request) is not applied twice.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader or quorum within the request budget; the state machine's
    /// rejection otherwise.
    pub async fn write(&self, command: Command) -> Result<Outcome, ApiError> {
        self.propose(Proposal::Command(command)).await
    }

    /// Commits `proposal` through the leader (which turns an intent into a command) and
    /// waits until this replica has applied it.
    ///
    /// # Errors
    /// As [`Replica::write`].
    pub async fn propose(&self, proposal: Proposal) -> Result<Outcome, ApiError> {
        let budget = self.config.request_timeout;
        // One id for every attempt of this request, so a retry after an unknown outcome is
        // answered as the first attempt was instead of being applied twice.
        let request_id: u128 = rand::random();
        let (outcome, index) = self
            .at_leader(
                budget,
                "write",
                || self.leader_propose(request_id, proposal.clone()),
                |addr, timeout| {
                    let tagged = Tagged {
                        request_id,
                        proposal: proposal.clone(),
                    };
                    forward_through(self.forwarder.clone(), addr, tagged, timeout)
                },
            )
            .await?;
        self.wait_applied(Some(index), budget).await?;
        match outcome {
            Outcome::Rejected(rejection) => Err(rejection.into()),
            other => Ok(other),
        }
    }

    /// Waits until this replica's state reflects every write acknowledged before the call.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader or quorum within the request budget.
    pub async fn linearize(&self) -> Result<(), ApiError> {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::enabled(crate::planted::STALE_READS) {
            // Planted bug: answer from the local state machine without a read index.
            return Ok(());
        }
        let budget = self.config.request_timeout;
        let index = self
            .at_leader(
                budget,
                "read",
                || self.leader_read_index(),
                |addr, timeout| {
                    let peers = self.peers.clone();
                    async move {
                        peers
                            .call(&addr, &(), timeout, |mut c, r| async move {
                                c.read_index(r).await
                            })
                            .await
                    }
                },
            )
            .await?;
        self.wait_applied(index, budget).await
    }

    /// A linearizable read: `f` sees every write acknowledged before this call.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader or quorum within the request budget.
    pub async fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> Result<T, ApiError> {
        self.linearize().await?;
        Ok(self.state.read(f))
    }

    /// Makes sure the cluster has an id; the first leader proposes one.
    ///
    /// # Errors
    /// As [`Replica::write`].
    pub async fn ensure_cluster_id(&self) -> Result<String, ApiError> {
        if let Some(id) = self.state.read(|s| s.cluster_id.clone()) {
            return Ok(id);
        }
        let proposed = uuid::Uuid::new_v4().to_string();
        match self
            .write(Command::SetClusterId {
                cluster_id: proposed,
            })
            .await?
        {
            Outcome::ClusterId { cluster_id } => Ok(cluster_id),
            other => Err(ApiError::Internal(format!(
                "SetClusterId answered {other:?}"
            ))),
        }
    }
}
