//! One control-plane replica: the Raft node, its store, and the paths that take a client
//! request to the leader and back.
//!
//! - Writes: proposed locally when this replica leads; otherwise forwarded to the leader over
//!   `RaftService.ForwardWrite`. The client is answered after the entry is committed on a
//!   quorum and applied on this replica, so a read that follows on the same replica sees it.
//! - Reads: ReadIndex. The leader confirms its leadership with a quorum and names the log
//!   index a read must reflect; this replica waits until it has applied that index, then reads
//!   its own state. So reads are linearizable on every replica.
//! - While there is no leader, requests retry until their budget runs out, then fail with
//!   `UNAVAILABLE` (never a hang past the deadline).

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use dllm_proto::client::Channel;
use dllm_proto::{
    pb,
    raft::{raft_service_client::RaftServiceClient, RaftPayload},
};
use openraft::{
    error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError},
    BasicNode, ChangeMembers, ServerState,
};
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    error::ApiError,
    forward::{
        HeartbeatAnswer, MembershipAnswer, MembershipChange, Proposal, ReadIndexAnswer, Tagged,
        UsageAnswer, UsageQuery, WireError, WriteAnswer,
    },
    liveness::{Detector, Heard},
    network::{Network, OpenStream, PeerError, Peers},
    placement,
    raft_types::{LogStore, Raft, StateHandle, StateMachine},
    state::{ClusterState, Command, EncodedCommand, NodeStatus, Outcome, StatusChange},
};

/// Budget of a replica membership change: adding a replica waits for it to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// Nodes a failure-detector sweep looks at per read of the state (about 0.5 ms of looks).
const SWEEP_CHUNK: usize = 256;

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
    heartbeats: std::sync::atomic::AtomicU64,
    /// Client writes waiting to be committed together (see [`run_group_commit`]).
    group_commit: tokio::sync::mpsc::Sender<PendingWrite>,
    /// Client writes waiting to be forwarded to the leader together (see [`run_forwarder`]).
    forwarder: tokio::sync::mpsc::Sender<PendingForward>,
    /// Heartbeats waiting to be forwarded to the leader together.
    heartbeat_forwarder: tokio::sync::mpsc::Sender<PendingHeartbeat>,
    /// True while the leader this replica knows has been silent past the election timeout
    /// (set by the election task): openraft still names it, but it is not a leader to trust.
    leader_lost: tokio::sync::watch::Sender<bool>,
    /// When this replica last resumed from a pause (see [`crate::election`]).
    resumed_at: Mutex<Option<tokio::time::Instant>>,
}

/// A request to forward: the leader's address, the request, the time left, and where the
/// leader's answer (or why none came) goes.
type Pending<T, A> = (
    String,
    T,
    Duration,
    tokio::sync::oneshot::Sender<Result<A, String>>,
);
/// A client write to forward.
type PendingForward = Pending<Tagged, WriteAnswer>;
/// A worker's heartbeat (protobuf-encoded) to forward.
type PendingHeartbeat = Pending<Vec<u8>, HeartbeatAnswer>;

/// How long a follower gathers heartbeats before forwarding them to the leader in one call.
const HEARTBEAT_LINGER: Duration = Duration::from_millis(5);

/// Most forwarded calls in flight from one replica, per kind of request. Two: while one batch
/// commits in the leader's current group, the next can wait in the leader's queue for the
/// following group, so a follower's writes reach every group; more only splits the same
/// writes into more, smaller calls. Measured on the 2-core bench VM against 4 (alternated
/// runs): 256 clients +6-21% ops/s, 64 clients +0-3.5% (one outlier the other way), less
/// replica CPU per write in 7 of 8 pairs; 1 in flight was no better than 2.
const MAX_FORWARDS_IN_FLIGHT: usize = 2;

/// Batched forwarding on followers: requests that queue up while earlier forwards are in
/// flight go to the leader in one call (`call`: `ForwardWrite` or `ForwardHeartbeat`; a list of
/// requests, answered by a list), so the follower-to-leader hop costs one request per batch
/// instead of one per client request.
async fn run_forwarder<T, A, C, CF>(
    peers: Peers,
    queue: tokio::sync::mpsc::Receiver<Pending<T, A>>,
    linger: Duration,
    stream: Option<(&'static str, OpenStream)>,
    call: C,
) where
    T: Serialize + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    C: Fn(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> CF
        + Clone
        + Send
        + Sync
        + 'static,
    CF: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>> + Send,
{
    run_batches(
        queue,
        MAX_GROUP,
        MAX_FORWARDS_IN_FLIGHT,
        linger,
        move |mut jobs: Vec<Pending<T, A>>| {
            let (peers, call) = (peers.clone(), call.clone());
            async move {
                let mut by_leader: BTreeMap<String, Vec<Pending<T, A>>> = BTreeMap::new();
                for job in jobs.drain(..) {
                    by_leader.entry(job.0.clone()).or_default().push(job);
                }
                let calls = by_leader
                    .into_iter()
                    .map(|(addr, jobs)| forward_batch(&peers, addr, jobs, stream, call.clone()));
                futures::future::join_all(calls).await;
            }
        },
    )
    .await;
}

/// Queues `request` for batched forwarding to the leader at `addr` and waits for its answer.
async fn forward_through<T, A>(
    queue: tokio::sync::mpsc::Sender<Pending<T, A>>,
    addr: String,
    request: T,
    timeout: Duration,
) -> Result<A, PeerError> {
    let failed = |reason: String| PeerError::Failed {
        addr: addr.clone(),
        reason,
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    queue
        .send((addr.clone(), request, timeout, answer))
        .await
        .map_err(|_| failed("replica shutting down".into()))?;
    answered
        .await
        .map_err(|_| failed("replica shutting down".into()))?
        .map_err(failed)
}

/// Takes items off `queue` in batches of up to `max_batch` and runs `handle` on each batch,
/// at most `in_flight` at once; a batch also takes whatever queued up while it waited for a
/// slot, and, with a non-zero `linger`, whatever arrives that long after its first item.
/// Shared by group commit and batched forwarding.
async fn run_batches<T, F, Fut>(
    mut queue: tokio::sync::mpsc::Receiver<T>,
    max_batch: usize,
    in_flight: usize,
    linger: Duration,
    handle: F,
) where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        if !linger.is_zero() && batch.len() < max_batch {
            tokio::time::sleep(linger).await;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let work = handle(std::mem::replace(&mut batch, Vec::with_capacity(max_batch)));
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

async fn forward_batch<T, A, C, CF>(
    peers: &Peers,
    addr: String,
    jobs: Vec<Pending<T, A>>,
    stream: Option<(&'static str, OpenStream)>,
    call: C,
) where
    T: Serialize,
    A: DeserializeOwned,
    C: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> CF,
    CF: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
{
    let timeout = jobs
        .iter()
        .map(|j| j.2)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let (requests, answers): (Vec<T>, Vec<_>) = jobs
        .into_iter()
        .map(|(_, r, _, answer)| (r, answer))
        .unzip();
    let result = match stream {
        Some(stream) => {
            peers
                .call_streamed(&addr, stream, &requests, timeout, call)
                .await
        }
        None => peers.call(&addr, &requests, timeout, call).await,
    };
    let result: Result<Vec<A>, String> = result.map_err(|e| e.to_string());
    match result {
        Ok(results) if results.len() == answers.len() => {
            for (result, answer) in results.into_iter().zip(answers) {
                let _ = answer.send(Ok(result));
            }
        }
        Ok(results) => {
            let e = format!(
                "{addr} answered {} of {} forwarded requests",
                results.len(),
                answers.len()
            );
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

/// A client write queued for group commit, and where its answer goes.
type PendingWrite = (Command, tokio::sync::oneshot::Sender<WriteAnswer>);

/// Most client writes in one log entry by default (`--max-writes-per-entry`), and most
/// requests in one forwarded batch.
const MAX_GROUP: usize = 256;
/// Most group entries proposed but not yet applied at once. One: every write that arrives
/// while a group commits joins the next group, so the groups are as large as the load makes
/// them, and per-entry costs (an append, a replication round, an fsync on each replica, an
/// apply) are paid once per round. Measured on the 2-core bench VM against 4 (alternated
/// runs): 64 clients +10%, 256 clients +12-15%, p99 lower; 1 client unchanged.
const MAX_GROUPS_IN_FLIGHT: usize = 1;

/// Group commit on the leader: client writes that arrive while earlier ones are being
/// committed are proposed together as one [`Command::Batch`] entry, so one Raft append, one
/// replication round and one fsync on each replica serve all of them. [`MAX_GROUPS_IN_FLIGHT`]
/// group is in flight at a time, so a quiet cluster still commits a lone write at once, and a
/// busy one waits at most one round before its group starts.
async fn run_group_commit(
    raft: Raft,
    queue: tokio::sync::mpsc::Receiver<PendingWrite>,
    max_per_entry: usize,
) {
    // Smaller groups (down to one write per entry) get more of them in flight, so as many
    // writes can be under way as with full groups.
    let in_flight = MAX_GROUPS_IN_FLIGHT * (MAX_GROUP / max_per_entry).max(1);
    run_batches(
        queue,
        max_per_entry,
        in_flight,
        Duration::ZERO,
        move |writes| {
            let raft = raft.clone();
            async move { commit_group(&raft, writes).await }
        },
    )
    .await;
}

async fn commit_group(raft: &Raft, mut writes: Vec<PendingWrite>) {
    if writes.len() == 1 {
        let (command, answer) = writes.pop().expect("one write");
        let _ = answer.send(client_write(raft, command).await);
        return;
    }
    let (commands, answers): (Vec<Command>, Vec<_>) = writes.into_iter().unzip();
    match client_write(raft, Command::Batch(commands)).await {
        Ok((Outcome::Batch(outcomes), index)) => {
            for (outcome, answer) in outcomes.into_iter().zip(answers) {
                let _ = answer.send(Ok((outcome, index)));
            }
        }
        Ok((other, _)) => {
            let e = WireError::Unavailable(format!("a group commit answered {other:?}"));
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

/// Proposes `command` through openraft; the outcome and the entry's log index.
///
/// openraft answers a proposal only once its entry is applied or truncated. A leader that
/// loses its term with entries not yet committed keeps their callers waiting until a new
/// leader reaches it, which, under load, took seconds: so a proposal made while this replica
/// leads ends with `NotLeader` as soon as it no longer leads in that term, and the caller
/// retries at the new leader. The outcome is then unknown, as after any lost answer: client
/// writes carry a request id ([`Command::Once`]) that answers a retry as the first attempt,
/// and the replica's own writes (status changes, placement repairs) are checked against the
/// state they were planned on when they apply.
async fn client_write(raft: &Raft, command: Command) -> WriteAnswer {
    let command = EncodedCommand::encode(&command)
        .map_err(|e| WireError::Internal(format!("cannot encode a command: {e}")))?;
    let mut metrics = raft.metrics();
    let leading_in = {
        let m = metrics.borrow_and_update();
        (m.state == ServerState::Leader).then_some(m.current_term)
    };
    let write = raft.client_write(command);
    let result = match leading_in {
        Some(term) => tokio::select! {
            result = write => result,
            () = deposed(&mut metrics, term) => {
                return Err(WireError::NotLeader(None));
            }
        },
        None => write.await,
    };
    match result {
        Ok(response) => Ok((response.data, response.log_id.index)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(forward_hint(&f)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(WireError::FailedPrecondition(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(WireError::Unavailable(format!("replica stopped: {e}"))),
    }
}

/// Resolves once the replica these metrics describe no longer leads in `term` (or stops).
async fn deposed(
    metrics: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    term: u64,
) {
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader || m.current_term != term {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
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
}

fn forward_hint(f: &ForwardToLeader<u64, BasicNode>) -> WireError {
    WireError::NotLeader(
        f.leader_id
            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
    )
}

impl Replica {
    /// Opens the store, starts Raft and, on the first start of a founding replica, forms the
    /// cluster from `--initial-cluster`.
    ///
    /// # Errors
    /// [`StartError`] when the store cannot be opened or Raft cannot start.
    pub async fn start(config: Config) -> Result<Arc<Self>, StartError> {
        #[cfg(feature = "planted-bugs")]
        crate::planted::enabled(""); // logs which planted bugs are on, once, at start
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let (log_store, state_machine): (LogStore, StateMachine) = dllm_storage::open(
            &config.data_dir.join("raft"),
            &dllm_storage::StoreOptions {
                log_segment_bytes: config.log_segment_bytes,
                ..Default::default()
            },
        )?;
        let state = state_machine.state();
        let peers = Peers::default();
        let raft = Raft::new(
            config.id,
            Arc::new(config.raft_config()?),
            Network::new(peers.clone()),
            log_store.clone(),
            state_machine,
        )
        .await?;
        let (group_commit, queue) = tokio::sync::mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(run_group_commit(
            raft.clone(),
            queue,
            config.max_writes_per_entry,
        ));
        let (forwarder, queue) = tokio::sync::mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(run_forwarder(
            peers.clone(),
            queue,
            Duration::ZERO,
            Some(("ForwardWriteStream", |mut c, r| {
                Box::pin(async move { c.forward_write_stream(r).await })
            })),
            |mut c, r| async move { c.forward_write(r).await },
        ));
        let (heartbeat_forwarder, queue) = tokio::sync::mpsc::channel(16 * MAX_GROUP);
        // Heartbeats are not latency-critical (one per second per worker): waiting a few
        // milliseconds gathers many into one call, which is what keeps the leader's cost low.
        tokio::spawn(run_forwarder(
            peers.clone(),
            queue,
            HEARTBEAT_LINGER,
            None,
            |mut c, r| async move { c.forward_heartbeat(r).await },
        ));
        let replica = Arc::new(Self {
            id: config.id,
            group_commit,
            forwarder,
            heartbeat_forwarder,
            leader_lost: tokio::sync::watch::Sender::new(false),
            resumed_at: Mutex::new(None),
            raft,
            state,
            log_store,
            peers,
            detector: Mutex::new(Detector::new(config.liveness)),
            heartbeats: Default::default(),
            config,
        });
        replica.form_cluster_once().await?;
        Ok(replica)
    }

    /// Initializes Raft with the founding members when this replica is one of them and its
    /// store is pristine. Every founding replica does this with the same membership, so the
    /// order in which they start does not matter; a restarted replica has a log and skips it.
    async fn form_cluster_once(&self) -> Result<(), StartError> {
        let members = &self.config.initial_cluster;
        if !members.contains_key(&self.id) || self.raft.is_initialized().await? {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => info!(members = ?members, "formed the cluster from --initial-cluster"),
            // Another founding replica's log reached us first: nothing to do.
            Err(RaftError::APIError(e)) => info!(reason = %e, "cluster already formed"),
            Err(RaftError::Fatal(e)) => return Err(e.into()),
        }
        Ok(())
    }

    /// Read access to the applied state without any linearizability wait; for metrics and
    /// background tasks, never for answering clients.
    pub fn local_state(&self) -> &StateHandle {
        &self.state
    }

    /// Whether the known leader has gone silent past the election timeout; see
    /// [`crate::election`].
    pub fn leader_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader_lost.subscribe()
    }

    pub(crate) fn resumed_at(&self) -> Option<tokio::time::Instant> {
        *self.resumed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_resumed_at(&self, at: tokio::time::Instant) {
        *self.resumed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    pub(crate) fn set_leader_lost(&self, lost: bool) {
        self.leader_lost
            .send_if_modified(|v| std::mem::replace(v, lost) != lost);
    }

    /// Channels to the other replicas.
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// A reader of this replica's Raft log.
    pub(crate) fn log_reader(&self) -> LogStore {
        self.log_store.clone()
    }

    /// The configuration the replica runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Flushes the store; part of a clean shutdown.
    ///
    /// # Errors
    /// When sled cannot flush.
    pub async fn flush(&self) -> std::io::Result<()> {
        self.log_store.flush().await
    }

    /// Heartbeats this replica has handled as leader.
    pub fn heartbeats_received(&self) -> u64 {
        self.heartbeats.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn detector(&self) -> MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that this replica leads, starting its failure detector if it just became leader.
    fn leading(&self) -> Result<(), WireError> {
        let (is_leader, hint) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let hint = m.current_leader.and_then(|l| {
                let node = m.membership_config.membership().get_node(&l)?;
                Some((l, node.addr.clone()))
            });
            (m.state == ServerState::Leader, hint)
        };
        let mut detector = self.detector();
        match (is_leader, detector.leading()) {
            (true, false) => detector.become_leader(tokio::time::Instant::now()),
            (false, true) => detector.step_down(),
            _ => {}
        }
        if is_leader {
            Ok(())
        } else {
            Err(WireError::NotLeader(hint))
        }
    }

    /// The leader's address, when known (and not silent past the election timeout).
    pub fn leader_addr(&self) -> Option<String> {
        if *self.leader_lost.borrow() {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Runs `op` at the leader: here when this replica leads, otherwise at the leader it names,
    /// retrying through elections until `budget` is spent.
    async fn at_leader<T, L, LF, R, RF>(
        &self,
        budget: Duration,
        what: &str,
        local: L,
        remote: R,
    ) -> Result<T, ApiError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, WireError>>,
        R: Fn(String, Duration) -> RF,
        RF: Future<Output = Result<Result<T, WireError>, PeerError>>,
    {
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                match local().await {
                    Err(WireError::NotLeader(Some((leader, addr)))) if leader != self.id => {
                        match remote(addr, remaining).await {
                            Ok(answer) => answer,
                            Err(e) => Err(WireError::Unavailable(e.to_string())),
                        }
                    }
                    other => other,
                }
            };
            let error = match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e @ (WireError::NotLeader(_) | WireError::Unavailable(_)))) => e,
                Ok(Err(e)) => return Err(e.into_api(self.leader_addr())),
                Err(_) => WireError::Unavailable(format!("no answer within {budget:?}")),
            };
            if Instant::now() + backoff >= deadline {
                let reason = match error {
                    WireError::Unavailable(m) => m,
                    _ => "no leader".to_string(),
                };
                return Err(ApiError::Unavailable {
                    message: format!(
                        "{what}: no leader or quorum answered within {budget:?} ({reason})"
                    ),
                    leader: self.leader_addr(),
                });
            }
            // Wait for a leader other than the one that just failed us (or none), but no longer
            // than the backoff: retrying the moment an election ends is most of failover time.
            let failed_leader = self.raft.metrics().borrow().current_leader;
            let _ = self
                .raft
                .wait(Some(backoff))
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != failed_leader,
                    "a new leader",
                )
                .await;
            // Short: a new leader is usually known within one election timeout.
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Turns `proposal` into a command with this replica's state (placement is decided here,
    /// on the leader) and proposes it; leader only.
    pub async fn leader_propose(&self, request_id: u128, proposal: Proposal) -> WriteAnswer {
        let command = match proposal {
            Proposal::Command(command) => command,
            Proposal::AddModel(spec) => {
                self.leading()?;
                let placement = self.state.read(|s| placement::fresh(s, &spec));
                Command::AddModel { spec, placement }
            }
            Proposal::Rebalance(model_id) => {
                self.leading()?;
                let changes = self.state.read(|s| {
                    if model_id
                        .as_ref()
                        .is_some_and(|id| !s.models.contains_key(id))
                    {
                        return Err(WireError::NotFound {
                            kind: "model".into(),
                            id: model_id.clone().unwrap_or_default(),
                        });
                    }
                    Ok(placement::rebalance(s, model_id.as_deref()))
                })?;
                Command::SetPlacements { changes }
            }
        };
        let command = Command::Once {
            request_id,
            command: Box::new(command),
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.group_commit
            .send((command, answer))
            .await
            .map_err(|_| WireError::Unavailable("replica shutting down".into()))?;
        answered
            .await
            .map_err(|_| WireError::Unavailable("replica shutting down".into()))?
    }

    /// Proposes `command` on this replica, which must be the leader.
    pub async fn leader_write(&self, command: Command) -> WriteAnswer {
        client_write(&self.raft, command).await
    }

    /// The index a linearizable read must wait for, confirmed by a quorum; leader only.
    pub async fn leader_read_index(&self) -> ReadIndexAnswer {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward_hint(&f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(WireError::Unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => {
                Err(WireError::Unavailable(format!("replica stopped: {e}")))
            }
        }
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

    /// Records heartbeats on this replica, which must be the leader, and answers each.
    /// Writes nothing: a node that was unhealthy or offline is made healthy by the next
    /// liveness tick, batched with every other transition. A follower's batch costs one state
    /// read and one lock of the failure detector for all of its heartbeats.
    pub fn leader_heartbeats(&self, requests: Vec<pb::HeartbeatRequest>) -> Vec<HeartbeatAnswer> {
        if let Err(e) = self.leading() {
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        self.heartbeats
            .fetch_add(requests.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let now_ms = dllm_util::clock::now_ms();
        let interval_ms = self.config.liveness.interval.as_millis() as i32;
        // The detector is updated after the state's lock is released (see
        // `sweep_statuses`): heard from (the node's id, generation and status, its usage
        // sample).
        let mut heard = Vec::with_capacity(requests.len());
        let answers = self.state.read(|s| {
            let cluster_id = s.cluster_id.clone().unwrap_or_default();
            requests
                .into_iter()
                .map(|mut request| {
                    let Some(node) = s
                        .nodes
                        .get(&request.node_id)
                        .filter(|n| n.status != NodeStatus::Left)
                    else {
                        return Err(WireError::NotFound {
                            kind: "node".into(),
                            id: request.node_id,
                        });
                    };
                    heard.push((
                        node.node_id.clone(),
                        node.generation,
                        node.status,
                        request.usage.take(),
                    ));
                    let response = pb::HeartbeatResponse {
                        status: node.status.as_str().to_string(),
                        assignments: s
                            .models
                            .values()
                            .flat_map(|m| {
                                m.ranges()
                                    .iter()
                                    .filter(|r| r.node_id == request.node_id)
                                    .map(|r| pb::LayerAssignment {
                                        model_id: m.spec.id.clone(),
                                        first_layer: r.first,
                                        last_layer: r.last,
                                    })
                            })
                            .collect(),
                        heartbeat_interval_ms: interval_ms,
                        cluster_id: cluster_id.clone(),
                    };
                    Ok(response.encode_to_vec())
                })
                .collect()
        });
        let mut detector = self.detector();
        for (node_id, generation, status, usage) in heard {
            let node = Heard {
                node_id: &node_id,
                generation,
                status,
            };
            detector.heard(node, usage, now, now_ms);
        }
        answers
    }

    /// A heartbeat, carried to the leader: recorded here when this replica leads, otherwise
    /// queued and forwarded together with the other heartbeats this follower received
    /// meanwhile (one `ForwardHeartbeat` call per batch), so workers can heartbeat any replica
    /// and the leader's cost per heartbeat stays small.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown or left node; `UNAVAILABLE` without a leader.
    pub async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, ApiError> {
        let encoded = request.encode_to_vec();
        let bytes = self
            .at_leader(
                self.config.request_timeout,
                "heartbeat",
                || {
                    let answer = self
                        .leader_heartbeats(vec![request.clone()])
                        .pop()
                        .unwrap_or_else(|| Err(WireError::Internal("no heartbeat answer".into())));
                    std::future::ready(answer)
                },
                |addr, timeout| {
                    let (queue, encoded) = (self.heartbeat_forwarder.clone(), encoded.clone());
                    forward_through(queue, addr, encoded, timeout)
                },
            )
            .await?;
        pb::HeartbeatResponse::decode(bytes.as_slice())
            .map_err(|e| ApiError::Internal(format!("undecodable heartbeat answer: {e}")))
    }

    /// Answers a question about the soft state; leader only.
    pub async fn leader_usage(&self, query: UsageQuery) -> Result<UsageAnswer, WireError> {
        self.leading()?;
        let detector = self.detector();
        Ok(match query {
            UsageQuery::Node(id) => UsageAnswer {
                sample: detector.usage(&id).map(|u| u.encode_to_vec()),
                ..Default::default()
            },
            UsageQuery::FreeMemory => UsageAnswer {
                free_memory_mb: detector.free_memory().into_iter().collect(),
                ..Default::default()
            },
        })
    }

    /// The leader's latest usage sample of `node_id`, if it has one.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader.
    pub async fn usage(&self, query: UsageQuery) -> Result<UsageAnswer, ApiError> {
        self.at_leader(
            self.config.request_timeout,
            "usage",
            || self.leader_usage(query.clone()),
            |addr, timeout| {
                let (peers, query) = (self.peers.clone(), query.clone());
                async move {
                    peers
                        .call(&addr, &query, timeout, |mut c, r| async move {
                            c.node_usage(r).await
                        })
                        .await
                }
            },
        )
        .await
    }

    /// Background duty of every replica: while leading, sweep the failure detector and
    /// commit the transitions it finds (in one entry); while following, keep no soft state.
    /// Ends when Raft shuts down.
    pub async fn run_liveness(self: Arc<Self>) {
        let every = (self.config.liveness.interval / 4).max(Duration::from_millis(20));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            if self.leading().is_err() {
                continue;
            }
            self.sweep_statuses().await;
            self.repair_placement().await;
        }
    }

    /// Commits the placement repairs the current state needs (orphaned ranges, pending
    /// models), as one entry; nothing when nothing needs repair.
    async fn repair_placement(&self) {
        let changes = self.state.read(placement::repair);
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            info!(model = %c.model_id, placement = ?c.placement, "placement repair");
        }
        match self.leader_write(Command::SetPlacements { changes }).await {
            Ok((Outcome::PlacementsChanged { skipped, .. }, _)) if !skipped.is_empty() => {
                warn!(
                    ?skipped,
                    "some placement changes were stale; replanning next tick"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = ?e, "could not commit placement repairs; retrying next tick"),
        }
    }

    /// Commits the status transitions the failure detector finds, as one entry. The sweep
    /// copies the state's nodes out a chunk at a time ([`SWEEP_CHUNK`]), a look at every node
    /// included, and looks at them with the state unlocked: tens of thousands of looks under
    /// one read lock held apply, and so every write, for tens of milliseconds, and a look
    /// that grew the detector's map (a rehash of every node it tracks, 40 ms at 115,000
    /// nodes, several times that on a busy machine) held it long enough that, with both
    /// runtime threads stuck (one looking, one waiting to apply), the leader sent no
    /// heartbeats and was deposed. A sweep whose term ended meanwhile proposes nothing.
    async fn sweep_statuses(&self) {
        {
            let started = std::time::Instant::now();
            let now = tokio::time::Instant::now();
            // O(1) copies: the detector works with the state unlocked.
            let (nodes, feed) = self
                .state
                .read(|s| (s.nodes.clone(), s.node_changes.clone()));
            let begun = self.detector().begin_sweep(&nodes, &feed, now);
            drop(nodes);
            let Some(mut sweep) = begun else {
                return;
            };
            sweep.list_every();
            let looking_at = sweep.len();
            while !sweep.done() {
                let ids = sweep.next_ids(SWEEP_CHUNK);
                let found: Vec<_> = self
                    .state
                    .read(|s| ids.iter().map(|id| s.nodes.get(id).cloned()).collect());
                self.detector().look_at(&mut sweep, &found);
                tokio::task::yield_now().await;
            }
            let changes = self.detector().finish(sweep);
            debug!(
                nodes = looking_at,
                changes = changes.len(),
                elapsed = ?started.elapsed(),
                "failure detector sweep"
            );
            if changes.is_empty() {
                return;
            }
            log_status_changes(&changes);
            let result = self
                .leader_write(Command::SetNodeStatuses {
                    changes: changes.clone(),
                })
                .await;
            if let Err(e) = result {
                self.detector().abandon(&changes);
                warn!(error = ?e, "could not commit status changes; retrying next sweep");
            }
        }
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

    /// Carries out a membership change; leader only.
    pub async fn leader_membership(&self, change: MembershipChange) -> MembershipAnswer {
        let map_write = |e: RaftError<u64, ClientWriteError<u64, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward_hint(&f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                WireError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(e) => WireError::Unavailable(format!("replica stopped: {e}")),
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        match change {
            MembershipChange::Add { id, addr } => {
                if let Some(node) = membership.membership().get_node(&id) {
                    if voters.contains(&id) && node.addr == addr {
                        return Ok(());
                    }
                    if node.addr != addr {
                        return Err(WireError::FailedPrecondition(format!(
                            "replica {id} is already a member at {}",
                            node.addr
                        )));
                    }
                }
                info!(id, %addr, "adding replica as learner");
                self.raft
                    .add_learner(id, BasicNode::new(&addr), true)
                    .await
                    .map_err(map_write)?;
                info!(id, "promoting replica to voter");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(map_write)?;
                Ok(())
            }
            MembershipChange::Remove { id } => {
                if membership.membership().get_node(&id).is_none() {
                    return Err(WireError::NotFound {
                        kind: "replica".into(),
                        id: id.to_string(),
                    });
                }
                if voters.contains(&id) && voters.len() == 1 {
                    return Err(WireError::FailedPrecondition(format!(
                        "replica {id} is the last voter; add another first"
                    )));
                }
                info!(id, "removing replica");
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters([id].into())
                } else {
                    ChangeMembers::RemoveNodes([id].into())
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(map_write)?;
                Ok(())
            }
        }
    }

    /// Carries out a membership change through the leader.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown replica, `FAILED_PRECONDITION` when the change is not
    /// allowed, `UNAVAILABLE` without a leader.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ApiError> {
        self.at_leader(
            MEMBERSHIP_TIMEOUT,
            "membership change",
            || self.leader_membership(change.clone()),
            |addr, timeout| {
                let change = change.clone();
                let peers = self.peers.clone();
                async move {
                    peers
                        .call(&addr, &change, timeout, |mut c, r| async move {
                            c.forward_membership(r).await
                        })
                        .await
                }
            },
        )
        .await?;
        // Answer with the new membership as this replica sees it, like a write is answered
        // once applied here. A replica that was just removed may never see the final entry.
        if change != (MembershipChange::Remove { id: self.id }) {
            self.linearize().await?;
        }
        Ok(())
    }

    /// Every replica with its role, and this replica's view of leader, term and indexes.
    pub fn status(&self) -> pb::ReplicaStatusResponse {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replicas = membership
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if !voters.contains(id) {
                    "learner"
                } else if *id == self.id {
                    match m.state {
                        ServerState::Candidate => "candidate",
                        _ => "follower",
                    }
                } else {
                    "follower"
                };
                pb::ReplicaInfo {
                    id: *id,
                    address: node.addr.clone(),
                    role: role.to_string(),
                }
            })
            .collect();
        let leader_address = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        pb::ReplicaStatusResponse {
            answered_by: self.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_address,
            term: m.current_term,
            commit_index: self.log_store.committed_index(),
            applied_index: m.last_applied.map(|id| id.index),
            replicas,
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|id| id.index),
            purged_index: m.purged.map(|id| id.index),
        }
    }

    /// Background duty of whichever replica leads: make sure the cluster has an id as soon as
    /// it forms, so every answer can carry it. Ends when Raft shuts down.
    pub async fn run_leader_duties(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        loop {
            let leading = metrics.borrow().state == ServerState::Leader;
            if leading && self.state.read(|s| s.cluster_id.is_none()) {
                if let Err(e) = self.ensure_cluster_id().await {
                    warn!(error = %e, "could not set the cluster id yet");
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Logs a sweep's transitions: one line per kind of transition at info (a count and the
/// first few nodes), each node at debug. A rack going dark is one line, not a thousand.
fn log_status_changes(changes: &[StatusChange]) {
    const NAMED: usize = 5;
    let mut kinds: Vec<((NodeStatus, NodeStatus), Vec<&str>)> = Vec::new();
    for c in changes {
        tracing::debug!(node = %c.node_id, from = c.from.as_str(), to = c.to.as_str(), "node status change");
        match kinds.iter_mut().find(|(k, _)| *k == (c.from, c.to)) {
            Some((_, ids)) => ids.push(&c.node_id),
            None => kinds.push(((c.from, c.to), vec![&c.node_id])),
        }
    }
    for ((from, to), ids) in kinds {
        let more = ids.len().saturating_sub(NAMED);
        info!(
            count = ids.len(),
            from = from.as_str(),
            to = to.as_str(),
            nodes = ?&ids[..ids.len().min(NAMED)],
            more,
            "node status change"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(state: ServerState, term: u64) -> openraft::RaftMetrics<u64, BasicNode> {
        let mut m = openraft::RaftMetrics::new_initial(1);
        m.state = state;
        m.current_term = term;
        m
    }

    #[tokio::test]
    async fn a_proposal_is_deposed_when_the_term_or_the_role_changes() {
        let (tx, mut rx) = tokio::sync::watch::channel(metrics(ServerState::Leader, 3));
        let mut waiting = std::pin::pin!(deposed(&mut rx, 3));
        tokio::task::yield_now().await;
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "still leading in term 3"
        );
        tx.send_replace(metrics(ServerState::Leader, 3));
        assert!(futures::poll!(waiting.as_mut()).is_pending(), "same term");
        tx.send_replace(metrics(ServerState::Follower, 3));
        assert!(futures::poll!(waiting.as_mut()).is_ready(), "stepped down");

        let (tx, mut rx) = tokio::sync::watch::channel(metrics(ServerState::Leader, 3));
        let mut waiting = std::pin::pin!(deposed(&mut rx, 3));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        tx.send_replace(metrics(ServerState::Leader, 5));
        assert!(
            futures::poll!(waiting.as_mut()).is_ready(),
            "re-elected in a new term"
        );

        let (tx, mut rx) = tokio::sync::watch::channel(metrics(ServerState::Leader, 3));
        let mut waiting = std::pin::pin!(deposed(&mut rx, 3));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(tx);
        assert!(futures::poll!(waiting.as_mut()).is_ready(), "raft stopped");
    }
}
