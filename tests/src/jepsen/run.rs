//! One fault run: start the cluster in its namespaces, run clients and the nemesis for the
//! time limit, heal, check liveness, take the final reads, check the history.
//!
//! This file holds the run's configuration, its entry point [`run`], the `Run` state and its
//! main sequence (`go`). The rest of `Run` is split by concern: the replica and worker
//! processes in `procs.rs`, the clients in `clients.rs`, the state sampler in `sampler.rs`,
//! the faults in `nemesis.rs` and `churn.rs`, and the [`Summary`] in `summary.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use dllm_proto::client::Channel;
use dllm_proto::pb::{self, discovery_service_client::DiscoveryServiceClient};
use tokio::sync::Mutex;

use super::{
    checks::{self, Verdict},
    clients::join_request,
    history::{Event, Recorder},
    nemesis::NetHandle,
    net::Net,
    procs::{addr, channel, Certs, Procs, ReplicaProc, WorkerProc},
};
pub use super::{
    nemesis::{parse_nemeses, Nemesis},
    summary::{OpCounts, Summary},
};

/// Replica slots (one namespace each).
pub const SLOTS: usize = 3;
/// Client processes of the final reads are numbered from here.
pub const FINAL_PROCESS: u64 = 1_000_000;
/// Deadline of one client operation.
const OP_TIMEOUT: Duration = Duration::from_millis(2500);
/// Bound for the cluster to recover after the heal (leader, a write, healthy workers,
/// repaired placement).
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

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
    /// mTLS and roles on: every replica and worker gets a certificate of a CA made for the
    /// run, the harness calls as an admin, and registrations and heartbeats carry a worker
    /// token for their node. Off: plaintext with `--insecure`.
    pub secure: bool,
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

pub(super) struct Run {
    pub(super) config: Config,
    pub(super) cp_bin: PathBuf,
    pub(super) net: Arc<NetHandle>,
    pub(super) history: Arc<Recorder>,
    pub(super) procs: Arc<Mutex<Procs>>,
    pub(super) channels: Vec<Channel>,
    /// How the harness connects (an admin certificate in a secure run).
    pub(super) auth: dllm_auth::client::ClientAuth,
    /// The run's certificates and token key, in a secure run.
    pub(super) certs: Option<Certs>,
    pub(super) initial_cluster: String,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) counter: Arc<AtomicU64>,
}

impl Run {
    fn new(config: &Config, cp_bin: PathBuf, net: Arc<NetHandle>) -> Result<Self> {
        let history = Arc::new(Recorder::create(&config.out_dir.join("history.jsonl"))?);
        let certs = if config.secure {
            Some(Certs::create(&config.out_dir.join("certs"))?)
        } else {
            None
        };
        let auth = match &certs {
            Some(certs) => certs.admin()?,
            None => dllm_auth::client::ClientAuth::plaintext(),
        };
        let channels = (1..=SLOTS)
            .map(|s| channel(&auth, &addr(s), OP_TIMEOUT))
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
            auth,
            certs,
            initial_cluster,
            stop: Arc::new(AtomicBool::new(false)),
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    /// In a secure run: a replica that answers a caller with no credentials (TLS with the
    /// CA, no certificate, no token), or refuses it other than `UNAUTHENTICATED`.
    async fn unauthenticated_hole(&self) -> Option<String> {
        let certs = self.certs.as_ref()?;
        let anonymous = dllm_auth::client::ClientAuth::from_flags(
            Some(&certs.dir.join(dllm_auth::certs::CA_CERT)),
            None,
            None,
            None,
        )
        .ok()?;
        for slot in 1..=SLOTS {
            let Ok(ch) = channel(&anonymous, &addr(slot), OP_TIMEOUT) else {
                continue;
            };
            let answer = pb::tui_service_client::TuiServiceClient::new(ch)
                .get_node_list(pb::NodeListRequest::default())
                .await;
            match answer {
                Err(e) if e.code() == tonic::Code::Unauthenticated => {}
                // Not reachable right now (a replica removed by the nemesis): no hole.
                Err(e) if e.code() == tonic::Code::Unavailable => {}
                Err(e) => {
                    return Some(format!(
                        "replica in slot {slot} refused a caller without credentials with {:?}, not UNAUTHENTICATED",
                        e.code()
                    ))
                }
                Ok(_) => {
                    return Some(format!(
                        "replica in slot {slot} answered a caller without credentials"
                    ))
                }
            }
        }
        None
    }

    /// `message` as a request from worker `node`: with that node's token in a secure run.
    pub(super) fn as_node<T>(&self, node: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.certs.as_ref().and_then(|c| c.worker_token(node)) {
            request.metadata_mut().insert("authorization", token);
        }
        request
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
                            .register_with_cluster(run.as_node("jepsen-probe", probe.clone()))
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
        if let Some(hole) = run.unauthenticated_hole().await {
            liveness_problems.push(hole);
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
}

/// Where `dllm-jepsen` writes a run by default.
pub fn default_out_dir(seed: u64) -> PathBuf {
    Path::new("target")
        .join("jepsen")
        .join(format!("seed-{seed}"))
}
