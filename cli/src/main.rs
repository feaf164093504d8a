//! `dllm`: the operator's command, and the one binary a host needs: `dllm control-plane` and
//! `dllm worker` run a replica and a worker agent. `dllm dev` runs a whole local cluster;
//! `dllm certs` and `dllm token` make a secure cluster's certificates and tokens; `dllm
//! snapshot` saves and checks backups of the cluster state; the other commands talk to a
//! running cluster through any of its control-plane endpoints, with the credentials of
//! [`client::CredentialFlags`].

mod certs;
mod client;
mod commands;
mod dev;
mod layers;
mod snapshot;
mod token;
mod tui;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::Output;

const EXAMPLES: &str = "\
Examples:
  dllm dev                                     a local cluster: 3 replicas, 3 workers, a demo model
  dllm status                                  leader, replicas, nodes, models, utilization
  dllm --endpoints cp1:8080,cp2:8080 nodes     worker nodes of another cluster
  dllm exec model add mistral --layers 32 --size 14G
  dllm exec drain worker-2                     move a node's layers off it
  dllm --output json models                    for scripts
  dllm watch --types nodes,models              changes as they happen
  dllm tui                                     the terminal UI
  dllm control-plane --config /etc/dllm/control-plane.toml
  dllm worker --config /etc/dllm/worker.toml";

/// Where the flags that reach a cluster are listed in `--help`.
pub const CLUSTER_HEADING: &str = "Cluster connection";

/// The dllm operator command.
#[derive(Parser, Debug)]
#[command(
    name = "dllm",
    version,
    about = "Operate a dllm cluster: local dev cluster, status, admin commands, terminal UI.",
    after_help = EXAMPLES
)]
struct Cli {
    /// Control-plane endpoints to try, in order: host:port, http://host:port or
    /// https://host:port, comma-separated. TLS is on when --tls-ca is given.
    #[arg(long, global = true, env = "DLLM_ENDPOINTS", default_value = client::DEFAULT_ENDPOINTS, help_heading = CLUSTER_HEADING)]
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
    /// Run a control-plane replica (the flags of `dllm-control-plane`; see
    /// `dllm control-plane --help`).
    #[command(disable_help_flag = true)]
    ControlPlane {
        /// Its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a worker agent (the flags of `dllm-worker`; see `dllm worker --help`).
    #[command(disable_help_flag = true)]
    Worker {
        /// Its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    #[command(after_help = dllm_control_plane::api::commands::HELP)]
    Exec {
        /// The command, e.g. `drain`.
        command: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print what changes in the cluster, as it changes: node status, nodes joining and
    /// leaving, models added and removed, layers moving between workers (one line each, local
    /// time; with --output json one object per change). Reconnects to the next endpoint when
    /// the stream breaks (saying so on stderr) and exits 1 when none answers for --give-up-after.
    Watch(watch::WatchArgs),
    /// The terminal UI.
    Tui,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Cmd::ControlPlane { .. } | Cmd::Worker { .. } => {
            anyhow::bail!(
                "`control-plane` and `worker` take their own flags: put them first (`dllm control-plane --help`)"
            )
        }
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
        ClusterCmd::Watch(args) => watch::run(&cluster, args, cli.output).await,
        ClusterCmd::Tui => tui::run(cluster).await.map(|()| ExitCode::SUCCESS),
    }
}

/// The subcommands that do not talk to a running cluster, so whose help leaves out the
/// cluster flags (they are global, so that both `dllm --endpoints X nodes` and `dllm nodes
/// --endpoints X` work); `token` keeps `--output` (`token create --output json`).
const LOCAL_COMMANDS: [&str; 5] = ["dev", "certs", "token", "control-plane", "worker"];

/// The parser, with the cluster flags hidden from the help of [`LOCAL_COMMANDS`]. A built
/// command has its global flags copied into every subcommand, so they can be hidden there.
fn command_line() -> clap::Command {
    fn hide(command: &mut clap::Command, keep_output: bool) {
        let cluster_flags = ["endpoints", "tls_ca", "tls_cert", "tls_key", "token"];
        *command = std::mem::take(command).mut_args(|arg| {
            let id = arg.get_id().as_str();
            if cluster_flags.contains(&id) || (id == "output" && !keep_output) {
                arg.hide(true)
            } else {
                arg
            }
        });
        for sub in command.get_subcommands_mut() {
            hide(sub, keep_output);
        }
    }
    let mut command = Cli::command();
    command.build();
    for sub in command.get_subcommands_mut() {
        if LOCAL_COMMANDS.contains(&sub.get_name()) {
            let keep_output = sub.get_name() == "token";
            hide(sub, keep_output);
        }
    }
    command
}

/// jemalloc, as the standalone `dllm-control-plane` has it (this binary is a replica too).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `dllm control-plane ...` and `dllm worker ...`: the node's own command line, taken whole
/// (its flags share names with the CLI's own, such as `--tls-ca`), with the rest of `argv`.
fn node_command() -> Option<(&'static str, Vec<std::ffi::OsString>)> {
    let mut argv = std::env::args_os().skip(1);
    let name = match argv.next()?.to_str()? {
        "control-plane" => "dllm control-plane",
        "worker" => "dllm worker",
        _ => return None,
    };
    Some((name, std::iter::once(name.into()).chain(argv).collect()))
}

fn main() -> ExitCode {
    if let Some((name, argv)) = node_command() {
        return match name {
            "dllm control-plane" => dllm_control_plane::entry::exit_from(name, argv),
            _ => dllm_worker::entry::exit_from(name, argv),
        };
    }
    dllm_util::logging::init(
        "warn",
        dllm_util::logging::LogFormat::Text,
        dllm_util::logging::Output::Stderr,
    );
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dllm: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dllm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
