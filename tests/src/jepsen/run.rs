//! One fault run: start the cluster in its namespaces, run clients and the nemesis for the
//! time limit, heal, check liveness, take the final reads, check the history.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use dllm_proto::pb::{
    self, admin_service_client::AdminServiceClient,
    discovery_service_client::DiscoveryServiceClient, node_service_client::NodeServiceClient,
    tui_service_client::TuiServiceClient,
};
use nix::sys::signal::Signal;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::{transport::Channel, Code};

use super::{
    checks::{self, Verdict},
    history::{Event, ModelSample, NodeSample, NodeView, Op, Recorder, Ret},
    net::{self, Filter, Net},
};
use crate::ChildProcess;

/// Replica slots (one namespace each).
pub const SLOTS: usize = 3;
/// Port every replica serves gRPC and Raft on, inside its namespace.
const REPLICA_PORT: u16 = 7000;
/// Client processes of the final reads are numbered from here.
pub const FINAL_PROCESS: u64 = 1_000_000;
/// Deadline of one client operation.
const OP_TIMEOUT: Duration = Duration::from_millis(2500);
/// Bound for the cluster to recover after the heal (leader, a write, healthy workers,
/// repaired placement).
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// The request budget of every replica, below the client's deadline (flags added to
/// [`crate::FAST_LIVENESS`]).
const REQUEST_BUDGET: &[&str] = &["--request-timeout-ms", "2000"];
/// Snapshots, purges and log segment files turn over every few hundred entries, so kills and
/// restarts land on every stage of them (replay across segments, deleted segments, a purge
/// point newer than a segment's header).
const STORAGE_CHURN: &[&str] = &["--snapshot-logs", "300", "--log-segment-kib", "64"];

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a replica (leader, follower or any), restart it later.
    Kill,
    /// SIGSTOP a replica (often the leader), SIGCONT it later.
    Pause,
    /// Isolate the leader, random halves, a majorities ring, or a one-way cut; heal.
    Partition,
    /// Drop a share of the packets between replicas (nftables numgen); heal.
    Loss,
    /// Remove a replica and add a fresh one (new id, empty disk) in its place.
    Membership,
    /// Kill and restart workers; drain and undrain them.
    Workers,
}

impl Nemesis {
    /// Every nemesis.
    pub const ALL: [Nemesis; 6] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Loss,
        Nemesis::Membership,
        Nemesis::Workers,
    ];

    fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Loss => "loss",
            Nemesis::Membership => "membership",
            Nemesis::Workers => "workers",
        }
    }
}

impl FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Nemesis::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown nemesis {s:?}; known: {}, all, none",
                    Nemesis::ALL.map(Nemesis::name).join(", ")
                )
            })
    }
}

/// Parses "kill,pause", "all" or "none".
///
/// # Errors
/// For an unknown name.
pub fn parse_nemeses(list: &str) -> Result<BTreeSet<Nemesis>, String> {
    match list.trim() {
        "all" => Ok(Nemesis::ALL.into_iter().collect()),
        "none" | "" => Ok(BTreeSet::new()),
        list => list.split(',').map(|s| s.trim().parse()).collect(),
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the nemesis schedule and the clients' choices.
    pub seed: u64,
    /// How long clients and the nemesis run.
    pub time_limit: Duration,
    /// Faults to inject.
    pub nemeses: BTreeSet<Nemesis>,
    /// Concurrent clients.
    pub clients: usize,
    /// Workers (real `dllm-worker` processes with simulated GPUs).
    pub workers: usize,
    /// Where dllm-control-plane and dllm-worker are.
    pub bin_dir: PathBuf,
    /// A different control-plane binary (a `planted-bugs` build).
    pub control_plane_bin: Option<PathBuf>,
    /// DLLM_PLANTED_BUG for the replicas.
    pub planted_bug: Option<String>,
    /// Output folder: history, summary, logs, data.
    pub out_dir: PathBuf,
}

/// Counts of one operation kind.
#[derive(Debug, Default, Clone, Serialize)]
pub struct OpCounts {
    /// Acknowledged.
    pub ok: u64,
    /// Definitely not applied.
    pub fail: u64,
    /// Unknown outcome.
    pub info: u64,
}

/// What a run did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Seed.
    pub seed: u64,
    /// Nemeses enabled.
    pub nemeses: Vec<Nemesis>,
    /// Planted bug, if any.
    pub planted_bug: Option<String>,
    /// Operations by kind.
    pub ops: BTreeMap<String, OpCounts>,
    /// Faults injected, by action.
    pub faults: BTreeMap<String, u64>,
    /// Seconds from the heal to: an agreed leader, an acknowledged write, healthy workers,
    /// a placement that passes the settled check.
    pub recovery_s: BTreeMap<String, f64>,
    /// Checker verdicts.
    pub verdicts: Vec<Verdict>,
    /// All checkers passed.
    pub valid: bool,
    /// The history file.
    pub history: PathBuf,
}

impl Summary {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "seed {}  nemeses [{}]{}\n",
            self.seed,
            self.nemeses
                .iter()
                .map(|n| n.name())
                .collect::<Vec<_>>()
                .join(","),
            self.planted_bug
                .as_ref()
                .map_or(String::new(), |b| format!("  PLANTED BUG {b}"))
        );
        s += &format!("{:<14}{:>8}{:>8}{:>8}\n", "operation", "ok", "fail", "info");
        for (f, c) in &self.ops {
            s += &format!("{f:<14}{:>8}{:>8}{:>8}\n", c.ok, c.fail, c.info);
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        s += &format!(
            "faults: {}\n",
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(", ")
            }
        );
        let rec: Vec<String> = self
            .recovery_s
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}s"))
            .collect();
        s += &format!("after heal: {}\n", rec.join(", "));
        for v in &self.verdicts {
            s += &format!(
                "{:<22}{}  {}\n",
                v.checker,
                if v.valid { "ok     " } else { "INVALID" },
                v.detail.replace('\n', "\n                         ")
            );
        }
        s += &format!(
            "{}  history: {}\n",
            if self.valid { "VALID" } else { "ANOMALY FOUND" },
            self.history.display()
        );
        s
    }
}

/// Runs one fault run end to end: sets up the network, enters the hub namespace (call it
/// from a process with no other threads yet), runs, tears down.
///
/// # Errors
/// When the harness itself fails (no root, a binary missing, the cluster never formed).
/// Anomalies are not errors: they are in the summary.
pub fn run(config: &Config) -> Result<Summary> {
    let cp = config
        .control_plane_bin
        .clone()
        .unwrap_or_else(|| config.bin_dir.join("dllm-control-plane"));
    for bin in [cp.clone(), config.bin_dir.join("dllm-worker")] {
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (cargo build --bins)",
                bin.display()
            );
        }
    }
    std::fs::create_dir_all(config.out_dir.join("logs"))?;
    let data = config.out_dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let mut net = Net::setup(SLOTS)?;
    net.enter_hub()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let run = Run::new(config, cp, Arc::new(NetHandle))?;
        tokio::select! {
            r = run.go() => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    net.teardown();
    result
}

/// Fault injection on the network of this run.
struct NetHandle;

impl NetHandle {
    fn set_filter(&self, slot: usize, filter: &Filter) -> Result<()> {
        net::set_filter(SLOTS, slot, filter)
    }
    fn heal(&self) -> Result<()> {
        net::heal(SLOTS)
    }
}

struct ReplicaProc {
    id: u64,
    founding: bool,
    process: Option<ChildProcess>,
    paused: bool,
}

struct WorkerProc {
    node_id: String,
    port: u16,
    process: Option<ChildProcess>,
    drained: bool,
}

struct Procs {
    replicas: BTreeMap<usize, ReplicaProc>,
    workers: Vec<WorkerProc>,
    next_id: u64,
}

struct Run {
    config: Config,
    cp_bin: PathBuf,
    net: Arc<NetHandle>,
    history: Arc<Recorder>,
    procs: Arc<Mutex<Procs>>,
    channels: Vec<Channel>,
    initial_cluster: String,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
}

fn addr(slot: usize) -> String {
    format!("{}:{REPLICA_PORT}", net::replica_ip(slot))
}

fn channel(address: &str, timeout: Duration) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy())
}

async fn status(slot: usize) -> Option<pb::ReplicaStatusResponse> {
    let ch = channel(&addr(slot), Duration::from_millis(400)).ok()?;
    AdminServiceClient::new(ch)
        .get_replica_status(pb::ReplicaStatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

impl Run {
    fn new(config: &Config, cp_bin: PathBuf, net: Arc<NetHandle>) -> Result<Self> {
        let history = Arc::new(Recorder::create(&config.out_dir.join("history.jsonl"))?);
        let channels = (1..=SLOTS)
            .map(|s| channel(&addr(s), OP_TIMEOUT))
            .collect::<Result<Vec<_>>>()?;
        let initial_cluster = (1..=SLOTS)
            .map(|s| format!("{s}={}", addr(s)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            config: config.clone(),
            cp_bin,
            net,
            history,
            procs: Arc::new(Mutex::new(Procs {
                replicas: BTreeMap::new(),
                workers: Vec::new(),
                next_id: SLOTS as u64 + 1,
            })),
            channels,
            initial_cluster,
            stop: Arc::new(AtomicBool::new(false)),
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    fn spawn_replica(&self, slot: usize, r: &mut ReplicaProc) {
        let data = self
            .config
            .out_dir
            .join("data")
            .join(format!("slot{slot}-id{}", r.id));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net::replica_ns(slot)])
            .arg(&self.cp_bin)
            .args([
                "--id",
                &r.id.to_string(),
                "--listen",
                &addr(slot),
                "--data-dir",
            ])
            .arg(&data)
            .args(crate::FAST_LIVENESS)
            .args(REQUEST_BUDGET)
            .args(STORAGE_CHURN)
            .env("RUST_LOG", "info,openraft=warn");
        if r.founding {
            cmd.args(["--initial-cluster", &self.initial_cluster]);
        }
        if let Some(bug) = &self.config.planted_bug {
            cmd.env("DLLM_PLANTED_BUG", bug);
        }
        let log = self
            .config
            .out_dir
            .join("logs")
            .join(format!("replica-slot{slot}.log"));
        r.process = Some(ChildProcess::spawn(&format!("replica {}", r.id), cmd, log));
        r.paused = false;
    }

    fn spawn_worker(&self, w: &mut WorkerProc) {
        let seeds = (1..=SLOTS).map(addr).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new(self.config.bin_dir.join("dllm-worker"));
        cmd.args([
            "--node-id",
            &w.node_id,
            "--listen",
            &format!("{}:{}", net::HUB_ADDR, w.port),
            "--seed-nodes",
            &seeds,
            "--simulate-gpus",
            "1x16384:SIM GPU",
        ])
        .env("RUST_LOG", "info");
        let log = self
            .config
            .out_dir
            .join("logs")
            .join(format!("{}.log", w.node_id));
        w.process = Some(ChildProcess::spawn(&w.node_id, cmd, log));
    }

    /// The slot of the leader the running replicas agree on.
    async fn leader_slot(&self) -> Option<usize> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        for slot in 1..=SLOTS {
            if let Some(s) = status(slot).await {
                ids.insert(s.answered_by, slot);
                if s.leader_id != 0 {
                    *votes.entry(s.leader_id).or_default() += 1;
                }
            }
        }
        let (leader, n) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        (n * 2 > SLOTS).then_some(())?;
        ids.get(&leader).copied()
    }

    async fn wait<T, F, Fut>(
        &self,
        what: &str,
        bound: Duration,
        mut check: F,
    ) -> Result<(T, Duration)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return Ok((v, start.elapsed()));
            }
            if start.elapsed() > bound {
                bail!("{what}: not within {bound:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn command(
        &self,
        slot: usize,
        command: &str,
        args: &[String],
    ) -> Result<pb::CommandResponse, tonic::Status> {
        TuiServiceClient::new(self.channels[slot - 1].clone())
            .execute_command(pb::CommandRequest {
                requester_id: "dllm-jepsen".into(),
                command: command.into(),
                args: args.to_vec(),
                options: Default::default(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn go(self) -> Result<Summary> {
        let start_setup = Instant::now();
        {
            let mut procs = self.procs.lock().await;
            for slot in 1..=SLOTS {
                let mut r = ReplicaProc {
                    id: slot as u64,
                    founding: true,
                    process: None,
                    paused: false,
                };
                self.spawn_replica(slot, &mut r);
                procs.replicas.insert(slot, r);
            }
        }
        self.wait("a leader", RECOVERY_BOUND, || self.leader_slot())
            .await
            .with_context(|| {
                format!(
                    "the cluster never formed; logs in {}",
                    self.config.out_dir.join("logs").display()
                )
            })?;
        {
            let mut procs = self.procs.lock().await;
            for i in 1..=self.config.workers {
                let mut w = WorkerProc {
                    node_id: format!("jw-{i}"),
                    port: 7100 + i as u16,
                    process: None,
                    drained: false,
                };
                self.spawn_worker(&mut w);
                procs.workers.push(w);
            }
        }
        self.wait("healthy workers", RECOVERY_BOUND, || self.workers_healthy())
            .await?;
        let add: Vec<String> = ["model", "add", "jw-llm", "--layers", "24", "--size", "24G"]
            .iter()
            .skip(1)
            .map(|s| s.to_string())
            .collect();
        let (_, _) = self
            .wait("the base model added", RECOVERY_BOUND, || async {
                for slot in 1..=SLOTS {
                    if let Ok(r) = self.command(slot, "model", &add).await {
                        if r.exit_code == 0 || r.error.contains("already exists") {
                            return Some(());
                        }
                    }
                }
                None
            })
            .await?;
        eprintln!(
            "cluster of {SLOTS} replicas and {} workers up in {:.1}s; running for {:?}",
            self.config.workers,
            start_setup.elapsed().as_secs_f64(),
            self.config.time_limit
        );

        let run = Arc::new(self);
        let deadline = Instant::now() + run.config.time_limit;
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..run.config.clients {
            let run = run.clone();
            tasks.spawn(async move { run.client(c as u64, deadline).await });
        }
        let sampler = {
            let run = run.clone();
            tokio::spawn(async move { run.sampler().await })
        };
        let nemesis = {
            let run = run.clone();
            tokio::spawn(async move { run.nemesis(deadline).await })
        };
        while let Some(r) = tasks.join_next().await {
            r?;
        }
        nemesis.await??;
        run.heal_all().await?;

        // Liveness after the heal.
        let healed = Instant::now();
        let mut recovery = BTreeMap::new();
        let mut liveness_problems = Vec::new();
        match run
            .wait("an agreed leader after the heal", RECOVERY_BOUND, || {
                run.leader_slot()
            })
            .await
        {
            Ok((_, t)) => {
                recovery.insert("leader".to_string(), t.as_secs_f64());
            }
            Err(e) => liveness_problems.push(e.to_string()),
        }
        let probe = pb::ClusterJoinRequest {
            node_id: "jepsen-probe".into(),
            ..join_request("jepsen-probe", 1)
        };
        match run
            .wait(
                "an acknowledged write after the heal",
                RECOVERY_BOUND,
                || async {
                    for ch in &run.channels {
                        let ok = DiscoveryServiceClient::new(ch.clone())
                            .register_with_cluster(probe.clone())
                            .await
                            .is_ok();
                        if ok {
                            return Some(());
                        }
                    }
                    None
                },
            )
            .await
        {
            Ok(_) => {
                recovery.insert("write".to_string(), healed.elapsed().as_secs_f64());
            }
            Err(e) => liveness_problems.push(e.to_string()),
        }
        match run
            .wait(
                "every worker healthy after the heal",
                RECOVERY_BOUND,
                || run.workers_healthy(),
            )
            .await
        {
            Ok(_) => {
                recovery.insert("workers".to_string(), healed.elapsed().as_secs_f64());
            }
            Err(e) => liveness_problems.push(e.to_string()),
        }
        // Placement settles: sample until the settled check passes or the bound passes; the
        // last sample is recorded as the settled one either way.
        let mut last = None;
        let settle_start = Instant::now();
        loop {
            if let Some(sample) = run.placement_sample().await {
                let ok = checks::placement_problems(&sample.0, &sample.1, true).is_empty();
                last = Some(sample);
                if ok {
                    recovery.insert("placement".to_string(), healed.elapsed().as_secs_f64());
                    break;
                }
            }
            if settle_start.elapsed() > RECOVERY_BOUND {
                liveness_problems.push(format!(
                    "placement not repaired within {RECOVERY_BOUND:?} of the other recoveries"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some((models, nodes)) = last {
            run.history.record(Event::Placement {
                t_ns: run.history.now(),
                settled: true,
                models,
                nodes,
            });
        }
        run.stop.store(true, Ordering::SeqCst);
        let _ = sampler.await;
        run.final_reads().await;
        {
            let mut procs = run.procs.lock().await;
            for w in &mut procs.workers {
                if let Some(mut p) = w.process.take() {
                    p.kill();
                }
            }
            for r in procs.replicas.values_mut() {
                if let Some(mut p) = r.process.take() {
                    p.kill();
                }
            }
        }

        let events = run.history.events();
        let mut verdicts = vec![
            checks::linearizability(&events),
            checks::lost_writes(&events, FINAL_PROCESS),
            checks::election_safety(&events),
            checks::placement(&events),
        ];
        verdicts.push(Verdict {
            checker: "liveness-after-heal".into(),
            valid: liveness_problems.is_empty(),
            detail: if liveness_problems.is_empty() {
                format!("leader, write, healthy workers and placement within {RECOVERY_BOUND:?}")
            } else {
                liveness_problems.join("\n")
            },
        });
        Ok(run.summary(&events, verdicts, recovery))
    }

    fn summary(
        &self,
        events: &[Event],
        verdicts: Vec<Verdict>,
        recovery: BTreeMap<String, f64>,
    ) -> Summary {
        let mut ops: BTreeMap<String, OpCounts> = BTreeMap::new();
        let mut faults: BTreeMap<String, u64> = BTreeMap::new();
        let mut open: BTreeMap<u64, String> = BTreeMap::new();
        for e in events {
            match e {
                Event::Invoke { process, op, .. } => {
                    let f = serde_json::to_value(op)
                        .ok()
                        .and_then(|v| v.get("f").and_then(|f| f.as_str()).map(String::from))
                        .unwrap_or_default();
                    open.insert(*process, f);
                }
                Event::Ok { process, .. } => {
                    if let Some(f) = open.remove(process) {
                        ops.entry(f).or_default().ok += 1;
                    }
                }
                Event::Fail { process, .. } => {
                    if let Some(f) = open.remove(process) {
                        ops.entry(f).or_default().fail += 1;
                    }
                }
                Event::Info { process, .. } => {
                    if let Some(f) = open.remove(process) {
                        ops.entry(f).or_default().info += 1;
                    }
                }
                Event::Nemesis { action, .. }
                    if !action.starts_with("heal")
                        && !action.starts_with("restore")
                        && !action.ends_with("-error") =>
                {
                    *faults.entry(action.clone()).or_default() += 1;
                }
                _ => {}
            }
        }
        let valid = verdicts.iter().all(|v| v.valid);
        Summary {
            seed: self.config.seed,
            nemeses: self.config.nemeses.iter().copied().collect(),
            planted_bug: self.config.planted_bug.clone(),
            ops,
            faults,
            recovery_s: recovery,
            verdicts,
            valid,
            history: self.config.out_dir.join("history.jsonl"),
        }
    }

    async fn workers_healthy(&self) -> Option<()> {
        let wanted: Vec<String> = {
            let procs = self.procs.lock().await;
            procs
                .workers
                .iter()
                .filter(|w| w.process.is_some())
                .map(|w| w.node_id.clone())
                .collect()
        };
        for ch in &self.channels {
            let Ok(list) = TuiServiceClient::new(ch.clone())
                .get_node_list(pb::NodeListRequest::default())
                .await
            else {
                continue;
            };
            let nodes = list.into_inner().nodes;
            return wanted
                .iter()
                .all(|w| {
                    nodes
                        .iter()
                        .any(|n| &n.node_id == w && n.status == "healthy")
                })
                .then_some(());
        }
        None
    }

    async fn placement_sample(&self) -> Option<(Vec<ModelSample>, Vec<NodeSample>)> {
        for ch in &self.channels {
            let mut tui = TuiServiceClient::new(ch.clone());
            let Ok(models) = tui.get_model_list(pb::ModelListRequest::default()).await else {
                continue;
            };
            let Ok(nodes) = tui.get_node_list(pb::NodeListRequest::default()).await else {
                continue;
            };
            let models = models
                .into_inner()
                .models
                .into_iter()
                .map(|m| ModelSample {
                    id: m.id,
                    layers: u32::try_from(m.layer_count).unwrap_or(0),
                    placement: m.node_assignments,
                })
                .collect();
            let nodes = nodes
                .into_inner()
                .nodes
                .into_iter()
                .map(|n| NodeSample {
                    id: n.node_id,
                    status: n.status,
                    max_layers: n
                        .resources
                        .map_or(0, |r| u32::try_from(r.max_layers).unwrap_or(0)),
                })
                .collect();
            return Some((models, nodes));
        }
        None
    }

    /// Samples every replica's Raft state (recorded on change) and the placement.
    async fn sampler(&self) {
        let mut last: BTreeMap<u64, (u64, String, u64)> = BTreeMap::new();
        let mut tick = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            for slot in 1..=SLOTS {
                let Some(s) = status(slot).await else {
                    continue;
                };
                let role = s
                    .replicas
                    .iter()
                    .find(|r| r.id == s.answered_by)
                    .map_or("unknown".to_string(), |r| r.role.clone());
                let now = (s.term, role.clone(), s.leader_id);
                if last.get(&s.answered_by) != Some(&now) {
                    last.insert(s.answered_by, now);
                    self.history.record(Event::Raft {
                        t_ns: self.history.now(),
                        replica: s.answered_by,
                        term: s.term,
                        role,
                        leader: s.leader_id,
                    });
                }
            }
            if tick.is_multiple_of(5) {
                if let Some((models, nodes)) = self.placement_sample().await {
                    self.history.record(Event::Placement {
                        t_ns: self.history.now(),
                        settled: false,
                        models,
                        nodes,
                    });
                }
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One client: random operations on a small, moving window of keys against random
    /// replicas until the deadline.
    async fn client(&self, process: u64, deadline: Instant) {
        let mut rng =
            StdRng::seed_from_u64(self.config.seed.wrapping_mul(1000).wrapping_add(process));
        let mut process = process;
        while Instant::now() < deadline {
            let n = self.counter.fetch_add(1, Ordering::SeqCst);
            let window = n / 150;
            let node = format!("jn{window}-{}", rng.gen_range(0..3));
            let model = format!("jm{window}-{}", rng.gen_range(0..2));
            let slot = rng.gen_range(1..=SLOTS);
            let op = match rng.gen_range(0..100) {
                0..=19 => Op::Register {
                    node,
                    port: 1000 + u32::try_from(n % 60_000).unwrap_or(0),
                },
                20..=29 => Op::Leave { node },
                30..=37 => Op::Heartbeat { node },
                38..=62 => Op::ReadNode { node },
                63..=74 => Op::AddModel {
                    model,
                    layers: rng.gen_range(1..=6),
                },
                75..=82 => Op::RemoveModel { model },
                _ => Op::ReadModels,
            };
            if self.invoke(process, slot, op).await {
                // Its outcome is unknown: like Jepsen, continue as a new process.
                process += self.config.clients as u64;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }

    /// Performs and records one operation; returns whether its outcome is unknown.
    async fn invoke(&self, process: u64, slot: usize, op: Op) -> bool {
        self.history.record(Event::Invoke {
            t_ns: self.history.now(),
            process,
            replica: slot,
            op: op.clone(),
        });
        let ch = self.channels[slot - 1].clone();
        let is_write = !matches!(
            op,
            Op::ReadNode { .. } | Op::ReadModels | Op::Heartbeat { .. }
        );
        let result: Result<Ret, tonic::Status> = match &op {
            Op::Register { node, port } => {
                let mut req = join_request(node, 0);
                req.port = i32::try_from(*port).unwrap_or(1);
                DiscoveryServiceClient::new(ch)
                    .register_with_cluster(req)
                    .await
                    .map(|_| Ret::Done)
            }
            Op::Leave { node } => match DiscoveryServiceClient::new(ch)
                .leave_cluster(pb::ClusterLeaveRequest {
                    node_id: node.clone(),
                    reason: "jepsen".into(),
                })
                .await
            {
                Ok(_) => Ok(Ret::Done),
                Err(e) if e.code() == Code::NotFound => Ok(Ret::NotFound),
                Err(e) => Err(e),
            },
            Op::Heartbeat { node } => match DiscoveryServiceClient::new(ch)
                .heartbeat(pb::HeartbeatRequest {
                    node_id: node.clone(),
                    usage: None,
                })
                .await
            {
                Ok(_) => Ok(Ret::Done),
                Err(e) if e.code() == Code::NotFound => Ok(Ret::NotFound),
                Err(e) => Err(e),
            },
            Op::ReadNode { node } => match NodeServiceClient::new(ch)
                .get_node_info(pb::NodeInfoRequest {
                    node_id: node.clone(),
                })
                .await
            {
                Ok(r) => Ok(Ret::Node {
                    node: r.into_inner().node.map(|n| NodeView {
                        port: u32::try_from(n.port).unwrap_or(0),
                        left: n.status == "left",
                    }),
                }),
                Err(e) if e.code() == Code::NotFound => Ok(Ret::Node { node: None }),
                Err(e) => Err(e),
            },
            Op::AddModel { model, layers } => {
                let args: Vec<String> = vec![
                    "add".into(),
                    model.clone(),
                    "--layers".into(),
                    layers.to_string(),
                    "--size".into(),
                    format!("{layers}G"),
                ];
                self.command(slot, "model", &args)
                    .await
                    .and_then(|r| match r.exit_code {
                        0 => Ok(Ret::Done),
                        1 if r.error.contains("already exists") => Ok(Ret::Exists),
                        2 => Err(tonic::Status::invalid_argument(r.error)),
                        _ => Err(tonic::Status::unavailable(r.error)),
                    })
            }
            Op::RemoveModel { model } => {
                let args = vec!["remove".to_string(), model.clone()];
                self.command(slot, "model", &args)
                    .await
                    .and_then(|r| match r.exit_code {
                        0 => Ok(Ret::Done),
                        1 if r.error.contains("not found") => Ok(Ret::NotFound),
                        2 => Err(tonic::Status::invalid_argument(r.error)),
                        _ => Err(tonic::Status::unavailable(r.error)),
                    })
            }
            Op::ReadModels => TuiServiceClient::new(ch)
                .get_model_list(pb::ModelListRequest::default())
                .await
                .map(|r| Ret::Models {
                    models: r
                        .into_inner()
                        .models
                        .into_iter()
                        .filter(|m| m.id.starts_with("jm"))
                        .map(|m| (m.id, u32::try_from(m.layer_count).unwrap_or(0)))
                        .collect(),
                }),
        };
        let t_ns = self.history.now();
        match result {
            Ok(ret) => {
                self.history.record(Event::Ok { t_ns, process, ret });
                false
            }
            // A refusal before anything was proposed, or a read: nothing happened.
            Err(e) if !is_write || e.code() == Code::InvalidArgument => {
                self.history.record(Event::Fail {
                    t_ns,
                    process,
                    error: format!("{:?}: {}", e.code(), e.message()),
                });
                false
            }
            Err(e) => {
                self.history.record(Event::Info {
                    t_ns,
                    process,
                    error: format!("{:?}: {}", e.code(), e.message()),
                });
                true
            }
        }
    }

    /// Reads every key ever used through every replica, after the heal.
    async fn final_reads(&self) {
        let used = self.counter.load(Ordering::SeqCst);
        let windows = used / 150 + 1;
        for slot in 1..=SLOTS {
            let process = FINAL_PROCESS + slot as u64;
            for w in 0..windows {
                for i in 0..3 {
                    self.invoke(
                        process,
                        slot,
                        Op::ReadNode {
                            node: format!("jn{w}-{i}"),
                        },
                    )
                    .await;
                }
            }
            self.invoke(process, slot, Op::ReadModels).await;
        }
    }

    /// Injects faults from the seeded schedule until the deadline, undoing each.
    async fn nemesis(&self, deadline: Instant) -> Result<()> {
        let enabled: Vec<Nemesis> = self.config.nemeses.iter().copied().collect();
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        while Instant::now() < deadline && !enabled.is_empty() {
            let quiet = Duration::from_millis(rng.gen_range(1000..3000));
            tokio::time::sleep(quiet.min(deadline.saturating_duration_since(Instant::now()))).await;
            if Instant::now() >= deadline {
                break;
            }
            let hold = Duration::from_millis(rng.gen_range(2000..5000));
            let hold = hold.min(deadline.saturating_duration_since(Instant::now()));
            let nemesis = *enabled.choose(&mut rng).expect("non-empty");
            match nemesis {
                Nemesis::Kill => self.kill(&mut rng, hold).await,
                Nemesis::Pause => self.pause(&mut rng, hold).await,
                Nemesis::Partition => self.partition(&mut rng, hold).await?,
                Nemesis::Loss => {
                    let percent = rng.gen_range(20..50);
                    for slot in 1..=SLOTS {
                        self.net.set_filter(
                            slot,
                            &Filter {
                                loss_percent: percent,
                                ..Filter::default()
                            },
                        )?;
                    }
                    self.history.nemesis(
                        "loss",
                        format!("{percent}% of packets between replicas dropped"),
                    );
                    tokio::time::sleep(hold).await;
                    self.net.heal()?;
                    self.history.nemesis("heal", "network healed");
                }
                Nemesis::Membership => self.membership(&mut rng).await,
                Nemesis::Workers => self.worker_churn(&mut rng, hold).await,
            }
        }
        Ok(())
    }

    async fn pick_target(&self, rng: &mut StdRng) -> (usize, &'static str) {
        let leader = self.leader_slot().await;
        let kind = *["leader", "follower", "random"]
            .choose(rng)
            .expect("non-empty");
        let slot = match (kind, leader) {
            ("leader", Some(l)) => l,
            ("follower", Some(l)) => {
                let others: Vec<usize> = (1..=SLOTS).filter(|s| *s != l).collect();
                *others.choose(rng).expect("followers")
            }
            _ => rng.gen_range(1..=SLOTS),
        };
        (
            slot,
            if kind != "random" && leader.is_none() {
                "random"
            } else {
                kind
            },
        )
    }

    async fn kill(&self, rng: &mut StdRng, hold: Duration) {
        let (slot, kind) = self.pick_target(rng).await;
        {
            let mut procs = self.procs.lock().await;
            let r = procs.replicas.get_mut(&slot).expect("slot");
            if let Some(mut p) = r.process.take() {
                p.kill();
            }
            self.history.nemesis(
                "kill",
                format!("SIGKILL replica {} in slot {slot} ({kind})", r.id),
            );
        }
        tokio::time::sleep(hold).await;
        let mut procs = self.procs.lock().await;
        let r = procs.replicas.get_mut(&slot).expect("slot");
        self.spawn_replica(slot, r);
        self.history.nemesis(
            "restore",
            format!("restarted replica {} in slot {slot}", r.id),
        );
    }

    async fn pause(&self, rng: &mut StdRng, hold: Duration) {
        let (slot, kind) = if rng.gen_bool(0.6) {
            match self.leader_slot().await {
                Some(l) => (l, "leader"),
                None => (rng.gen_range(1..=SLOTS), "random"),
            }
        } else {
            self.pick_target(rng).await
        };
        {
            let mut procs = self.procs.lock().await;
            let r = procs.replicas.get_mut(&slot).expect("slot");
            if let Some(p) = &r.process {
                p.signal(Signal::SIGSTOP);
                r.paused = true;
            }
            self.history.nemesis(
                "pause",
                format!("SIGSTOP replica {} in slot {slot} ({kind})", r.id),
            );
        }
        tokio::time::sleep(hold).await;
        let mut procs = self.procs.lock().await;
        let r = procs.replicas.get_mut(&slot).expect("slot");
        if let (Some(p), true) = (&r.process, r.paused) {
            p.signal(Signal::SIGCONT);
            r.paused = false;
        }
        self.history.nemesis(
            "restore",
            format!("SIGCONT replica {} in slot {slot}", r.id),
        );
    }

    async fn partition(&self, rng: &mut StdRng, hold: Duration) -> Result<()> {
        let mut filters: BTreeMap<usize, Filter> =
            (1..=SLOTS).map(|s| (s, Filter::default())).collect();
        let mut cut = |from: usize, to: usize| {
            // `to` stops hearing `from`.
            filters.get_mut(&to).expect("slot").drop_from.insert(from);
        };
        let kind = *["isolate-leader", "halves", "ring", "one-way"]
            .choose(rng)
            .expect("kinds");
        let detail = match kind {
            "isolate-leader" => {
                let leader = self
                    .leader_slot()
                    .await
                    .unwrap_or_else(|| rng.gen_range(1..=SLOTS));
                for other in (1..=SLOTS).filter(|s| *s != leader) {
                    cut(leader, other);
                    cut(other, leader);
                }
                format!("isolate the leader (slot {leader}) from the others")
            }
            "halves" => {
                let mut slots: Vec<usize> = (1..=SLOTS).collect();
                slots.shuffle(rng);
                let (a, b) = slots.split_at(SLOTS / 2);
                for x in a {
                    for y in b {
                        cut(*x, *y);
                        cut(*y, *x);
                    }
                }
                format!("halves {a:?} | {b:?}")
            }
            "ring" => {
                // Each replica hears a majority (itself and the next ones), none the same.
                let mut ring: Vec<usize> = (1..=SLOTS).collect();
                ring.shuffle(rng);
                let hears = SLOTS / 2; // others each one hears
                for (i, me) in ring.iter().enumerate() {
                    for (j, other) in ring.iter().enumerate() {
                        let distance = (j + SLOTS - i) % SLOTS;
                        if distance > hears {
                            cut(*other, *me);
                        }
                    }
                }
                format!("majorities ring {ring:?}: each hears the next {hears}")
            }
            _ => {
                let mut slots: Vec<usize> = (1..=SLOTS).collect();
                slots.shuffle(rng);
                let (a, b) = (slots[0], slots[1]);
                cut(a, b);
                format!("one-way: slot {a} hears slot {b}, slot {b} does not hear slot {a}")
            }
        };
        for (slot, f) in &filters {
            self.net.set_filter(*slot, f)?;
        }
        self.history
            .nemesis("partition", format!("{kind}: {detail}"));
        tokio::time::sleep(hold).await;
        self.net.heal()?;
        self.history.nemesis("heal", "network healed");
        Ok(())
    }

    /// Removes a replica, wipes it, and adds a fresh one (new id) on its address.
    async fn membership(&self, rng: &mut StdRng) {
        let (slot, kind) = self.pick_target(rng).await;
        let old = self.procs.lock().await.replicas[&slot].id;
        let others: Vec<usize> = (1..=SLOTS).filter(|s| *s != slot).collect();
        let mut removed = false;
        for s in &others {
            let r = AdminServiceClient::new(self.channels[s - 1].clone())
                .remove_replica(pb::RemoveReplicaRequest { id: old })
                .await;
            match r {
                Ok(_) => {
                    removed = true;
                    break;
                }
                Err(e) => self.history.nemesis(
                    "membership-error",
                    format!("RemoveReplica {old} via slot {s}: {e}"),
                ),
            }
        }
        if !removed {
            return;
        }
        let new_id = {
            let mut procs = self.procs.lock().await;
            let id = procs.next_id;
            procs.next_id += 1;
            let r = procs.replicas.get_mut(&slot).expect("slot");
            if let Some(mut p) = r.process.take() {
                p.kill();
            }
            r.id = id;
            r.founding = false;
            self.spawn_replica(slot, r);
            id
        };
        self.history.nemesis(
            "membership",
            format!("removed replica {old} ({kind}) from slot {slot}; started replica {new_id} there with an empty disk"),
        );
        self.ensure_members().await;
    }

    /// Adds every slot's replica that is not a voter (after a membership change).
    async fn ensure_members(&self) {
        let want: Vec<(usize, u64)> = {
            let procs = self.procs.lock().await;
            procs.replicas.iter().map(|(s, r)| (*s, r.id)).collect()
        };
        for _ in 0..100 {
            let mut missing = Vec::new();
            let Some(leader) = self.leader_slot().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Some(st) = status(leader).await else {
                continue;
            };
            for (slot, id) in &want {
                let voter = st
                    .replicas
                    .iter()
                    .any(|r| r.id == *id && r.role != "learner");
                if !voter {
                    missing.push((*slot, *id));
                }
            }
            if missing.is_empty() {
                return;
            }
            for (slot, id) in missing {
                let r = AdminServiceClient::new(self.channels[leader - 1].clone())
                    .add_replica(pb::AddReplicaRequest {
                        id,
                        address: addr(slot),
                    })
                    .await;
                match r {
                    Ok(_) => self
                        .history
                        .nemesis("restore", format!("added replica {id} in slot {slot}")),
                    Err(e) => self
                        .history
                        .nemesis("membership-error", format!("AddReplica {id}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn worker_churn(&self, rng: &mut StdRng, hold: Duration) {
        let n = self.procs.lock().await.workers.len();
        if n == 0 {
            return;
        }
        let i = rng.gen_range(0..n);
        if rng.gen_bool(0.5) {
            let id = {
                let mut procs = self.procs.lock().await;
                let w = &mut procs.workers[i];
                if let Some(mut p) = w.process.take() {
                    p.kill();
                }
                w.node_id.clone()
            };
            self.history
                .nemesis("kill-worker", format!("SIGKILL worker {id}"));
            tokio::time::sleep(hold).await;
            let mut procs = self.procs.lock().await;
            let w = &mut procs.workers[i];
            self.spawn_worker(w);
            self.history
                .nemesis("restore", format!("restarted worker {id}"));
        } else {
            let id = self.procs.lock().await.workers[i].node_id.clone();
            let slot = rng.gen_range(1..=SLOTS);
            let r = self.command(slot, "drain", std::slice::from_ref(&id)).await;
            self.history
                .nemesis("drain", format!("drain {id}: {}", describe_command(&r)));
            // Undone whatever the answer: a drain that failed for want of a reply (a lagging
            // replica, a partition) may still have committed, and undrain of a node that is
            // not draining is accepted as done.
            self.procs.lock().await.workers[i].drained = true;
            tokio::time::sleep(hold).await;
            self.undrain(i).await;
        }
    }

    async fn undrain(&self, i: usize) {
        let id = self.procs.lock().await.workers[i].node_id.clone();
        for _ in 0..50 {
            for slot in 1..=SLOTS {
                let r = self
                    .command(slot, "undrain", std::slice::from_ref(&id))
                    .await;
                let done =
                    matches!(&r, Ok(r) if r.exit_code == 0 || r.error.contains("only draining"));
                if done {
                    self.procs.lock().await.workers[i].drained = false;
                    self.history
                        .nemesis("restore", format!("undrain {id}: {}", describe_command(&r)));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Undoes every fault still in place.
    async fn heal_all(&self) -> Result<()> {
        self.net.heal()?;
        let drained: Vec<usize> = {
            let mut procs = self.procs.lock().await;
            let slots: Vec<usize> = procs.replicas.keys().copied().collect();
            for slot in slots {
                let needs_start = {
                    let r = procs.replicas.get_mut(&slot).expect("slot");
                    if let (Some(p), true) = (&r.process, r.paused) {
                        p.signal(Signal::SIGCONT);
                        r.paused = false;
                    }
                    r.process.as_mut().is_none_or(|p| !p.is_running())
                };
                if needs_start {
                    let r = procs.replicas.get_mut(&slot).expect("slot");
                    self.spawn_replica(slot, r);
                }
            }
            for w in &mut procs.workers {
                if w.process.as_mut().is_none_or(|p| !p.is_running()) {
                    self.spawn_worker(w);
                }
            }
            procs
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.drained)
                .map(|(i, _)| i)
                .collect()
        };
        self.history
            .nemesis("heal", "network healed, every process running");
        self.ensure_members().await;
        for i in drained {
            self.undrain(i).await;
        }
        Ok(())
    }
}

fn describe_command(r: &Result<pb::CommandResponse, tonic::Status>) -> String {
    match r {
        Ok(r) if r.exit_code == 0 => r.output.lines().next().unwrap_or("ok").to_string(),
        Ok(r) => format!("exit {}: {}", r.exit_code, r.error),
        Err(e) => format!("{:?}: {}", e.code(), e.message()),
    }
}

fn join_request(node_id: &str, _gpus: usize) -> pb::ClusterJoinRequest {
    pb::ClusterJoinRequest {
        node_id: node_id.to_string(),
        address: net::HUB_ADDR.to_string(),
        port: 9000,
        resources: Some(pb::ResourceInfo {
            cpu_cores: 1,
            memory_mb: 1024,
            gpus: vec![],
            max_layers: 0,
            used_layers: 0,
        }),
        seed_nodes: vec![],
        skip_existing_nodes: false,
    }
}

/// Where `dllm-jepsen` writes a run by default.
pub fn default_out_dir(seed: u64) -> PathBuf {
    Path::new("target")
        .join("jepsen")
        .join(format!("seed-{seed}"))
}
