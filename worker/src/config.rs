//! Worker configuration: flags, `DLLM_*` environment variables and an optional TOML file,
//! validated before anything starts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

use crate::resources::{parse_simulated_gpus, SimulatedGpu};

/// Command-line flags of `dllm-worker`.
#[derive(Parser, Debug, Default)]
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
    /// Address to serve the worker's gRPC API on (ip:port) [default: 0.0.0.0:50051].
    #[arg(long, env = "DLLM_LISTEN")]
    pub listen: Option<String>,
    /// host:port the cluster should reach this worker at [default: --listen].
    #[arg(long, env = "DLLM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Control-plane replicas to join through, host:port,host:port,...
    #[arg(long, env = "DLLM_SEED_NODES")]
    pub seed_nodes: Option<String>,
    /// Heartbeat interval until the control plane says otherwise, e.g. 1s, 500ms [default: 1s].
    #[arg(long, env = "DLLM_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Layers this node can hold [default: one per GiB of GPU memory, or of RAM without GPUs].
    #[arg(long, env = "DLLM_MAX_LAYERS")]
    pub max_layers: Option<i32>,
    /// Simulated GPUs instead of NVML, e.g. "2x81559:NVIDIA H100 80GB HBM3" (count x MiB:name;
    /// several groups separated by ';'). UUIDs are stable per node id and index.
    #[arg(long, env = "DLLM_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
    /// Serve Prometheus metrics over HTTP at /metrics on this ip:port [default: off].
    #[arg(long, env = "DLLM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    seed_nodes: Option<String>,
    heartbeat_interval: Option<String>,
    max_layers: Option<i32>,
    simulate_gpus: Option<String>,
    metrics_listen: Option<String>,
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
}

/// A setting that is missing or wrong, naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("--{0} is required")]
    Missing(&'static str),
    /// A setting has a bad value.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Parses "1s", "500ms", "2m" or a bare number of seconds.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    let secs = num.trim().parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

fn split_host_port(flag: &'static str, value: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| invalid(flag, format!("{value:?} is not host:port")))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(flag, format!("{value:?} has no valid port")))?;
    if host.is_empty() {
        return Err(invalid(flag, format!("{value:?} has no host")));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

fn default_node_id() -> Option<String> {
    sysinfo::System::host_name().ok().filter(|h| !h.is_empty())
}

impl Args {
    /// Merges flags over the file over defaults, and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad or missing flag.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file: FileConfig = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?
            }
        };
        let node_id = self
            .node_id
            .or(file.node_id)
            .or_else(default_node_id)
            .ok_or(ConfigError::Missing("node-id"))?;
        if node_id.is_empty()
            || node_id.len() > 128
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "node-id",
                format!("{node_id:?} must be 1 to 128 characters of [A-Za-z0-9._-]"),
            ));
        }
        let listen_raw = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:50051".to_string());
        let listen: SocketAddr = listen_raw
            .parse()
            .map_err(|_| invalid("listen", format!("{listen_raw:?} is not ip:port")))?;
        let advertise = self.advertise.or(file.advertise);
        let (advertise_host, advertise_port) = match &advertise {
            Some(a) => split_host_port("advertise", a)?,
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    "is required when --listen is a wildcard address",
                ))
            }
            None => (listen.ip().to_string(), listen.port()),
        };
        let seeds_raw = self
            .seed_nodes
            .or(file.seed_nodes)
            .ok_or(ConfigError::Missing("seed-nodes"))?;
        let seed_nodes: Vec<String> = seeds_raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if seed_nodes.is_empty() {
            return Err(invalid("seed-nodes", "lists no address"));
        }
        for seed in &seed_nodes {
            split_host_port("seed-nodes", seed)?;
        }
        let interval_raw = self
            .heartbeat_interval
            .or(file.heartbeat_interval)
            .unwrap_or_else(|| "1s".to_string());
        let heartbeat_interval = parse_duration(&interval_raw).ok_or_else(|| {
            invalid(
                "heartbeat-interval",
                format!("{interval_raw:?} is not a duration like 1s or 500ms"),
            )
        })?;
        let max_layers = self.max_layers.or(file.max_layers);
        if max_layers.is_some_and(|m| m < 0) {
            return Err(invalid("max-layers", "must be >= 0"));
        }
        let simulate_gpus = match self.simulate_gpus.or(file.simulate_gpus) {
            Some(spec) => Some(
                parse_simulated_gpus(&node_id, &spec).map_err(|e| invalid("simulate-gpus", e))?,
            ),
            None => None,
        };
        let metrics_listen = match self.metrics_listen.or(file.metrics_listen) {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| invalid("metrics-listen", format!("{v:?} is not ip:port")))?,
            ),
        };
        Ok(Config {
            metrics_listen,
            node_id,
            listen,
            advertise_host,
            advertise_port,
            seed_nodes,
            heartbeat_interval,
            max_layers,
            simulate_gpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Args {
        Args {
            node_id: Some("w1".into()),
            listen: Some("127.0.0.1:7000".into()),
            seed_nodes: Some("127.0.0.1:8080, 127.0.0.1:8081".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_seeds() {
        let c = base().resolve().expect("valid");
        assert_eq!(c.seed_nodes.len(), 2);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("127.0.0.1", 7000)
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: Vec<(Args, &str)> = vec![
            (
                Args {
                    node_id: Some("a b".into()),
                    ..base()
                },
                "--node-id",
            ),
            (
                Args {
                    seed_nodes: None,
                    ..base()
                },
                "--seed-nodes",
            ),
            (
                Args {
                    seed_nodes: Some("nohost".into()),
                    ..base()
                },
                "--seed-nodes",
            ),
            (
                Args {
                    heartbeat_interval: Some("soon".into()),
                    ..base()
                },
                "--heartbeat-interval",
            ),
            (
                Args {
                    listen: Some("0.0.0.0:1".into()),
                    ..base()
                },
                "--advertise",
            ),
            (
                Args {
                    simulate_gpus: Some("2x:x".into()),
                    ..base()
                },
                "--simulate-gpus",
            ),
            (
                Args {
                    max_layers: Some(-1),
                    ..base()
                },
                "--max-layers",
            ),
        ];
        for (args, flag) in cases {
            let err = args.resolve().expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{err:?} should name {flag}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), None);
    }
}
