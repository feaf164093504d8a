//! Replica configuration: flags, `DLLM_*` environment variables and an optional TOML file,
//! merged in that order of precedence and validated before anything starts.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

/// Command-line flags of `dllm-control-plane`. Every flag is optional here so that a value
/// from the config file can fill in what the command line leaves out; [`Args::resolve`]
/// applies the defaults and validates.
#[derive(Parser, Debug, Default)]
#[command(
    name = "dllm-control-plane",
    version,
    about = "A dllm control-plane replica: cluster state in Raft, served over gRPC."
)]
pub struct Args {
    /// TOML file with any of the settings below (keys as the long flag names, with '_').
    #[arg(long, env = "DLLM_CONFIG")]
    pub config: Option<PathBuf>,
    /// This replica's Raft id, >= 1, unique in the cluster.
    #[arg(long, env = "DLLM_ID")]
    pub id: Option<u64>,
    /// Address to serve the API and Raft on (host:port).
    #[arg(long, env = "DLLM_LISTEN")]
    pub listen: Option<String>,
    /// Address other replicas and clients reach this one at (default: --listen).
    #[arg(long, env = "DLLM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory for the Raft log, vote and snapshots.
    #[arg(long, env = "DLLM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The founding replicas, `1=host:port,2=host:port,3=host:port`. Used once, on the first
    /// start with an empty data dir; a replica not listed waits to be added with AddReplica.
    #[arg(long, env = "DLLM_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Raft leader heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "DLLM_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Lower bound of the randomized election timeout in milliseconds [default: 150].
    #[arg(long, env = "DLLM_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout in milliseconds [default: 200].
    #[arg(long, env = "DLLM_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot (and purge the log behind it) every this many applied entries
    /// (plus 0-20% by replica id, so replicas take turns) [default: 10000].
    #[arg(long, env = "DLLM_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Size at which the Raft log starts a new segment file, in KiB [default: 32768]. Old
    /// segments are deleted once a snapshot's purge leaves no live entry in them.
    #[arg(long, env = "DLLM_LOG_SEGMENT_KIB")]
    pub log_segment_kib: Option<u64>,
    /// Most client writes the leader packs into one log entry (group commit) [default: 256].
    /// 1 turns group commit off: every write is its own entry.
    #[arg(long, env = "DLLM_MAX_WRITES_PER_ENTRY")]
    pub max_writes_per_entry: Option<usize>,
    /// How long a client request may wait for a leader or a quorum, in milliseconds
    /// [default: 5000].
    #[arg(long, env = "DLLM_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// How long shutdown waits for in-flight requests, in milliseconds [default: 5000].
    #[arg(long, env = "DLLM_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// How often workers heartbeat, in milliseconds; told to them in every heartbeat answer
    /// [default: 1000].
    #[arg(long, env = "DLLM_NODE_HEARTBEAT_INTERVAL_MS")]
    pub node_heartbeat_interval_ms: Option<u64>,
    /// Missed heartbeat intervals before a node is `unhealthy` [default: 3].
    #[arg(long, env = "DLLM_UNHEALTHY_AFTER")]
    pub unhealthy_after: Option<u32>,
    /// Missed heartbeat intervals before a node is `offline` [default: 10].
    #[arg(long, env = "DLLM_OFFLINE_AFTER")]
    pub offline_after: Option<u32>,
    /// Time a new leader waits before counting any node's silence, in milliseconds
    /// [default: 2000].
    #[arg(long, env = "DLLM_FAILOVER_GRACE_MS")]
    pub failover_grace_ms: Option<u64>,
    /// Serve Prometheus metrics over HTTP at /metrics on this ip:port [default: off].
    #[arg(long, env = "DLLM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// The same settings as [`Args`], read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<String>,
    raft_heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_logs: Option<u64>,
    log_segment_kib: Option<u64>,
    max_writes_per_entry: Option<usize>,
    request_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    node_heartbeat_interval_ms: Option<u64>,
    unhealthy_after: Option<u32>,
    offline_after: Option<u32>,
    failover_grace_ms: Option<u64>,
    metrics_listen: Option<String>,
}

/// A validated replica configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Raft id.
    pub id: u64,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where others reach this replica.
    pub advertise: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Founding replicas by id; empty when this replica joins later.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Raft heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Election timeout bounds.
    pub election_timeout: (Duration, Duration),
    /// Snapshot every this many entries.
    pub snapshot_logs: u64,
    /// Raft log segment size in bytes.
    pub log_segment_bytes: u64,
    /// Group commit: most client writes in one log entry.
    pub max_writes_per_entry: usize,
    /// Client request budget.
    pub request_timeout: Duration,
    /// Shutdown drain budget.
    pub shutdown_timeout: Duration,
    /// Failure detector thresholds.
    pub liveness: crate::liveness::LivenessConfig,
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
        /// What is wrong with it.
        reason: String,
    },
    /// The config file cannot be read or parsed.
    #[error("--config {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Checks that `addr` looks like `host:port` with a port in 1..=65535.
pub fn check_host_port(flag: &'static str, addr: &str) -> Result<(), ConfigError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(flag, format!("{addr:?} is not host:port")))?;
    if host.is_empty() {
        return Err(invalid(flag, format!("{addr:?} has no host")));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(invalid(flag, format!("{addr:?} has no valid port"))),
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(value: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    const FLAG: &str = "initial-cluster";
    let mut members = BTreeMap::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| invalid(FLAG, format!("{part:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 1)
            .ok_or_else(|| invalid(FLAG, format!("{id:?} is not an id >= 1")))?;
        check_host_port(FLAG, addr.trim())?;
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(invalid(FLAG, format!("id {id} appears twice")));
        }
    }
    Ok(members)
}

impl Args {
    /// Merges flags over the config file over defaults, and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first flag that is missing or wrong.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        let id = self.id.or(file.id).ok_or(ConfigError::Missing("id"))?;
        if id == 0 {
            return Err(invalid("id", "must be >= 1"));
        }
        let listen_raw = self
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Missing("listen"))?;
        let listen: SocketAddr = listen_raw
            .parse()
            .map_err(|_| invalid("listen", format!("{listen_raw:?} is not ip:port")))?;
        let advertise = match self.advertise.or(file.advertise) {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    "is required when --listen is a wildcard address",
                ))
            }
            None => listen_raw.clone(),
        };
        check_host_port("advertise", &advertise)?;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Missing("data-dir"))?;
        let initial_cluster = match self.initial_cluster.or(file.initial_cluster) {
            Some(v) => parse_initial_cluster(&v)?,
            None => BTreeMap::new(),
        };
        if let Some(addr) = initial_cluster.get(&id) {
            if *addr != advertise {
                return Err(invalid(
                    "initial-cluster",
                    format!("lists {id}={addr} but this replica advertises {advertise}"),
                ));
            }
        }
        let ms =
            |flag: &'static str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
                match v.unwrap_or(default) {
                    0 => Err(invalid(flag, "must be > 0")),
                    n => Ok(Duration::from_millis(n)),
                }
            };
        let heartbeat_interval = ms(
            "raft-heartbeat-ms",
            self.raft_heartbeat_ms.or(file.raft_heartbeat_ms),
            50,
        )?;
        let emin = ms(
            "election-timeout-min-ms",
            self.election_timeout_min_ms
                .or(file.election_timeout_min_ms),
            150,
        )?;
        let emax = ms(
            "election-timeout-max-ms",
            self.election_timeout_max_ms
                .or(file.election_timeout_max_ms),
            200,
        )?;
        if emin <= heartbeat_interval {
            return Err(invalid(
                "election-timeout-min-ms",
                "must be greater than --raft-heartbeat-ms",
            ));
        }
        if emax <= emin {
            return Err(invalid(
                "election-timeout-max-ms",
                "must be greater than --election-timeout-min-ms",
            ));
        }
        let snapshot_logs = self.snapshot_logs.or(file.snapshot_logs).unwrap_or(10_000);
        if snapshot_logs == 0 {
            return Err(invalid("snapshot-logs", "must be > 0"));
        }
        let log_segment_kib = self
            .log_segment_kib
            .or(file.log_segment_kib)
            .unwrap_or(32 * 1024);
        if !(4..=1024 * 1024).contains(&log_segment_kib) {
            return Err(invalid(
                "log-segment-kib",
                "must be between 4 and 1048576 (1 GiB)",
            ));
        }
        let max_writes_per_entry = self
            .max_writes_per_entry
            .or(file.max_writes_per_entry)
            .unwrap_or(256);
        if !(1..=4096).contains(&max_writes_per_entry) {
            return Err(invalid(
                "max-writes-per-entry",
                "must be between 1 and 4096",
            ));
        }
        let unhealthy_after = self.unhealthy_after.or(file.unhealthy_after).unwrap_or(3);
        let offline_after = self.offline_after.or(file.offline_after).unwrap_or(10);
        if unhealthy_after == 0 {
            return Err(invalid("unhealthy-after", "must be > 0"));
        }
        if offline_after <= unhealthy_after {
            return Err(invalid(
                "offline-after",
                "must be greater than --unhealthy-after",
            ));
        }
        let node_interval = ms(
            "node-heartbeat-interval-ms",
            self.node_heartbeat_interval_ms
                .or(file.node_heartbeat_interval_ms),
            1000,
        )?;
        if node_interval > Duration::from_secs(3600) {
            return Err(invalid(
                "node-heartbeat-interval-ms",
                "must be at most 3600000",
            ));
        }
        let liveness = crate::liveness::LivenessConfig {
            interval: node_interval,
            unhealthy_after,
            offline_after,
            failover_grace: Duration::from_millis(
                self.failover_grace_ms
                    .or(file.failover_grace_ms)
                    .unwrap_or(2000),
            ),
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
            liveness,
            id,
            listen,
            advertise,
            data_dir,
            initial_cluster,
            heartbeat_interval,
            election_timeout: (emin, emax),
            snapshot_logs,
            log_segment_bytes: log_segment_kib * 1024,
            max_writes_per_entry,
            request_timeout: ms(
                "request-timeout-ms",
                self.request_timeout_ms.or(file.request_timeout_ms),
                5000,
            )?,
            shutdown_timeout: ms(
                "shutdown-timeout-ms",
                self.shutdown_timeout_ms.or(file.shutdown_timeout_ms),
                5000,
            )?,
        })
    }
}

impl Config {
    /// The openraft configuration these settings give.
    ///
    /// # Errors
    /// When openraft rejects the combination.
    pub fn raft_config(&self) -> Result<openraft::Config, openraft::ConfigError> {
        openraft::Config {
            cluster_name: "dllm".to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            // Staggered by id (+0%, +10%, +20%), so the replicas do not all encode and write a
            // snapshot at the same moment: on a small machine that stalled every write at once.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                self.snapshot_logs + self.snapshot_logs / 10 * (self.id % 3),
            ),
            // Entries kept behind a snapshot so that a briefly lagging follower catches up from
            // the log instead of a whole snapshot.
            max_in_snapshot_log_to_keep: self.snapshot_logs.min(1000),
            // Chunks well under gRPC's 4 MiB default message limit.
            snapshot_max_chunk_size: 1024 * 1024,
            // Elections are started by `replica::election` (pre-vote, a fresh random
            // timeout per round), not by openraft's timer.
            enable_elect: false,
            ..Default::default()
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Args {
        Args {
            id: Some(1),
            listen: Some("127.0.0.1:8080".into()),
            data_dir: Some("d".into()),
            ..Default::default()
        }
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = base().resolve().expect("valid");
        assert_eq!(c.advertise, "127.0.0.1:8080");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(
            c.election_timeout,
            (Duration::from_millis(150), Duration::from_millis(200))
        );
        assert!(c.initial_cluster.is_empty());
        c.raft_config().expect("openraft accepts the defaults");
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: Vec<(Args, &str)> = vec![
            (Args { id: None, ..base() }, "--id"),
            (
                Args {
                    id: Some(0),
                    ..base()
                },
                "--id",
            ),
            (
                Args {
                    listen: Some("nope".into()),
                    ..base()
                },
                "--listen",
            ),
            (
                Args {
                    data_dir: None,
                    ..base()
                },
                "--data-dir",
            ),
            (
                Args {
                    initial_cluster: Some("1=127.0.0.1:8080,x=y".into()),
                    ..base()
                },
                "--initial-cluster",
            ),
            (
                Args {
                    initial_cluster: Some("1=127.0.0.1:9999".into()),
                    ..base()
                },
                "--initial-cluster",
            ),
            (
                Args {
                    election_timeout_min_ms: Some(30),
                    ..base()
                },
                "--election-timeout-min-ms",
            ),
            (
                Args {
                    log_segment_kib: Some(1),
                    ..base()
                },
                "--log-segment-kib",
            ),
        ];
        for (args, flag) in cases {
            let err = args.resolve().expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{err:?} should name {flag}");
        }
    }

    #[test]
    fn file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("cp.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:8081\"\ndata_dir = \"x\"\nsnapshot_logs = 7\n",
        )
        .expect("write");
        let c = Args {
            config: Some(path),
            id: Some(3),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.id, 3, "the flag wins over the file");
        assert_eq!(c.snapshot_logs, 7, "the file wins over the default");
    }

    #[test]
    fn initial_cluster_parses() {
        let m = parse_initial_cluster("1=127.0.0.1:8080, 2=127.0.0.1:8081,3=h:1").expect("valid");
        assert_eq!(m.len(), 3);
        assert!(
            parse_initial_cluster("1=a:1,1=b:2").is_err(),
            "duplicate id"
        );
    }
}
