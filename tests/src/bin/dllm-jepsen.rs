//! `dllm-jepsen`: Jepsen-style fault runs against real dllm processes.
//!
//! ```text
//! sudo target/debug/dllm-jepsen run --seed 7 --time-limit 30 --nemesis kill,partition
//! target/debug/dllm-jepsen check target/jepsen/seed-7/history.jsonl
//! ```
//!
//! Exit status: 0 when every checker passed, 1 when an anomaly was found, 2 when the
//! harness could not run (no root, a binary missing, the cluster never formed).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use dllm_tests::jepsen::{checks, history, run};

#[derive(Parser)]
#[command(about = "Jepsen-style fault runs against real dllm processes (needs root)")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster in network namespaces, run clients and faults, check the history.
    Run {
        /// Seed of the fault schedule and the clients' choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of clients and faults (then heal, recovery checks and final reads).
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        /// Faults: a comma-separated list of kill, pause, partition, loss, membership,
        /// workers; or all; or none.
        #[arg(long, default_value = "all", value_parser = run::parse_nemeses)]
        nemesis: std::collections::BTreeSet<run::Nemesis>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 5)]
        clients: usize,
        /// Worker processes (simulated GPUs).
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Folder with dllm-control-plane and dllm-worker [default: next to this binary].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Control-plane binary to test instead (a build with the planted-bugs feature).
        #[arg(long)]
        control_plane_bin: Option<PathBuf>,
        /// Switch on a planted bug in the replicas (needs --control-plane-bin of a
        /// planted-bugs build), e.g. stale-reads.
        #[arg(long)]
        planted_bug: Option<String>,
        /// Output folder [default: target/jepsen/seed-<seed>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// mTLS and roles on (a CA made for the run; the harness calls as an admin, workers
        /// with their own certificates and tokens); after the heal every replica must still
        /// refuse a caller without credentials.
        #[arg(long)]
        secure: bool,
    },
    /// Re-check a recorded history.
    Check {
        /// history.jsonl of a run.
        history: PathBuf,
    },
}

fn main() -> ExitCode {
    // No threads may exist before the run enters the hub namespace: nothing here starts any.
    let args = Args::parse();
    match args.command {
        Cmd::Run {
            seed,
            time_limit,
            nemesis,
            clients,
            workers,
            bin_dir,
            control_plane_bin,
            planted_bug,
            out,
            secure,
        } => {
            let bin_dir = bin_dir.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(PathBuf::from))
                    .unwrap_or_default()
            });
            let config = run::Config {
                seed,
                time_limit: Duration::from_secs(time_limit),
                nemeses: nemesis,
                clients,
                workers,
                bin_dir,
                control_plane_bin,
                planted_bug,
                out_dir: out.unwrap_or_else(|| run::default_out_dir(seed)),
                secure,
            };
            match run::run(&config) {
                Ok(summary) => {
                    print!("{}", summary.render());
                    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
                    let path = config.out_dir.join("summary.json");
                    if let Err(e) = std::fs::write(&path, json) {
                        eprintln!("write {}: {e}", path.display());
                    }
                    if summary.valid {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!(
                            "anomaly found: seed {seed}, history {}; replay with `dllm-jepsen run --seed {seed} --time-limit {time_limit} --nemesis ...`",
                            summary.history.display()
                        );
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("dllm-jepsen: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Check { history: path } => match history::load(&path) {
            Ok(events) => {
                let verdicts = [
                    checks::linearizability(&events),
                    checks::lost_writes(&events, run::FINAL_PROCESS),
                    checks::election_safety(&events),
                    checks::placement(&events),
                ];
                for v in &verdicts {
                    println!(
                        "{:<22}{}  {}",
                        v.checker,
                        if v.valid { "ok     " } else { "INVALID" },
                        v.detail
                    );
                }
                if verdicts.iter().all(|v| v.valid) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("dllm-jepsen: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
