//! `heartbeats`: N simulated workers registered, then each heartbeating once per interval,
//! spread evenly over time, over shared connections spread over all replicas (as real
//! workers spread themselves), from this process or from `--generators` child processes
//! (`generator.rs`), whose measurements are merged into one report.
//! Reports the heartbeats offered and answered per second, latency, where the CPU goes
//! (leader, followers, generators), leader RSS, false status transitions and Raft log growth
//! during the run.

pub mod generator;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dllm_proto::pb::{self, tui_service_client::TuiServiceClient};

use serde_json::{json, Value};

use crate::{
    common::{channel, leader, status},
    procfs,
    stats::round,
};
use generator::{worker_id, Load, Shard};

/// Heartbeating before measuring.
const WARMUP: Duration = Duration::from_secs(5);
/// Heartbeating before measuring when models are added and placed first: the warm-up, time
/// to place, and this much per model (adding one takes a write and a plan).
const WARMUP_PER_MODEL: Duration = Duration::from_millis(60);

/// How the load is generated.
#[derive(Clone, Copy, Debug)]
pub struct Generators {
    /// Processes that send heartbeats: 1 is this one; more are children, each sending for a
    /// contiguous share of the workers.
    pub processes: usize,
    /// Send every heartbeat to a follower (none straight to the leader), to tell the
    /// leader's cost of forwarded heartbeats from that of the ones it takes itself.
    pub followers_only: bool,
}

/// The processes generating the load: this one, or children running `hb-generate`.
enum Running {
    Here(tokio::task::JoinHandle<Load>),
    Children(Vec<(u32, tokio::task::JoinHandle<anyhow::Result<Load>>)>),
}

impl Running {
    fn pids(&self) -> Vec<u32> {
        match self {
            Running::Here(_) => vec![std::process::id()],
            Running::Children(c) => c.iter().map(|(pid, _)| *pid).collect(),
        }
    }

    async fn load(self) -> anyhow::Result<Load> {
        match self {
            Running::Here(task) => Ok(task.await?),
            Running::Children(children) => {
                let mut load = Load::default();
                for (_, child) in children {
                    load.merge(child.await??);
                }
                Ok(load)
            }
        }
    }
}

/// Starts the load: `generators` shards of the workers, each in a child process (or here, for
/// one), sending to `addrs` from `start`.
fn start_load(
    workers: usize,
    generators: usize,
    addrs: &[String],
    certs_dir: Option<PathBuf>,
    start: Instant,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Running> {
    let shard = |first: usize, count: usize| Shard {
        addrs: addrs.to_vec(),
        first,
        count,
        start,
        warmup,
        duration,
    };
    if generators <= 1 {
        return Ok(Running::Here(tokio::spawn(generator::generate(shard(
            0, workers,
        )))));
    }
    let exe = std::env::current_exe()?;
    let per = workers.div_ceil(generators);
    // Children are told the start as a Unix time (all of them, and this process, agree on
    // the window that is measured).
    let start_unix_ms = dllm_util::clock::now_ms()
        + start.saturating_duration_since(Instant::now()).as_millis() as i64;
    let mut children = Vec::new();
    for g in 0..generators {
        let first = g * per;
        let count = per.min(workers.saturating_sub(first));
        if count == 0 {
            break;
        }
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("hb-generate")
            .arg(format!("--addrs={}", addrs.join(",")))
            .arg(format!("--first={first}"))
            .arg(format!("--count={count}"))
            .arg(format!("--start-unix-ms={start_unix_ms}"))
            .arg(format!("--warmup-ms={}", warmup.as_millis()))
            .arg(format!("--duration-ms={}", duration.as_millis()))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &certs_dir {
            command.arg(format!("--certs-dir={}", dir.display()));
        }
        let child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        children.push((
            pid,
            tokio::spawn(async move {
                let out = child.wait_with_output().await?;
                anyhow::ensure!(out.status.success(), "generator {g} failed: {}", out.status);
                Load::from_json(&serde_json::from_slice(&out.stdout)?)
            }),
        ));
    }
    Ok(Running::Children(children))
}

/// The hidden `hb-generate` subcommand: one shard of the load, its measurements printed as
/// one JSON line on stdout.
pub async fn run_generator(
    addrs: Vec<String>,
    first: usize,
    count: usize,
    start_unix_ms: i64,
    warmup: Duration,
    duration: Duration,
    certs_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    crate::common::use_cluster_of(certs_dir.as_deref());
    let ahead = Duration::from_millis((start_unix_ms - dllm_util::clock::now_ms()).max(0) as u64);
    let load = generator::generate(Shard {
        addrs,
        first,
        count,
        start: Instant::now() + ahead,
        warmup,
        duration,
    })
    .await;
    println!("{}", load.to_json());
    Ok(())
}

/// Adds `models` models (64 layers, 64 GiB each) through the leader at `addr`, then waits
/// until every one is placed or `until`; returns how many are placed and how many nodes
/// hold layers.
async fn add_models(addr: &str, models: usize, until: Instant) -> anyhow::Result<(usize, usize)> {
    let mut tui = TuiServiceClient::new(channel(addr));
    for m in 0..models {
        let id = format!("model-{m:05}");
        let args = ["add", id.as_str(), "--layers", "64", "--size", "64G"];
        crate::scenarios::placement::exec(&mut tui, "model", &args).await?;
    }
    loop {
        let list = tui
            .get_model_list(pb::ModelListRequest::default())
            .await?
            .into_inner()
            .models;
        let placed = list
            .iter()
            .filter(|m| m.placement_status == "placed")
            .count();
        let holders: std::collections::HashSet<&str> = list
            .iter()
            .flat_map(|m| m.node_assignments.iter())
            .filter_map(|a| a.rsplit_once(':').map(|(node, _)| node))
            .collect();
        if placed == models || Instant::now() >= until {
            return Ok((placed, holders.len()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the scenario: `models` models added and placed during a longer warm-up (0: none),
/// so that heartbeat answers carry layer assignments.
pub async fn run(
    workers: usize,
    duration: Duration,
    generators: Generators,
    models: usize,
) -> anyhow::Result<Value> {
    let cluster = crate::common::start_cluster();
    let (leader_id, _) = leader(&cluster).await;
    let addrs: Vec<String> = (1..=3).map(|id| cluster.addr(id)).collect();
    let channels: Vec<_> = addrs.iter().map(|a| channel(a)).collect();

    println!("heartbeats: registering {workers} workers ...");
    crate::common::register_nodes(&channels, workers, worker_id).await;

    let leader_addr = cluster.addr(leader_id);
    let pid = cluster.replicas[&leader_id].pid().expect("leader runs");
    let follower_pids: Vec<u32> = cluster
        .replicas
        .values()
        .filter(|r| r.id != leader_id)
        .filter_map(|r| r.pid())
        .collect();
    // Workers stay on the replica they start at (followers forward heartbeats to the leader
    // in batches), so the simulated fleet spreads over all replicas the same way; or, with
    // `followers_only`, over the followers.
    let targets: Vec<String> = if generators.followers_only {
        addrs
            .iter()
            .filter(|a| **a != leader_addr)
            .cloned()
            .collect()
    } else {
        addrs.clone()
    };

    // Measurements start after a warm-up in which every worker has heartbeated a few times
    // (nodes registered early were silent while the rest registered, and recover now). The
    // generators get a moment to encode their workers' requests before the first interval.
    let start =
        Instant::now() + Duration::from_secs(2) + Duration::from_millis(workers as u64 / 20);
    let warmup = match models {
        0 => WARMUP,
        n => WARMUP * 3 + WARMUP_PER_MODEL * n as u32,
    };
    let measure_from = start + warmup;

    // Watch for any node that stops being healthy while the run lasts.
    let not_healthy_seen = Arc::new(AtomicU64::new(0));
    let watch = {
        let (seen, addr) = (not_healthy_seen.clone(), leader_addr.clone());
        let end = measure_from + duration;
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            // Only the nodes that are not healthy come back, so this stays cheap at any size.
            let mut c = TuiServiceClient::new(channel(&addr));
            let request = pb::NodeListRequest {
                requester_id: "bench".into(),
                include_metrics: false,
                filter: Some(pb::NodeFilter {
                    statuses: vec!["unhealthy".into(), "offline".into()],
                    resources: None,
                }),
                ..Default::default()
            };
            while Instant::now() < end {
                if let Ok(list) = c.get_node_list(request.clone()).await {
                    seen.fetch_max(list.into_inner().nodes.len() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    println!(
        "heartbeats: {workers} workers, one heartbeat per second each, from {} process(es), \
         for {}s after a {}s warm-up ...",
        generators.processes.max(1),
        duration.as_secs(),
        warmup.as_secs()
    );
    let load = start_load(
        workers,
        generators.processes,
        &targets,
        crate::common::certs_dir(&cluster),
        start,
        warmup,
        duration,
    )?;
    let (models_placed, nodes_holding_layers) = if models > 0 {
        tokio::time::sleep_until((start + WARMUP).into()).await;
        println!("heartbeats: adding {models} models ...");
        let placed = add_models(&leader_addr, models, measure_from).await?;
        println!(
            "heartbeats: {} of {models} models placed on {} workers before measuring",
            placed.0, placed.1
        );
        placed
    } else {
        (0, 0)
    };
    let generator_pids = load.pids();
    let pids: Vec<u32> = [pid]
        .into_iter()
        .chain(follower_pids.iter().copied())
        .chain(generator_pids.iter().copied())
        .collect();
    let cpu = |pids: &[u32]| {
        pids.iter()
            .map(|p| procfs::cpu_seconds(*p))
            .collect::<Vec<_>>()
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let log_before = status(&leader_addr).await.and_then(|s| s.last_log_index);
    let (cpu_before, measured_at) = (cpu(&pids), Instant::now());
    tokio::time::sleep_until((measure_from + duration).into()).await;
    let (cpu_after, secs) = (cpu(&pids), measured_at.elapsed().as_secs_f64());
    let percent: Vec<f64> = cpu_after
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| round((after - before) / secs * 100.0))
        .collect();
    let (leader_cpu, follower_cpu, generator_cpu) = (
        percent[0],
        percent[1..1 + follower_pids.len()].to_vec(),
        percent[1 + follower_pids.len()..].to_vec(),
    );
    let rss = procfs::rss_mb(pid);
    let log_after = status(&leader_addr).await.and_then(|s| s.last_log_index);
    let Load {
        sent,
        skipped,
        latencies: lat,
        errors,
        moved,
    } = load.load().await?;
    watch.await?;
    let still_leader = status(&leader_addr).await.map(|s| s.leader_id) == Some(leader_id);
    let growth = log_after.unwrap_or(0) as i64 - log_before.unwrap_or(0) as i64;
    let window = duration.as_secs_f64();
    let (offered, rate) = (sent as f64 / window, lat.len() as f64 / window);
    anyhow::ensure!(lat.len() > 0, "no heartbeat was answered ({errors} errors)");
    let us_per_hb = |percent: f64| round(percent / 100.0 / rate * 1e6);
    println!(
        "{:>8} {:>10} {:>10} {:>9} {:>9} {:>11} {:>13} {:>15} {:>9} {:>12} {:>10}",
        "workers",
        "offered/s",
        "hb/s",
        "p50 ms",
        "p99 ms",
        "leader CPU",
        "follower CPU",
        "generator CPU",
        "RSS MiB",
        "not healthy",
        "log growth"
    );
    let percents = |v: &[f64]| {
        v.iter()
            .map(|c| format!("{c:.0}%"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{workers:>8} {offered:>10.0} {rate:>10.0} {:>9.2} {:>9.2} {:>10.1}% {:>13} {:>15} {rss:>9.1} {:>12} {growth:>10}",
        lat.quantile_ms(0.5),
        lat.quantile_ms(0.99),
        leader_cpu,
        percents(&follower_cpu),
        percents(&generator_cpu),
        not_healthy_seen.load(Ordering::Relaxed),
    );
    println!(
        "{skipped} heartbeats skipped (generators behind), {errors} failed, {moved} answers \
         moved a worker; \
         CPU per answered heartbeat: leader {} us, followers {} us, generators {} us",
        us_per_hb(leader_cpu),
        us_per_hb(follower_cpu.iter().sum()),
        us_per_hb(generator_cpu.iter().sum()),
    );
    Ok(json!({
        "scenario": "heartbeats", "workers": workers, "duration_s": round(secs),
        "generators": generators.processes.max(1),
        "heartbeats_to": if generators.followers_only { "followers" } else { "all replicas" },
        "heartbeats_offered": sent, "offered_per_sec": round(offered),
        "heartbeats_skipped": skipped,
        "workers_sent_elsewhere_by_an_answer": moved,
        "heartbeats": lat.len(), "errors": errors, "heartbeats_per_sec": round(rate),
        "latency": lat.summary(), "leader_cpu_percent_of_one_core": leader_cpu,
        "follower_cpu_percent_of_one_core": follower_cpu,
        "generator_cpu_percent_of_one_core": generator_cpu,
        "cpu_us_per_heartbeat": {
            "leader": us_per_hb(leader_cpu),
            "followers": us_per_hb(follower_cpu.iter().sum()),
            "generators": us_per_hb(generator_cpu.iter().sum()),
        },
        "leader_rss_mb": round(rss),
        "max_nodes_not_healthy": not_healthy_seen.load(Ordering::Relaxed),
        "raft_log_growth_entries": growth, "leader_unchanged": still_leader,
        "models": models, "models_placed_before_measuring": models_placed,
        "nodes_holding_layers": nodes_holding_layers,
    }))
}
