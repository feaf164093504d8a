//! Replica configuration: flags, `DLLM_*` environment variables and an optional TOML file,
//! in that order of precedence over the defaults written here once (the layering is
//! `dllm_util::layered`'s), validated before anything starts.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
pub use dllm_util::config::ConfigError;
use dllm_util::config::{nonzero_ms, parse_socket_addr, split_host_port};

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(flag, reason)
}

/// Command-line flags of `dllm-control-plane`, each with its environment variable and its
/// default, written here once. [`dllm_util::layered`] puts the `--config` file between the
/// environment and the defaults; [`Args::resolve`] validates.
#[derive(Parser, Debug)]
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
    /// Raft leader heartbeat interval in milliseconds.
    #[arg(long, env = "DLLM_RAFT_HEARTBEAT_MS", default_value_t = 50)]
    pub raft_heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout in milliseconds.
    #[arg(long, env = "DLLM_ELECTION_TIMEOUT_MIN_MS", default_value_t = 150)]
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout in milliseconds.
    #[arg(long, env = "DLLM_ELECTION_TIMEOUT_MAX_MS", default_value_t = 200)]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many applied entries
    /// (plus 0-20% by replica id, so replicas take turns).
    #[arg(long, env = "DLLM_SNAPSHOT_LOGS", default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Most client writes the leader packs into one log entry (group commit); 1 turns group
    /// commit off: every write is its own entry.
    #[arg(long, env = "DLLM_MAX_WRITES_PER_ENTRY", default_value_t = 256)]
    pub max_writes_per_entry: usize,
    /// Most other nodes a RegisterWithCluster answer lists in existing_nodes (the first by
    /// node_id; its message then says how many there are and to page DiscoverNodes); 0 lists
    /// every one, whatever the fleet costs.
    #[arg(long, env = "DLLM_MAX_EXISTING_NODES", default_value_t = 100)]
    pub max_existing_nodes: usize,
    /// How long a client request may wait for a leader or a quorum, in milliseconds.
    #[arg(long, env = "DLLM_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    #[arg(long, env = "DLLM_SHUTDOWN_TIMEOUT_MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,
    /// How often workers heartbeat, in milliseconds; told to them in every heartbeat answer.
    #[arg(long, env = "DLLM_NODE_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub node_heartbeat_interval_ms: u64,
    /// Missed heartbeat intervals before a node is `unhealthy`.
    #[arg(long, env = "DLLM_UNHEALTHY_AFTER", default_value_t = 3)]
    pub unhealthy_after: u32,
    /// Missed heartbeat intervals before a node is `offline`.
    #[arg(long, env = "DLLM_OFFLINE_AFTER", default_value_t = 10)]
    pub offline_after: u32,
    /// Time a new leader waits before counting any node's silence, in milliseconds.
    #[arg(long, env = "DLLM_FAILOVER_GRACE_MS", default_value_t = 2000)]
    pub failover_grace_ms: u64,
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) over
    /// HTTP on this ip:port [default: off].
    #[arg(long, env = "DLLM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log line format (`--log-format`).
    #[command(flatten)]
    pub log: dllm_util::logging::LogArgs,
    /// TLS and who may connect.
    #[command(flatten)]
    pub security: dllm_auth::flags::SecurityArgs,
    /// An Ed25519 public key (PEM) that client tokens may be signed with; repeat it (or
    /// separate with ',') to trust several during a key rotation [default: tokens refused].
    #[arg(long, env = "DLLM_JWT_PUBLIC_KEY", action = clap::ArgAction::Append, value_delimiter = ',')]
    pub jwt_public_key: Vec<PathBuf>,
    /// `--restore-from`, `--force-new-cluster`.
    #[command(flatten)]
    pub recovery: crate::recovery::RecoveryArgs,
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
    /// Group commit: most client writes in one log entry.
    pub max_writes_per_entry: usize,
    /// Most nodes in a join answer's existing_nodes; 0: no bound.
    pub max_existing_nodes: usize,
    /// Client request budget.
    pub request_timeout: Duration,
    /// Shutdown drain budget.
    pub shutdown_timeout: Duration,
    /// Failure detector thresholds.
    pub liveness: crate::liveness::LivenessConfig,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS, trust domain, `--insecure`.
    pub security: dllm_auth::flags::Security,
    /// Public keys client tokens may be signed with.
    pub jwt_public_keys: Vec<PathBuf>,
    /// What to do to the store before Raft starts (restore, force a new cluster).
    pub recovery: crate::recovery::Recovery,
}

/// Parses `1=host:port,2=host:port`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `--initial-cluster`.
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
        split_host_port(FLAG, addr.trim())?;
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(invalid(FLAG, format!("id {id} appears twice")));
        }
    }
    Ok(members)
}

impl Args {
    /// Validates the settings and derives the configuration from them.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first flag that is missing or wrong.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let id = self.id.ok_or(ConfigError::Missing("id"))?;
        if id == 0 {
            return Err(invalid("id", "must be >= 1"));
        }
        let listen_raw = self.listen.ok_or(ConfigError::Missing("listen"))?;
        let listen = parse_socket_addr("listen", &listen_raw)?;
        let advertise = match self.advertise {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    "is required when --listen is a wildcard address",
                ))
            }
            None => listen_raw,
        };
        split_host_port("advertise", &advertise)?;
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("data-dir"))?;
        let initial_cluster = match self.initial_cluster {
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
        let heartbeat_interval = nonzero_ms("raft-heartbeat-ms", self.raft_heartbeat_ms)?;
        let emin = nonzero_ms("election-timeout-min-ms", self.election_timeout_min_ms)?;
        let emax = nonzero_ms("election-timeout-max-ms", self.election_timeout_max_ms)?;
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
        if self.snapshot_logs == 0 {
            return Err(invalid("snapshot-logs", "must be > 0"));
        }
        if !(1..=4096).contains(&self.max_writes_per_entry) {
            return Err(invalid(
                "max-writes-per-entry",
                "must be between 1 and 4096",
            ));
        }
        if self.unhealthy_after == 0 {
            return Err(invalid("unhealthy-after", "must be > 0"));
        }
        if self.offline_after <= self.unhealthy_after {
            return Err(invalid(
                "offline-after",
                "must be greater than --unhealthy-after",
            ));
        }
        let node_interval = nonzero_ms(
            "node-heartbeat-interval-ms",
            self.node_heartbeat_interval_ms,
        )?;
        if node_interval > Duration::from_secs(3600) {
            return Err(invalid(
                "node-heartbeat-interval-ms",
                "must be at most 3600000",
            ));
        }
        let liveness = crate::liveness::LivenessConfig {
            interval: node_interval,
            unhealthy_after: self.unhealthy_after,
            offline_after: self.offline_after,
            failover_grace: Duration::from_millis(self.failover_grace_ms),
        };
        let metrics_listen = self
            .metrics_listen
            .map(|v| parse_socket_addr("metrics-listen", &v))
            .transpose()?;
        let security = self.security.resolve(listen)?;
        if !self.jwt_public_key.is_empty() && security.tls.is_none() {
            return Err(invalid(
                "jwt-public-key",
                "tokens need TLS: give --tls-ca, --tls-cert and --tls-key too",
            ));
        }
        let recovery = self.recovery.resolve(id, &initial_cluster)?;
        Ok(Config {
            recovery,
            security,
            jwt_public_keys: self.jwt_public_key,
            metrics_listen,
            liveness,
            id,
            listen,
            advertise,
            data_dir,
            initial_cluster,
            heartbeat_interval,
            election_timeout: (emin, emax),
            snapshot_logs: self.snapshot_logs,
            max_writes_per_entry: self.max_writes_per_entry,
            max_existing_nodes: self.max_existing_nodes,
            request_timeout: nonzero_ms("request-timeout-ms", self.request_timeout_ms)?,
            shutdown_timeout: nonzero_ms("shutdown-timeout-ms", self.shutdown_timeout_ms)?,
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
    use clap::CommandFactory;
    use dllm_util::layered::{try_load_from, with_changes};

    use super::*;

    const BASE: [&str; 3] = ["--id=1", "--listen=127.0.0.1:8080", "--data-dir=d"];

    /// The settings `argv` gives (after the program name), through the same layers `main` uses.
    fn args(argv: &[&str]) -> Args {
        let argv = std::iter::once("dllm-control-plane").chain(argv.iter().copied());
        try_load_from(Args::command(), argv).expect("parses")
    }

    /// [`BASE`] with `changes` (`--flag=value` each) in place of its own values.
    fn resolve(changes: &[&str]) -> Result<Config, ConfigError> {
        args(&with_changes(&BASE, changes)).resolve()
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = resolve(&[]).expect("valid");
        assert_eq!(c.advertise, "127.0.0.1:8080");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(
            c.election_timeout,
            (Duration::from_millis(150), Duration::from_millis(200))
        );
        assert_eq!(c.snapshot_logs, 10_000);
        assert_eq!(c.max_writes_per_entry, 256);
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.liveness.interval, Duration::from_secs(1));
        assert_eq!(
            (c.liveness.unhealthy_after, c.liveness.offline_after),
            (3, 10)
        );
        assert_eq!(c.liveness.failover_grace, Duration::from_secs(2));
        assert_eq!(c.metrics_listen, None);
        assert!(c.initial_cluster.is_empty());
        c.raft_config().expect("openraft accepts the defaults");
    }

    /// `--help` shows every default, from the one place it is written.
    #[test]
    fn help_shows_the_defaults() {
        let help = Args::command().render_help().to_string();
        for shown in [
            "[default: 50]",
            "[default: 10000]",
            "[default: 5000]",
            "[default: dllm.local]",
        ] {
            assert!(help.contains(shown), "{shown} in {help}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let missing = |flag: &str| -> Vec<&str> {
            BASE.iter()
                .copied()
                .filter(|a| !a.starts_with(flag))
                .collect()
        };
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (missing("--id"), "--id"),
            (missing("--data-dir"), "--data-dir"),
            (missing("--listen"), "--listen"),
        ];
        for (argv, flag) in cases {
            let err = args(&argv).resolve().expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{err:?} should name {flag}");
        }
        for (arg, flag) in [
            ("--id=0", "--id"),
            ("--listen=nope", "--listen"),
            (
                "--initial-cluster=1=127.0.0.1:8080,x=y",
                "--initial-cluster",
            ),
            ("--initial-cluster=1=127.0.0.1:9999", "--initial-cluster"),
            ("--election-timeout-min-ms=30", "--election-timeout-min-ms"),
            ("--request-timeout-ms=0", "--request-timeout-ms"),
            ("--offline-after=3", "--offline-after"),
            ("--metrics-listen=localhost:9", "--metrics-listen"),
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
        let path = dir.path().join("cp.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:8081\"\ndata_dir = \"x\"\n\
             request_timeout_ms = 3333\nshutdown_timeout_ms = 3333\nsnapshot_logs = 7\n",
        )
        .expect("write");
        // Variables only this test sets, so that it cannot change another test running at the
        // same time; set before the command is built, since clap reads a variable when an
        // argument is given its name.
        std::env::set_var("DLLM_TEST_CP_REQUEST_TIMEOUT_MS", "2222");
        std::env::set_var("DLLM_TEST_CP_SHUTDOWN_TIMEOUT_MS", "2222");
        // The real variables renamed to them.
        let command = Args::command()
            .mut_arg("request_timeout_ms", |a| {
                a.env("DLLM_TEST_CP_REQUEST_TIMEOUT_MS")
            })
            .mut_arg("shutdown_timeout_ms", |a| {
                a.env("DLLM_TEST_CP_SHUTDOWN_TIMEOUT_MS")
            });
        let argv = [
            "dllm-control-plane",
            "--config",
            path.to_str().expect("utf-8"),
            "--id=3",
            "--request-timeout-ms=1111",
        ];
        let c = try_load_from::<Args, _, _>(command, argv)
            .expect("parses")
            .resolve()
            .expect("valid");
        assert_eq!(c.id, 3, "the flag wins over the file");
        assert_eq!(
            c.request_timeout,
            Duration::from_millis(1111),
            "the flag wins over the environment and the file"
        );
        assert_eq!(
            c.shutdown_timeout,
            Duration::from_millis(2222),
            "the environment wins over the file"
        );
        assert_eq!(c.snapshot_logs, 7, "the file wins over the default");
        assert_eq!(
            c.listen.port(),
            8081,
            "the file fills what nothing else sets"
        );
        assert_eq!(
            c.liveness.failover_grace,
            Duration::from_secs(2),
            "the default stands where nothing sets it"
        );
    }

    /// A value in the file is checked as its flag's would be, and the error says where it is.
    #[test]
    fn file_values_are_checked_like_flags() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("cp.toml");
        std::fs::write(&path, "snapshot_logs = \"many\"\n").expect("write");
        let path = path.to_str().expect("utf-8");
        let err =
            try_load_from::<Args, _, _>(Args::command(), ["dllm-control-plane", "--config", path])
                .expect_err("not a number")
                .to_string();
        assert!(
            err.starts_with(&format!("--config {path}: ")) && err.contains("--snapshot-logs"),
            "{err}"
        );
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
