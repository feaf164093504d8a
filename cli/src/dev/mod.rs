//! `dllm dev`: a whole local cluster in one command. It starts the real binaries (the ones a
//! user deploys) as separate processes on loopback: control-plane replicas, then workers with
//! simulated GPUs of different sizes, registers a demo model, prints what to try, and stays
//! in the foreground until Ctrl-C, which stops every child. With `--secure` every connection
//! is mutual TLS and every call is checked against its caller's role ([`secure`]).

mod secure;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use dllm_proto::pb;

use crate::client::Cluster;

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

/// The dllm-control-plane and dllm-worker binaries: next to this one, rebuilt first with the
/// same profile when this binary runs from the workspace it was built in (unless
/// `DLLM_DEV_SKIP_BUILD` is set, as tests that already built them do).
fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("locating the dllm binary")?;
    let dir = exe
        .parent()
        .context("the dllm binary has no folder")?
        .to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .filter(|w| w.join("Cargo.toml").exists());
    let skip_build = std::env::var_os("DLLM_DEV_SKIP_BUILD").is_some();
    if let Some(workspace) = workspace.filter(|_| !skip_build) {
        if dir.starts_with(&workspace) || std::env::var_os("CARGO_TARGET_DIR").is_some() {
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo.current_dir(&workspace).args([
                "build",
                "-p",
                "dllm-control-plane",
                "-p",
                "dllm-worker",
            ]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            eprintln!("building dllm-control-plane and dllm-worker ...");
            let status = cargo.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build of dllm-control-plane and dllm-worker failed");
            }
        }
    }
    let cp = dir.join("dllm-control-plane");
    let worker = dir.join("dllm-worker");
    for b in [&cp, &worker] {
        if !b.exists() {
            bail!(
                "{} not found next to dllm; build it with `cargo build --release -p dllm-control-plane -p dllm-worker`",
                b.display()
            );
        }
    }
    Ok((cp, worker))
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

struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.0.push((name.to_string(), child));
        Ok(())
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(name, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .map(|status| format!("{name} exited ({status})"))
        })
    }

    /// SIGTERM everything, wait up to 10 s, then SIGKILL what is left.
    fn stop(&mut self) {
        for (_, c) in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.0 {
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
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
    let (cp_bin, worker_bin) = binaries()?;
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
    let mut children = Children(Vec::new());
    for (i, endpoint) in endpoints.iter().enumerate() {
        let id = i + 1;
        children.spawn(
            &format!("replica {id}"),
            Command::new(&cp_bin)
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
    wait_until("a leader", || {
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
            Command::new(&worker_bin)
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
    wait_until("the workers to join", || {
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

Ctrl-C stops the cluster.",
        worker_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
        metrics_ports[0],
        metrics_ports[metrics_ports.len() - 1],
        data.display(),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let failure = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            _ = tick.tick() => {
                if let Some(why) = children.exited() {
                    break Some(why);
                }
            }
        }
    };
    eprintln!("stopping ...");
    children.stop();
    eprintln!("stopped; data and logs are in {}", data.display());
    match failure {
        Some(why) => bail!("{why}; see the logs in {}", data.display()),
        None => Ok(()),
    }
}
