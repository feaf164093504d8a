//! Worker configuration: flags, `DLLM_*` environment variables and an optional TOML file,
//! in that order of precedence over the defaults written here once (the layering is
//! `dllm_util::layered`'s), validated before anything starts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
pub use dllm_util::config::ConfigError;
use dllm_util::config::{parse_duration, parse_socket_addr, split_host_port};

use crate::resources::{parse_simulated_gpus, SimulatedGpu};

/// Command-line flags of `dllm-worker`, each with its environment variable and its default,
/// written here once. [`dllm_util::layered`] puts the `--config` file between the environment
/// and the defaults; [`Args::resolve`] validates.
#[derive(Parser, Debug)]
#[command(
    name = "dllm-worker",
    version,
    about = "A dllm worker: joins the cluster, heartbeats, serves its live metrics."
)]
pub struct Args {
    /// TOML file with any of the settings below (keys as the long flag names, with '_').
    #[arg(long, env = "DLLM_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id [default: the host name].
    #[arg(long, env = "DLLM_NODE_ID")]
    pub node_id: Option<String>,
    /// Address to serve the worker's gRPC API on (ip:port).
    #[arg(long, env = "DLLM_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// host:port the cluster should reach this worker at [default: --listen].
    #[arg(long, env = "DLLM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Control-plane replicas to join through, host:port,host:port,...
    #[arg(long, env = "DLLM_SEED_NODES")]
    pub seed_nodes: Option<String>,
    /// Heartbeat interval until the control plane says otherwise, e.g. 1s, 500ms.
    #[arg(long, env = "DLLM_HEARTBEAT_INTERVAL", default_value = "1s")]
    pub heartbeat_interval: String,
    /// Layers this node can hold [default: one per GiB of GPU memory, or of RAM without GPUs].
    #[arg(long, env = "DLLM_MAX_LAYERS")]
    pub max_layers: Option<i32>,
    /// Simulated GPUs instead of NVML, e.g. "2x81559:NVIDIA H100 80GB HBM3" (count x MiB:name;
    /// several groups separated by ';'). UUIDs are stable per node id and index.
    #[arg(long, env = "DLLM_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) over
    /// HTTP on this ip:port [default: off].
    #[arg(long, env = "DLLM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log line format (`--log-format`).
    #[command(flatten)]
    pub log: dllm_util::logging::LogArgs,
    /// TLS and who may connect (this worker's certificate is also its identity to the
    /// control plane: spiffe://<trust-domain>/worker/<node-id>).
    #[command(flatten)]
    pub security: dllm_auth::flags::SecurityArgs,
    /// A `worker` token whose subject is this node id, instead of a certificate, for the
    /// control plane (with --tls-ca alone; the worker's own port then serves plaintext, so
    /// only on loopback or with --insecure).
    #[arg(long, env = "DLLM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A validated worker configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node id.
    pub node_id: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Host the cluster reaches this worker at.
    pub advertise_host: String,
    /// Port the cluster reaches this worker at.
    pub advertise_port: u16,
    /// Control-plane replicas.
    pub seed_nodes: Vec<String>,
    /// First heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Explicit layer capacity.
    pub max_layers: Option<i32>,
    /// Simulated GPUs, when asked for.
    pub simulate_gpus: Option<Vec<SimulatedGpu>>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The worker's own port: TLS, trust domain, `--insecure`.
    pub security: dllm_auth::flags::Security,
    /// How the worker reaches the control plane: the CA, its certificate or token.
    pub client: ClientCredentials,
}

/// The worker's credentials towards the control plane (kept as paths and text, so the
/// configuration stays plain data; [`ClientCredentials::load`] reads them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The cluster CA (TLS on).
    pub ca: Option<PathBuf>,
    /// The worker's certificate and key.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// A worker token.
    pub token: Option<String>,
}

impl ClientCredentials {
    /// The client credentials, loaded.
    ///
    /// # Errors
    /// When a file does not load or the token cannot be sent.
    pub fn load(
        &self,
    ) -> Result<dllm_auth::client::ClientAuth, dllm_auth::client::ClientAuthError> {
        dllm_auth::client::ClientAuth::from_flags(
            self.ca.as_deref(),
            self.cert.as_ref().map(|(c, _)| c.as_path()),
            self.cert.as_ref().map(|(_, k)| k.as_path()),
            self.token.as_deref(),
        )
    }
}

fn default_node_id() -> Option<String> {
    sysinfo::System::host_name().ok().filter(|h| !h.is_empty())
}

impl Args {
    /// Validates the settings and derives the configuration from them.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad or missing flag.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let node_id = self
            .node_id
            .or_else(default_node_id)
            .ok_or(ConfigError::Missing("node-id"))?;
        if node_id.is_empty()
            || node_id.len() > 128
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::invalid(
                "node-id",
                format!("{node_id:?} must be 1 to 128 characters of [A-Za-z0-9._-]"),
            ));
        }
        let listen = parse_socket_addr("listen", &self.listen)?;
        let (advertise_host, advertise_port) = match &self.advertise {
            Some(a) => split_host_port("advertise", a)?,
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::invalid(
                    "advertise",
                    "is required when --listen is a wildcard address",
                ))
            }
            None => (listen.ip().to_string(), listen.port()),
        };
        let seeds_raw = self.seed_nodes.ok_or(ConfigError::Missing("seed-nodes"))?;
        let seed_nodes: Vec<String> = seeds_raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if seed_nodes.is_empty() {
            return Err(ConfigError::invalid("seed-nodes", "lists no address"));
        }
        for seed in &seed_nodes {
            split_host_port("seed-nodes", seed)?;
        }
        let heartbeat_interval = parse_duration(&self.heartbeat_interval).ok_or_else(|| {
            ConfigError::invalid(
                "heartbeat-interval",
                format!(
                    "{:?} is not a duration like 1s or 500ms",
                    self.heartbeat_interval
                ),
            )
        })?;
        if self.max_layers.is_some_and(|m| m < 0) {
            return Err(ConfigError::invalid("max-layers", "must be >= 0"));
        }
        let simulate_gpus = self
            .simulate_gpus
            .map(|spec| {
                parse_simulated_gpus(&node_id, &spec)
                    .map_err(|e| ConfigError::invalid("simulate-gpus", e))
            })
            .transpose()?;
        let metrics_listen = self
            .metrics_listen
            .map(|v| parse_socket_addr("metrics-listen", &v))
            .transpose()?;
        // With --tls-ca and --token alone, TLS is for reaching the control plane only.
        let mut server_side = self.security.clone();
        let token_only = self.token.is_some()
            && server_side.tls_ca.is_some()
            && server_side.tls_cert.is_none()
            && server_side.tls_key.is_none();
        if token_only {
            server_side.tls_ca = None;
        }
        if self.token.is_some() && self.security.tls_ca.is_none() {
            // A token in plaintext to a remote replica would be readable on the way.
            let plain = dllm_auth::client::ClientAuth {
                authorization: Some(http::HeaderValue::from_static("Bearer x")),
                ..Default::default()
            };
            for seed in &seed_nodes {
                plain
                    .check_endpoint(seed)
                    .map_err(|reason| ConfigError::invalid("token", reason))?;
            }
        }
        let client = ClientCredentials {
            ca: self.security.tls_ca.clone(),
            cert: self
                .security
                .tls_cert
                .clone()
                .zip(self.security.tls_key.clone()),
            token: self.token.clone(),
        };
        let security = server_side.resolve(listen)?;
        Ok(Config {
            security,
            client,
            metrics_listen,
            node_id,
            listen,
            advertise_host,
            advertise_port,
            seed_nodes,
            heartbeat_interval,
            max_layers: self.max_layers,
            simulate_gpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use dllm_util::layered::{try_load_from, with_changes};

    use super::*;

    const BASE: [&str; 3] = [
        "--node-id=w1",
        "--listen=127.0.0.1:7000",
        "--seed-nodes=127.0.0.1:8080, 127.0.0.1:8081",
    ];

    /// The settings `argv` gives (after the program name), through the same layers `main` uses.
    fn args(argv: &[&str]) -> Args {
        let argv = std::iter::once("dllm-worker").chain(argv.iter().copied());
        try_load_from(Args::command(), argv).expect("parses")
    }

    /// [`BASE`] with `changes` (`--flag=value` each) in place of its own values.
    fn resolve(changes: &[&str]) -> Result<Config, ConfigError> {
        args(&with_changes(&BASE, changes)).resolve()
    }

    #[test]
    fn defaults_and_seeds() {
        let c = resolve(&[]).expect("valid");
        assert_eq!(c.seed_nodes.len(), 2);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("127.0.0.1", 7000)
        );
        assert_eq!((c.max_layers, c.metrics_listen), (None, None));
        assert!(c.simulate_gpus.is_none());
        let plain = args(&["--node-id=w1", "--seed-nodes=h:1", "--advertise=h:2"])
            .resolve()
            .expect_err("plaintext on the default wildcard address");
        assert!(plain.to_string().contains("--insecure"), "{plain}");
        let wildcard = args(&[
            "--node-id=w1",
            "--seed-nodes=h:1",
            "--advertise=h:2",
            "--insecure",
        ])
        .resolve()
        .expect("valid with --insecure");
        assert_eq!(wildcard.listen.to_string(), "0.0.0.0:50051");
        assert!(wildcard.security.insecure);
    }

    #[test]
    fn errors_name_the_flag() {
        let err = args(&["--node-id=w1", "--listen=127.0.0.1:1"])
            .resolve()
            .expect_err("no seeds");
        assert!(err.to_string().starts_with("--seed-nodes"), "{err}");
        for (arg, flag) in [
            ("--node-id=a b", "--node-id"),
            ("--seed-nodes=nohost", "--seed-nodes"),
            ("--seed-nodes=,", "--seed-nodes"),
            ("--heartbeat-interval=soon", "--heartbeat-interval"),
            ("--listen=0.0.0.0:1", "--advertise"),
            ("--simulate-gpus=2x:x", "--simulate-gpus"),
            ("--max-layers=-1", "--max-layers"),
            ("--metrics-listen=nope", "--metrics-listen"),
        ] {
            let err = resolve(&[arg]).expect_err(arg).to_string();
            assert!(err.starts_with(flag), "{arg}: {err:?} should name {flag}");
        }
    }

    /// A flag wins over the environment, which wins over the file, which wins over the
    /// default: for each setting, the highest layer that gives it.
    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("worker.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\nseed_nodes = \"h:1\"\nheartbeat_interval = \"3s\"\n\
             max_layers = 3\nlisten = \"127.0.0.1:3\"\n",
        )
        .expect("write");
        // Variables only this test sets, so that it cannot change another test running at the
        // same time; set before the command is built, since clap reads a variable when an
        // argument is given its name.
        std::env::set_var("DLLM_TEST_WORKER_HEARTBEAT_INTERVAL", "2s");
        std::env::set_var("DLLM_TEST_WORKER_MAX_LAYERS", "2");
        // The real variables renamed to them.
        let command = Args::command()
            .mut_arg("heartbeat_interval", |a| {
                a.env("DLLM_TEST_WORKER_HEARTBEAT_INTERVAL")
            })
            .mut_arg("max_layers", |a| a.env("DLLM_TEST_WORKER_MAX_LAYERS"));
        let argv = [
            "dllm-worker",
            "--config",
            path.to_str().expect("utf-8"),
            "--heartbeat-interval=1500ms",
        ];
        let c = try_load_from::<Args, _, _>(command, argv)
            .expect("parses")
            .resolve()
            .expect("valid");
        assert_eq!(
            c.heartbeat_interval,
            Duration::from_millis(1500),
            "the flag wins over the environment and the file"
        );
        assert_eq!(c.max_layers, Some(2), "the environment wins over the file");
        assert_eq!(c.node_id, "from-file", "the file wins over the default");
        assert_eq!(c.listen.port(), 3, "the file wins over a written default");
        assert_eq!(
            c.metrics_listen, None,
            "the default stands where nothing sets it"
        );
    }
}
