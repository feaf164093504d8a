//! `writes`: C concurrent clients, each registering distinct node ids (every op a committed
//! Raft write) through the three replicas in turn (a single client: through the leader, then
//! through a follower), for a fixed duration; optionally the same against a 3-member etcd
//! cluster with a Put of the same NodeInfo.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use dllm_auth::client::ClientAuth;
use dllm_proto::pb::discovery_service_client::DiscoveryServiceClient;
use dllm_tests::{free_port, wait_for, ChildProcess};
use prost::Message;
use serde_json::{json, Value};

use crate::{
    common::{channel, channel_with, node_info, registration},
    etcd_pb::{
        kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, StatusRequest,
    },
    stats::{round, Latencies},
};

/// Result of one load run.
pub struct Run {
    /// Acknowledged operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// What the first failed operation said, if any failed.
    pub first_error: Option<String>,
    /// Wall time.
    pub secs: f64,
    /// Latencies of acknowledged operations.
    pub latencies: Latencies,
    /// Raft log entries the leader committed during the run (dllm only): with group commit,
    /// many writes share one entry, one replication round and one fsync per replica.
    pub entries: Option<u64>,
    /// CPU time (user + system) the system's three server processes used during the run.
    pub server_cpu_secs: Option<f64>,
    /// CPU time the load generator (this process) used during the run: it shares the
    /// machine, so what a write costs it is also a limit on ops/s.
    pub client_cpu_secs: f64,
}

/// CPU seconds used so far by all of `pids`.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| crate::procfs::cpu_seconds(p)).sum()
}

impl Etcd {
    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(ChildProcess::pid).collect()
    }
}

impl Run {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Adds another run of the same load (a later round).
    fn merge(&mut self, other: Run) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.secs += other.secs;
        self.latencies.extend(other.latencies);
        self.entries = self.entries.zip(other.entries).map(|(a, b)| a + b);
        self.client_cpu_secs += other.client_cpu_secs;
        self.server_cpu_secs = self
            .server_cpu_secs
            .zip(other.server_cpu_secs)
            .map(|(a, b)| a + b);
    }

    /// Acknowledged writes per Raft entry committed meanwhile (dllm only).
    pub fn writes_per_entry(&self) -> Option<f64> {
        self.entries.map(|e| self.ops as f64 / e.max(1) as f64)
    }

    /// Server CPU milliseconds per 1,000 acknowledged writes: what a write costs the three
    /// servers together, a steadier measure than ops/s on a VM whose speed drifts.
    pub fn cpu_ms_per_1000(&self) -> Option<f64> {
        let cpu = self.server_cpu_secs?;
        (self.ops > 0).then(|| cpu * 1e6 / self.ops as f64)
    }

    /// As JSON.
    pub fn json(&self) -> Value {
        let mut v = json!({"ops": self.ops, "errors": self.errors, "seconds": round(self.secs),
               "ops_per_sec": round(self.rate()), "latency": self.latencies.summary()});
        if let Some(e) = &self.first_error {
            v["first_error"] = json!(e);
        }
        if let (Some(entries), Some(per)) = (self.entries, self.writes_per_entry()) {
            v["raft_entries"] = json!(entries);
            v["writes_per_entry"] = json!(round(per));
        }
        if let Some(cpu) = self.cpu_ms_per_1000() {
            v["server_cpu_ms_per_1000_writes"] = json!(round(cpu));
        }
        if self.ops > 0 {
            v["load_generator_cpu_ms_per_1000_writes"] =
                json!(round(self.client_cpu_secs * 1e6 / self.ops as f64));
        }
        v
    }
}

/// Runs `clients` loops of `op(client, seq)` for `duration`.
pub async fn drive<F, Fut>(clients: usize, duration: Duration, op: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let cpu = crate::procfs::cpu_seconds(std::process::id());
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut lat, mut errors, mut first) = (Latencies::default(), 0u64, None);
                let mut seq = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op(c, seq).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert(e);
                        }
                    }
                    seq += 1;
                }
                (lat, errors, first)
            })
        })
        .collect();
    let mut run = Run {
        ops: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        latencies: Latencies::default(),
        entries: None,
        server_cpu_secs: None,
        client_cpu_secs: 0.0,
    };
    for t in tasks {
        let (lat, errors, first) = t.await.expect("client task");
        run.ops += lat.len() as u64;
        run.errors += errors;
        run.first_error = run.first_error.take().or(first);
        run.latencies.extend(lat);
    }
    run.secs = start.elapsed().as_secs_f64();
    run.client_cpu_secs = crate::procfs::cpu_seconds(std::process::id()) - cpu;
    run
}

/// Registrations through the replicas in turn.
pub async fn dllm(addrs: &[String], clients: usize, duration: Duration, tag: &str) -> Run {
    let channels: Vec<_> = addrs.iter().map(|a| channel(a)).collect();
    let tag = tag.to_string();
    drive(clients, duration, move |c, seq| {
        let mut client = DiscoveryServiceClient::new(channels[c % channels.len()].clone());
        let id = format!("{tag}-{c}-{seq}");
        async move {
            client
                .register_with_cluster(crate::common::as_worker(&id, registration(&id)))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
}

/// A 3-member etcd cluster on loopback.
pub struct Etcd {
    /// Client endpoints.
    pub endpoints: Vec<String>,
    /// How its clients connect (TLS with a client certificate under `--tls`).
    pub auth: ClientAuth,
    members: Vec<ChildProcess>,
    _dir: tempfile::TempDir,
}

/// Starts etcd (Debian's etcd-server, 3.4) with its default settings but for addresses; under
/// `--tls`, with client and peer TLS and client certificate authentication
/// (`--client-cert-auth`, `--peer-client-cert-auth`), certificates from a CA of its own.
pub async fn start_etcd(binary: &str) -> anyhow::Result<Etcd> {
    let dir = tempfile::tempdir()?;
    let tls = crate::common::tls();
    let certs = dir.path().join("certs");
    let auth = if tls {
        let hosts = vec!["127.0.0.1".to_string()];
        dllm_auth::certs::init(&certs, &hosts, 3, "etcd.bench")?;
        let (cert, key) =
            dllm_auth::certs::issue(&certs, dllm_auth::Role::Admin, "bench", "etcd.bench", &[])?;
        ClientAuth::from_flags(
            Some(&certs.join(dllm_auth::certs::CA_CERT)),
            Some(&cert),
            Some(&key),
            None,
        )?
    } else {
        ClientAuth::plaintext()
    };
    let scheme = if tls { "https" } else { "http" };
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}={scheme}://127.0.0.1:{peer}"))
        .collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let mut cmd = std::process::Command::new(binary);
        if tls {
            let file = |name: String| certs.join(name).display().to_string();
            let (ca, cert, key) = (
                file(dllm_auth::certs::CA_CERT.to_string()),
                file(format!("replica-{}.crt", i + 1)),
                file(format!("replica-{}.key", i + 1)),
            );
            cmd.args(["--cert-file", &cert, "--key-file", &key])
                .args(["--trusted-ca-file", &ca, "--client-cert-auth"])
                .args(["--peer-cert-file", &cert, "--peer-key-file", &key])
                .args(["--peer-trusted-ca-file", &ca, "--peer-client-cert-auth"]);
        }
        cmd.args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("{scheme}://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("{scheme}://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "dllm-bench",
            ])
            .args(["--log-level", "error"]);
        members.push(ChildProcess::spawn(
            &format!("etcd e{i}"),
            cmd,
            dir.path().join(format!("e{i}.log")),
        ));
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect();
    for e in &endpoints {
        let e = e.clone();
        wait_for("etcd to accept a put", Duration::from_secs(30), || {
            let (e, auth) = (e.clone(), auth.clone());
            async move {
                KvClient::new(channel_with(&auth, &e))
                    .put(PutRequest {
                        key: b"warmup".to_vec(),
                        value: b"1".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }
    Ok(Etcd {
        endpoints,
        auth,
        members,
        _dir: dir,
    })
}

/// Puts of a serialized NodeInfo under distinct keys, through the members in turn.
pub async fn etcd(
    etcd: &Etcd,
    endpoints: &[String],
    clients: usize,
    duration: Duration,
    tag: &str,
) -> Run {
    let channels: Vec<_> = endpoints
        .iter()
        .map(|a| channel_with(&etcd.auth, a))
        .collect();
    let tag = tag.to_string();
    drive(clients, duration, move |c, seq| {
        let mut client = KvClient::new(channels[c % channels.len()].clone());
        let id = format!("{tag}-{c}-{seq}");
        async move {
            let request = PutRequest {
                key: format!("nodes/{id}").into_bytes(),
                value: node_info(&id).encode_to_vec(),
                ..Default::default()
            };
            client
                .put(request)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
}

/// Which members a run's clients go through.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// Client c through member c mod 3.
    All,
    /// Through the leader only.
    Leader,
    /// Through one follower only (its writes take one more hop, in etcd as in dllm).
    Follower,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::All => "all",
            Via::Leader => "leader",
            Via::Follower => "follower",
        }
    }

    /// `endpoints` narrowed to this choice, given the leader's position among them.
    fn pick(self, endpoints: &[String], leader: usize) -> Vec<String> {
        match self {
            Via::All => endpoints.to_vec(),
            Via::Leader => vec![endpoints[leader].clone()],
            Via::Follower => vec![endpoints[(leader + 1) % endpoints.len()].clone()],
        }
    }
}

/// The runs for `client_counts`: a single client's latency depends on whether its member leads
/// (a follower forwards each write), so one client runs twice, through the leader and through
/// a follower; more clients are spread over all members.
fn plan(client_counts: &[usize]) -> Vec<(usize, Via)> {
    client_counts
        .iter()
        .flat_map(|&c| {
            if c == 1 {
                vec![(1, Via::Leader), (1, Via::Follower)]
            } else {
                vec![(c, Via::All)]
            }
        })
        .collect()
}

/// The position of etcd's leader among `endpoints`.
async fn etcd_leader(etcd: &Etcd) -> anyhow::Result<usize> {
    for (i, e) in etcd.endpoints.iter().enumerate() {
        let status = MaintenanceClient::new(channel_with(&etcd.auth, e))
            .status(StatusRequest {})
            .await?
            .into_inner();
        let me = status.header.map(|h| h.member_id);
        if me == Some(status.leader) {
            return Ok(i);
        }
    }
    anyhow::bail!("no etcd member says it leads")
}

/// The servers' CPU per 1,000 writes, as a column.
fn cpu_column(r: &Run) -> String {
    r.cpu_ms_per_1000()
        .map(|c| format!(" {c:>7.0}"))
        .unwrap_or_default()
}

fn print_row(system: &str, clients: usize, via: Via, r: &Run, extra: &str) {
    println!(
        "{system:<8} {clients:>8} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}{extra}",
        via.name(),
        r.rate(),
        r.latencies.quantile_ms(0.5),
        r.latencies.quantile_ms(0.9),
        r.latencies.quantile_ms(0.99),
        r.latencies.quantile_ms(1.0)
    );
    // Failed writes are in no latency above: say how many, and what the first said.
    if let Some(first) = &r.first_error {
        println!("         {} failed writes; the first: {first}", r.errors);
    }
}

/// The scenario. With etcd, both clusters are up for the whole round and each load runs
/// against one system and then, right after, against the other, so a pair is measured minutes
/// closer together than when all of one system's runs came first (this VM's speed drifts by
/// tens of percent over minutes). Each of `rounds` rounds runs every load once per system,
/// alternating which system goes first (dllm, etcd; etcd, dllm; ...); a row reports all of a
/// load's rounds together. Only one system is loaded at a time, so they do not share the CPUs.
pub async fn run(
    client_counts: &[usize],
    duration: Duration,
    rounds: usize,
    etcd_binary: Option<&str>,
) -> anyhow::Result<Value> {
    println!(
        "writes ({}s per run, {rounds} round(s))",
        duration.as_secs_f64()
    );
    println!(
        "{:<8} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "system", "clients", "via", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "cpu/1k"
    );
    println!("(cpu/1k: CPU ms of the three servers together per 1,000 acknowledged writes)");
    let plan = plan(client_counts);
    let mut dllm_runs: Vec<Option<Run>> = plan.iter().map(|_| None).collect();
    let mut etcd_runs: Vec<Option<Run>> = plan.iter().map(|_| None).collect();
    // Each round's own numbers per load and system: a pair measured minutes apart says more
    // about the systems than the sums, whose drift these show.
    let mut rounds_of: Vec<[Vec<Value>; 2]> = plan.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..rounds.max(1) {
        // Fresh clusters every round, so each round starts like the first: the nodes a
        // round registers never heartbeat, and the failure detector's work on them (unhealthy
        // after 15 s, offline after 50 s) would otherwise fall on the next round's runs.
        let cluster = crate::common::start_cluster();
        let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
        crate::common::leader(&cluster).await;
        let etcd_cluster = match etcd_binary {
            Some(binary) => Some(start_etcd(binary).await?),
            None => None,
        };
        for (i, &(c, via)) in plan.iter().enumerate() {
            let tag = format!("r{round}-c{c}-{}", via.name());
            for system in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
                let (run, slot) = match (system, &etcd_cluster) {
                    (0, _) => {
                        let (leader, _) = crate::common::leader(&cluster).await;
                        let through = via.pick(&addrs, (leader - 1) as usize);
                        let leader_addr = &addrs[(leader - 1) as usize];
                        let committed = || async {
                            crate::common::status(leader_addr)
                                .await
                                .and_then(|s| s.commit_index)
                        };
                        let pids: Vec<u32> =
                            cluster.replicas.values().filter_map(|r| r.pid()).collect();
                        let before = committed().await;
                        let cpu = cpu_of(&pids);
                        let mut run = dllm(&through, c, duration, &tag).await;
                        run.server_cpu_secs = Some(cpu_of(&pids) - cpu);
                        run.entries = before
                            .zip(committed().await)
                            .map(|(b, a)| a.saturating_sub(b));
                        (run, &mut dllm_runs[i])
                    }
                    (_, Some(e)) => {
                        let leader = etcd_leader(e).await?;
                        let through = via.pick(&e.endpoints, leader);
                        let pids = e.pids();
                        let cpu = cpu_of(&pids);
                        let mut run = etcd(e, &through, c, duration, &tag).await;
                        run.server_cpu_secs = Some(cpu_of(&pids) - cpu);
                        (run, &mut etcd_runs[i])
                    }
                    (_, None) => continue,
                };
                anyhow::ensure!(
                    run.ops > 0,
                    "no {} write was acknowledged ({} errors)",
                    if system == 0 { "dllm" } else { "etcd" },
                    run.errors
                );
                rounds_of[i][system.min(1)].push(
                    json!({"ops_per_sec": crate::stats::round(run.rate()),
                    "p50_ms": crate::stats::round(run.latencies.quantile_ms(0.5)),
                    "p99_ms": crate::stats::round(run.latencies.quantile_ms(0.99)),
                    "errors": run.errors}),
                );
                match slot {
                    Some(total) => total.merge(run),
                    None => *slot = Some(run),
                }
            }
        }
    }
    let dllm_runs: Vec<Run> = dllm_runs.into_iter().flatten().collect();
    let etcd_runs: Vec<Run> = etcd_runs.into_iter().flatten().collect();
    for (i, &(c, via)) in plan.iter().enumerate() {
        let r = &dllm_runs[i];
        let mut extra = cpu_column(r);
        if let Some(per) = r.writes_per_entry() {
            extra += &format!("   {per:.1} writes/entry");
        }
        print_row("dllm", c, via, r, &extra);
    }
    for (i, &(c, via)) in plan.iter().enumerate() {
        if let Some(r) = etcd_runs.get(i) {
            let ratio = dllm_runs[i].rate() / r.rate();
            let extra = format!("{}   dllm/etcd {ratio:.2}x", cpu_column(r));
            print_row("etcd", c, via, r, &extra);
        }
    }
    if rounds > 1 && etcd_runs.len() == plan.len() {
        println!("per round (dllm/etcd ops/s, dllm p50 / etcd p50 ms):");
        for (i, &(c, via)) in plan.iter().enumerate() {
            let [d, e] = &rounds_of[i];
            let pairs: Vec<String> = d
                .iter()
                .zip(e)
                .map(|(d, e)| {
                    format!(
                        "{:.2}x {:.2}/{:.2}",
                        d["ops_per_sec"].as_f64().unwrap_or(0.0)
                            / e["ops_per_sec"].as_f64().unwrap_or(1.0),
                        d["p50_ms"].as_f64().unwrap_or(0.0),
                        e["p50_ms"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            println!("  {c:>4} {:<8} {}", via.name(), pairs.join("   "));
        }
    }
    let rows: Vec<Value> = plan
        .iter()
        .enumerate()
        .map(|(i, (c, via))| {
            let mut row = json!({"clients": c, "via": via.name(), "dllm": dllm_runs[i].json()});
            row["dllm"]["rounds"] = json!(rounds_of[i][0]);
            if let Some(r) = etcd_runs.get(i) {
                row["etcd"] = r.json();
                row["etcd"]["rounds"] = json!(rounds_of[i][1]);
                row["throughput_ratio"] = json!(round(dllm_runs[i].rate() / r.rate()));
            }
            row
        })
        .collect();
    Ok(
        json!({"scenario": "writes", "duration_s": duration.as_secs_f64(), "rounds": rounds.max(1),
              "runs": rows}),
    )
}
