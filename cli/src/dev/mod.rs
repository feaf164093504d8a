//! `dllm dev`: a whole local cluster in one command. It starts itself as `dllm control-plane`
//! and `dllm worker` (the commands a user deploys) in separate processes on loopback: control-plane replicas, then workers with
//! simulated GPUs of different sizes, registers a demo model, prints what to try, and stays
//! in the foreground as their supervisor ([`supervisor`]) until Ctrl-C or SIGTERM, which stop
//! the workers, then the replicas. With `--secure` every connection
//! is mutual TLS and every call is checked against its caller's role ([`secure`]).

mod secure;
mod supervisor;

use std::{net::TcpListener, path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context};
use dllm_proto::pb;

use crate::client::Cluster;
use supervisor::{Children, Kind};

/// Flags of `dllm dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Control-plane replicas to start (1 to 7).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub replicas: u64,
    /// Workers to start, with simulated GPUs of different sizes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=32))]
    pub workers: u32,
    /// First port: replicas take BASE.., workers BASE+10.., metrics BASE+100...
    #[arg(long, default_value_t = 8080)]
    pub base_port: u16,
    /// Where data and logs go [default: a fresh folder under the temp dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Do not register the demo model.
    #[arg(long)]
    pub no_model: bool,
    /// Mutual TLS and roles: a CA and certificates in DATA_DIR/certs, every process started
    /// with them, and the exports that make `dllm` use the admin certificate printed.
    #[arg(long)]
    pub secure: bool,
    /// The children's log line format (their logs are in DATA_DIR).
    #[command(flatten)]
    pub log: dllm_util::logging::LogArgs,
}

/// Simulated GPUs the dev workers get, in turn.
const GPUS: &[&str] = &[
    "2x81559:NVIDIA H100 80GB HBM3",
    "1x24576:NVIDIA L4",
    "4x40960:NVIDIA A100-SXM4-40GB",
    "1x49152:NVIDIA L40S",
];

/// The commands that start a replica and a worker: this binary itself, as `dllm
/// control-plane` and `dllm worker`, so nothing else needs to be built or installed.
fn node_commands() -> anyhow::Result<(Command, Command)> {
    let exe = std::env::current_exe().context("locating the dllm binary")?;
    let command = |sub: &str| {
        let mut c = Command::new(&exe);
        c.arg(sub);
        c
    };
    Ok((command("control-plane"), command("worker")))
}

/// A copy of `command` (program and arguments so far) to add one child's arguments to.
fn clone(command: &Command) -> Command {
    let mut c = Command::new(command.get_program());
    c.args(command.get_args());
    c
}

/// Fails naming the first port that is taken.
fn check_ports(ports: &[u16]) -> anyhow::Result<()> {
    for port in ports {
        if TcpListener::bind(("127.0.0.1", *port)).is_err() {
            bail!("port {port} on 127.0.0.1 is taken; pick other ports with --base-port");
        }
    }
    Ok(())
}

async fn wait_until<T, F, Fut>(
    what: &str,
    stop: &tokio_util::sync::CancellationToken,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if stop.is_cancelled() {
            bail!("stopped while waiting for {what}");
        }
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the dev cluster until Ctrl-C.
///
/// # Errors
/// When a port is taken, a binary is missing, or the cluster does not come up.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let base = args.base_port;
    let cp_ports: Vec<u16> = (0..args.replicas as u16).map(|i| base + i).collect();
    let worker_ports: Vec<u16> = (0..args.workers as u16).map(|i| base + 10 + i).collect();
    let metrics_ports: Vec<u16> = (0..(args.replicas as u16 + args.workers as u16))
        .map(|i| base + 100 + i)
        .collect();
    let all: Vec<u16> = cp_ports
        .iter()
        .chain(&worker_ports)
        .chain(&metrics_ports)
        .copied()
        .collect();
    check_ports(&all)?;
    let (cp_command, worker_command) = node_commands()?;
    // Signals are caught from here on, before any child starts, and by one receiver each for
    // the whole run (a receiver made later would miss a signal sent before it): Ctrl-C,
    // SIGTERM and the terminal closing (SIGHUP; the children are in their own process
    // groups, so it would not reach them) all stop the cluster in order.
    let signal = |kind, name: &str| {
        tokio::signal::unix::signal(kind).with_context(|| format!("{name} handler"))
    };
    use tokio::signal::unix::SignalKind;
    let mut int = signal(SignalKind::interrupt(), "SIGINT")?;
    let mut term = signal(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = signal(SignalKind::hangup(), "SIGHUP")?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            stop.cancel();
        }
    });
    let data = match args.data_dir {
        Some(d) => d,
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("dllm-dev-{stamp}"))
        }
    };
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let endpoints: Vec<String> = cp_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect();
    let worker_names: Vec<String> = (1..=args.workers).map(|i| format!("worker-{i}")).collect();
    let secure = match args.secure {
        true => Some(secure::Secure::prepare(
            data.join("certs"),
            args.replicas as u32,
            &worker_names,
        )?),
        false => None,
    };
    let cluster = Cluster {
        endpoints: endpoints.clone(),
        auth: match &secure {
            Some(s) => s.admin_auth()?,
            None => dllm_auth::client::ClientAuth::plaintext(),
        },
    };
    let log_format = match args.log.log_format {
        dllm_util::logging::LogFormat::Text => "text",
        dllm_util::logging::LogFormat::Json => "json",
    };
    let mut children = Children::default();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let id = i + 1;
        children.spawn(
            &format!("replica-{id}"),
            Kind::Replica,
            clone(&cp_command)
                .args(["--id", &id.to_string(), "--listen", endpoint])
                .arg("--data-dir")
                .arg(data.join(format!("cp{id}")))
                .args(["--initial-cluster", &members.join(",")])
                .args([
                    "--metrics-listen",
                    &format!("127.0.0.1:{}", metrics_ports[i]),
                ])
                .args(["--log-format", log_format])
                .args(secure.iter().flat_map(|s| s.replica_args(id))),
            &data.join(format!("cp{id}.log")),
        )?;
    }
    let first = endpoints[0].clone();
    wait_until("a leader", &stop, || {
        let (cluster, first) = (cluster.clone(), first.clone());
        async move {
            let mut c = cluster.connect(&first).await.ok()?;
            let s = c
                .admin
                .get_replica_status(pb::ReplicaStatusRequest {})
                .await
                .ok()?;
            (s.into_inner().leader_id != 0).then_some(())
        }
    })
    .await?;
    let seeds = endpoints.join(",");
    for ((i, port), name) in worker_ports.iter().enumerate().zip(&worker_names) {
        let metrics = metrics_ports[args.replicas as usize + i];
        children.spawn(
            name,
            Kind::Worker,
            clone(&worker_command)
                .args(["--node-id", name, "--listen", &format!("127.0.0.1:{port}")])
                .args([
                    "--seed-nodes",
                    &seeds,
                    "--simulate-gpus",
                    GPUS[i % GPUS.len()],
                ])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
                .args(["--log-format", log_format])
                .args(secure.iter().flat_map(|s| s.worker_args(name))),
            &data.join(format!("{name}.log")),
        )?;
    }
    let workers = args.workers as usize;
    wait_until("the workers to join", &stop, || {
        let (cluster, first) = (cluster.clone(), first.clone());
        async move {
            let mut c = cluster.connect(&first).await.ok()?;
            let peers = c
                .node
                .get_peers(pb::PeersRequest::default())
                .await
                .ok()?
                .into_inner();
            (peers.peers.iter().filter(|n| n.status == "healthy").count() >= workers).then_some(())
        }
    })
    .await?;
    let mut model_line = String::new();
    if !args.no_model {
        let mut c = cluster.connect(&first).await.map_err(anyhow::Error::msg)?;
        let out = c
            .tui
            .execute_command(pb::CommandRequest {
                requester_id: "dllm-dev".into(),
                command: "model".into(),
                args: [
                    "add", "demo-70b", "--layers", "80", "--size", "140G", "--name", "Demo 70B",
                ]
                .map(String::from)
                .to_vec(),
                options: Default::default(),
            })
            .await
            .context("registering the demo model")?
            .into_inner();
        model_line = if out.exit_code == 0 {
            format!("demo model: {}", out.output.trim())
        } else {
            format!("demo model not registered: {}", out.error)
        };
    }
    let ep = endpoints.join(",");
    let (secure_lines, grpcurl) = match &secure {
        Some(s) => (
            format!(
                "\nmutual TLS and roles are on (certificates in {}); to use the admin certificate:\n{}",
                data.join("certs").display(),
                s.exports()
            ),
            s.grpcurl_flags(),
        ),
        None => (String::new(), "-plaintext".to_string()),
    };
    println!(
        "dllm dev cluster is up
  replicas   {ep}
  workers    {}
  metrics    http://127.0.0.1:{}/metrics (replica 1) .. :{}
  data, logs {}
  {model_line}
{secure_lines}
try:
  dllm status
  dllm nodes
  dllm models
  dllm tui
  dllm exec drain worker-1
  grpcurl {grpcurl} -d '{{\"node_id\": \"worker-1\"}}' {first} distributed_llm.NodeService/GetMetrics

A child that exits is reported here and the rest go on; type `restart <name>` (e.g.
`restart worker-1`) or `status` and Enter. Ctrl-C stops the cluster.",
        worker_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
        metrics_ports[0],
        metrics_ports[metrics_ports.len() - 1],
        data.display(),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut typed = stdin_lines();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            line = typed.recv(), if !typed.is_closed() => {
                if let Some(line) = line {
                    let answer = children.command(&line);
                    if !answer.is_empty() {
                        println!("{answer}");
                    }
                }
            }
            _ = tick.tick() => {
                for exit in children.exits() {
                    eprintln!("{exit}");
                }
            }
        }
    }
    eprintln!("stopping: workers first (they leave the cluster), then replicas ...");
    children.stop();
    eprintln!("stopped; data and logs are in {}", data.display());
    Ok(())
}

/// Lines typed on standard input, read on a thread of their own (a blocking read that the
/// process's exit ends; tokio's stdin would hold the runtime's shutdown).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}
