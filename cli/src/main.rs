//! `dllm`: the operator's command. `dllm dev` runs a whole local cluster; `dllm certs` and
//! `dllm token` make a secure cluster's certificates and tokens; `dllm snapshot` saves and
//! checks backups of the cluster state; the other commands talk to a
//! running cluster through any of its control-plane endpoints, with the credentials of
//! [`client::CredentialFlags`].

mod certs;
mod client;
mod commands;
mod dev;
mod snapshot;
mod token;
mod tui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::Output;
use futures::StreamExt;

/// The dllm operator command.
#[derive(Parser, Debug)]
#[command(
    name = "dllm",
    version,
    about = "Operate a dllm cluster: local dev cluster, status, admin commands, terminal UI."
)]
struct Cli {
    /// Control-plane endpoints to try, in order: host:port, http://host:port or
    /// https://host:port, comma-separated. TLS is on when --tls-ca is given.
    #[arg(long, global = true, env = "DLLM_ENDPOINTS", default_value = client::DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    credentials: client::CredentialFlags,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster (replicas and workers as separate processes) in the foreground.
    Dev(dev::DevArgs),
    /// Make a secure cluster's CA, certificates and token signing key.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Make tokens for clients without a certificate.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Back up the cluster state to a file (admin), or check such a file offline.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    #[command(flatten)]
    Cluster(ClusterCmd),
}

/// The commands that talk to a running cluster.
#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Leader, replicas, node and model counts, utilization.
    Status,
    /// Worker nodes.
    Nodes,
    /// Models and their placement.
    Models,
    /// Run an admin command (ExecuteCommand); its exit code is passed through.
    Exec {
        /// The command, e.g. `drain`.
        command: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print cluster updates as they come (StreamUpdates).
    Watch {
        /// Seconds between updates.
        #[arg(long, default_value_t = 2)]
        interval: i32,
        /// Update types: nodes, models, metrics [default: all].
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
    },
    /// The terminal UI.
    Tui,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Cmd::Dev(args) => return dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Cmd::Certs(cmd) => return certs::run(cmd).map(|()| ExitCode::SUCCESS),
        Cmd::Token(cmd) => return token::run(cmd, cli.output).map(|()| ExitCode::SUCCESS),
        Cmd::Snapshot(cmd) => {
            let cluster = || {
                Ok(client::Cluster::from_flags(
                    &cli.endpoints,
                    &cli.credentials,
                )?)
            };
            print!("{}", snapshot::run(cmd, cluster, cli.output).await?);
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Cluster(command) => command,
    };
    let cluster = client::Cluster::from_flags(&cli.endpoints, &cli.credentials)?;
    let print = |s: String| {
        print!("{s}");
        Ok(ExitCode::SUCCESS)
    };
    match command {
        ClusterCmd::Status => print(commands::status(&cluster, cli.output).await?),
        ClusterCmd::Nodes => print(commands::nodes(&cluster, cli.output).await?),
        ClusterCmd::Models => print(commands::models(&cluster, cli.output).await?),
        ClusterCmd::Exec { command, args } => {
            let out = commands::exec(&cluster, &command, &args).await?;
            if cli.output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({"success": out.success, "output": out.output, "error": out.error, "exit_code": out.exit_code})
                );
            } else {
                print!("{}", out.output);
                if !out.error.is_empty() {
                    eprintln!("{}", out.error.trim_end());
                }
            }
            Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8))
        }
        ClusterCmd::Watch { interval, types } => {
            let mut stream = cluster
                .first_answer(|mut c| {
                    let request = dllm_proto::pb::UpdateStreamRequest {
                        requester_id: "dllm-cli".into(),
                        interval_seconds: interval,
                        update_types: types.clone(),
                    };
                    async move { Ok(c.tui.stream_updates(request).await?.into_inner()) }
                })
                .await?;
            while let Some(update) = stream.next().await {
                println!("{}", commands::update_line(&update?, cli.output));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCmd::Tui => tui::run(cluster).await.map(|()| ExitCode::SUCCESS),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    dllm_util::logging::init("warn", std::io::stderr);
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dllm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
