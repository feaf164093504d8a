//! `dllm`: the operator's command. `dllm dev` runs a whole local cluster; the other commands
//! talk to a running one through any of its control-plane endpoints.

mod client;
mod commands;
mod dev;
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
    /// Control-plane endpoints to try, in order (host:port,host:port).
    #[arg(long, global = true, env = "DLLM_ENDPOINTS", default_value = client::DEFAULT_ENDPOINTS)]
    endpoints: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster (replicas and workers as separate processes) in the foreground.
    Dev(dev::DevArgs),
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
    let endpoints = client::parse_endpoints(&cli.endpoints);
    if endpoints.is_empty() && !matches!(cli.command, Cmd::Dev(_)) {
        anyhow::bail!("--endpoints lists no endpoint");
    }
    let print = |s: String| {
        print!("{s}");
        Ok(ExitCode::SUCCESS)
    };
    match cli.command {
        Cmd::Dev(args) => dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Cmd::Status => print(commands::status(&endpoints, cli.output).await?),
        Cmd::Nodes => print(commands::nodes(&endpoints, cli.output).await?),
        Cmd::Models => print(commands::models(&endpoints, cli.output).await?),
        Cmd::Exec { command, args } => {
            let out = commands::exec(&endpoints, &command, &args).await?;
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
        Cmd::Watch { interval, types } => {
            let mut stream = client::first_answer(&endpoints, |mut c| {
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
        Cmd::Tui => tui::run(endpoints).await.map(|()| ExitCode::SUCCESS),
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
