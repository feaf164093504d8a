//! `dllm-bench`: benchmarks that run the real binaries as processes and print a table plus a
//! JSON report (machine, configuration, git commit, numbers). See BENCHMARKS.md.

mod common;
mod procfs;
mod scenarios;
mod stats;

/// Generated etcd client (KV.Put only).
pub mod etcd_pb {
    tonic::include_proto!("etcdserverpb");
}

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "dllm-bench",
    about = "dllm benchmarks (real processes on loopback)"
)]
struct Cli {
    /// Folder with dllm-control-plane [default: $DLLM_BIN_DIR, else next to dllm-bench].
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Also write the JSON report here.
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,
    /// A flag for every replica, e.g. `--replica-arg=--election-timeout-max-ms=250`
    /// (repeatable; default settings otherwise).
    #[arg(long = "replica-arg", global = true, allow_hyphen_values = true)]
    replica_args: Vec<String>,
    /// mTLS and roles on every cluster (certificates from a CA made per cluster; clients as an
    /// admin, workers' requests with a token for their node id), and etcd, when compared, with
    /// client and peer TLS and client certificate authentication.
    #[arg(long, global = true)]
    tls: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Committed writes per second and latency at several client counts (and etcd's).
    Writes {
        /// Client counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
        clients: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Rounds: each runs every client count once per system, alternating which system
        /// goes first; rows add up all rounds.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Run the same load against a 3-member etcd cluster (Debian's etcd-server).
        #[arg(long)]
        compare_etcd: bool,
        /// The etcd binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: String,
    },
    /// Many simulated workers heartbeating every second.
    Heartbeats {
        /// Workers.
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        /// Seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Processes sending the heartbeats: 1 is the bench itself; more are child
        /// processes, each with an equal share of the workers, whose measurements are merged.
        #[arg(long, default_value_t = 1)]
        generators: usize,
        /// Send every heartbeat to a follower, none straight to the leader (what the leader's
        /// forwarded heartbeats alone cost).
        #[arg(long)]
        followers_only: bool,
        /// Models (64 layers, 64 GiB each) added and placed before measuring, so answers
        /// carry layer assignments (the warm-up is then 15 s and 60 ms per model).
        #[arg(long, default_value_t = 0)]
        models: usize,
    },
    /// One share of the `heartbeats` load, run by that scenario in a child process; prints
    /// its measurements as one JSON line.
    #[command(hide = true)]
    HbGenerate {
        /// Replica addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        /// The first worker of this share.
        #[arg(long)]
        first: usize,
        /// Workers in this share.
        #[arg(long)]
        count: usize,
        /// When the first interval starts (Unix ms).
        #[arg(long)]
        start_unix_ms: i64,
        /// Heartbeating before measuring.
        #[arg(long)]
        warmup_ms: u64,
        /// How long the measured window lasts.
        #[arg(long)]
        duration_ms: u64,
        /// The cluster's certificates under `--tls`.
        #[arg(long)]
        certs_dir: Option<PathBuf>,
    },
    /// Time from a leader kill to the first acknowledged write.
    Failover {
        /// Kills.
        #[arg(long, default_value_t = 10)]
        kills: usize,
    },
    /// Restart time of a replica with a long applied log.
    Recovery {
        /// Applied entries before the restart.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
    },
    /// Replica RSS with many nodes and models.
    Memory {
        /// Registered nodes.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Placed models.
        #[arg(long, default_value_t = 100)]
        models: usize,
    },
    /// Many workers reconnecting at once (under --tls: as many TLS handshakes).
    ReconnectStorm {
        /// Workers, each on a connection of its own.
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
    },
    /// Placement under churn: workers fail and return, then `rebalance` runs twice; hops
    /// per model and layers moved per failure.
    Placement {
        /// Simulated workers (mixed sizes: 1-2 GPUs of 80 GiB, 32/48/64 layers).
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Models of 64 layers, 64 GiB each.
        #[arg(long, default_value_t = 4)]
        models: usize,
        /// Failure/return cycles, one worker each, in turn.
        #[arg(long, default_value_t = 8)]
        cycles: usize,
    },
    /// Re-registrations by clients written as the API reference's Python example (gzip on,
    /// no skip_existing_nodes) against a cluster holding many nodes.
    JoinStorm {
        /// Nodes registered first.
        #[arg(long, default_value_t = 20_000)]
        nodes: usize,
        /// Re-registrations in the storm.
        #[arg(long, default_value_t = 3_000)]
        joins: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Live views of a large fleet: subscribers following StreamUpdates (as the TUI does,
    /// deltas unless --whole) while node records change; bytes and replica CPU per subscriber.
    Watch {
        /// Nodes registered.
        #[arg(long, default_value_t = 20_000)]
        nodes: usize,
        /// Node records changed per second.
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// Concurrent subscribers.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Seconds measured, with and without subscribers each.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Subscribe for whole lists (clients written before `deltas`).
        #[arg(long)]
        whole: bool,
    },
    /// A tiny run of every scenario, to keep them working (CI).
    Smoke,
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn run(scenario: Scenario) -> anyhow::Result<Value> {
    Ok(match scenario {
        Scenario::Writes {
            clients,
            seconds,
            rounds,
            compare_etcd,
            etcd,
        } => {
            scenarios::writes::run(
                &clients,
                Duration::from_secs_f64(seconds),
                rounds,
                compare_etcd.then_some(etcd.as_str()),
            )
            .await?
        }
        Scenario::Heartbeats {
            workers,
            seconds,
            generators,
            followers_only,
            models,
        } => {
            let generators = scenarios::heartbeats::Generators {
                processes: generators,
                followers_only,
            };
            scenarios::heartbeats::run(workers, Duration::from_secs(seconds), generators, models)
                .await?
        }
        Scenario::HbGenerate { .. } => unreachable!("run by main before any scenario"),
        Scenario::Failover { kills } => scenarios::failover::run(kills).await?,
        Scenario::Recovery { entries } => scenarios::recovery::run(entries).await?,
        Scenario::Memory { nodes, models } => scenarios::memory::run(nodes, models).await?,
        Scenario::ReconnectStorm { workers } => scenarios::reconnect::run(workers).await?,
        Scenario::JoinStorm {
            nodes,
            joins,
            clients,
        } => scenarios::join_storm::run(nodes, joins, clients).await?,
        Scenario::Placement {
            workers,
            models,
            cycles,
        } => scenarios::placement::run(workers, models, cycles).await?,
        Scenario::Watch {
            nodes,
            changes,
            subscribers,
            seconds,
            whole,
        } => {
            let args = scenarios::watch::Args {
                nodes,
                changes,
                subscribers,
                seconds,
                whole,
            };
            scenarios::watch::run(args).await?
        }
        Scenario::Smoke => {
            let etcd = std::path::Path::new("/usr/bin/etcd")
                .exists()
                .then_some("/usr/bin/etcd");
            let one = scenarios::heartbeats::Generators {
                processes: 1,
                followers_only: false,
            };
            let two = scenarios::heartbeats::Generators {
                processes: 2,
                followers_only: true,
            };
            json!([
                scenarios::writes::run(&[1, 4], Duration::from_secs(1), 2, etcd).await?,
                scenarios::heartbeats::run(200, Duration::from_secs(3), one, 0).await?,
                scenarios::heartbeats::run(200, Duration::from_secs(3), two, 3).await?,
                scenarios::failover::run(1).await?,
                scenarios::recovery::run(500).await?,
                scenarios::memory::run(100, 3).await?,
                scenarios::reconnect::run(50).await?,
                scenarios::join_storm::run(50, 50, 4).await?,
                scenarios::placement::run(3, 1, 1).await?,
                scenarios::watch::run(scenarios::watch::Args {
                    nodes: 50,
                    changes: 5,
                    subscribers: 2,
                    seconds: 2,
                    whole: false,
                })
                .await?,
            ])
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    if let Scenario::HbGenerate {
        addrs,
        first,
        count,
        start_unix_ms,
        warmup_ms,
        duration_ms,
        certs_dir,
    } = cli.scenario
    {
        common::TLS.set(certs_dir.is_some()).expect("set once");
        return scenarios::heartbeats::run_generator(
            addrs,
            first,
            count,
            start_unix_ms,
            Duration::from_millis(warmup_ms),
            Duration::from_millis(duration_ms),
            certs_dir,
        )
        .await;
    }
    // An explicit folder wins, then one already in the environment (an A/B script that sets
    // DLLM_BIN_DIR must get the binaries it named, not the ones next to this bench).
    let from_env = std::env::var_os("DLLM_BIN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let bin_dir = match cli.bin_dir.or(from_env) {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    // The cluster harness finds the binaries through this variable.
    // SAFETY: set before any thread that reads the environment is started by us.
    unsafe { std::env::set_var("DLLM_BIN_DIR", &bin_dir) };
    common::REPLICA_ARGS
        .set(cli.replica_args.clone())
        .expect("set once");
    common::TLS.set(cli.tls).expect("set once");
    let config = format!(
        "{:?} replica args {:?}{}",
        cli.scenario,
        cli.replica_args,
        if cli.tls { " tls" } else { "" }
    );
    let results = run(cli.scenario).await?;
    let report = json!({
        "machine": procfs::machine(),
        "git_commit": git_commit(),
        "binaries": bin_dir,
        "config": config,
        "results": results,
    });
    if let Some(path) = cli.json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
